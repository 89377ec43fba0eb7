//! NVMe, NVMe over Fabrics and NVMe/TCP wire types.
//!
//! Pure data: no I/O, no allocation while parsing, every multi-byte field read
//! and written explicitly as little-endian (`from_le_bytes`/`to_le_bytes`).
//! The byte offsets come from the specification tables (NVMe Base 2.0,
//! NVMe-oF 1.1, NVMe/TCP transport 1.0) and every module's unit tests check
//! them against those tables.
//!
//! - [`status`]: the 15-bit completion status field and its codes.
//! - [`nvme`]: submission/completion queue entries, SGL descriptors, opcodes,
//!   controller registers.
//! - [`fabrics`]: Connect, Property Get/Set, Disconnect.
//! - [`tcp`]: NVMe/TCP PDU headers, receive-side header validation, digests.
//! - [`rdma`]: NVMe/RDMA connect private data, keyed SGL descriptors, RDMA TSAS.
//! - [`identify`]: Identify Controller/Namespace, namespace lists and
//!   namespace identification descriptors.
//! - [`log`]: log pages (error, SMART, firmware slot, changed namespaces,
//!   effects, discovery, ANA), the variable-length ones encoded by window.
//! - [`features`]: Get/Set Features fields and async event completions.

pub mod auth;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod nvme;
pub mod rdma;
pub mod status;
pub mod tcp;

mod bytes;

/// The few ways parsing wire bytes can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The buffer holds fewer bytes than the structure needs.
    #[error("the buffer holds {got} bytes but the structure needs {need}")]
    TooShort { need: usize, got: usize },
    /// A text field (NQN, address) is not valid UTF-8.
    #[error("the {field} field is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    /// A text value does not fit its fixed-size wire field.
    #[error("the {field} value is {len} bytes but the field holds at most {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A PDU type byte that NVMe/TCP does not define.
    #[error("PDU type {0:#04x} is not defined by NVMe/TCP")]
    UnknownPduType(u8),
}
