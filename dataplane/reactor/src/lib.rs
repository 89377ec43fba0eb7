//! The LightPool reactor: one thread per configured core, pinned, running a
//! run-to-completion poll loop.
//!
//! Each iteration of the loop
//! 1. drains the mailbox (at most [`MAILBOX_BUDGET`] closures),
//! 2. fires the timers that are due,
//! 3. calls every poller once (a poller added during an iteration runs from the next).
//!
//! When every poller has said [`PollStatus::Idle`] and nothing else has happened for
//! [`ReactorConfig::idle_spin`], the reactor goes to sleep in `epoll_wait` on the fds
//! registered with [`Ctx::register_fd`] plus its own wake-up eventfd, with the timeout
//! of the next timer. A mailbox message, a ready fd or a due timer wakes it.
//!
//! No lost wake-up: the reactor publishes "sleeping" and then re-checks the mailbox;
//! a sender pushes and then reads "sleeping", writing the eventfd only if it is set
//! (both sides put a SeqCst fence between their store and their load).
//!
//! In steady state an iteration takes no lock, makes no system call while there is
//! work or while spinning, and allocates nothing.

mod ctx;
pub mod readiness;
mod sys;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam::queue::SegQueue;
use crossbeam::utils::CachePadded;

pub use ctx::{Ctx, PollStatus, Poller, PollerId, TimerId};
pub use sys::Interest;

/// Mailbox closures run per loop iteration at most, so a flood of control messages
/// cannot starve the pollers (the I/O path).
pub const MAILBOX_BUDGET: usize = 64;

/// Default [`ReactorConfig::idle_spin`]: 200 µs.
///
/// Why: the gap between a completion and the host's next command on a queue-depth-1
/// NVMe/TCP workload is some 20-80 µs, so 200 µs keeps such a workload spinning (no
/// wake-up latency) with margin. Each wake-up from sleep costs about `idle_spin` of CPU
/// before the reactor sleeps again; at 200 µs the 2%-of-a-core idle budget allows some
/// 100 wake-ups a second (keep-alives, timers, admin traffic), which is far more than an
/// idle target with connected hosts sees. 1 ms would allow only 20.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(200);

/// Consecutive idle iterations required (besides `idle_spin`) before sleeping.
const MIN_IDLE_LOOPS: u32 = 64;

/// Busy and idle time is added up at each change between the two, and at least every
/// this many iterations (so that a reactor busy for good still reports it): one clock
/// subtraction per streak, not per iteration (a power of two: a mask tests it).
const TIME_FLUSH_LOOPS: u64 = 256;

/// Timers due sooner than this keep the reactor spinning instead of sleeping, because
/// `epoll_wait` has millisecond resolution.
const MIN_SLEEP: Duration = Duration::from_millis(1);

/// How one reactor is set up.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Reactor number, used in logs, thread names and [`Ctx::id`].
    pub id: usize,
    /// CPU core to pin the thread to; `None` leaves it unpinned (tests, laptops).
    pub core: Option<usize>,
    /// How long the loop keeps spinning with nothing to do before it sleeps.
    /// Zero sleeps as soon as one iteration is idle.
    pub idle_spin: Duration,
}

impl ReactorConfig {
    /// A reactor with the default idle spin.
    pub fn new(id: usize, core: Option<usize>) -> Self {
        ReactorConfig {
            id,
            core,
            idle_spin: DEFAULT_IDLE_SPIN,
        }
    }
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig::new(0, None)
    }
}

/// Errors starting, messaging or joining a reactor.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("reactor {reactor} could not be pinned to core {core}: {reason}")]
    Pin {
        reactor: usize,
        core: usize,
        reason: String,
    },
    #[error("reactor {reactor} could not be set up: {source}")]
    Setup {
        reactor: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("reactor {0} is stopped and takes no more messages")]
    Stopped(usize),
    #[error("reactor {0} panicked")]
    Panicked(usize),
    #[error("reactor {0} cannot join itself (join was called on the reactor's own thread)")]
    JoinSelf(usize),
}

type Message = Box<dyn FnOnce(&mut Ctx) + Send>;

