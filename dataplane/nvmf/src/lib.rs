//! The transport-independent NVMe-over-Fabrics target.
//!
//! Layering (see docs/architecture.md): transports parse their own framing and hand this crate
//! command capsules; [`queue::NvmfQueue`] is the one dispatch point (no controller yet ->
//! Connect; qid 0 -> admin; else I/O) and owns the per-queue request slab. Subsystems,
//! namespaces, controllers, discovery and ANA live here; nothing here knows about sockets.

pub mod buf;
pub mod ctrlr;
pub mod queue;
pub mod region;
pub mod state;
pub mod subsystem;
pub mod target;
pub mod transport;

pub use queue::{NvmfQueue, QueueOptions, Request, Xfer};
pub use subsystem::{NamespaceConfig, Subsystem, SubsystemConfig};
pub use target::{Target, TargetOptions};
pub use transport::{
    Adopted, ConnectionInfo, ListenAddr, ListenerInfo, Transport, TransportContext, TransportError,
    TransportExport, TransportKind, TransportKinds,
};

/// Errors raised while configuring the target (never on the I/O path).
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("subsystem {0} already exists")]
    DuplicateSubsystem(String),
    #[error("subsystem {nqn}: {reason}")]
    InvalidSubsystem { nqn: String, reason: String },
    #[error("no subsystem named {0}")]
    NoSuchSubsystem(String),
    #[error("no namespace {nsid} in subsystem {nqn}")]
    NoSuchNamespace { nqn: String, nsid: u32 },
    #[error("{0}")]
    Invalid(String),
}
