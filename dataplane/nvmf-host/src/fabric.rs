//! What the controller logic ([`Controller`](crate::Controller), written once for
//! every fabric) asks of a fabric: connect options that say where the subsystem is
//! and connect queue pairs ([`Fabric`]), queue pairs that carry admin commands
//! ([`AdminQueue`]), and the Fabrics Connect each queue sends ([`ConnectRequest`]).
//! NVMe/TCP's implementations are here; NVMe/RDMA's are `lightpool-nvmf-host-rdma`'s.

use std::net::SocketAddr;
use std::time::Duration;

use lightpool_spec::fabrics::{self, ConnectCommand, ConnectData, CONNECT_DATA_SIZE};
use lightpool_spec::nvme::Sqe;

use crate::{Completion, ConnectOptions, Dir, InitiatorError, Qpair, QpairConfig};

/// NVMe/TCP: the admin queue takes 8 KiB of in-capsule data.
const ADMIN_IN_CAPSULE: u32 = 8192;

/// One queue's Fabrics Connect.
#[derive(Clone, Copy, Debug)]
pub struct ConnectRequest<'a> {
    /// The queue (0: the admin queue).
    pub qid: u16,
    /// Submission queue entries (SQSIZE is one less).
    pub entries: u16,
    /// Keep-alive timeout, milliseconds (0: none).
    pub kato_ms: u32,
    /// The controller (`CNTLID_DYNAMIC` on the admin queue: any).
    pub cntlid: u16,
    pub subnqn: &'a str,
    pub hostnqn: &'a str,
    pub hostid: [u8; 16],
}

impl ConnectRequest<'_> {
    /// The Connect command (CID 0).
    pub fn sqe(&self) -> Sqe {
        ConnectCommand {
            recfmt: fabrics::RECFMT_0,
            qid: self.qid,
            sqsize: self.entries - 1,
            cattr: 0,
            kato: self.kato_ms,
        }
        .to_sqe(0)
    }

    /// The Connect data.
    pub fn data(&self) -> [u8; CONNECT_DATA_SIZE] {
        ConnectData::new(self.hostid, self.cntlid, self.subnqn, self.hostnqn).to_bytes()
    }

    /// What the command is called in errors.
    pub fn what(&self) -> String {
        if self.qid == 0 {
            "Connect (admin queue)".to_string()
        } else {
            format!("Connect (I/O queue {})", self.qid)
        }
    }
}

/// What the controller logic reads of a fabric's connect options;
/// [`target_of!`](crate::target_of!) reads it from options that name their fields as
/// [`ConnectOptions`] does.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub subnqn: &'a str,
    pub hostnqn: &'a str,
    pub hostid: [u8; 16],
    /// Keep-alive timeout asked for at Connect, milliseconds (0: none).
    pub kato_ms: u32,
    /// Limit for connecting and for each admin command.
    pub timeout: Duration,
}

/// One admin command, as the controller sends it.
#[derive(Clone, Copy, Debug)]
pub struct AdminCommand<'a> {
    pub sqe: Sqe,
    /// Which way its data moves (through the command's buffer).
    pub dir: Dir,
    /// Data bytes.
    pub len: u32,
    /// How long to wait for its completion.
    pub timeout: Duration,
    /// What it is called in errors.
    pub what: &'a str,
}

/// The [`Target`] of connect options `$opts` (an expression of a type with
/// [`ConnectOptions`]' fields `addr`, `subnqn`, `hostnqn`, `hostid`, `kato_ms` and
/// `timeout`): the body of [`Fabric::target`] for each fabric's options.
#[macro_export]
macro_rules! target_of {
    ($opts:expr) => {
        $crate::Target {
            addr: $opts.addr,
            subnqn: &$opts.subnqn,
            hostnqn: &$opts.hostnqn,
            hostid: $opts.hostid,
            kato_ms: $opts.kato_ms,
            timeout: $opts.timeout,
        }
    };
}

/// A queue pair that carries admin commands, one at a time.
pub trait AdminQueue {
    /// Submits `cmd` and waits for its completion, whatever its status.
    fn exec(&mut self, cmd: AdminCommand<'_>) -> Result<Completion, InitiatorError>;

    /// The data buffer of command `cid`: what a read brought.
    fn data(&self, cid: u16) -> &[u8];

    /// Closes the queue, with the Disconnect command first when `send_disconnect`.
    fn close(self, send_disconnect: bool, timeout: Duration) -> Result<(), InitiatorError>;
}

/// A fabric, as its connect options: where the subsystem is, and how its queue pairs
/// are sized and connected.
pub trait Fabric {
    /// One queue pair of the fabric.
    type Queue: AdminQueue;
    /// How a queue pair is sized.
    type QueueConfig;

    /// Where the subsystem is, who we are, keep-alive and the command limit.
    fn target(&self) -> Target<'_>;

    /// The admin queue's sizing: a few commands of `buf_len` bytes of data.
    fn admin_config(buf_len: usize) -> Self::QueueConfig;

    /// An I/O queue's sizing: `cfg` as the caller asked, with writes in the capsule
    /// as the controller takes them (`in_capsule_max`, from Identify Controller).
    fn io_config(cfg: Self::QueueConfig, in_capsule_max: u32) -> Self::QueueConfig;

    /// Connects a queue pair sized by `cfg` and sends it Fabrics Connect `req`;
    /// returns the queue and the controller ID the target answered.
    fn connect_queue(
        &self,
        req: &ConnectRequest<'_>,
        cfg: Self::QueueConfig,
    ) -> Result<(Self::Queue, u16), InitiatorError>;
}

impl Fabric for ConnectOptions {
    type Queue = Qpair;
    type QueueConfig = QpairConfig;

    fn target(&self) -> Target<'_> {
        target_of!(self)
    }

    fn admin_config(buf_len: usize) -> QpairConfig {
        QpairConfig {
            depth: 4,
            buf_len,
            in_capsule_max: ADMIN_IN_CAPSULE,
            force_r2t: false,
        }
    }

    fn io_config(mut cfg: QpairConfig, in_capsule_max: u32) -> QpairConfig {
        cfg.in_capsule_max = in_capsule_max;
        cfg
    }

    fn connect_queue(
        &self,
        req: &ConnectRequest<'_>,
        cfg: QpairConfig,
    ) -> Result<(Qpair, u16), InitiatorError> {
        let (tls, timeout) = (self.tls.as_ref().map(|t| (t, self.ktls)), self.timeout);
        let mut q = Qpair::connect_tls(self.addr, tls, self.hdgst, self.ddgst, cfg, timeout)?;
        let cntlid = q.fabric_connect(req, timeout)?;
        Ok((q, cntlid))
    }
}