/// A counter written by the reactor thread only, so a plain load+store (no locked
/// read-modify-write) is enough; readers on other threads see a recent value.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn bump(&self) {
        self.add(1);
    }
    fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct StatCounters {
    loops: Counter,
    busy_loops: Counter,
    sleeps: Counter,
    messages: Counter,
    timers_fired: Counter,
    fd_wakeups: Counter,
    busy_ns: Counter,
    idle_ns: Counter,
    sleep_ns: Counter,
    /// When the sleep going on began (ns since `Shared::born` + 1; 0: awake), so that
    /// a reader counts a long sleep before it ends.
    asleep_since: AtomicU64,
    tid: AtomicU64,
}

/// A snapshot of a reactor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// Loop iterations run.
    pub loops: u64,
    /// Iterations in which a message, a timer or a poller did something.
    pub busy_loops: u64,
    /// Times the reactor went to sleep in epoll_wait.
    pub sleeps: u64,
    /// Mailbox closures run (counted as each starts).
    pub messages: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Sleeps ended by a registered fd (not the mailbox eventfd, not a timeout).
    pub fd_wakeups: u64,
    /// Nanoseconds spent in iterations that did something (messages, timers, pollers
    /// that reported work).
    pub busy_ns: u64,
    /// Nanoseconds spent polling with nothing to do (spinning, not asleep).
    pub idle_ns: u64,
    /// Nanoseconds asleep in epoll_wait.
    pub sleep_ns: u64,
    /// True while the reactor is in epoll_wait (or about to be).
    pub sleeping: bool,
    /// Linux thread id of the reactor thread (for `/proc/self/task/<tid>`).
    pub tid: u64,
}

pub(crate) struct Shared {
    id: usize,
    mailbox: SegQueue<Message>,
    /// Set by the reactor just before it sleeps; senders read it after pushing.
    sleeping: CachePadded<AtomicBool>,
    stopped: AtomicBool,
    wake_fd: OwnedFd,
    stats: CachePadded<StatCounters>,
    /// The base of `asleep_since`.
    born: Instant,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: Mutex<Option<ThreadId>>,
}

impl Shared {
    fn wake(&self) {
        sys::eventfd_signal(self.wake_fd.as_raw_fd());
    }

    pub(crate) fn request_stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A cheap, cloneable, `Send + Sync` handle to a reactor.
#[derive(Clone)]
pub struct ReactorHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl ReactorHandle {
    /// The reactor's id.
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// Runs `f` on the reactor thread, after the messages sent before it from the same
    /// thread. Lock-free; makes a system call only when the reactor is asleep.
    /// Fails once the reactor has been asked to stop. A message that races with the stop
    /// may be dropped without running.
    pub fn send<F: FnOnce(&mut Ctx) + Send + 'static>(&self, f: F) -> Result<(), ReactorError> {
        let shared = &*self.shared;
        if shared.stopped.load(Ordering::Acquire) {
            return Err(ReactorError::Stopped(shared.id));
        }
        shared.mailbox.push(Box::new(f));
        // Pairs with the fence in `Reactor::sleep`: either the reactor sees our message
        // when it re-checks the mailbox, or we see `sleeping` and wake it.
        fence(Ordering::SeqCst);
        if shared.sleeping.load(Ordering::Relaxed) && shared.sleeping.swap(false, Ordering::SeqCst)
        {
            shared.wake();
        }
        Ok(())
    }

    /// Asks the loop to exit after its current iteration. Idempotent.
    pub fn stop(&self) {
        self.shared.request_stop();
        self.shared.wake();
    }

    /// True once a stop has been asked for (by [`ReactorHandle::stop`] or [`Ctx::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Waits for the reactor thread to exit. Only the first call waits; later calls
    /// (from any clone) return `Ok` at once. Does not ask the reactor to stop.
    pub fn join(&self) -> Result<(), ReactorError> {
        let own = *self
            .shared
            .thread_id
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if own == Some(std::thread::current().id()) {
            return Err(ReactorError::JoinSelf(self.shared.id));
        }
        let handle = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match handle {
            Some(h) => h.join().map_err(|_| ReactorError::Panicked(self.shared.id)),
            None => Ok(()),
        }
    }

    /// A snapshot of the reactor's counters.
    pub fn stats(&self) -> ReactorStats {
        let s = &self.shared.stats;
        let since = s.asleep_since.load(Ordering::Relaxed);
        let asleep_now = if since == 0 {
            0
        } else {
            (self.shared.born.elapsed().as_nanos() as u64).saturating_sub(since - 1)
        };
        ReactorStats {
            loops: s.loops.get(),
            busy_loops: s.busy_loops.get(),
            sleeps: s.sleeps.get(),
            messages: s.messages.get(),
            timers_fired: s.timers_fired.get(),
            fd_wakeups: s.fd_wakeups.get(),
            busy_ns: s.busy_ns.get(),
            idle_ns: s.idle_ns.get(),
            sleep_ns: s.sleep_ns.get() + asleep_now,
            sleeping: self.shared.sleeping.load(Ordering::SeqCst),
            tid: s.tid.load(Ordering::Relaxed),
        }
    }
}

