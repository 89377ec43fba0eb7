//! The load loop: one pinned thread per core drives its queues (NVMe/TCP queue pairs
//! or block-device channels, behind [`IoQueue`]) run-to-completion: poll each queue,
//! account and verify what completed, refill the queue depth, flush. Nothing on that
//! path allocates or locks; a worker hands its per-second figures to the main thread
//! over a channel, which prints progress and keeps the controllers alive.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::initiator::InitiatorError;
use crate::stats::{new_hist, ErrorKind, Interval, Stats};
use crate::verify::VerifyState;
use crate::workload::{Generator, Op, Region, Workload};

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error(transparent)]
    Initiator(#[from] InitiatorError),
    #[error("{0}")]
    Setup(String),
    #[error("{queue}: {in_flight} I/O(s) got no completion within {timeout:?}")]
    Stalled {
        queue: String,
        in_flight: usize,
        timeout: Duration,
    },
    #[error("worker on {0} panicked")]
    Panicked(String),
}

/// How one queue finished an I/O.
#[derive(Clone, Copy, Debug)]
pub struct Done {
    pub tag: u16,
    pub error: Option<ErrorKind>,
}

/// A queue the engine drives: NVMe/TCP queue pair or block-device channel. Tags are
/// small integers below [`IoQueue::depth`], each with its own data buffer.
pub trait IoQueue {
    /// Commands in flight at most.
    fn depth(&self) -> u16;
    /// A free tag, if any.
    fn alloc(&mut self) -> Option<u16>;
    fn buf(&self, tag: u16) -> &[u8];
    fn buf_mut(&mut self, tag: u16) -> &mut [u8];
    /// Queues `op` of `blocks` blocks at `lba`, `bytes` bytes through `tag`'s buffer.
    fn submit(
        &mut self,
        tag: u16,
        op: Op,
        lba: u64,
        blocks: u32,
        bytes: u32,
    ) -> Result<(), PerfError>;
    /// Appends what completed.
    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError>;
    /// Sends what was queued.
    fn flush(&mut self) -> Result<(), PerfError>;
    fn in_flight(&self) -> usize;
    /// Orderly end once nothing is in flight (NVMe: Disconnect).
    fn close(self) -> Result<(), PerfError>;
    /// For messages: which queue this is.
    fn describe(&self) -> String;
    /// The socket to watch for input; `None`: poll every pass (block devices).
    fn fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Completions are waiting that no socket event will announce.
    fn has_ready(&self) -> bool {
        false
    }
}

/// A device under test: a namespace or a block device.
#[derive(Clone, Debug)]
pub struct Device {
    pub name: String,
    pub block_size: u32,
    /// The LBAs the run uses.
    pub range: Region,
}

/// The workload every queue runs.
#[derive(Clone, Debug)]
pub struct Job {
    pub workload: Workload,
    /// Read percentage of rw/randrw.
    pub mix: u8,
    pub io_size: u32,
    pub depth: u16,
    pub duration: Duration,
    pub warmup: Duration,
    pub verify: bool,
    /// An I/O outstanding longer than this fails the run.
    pub io_timeout: Duration,
    pub progress: bool,
}

/// One queue a worker drives, and where it works.
pub struct QueueSetup<Q> {
    pub queue: Q,
    pub device: usize,
    pub region: Region,
    pub seed: u64,
}

type Build<Q> = Box<dyn FnOnce() -> Result<Vec<QueueSetup<Q>>, PerfError> + Send>;

/// A worker thread: its core and how it gets its queues (built on the thread itself,
/// since block-device channels must be opened where they are used).
pub struct WorkerSpec<Q> {
    pub core: Option<usize>,
    pub build: Build<Q>,
}

/// What one worker measured.
#[derive(Debug)]
pub struct WorkerResult {
    pub core: Option<usize>,
    /// Per device.
    pub stats: Vec<Stats>,
    /// The measured window actually run (shorter than asked when stopped early).
    pub measured: Duration,
    /// How long the worker waited, runnable, for its CPU during the run (other work
    /// on its core); `None` where the kernel does not say.
    pub preempted: Option<Duration>,
    pub error: Option<PerfError>,
}

/// Second `index` of the measurement, all workers together.
#[derive(Clone, Debug)]
pub struct IntervalTotal {
    pub index: u64,
    pub len: Duration,
    pub ios: u64,
    /// Of `ios`, the reads.
    pub reads: u64,
    pub bytes: u64,
    pub hist: Histogram<u64>,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    pub workers: Vec<WorkerResult>,
    pub intervals: Vec<IntervalTotal>,
    /// The first error (worker, keep-alive or interruption), if any.
    pub error: Option<String>,
    pub interrupted: bool,
}

