//! I/O counters for the metrics endpoint: commands, bytes, latency and errors by NVMe
//! status, per reactor and namespace, and each queue's depth.
//!
//! Every counter has one writer, the reactor that owns the queues feeding it: a block
//! of counters is made per (reactor, subsystem, NSID) at Connect (the control path)
//! and shared by that reactor's queues of the namespace, which update it with plain
//! loads and stores (no locked read-modify-write, no lock, no allocation). A scrape
//! reads every block (relaxed loads: a value a few commands old) and sums them as it
//! reports them ([`IoMetrics::snapshot`]). Blocks live as long as the target, so the
//! counts only grow (a Prometheus counter); a queue's depth is a gauge that goes with
//! the queue.
//!
//! Latency is the target's: from the start of a command (all of its data received) to
//! its completion (the response ready to send), on the reactor's loop clock: a command
//! done within one pass of the loop (a read of RAM served in place) counts as 0.
//! Buckets are powers of two of 1.024 µs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use lightpool_spec::nvme::{admin_opcode, io_opcode};
use lightpool_spec::status::Status;

use crate::queue::{Request, Xfer};

/// Latency buckets: bucket `k` (`k` < [`LATENCY_BUCKETS`] - 1) counts latencies under
/// 2^k units of 1.024 µs (and at least 2^(k-1)); the last one the rest (over 4.3 s).
pub const LATENCY_BUCKETS: usize = 24;

/// The upper bound of latency bucket `k` in seconds (`None`: the last, unbounded):
/// 1.024 µs, 2.048 µs, ... (powers of two of 1024 ns, so a shift sorts a latency).
pub fn bucket_bound_s(k: usize) -> Option<f64> {
    (k + 1 < LATENCY_BUCKETS).then(|| (1u64 << (k + 10)) as f64 * 1e-9)
}

/// Kinds of command, counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Read = 0,
    Write = 1,
    /// Other I/O commands: Flush, Write Zeroes, Dataset Management, Compare.
    Other = 2,
    /// Admin and fabrics commands (no namespace).
    Admin = 3,
}

/// Number of [`OpClass`]es.
pub const OP_CLASSES: usize = 4;

impl OpClass {
    pub const ALL: [OpClass; OP_CLASSES] = [
        OpClass::Read,
        OpClass::Write,
        OpClass::Other,
        OpClass::Admin,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
            OpClass::Other => "other",
            OpClass::Admin => "admin",
        }
    }
}

/// A counter with one writer: a plain load and store.
#[derive(Default, Debug)]
struct Cell(AtomicU64);

impl Cell {
    #[inline(always)]
    fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default, Debug)]
struct OpCounters {
    cmds: Cell,
    bytes: Cell,
    lat_sum_ns: Cell,
    lat: [Cell; LATENCY_BUCKETS],
}

/// Distinct failure statuses counted apart per block; more go to "other".
const ERROR_SLOTS: usize = 15;

/// Failures by status: a small table the writer fills in order (the key is stored
/// after its count is, so a reader never sees a key with another status's count).
#[derive(Default, Debug)]
struct ErrorCounts {
    /// Status + 1 (0: free).
    keys: [AtomicU32; ERROR_SLOTS],
    counts: [Cell; ERROR_SLOTS],
    other: Cell,
}

impl ErrorCounts {
    #[cold]
    fn count(&self, st: Status) {
        // Retry delay, More and Do Not Retry are not part of what failed.
        let key = u32::from(st.0 & 0x7FF) + 1;
        for (k, c) in self.keys.iter().zip(&self.counts) {
            match k.load(Ordering::Relaxed) {
                0 => {
                    c.add(1);
                    k.store(key, Ordering::Release);
                    return;
                }
                x if x == key => {
                    c.add(1);
                    return;
                }
                _ => {}
            }
        }
        self.other.add(1);
    }
}

/// One reactor's counters of one namespace (NSID 0: commands of no namespace).
#[derive(Debug)]
pub struct IoCounters {
    pub reactor: usize,
    pub subsystem: Arc<str>,
    pub nsid: u32,
    ops: [OpCounters; OP_CLASSES],
    errors: ErrorCounts,
}

