//! With the feature `af_xdp`, compile the XDP program (bpf/steer.c) for the BPF target.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/steer.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    if std::env::var_os("CARGO_FEATURE_AF_XDP").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("steer.o");
    // The kernel's UAPI headers include <asm/types.h>, which Debian keeps under the
    // multiarch directory of the target.
    // A cross build (aarch64 for a DPU) may lack the target's: the BPF program does not
    // depend on the CPU, so the build machine's serve as well.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let host_arch = std::env::var("HOST")
        .ok()
        .and_then(|h| h.split('-').next().map(str::to_string))
        .unwrap_or_default();
    let multiarch = [arch, host_arch]
        .iter()
        .map(|a| format!("/usr/include/{a}-linux-gnu"))
        .find(|d| std::path::Path::new(d).join("asm/types.h").exists())
        .unwrap_or_else(|| "/usr/include/x86_64-linux-gnu".into());
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/steer.c", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("running {clang} for the XDP program (install clang and libbpf-dev): {e}")
        });
    assert!(status.success(), "{clang} failed to compile bpf/steer.c");
}