const GO_WAIT: u8 = 0;
const GO_RUN: u8 = 1;
const GO_ABORT: u8 = 2;

struct Control {
    go: AtomicU8,
    stop: AtomicBool,
    start: OnceLock<Instant>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C stops the run (figures so far are reported) instead of killing the process.
fn catch_sigint() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
    // function pointer outlives the process.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

fn restore_sigint() {
    // SAFETY: restores the default disposition; no pointers involved.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

enum Msg {
    Ready(Result<(), PerfError>),
    Tick(Interval),
}

/// Runs `job` on `workers`. `tick` is called by the main thread about every 100 ms
/// during the run (keep-alive); an error from it stops the run.
pub fn run<Q: IoQueue + 'static>(
    job: &Job,
    devices: &[Device],
    workers: Vec<WorkerSpec<Q>>,
    tick: &mut dyn FnMut() -> Result<(), PerfError>,
) -> Result<RunOutcome, PerfError> {
    let ctl = Arc::new(Control {
        go: AtomicU8::new(GO_WAIT),
        stop: AtomicBool::new(false),
        start: OnceLock::new(),
    });
    let n = workers.len();
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut handles: Vec<(Option<usize>, JoinHandle<WorkerResult>)> = Vec::with_capacity(n);
    for (i, w) in workers.into_iter().enumerate() {
        let ctl = ctl.clone();
        let tx = tx.clone();
        let job = job.clone();
        let ndev = devices.len();
        let bs: Vec<u32> = devices.iter().map(|d| d.block_size).collect();
        let core = w.core;
        let h = thread::Builder::new()
            .name(format!("perf-w{i}"))
            .spawn(move || worker_main(i, core, w.build, &job, ndev, &bs, &ctl, &tx))
            .map_err(|e| PerfError::Setup(format!("cannot start a worker thread: {e}")))?;
        handles.push((core, h));
    }
    drop(tx);

    // Every worker builds its queues, then they all start together.
    let mut setup_err = None;
    let mut ready = 0;
    while ready < n {
        match rx.recv() {
            Ok(Msg::Ready(r)) => {
                ready += 1;
                if let Err(e) = r {
                    setup_err.get_or_insert(e);
                }
            }
            Ok(Msg::Tick(_)) => {}
            Err(_) => break,
        }
    }
    if let Some(e) = setup_err {
        ctl.go.store(GO_ABORT, Ordering::SeqCst);
        for (_, h) in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    catch_sigint();
    let _ = ctl.start.set(Instant::now());
    ctl.go.store(GO_RUN, Ordering::SeqCst);

    let mut agg = Aggregator::new(n, job.progress);
    let mut error = None;
    let mut last_tick = Instant::now();
    let mut interrupted = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Tick(iv)) => agg.add(iv),
            Ok(Msg::Ready(..)) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if INTERRUPTED.load(Ordering::SeqCst) && !interrupted {
            interrupted = true;
            ctl.stop.store(true, Ordering::SeqCst);
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            if error.is_none() && !ctl.stop.load(Ordering::SeqCst) {
                if let Err(e) = tick() {
                    error = Some(e.to_string());
                    ctl.stop.store(true, Ordering::SeqCst);
                }
            }
        }
    }
    restore_sigint();
    let mut results = Vec::with_capacity(n);
    for (core, h) in handles {
        let r = h.join().unwrap_or_else(|_| WorkerResult {
            core,
            stats: Vec::new(),
            measured: Duration::ZERO,
            preempted: None,
            error: Some(PerfError::Panicked(core_name(core))),
        });
        if error.is_none() {
            if let Some(e) = &r.error {
                error = Some(e.to_string());
            }
        }
        results.push(r);
    }
    if interrupted && error.is_none() {
        error = Some("interrupted (Ctrl-C): the figures cover the time run".to_string());
    }
    Ok(RunOutcome {
        workers: results,
        intervals: agg.finish(),
        error,
        interrupted,
    })
}

pub fn core_name(core: Option<usize>) -> String {
    match core {
        Some(c) => format!("core {c}"),
        None => "unpinned".to_string(),
    }
}

/// Sums the workers' seconds and prints a progress line when a second is complete.
struct Aggregator {
    workers: usize,
    progress: bool,
    /// (warm-up, index) -> total and how many workers reported it.
    open: Vec<(bool, IntervalTotal, usize)>,
    done: Vec<IntervalTotal>,
}

