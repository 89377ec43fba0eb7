//! The copy engine over RAM devices: writers racing the copier on small regions end
//! with the destination identical to the source; a writer on a hot region converges
//! under the writer throttle, whose pacing and bound are checked on their own; a
//! destination that fails, a cancel, a rate limit, and bad pairs of devices.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::testing::*;
use lightpool_bdev::{Bdev, BdevError, BdevInfo, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;

use crate::{MigrateOptions, Migration, State};

const MIB: u64 = 1 << 20;
const BS: u32 = 512;

fn ram(name: &str, bytes: u64) -> Arc<dyn Bdev> {
    MallocBdev::new(name, bytes, BS).expect("RAM device")
}

/// Reads the whole device in 1 MiB pieces.
fn contents(d: &dyn Bdev) -> Vec<u8> {
    let mut ch = d.open_channel().expect("channel");
    let blocks = d.info().num_blocks;
    let per = (MIB / u64::from(BS)) as u32;
    let mut out = Vec::new();
    let mut lba = 0;
    while lba < blocks {
        let n = per.min((blocks - lba) as u32);
        let (st, b) = read(ch.as_mut(), BS, lba, n);
        assert_eq!(st, IoStatus::Success);
        out.extend_from_slice(b.as_slice());
        lba += u64::from(n);
    }
    out
}

/// Random writes of 1 to 64 blocks, 8 in flight, through `ch` until `stop`; every
/// completion must be `Success`. Returns how many were written.
fn writer(mirror: Arc<dyn Bdev>, blocks: u64, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut ch = mirror.open_channel().expect("channel");
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let bufs: Vec<AlignedBuf> = (0..8).map(|_| AlignedBuf::new(64 * BS as usize)).collect();
    let mut busy = [false; 8];
    let mut written = 0;
    loop {
        let stopping = stop.load(SeqCst);
        for (i, b) in bufs.iter().enumerate() {
            if busy[i] || stopping {
                continue;
            }
            let n = (next() % 64 + 1) as u32;
            let lba = next() % (blocks - u64::from(n));
            let data = pattern(BS, lba, n, (next() % 250) as u8);
            // SAFETY: only this slot's buffer; it is not in flight (busy is false).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b.ptr(), data.len()) };
            let req = IoRequest::rw(IoOp::Write, lba, n, b.ptr(), data.len(), i as u64);
            // SAFETY: `bufs` outlives every completion, polled below before returning.
            unsafe { ch.submit(req) };
            busy[i] = true;
        }
        ch.poll(&mut |tag, st| {
            assert_eq!(st, IoStatus::Success, "a host write failed");
            busy[tag as usize] = false;
            written += 1;
        });
        if stopping && !busy.iter().any(|b| *b) {
            return written;
        }
    }
}

fn small_regions() -> MigrateOptions {
    MigrateOptions {
        region_bytes: 64 << 10,
        final_dirty_bytes: 256 << 10,
        ..MigrateOptions::default()
    }
}

/// A device whose reads take their data when submitted and complete 300 µs later:
/// the copier's read of a region then lies well before its write to the destination,
/// the window in which a host write can land on both devices between the two.
struct SlowReads {
    inner: Arc<dyn Bdev>,
    delay: Duration,
    /// Which requests are slow (reads, or writes for a device whose writes are).
    op: IoOp,
    /// Its channels offer a completion fd (a timerfd armed for each slow request),
    /// as io_uring's do; without, a poller can only poll again.
    timer: bool,
}

struct SlowReadsChannel {
    inner: Box<dyn IoChannel>,
    reads: std::collections::HashSet<u64>,
    held: Vec<(u64, IoStatus, Instant)>,
    delay: Duration,
    op: IoOp,
    timer: Option<std::os::fd::OwnedFd>,
}

fn timerfd() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: no pointers; a non-negative return is an fd nobody else owns.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
    assert!(fd >= 0, "timerfd_create");
    // SAFETY: just created, owned by nobody else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

impl SlowReadsChannel {
    /// The timerfd (if any) becomes readable `delay` from now; `None`: reset it.
    fn arm(&self, delay: Option<Duration>) {
        use std::os::fd::AsRawFd;
        let Some(fd) = self.timer.as_ref() else {
            return;
        };
        let d = delay.unwrap_or_default();
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            },
        };
        // SAFETY: a live local for the call; the fd is ours. Setting the time (or
        // disarming) also clears an expiry not read yet.
        let rc = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "timerfd_settime");
    }
}