/// Starts a reactor thread, pins it to `cfg.core` if given, and returns once its loop
/// is about to run.
pub fn spawn(cfg: ReactorConfig) -> Result<ReactorHandle, ReactorError> {
    let id = cfg.id;
    let setup = |source| ReactorError::Setup {
        reactor: id,
        source,
    };
    let wake_fd = sys::eventfd().map_err(setup)?;
    let epoll = sys::Epoll::new().map_err(setup)?;
    epoll
        .add_token(wake_fd.as_raw_fd(), Interest::READABLE, sys::WAKE_TOKEN)
        .map_err(setup)?;
    if let Some(core) = cfg.core {
        check_core(id, core)?;
    }

    let shared = Arc::new(Shared {
        id,
        mailbox: SegQueue::new(),
        sleeping: CachePadded::new(AtomicBool::new(false)),
        stopped: AtomicBool::new(false),
        wake_fd,
        stats: CachePadded::new(StatCounters::default()),
        born: Instant::now(),
        thread: Mutex::new(None),
        thread_id: Mutex::new(None),
    });

    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), ReactorError>>(1);
    let thread_shared = shared.clone();
    let idle_spin = cfg.idle_spin;
    let core = cfg.core;
    let join = std::thread::Builder::new()
        .name(format!("reactor-{id}"))
        .spawn(move || {
            // However the thread ends (a poller may panic), senders must learn it.
            let _stop_on_exit = StopOnExit(thread_shared.clone());
            if let Some(core) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    let reason = std::io::Error::last_os_error().to_string();
                    let _ = ready_tx.send(Err(ReactorError::Pin {
                        reactor: id,
                        core,
                        reason,
                    }));
                    return;
                }
            }
            // SAFETY: gettid takes no arguments and cannot fail.
            let tid = unsafe { libc::gettid() };
            thread_shared
                .stats
                .tid
                .store(u64::try_from(tid).unwrap_or(0), Ordering::Relaxed);
            let mut reactor = Reactor {
                ctx: Ctx::new(thread_shared, epoll),
                idle_spin,
                streak_start: Instant::now(),
                streak_busy: false,
            };
            let _ = ready_tx.send(Ok(()));
            drop(ready_tx);
            tracing::debug!(reactor = id, ?core, "reactor running");
            reactor.run();
            tracing::debug!(reactor = id, "reactor stopped");
        })
        .map_err(setup)?;
    *shared.thread_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(join.thread().id());

    let started = ready_rx.recv();
    match started {
        Ok(Ok(())) => {
            *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(join);
            Ok(ReactorHandle { shared })
        }
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => {
            // The thread exited without reporting: it panicked during setup.
            let _ = join.join();
            Err(ReactorError::Panicked(id))
        }
    }
}

struct StopOnExit(Arc<Shared>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.request_stop();
    }
}

/// Refuses a core this process may not run on, with a sentence that says so, before
/// the thread starts.
fn check_core(reactor: usize, core: usize) -> Result<(), ReactorError> {
    let allowed = core_affinity::get_core_ids().unwrap_or_default();
    if allowed.iter().any(|c| c.id == core) {
        return Ok(());
    }
    let list: Vec<String> = allowed.iter().map(|c| c.id.to_string()).collect();
    Err(ReactorError::Pin {
        reactor,
        core,
        reason: format!(
            "the core does not exist or is outside this process's CPU set (allowed: {})",
            if list.is_empty() {
                "unknown".to_string()
            } else {
                list.join(",")
            }
        ),
    })
}

struct Reactor {
    ctx: Ctx,
    idle_spin: Duration,
    /// Since when the iterations have all been busy (or all idle), and which.
    streak_start: Instant,
    streak_busy: bool,
}

