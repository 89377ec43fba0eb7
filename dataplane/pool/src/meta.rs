//! How a metadata page gets written when several reactors (and the control path) change
//! what it holds at once, without a lock.
//!
//! Whoever changes a page's contents (a map entry) stores the change, then bumps the
//! page's `requested` generation and remembers the value it got. It then needs a write
//! of the page that started after its change: one whose snapshot of `requested` is at
//! least its generation. At most one write of a page is in flight (its token); the
//! token holder loads `requested`, builds the page from the current contents, writes
//! it to the slot its new sequence number picks, flushes if the device has a volatile
//! cache, and then publishes: the new sequence, `durable` = its snapshot, token free.
//! Waiters poll `durable`; one whose generation is still ahead when the token is free
//! takes it and writes again. A change is therefore durable (and may be acknowledged)
//! exactly when `durable` has reached its generation, and the other slot of the page
//! always holds the previous complete copy: a write never overwrites the only durable
//! copy.
//!
//! Progress needs no background work: the only one who needs a later write is a waiter,
//! and a waiter has a request pending, so its channel is being polled.

use std::sync::atomic::Ordering;

use crate::arena::PageRec;
use crate::format::{slot_of, PAGE};

/// Records a change of the page; the generation to wait for.
#[inline]
pub fn request(rec: &PageRec) -> u64 {
    rec.requested.fetch_add(1, Ordering::AcqRel) + 1
}

/// Whether the change of generation `gen` is durable.
#[inline]
pub fn is_durable(rec: &PageRec, gen: u64) -> bool {
    rec.durable.load(Ordering::Acquire) >= gen
}

/// A write the caller may now do: its sequence number and the generation it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    pub seq: u64,
    pub snap: u64,
}

/// Takes the page's token if it is free; the caller must then build the page from the
/// current contents, write it to [`slot_offset`]`(page, turn.seq)` and call [`publish`]
/// (or [`give_up`]).
#[inline]
pub fn try_take(rec: &PageRec) -> Option<Turn> {
    rec.token
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
        .ok()?;
    let snap = rec.requested.load(Ordering::Acquire);
    let seq = rec.seq.load(Ordering::Relaxed) + 1;
    Some(Turn { seq, snap })
}

/// The write (and flush) of `turn` is durable.
pub fn publish(rec: &PageRec, turn: Turn) {
    rec.seq.store(turn.seq, Ordering::Relaxed);
    rec.durable.fetch_max(turn.snap, Ordering::AcqRel);
    rec.token.store(0, Ordering::Release);
}

/// The write failed: the token goes back and the sequence stays, so the next write
/// goes to the same slot (whatever the failed write left there is overwritten, and the
/// other slot still holds the last durable copy).
pub fn give_up(rec: &PageRec) {
    rec.token.store(0, Ordering::Release);
}

/// Byte offset on the pool device of the slot a copy with sequence `seq` of logical
/// page `page` goes to.
#[inline]
pub fn slot_offset(page: u32, seq: u64) -> u64 {
    (2 * u64::from(page) + slot_of(seq) as u64) * PAGE as u64
}

/// Byte offset of both slots of logical page `page` (8 KiB).
#[inline]
pub fn page_offset(page: u32) -> u64 {
    2 * u64::from(page) * PAGE as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn rec() -> PageRec {
        PageRec {
            seq: AtomicU64::new(4),
            token: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_change_is_durable_only_after_a_write_that_started_after_it() {
        let r = rec();
        let g1 = request(&r);
        let t = try_take(&r).expect("token free");
        assert_eq!(t, Turn { seq: 5, snap: 1 });
        // A change made while that write is in flight is not covered by it.
        let g2 = request(&r);
        assert!(try_take(&r).is_none(), "one write at a time");
        publish(&r, t);
        assert!(is_durable(&r, g1));
        assert!(!is_durable(&r, g2));
        let t2 = try_take(&r).expect("free again");
        assert_eq!(t2, Turn { seq: 6, snap: 2 });
        assert_ne!(
            slot_offset(9, t.seq),
            slot_offset(9, t2.seq),
            "copies alternate"
        );
        publish(&r, t2);
        assert!(is_durable(&r, g2));
    }

    #[test]
    fn a_failed_write_keeps_the_slot() {
        let r = rec();
        request(&r);
        let t = try_take(&r).expect("free");
        give_up(&r);
        let again = try_take(&r).expect("free after failure");
        assert_eq!(again.seq, t.seq);
    }
}
