//! Runs against NVMe/RDMA targets (`trtype:rdma`, the `rdma` feature): the same job,
//! regions, verification and report as over NVMe/TCP ([`crate::nvme`]), through
//! `lightpool-nvmf-host-rdma`'s controller and queue pairs. Its queues are polled every
//! pass (a completion queue has no socket for epoll to watch). The subsystem must be
//! named (`subnqn:`): discovery is NVMe/TCP's here.

use std::net::SocketAddr;
use std::time::SystemTime;

use lightpool_nvmf_host::{Completion, Dir, InitiatorError, NamespaceInfo};
use lightpool_nvmf_host_rdma::{RdmaConnectOptions, RdmaController, RdmaQpair, RdmaQueueConfig};
use lightpool_spec::nvme::{io_opcode, Sqe};

use crate::cli::{fail, fail_setup, NvmeArgs};
use crate::engine::{Device, Done, IoQueue, Job, PerfError, QueueSetup, RunOutcome, WorkerSpec};
use crate::nvme::NvmeOptions;
use crate::report::Report;
use crate::stats::ErrorKind;
use crate::workload::{split_region, Op, Region};

/// An NVMe/RDMA queue pair and the namespace its I/O goes to.
pub struct RdmaQueue {
    qp: RdmaQpair,
    nsid: u32,
    comps: Vec<Completion>,
    disconnect: bool,
    timeout: std::time::Duration,
}

impl IoQueue for RdmaQueue {
    fn depth(&self) -> u16 {
        self.qp.depth()
    }

    fn alloc(&mut self) -> Option<u16> {
        self.qp.alloc()
    }

    fn buf(&self, tag: u16) -> &[u8] {
        self.qp.buf(tag)
    }

    fn buf_mut(&mut self, tag: u16) -> &mut [u8] {
        self.qp.buf_mut(tag)
    }

    #[inline]
    fn submit(
        &mut self,
        tag: u16,
        op: Op,
        lba: u64,
        blocks: u32,
        bytes: u32,
    ) -> Result<(), PerfError> {
        let (opcode, dir) = match op {
            Op::Read => (io_opcode::READ, Dir::Read),
            Op::Write => (io_opcode::WRITE, Dir::Write),
        };
        let sqe = Sqe {
            opcode,
            nsid: self.nsid,
            cdw10: lba as u32,
            cdw11: (lba >> 32) as u32,
            cdw12: blocks - 1,
            ..Sqe::default()
        };
        Ok(self.qp.submit(tag, sqe, dir, bytes)?)
    }

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

    fn flush(&mut self) -> Result<(), PerfError> {
        Ok(self.qp.flush()?)
    }

    fn in_flight(&self) -> usize {
        self.qp.in_flight()
    }

    fn close(self) -> Result<(), PerfError> {
        Ok(self.qp.disconnect(self.disconnect, self.timeout)?)
    }

    fn describe(&self) -> String {
        format!("{} (RDMA) queue {}", self.qp.peer(), self.qp.qid())
    }
}

/// A connected NVMe/RDMA run.
pub struct Prepared {
    ctrls: Vec<RdmaController>,
    devices: Vec<Device>,
    workers: Vec<WorkerSpec<RdmaQueue>>,
    target: String,
}

/// `lightpool-perf -r 'trtype:rdma ...'`: prepare, run, report (as `nvme_main` does
/// for NVMe/TCP).
pub fn main(a: &NvmeArgs, job: &Job, o: &NvmeOptions, started: SystemTime) -> i32 {
    if o.hdgst || o.ddgst {
        return fail_setup(PerfError::Invalid(
            "digests are NVMe/TCP's; NVMe/RDMA has none (leave out the digest options)".into(),
        ));
    }
    let p = match prepare(job, o) {
        Ok(p) => p,
        Err(e) => return fail_setup(e),
    };
    let settings =
        a.w.settings("NVMe/RDMA", p.target.clone(), o.qpairs, String::new());
    match run(job, p) {
        Ok((out, devices)) => {
            let report = Report::new(settings, job, &devices, &out);
            a.out.emit(&report, started)
        }
        Err(e) => fail(e),
    }
}