impl Reactor {
    fn run(&mut self) {
        let mut last_active = Instant::now();
        let mut idle_loops = 0u32;
        self.streak_start = last_active;
        while !self.ctx.stop && !self.ctx.shared.stopped.load(Ordering::Relaxed) {
            self.ctx.now = Instant::now();
            self.ctx.iteration += 1;
            let stats = &self.ctx.shared.stats;
            stats.loops.bump();

            let mut active = self.run_mailbox();
            active |= self.ctx.run_timers();
            active |= self.ctx.run_pollers();
            self.ctx.arm_new_pollers();

            // Each iteration's time (from its start to the next one's, less any sleep)
            // counts as busy or idle, by what it did; added up per streak of alike
            // iterations, from the clock reading the loop takes anyway.
            if active != self.streak_busy || self.ctx.iteration & (TIME_FLUSH_LOOPS - 1) == 0 {
                self.close_streak(self.ctx.now);
                self.streak_busy = active;
            }
            if active {
                self.ctx.shared.stats.busy_loops.bump();
                last_active = self.ctx.now;
                idle_loops = 0;
            } else {
                idle_loops = idle_loops.saturating_add(1);
                // Both conditions: idle for idle_spin *and* for MIN_IDLE_LOOPS iterations
                // in a row. Time alone misfires when the thread was preempted (the gap
                // counts as idleness though the work is waiting right behind it).
                if idle_loops >= MIN_IDLE_LOOPS
                    && self.ctx.now.duration_since(last_active) >= self.idle_spin
                    && self.sleep()
                {
                    // Spin again for idle_spin after a wake-up: whatever woke us is
                    // likely to bring more work right behind it.
                    last_active = Instant::now();
                    idle_loops = 0;
                }
            }
        }
        self.ctx.shared.request_stop();
        self.ctx.teardown();
        // Messages that raced with the stop are dropped (on this thread) without running.
        while let Some(m) = self.ctx.shared.mailbox.pop() {
            drop(m);
        }
    }

    /// Count the streak of alike iterations up to `at` as busy or idle time.
    #[cold]
    fn close_streak(&mut self, at: Instant) {
        let ns = at.saturating_duration_since(self.streak_start).as_nanos() as u64;
        let stats = &self.ctx.shared.stats;
        if self.streak_busy {
            stats.busy_ns.add(ns);
        } else {
            stats.idle_ns.add(ns);
        }
        self.streak_start = at;
    }

    fn run_mailbox(&mut self) -> bool {
        let mut n = 0;
        while n < MAILBOX_BUDGET {
            let Some(m) = self.ctx.shared.mailbox.pop() else {
                break;
            };
            // Counted before it runs, so a closure that reports back sees itself counted.
            self.ctx.shared.stats.messages.bump();
            m(&mut self.ctx);
            n += 1;
        }
        n > 0
    }

    /// Sleeps until an fd, a message or the next timer. Returns false when it did not
    /// sleep (something arrived, or a timer is due too soon).
    fn sleep(&mut self) -> bool {
        let timeout = match self.ctx.next_deadline() {
            None => None,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left < MIN_SLEEP {
                    return false;
                }
                Some(left)
            }
        };
        let shared = self.ctx.shared.clone();
        shared.sleeping.store(true, Ordering::Relaxed);
        // Pairs with the fence in `ReactorHandle::send`.
        fence(Ordering::SeqCst);
        if !shared.mailbox.is_empty() || shared.stopped.load(Ordering::Relaxed) {
            shared.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        shared.stats.sleeps.bump();
        let mut woke_by_fd = false;
        let mut woke_by_mailbox = false;
        let asleep = Instant::now();
        self.close_streak(asleep);
        let stats = &shared.stats;
        let since = asleep.saturating_duration_since(shared.born).as_nanos() as u64;
        stats.asleep_since.store(since + 1, Ordering::Relaxed);
        let res = self.ctx.epoll.wait(timeout, |token| {
            if token == sys::WAKE_TOKEN {
                woke_by_mailbox = true;
            } else {
                woke_by_fd = true;
            }
        });
        self.streak_start = Instant::now();
        stats.sleep_ns.add(
            self.streak_start
                .saturating_duration_since(asleep)
                .as_nanos() as u64,
        );
        stats.asleep_since.store(0, Ordering::Relaxed);
        shared.sleeping.store(false, Ordering::SeqCst);
        if woke_by_mailbox {
            sys::eventfd_drain(shared.wake_fd.as_raw_fd());
        }
        if woke_by_fd {
            shared.stats.fd_wakeups.bump();
        }
        if let Err(e) = res {
            tracing::error!(reactor = shared.id, error = %e, "epoll_wait failed; spinning instead");
        }
        true
    }
}

#[cfg(test)]
mod tests;