impl Bdev for SlowReads {
    fn info(&self) -> &BdevInfo {
        self.inner.info()
    }
    fn kind(&self) -> &'static str {
        "slow-reads"
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(SlowReadsChannel {
            inner: self.inner.open_channel()?,
            reads: Default::default(),
            held: Vec::new(),
            delay: self.delay,
            op: self.op,
            timer: self.timer.then(timerfd),
        }))
    }
}

impl IoChannel for SlowReadsChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        if req.op == self.op {
            self.reads.insert(req.tag);
        }
        // SAFETY: passed on.
        unsafe { self.inner.submit(req) }
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let (reads, held, delay) = (&mut self.reads, &mut self.held, self.delay);
        let was = held.len();
        let mut n = self.inner.poll(&mut |t, st| {
            if reads.remove(&t) {
                held.push((t, st, Instant::now() + delay));
            } else {
                done(t, st);
            }
        });
        if was == 0 && !self.held.is_empty() {
            self.arm(Some(delay));
        }
        let now = Instant::now();
        self.held.retain(|&(t, st, due)| {
            if due <= now {
                done(t, st);
                n += 1;
                false
            } else {
                true
            }
        });
        if let Some(first) = self.held.iter().map(|h| h.2).min() {
            if n > 0 {
                self.arm(Some(
                    first
                        .saturating_duration_since(now)
                        .max(Duration::from_nanos(1)),
                ));
            }
        } else if n > 0 {
            self.arm(None);
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.timer.as_ref().map(|t| t.as_raw_fd())
    }
}

#[test]
fn writes_racing_the_copy_leave_the_destination_identical() {
    let src: Arc<dyn Bdev> = Arc::new(SlowReads {
        inner: ram("mig-src", 32 * MIB),
        delay: Duration::from_micros(300),
        op: IoOp::Read,
        timer: false,
    });
    // Data before the migration starts.
    {
        let mut ch = src.open_channel().expect("channel");
        for lba in (0..src.info().num_blocks).step_by(4096) {
            assert_eq!(
                write(ch.as_mut(), BS, lba, &pattern(BS, lba, 64, 9)),
                IoStatus::Success
            );
        }
    }
    let dst = ram("mig-dst", 32 * MIB);
    let (m, mirror) =
        Migration::start("v1", src.clone(), dst.clone(), small_regions()).expect("start");
    assert_eq!(mirror.info().num_blocks, src.info().num_blocks);
    assert_eq!(mirror.kind(), "migration");
    let stop = Arc::new(AtomicBool::new(false));
    let blocks = src.info().num_blocks;
    let writers: Vec<_> = (0..2)
        .map(|k| {
            let d: Arc<dyn Bdev> = mirror.clone();
            let s = stop.clone();
            std::thread::spawn(move || writer(d, blocks, 0x9e37 + k, s))
        })
        .collect();
    let p = m.wait();
    assert_eq!(p.state, State::Synced, "{p:?}");
    // Writes go on after the sync: the mirror keeps the destination current.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, SeqCst);
    let written: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert!(
        written > 100,
        "the writers wrote during the copy: {written}"
    );
    assert!(p.copied_bytes >= 32 * MIB, "{p:?}");
    assert!(p.pause.is_some(), "{p:?}");
    assert_eq!(p.eta, None);
    assert!(
        contents(src.as_ref()) == contents(dst.as_ref()),
        "the destination differs from the source"
    );
}

