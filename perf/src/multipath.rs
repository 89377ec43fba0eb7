//! `--multipath`: the transport IDs name paths (controllers of one subsystem on
//! several targets) to the same namespaces, and each queue follows them as the Linux
//! host's native NVMe multipath does: I/O goes to one path; a command that path
//! refuses with a path-related status (an ANA state that serves no I/O: inaccessible,
//! persistent loss, change) or that was in flight on a connection that broke is sent
//! again on the next path, and I/O stays there. An I/O completes to the run once, with
//! the status of its last try: `--verify` records a write only when a path
//! acknowledged it. A live migration's switch (issue 14) is followed this way.

use std::net::SocketAddr;
use std::time::Duration;

use lightpool_spec::status::sct;

use crate::engine::{Device, Done, IoQueue, Job, PerfError, QueueSetup, WorkerSpec};
use crate::initiator::{Completion, ConnectOptions, Controller, InitiatorError, Qpair};
use crate::nvme::{
    check_device, conn_opts, io_command, regions_for, NvmeOptions, Prepared, RunFabric,
};
use crate::stats::ErrorKind;
use crate::workload::Op;

/// Where an I/O of the run is.
#[derive(Clone, Copy, Default)]
struct Tag {
    path: usize,
    cid: u16,
    op: Option<Op>,
    lba: u64,
    blocks: u32,
    bytes: u32,
}

struct Path {
    qp: Qpair,
    /// The connection broke: nothing goes there any more.
    dead: bool,
    /// Commands of this queue on this path.
    in_flight: usize,
    /// Per command id: the run's tag.
    owner: Vec<u16>,
}

/// One queue of the run over several paths to one namespace.
pub struct MultipathQueue {
    paths: Vec<Path>,
    active: usize,
    nsid: u32,
    tags: Vec<Tag>,
    free: Vec<u16>,
    /// I/Os to send again on the active path.
    retry: Vec<u16>,
    /// The retries being sent (kept: no allocation per retry).
    again: Vec<u16>,
    comps: Vec<Completion>,
    /// A write's data on its way from one path's buffer to another's.
    scratch: Vec<u8>,
    /// Times this queue moved to another path (the first few are told).
    moves: u64,
    disconnect: bool,
    timeout: Duration,
}

/// Whether `c` is a path's refusal, which another path may serve.
fn path_error(c: &Completion) -> bool {
    !c.status.is_success() && c.status.sct() == sct::PATH
}

impl MultipathQueue {
    fn new(
        paths: Vec<Qpair>,
        nsid: u32,
        buf_len: usize,
        disconnect: bool,
        timeout: Duration,
    ) -> Self {
        let depth = paths.iter().map(|q| q.depth()).min().unwrap_or(0);
        let paths = paths
            .into_iter()
            .map(|qp| Path {
                owner: vec![0; usize::from(qp.depth()) + 1],
                qp,
                dead: false,
                in_flight: 0,
            })
            .collect();
        MultipathQueue {
            paths,
            active: 0,
            nsid,
            tags: vec![Tag::default(); usize::from(depth)],
            free: (0..depth).rev().collect(),
            retry: Vec::with_capacity(usize::from(depth)),
            again: Vec::with_capacity(usize::from(depth)),
            comps: Vec::with_capacity(usize::from(depth)),
            scratch: vec![0; buf_len],
            moves: 0,
            disconnect,
            timeout,
        }
    }

    /// Moves I/O off path `p` (refused with `why`), to the next one alive.
    fn leave(&mut self, p: usize, why: &str) -> Result<(), PerfError> {
        if p != self.active {
            return Ok(());
        }
        let n = self.paths.len();
        let next = (1..=n)
            .map(|k| (p + k) % n)
            .find(|&q| !self.paths[q].dead)
            .ok_or_else(|| {
                PerfError::Setup(format!(
                    "every path failed (the last, {}: {why})",
                    self.paths[p].qp.peer()
                ))
            })?;
        self.active = next;
        self.moves += 1;
        if self.moves <= 4 {
            eprintln!(
                "lightpool-perf: queue {}: path {} {why}; I/O moves to {}",
                self.paths[p].qp.qid(),
                self.paths[p].qp.peer(),
                self.paths[next].qp.peer()
            );
        }
        Ok(())
    }

    /// Path `p`'s connection broke: its commands go again elsewhere.
    fn lose(&mut self, p: usize, e: InitiatorError) -> Result<(), PerfError> {
        self.paths[p].dead = true;
        self.paths[p].in_flight = 0;
        for t in 0..self.tags.len() {
            let tag = self.tags[t];
            if tag.op.is_some() && tag.path == p && !self.retry.contains(&(t as u16)) {
                self.retry.push(t as u16);
            }
        }
        self.leave(p, &format!("lost its connection ({e})"))
    }

