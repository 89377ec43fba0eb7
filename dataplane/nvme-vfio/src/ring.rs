//! Submission and completion queue ring arithmetic (NVMe Base 2.0, 3.3.1).
//!
//! A submission queue is full when advancing the tail would make it equal the head (one
//! entry always stays empty); the head the driver knows comes from SQHD in completions.
//! A completion queue entry is new when its phase tag equals the phase the driver
//! expects; the expected phase starts at 1 and flips each time the head wraps.

use lightpool_spec::nvme::{Cqe, CQE_SIZE};

/// Producer side of a submission queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqRing {
    size: u16,
    tail: u16,
    head: u16,
}

impl SqRing {
    /// A ring of `size` entries (2..=65536 in the spec; at least 2 here).
    pub fn new(size: u16) -> SqRing {
        debug_assert!(size >= 2);
        SqRing {
            size,
            tail: 0,
            head: 0,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn tail(&self) -> u16 {
        self.tail
    }

    pub fn is_full(&self) -> bool {
        self.next(self.tail) == self.head
    }

    /// Entries the controller has not consumed yet (as far as the driver knows).
    pub fn used(&self) -> u16 {
        if self.tail >= self.head {
            self.tail - self.head
        } else {
            self.size - self.head + self.tail
        }
    }

    /// Claims the entry at the tail and advances the tail; returns the claimed index, or
    /// `None` when the ring is full.
    pub fn push(&mut self) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        let at = self.tail;
        self.tail = self.next(self.tail);
        Some(at)
    }

    /// Records SQHD from a completion: entries before it are free again. A value outside
    /// the ring is ignored.
    pub fn set_head(&mut self, sqhd: u16) {
        if sqhd < self.size {
            self.head = sqhd;
        }
    }

    /// Back to empty (after the queue is re-created).
    pub fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
    }

    /// The driver's view of the ring, for a successor process (hot upgrade): size, tail,
    /// head.
    pub fn state(&self) -> (u16, u16, u16) {
        (self.size, self.tail, self.head)
    }

    /// A ring that carries on from `state` (taken by [`SqRing::state`] in another
    /// process); `None` when the numbers cannot describe a ring.
    pub fn restore((size, tail, head): (u16, u16, u16)) -> Option<SqRing> {
        (size >= 2 && tail < size && head < size).then_some(SqRing { size, tail, head })
    }

    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.size {
            0
        } else {
            i + 1
        }
    }
}

/// Consumer side of a completion queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqRing {
    size: u16,
    head: u16,
    phase: bool,
}