/// Connects every controller and every queue pair.
pub fn prepare(job: &Job, o: &NvmeOptions) -> Result<Prepared, PerfError> {
    let mut targets: Vec<(SocketAddr, String, Option<u32>)> = Vec::new();
    for t in &o.trids {
        if !t.rdma {
            return Err(PerfError::Invalid(
                "a run is over one fabric: give every -r trtype:rdma, or none".into(),
            ));
        }
        let addr = t.socket_addr().map_err(PerfError::Setup)?;
        let nqn = t.subnqn.clone().ok_or_else(|| {
            PerfError::Invalid(format!(
                "{addr}: name the subsystem with subnqn:NQN (discovery is over NVMe/TCP only)"
            ))
        })?;
        targets.push((addr, nqn, t.nsid));
    }
    let mut ctrls = Vec::new();
    let mut devices = Vec::new();
    let mut dev_ctrl = Vec::new();
    for (addr, nqn, nsid) in &targets {
        let mut c = RdmaController::connect(RdmaConnectOptions {
            addr: *addr,
            subnqn: nqn.clone(),
            hostnqn: o.hostnqn.clone(),
            hostid: o.hostid,
            kato_ms: o.kato_ms,
            timeout: o.timeout,
        })?;
        let nss = match nsid {
            Some(n) => vec![c.identify_namespace(*n).map_err(|e| match e {
                e @ InitiatorError::NoNamespace { .. } => PerfError::Invalid(e.to_string()),
                e => e.into(),
            })?],
            None => c.namespaces()?,
        };
        if nss.is_empty() {
            return Err(PerfError::Setup(format!(
                "{addr}: subsystem {nqn} has no active namespace"
            )));
        }
        for ns in nss {
            let range = check_device(job, o, &c, ns)?;
            devices.push(Device {
                name: format!("{nqn} ns {} ({addr}, RDMA)", ns.nsid),
                block_size: ns.block_size,
                range,
            });
            dev_ctrl.push((ctrls.len(), ns.nsid));
        }
        ctrls.push(c);
    }

    let nq = o.cores.len() * o.qpairs;
    for (i, c) in ctrls.iter_mut().enumerate() {
        let per_ctrl = dev_ctrl.iter().filter(|(ci, _)| *ci == i).count();
        let want = u16::try_from(nq * per_ctrl).map_err(|_| {
            PerfError::Invalid(format!("{nq} queue pairs per namespace is too many"))
        })?;
        let got = c.request_io_queues(want)?;
        if got < want {
            return Err(PerfError::Invalid(format!(
                "{}: the controller grants {got} I/O queues but {want} are needed",
                c.addr()
            )));
        }
    }

    let random = job.workload.random();
    let mut regions: Vec<Vec<Region>> = Vec::new();
    for d in &devices {
        let io_blocks = job.io_size / d.block_size;
        regions.push(if job.verify || !random {
            split_region(d.range, io_blocks, nq).ok_or_else(|| {
                PerfError::Invalid(format!(
                    "{}: the range of {} blocks holds fewer {}-byte I/Os than the {nq} queue(s) that share it",
                    d.name, d.range.blocks, job.io_size
                ))
            })?
        } else {
            vec![d.range; nq]
        });
    }

    let cfg = RdmaQueueConfig {
        depth: job.depth,
        buf_len: job.io_size as usize,
        // As large as the controller takes, unless --no-in-capsule.
        in_capsule_max: if o.force_r2t { 0 } else { u32::MAX },
    };
    let mut workers = Vec::new();
    for (ci, core) in o.cores.iter().enumerate() {
        let mut setups = Vec::new();
        for qi in 0..o.qpairs {
            let g = ci * o.qpairs + qi;
            for (di, (cidx, nsid)) in dev_ctrl.iter().enumerate() {
                let c = &mut ctrls[*cidx];
                let qp = c.connect_io_queue(job.depth + 1, cfg)?;
                setups.push(QueueSetup {
                    queue: RdmaQueue {
                        qp,
                        nsid: *nsid,
                        comps: Vec::with_capacity(usize::from(job.depth)),
                        disconnect: c.info.disconnect_supported,
                        timeout: o.timeout,
                    },
                    device: di,
                    region: regions[di][g],
                    seed: o.seed ^ ((di as u64) << 40) ^ (g as u64).wrapping_mul(0x9E37_79B9),
                });
            }
        }
        workers.push(WorkerSpec {
            core: *core,
            build: Box::new(move || Ok(setups)),
        });
    }
    let target = targets
        .iter()
        .map(|(a, n, _)| format!("{n} at {a} (RDMA)"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Prepared {
        ctrls,
        devices,
        workers,
        target,
    })
}

/// The job against the controller's limits and the namespace; the LBA range to use.
fn check_device(
    job: &Job,
    o: &NvmeOptions,
    c: &RdmaController,
    ns: NamespaceInfo,
) -> Result<Region, PerfError> {
    let bad = |m: String| {
        Err(PerfError::Invalid(format!(
            "{}: namespace {}: {m}",
            c.addr(),
            ns.nsid
        )))
    };
    if !job.io_size.is_multiple_of(ns.block_size) || job.io_size / ns.block_size > 65536 {
        return bad(format!(
            "the I/O size {} is not a multiple of the {}-byte block size, or over 65536 blocks",
            job.io_size, ns.block_size
        ));
    }
    if c.info.max_transfer.is_some_and(|m| job.io_size > m) {
        return bad(format!(
            "the I/O size {} exceeds the controller's maximum transfer (MDTS)",
            job.io_size
        ));
    }
    if u32::from(job.depth) + 1 > c.info.max_queue_entries {
        return bad(format!(
            "queue depth {} is more than the controller's {} queue entries allow",
            job.depth, c.info.max_queue_entries
        ));
    }
    let (start, end) = o.range.unwrap_or((0, ns.num_blocks));
    if start >= end || end > ns.num_blocks || end - start < u64::from(job.io_size / ns.block_size) {
        return bad(format!(
            "--range {start}:{end} does not fit the namespace's {} blocks or one I/O",
            ns.num_blocks
        ));
    }
    Ok(Region {
        start_lba: start,
        blocks: end - start,
    })
}

/// Runs a prepared job: keep-alive on every controller while it runs, then an orderly
/// shutdown.
pub fn run(job: &Job, p: Prepared) -> Result<(RunOutcome, Vec<Device>), PerfError> {
    let Prepared {
        mut ctrls,
        devices,
        workers,
        ..
    } = p;
    let mut ka = || -> Result<(), PerfError> {
        for c in ctrls.iter_mut() {
            c.keep_alive_if_due()?;
        }
        Ok(())
    };
    let mut out = crate::engine::run(job, &devices, workers, &mut ka)?;
    for c in ctrls {
        let addr = c.addr();
        if let Err(e) = c.shutdown() {
            if out.error.is_none() {
                out.error = Some(format!("shutting down the controller at {addr}: {e}"));
            }
        }
    }
    Ok((out, devices))
}
