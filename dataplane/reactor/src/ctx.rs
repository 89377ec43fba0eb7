//! The reactor's own state ([`Ctx`]): the poller slab, the timer heap and the epoll set.
//! It never leaves the reactor thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::{Epoll, Interest};
use crate::{ReactorHandle, Shared};

/// What one call of a poller achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Nothing to do; the reactor may go to sleep if every poller keeps saying so.
    Idle,
    /// Did some work; poll again soon.
    Busy,
    /// Remove this poller (it is dropped right after the call).
    Finished,
}

/// Something the reactor calls once per loop iteration. Not `Send`: it is created on,
/// and lives on, its reactor (usually added from a mailbox closure).
pub trait Poller {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus;
}

impl<F: FnMut(&mut Ctx) -> PollStatus> Poller for F {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        self(ctx)
    }
}

/// Names a poller on its reactor. Stale ids (the poller was removed or finished) are
/// ignored by [`Ctx::remove_poller`], even once the slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PollerId {
    index: usize,
    generation: u64,
}

/// Names a timer on its reactor. Cancelling a fired or cancelled timer does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: usize,
    seq: u64,
}

pub(crate) type TimerFn = Box<dyn FnOnce(&mut Ctx)>;

struct PollerSlot {
    /// Bumped every time the slot is freed, so stale ids and stale take-outs miss.
    generation: u64,
    live: bool,
    /// False until the iteration after the poller was added.
    armed: bool,
    /// `None` while free, or while the poller is out being called.
    poller: Option<Box<dyn Poller>>,
}

struct TimerSlot {
    /// Sequence number of the timer occupying the slot; 0 when free.
    seq: u64,
    f: Option<TimerFn>,
}

/// The reactor's state, handed to pollers, timers and mailbox closures.
pub struct Ctx {
    pub(crate) shared: Arc<Shared>,
    handle: ReactorHandle,
    pub(crate) now: Instant,
    pub(crate) iteration: u64,
    pub(crate) stop: bool,
    pub(crate) epoll: Epoll,

    pollers: Vec<PollerSlot>,
    free_pollers: Vec<usize>,
    /// Slots added since the poll phase began; armed at the end of the iteration.
    unarmed: Vec<usize>,
    live_pollers: usize,

    /// Min-heap on (deadline, seq). A cancelled timer leaves its entry behind (a
    /// tombstone: the slot's seq no longer matches) until it reaches the top or the heap
    /// is compacted.
    timer_heap: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    timers: Vec<TimerSlot>,
    free_timers: Vec<usize>,
    live_timers: usize,
    next_seq: u64,
}

/// Initial capacities: enough that a reactor serving a few hundred queue pairs never
/// grows its tables in steady state.
const POLLER_CAPACITY: usize = 256;
const TIMER_CAPACITY: usize = 1024;

impl Ctx {
    pub(crate) fn new(shared: Arc<Shared>, epoll: Epoll) -> Self {
        let handle = ReactorHandle {
            shared: shared.clone(),
        };
        Ctx {
            shared,
            handle,
            now: Instant::now(),
            iteration: 0,
            stop: false,
            epoll,
            pollers: Vec::with_capacity(POLLER_CAPACITY),
            free_pollers: Vec::with_capacity(POLLER_CAPACITY),
            unarmed: Vec::with_capacity(POLLER_CAPACITY),
            live_pollers: 0,
            timer_heap: BinaryHeap::with_capacity(TIMER_CAPACITY),
            timers: Vec::with_capacity(TIMER_CAPACITY),
            free_timers: Vec::with_capacity(TIMER_CAPACITY),
            live_timers: 0,
            next_seq: 1,
        }
    }

    /// This reactor's id (from [`crate::ReactorConfig::id`]).
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// A handle to this reactor, e.g. to give to another reactor for replies.
    pub fn handle(&self) -> ReactorHandle {
        self.handle.clone()
    }

