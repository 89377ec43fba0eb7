//! The controller of an NVMe/RDMA host: `lightpool-nvmf-host`'s [`Controller`] (Connect,
//! enable through the property registers, Identify, number of queues, keep-alive, I/O
//! queue pairs, orderly shutdown), the same sequence as over NVMe/TCP, run on
//! [`RdmaQpair`]s: what this module gives it is how they are sized and connected.

use std::net::SocketAddr;
use std::time::Duration;

use lightpool_nvmf_host::{ConnectRequest, Controller, Fabric, InitiatorError, Target};
use lightpool_spec::fabrics::CONNECT_DATA_SIZE;

use crate::qpair::{RdmaQpair, RdmaQueueConfig};

/// How to reach and identify ourselves to a subsystem over NVMe/RDMA.
#[derive(Clone, Debug)]
pub struct RdmaConnectOptions {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Keep-alive timeout asked for at Connect, milliseconds (0: none).
    pub kato_ms: u32,
    /// Limit for connecting and for each admin command.
    pub timeout: Duration,
}

/// A live NVMe/RDMA controller: its admin queue and what it told us.
pub type RdmaController = Controller<RdmaConnectOptions>;

impl Fabric for RdmaConnectOptions {
    type Queue = RdmaQpair;
    type QueueConfig = RdmaQueueConfig;

    fn target(&self) -> Target<'_> {
        lightpool_nvmf_host::target_of!(self)
    }

    /// The admin queue takes no in-capsule data.
    fn admin_config(buf_len: usize) -> RdmaQueueConfig {
        RdmaQueueConfig {
            depth: 4,
            buf_len,
            in_capsule_max: 0,
        }
    }

    fn io_config(mut cfg: RdmaQueueConfig, in_capsule_max: u32) -> RdmaQueueConfig {
        cfg.in_capsule_max = cfg.in_capsule_max.min(in_capsule_max);
        cfg
    }

    fn connect_queue(
        &self,
        req: &ConnectRequest<'_>,
        mut cfg: RdmaQueueConfig,
    ) -> Result<(RdmaQpair, u16), InitiatorError> {
        // The Connect data (1,024 bytes) travels through the first tag's buffer.
        cfg.buf_len = cfg.buf_len.max(CONNECT_DATA_SIZE);
        let (qid, entries, cntlid) = (req.qid, req.entries, req.cntlid);
        let mut q = RdmaQpair::connect(self.addr, qid, entries, cntlid, cfg, self.timeout)?;
        let cntlid = q.fabric_connect(req, self.timeout)?;
        Ok((q, cntlid))
    }
}
