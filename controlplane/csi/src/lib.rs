//! LightPool's CSI driver (`csi.lightpool.io`): the Container Storage Interface's
//! Identity, Controller and Node services, generated from the vendored spec
//! (proto/csi/v1, CSI v1.13.0).
//!
//! - The **controller** ([`controller`]) turns CreateVolume into a Volume object in the
//!   control plane's store (Kubernetes, or a standalone instance's) and answers once
//!   the scheduler has placed it and its node's agent has published it; DeleteVolume
//!   deletes the object, which the controller takes down in order.
//! - The **node** ([`node`]) stages a volume by connecting the Linux kernel's NVMe/TCP
//!   initiator to every published path, finds the namespace by its UUID (never by
//!   enumeration order), makes a file system only where the device holds none, and
//!   mounts it; publishing bind-mounts the staged volume into the pod.
//!
//! Every call is idempotent, and errors carry the CSI spec's codes with a message that
//! says what to change ([`params`] for StorageClass parameters).

pub mod controller;
pub mod identity;
pub mod node;
pub mod params;
pub mod plugin;

use std::path::{Path, PathBuf};

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}

/// The driver's name (the CSIDriver object's and the StorageClass's provisioner).
pub const DRIVER_NAME: &str = "csi.lightpool.io";

/// The topology key a node reports and a volume's accessibility names.
pub const TOPOLOGY_NODE: &str = "topology.lightpool.io/node";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The endpoint is not `unix:///PATH` (or a bare path).
    #[error("endpoint {0:?} is not unix:///PATH: CSI plugins listen on a Unix socket")]
    Endpoint(String),
    /// The socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Neither service was asked for.
    #[error("the CSI plugin serves nothing: give --controller, --node NODE, or both")]
    Nothing,
    /// The server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// The socket path of a CSI endpoint (`unix:///csi/csi.sock`, `unix:/csi/csi.sock`
/// or `/csi/csi.sock`).
pub fn endpoint_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let p = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !p.starts_with('/') {
        return Err(ServeError::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(p))
}

/// Binds the endpoint's socket, replacing a stale one (the sidecars find it by path).
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(bind_err)
}