    /// The time at the start of the current loop iteration (read once per iteration).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// How many loop iterations have started on this reactor (the current one included).
    pub fn iteration(&self) -> u64 {
        self.iteration
    }

    /// Pollers currently registered (including ones added in this iteration).
    pub fn poller_count(&self) -> usize {
        self.live_pollers
    }

    /// Timers pending (not fired, not cancelled).
    pub fn timer_count(&self) -> usize {
        self.live_timers
    }

    #[cfg(test)]
    pub(crate) fn timer_heap_len(&self) -> usize {
        self.timer_heap.len()
    }

    /// Adds a poller. It is first called in the next loop iteration.
    pub fn add_poller(&mut self, p: Box<dyn Poller>) -> PollerId {
        let index = match self.free_pollers.pop() {
            Some(i) => i,
            None => {
                self.pollers.push(PollerSlot {
                    generation: 0,
                    live: false,
                    armed: false,
                    poller: None,
                });
                self.pollers.len() - 1
            }
        };
        let slot = &mut self.pollers[index];
        slot.live = true;
        slot.armed = false;
        slot.poller = Some(p);
        self.unarmed.push(index);
        self.live_pollers += 1;
        PollerId {
            index,
            generation: slot.generation,
        }
    }

    /// Removes a poller; it is not called again. Removing the poller that is running
    /// (from inside its own `poll`) is allowed: it is dropped when the call returns.
    pub fn remove_poller(&mut self, id: PollerId) {
        let Some(slot) = self.pollers.get_mut(id.index) else {
            return;
        };
        if !slot.live || slot.generation != id.generation {
            return;
        }
        let dropped = slot.poller.take();
        Self::free_poller_slot(&mut self.pollers, &mut self.free_pollers, id.index);
        self.live_pollers -= 1;
        // Dropped after the slot bookkeeping, so a Drop impl that touches nothing else
        // sees a consistent table.
        drop(dropped);
    }

    fn free_poller_slot(pollers: &mut [PollerSlot], free: &mut Vec<usize>, index: usize) {
        let slot = &mut pollers[index];
        slot.live = false;
        slot.armed = false;
        slot.generation += 1;
        free.push(index);
    }

    /// Calls every armed poller once. Returns true if any did work or finished.
    pub(crate) fn run_pollers(&mut self) -> bool {
        let mut active = false;
        let n = self.pollers.len();
        for index in 0..n {
            let slot = &mut self.pollers[index];
            if !slot.live || !slot.armed {
                continue;
            }
            let generation = slot.generation;
            let Some(mut poller) = slot.poller.take() else {
                continue;
            };
            let status = poller.poll(self);
            let slot = &mut self.pollers[index];
            let still_ours = slot.live && slot.generation == generation;
            match status {
                PollStatus::Idle => {}
                PollStatus::Busy | PollStatus::Finished => active = true,
            }
            if !still_ours {
                // Removed during its own call (the slot may already hold a new poller).
                drop(poller);
                continue;
            }
            if status == PollStatus::Finished {
                Self::free_poller_slot(&mut self.pollers, &mut self.free_pollers, index);
                self.live_pollers -= 1;
                drop(poller);
            } else {
                slot.poller = Some(poller);
            }
        }
        active
    }

    /// Arms the pollers added during this iteration so the next one calls them.
    pub(crate) fn arm_new_pollers(&mut self) {
        for index in self.unarmed.drain(..) {
            let slot = &mut self.pollers[index];
            if slot.live {
                slot.armed = true;
            }
        }
    }

    /// Makes the loop exit after the current iteration; later `send`s fail.
    pub fn stop(&mut self) {
        self.stop = true;
        self.shared.request_stop();
    }

    /// Adds `fd` to the set the reactor waits on when it sleeps (level-triggered). The
    /// fd must stay open until [`Ctx::unregister_fd`]; whoever owns it must consume its
    /// readiness, or the reactor cannot sleep.
    pub fn register_fd(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.epoll.add(fd, interest)
    }