/// A queue's depth: commands started (all of their data received) and not yet
/// completed.
#[derive(Debug)]
pub struct QueueGauge {
    pub reactor: usize,
    pub subsystem: Arc<str>,
    pub cntlid: u16,
    pub qid: u16,
    depth: AtomicU64,
}

type BlockKey = (usize, Arc<str>, u32);

/// The target's counters (see the module documentation).
#[derive(Default, Debug)]
pub struct IoMetrics {
    blocks: Mutex<HashMap<BlockKey, Arc<IoCounters>>>,
    queues: Mutex<Vec<Weak<QueueGauge>>>,
}

/// One latency histogram and its totals, read at a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpSnapshot {
    pub commands: u64,
    pub bytes: u64,
    pub latency_sum_ns: u64,
    /// Not cumulative: bucket `k` as [`LATENCY_BUCKETS`] says.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl OpSnapshot {
    fn add(&mut self, o: &OpSnapshot) {
        self.commands += o.commands;
        self.bytes += o.bytes;
        self.latency_sum_ns += o.latency_sum_ns;
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a += b;
        }
    }
}

/// One block's counts at a scrape.
#[derive(Debug, Clone)]
pub struct BlockSnapshot {
    pub reactor: usize,
    pub subsystem: Arc<str>,
    pub nsid: u32,
    pub ops: [OpSnapshot; OP_CLASSES],
    /// Failures by status (SCT and SC; retry delay, More and DNR cleared).
    pub errors: Vec<(Status, u64)>,
    /// Failures of statuses the table had no room for.
    pub errors_other: u64,
}

impl BlockSnapshot {
    /// Adds another block's counts (same labels, another reactor).
    pub fn merge(&mut self, o: &BlockSnapshot) {
        for (a, b) in self.ops.iter_mut().zip(&o.ops) {
            a.add(b);
        }
        for &(st, n) in &o.errors {
            match self.errors.iter_mut().find(|(s, _)| *s == st) {
                Some((_, m)) => *m += n,
                None => self.errors.push((st, n)),
            }
        }
        self.errors_other += o.errors_other;
    }
}

/// A live queue's depth at a scrape.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    pub reactor: usize,
    pub subsystem: Arc<str>,
    pub cntlid: u16,
    pub qid: u16,
    pub depth: u64,
}

impl IoMetrics {
    /// The block of `reactor`'s queues of namespace `nsid` of `subsystem` (control path).
    fn counters(&self, reactor: usize, subsystem: &Arc<str>, nsid: u32) -> Arc<IoCounters> {
        let mut b = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        b.entry((reactor, subsystem.clone(), nsid))
            .or_insert_with(|| {
                Arc::new(IoCounters {
                    reactor,
                    subsystem: subsystem.clone(),
                    nsid,
                    ops: Default::default(),
                    errors: ErrorCounts::default(),
                })
            })
            .clone()
    }

    fn queue(&self, g: &Arc<QueueGauge>) {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|w| w.strong_count() > 0);
        q.push(Arc::downgrade(g));
    }

    /// Every block's counts and every live queue's depth, now.
    pub fn snapshot(&self) -> (Vec<BlockSnapshot>, Vec<QueueSnapshot>) {
        let blocks: Vec<Arc<IoCounters>> = self
            .blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<BlockSnapshot> = blocks
            .iter()
            .map(|b| {
                let mut ops = [OpSnapshot::default(); OP_CLASSES];
                for (o, c) in ops.iter_mut().zip(&b.ops) {
                    o.commands = c.cmds.get();
                    o.bytes = c.bytes.get();
                    o.latency_sum_ns = c.lat_sum_ns.get();
                    for (l, cl) in o.latency.iter_mut().zip(&c.lat) {
                        *l = cl.get();
                    }
                }
                let mut errors = Vec::new();
                for (k, c) in b.errors.keys.iter().zip(&b.errors.counts) {
                    let key = k.load(Ordering::Acquire);
                    if key == 0 {
                        break;
                    }
                    errors.push((Status((key - 1) as u16), c.get()));
                }
                BlockSnapshot {
                    reactor: b.reactor,
                    subsystem: b.subsystem.clone(),
                    nsid: b.nsid,
                    ops,
                    errors,
                    errors_other: b.errors.other.get(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.subsystem, a.nsid, a.reactor).cmp(&(&b.subsystem, b.nsid, b.reactor))
        });
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .map(|g| QueueSnapshot {
                reactor: g.reactor,
                subsystem: g.subsystem.clone(),
                cntlid: g.cntlid,
                qid: g.qid,
                depth: g.depth.load(Ordering::Relaxed),
            })
            .collect();
        (out, queues)
    }
}

