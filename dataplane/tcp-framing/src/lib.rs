//! NVMe/TCP framing, for either end of a connection: what the target, lightpool-perf's
//! initiator and limit server, and an initiator running on a target reactor (the remote
//! block device of live migration) share.
//!
//! - [`recv`]: the receive state machine ([`Receiver`]): common header, rest of the
//!   header with its digest, padding, payload into a sink its [`Owner`] chooses per PDU,
//!   data digest; every header checked before any buffer is chosen; exportable mid-PDU
//!   for a hot upgrade ([`RxSnapshot`]).
//! - [`tx`]: the send queue ([`TxQueue`]): a byte ring for headers, digests and
//!   responses, payload referenced in the owner's buffers, gathered into one `writev`.
//! - [`send`]: PDU assembly onto the send queue (what `lightpool_spec::tcp` encodes,
//!   put together with payload references and digests).
//! - [`Stream`]: the byte stream under a connection.
//! - [`offload`]: the per-PDU work a SmartNIC could take (digests, placement,
//!   steering), the software engine of each, and the counts that say which did it.
//! - `tls` (cargo feature `tls`): TLS 1.3 with pre-shared keys over a socket, through
//!   OpenSSL, as a [`Stream`] either end runs NVMe/TCP over.
//!
//! No I/O of its own: bytes come and go through the owner's [`Stream`]; nothing here
//! opens, configures or polls a socket, so every state is reachable from a test that
//! feeds bytes from memory.

pub mod offload;
pub mod recv;
pub mod send;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
pub mod tx;

pub use offload::{OffloadCounters, Placement};
pub use recv::{
    Digests, Flow, ImportError, Next, Owner, Pdu, Receiver, RxConfig, RxError, RxSnapshot, RxState,
};
pub use send::SendParams;
pub use stream::Stream;
pub use tx::{Sent, Shared, TxBuffers, TxQueue, MAX_IOV};