#[test]
fn a_writer_faster_than_the_copy_is_throttled_until_it_converges() {
    // Every write lands in the first 256 KiB (4 regions of 64 KiB), whose copies take
    // 2 ms each: writes race nearly every one of them, round after round (unthrottled,
    // the dirty bytes reach the final pause's threshold of none only when the writers
    // happen to be off the CPU for a whole round). With the throttle the copy
    // converges by itself, far below the round limit.
    let src: Arc<dyn Bdev> = Arc::new(SlowReads {
        inner: ram("mig-hot-src", 8 * MIB),
        delay: Duration::from_millis(2),
        op: IoOp::Read,
        timer: false,
    });
    let dst = ram("mig-hot-dst", 8 * MIB);
    let opts = MigrateOptions {
        region_bytes: 64 << 10,
        final_dirty_bytes: 0,
        max_rounds: 100_000,
        throttle_after: 2,
        max_write_delay: Duration::from_millis(50),
        ..MigrateOptions::default()
    };
    let (m, mirror) = Migration::prepare("hot", src.clone(), dst.clone(), opts).expect("prepare");
    let stop = Arc::new(AtomicBool::new(false));
    let hot = (256 << 10) / u64::from(BS);
    let writers: Vec<_> = (0..2)
        .map(|k| {
            let d: Arc<dyn Bdev> = mirror.clone();
            let s = stop.clone();
            std::thread::spawn(move || writer(d, hot, 0x5eed + k, s))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    m.go().expect("go");
    let t = Instant::now();
    let p = loop {
        let p = m.progress();
        if p.state != State::Copying && p.state != State::Pausing {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no convergence: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(p.state, State::Synced, "{p:?}");
    assert!(p.round < 100_000, "converged by itself: {p:?}");
    assert!(!p.throttled, "the throttle is lifted once synced: {p:?}");
    stop.store(true, SeqCst);
    let written: u64 = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert!(written > 100, "the writers wrote: {written}");
    assert!(
        contents(src.as_ref()) == contents(dst.as_ref()),
        "the destination differs from the source"
    );
}

#[test]
fn throttled_writes_are_paced_and_each_waits_at_most_the_bound() {
    let src = ram("mig-pace-src", 4 * MIB);
    let dst = ram("mig-pace-dst", 4 * MIB);
    let opts = MigrateOptions {
        max_write_delay: Duration::from_millis(20),
        ..MigrateOptions::default()
    };
    // No copy: the mirror alone, with the throttle the copier would set.
    let (m, mirror) = Migration::prepare("pace", src, dst, opts).expect("prepare");
    // 4 MiB/s: a 4 KiB write every millisecond.
    m.sh.throttle(4 << 20);
    assert!(m.progress().throttled);
    let mut ch = mirror.open_channel().expect("channel");
    let bufs: Vec<AlignedBuf> = (0..32).map(|_| AlignedBuf::new(4096)).collect();
    // One at a time: paced to the rate.
    let t = Instant::now();
    for i in 0..40u64 {
        let st = write(ch.as_mut(), BS, i * 8, &pattern(BS, i * 8, 8, 1));
        assert_eq!(st, IoStatus::Success);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(38),
        "40 writes at one a millisecond took {:?}",
        t.elapsed()
    );
    // 32 at once: the first go at once, the last wait the bound, not 32 ms.
    let t = Instant::now();
    for (i, b) in bufs.iter().enumerate() {
        let req = IoRequest::rw(IoOp::Write, i as u64 * 8, 8, b.ptr(), 4096, i as u64);
        // SAFETY: `bufs` outlives the completions, all polled below.
        unsafe { ch.submit(req) };
    }
    let mut done = 0;
    while done < 32 {
        ch.poll(&mut |_, st| {
            assert_eq!(st, IoStatus::Success);
            done += 1;
        });
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(19),
        "the burst waited the bound: {took:?}"
    );
    // However far behind the clock is, no slot lies beyond the bound.
    let bound = Duration::from_millis(20).as_nanos() as u64;
    let mut waits = 0;
    for _ in 0..100 {
        if let Some(at) = m.sh.throttle_slot(1 << 20) {
            assert!(at <= m.sh.now_ns() + bound);
            waits += 1;
        }
    }
    assert!(waits >= 99, "1 MiB writes at 4 MiB/s wait: {waits}");
    // Lifted: nothing waits.
    m.sh.throttle(0);
    assert!(!m.progress().throttled);
    assert_eq!(m.sh.throttle_slot(1 << 20), None);
}

/// A RAM device whose writes fail once `fail` is set.
struct Failing {
    inner: Arc<dyn Bdev>,
    fail: Arc<AtomicBool>,
}

struct FailingChannel {
    inner: Box<dyn IoChannel>,
    fail: Arc<AtomicBool>,
    failed: Vec<u64>,
}

impl Bdev for Failing {
    fn info(&self) -> &BdevInfo {
        self.inner.info()
    }
    fn kind(&self) -> &'static str {
        "failing"
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(FailingChannel {
            inner: self.inner.open_channel()?,
            fail: self.fail.clone(),
            failed: Vec::new(),
        }))
    }
}

impl IoChannel for FailingChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        if req.op == IoOp::Write && self.fail.load(SeqCst) {
            self.failed.push(req.tag);
            return;
        }
        // SAFETY: passed on.
        unsafe { self.inner.submit(req) }
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let n = self.failed.len();
        for t in self.failed.drain(..) {
            done(t, IoStatus::Io(libc::EIO));
        }
        n + self.inner.poll(done)
    }
    fn in_flight(&self) -> usize {
        self.failed.len() + self.inner.in_flight()
    }
}