    fn send(&mut self, t: u16) -> Result<(), PerfError> {
        let tag = self.tags[usize::from(t)];
        let Some(op) = tag.op else { return Ok(()) };
        let (sqe, dir) = io_command(op, self.nsid, tag.lba, tag.blocks);
        let p = tag.path;
        if self.paths[p].dead {
            // Its path broke between alloc and submit: its data goes elsewhere.
            self.retry.push(t);
            return Ok(());
        }
        let path = &mut self.paths[p];
        match path.qp.submit(tag.cid, sqe, dir, tag.bytes) {
            Ok(()) => {
                path.in_flight += 1;
                path.owner[usize::from(tag.cid)] = t;
                Ok(())
            }
            Err(e) => {
                self.retry.push(t);
                self.lose(p, e)
            }
        }
    }

    /// Sends the I/Os to retry on the active path, a write with its data.
    fn resend(&mut self) -> Result<(), PerfError> {
        // A path that breaks while they go puts them back: one round per path.
        for _ in 0..=self.paths.len() {
            if self.retry.is_empty() {
                break;
            }
            std::mem::swap(&mut self.retry, &mut self.again);
            for i in 0..self.again.len() {
                let t = self.again[i];
                let old = self.tags[usize::from(t)];
                let q = self.active;
                let Some(cid) = self.paths[q].qp.alloc() else {
                    self.retry.push(t);
                    continue;
                };
                if old.op == Some(Op::Write) && (old.path != q || old.cid != cid) {
                    let n = old.bytes as usize;
                    self.scratch[..n].copy_from_slice(&self.paths[old.path].qp.buf(old.cid)[..n]);
                    self.paths[q].qp.buf_mut(cid)[..n].copy_from_slice(&self.scratch[..n]);
                }
                let tag = &mut self.tags[usize::from(t)];
                tag.path = q;
                tag.cid = cid;
                self.send(t)?;
            }
            self.again.clear();
        }
        Ok(())
    }
}

impl IoQueue for MultipathQueue {
    fn depth(&self) -> u16 {
        self.tags.len() as u16
    }

    fn alloc(&mut self) -> Option<u16> {
        let p = self.active;
        if self.paths[p].dead {
            return None;
        }
        let t = self.free.pop()?;
        let Some(cid) = self.paths[p].qp.alloc() else {
            self.free.push(t);
            return None;
        };
        self.tags[usize::from(t)] = Tag {
            path: p,
            cid,
            ..Tag::default()
        };
        Some(t)
    }

    fn buf(&self, tag: u16) -> &[u8] {
        let t = self.tags[usize::from(tag)];
        self.paths[t.path].qp.buf(t.cid)
    }

    fn buf_mut(&mut self, tag: u16) -> &mut [u8] {
        let t = self.tags[usize::from(tag)];
        self.paths[t.path].qp.buf_mut(t.cid)
    }

    fn submit(
        &mut self,
        tag: u16,
        op: Op,
        lba: u64,
        blocks: u32,
        bytes: u32,
    ) -> Result<(), PerfError> {
        let t = &mut self.tags[usize::from(tag)];
        t.op = Some(op);
        t.lba = lba;
        t.blocks = blocks;
        t.bytes = bytes;
        self.send(tag)
    }

    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError> {
        for p in 0..self.paths.len() {
            let path = &self.paths[p];
            if path.dead || (p != self.active && path.in_flight == 0) {
                continue;
            }
            self.comps.clear();
            if let Err(e) = self.paths[p].qp.poll(&mut self.comps) {
                self.lose(p, e)?;
                continue;
            }
            for i in 0..self.comps.len() {
                let c = self.comps[i];
                let path = &mut self.paths[p];
                path.in_flight = path.in_flight.saturating_sub(1);
                let Some(&t) = path.owner.get(usize::from(c.cid)) else {
                    continue;
                };
                if path_error(&c) {
                    self.retry.push(t);
                    self.leave(p, &format!("answers {}", c.status))?;
                    continue;
                }
                self.tags[usize::from(t)].op = None;
                self.free.push(t);
                out.push(Done {
                    tag: t,
                    error: if c.digest_error {
                        Some(ErrorKind::DataDigest)
                    } else if c.status.is_success() {
                        None
                    } else {
                        Some(ErrorKind::from_status(c.status))
                    },
                });
            }
        }
        self.resend()
    }

