//! The transport-independent NVMe-over-Fabrics target.
//!
//! Layering (see docs/architecture.md): transports parse their own framing and hand this crate
//! command capsules; [`queue::NvmfQueue`] is the one dispatch point (no controller yet ->
//! Connect; qid 0 -> admin; else I/O) and owns the per-queue request slab. Subsystems,
//! namespaces, controllers, discovery and ANA live here; nothing here knows about sockets.
//!
//! Modules depend one way: `region` knows only records; the live objects (`target`,
//! `subsystem`, `ctrlr`, `queue`) each write their own records (their `record`
//! modules); `restore` (reading a region back, rebuilding objects from it, the state
//! a hot upgrade carries) sits above them and nothing below uses it; `transport` is
//! the seam transports implement.

pub mod auth;
pub mod buf;
pub mod ctrlr;
pub mod listener;
pub mod metrics;
pub mod nqn;
pub mod offload;
pub mod queue;
pub mod region;
pub mod restore;
pub mod subsystem;
pub mod target;
pub mod tls;
pub mod transport;

pub use offload::{OffloadReport, OffloadRow, PacketEngineStats, SteeringProgramStats};
pub use queue::{NvmfQueue, QueueOptions, Request, Xfer};
pub use subsystem::{Namespace, NamespaceConfig, Subsystem, SubsystemConfig};
pub use target::{Target, TargetOptions};
pub use transport::{
    Adopted, ConnectionInfo, EngineSpec, ListenAddr, ListenerInfo, Transport, TransportContext,
    TransportError, TransportExport, TransportKind, TransportKinds,
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
    #[error("subsystem {nqn} already has a namespace {nsid}")]
    DuplicateNamespace { nqn: String, nsid: u32 },
    #[error("{0}")]
    Invalid(String),
}

impl From<region::RegionError> for NvmfError {
    fn from(e: region::RegionError) -> Self {
        NvmfError::Invalid(e.to_string())
    }
}