const NOT_STARTED: u64 = u64::MAX;

/// The kind of each opcode on an I/O queue (fabrics commands are admin), and on an
/// admin queue (all admin): a table lookup on the I/O path instead of a match.
const fn classes(io: bool) -> [u8; 256] {
    let mut t = [OpClass::Admin as u8; 256];
    if io {
        let mut i = 0;
        while i < 256 {
            t[i] = OpClass::Other as u8;
            i += 1;
        }
        t[io_opcode::READ as usize] = OpClass::Read as u8;
        t[io_opcode::WRITE as usize] = OpClass::Write as u8;
        t[admin_opcode::FABRICS as usize] = OpClass::Admin as u8;
    }
    t
}

static IO_CLASSES: [u8; 256] = classes(true);
static ADMIN_CLASSES: [u8; 256] = classes(false);

/// What a queue keeps for its counters: its blocks by NSID, when each slot's command
/// started, and the loop clock.
pub(crate) struct QueueMetrics {
    /// By NSID; `[0]` for commands of no namespace (an NSID the queue does not serve
    /// has `[0]`'s block too). Empty before Connect.
    by_nsid: Vec<Arc<IoCounters>>,
    /// The kind of command of each opcode (see [`classes`]).
    classes: &'static [u8; 256],
    /// When each slot's command started (ns since `base`), or [`NOT_STARTED`]: a
    /// command failed before it ran (a bad SGL, a digest error) counts as taking no
    /// time.
    started: Vec<u64>,
    base: Instant,
    /// The last `now` converted, and what it gave.
    last: Instant,
    now_ns: u64,
    /// Registered at Connect (one of no queue's before).
    gauge: Arc<QueueGauge>,
    /// Commands started and not completed.
    outstanding: u64,
}

impl QueueMetrics {
    pub(crate) fn new() -> QueueMetrics {
        let base = Instant::now();
        QueueMetrics {
            by_nsid: Vec::new(),
            started: Vec::new(),
            base,
            last: base,
            now_ns: 0,
            classes: &ADMIN_CLASSES,
            gauge: Arc::new(QueueGauge {
                reactor: 0,
                subsystem: Arc::from(""),
                cntlid: 0,
                qid: 0,
                depth: AtomicU64::new(0),
            }),
            outstanding: 0,
        }
    }

    /// Room for `slots` slots (control path).
    pub(crate) fn grow(&mut self, slots: usize) {
        if self.started.len() < slots {
            self.started.resize(slots, NOT_STARTED);
        }
    }

    /// The queue connected (control path): take the blocks of its namespaces on its
    /// reactor, and register its depth.
    pub(crate) fn connect(
        &mut self,
        metrics: &IoMetrics,
        reactor: usize,
        subsystem: &str,
        nsids: impl Iterator<Item = u32>,
        cntlid: u16,
        qid: u16,
    ) {
        let sub: Arc<str> = Arc::from(subsystem);
        let none = metrics.counters(reactor, &sub, 0);
        self.by_nsid = vec![none.clone()];
        self.classes = if qid == 0 {
            &ADMIN_CLASSES
        } else {
            &IO_CLASSES
        };
        if qid != 0 {
            for nsid in nsids {
                let i = nsid as usize;
                if self.by_nsid.len() <= i {
                    self.by_nsid.resize(i + 1, none.clone());
                }
                self.by_nsid[i] = metrics.counters(reactor, &sub, nsid);
            }
        }
        let g = Arc::new(QueueGauge {
            reactor,
            subsystem: sub,
            cntlid,
            qid,
            depth: AtomicU64::new(0),
        });
        metrics.queue(&g);
        self.gauge = g;
    }