    fn flush(&mut self) -> Result<(), PerfError> {
        for p in 0..self.paths.len() {
            if self.paths[p].dead || self.paths[p].in_flight == 0 {
                continue;
            }
            if let Err(e) = self.paths[p].qp.flush() {
                self.lose(p, e)?;
            }
        }
        if self.retry.is_empty() {
            return Ok(());
        }
        self.resend()?;
        let p = self.active;
        if let Err(e) = self.paths[p].qp.flush() {
            self.lose(p, e)?;
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.tags.len() - self.free.len()
    }

    fn close(self) -> Result<(), PerfError> {
        let mut res = Ok(());
        for (p, path) in self.paths.into_iter().enumerate() {
            if path.dead {
                continue;
            }
            // A path left behind may be gone already (a migration's source): only
            // the one in use must close cleanly.
            let r = path.qp.disconnect(self.disconnect, self.timeout);
            if p == self.active {
                res = r.map_err(PerfError::from);
            }
        }
        res
    }

    fn describe(&self) -> String {
        let p = &self.paths[self.active];
        format!(
            "{} queue {} (of {} paths)",
            p.qp.peer(),
            p.qp.qid(),
            self.paths.len()
        )
    }

    fn fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.paths[0].qp.raw_fd())
    }

    /// Only the first path's socket is watched: on another, poll every pass.
    fn has_ready(&self) -> bool {
        self.active != 0
            || !self.retry.is_empty()
            || self.paths[0].qp.has_ready()
            || self.paths[1..].iter().any(|p| p.in_flight > 0)
    }
}

/// Connects a controller on every path (each transport ID: the same subsystem) and
/// the queues: one [`MultipathQueue`] per (core, queue pair, namespace).
pub fn prepare(job: &Job, o: &NvmeOptions) -> Result<Prepared<MultipathQueue>, PerfError> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut nqn = None;
    for t in &o.trids {
        let n = t.subnqn.clone().ok_or_else(|| {
            PerfError::Invalid("--multipath: give each path's subnqn (no discovery)".into())
        })?;
        if nqn.get_or_insert_with(|| n.clone()) != &n || t.nsid != o.trids[0].nsid {
            return Err(PerfError::Invalid(
                "--multipath: every -r must name the same subsystem and namespace".into(),
            ));
        }
        addrs.push(t.socket_addr().map_err(PerfError::Setup)?);
    }
    let nqn = nqn.ok_or_else(|| PerfError::Invalid("--multipath: no path given".into()))?;
    if addrs.len() < 2 {
        return Err(PerfError::Invalid(
            "--multipath needs two -r paths or more".into(),
        ));
    }
    let mut ctrls = Vec::new();
    for a in &addrs {
        ctrls.push(Controller::connect(conn_opts(o, *a, nqn.clone())?)?);
    }
    let nss = match o.trids[0].nsid {
        Some(n) => vec![ctrls[0].identify_namespace(n)?],
        None => ctrls[0].namespaces()?,
    };
    let mut devices = Vec::new();
    for ns in &nss {
        let mut range = None;
        for c in ctrls.iter_mut() {
            let other = c.identify_namespace(ns.nsid)?;
            let r = check_device(job, o, c, other)?;
            if other.num_blocks != ns.num_blocks || other.block_size != ns.block_size {
                return Err(PerfError::Invalid(format!(
                    "--multipath: namespace {} differs between {} and {}",
                    ns.nsid,
                    addrs[0],
                    c.addr()
                )));
            }
            range.get_or_insert(r);
        }
        devices.push(Device {
            name: format!("{nqn} ns {} ({} paths)", ns.nsid, addrs.len()),
            block_size: ns.block_size,
            range: range.ok_or_else(|| PerfError::Invalid("no path".into()))?,
        });
    }
    let nq = o.cores.len() * o.qpairs;
    for c in ctrls.iter_mut() {
        let want = u16::try_from(nq * nss.len()).map_err(|_| {
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
    let regions = regions_for(job, &devices, nq)?;
    let cfg = ConnectOptions::queue_config(job, o);
    let disconnect = ctrls.iter().all(|c| c.info.disconnect_supported);
    let mut workers = Vec::new();
    for (ci, core) in o.cores.iter().enumerate() {
        let mut setups = Vec::new();
        for qi in 0..o.qpairs {
            let g = ci * o.qpairs + qi;
            for (di, ns) in nss.iter().enumerate() {
                let mut qps = Vec::new();
                for c in ctrls.iter_mut() {
                    let mut qp = c.connect_io_queue(job.depth + 1, cfg)?;
                    qp.set_nonblocking()?;
                    qps.push(qp);
                }
                setups.push(QueueSetup {
                    queue: MultipathQueue::new(
                        qps,
                        ns.nsid,
                        job.io_size as usize,
                        disconnect,
                        o.timeout,
                    ),
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
    let target = format!(
        "{nqn} at {} (multipath)",
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Prepared {
        ctrls,
        devices,
        workers,
        target,
        multipath: true,
    })
}
