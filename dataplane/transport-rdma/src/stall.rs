//! The bound on a queue pair whose work requests stop completing: a host whose queue
//! pair went without an RDMA_CM disconnect (a host cut off, its QP destroyed).
//!
//! The hardware's own answer to that is a retry-exceeded completion error after the
//! retry count's transport timeouts. Soft-RoCE (rxe) never gives it to an NVMe/RDMA
//! target: the passive side's queue pair takes the retry count of the host's connect
//! request, both the Linux host and lightpool-nvmf-host-rdma ask for 7, and rxe's
//! completer treats a retry count of 7 as "retry forever" (it only counts down a count
//! below 7, `rxe_comp.c`, `COMPST_ERROR_RETRY`); a packet for a queue pair that no
//! longer exists is dropped without a NAK. So an RDMA READ or a response's SEND to a
//! vanished host stays posted, and the queue would stay held until the host's RDMA_CM
//! identifier goes.
//!
//! The target bounds it itself: when the signaled work requests it has posted (RDMA
//! READs of host data, response SENDs, each RDMA WRITE being followed by the SEND of
//! its response) have gone [`STALL_LIMIT`] without any of them completing, the queue
//! ends. A queue with nothing posted is never ended by this (a host that is merely
//! quiet, or a block device that is slow, holds no work request), and a busy queue
//! whose completions keep arriving is not either: every completion restarts the clock.

use std::time::{Duration, Instant};

/// How long posted work requests may go without one completing before the queue is
/// ended. On real RoCE hardware a lost packet is retried after the CM's ACK timeout
/// (about 0.5 s for RoCE), so a few retries stay well within it; on soft-RoCE a
/// completion takes micro- to milliseconds.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Signaled work requests posted and not completed, and since when none completed.
#[derive(Debug, Clone, Copy)]
pub struct Outstanding {
    count: usize,
    /// The last completion, or the post that found nothing outstanding.
    since: Instant,
}

impl Outstanding {
    pub fn new(now: Instant) -> Outstanding {
        Outstanding {
            count: 0,
            since: now,
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// A signaled work request was posted.
    pub fn posted(&mut self, now: Instant) {
        if self.count == 0 {
            self.since = now;
        }
        self.count += 1;
    }

    /// One completed successfully: the queue pair makes progress.
    pub fn completed(&mut self, now: Instant) {
        self.count = self.count.saturating_sub(1);
        self.since = now;
    }

    /// One was flushed or failed (the queue is ending): it only stops counting.
    pub fn retired(&mut self) {
        self.count = self.count.saturating_sub(1);
    }

    /// When the queue counts as stalled if nothing completes before: `None` while
    /// nothing is outstanding.
    pub fn deadline(&self) -> Option<Instant> {
        (self.count > 0).then(|| self.since + STALL_LIMIT)
    }

    pub fn stalled(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_outstanding_never_stalls() {
        let t0 = Instant::now();
        let o = Outstanding::new(t0);
        assert_eq!(o.deadline(), None);
        assert!(!o.stalled(t0 + STALL_LIMIT * 100));
    }

    #[test]
    fn work_without_a_completion_stalls_at_the_limit() {
        let t0 = Instant::now();
        let mut o = Outstanding::new(t0);
        // Idle for a long time first: the clock starts at the post, not before.
        let t1 = t0 + STALL_LIMIT * 10;
        o.posted(t1);
        o.posted(t1 + S);
        assert_eq!(o.deadline(), Some(t1 + STALL_LIMIT));
        assert!(!o.stalled(t1 + STALL_LIMIT - S));
        assert!(o.stalled(t1 + STALL_LIMIT));
    }

    #[test]
    fn completions_restart_the_clock() {
        let t0 = Instant::now();
        let mut o = Outstanding::new(t0);
        o.posted(t0);
        o.posted(t0);
        // A slow but live queue pair: one completion every 4 s, each within the limit.
        o.completed(t0 + 4 * S);
        assert!(!o.stalled(t0 + 8 * S));
        assert_eq!(o.deadline(), Some(t0 + 4 * S + STALL_LIMIT));
        o.completed(t0 + 8 * S);
        assert_eq!(o.count(), 0);
        assert!(!o.stalled(t0 + 100 * S));
    }

    #[test]
    fn retired_work_does_not_count_as_progress() {
        let t0 = Instant::now();
        let mut o = Outstanding::new(t0);
        o.posted(t0);
        o.posted(t0);
        o.retired();
        assert_eq!(o.count(), 1);
        assert!(o.stalled(t0 + STALL_LIMIT));
        o.retired();
        o.retired();
        assert_eq!(o.count(), 0);
    }
}