impl CqRing {
    pub fn new(size: u16) -> CqRing {
        debug_assert!(size >= 2);
        CqRing {
            size,
            head: 0,
            phase: true,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn head(&self) -> u16 {
        self.head
    }

    /// The phase tag a new entry at the head carries.
    pub fn phase(&self) -> bool {
        self.phase
    }

    /// Consumes the entry at the head.
    pub fn advance(&mut self) {
        self.head += 1;
        if self.head == self.size {
            self.head = 0;
            self.phase = !self.phase;
        }
    }

    pub fn reset(&mut self) {
        self.head = 0;
        self.phase = true;
    }

    /// A ring that carries on at `head` expecting phase `phase` (from another process,
    /// hot upgrade); `None` when `head` lies outside a ring of `size` entries.
    pub fn restore(size: u16, head: u16, phase: bool) -> Option<CqRing> {
        (size >= 2 && head < size).then_some(CqRing { size, head, phase })
    }

    /// The next new completion in the queue memory at `base`, or `None`. Does not
    /// advance the head.
    ///
    /// # Safety
    /// `base` points to `size` completion entries of readable memory that stays mapped
    /// for the call (the device may be writing other entries concurrently).
    pub unsafe fn peek(&self, base: *const u8) -> Option<Cqe> {
        let entry = base.wrapping_add(usize::from(self.head) * CQE_SIZE);
        // SAFETY: head < size, so the status word lies inside the queue memory (the
        // caller's contract); a volatile read because the device writes it.
        let status = unsafe { std::ptr::read_volatile(entry.add(14).cast::<u16>()) };
        if (status & 1 != 0) != self.phase {
            return None;
        }
        // The rest of the entry was written before the phase tag; read it after.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        // SAFETY: as above: 16 bytes at `entry` lie inside the queue memory.
        let raw = unsafe { std::ptr::read_volatile(entry.cast::<[u8; CQE_SIZE]>()) };
        Some(Cqe::from_bytes(&raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_spec::nvme::{Sqe, SQE_SIZE};
    use lightpool_spec::status::Status;

    /// A controller's view of one SQ/CQ pair in plain memory: it consumes SQEs up to a
    /// tail doorbell and posts one completion per command with the phase it keeps.
    struct FakeDevice {
        sq_head: u16,
        cq_tail: u16,
        cq_phase: bool,
        cq_head_db: u16,
    }

    impl FakeDevice {
        /// Runs commands up to `tail`; stops early when the CQ is full (as the spec
        /// lets a controller do).
        fn run(&mut self, sq: &[u8], tail: u16, cq: &mut [u8], size: u16) -> usize {
            let mut n = 0;
            while self.sq_head != tail {
                let next_tail = (self.cq_tail + 1) % size;
                if next_tail == self.cq_head_db {
                    break;
                }
                let at = usize::from(self.sq_head) * SQE_SIZE;
                let sqe = Sqe::from_bytes(sq[at..at + SQE_SIZE].try_into().expect("64 bytes"));
                self.sq_head = (self.sq_head + 1) % size;
                let cqe = Cqe {
                    sqhd: self.sq_head,
                    cid: sqe.cid,
                    dw0: sqe.cdw10,
                    status: Status::SUCCESS,
                    ..Cqe::default()
                };
                let at = usize::from(self.cq_tail) * CQE_SIZE;
                cq[at..at + CQE_SIZE].copy_from_slice(&cqe.to_bytes_with_phase(self.cq_phase));
                self.cq_tail = next_tail;
                if self.cq_tail == 0 {
                    self.cq_phase = !self.cq_phase;
                }
                n += 1;
            }
            n
        }
    }

    /// A hot upgrade in the middle of a lap: the rings rebuilt from their exported
    /// state in "another process" carry on with the same device, across several wraps
    /// and phase flips, taking no stale entry for a new one and missing none.
    #[test]
    fn rings_restored_from_their_state_carry_on() {
        for (size, before) in [(4u16, 6u32), (8, 13), (31, 31), (31, 45)] {
            let mut sq_mem = vec![0u8; usize::from(size) * SQE_SIZE];
            let mut cq_mem = vec![0u8; usize::from(size) * CQE_SIZE];
            let mut sq = SqRing::new(size);
            let mut cq = CqRing::new(size);
            let mut dev = FakeDevice {
                sq_head: 0,
                cq_tail: 0,
                cq_phase: true,
                cq_head_db: 0,
            };
            let mut next = 0u32;
            let mut expect = 0u32;
            let mut step = |sq: &mut SqRing, cq: &mut CqRing, dev: &mut FakeDevice, n: u32| {
                for _ in 0..n {
                    let at = sq.push().expect("room: one command at a time");
                    let sqe = Sqe {
                        cid: 1,
                        cdw10: next,
                        ..Sqe::default()
                    };
                    let o = usize::from(at) * SQE_SIZE;
                    sq_mem[o..o + SQE_SIZE].copy_from_slice(&sqe.to_bytes());
                    next += 1;
                    dev.run(&sq_mem, sq.tail(), &mut cq_mem, size);
                    // SAFETY: cq_mem holds `size` entries and outlives the call.
                    let c = unsafe { cq.peek(cq_mem.as_ptr()) }.expect("completed");
                    assert_eq!(c.dw0, expect);
                    expect += 1;
                    sq.set_head(c.sqhd);
                    cq.advance();
                    dev.cq_head_db = cq.head();
                    // SAFETY: as above.
                    assert!(unsafe { cq.peek(cq_mem.as_ptr()) }.is_none());
                }
            };
            step(&mut sq, &mut cq, &mut dev, before);
            // Export, drop the rings, rebuild them from the numbers alone.
            let sq_state = sq.state();
            let (cq_size, cq_head, phase) = (cq.size(), cq.head(), cq.phase());
            let mut sq = SqRing::restore(sq_state).expect("valid state");
            let mut cq = CqRing::restore(cq_size, cq_head, phase).expect("valid state");
            assert_eq!(sq.used(), 0, "drained before the handover");
            step(&mut sq, &mut cq, &mut dev, 3 * u32::from(size) + 1);
            assert_eq!(expect, before + 3 * u32::from(size) + 1);
        }
    }

    #[test]
    fn restore_refuses_impossible_states() {
        assert!(SqRing::restore((4, 4, 0)).is_none());
        assert!(SqRing::restore((4, 0, 7)).is_none());
        assert!(SqRing::restore((1, 0, 0)).is_none());
        assert!(CqRing::restore(4, 4, true).is_none());
        assert_eq!(
            CqRing::restore(4, 3, false).map(|c| (c.head(), c.phase())),
            Some((3, false))
        );
    }

    #[test]
    fn sq_full_leaves_one_entry_empty() {
        let mut sq = SqRing::new(4);
        assert_eq!(sq.push(), Some(0));
        assert_eq!(sq.push(), Some(1));
        assert_eq!(sq.push(), Some(2));
        assert!(sq.is_full());
        assert_eq!(sq.push(), None);
        assert_eq!(sq.used(), 3);
        sq.set_head(2);
        assert_eq!(sq.used(), 1);
        assert_eq!(sq.push(), Some(3));
        assert_eq!(sq.push(), Some(0), "the tail wraps");
        assert_eq!(sq.used(), 3);
        assert!(sq.is_full());
        sq.set_head(9);
        assert_eq!(sq.used(), 3, "an SQHD outside the ring is ignored");
    }

    #[test]
    fn cq_phase_flips_at_each_wrap() {
        let mut cq = CqRing::new(3);
        assert!(cq.phase());
        for _ in 0..3 {
            cq.advance();
        }
        assert_eq!(cq.head(), 0);
        assert!(!cq.phase());
        for _ in 0..3 {
            cq.advance();
        }
        assert!(cq.phase());
    }

    /// Many times around both rings with a device in memory: every command completes
    /// exactly once, in order, stale entries of the previous lap are never taken for new
    /// ones, and the SQ never overruns.
    #[test]
    fn many_laps_of_wrap_around() {
        for size in [2u16, 3, 8, 31] {
            let mut sq_mem = vec![0u8; usize::from(size) * SQE_SIZE];
            let mut cq_mem = vec![0u8; usize::from(size) * CQE_SIZE];
            let mut sq = SqRing::new(size);
            let mut cq = CqRing::new(size);
            let mut dev = FakeDevice {
                sq_head: 0,
                cq_tail: 0,
                cq_phase: true,
                cq_head_db: 0,
            };
            let mut next_cmd = 0u32;
            let mut expect = 0u32;
            let total = 20 * u32::from(size) + 7;
            let mut step = 0u32;
            while expect < total {
                // Submit a varying number of commands, as many as fit.
                let burst = 1 + (step % u32::from(size));
                step += 1;
                for _ in 0..burst {
                    if next_cmd == total {
                        break;
                    }
                    let Some(at) = sq.push() else { break };
                    let sqe = Sqe {
                        cid: (next_cmd % 65536) as u16,
                        cdw10: next_cmd,
                        ..Sqe::default()
                    };
                    let o = usize::from(at) * SQE_SIZE;
                    sq_mem[o..o + SQE_SIZE].copy_from_slice(&sqe.to_bytes());
                    next_cmd += 1;
                }
                // The device runs what the tail doorbell covers.
                dev.run(&sq_mem, sq.tail(), &mut cq_mem, size);
                // Reap; then the CQ head doorbell.
                // SAFETY: cq_mem holds `size` entries and outlives the call.
                while let Some(c) = unsafe { cq.peek(cq_mem.as_ptr()) } {
                    assert_eq!(c.dw0, expect, "completions in order, none twice");
                    expect += 1;
                    sq.set_head(c.sqhd);
                    cq.advance();
                }
                dev.cq_head_db = cq.head();
                assert!(sq.used() < size);
            }
            assert_eq!(next_cmd, total);
            // SAFETY: as above.
            assert!(unsafe { cq.peek(cq_mem.as_ptr()) }.is_none());
        }
    }
}
