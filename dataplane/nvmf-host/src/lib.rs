//! A userspace NVMe/TCP host: queue pairs ([`Qpair`]) and the controller they belong
//! to ([`Controller`]: admin queue, enable, Identify, keep-alive, discovery, shutdown).
//! The controller is written once over [`Fabric`]: `lightpool-nvmf-host-rdma` runs it
//! on NVMe/RDMA queue pairs.
//!
//! Wire types and encoders come from `lightpool-spec`, the framing (receive state
//! machine, send queue) from `lightpool-tcp-framing`, the same the target runs; this
//! module only sequences them. Interoperates with `lightpool-target` and the Linux
//! kernel's nvmet-tcp.

mod ctrlr;
mod fabric;
mod qpair;
mod stream;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use lightpool_spec::status::Status;
use lightpool_spec::tcp::fes;

pub use ctrlr::{
    discover, discover_with, ConnectOptions, Controller, ControllerInfo, DiscoveredSubsystem,
    NamespaceInfo,
};
pub use fabric::{AdminCommand, AdminQueue, ConnectRequest, Fabric, Target};
pub use qpair::{Completion, Dir, Negotiated, Qpair, QpairConfig, Stream};
pub use stream::{record_layers, HostStream, HostTls, RecordLayers};

/// What can go wrong talking to a target. Messages are sentences a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    #[error("{addr}: TLS: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr}: the target closed the connection")]
    Closed { addr: SocketAddr },
    #[error("{addr}: {}", io_words(.source))]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr}: the target terminated queue {qid}: {} (FES {fes:#x}, FEI {fei:#x})", fes_words(*.fes))]
    Terminated {
        addr: SocketAddr,
        qid: u16,
        fes: u16,
        fei: u32,
    },
    #[error("{addr}: protocol error on queue {qid}: {msg}")]
    Protocol {
        addr: SocketAddr,
        qid: u16,
        msg: String,
    },
    #[error("{addr}: no answer to {what} within {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        what: String,
        timeout: Duration,
    },
    #[error("{addr}: Connect to {subnqn} refused: {why}")]
    Refused {
        addr: SocketAddr,
        subnqn: String,
        why: String,
    },
    #[error("{addr}: {what} failed: {status}")]
    Command {
        addr: SocketAddr,
        what: String,
        status: Status,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{addr}: namespace {nsid} does not exist in {subnqn} ({}); pick one with ns:N, or leave ns out to use them all", ns_list(.active))]
    NoNamespace {
        addr: SocketAddr,
        subnqn: String,
        nsid: u32,
        /// The subsystem's active namespaces, as far as they could be read.
        active: Vec<u32>,
    },
}

fn ns_list(active: &[u32]) -> String {
    match active {
        [] => "it reports no active namespace".to_string(),
        [one] => format!("its namespace is {one}"),
        many => format!(
            "its namespaces are {}",
            many.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl InitiatorError {
    pub(crate) fn io(addr: SocketAddr, source: io::Error) -> InitiatorError {
        InitiatorError::Io { addr, source }
    }
}

fn io_words(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => format!("the target reset the connection ({e})"),
        _ => format!("connection error: {e}"),
    }
}

fn fes_words(v: u16) -> &'static str {
    match v {
        fes::INVALID_HEADER_FIELD => "invalid PDU header field",
        fes::PDU_SEQUENCE_ERROR => "PDU sequence error",
        fes::HEADER_DIGEST_ERROR => "header digest error",
        fes::DATA_TRANSFER_OUT_OF_RANGE => "data transfer out of range",
        fes::DATA_TRANSFER_LIMIT_EXCEEDED => "data transfer limit exceeded",
        fes::UNSUPPORTED_PARAMETER => "unsupported parameter",
        _ => "fatal transport error",
    }
}