    /// Changes the readiness waited for on a registered fd.
    pub fn modify_fd(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.epoll.modify(fd, interest)
    }

    /// Removes `fd` from the wait set (an fd that is not registered is ignored).
    pub fn unregister_fd(&mut self, fd: RawFd) {
        if let Err(e) = self.epoll.delete(fd) {
            tracing::debug!(reactor = self.id(), fd, error = %e, "unregister_fd: not registered");
        }
    }

    /// Calls `f` on this reactor at or after `at` (at the earliest in the next loop
    /// iteration). Timers with equal deadlines fire in the order they were added. While
    /// spinning, precision is one loop iteration; while asleep, one millisecond.
    pub fn add_timer(&mut self, at: Instant, f: Box<dyn FnOnce(&mut Ctx)>) -> TimerId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = match self.free_timers.pop() {
            Some(i) => i,
            None => {
                self.timers.push(TimerSlot { seq: 0, f: None });
                self.timers.len() - 1
            }
        };
        self.timers[index] = TimerSlot { seq, f: Some(f) };
        self.live_timers += 1;
        self.timer_heap.push(Reverse((at, seq, index)));
        TimerId { index, seq }
    }

    /// Convenience: [`Ctx::add_timer`] at `now() + after`.
    pub fn add_timer_after(&mut self, after: Duration, f: Box<dyn FnOnce(&mut Ctx)>) -> TimerId {
        let at = self.now + after;
        self.add_timer(at, f)
    }

    /// Cancels a pending timer (its closure is dropped now). O(1): the heap entry stays
    /// behind as a tombstone, and the heap is compacted when tombstones outnumber live
    /// timers.
    pub fn cancel_timer(&mut self, id: TimerId) {
        let Some(slot) = self.timers.get_mut(id.index) else {
            return;
        };
        if slot.seq != id.seq {
            return;
        }
        let f = slot.f.take();
        slot.seq = 0;
        self.free_timers.push(id.index);
        self.live_timers -= 1;
        drop(f);
        let tombstones = self.timer_heap.len() - self.live_timers;
        if tombstones > 64 && tombstones > 2 * self.live_timers {
            let timers = &self.timers;
            self.timer_heap
                .retain(|Reverse((_, seq, index))| timers[*index].seq == *seq);
        }
    }

    /// Fires every timer due at `now` that existed when the phase began (timers added by
    /// a callback wait for the next iteration, so a self-rearming timer cannot starve the
    /// loop). Returns true if any fired.
    pub(crate) fn run_timers(&mut self) -> bool {
        let first_new_seq = self.next_seq;
        let mut fired = false;
        while let Some(Reverse((at, seq, index))) = self.timer_heap.peek().copied() {
            if at > self.now || seq >= first_new_seq {
                break;
            }
            self.timer_heap.pop();
            let slot = &mut self.timers[index];
            if slot.seq != seq {
                continue; // cancelled
            }
            let f = slot.f.take();
            slot.seq = 0;
            self.free_timers.push(index);
            self.live_timers -= 1;
            if let Some(f) = f {
                fired = true;
                self.shared.stats.timers_fired.bump();
                f(self);
            }
        }
        fired
    }

    /// The deadline of the earliest pending timer (tombstones at the top are discarded).
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, seq, index))) = self.timer_heap.peek().copied() {
            if self.timers[index].seq == seq {
                return Some(at);
            }
            self.timer_heap.pop();
        }
        None
    }

    /// Drops every poller and timer (on the reactor thread, as they are not `Send`).
    pub(crate) fn teardown(&mut self) {
        for slot in &mut self.pollers {
            slot.poller = None;
            slot.live = false;
        }
        self.live_pollers = 0;
        self.timer_heap.clear();
        for slot in &mut self.timers {
            slot.f = None;
            slot.seq = 0;
        }
        self.live_timers = 0;
    }
}
