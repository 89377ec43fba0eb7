//! One warning line per interval for a condition that can hit every request of a queue
//! (a request that finds no registered buffer: thousands when the pool runs dry): the
//! first is said at once, the ones within the next [`WARN_INTERVAL`] are counted, and
//! the next line after it carries that count (the last count goes with the queue's end).

use std::time::{Duration, Instant};

/// At most one line per queue per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// When the last line was said, and how many occurrences went unsaid since.
#[derive(Debug, Default, Clone, Copy)]
pub struct WarnLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// One more occurrence: `Some(suppressed before it)` when a line is due now.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The occurrences not said yet (taken: said once at the end).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_one_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut w = WarnLimit::default();
        assert_eq!(w.hit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(w.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(w.hit(t0 + WARN_INTERVAL), Some(5));
        assert_eq!(w.hit(t0 + WARN_INTERVAL + Duration::from_secs(1)), None);
        assert_eq!(w.take_suppressed(), 1);
        assert_eq!(w.take_suppressed(), 0);
    }
}