#[test]
fn a_destination_that_fails_fails_the_migration_and_the_source_serves_on() {
    let src = ram("mig-fsrc", 16 * MIB);
    let fail = Arc::new(AtomicBool::new(false));
    let dst: Arc<dyn Bdev> = Arc::new(Failing {
        inner: ram("mig-fdst", 16 * MIB),
        fail: fail.clone(),
    });
    let mut o = small_regions();
    o.rate_limit = 32 * MIB;
    let (m, mirror) = Migration::start("v2", src.clone(), dst, o).expect("start");
    let mut ch = mirror.open_channel().expect("channel");
    assert_eq!(
        write(ch.as_mut(), BS, 100, &pattern(BS, 100, 8, 1)),
        IoStatus::Success
    );
    fail.store(true, SeqCst);
    // Host writes still succeed: the source's status is theirs.
    assert_eq!(
        write(ch.as_mut(), BS, 200, &pattern(BS, 200, 8, 2)),
        IoStatus::Success
    );
    let p = m.wait();
    assert_eq!(p.state, State::Failed, "{p:?}");
    assert!(
        p.error.as_deref().unwrap_or("").contains("destination"),
        "{p:?}"
    );
    assert_eq!(
        write(ch.as_mut(), BS, 300, &pattern(BS, 300, 8, 3)),
        IoStatus::Success
    );
    let (st, b) = read(ch.as_mut(), BS, 200, 8);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(b.as_slice(), pattern(BS, 200, 8, 2).as_slice());
}

#[test]
fn a_cancelled_migration_stops_and_reports_progress() {
    let src = ram("mig-csrc", 16 * MIB);
    let dst = ram("mig-cdst", 16 * MIB);
    let mut o = small_regions();
    o.rate_limit = 8 * MIB;
    let (m, _mirror) = Migration::start("v3", src, dst, o).expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let mid = m.progress();
    assert_eq!((mid.state, mid.round), (State::Copying, 1), "{mid:?}");
    assert!(
        mid.copied_bytes > 0 && mid.copied_bytes < 16 * MIB,
        "{mid:?}"
    );
    assert_eq!(mid.total_bytes, 16 * MIB);
    assert!(mid.dirty_bytes > 0 && mid.eta.is_some(), "{mid:?}");
    m.cancel();
    let p = m.wait();
    assert_eq!(p.state, State::Cancelled, "{p:?}");
    assert!(p.copied_bytes < 16 * MIB, "{p:?}");
}