impl Aggregator {
    fn new(workers: usize, progress: bool) -> Aggregator {
        Aggregator {
            workers,
            progress,
            open: Vec::new(),
            done: Vec::new(),
        }
    }

    fn add(&mut self, iv: Interval) {
        let pos = self
            .open
            .iter()
            .position(|(w, t, _)| *w == iv.warmup && t.index == iv.index);
        let i = match pos {
            Some(i) => i,
            None => {
                self.open.push((
                    iv.warmup,
                    IntervalTotal {
                        index: iv.index,
                        len: Duration::ZERO,
                        ios: 0,
                        reads: 0,
                        bytes: 0,
                        hist: new_hist(),
                    },
                    0,
                ));
                self.open.len() - 1
            }
        };
        let e = &mut self.open[i];
        e.1.len = e.1.len.max(iv.len);
        e.1.ios += iv.ios;
        e.1.reads += iv.reads;
        e.1.bytes += iv.bytes;
        let _ = e.1.hist.add(&iv.hist);
        e.2 += 1;
        if e.2 == self.workers {
            let (warm, t, _) = self.open.remove(i);
            self.close(warm, t);
        }
    }

    fn close(&mut self, warm: bool, t: IntervalTotal) {
        if self.progress {
            eprintln!("{}", progress_line(warm, &t));
        }
        if !warm {
            self.done.push(t);
        }
    }

    fn finish(mut self) -> Vec<IntervalTotal> {
        let open = std::mem::take(&mut self.open);
        for (warm, t, _) in open {
            self.close(warm, t);
        }
        self.done.sort_by_key(|t| t.index);
        self.done
    }
}

fn progress_line(warm: bool, t: &IntervalTotal) -> String {
    let secs = t.len.as_secs_f64().max(1e-9);
    let p99 = if t.hist.is_empty() {
        0.0
    } else {
        t.hist.value_at_quantile(0.99) as f64 / 1000.0
    };
    format!(
        "[{}{:>4} s] {:>12.0} IOPS {:>10.1} MiB/s  p99 {:>9.1} us",
        if warm { "warm-up " } else { "" },
        t.index + 1,
        t.ios as f64 / secs,
        t.bytes as f64 / secs / (1024.0 * 1024.0),
        p99
    )
}

#[derive(Clone, Copy)]
struct SlotInfo {
    op: Op,
    lba: u64,
    submitted: Instant,
    gen: u32,
    busy: bool,
}

struct QueueCtx<Q> {
    q: Q,
    dev: usize,
    gen: Generator,
    verify: Option<VerifyState>,
    slots: Vec<SlotInfo>,
    done: Vec<Done>,
    last_progress: Instant,
    io_blocks: u32,
}

impl<Q: IoQueue> QueueCtx<Q> {
    /// Submits one new I/O if the queue has room; false when it did not.
    fn submit_one(&mut self, now: Instant, io_bytes: u32) -> Result<bool, PerfError> {
        let (op, lba) = self.gen.next_op();
        if self.verify.is_some() && self.slots.iter().any(|s| s.busy && s.lba == lba) {
            // Never two I/Os on the same blocks at once while verifying: their order
            // is undefined. Try again at the next loop.
            return Ok(false);
        }
        let Some(tag) = self.q.alloc() else {
            return Ok(false);
        };
        let mut gen = 0;
        if op == Op::Write {
            if let Some(v) = &mut self.verify {
                gen = v.stamp(&mut self.q.buf_mut(tag)[..io_bytes as usize], lba);
            }
        }
        self.q.submit(tag, op, lba, self.io_blocks, io_bytes)?;
        self.slots[usize::from(tag)] = SlotInfo {
            op,
            lba,
            submitted: now,
            gen,
            busy: true,
        };
        Ok(true)
    }
}

/// Time the calling thread has spent runnable but waiting for a CPU (the second field
/// of /proc/thread-self/schedstat). A pinned worker that waited at all shared its core
/// with other work, and its figures are low by about that share.
pub fn run_delay() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Latency of an I/O in nanoseconds.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

