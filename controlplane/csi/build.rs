//! Generates the CSI services from the vendored spec (proto/csi/v1/csi.proto, CSI
//! v1.13.0, Apache-2.0: see proto/csi/v1/LICENSE) with the protoc that
//! protoc-bin-vendored ships, and its copy of the well-known types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let file = "proto/csi/v1/csi.proto";
    println!("cargo:rerun-if-changed={file}");
    let include = include.display().to_string();
    tonic_prost_build::configure().compile_protos(&[file], &["proto", include.as_str()])?;
    Ok(())
}