    /// The loop's time, as the queue is handed it.
    #[inline(always)]
    pub(crate) fn clock(&mut self, now: Instant) {
        // One conversion per loop pass: every command of a pass gets the same `now`.
        if now != self.last {
            self.last = now;
            let d = now.saturating_duration_since(self.base);
            self.now_ns = d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos());
        }
    }

    /// A command starts in `slot` (again, for one held through a quiesce: it counts
    /// from its first start).
    #[inline(always)]
    pub(crate) fn start(&mut self, slot: u16) {
        if let Some(s) = self.started.get_mut(usize::from(slot)) {
            if *s == NOT_STARTED {
                *s = self.now_ns;
                self.outstanding += 1;
                self.gauge.depth.store(self.outstanding, Ordering::Relaxed);
            }
        }
    }

    /// `r` completed (its response goes out next).
    #[inline(always)]
    pub(crate) fn complete<T>(&mut self, slot: u16, r: &Request<T>) {
        let started = match self.started.get_mut(usize::from(slot)) {
            Some(s) => std::mem::replace(s, NOT_STARTED),
            None => NOT_STARTED,
        };
        if started != NOT_STARTED {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.gauge.depth.store(self.outstanding, Ordering::Relaxed);
        }
        let Some(none) = self.by_nsid.first() else {
            return;
        };
        // An admin queue has only `[0]`; a fabrics command's NSID field is reserved
        // (zero); an NSID the queue does not serve counts with no namespace.
        let nsid = r.sqe.nsid as usize;
        let block = self.by_nsid.get(nsid).unwrap_or(none);
        let class = self.classes[usize::from(r.sqe.opcode)];
        let op = &block.ops[usize::from(class) & (OP_CLASSES - 1)];
        op.cmds.add(1);
        let st = r.cqe.status;
        if st.is_success() {
            let bytes = match r.xfer {
                Xfer::H2C { len, .. } => len,
                Xfer::C2H { .. } => r.c2h_len,
                Xfer::None => 0,
            };
            op.bytes.add(u64::from(bytes));
        } else {
            block.errors.count(st);
        }
        let ns = self.now_ns.saturating_sub(started);
        op.lat_sum_ns.add(ns);
        // Units of 1.024 µs: a shift, not a division.
        let units = ns >> 10;
        let k = ((u64::BITS - units.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1);
        op.lat[k].add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_spec::status::generic;

    #[test]
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(bucket_bound_s(0), Some(1.024e-6));
        assert_eq!(bucket_bound_s(10), Some(1.048576e-3));
        assert_eq!(bucket_bound_s(LATENCY_BUCKETS - 1), None);
    }

    #[test]
    fn errors_are_counted_by_status_and_overflow_to_other() {
        let e = ErrorCounts::default();
        let oor = Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr();
        e.count(oor);
        e.count(Status::generic(generic::LBA_OUT_OF_RANGE));
        for sc in 0..ERROR_SLOTS as u8 + 3 {
            e.count(Status::generic(0x40 + sc));
        }
        assert_eq!(
            e.keys[0].load(Ordering::Relaxed),
            u32::from(oor.0 & 0x7FF) + 1
        );
        assert_eq!(e.counts[0].get(), 2, "DNR does not make another status");
        assert_eq!(e.other.get(), 4);
    }

    #[test]
    fn snapshots_merge_reactors() {
        let m = IoMetrics::default();
        let s: Arc<str> = Arc::from("nqn.x");
        let a = m.counters(0, &s, 1);
        let b = m.counters(1, &s, 1);
        assert!(Arc::ptr_eq(&a, &m.counters(0, &s, 1)), "one block per key");
        a.ops[0].cmds.add(3);
        b.ops[0].cmds.add(4);
        b.errors.count(Status::generic(generic::INTERNAL_ERROR));
        let (blocks, _) = m.snapshot();
        assert_eq!(blocks.len(), 2);
        let mut sum = blocks[0].clone();
        sum.merge(&blocks[1]);
        assert_eq!(sum.ops[0].commands, 7);
        assert_eq!(
            sum.errors,
            vec![(Status::generic(generic::INTERNAL_ERROR), 1)]
        );
    }
}
