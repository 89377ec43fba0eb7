//! Bindings from Debian's rdma-core headers (libibverbs-dev, librdmacm-dev), made by
//! bindgen at build time (it reads them through libclang: libclang-dev), and the C shim
//! for the verbs the headers define inline. tests/vm/setup.sh installs all three.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rustc-link-lib=ibverbs");
    println!("cargo:rustc-link-lib=rdmacm");

    cc::Build::new()
        .file("src/shim.c")
        .warnings(true)
        .compile("lightpool_rdma_shim");

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("ibv_.*")
        .allowlist_function("rdma_.*")
        .allowlist_type("ibv_.*")
        .allowlist_type("rdma_.*")
        .allowlist_var("IBV_.*")
        .allowlist_var("RDMA_.*")
        .constified_enum_module("ibv_.*")
        .constified_enum_module("rdma_.*")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen over infiniband/verbs.h and rdma/rdma_cma.h (libibverbs-dev, librdmacm-dev, libclang-dev: tests/vm/setup.sh installs them)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
