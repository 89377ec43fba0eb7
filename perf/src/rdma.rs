//! Runs against NVMe/RDMA targets (`trtype:rdma`, the `rdma` feature): the same job,
//! regions, verification and report as over NVMe/TCP ([`crate::nvme`], whose
//! preparation and run this fabric takes as [`RunFabric`]), through
//! `lightpool-nvmf-host-rdma`'s controller and queue pairs. Its queues are polled every
//! pass (a completion queue has no socket for epoll to watch). Without `subnqn:` the
//! discovery log is read over NVMe/RDMA, as over NVMe/TCP, and its RDMA entries run.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use lightpool_nvmf_host::{discover_with, Completion, DiscoveredSubsystem, InitiatorError};
use lightpool_nvmf_host_rdma::{RdmaConnectOptions, RdmaQpair, RdmaQueueConfig};
use lightpool_spec::fabrics::DISCOVERY_NQN;

use crate::cli::{fail_setup, report_run, NvmeArgs};
use crate::engine::{Done, IoQueue, Job, PerfError};
use crate::nvme::{prepare_targets, qpair_io_queue, targets_of, NvmeOptions, Prepared, RunFabric};
use crate::stats::ErrorKind;

/// An NVMe/RDMA queue pair and the namespace its I/O goes to.
pub struct RdmaQueue {
    qp: RdmaQpair,
    nsid: u32,
    comps: Vec<Completion>,
    disconnect: bool,
    timeout: Duration,
}

impl IoQueue for RdmaQueue {
    qpair_io_queue!();

    #[inline]
    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError> {
        self.comps.clear();
        self.qp.poll(&mut self.comps)?;
        out.extend(self.comps.iter().map(|c| Done {
            tag: c.cid,
            error: (!c.status.is_success()).then(|| ErrorKind::from_status(c.status)),
        }));
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} (RDMA) queue {}", self.qp.peer(), self.qp.qid())
    }
}

impl RunFabric for RdmaConnectOptions {
    type IoQueue = RdmaQueue;

    fn options(o: &NvmeOptions, addr: SocketAddr, subnqn: String) -> Result<Self, PerfError> {
        Ok(RdmaConnectOptions {
            addr,
            subnqn,
            hostnqn: o.hostnqn.clone(),
            hostid: o.hostid,
            kato_ms: o.kato_ms,
            timeout: o.timeout,
        })
    }

    fn queue_config(job: &Job, o: &NvmeOptions) -> RdmaQueueConfig {
        RdmaQueueConfig {
            depth: job.depth,
            buf_len: job.io_size as usize,
            // As large as the controller takes, unless --no-in-capsule.
            in_capsule_max: if o.force_r2t { 0 } else { u32::MAX },
        }
    }

    fn io_queue(
        qp: RdmaQpair,
        nsid: u32,
        disconnect: bool,
        timeout: Duration,
    ) -> Result<RdmaQueue, PerfError> {
        Ok(RdmaQueue {
            comps: Vec::with_capacity(usize::from(qp.depth())),
            qp,
            nsid,
            disconnect,
            timeout,
        })
    }

    fn device_name(nqn: &str, nsid: u32, addr: SocketAddr) -> String {
        format!("{nqn} ns {nsid} ({addr}, RDMA)")
    }

    fn target_name(nqn: &str, addr: SocketAddr) -> String {
        format!("{nqn} at {addr} (RDMA)")
    }

    const TRTYPE: u8 = lightpool_spec::log::trtype::RDMA;

    fn discover(o: &NvmeOptions, addr: SocketAddr) -> Result<Vec<DiscoveredSubsystem>, PerfError> {
        let mut opts = Self::options(o, addr, DISCOVERY_NQN.to_string())?;
        opts.kato_ms = 0;
        Ok(discover_with(opts)?)
    }

    /// An RDMA_CM connect to a port nobody listens on is rejected (or unreachable).
    fn nothing_listens(e: &PerfError) -> bool {
        matches!(e, PerfError::Initiator(InitiatorError::Connect { .. }))
    }
}

/// `lightpool-perf -r 'trtype:rdma ...'`: prepare, run, report (as `nvme_main` does
/// for NVMe/TCP).
pub fn main(a: &NvmeArgs, job: &Job, o: &NvmeOptions, started: SystemTime) -> i32 {
    if o.hdgst || o.ddgst {
        return fail_setup(PerfError::Invalid(
            "digests are NVMe/TCP's; NVMe/RDMA has none (leave out the digest options)".into(),
        ));
    }
    report_run(a, job, "NVMe/RDMA", prepare(job, o), String::new(), started)
}

/// Connects every controller and every queue pair.
pub fn prepare(
    job: &Job,
    o: &NvmeOptions,
) -> Result<Prepared<RdmaQueue, RdmaConnectOptions>, PerfError> {
    let mut targets = Vec::new();
    for t in &o.trids {
        if !t.rdma {
            return Err(PerfError::Invalid(
                "a run is over one fabric: give every -r trtype:rdma, or none".into(),
            ));
        }
        targets_of::<RdmaConnectOptions>(o, t, &mut targets)?;
    }
    prepare_targets(job, o, &targets)
}
