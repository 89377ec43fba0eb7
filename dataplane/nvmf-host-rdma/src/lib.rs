//! A userspace NVMe/RDMA host: queue pairs ([`RdmaQpair`]: RDMA_CM connect with the
//! NVMe/RDMA private data, capsules by SEND, keyed SGLs naming the host's registered
//! buffers, in-capsule data for small writes, responses by RECV) and the controller
//! they belong to ([`RdmaController`]: admin queue, enable, Identify, queue count,
//! keep-alive, shutdown; `lightpool-nvmf-host`'s controller logic, run on these queue
//! pairs). What `lightpool-perf` runs for `trtype:rdma` (its `rdma`
//! feature). Errors and what Identify says are `lightpool-nvmf-host`'s, so
//! that a caller handles both fabrics alike. Interoperates with `lightpool-target`'s
//! NVMe/RDMA transport and the Linux kernel's nvmet-rdma.

mod ctrlr;
mod qpair;

pub use ctrlr::{RdmaConnectOptions, RdmaController};
pub use qpair::{RdmaQpair, RdmaQueueConfig};