#[allow(clippy::too_many_arguments)]
fn worker_main<Q: IoQueue>(
    index: usize,
    core: Option<usize>,
    build: Build<Q>,
    job: &Job,
    ndev: usize,
    block_sizes: &[u32],
    ctl: &Control,
    tx: &Sender<Msg>,
) -> WorkerResult {
    let mut result = WorkerResult {
        core,
        stats: vec![Stats::default(); ndev],
        measured: Duration::ZERO,
        preempted: None,
        error: None,
    };
    if let Some(c) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
            let _ = tx.send(Msg::Ready(Err(PerfError::Setup(format!(
                "cannot pin a worker to core {c}"
            )))));
            return result;
        }
    }
    let queues = match build() {
        Ok(q) => q,
        Err(e) => {
            let _ = tx.send(Msg::Ready(Err(e)));
            return result;
        }
    };
    let mut ctxs = Vec::with_capacity(queues.len());
    for s in queues {
        let bs = block_sizes[s.device];
        let io_blocks = job.io_size / bs;
        let verify = if job.verify {
            match VerifyState::new(s.region.start_lba, s.region.blocks, bs, s.seed) {
                Ok(v) => Some(v),
                Err(e) => {
                    let _ = tx.send(Msg::Ready(Err(PerfError::Setup(e))));
                    return result;
                }
            }
        } else {
            None
        };
        let depth = usize::from(s.queue.depth());
        let now = Instant::now();
        ctxs.push(QueueCtx {
            gen: Generator::new(job.workload, job.mix, s.region, io_blocks, s.seed),
            q: s.queue,
            dev: s.device,
            verify,
            slots: vec![
                SlotInfo {
                    op: Op::Read,
                    lba: u64::MAX,
                    submitted: now,
                    gen: 0,
                    busy: false,
                };
                depth
            ],
            done: Vec::with_capacity(depth),
            last_progress: now,
            io_blocks,
        });
    }
    let _ = tx.send(Msg::Ready(Ok(())));
    loop {
        match ctl.go.load(Ordering::Acquire) {
            GO_RUN => break,
            GO_ABORT => return result,
            _ => thread::sleep(Duration::from_micros(200)),
        }
    }
    let start = ctl.start.get().copied().unwrap_or_else(Instant::now);
    let measure_start = start + job.warmup;
    let end = measure_start + job.duration;
    let delay0 = run_delay();
    let err = drive(
        index,
        job,
        &mut ctxs,
        &mut result,
        start,
        measure_start,
        end,
        ctl,
        tx,
    );
    result.preempted = match (delay0, run_delay()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if let Err(e) = err {
        ctl.stop.store(true, Ordering::SeqCst);
        if result.measured == Duration::ZERO {
            result.measured = Instant::now()
                .min(end)
                .saturating_duration_since(measure_start);
        }
        result.error = Some(e);
        return result;
    }
    for c in ctxs {
        if let Err(e) = c.q.close() {
            result.error.get_or_insert(e);
        }
    }
    result
}

