//! Harness for end-to-end tests: the Linux kernel's NVMe/TCP initiator in a
//! QEMU guest (see tests/vm/setup.sh) against targets on the host.
//!
//! ```no_run
//! use lightpool_e2e::{run_guest, GuestConfig};
//! let out = run_guest(&GuestConfig::new("hello", "echo hello from the guest"))?;
//! assert_eq!(out.exit_code, 0, "{}", out.tail(40));
//! # anyhow::Ok(())
//! ```

pub mod certs;
pub mod cli;
mod cpio;
pub mod guest_sh;
mod host;
pub mod netshim;
pub mod nvme_host;
pub mod paths;
pub mod perfjson;
pub mod rdma;
pub mod tls;
mod vm;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use host::{free_port, release_binary, wait_for_port, HostProcess};
pub use vm::{
    assets, binary_with_libraries, guest_release_binaries, run_guest, GuestConfig, GuestOutcome,
    VmAssets, EXIT_MARKER, START_MARKER,
};

/// The root of the Cargo workspace (the folder above tests/).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative one is relative to where cargo ran: the workspace root
        // for tests/run.sh and CI.
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// `target/e2e`, where console logs and process logs go.
pub fn e2e_dir() -> Result<PathBuf> {
    let d = target_dir().join("e2e");
    fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
