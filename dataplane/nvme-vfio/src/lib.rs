//! A userspace NVMe PCIe driver over VFIO.
//!
//! The device is bound to vfio-pci (hugepage-setup does it) and opened through a VFIO
//! container; BAR0 is mapped into the process and the driver talks to the controller
//! through its registers and doorbells, with no kernel driver in the path and no
//! interrupts: completions are found by polling the phase tag of completion queue
//! entries.
//!
//! - [`Controller`]: reset and enable (CC/CSTS/AQA/ASQ/ACQ within the timeout CAP.TO
//!   gives), Identify, Number of Queues, the admin queue (synchronous, behind a lock,
//!   used only at set-up and for error handling), I/O queue creation and deletion,
//!   Abort, controller reset, orderly shutdown (CC.SHN) when dropped.
//! - [`IoQueuePair`]: one I/O submission/completion queue pair, owned by one thread;
//!   submit builds the SQE and its PRPs ([`prp`]), poll reaps completions
//!   ([`ring`]), rings the doorbells, and enforces the per-command timeout: Abort first,
//!   then a controller reset if the command still has not completed.
//! - [`vfio`]: the container (one IOMMU domain for the process, which is also the
//!   [`lightpool_dma::DmaMapper`] that DMA memory is registered with), groups, devices,
//!   BAR mapping.

mod ctrlr;
pub mod prp;
mod qpair;
pub mod ring;
pub mod vfio;

pub use ctrlr::{
    AdminState, Controller, ControllerInfo, ControllerOptions, ControllerState, MemState,
    NamespaceInfo, QueueState,
};
pub use qpair::{CmdError, IoCmd, IoQueuePair, SubmitError};
pub use vfio::{Container, ContainerState, VfioError};

use lightpool_spec::status::Status;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error("DMA memory: {0}")]
    Dma(#[from] lightpool_dma::DmaError),
    #[error("{addr}: the controller did not {what} within {ms} ms")]
    Timeout {
        addr: String,
        what: &'static str,
        ms: u64,
    },
    #[error("{addr}: the controller reports a fatal error (CSTS.CFS)")]
    Fatal { addr: String },
    #[error("{addr}: the device no longer answers (registers read all ones); was it removed?")]
    Gone { addr: String },
    #[error("{addr}: {what} failed with status {status}")]
    Command {
        addr: String,
        what: String,
        status: Status,
    },
    #[error("{addr}: {reason}")]
    Unsupported { addr: String, reason: String },
}