#[test]
fn the_rate_limit_holds_the_copy_back() {
    let src = ram("mig-rsrc", 4 * MIB);
    let dst = ram("mig-rdst", 4 * MIB);
    let mut o = small_regions();
    o.rate_limit = 8 * MIB;
    let t0 = Instant::now();
    let (m, _mirror) = Migration::start("v4", src, dst, o).expect("start");
    let p = m.wait();
    assert_eq!(p.state, State::Synced, "{p:?}");
    // 4 MiB at 8 MiB/s: at least half a second (less one region's worth).
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn devices_that_cannot_pair_are_refused() {
    let src = ram("mig-bsrc", 16 * MIB);
    let small = ram("mig-bsmall", 8 * MIB);
    let e = Migration::start("v5", src.clone(), small, MigrateOptions::default())
        .err()
        .expect("too small");
    assert!(e.to_string().contains("cannot take the source's"), "{e}");
    let four_k: Arc<dyn Bdev> = MallocBdev::new("mig-b4k", 16 * MIB, 4096).expect("ram");
    let e = Migration::start("v5", src.clone(), four_k, MigrateOptions::default())
        .err()
        .expect("block sizes");
    assert!(e.to_string().contains("4096 bytes"), "{e}");
    let o = MigrateOptions {
        region_bytes: 1000,
        ..MigrateOptions::default()
    };
    let e = Migration::start("v5", src, ram("mig-bdst", 16 * MIB), o)
        .err()
        .expect("region size");
    assert!(e.to_string().contains("region of 1000 bytes"), "{e}");
}

/// The copier waits for its requests asleep: on the channel's completion fd when it
/// has one, else in naps that grow to half a millisecond. A read that takes 5 ms costs
/// a handful of polls, not the thousands a yielding spin makes.
#[test]
fn the_copier_sleeps_while_its_requests_are_out() {
    for timer in [true, false] {
        let src = ram("mig-zsrc", 8 * MIB);
        {
            let mut ch = src.open_channel().expect("channel");
            for lba in (0..src.info().num_blocks).step_by(2048) {
                let data = pattern(BS, lba, 64, 11);
                assert_eq!(write(ch.as_mut(), BS, lba, &data), IoStatus::Success);
            }
        }
        let slow: Arc<dyn Bdev> = Arc::new(SlowReads {
            inner: src.clone(),
            delay: Duration::from_millis(5),
            op: IoOp::Read,
            timer,
        });
        let dst = ram("mig-zdst", 8 * MIB);
        let (m, _mirror) =
            Migration::start("vz", slow, dst.clone(), MigrateOptions::default()).expect("start");
        let p = m.wait();
        assert_eq!(p.state, State::Synced, "{p:?}");
        assert!(contents(src.as_ref()) == contents(dst.as_ref()));
        // 8 regions, a slow read and a write each.
        let polls = m.sh.copy_polls.load(SeqCst);
        let bound = if timer { 8 * 8 } else { 8 * 24 };
        assert!(
            polls <= bound,
            "timer {timer}: {polls} polls for 8 regions (at most {bound})"
        );
        assert!(polls >= 16, "{polls}");
    }
}

/// The final pause begins only once the dirty set's copy fits `max_pause` at what a
/// region's copy took: with reads of 2 ms a region and a 3 ms bound, at most one region
/// is copied with writes held, however many bytes `final_dirty_bytes` would allow (the
/// writer throttle brings the dirty set down to it).
#[test]
fn the_final_pause_begins_once_its_copy_fits_max_pause() {
    let src: Arc<dyn Bdev> = Arc::new(SlowReads {
        inner: ram("mig-psrc", 4 * MIB),
        delay: Duration::from_millis(2),
        op: IoOp::Read,
        timer: true,
    });
    let dst = ram("mig-pdst", 4 * MIB);
    let opts = MigrateOptions {
        region_bytes: 64 << 10,
        final_dirty_bytes: 4 * MIB,
        max_pause: Duration::from_millis(3),
        max_rounds: 100_000,
        ..MigrateOptions::default()
    };
    let (m, mirror) = Migration::start("vp", src.clone(), dst.clone(), opts).expect("start");
    let stop = Arc::new(AtomicBool::new(false));
    let blocks = src.info().num_blocks;
    let w = {
        let (mirror, stop) = (mirror.clone() as Arc<dyn Bdev>, stop.clone());
        std::thread::spawn(move || writer(mirror, blocks, 77, stop))
    };
    let t0 = Instant::now();
    while m.progress().state != State::Synced {
        assert!(m.progress().state == State::Copying || m.progress().state == State::Pausing);
        assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", m.progress());
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, SeqCst);
    assert!(w.join().expect("writer") > 0);
    let p = m.wait();
    assert_eq!(p.state, State::Synced, "{p:?}");
    let regions = m.sh.pause_regions.load(SeqCst);
    assert!(regions <= 1, "{regions} regions copied in the pause: {p:?}");
    assert!(contents(src.as_ref()) == contents(dst.as_ref()));
}

/// A device whose writes are held (neither applied nor completed) until `release`
/// is set: a write that reaches it late.
struct HeldWrites {
    inner: Arc<dyn Bdev>,
    release: Arc<AtomicBool>,
}

struct HeldWritesChannel {
    inner: Box<dyn IoChannel>,
    release: Arc<AtomicBool>,
    held: Vec<IoRequest>,
}

impl Bdev for HeldWrites {
    fn info(&self) -> &BdevInfo {
        self.inner.info()
    }
    fn kind(&self) -> &'static str {
        "held-writes"
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(HeldWritesChannel {
            inner: self.inner.open_channel()?,
            release: self.release.clone(),
            held: Vec::new(),
        }))
    }
}

