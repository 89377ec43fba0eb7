//! Generates the gRPC server and client code from proto/ with the protoc that the
//! protoc-bin-vendored crate ships: nothing needs to be installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let dir = "proto/lightpool/v1";
    let files: Vec<String> = [
        "subsystem",
        "namespace",
        "bdev",
        "listener",
        "ana",
        "controller",
        "stats",
        "logging",
        "upgrade",
        "config",
        "pool",
        "raid",
        "migration",
    ]
    .iter()
    .map(|f| format!("{dir}/{f}.proto"))
    .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        // Scripts read the CLI's --json output: every message and enum serializes.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_protos(&files, &["proto".to_string()])?;
    Ok(())
}
