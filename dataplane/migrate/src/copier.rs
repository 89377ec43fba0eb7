//! The copier thread: round 1 copies every region, later rounds the dirty ones, then
//! the final pause copies what is left with writes held (not waiting for the writes in
//! flight: see the crate's documentation).

use std::alloc::Layout;
use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

use lightpool_bdev::{IoChannel, IoOp, IoRequest, IoStatus};

use crate::{Shared, State};

/// A region-sized, 4096-aligned copy buffer.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> Option<Buf> {
        let layout = Layout::from_size_align(len.max(4096), 4096).ok()?;
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        (!ptr.is_null()).then_some(Buf { ptr, layout })
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The copier's shortest and longest nap while a channel without a completion fd has
/// its request out (doubling in between): it sleeps, never spins, and looks at most
/// every `NAP_MAX` once a request takes long.
const NAP_MIN: Duration = Duration::from_micros(20);
const NAP_MAX: Duration = Duration::from_micros(500);
/// The longest the copier sleeps on a completion fd before it polls again (the fd says
/// when completions are ready, not when a request still being sent has gone out).
const FD_WAIT_MS: i32 = 2;

/// How the copier waits: asleep until the channel's completion fd is readable, or for
/// a nap (see [`NAP_MIN`]) when it has none.
fn wait_for(ch: &dyn IoChannel, nap: &mut Duration) {
    match ch.completion_fd() {
        Some(fd) => {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, a live local, for the duration of the call; the fd
            // is the channel's, open while the channel (borrowed here) lives.
            unsafe { libc::poll(&mut p, 1, FD_WAIT_MS) };
        }
        None => {
            std::thread::sleep(*nap);
            *nap = (*nap * 2).min(NAP_MAX);
        }
    }
}

/// Submits `req` and waits for its completion without spinning: polls once (a
/// channel submits at its poll), then sleeps on the channel's completion fd or naps
/// between polls. Returns the status and how many times the channel was polled.
fn run1(ch: &mut dyn IoChannel, req: IoRequest) -> (IoStatus, u32) {
    let mut st = None;
    // SAFETY: the buffer (the caller's) outlives this call, which waits for the
    // completion.
    unsafe { ch.submit(req) };
    let (mut polls, mut nap) = (0u32, NAP_MIN);
    loop {
        polls += 1;
        ch.poll(&mut |_, s| st = Some(s));
        if let Some(s) = st {
            return (s, polls);
        }
        wait_for(ch, &mut nap);
    }
}

struct Copier<'a> {
    sh: &'a Shared,
    src: Box<dyn IoChannel>,
    dst: Box<dyn IoChannel>,
    buf: Buf,
    /// For the rate limit: when this run started and what it copied since.
    t0: Instant,
    bytes: u64,
    /// How long one region's copy takes (moving average, nanoseconds; 0: none yet).
    region_ns: u64,
}