impl IoChannel for HeldWritesChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        if req.op == IoOp::Write && !self.release.load(SeqCst) {
            self.held.push(req);
            return;
        }
        // SAFETY: passed on.
        unsafe { self.inner.submit(req) }
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        if self.release.load(SeqCst) {
            for r in self.held.drain(..) {
                // SAFETY: the caller's contract, passed on late.
                unsafe { self.inner.submit(r) };
            }
        }
        self.inner.poll(done)
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.inner.in_flight()
    }
}

/// The final pause does not wait for the writes in flight: with a host write stuck on
/// the source (its copy on the destination already written), the copy reads the
/// source without it, writes the destination, pauses and is synced while the write is
/// still out. When the write then reaches the source and completes, it finds it raced
/// a copy after the last round and writes its data to the destination again before it
/// completes: the devices end identical. (Had it dirtied its region instead, nothing
/// would copy it again, and the destination would keep the copy's older data.)
#[test]
fn a_write_stuck_in_flight_does_not_hold_the_pause_and_rewrites_the_destination() {
    let release = Arc::new(AtomicBool::new(false));
    let src: Arc<dyn Bdev> = Arc::new(HeldWrites {
        inner: ram("mig-hsrc", 64 << 10),
        release: release.clone(),
    });
    let dst = ram("mig-hdst", 64 << 10);
    let opts = MigrateOptions {
        region_bytes: 64 << 10,
        max_pause: Duration::from_secs(1),
        ..MigrateOptions::default()
    };
    let (m, mirror) = Migration::prepare("vh", src.clone(), dst.clone(), opts).expect("prepare");
    let mut ch = mirror.open_channel().expect("channel");
    let data = pattern(BS, 8, 8, 5);
    let buf = AlignedBuf::new(data.len());
    // SAFETY: a fresh buffer of this length.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr(), data.len()) };
    // SAFETY: `buf` outlives the completion, polled below.
    unsafe { ch.submit(IoRequest::rw(IoOp::Write, 8, 8, buf.ptr(), data.len(), 7)) };
    m.go().expect("go");
    let p = m.wait();
    assert_eq!(p.state, State::Synced, "{p:?}");
    assert!(p.pause.expect("measured") < Duration::from_secs(1), "{p:?}");
    let mut st = None;
    ch.poll(&mut |t, s| st = Some((t, s)));
    assert_eq!(st, None, "the write completed while stuck");
    // The copy read the source without the write and put that on the destination,
    // over the write's own copy there: the race this is about.
    let at = 8 * BS as usize..16 * BS as usize;
    assert!(
        contents(dst.as_ref())[at.clone()] != data[..],
        "the destination kept the write: no copy raced it"
    );
    release.store(true, SeqCst);
    let t0 = Instant::now();
    while st.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the write never completed"
        );
        ch.poll(&mut |t, s| st = Some((t, s)));
    }
    assert_eq!(st, Some((7, IoStatus::Success)));
    assert_eq!(m.sh.resent.load(SeqCst), 1);
    assert!(contents(dst.as_ref())[at] == data[..]);
    assert!(contents(src.as_ref()) == contents(dst.as_ref()));
    assert_eq!(ch.in_flight(), 0);
}