/// The load loop of one worker, through the drain.
#[allow(clippy::too_many_arguments)]
fn drive<Q: IoQueue>(
    index: usize,
    job: &Job,
    ctxs: &mut [QueueCtx<Q>],
    result: &mut WorkerResult,
    start: Instant,
    measure_start: Instant,
    end: Instant,
    ctl: &Control,
    tx: &Sender<Msg>,
) -> Result<(), PerfError> {
    let io_bytes = job.io_size;
    let mut warm = job.warmup > Duration::ZERO;
    let mut tick_start = if warm { start } else { measure_start };
    let mut tick_index = 0u64;
    let mut next_tick =
        (tick_start + Duration::from_secs(1)).min(if warm { measure_start } else { end });
    let mut iv_hist = new_hist();
    let (mut iv_ios, mut iv_reads, mut iv_bytes) = (0u64, 0u64, 0u64);
    let mut running = true;
    let mut drain_deadline = end + job.io_timeout;

    // Sockets are read when epoll says they hold something; other queues every pass.
    let mut rd = lightpool_reactor::readiness::Readiness::new(ctxs.len())
        .map_err(|e| PerfError::Setup(format!("epoll: {e}")))?;
    let mut watched = Vec::with_capacity(ctxs.len());
    for (i, c) in ctxs.iter().enumerate() {
        if let Some(fd) = c.q.fd() {
            rd.add(fd, i as u64)
                .map_err(|e| PerfError::Setup(format!("epoll: {e}")))?;
        }
        watched.push(c.q.fd().is_some());
    }
    let mut ready = vec![false; ctxs.len()];
    let any_watched = watched.iter().any(|&w| w);

    let now = Instant::now();
    for c in ctxs.iter_mut() {
        while c.q.in_flight() < usize::from(c.q.depth()) {
            if !c.submit_one(now, io_bytes)? {
                break;
            }
        }
        c.q.flush()?;
        c.last_progress = now;
    }
    loop {
        let now = Instant::now();
        let measuring = running && now >= measure_start && now < end;
        let mut in_flight = 0;
        ready.fill(false);
        let n = if any_watched {
            rd.poll()
                .map_err(|e| PerfError::Setup(format!("epoll: {e}")))?
        } else {
            0
        };
        for k in 0..n {
            if let Some(r) = ready.get_mut(rd.token(k) as usize) {
                *r = true;
            }
        }
        for (i, c) in ctxs.iter_mut().enumerate() {
            c.done.clear();
            if ready[i] || !watched[i] || c.q.has_ready() {
                c.q.poll(&mut c.done)?;
            }
            // Completions are timed when they were read, submissions when they are
            // queued (as spdk_nvme_perf does), one clock read for each batch.
            let seen = if c.done.is_empty() {
                now
            } else {
                c.last_progress = now;
                Instant::now()
            };
            let st = &mut result.stats[c.dev];
            for i in 0..c.done.len() {
                let d = c.done[i];
                let slot = &mut c.slots[usize::from(d.tag)];
                slot.busy = false;
                let s = *slot;
                let ns = nanos(seen.saturating_duration_since(s.submitted));
                match d.error {
                    None => {
                        if let Some(v) = &mut c.verify {
                            match s.op {
                                Op::Write => v.write_done(s.lba, c.io_blocks, s.gen, true),
                                Op::Read => {
                                    let buf = &c.q.buf(d.tag)[..io_bytes as usize];
                                    let counts = v.check(buf, s.lba, &mut |m| st.add_mismatch(m));
                                    st.verify.good += counts.good;
                                    st.verify.unwritten += counts.unwritten;
                                    st.verify.bad += counts.bad;
                                }
                            }
                        }
                        if running && now < end {
                            iv_hist.saturating_record(ns);
                            iv_ios += 1;
                            iv_reads += u64::from(s.op == Op::Read);
                            iv_bytes += u64::from(io_bytes);
                        }
                        if measuring {
                            let dir = st.dir(s.op);
                            dir.count(ns, u64::from(io_bytes));
                            dir.hist.saturating_record(ns);
                        }
                    }
                    Some(kind) => {
                        if s.op == Op::Write {
                            if let Some(v) = &mut c.verify {
                                v.write_done(s.lba, c.io_blocks, s.gen, false);
                            }
                        }
                        st.errors.add(kind, s.op, 1);
                    }
                }
            }
            if running && c.q.in_flight() < usize::from(c.q.depth()) {
                let queued = Instant::now();
                while c.q.in_flight() < usize::from(c.q.depth()) {
                    if !c.submit_one(queued, io_bytes)? {
                        break;
                    }
                }
            }
            c.q.flush()?;
            let f = c.q.in_flight();
            if f > 0 && now.saturating_duration_since(c.last_progress) > job.io_timeout {
                return Err(PerfError::Stalled {
                    queue: c.q.describe(),
                    in_flight: f,
                    timeout: job.io_timeout,
                });
            }
            in_flight += f;
        }

        if running {
            let stop = ctl.stop.load(Ordering::Relaxed);
            if now >= next_tick || stop {
                let t_end = if stop { now.min(next_tick) } else { next_tick };
                let len = t_end.saturating_duration_since(tick_start);
                if len > Duration::ZERO {
                    let hist = std::mem::replace(&mut iv_hist, new_hist());
                    let _ = tx.send(Msg::Tick(Interval {
                        worker: index,
                        index: tick_index,
                        warmup: warm,
                        len,
                        ios: iv_ios,
                        reads: iv_reads,
                        bytes: iv_bytes,
                        hist,
                    }));
                }
                iv_ios = 0;
                iv_reads = 0;
                iv_bytes = 0;
                tick_index += 1;
                tick_start = next_tick;
                if warm && next_tick >= measure_start {
                    warm = false;
                    tick_start = measure_start;
                    tick_index = 0;
                }
                let phase_end = if warm { measure_start } else { end };
                next_tick = (tick_start + Duration::from_secs(1)).min(phase_end);
                if stop || (!warm && tick_start >= end) {
                    running = false;
                    drain_deadline = now + job.io_timeout;
                    result.measured = now.min(end).saturating_duration_since(measure_start);
                }
            }
        } else if in_flight == 0 {
            return Ok(());
        } else if now > drain_deadline {
            let c = ctxs.iter().find(|c| c.q.in_flight() > 0);
            return Err(PerfError::Stalled {
                queue: c.map(|c| c.q.describe()).unwrap_or_default(),
                in_flight,
                timeout: job.io_timeout,
            });
        }
    }
}