impl Copier<'_> {
    /// Copies region `r` (its dirty bit taken first): whether it went well.
    fn copy(&mut self, r: u64) -> bool {
        let sh = self.sh;
        let bs = u64::from(sh.source.info().block_size);
        let start = r * sh.region_blocks;
        let n = sh.region_blocks.min(sh.source.info().num_blocks - start) as u32;
        let len = n as usize * bs as usize;
        sh.gen[r as usize].fetch_add(1, SeqCst);
        sh.take_dirty(r);
        let t = Instant::now();
        let (read, p1) = run1(
            self.src.as_mut(),
            IoRequest::rw(IoOp::Read, start, n, self.buf.ptr, len, 0),
        );
        let mut polls = p1;
        let wrote = (read == IoStatus::Success).then(|| {
            let (st, p2) = run1(
                self.dst.as_mut(),
                IoRequest::rw(IoOp::Write, start, n, self.buf.ptr, len, 1),
            );
            polls += p2;
            st
        });
        sh.gen[r as usize].fetch_add(1, SeqCst);
        sh.copy_polls.fetch_add(u64::from(polls), Relaxed);
        // What one region's copy takes now (a moving average): the final pause's
        // estimate.
        let ns = t.elapsed().as_nanos() as u64;
        self.region_ns = if self.region_ns == 0 {
            ns
        } else {
            (self.region_ns * 3 + ns) / 4
        };
        match (read, wrote) {
            (IoStatus::Success, Some(IoStatus::Success)) => {}
            (IoStatus::Success, w) => {
                sh.fail(format!(
                    "the destination failed the copy of region {r}: {w:?}"
                ));
                return false;
            }
            (st, _) => {
                // The source is the host's: its errors are the host's to see; the
                // region is tried again next round.
                tracing::warn!(region = r, status = ?st, "source read failed during the copy");
                sh.mark_dirty(r);
            }
        }
        sh.copied.fetch_add(len as u64, AcqRel);
        self.bytes += len as u64;
        if sh.opts.rate_limit > 0 {
            let due = Duration::from_secs_f64(self.bytes as f64 / sh.opts.rate_limit as f64);
            if let Some(wait) = due.checked_sub(self.t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        true
    }

    /// Whether to stop: cancelled, or failed.
    fn stopped(&self) -> bool {
        if self.sh.cancel.load(Acquire) && self.sh.active() {
            self.sh.set_state(State::Cancelled);
            self.sh.throttle(0);
            self.sh.paused.store(false, SeqCst);
        }
        !self.sh.active()
    }

    /// Copies every dirty region once.
    fn round(&mut self) -> bool {
        for r in 0..self.sh.regions {
            if self.stopped() {
                return false;
            }
            let dirty = self.sh.dirty[(r / 64) as usize].load(Acquire) & (1 << (r % 64)) != 0;
            if dirty && !self.copy(r) {
                return false;
            }
        }
        true
    }

    /// Holds new writes, copies what is dirty until nothing is, lets the writes go.
    /// The writes in flight are not waited for: one that raced a copy and completes
    /// from now on sends its data to the destination again (the mirror's channel).
    fn final_pause(&mut self) {
        let sh = self.sh;
        let regions = sh.dirty_regions();
        sh.pause_regions.store(regions, Relaxed);
        sh.throttle(0);
        sh.set_state(State::Pausing);
        let t = Instant::now();
        sh.paused.store(true, SeqCst);
        // A write that looked at the pause before it began may still be marking its
        // regions dirty: a few instructions, no I/O (yielding: its reactor may share
        // this core).
        while sh.completing.load(SeqCst) > 0 {
            std::thread::yield_now();
        }
        while sh.dirty_regions() > 0 {
            if !self.round() {
                return;
            }
        }
        let pause = t.elapsed();
        *sh.pause.lock().unwrap_or_else(|e| e.into_inner()) = Some(pause);
        sh.set_state(State::Synced);
        sh.paused.store(false, SeqCst);
        tracing::info!(
            pause_us = pause.as_micros() as u64,
            regions,
            resent = sh.resent.load(Relaxed),
            "migration synced"
        );
    }
}

pub(crate) fn run(sh: &Shared) {
    let open = |d: &std::sync::Arc<dyn lightpool_bdev::Bdev>, what: &str| {
        d.open_channel()
            .map_err(|e| format!("the copier cannot open the {what}: {e}"))
    };
    let (src, dst) = match (open(&sh.source, "source"), open(&sh.dest, "destination")) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => return sh.fail(e),
    };
    let Some(buf) = Buf::new(sh.opts.region_bytes as usize) else {
        return sh.fail("no memory for the copy buffer".into());
    };
    let mut c = Copier {
        sh,
        src,
        dst,
        buf,
        t0: Instant::now(),
        bytes: 0,
        region_ns: 0,
    };
    // Round 1: every region.
    for r in 0..sh.regions {
        if c.stopped() || !c.copy(r) {
            return;
        }
        sh.uncopied.fetch_sub(1, AcqRel);
    }
    // Convergence: the fewest dirty bytes after a round so far, the rounds since,
    // and the writer throttle's rate (0: off).
    let (mut best, mut stale, mut rate) = (u64::MAX, 0u32, 0u64);
    let (mut t, mut copied) = (c.t0, 0u64);
    loop {
        let dirty = sh.dirty_regions() * sh.region_bytes();
        let round = sh.round.load(Acquire);
        tracing::debug!(round, dirty, "migration round done");
        // The pause holds writes while the dirty regions are copied: it starts once
        // that copy, at what a region took lately, fits `max_pause` (or after
        // `max_rounds`, whatever it takes).
        let est = Duration::from_nanos(sh.dirty_regions().saturating_mul(c.region_ns));
        let small = dirty <= sh.opts.final_dirty_bytes && est <= sh.opts.max_pause;
        if small || round >= sh.opts.max_rounds {
            if !c.stopped() {
                c.final_pause();
            }
            return;
        }
        if dirty < best {
            (best, stale) = (dirty, 0);
        } else {
            stale += 1;
        }
        if sh.opts.throttle_after > 0 && stale >= sh.opts.throttle_after {
            // Writes race the copy faster than it copies: slow them to half the
            // copy's rate of the last round, then half of that each time it still
            // does not converge.
            let secs = t.elapsed().as_secs_f64().max(1e-6);
            let copy_rate = ((c.bytes - copied) as f64 / secs) as u64;
            rate = if rate == 0 { copy_rate / 2 } else { rate / 2 }.max(MIN_THROTTLE);
            sh.throttle(rate);
            tracing::info!(
                round,
                dirty,
                rate,
                "the copy does not converge: writes throttled"
            );
            stale = 0;
        }
        (t, copied) = (Instant::now(), c.bytes);
        sh.round.fetch_add(1, AcqRel);
        if !c.round() {
            sh.throttle(0);
            return;
        }
    }
}

/// The writer throttle's lowest rate, bytes per second (below it, `max_write_delay`
/// bounds each write's wait anyway).
const MIN_THROTTLE: u64 = 64 << 10;
