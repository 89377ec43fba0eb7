//! The mapping log (format version 2): how an allocating write's mapping becomes
//! durable without a map-page write of its own.
//!
//! A change of a map entry on the I/O path (a new cluster, a copy on write, an unmap)
//! appends a record (volume id, cluster index, new value) to the log instead of
//! writing the entry's 4 KiB map page. The log is a ring of `log_pages` metadata pages
//! (two slots each, like every page); its position is a log page *number* (which grows
//! for ever; number `n` lives at place `n mod log_pages`) and a record index in it.
//!
//! - **Append** (any reactor, no lock): the entry is stored first, then a place is
//!   taken with a compare-and-swap of the tail, the record filled, its map page
//!   marked dirty (its `requested` generation bumped), the record tagged with its
//!   page number, and the log page's `requested` bumped: from there on the log page is
//!   written and published with the same token protocol as any page (see `meta`), so
//!   every append that lands while one write of the tail page is in flight shares the
//!   next one (group commit).
//! - **Checkpoint** (a background thread per pool, and the open): reads the tail, then
//!   writes every dirty map page; each map page records the tail it saw before reading
//!   its entries (its *lsn*), so it reflects every record before that position. Then
//!   the log pages below the tail's page are *folded* and their places may be reused.
//!   A log that is full (the next page's place still holds records not folded) makes
//!   appends wait: the write stays pending until a checkpoint frees a place.
//! - **Replay** (`load`): map pages first, then every record of the ring in position
//!   order whose position is at or after its map page's lsn, for volumes that exist.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::ctlio::CtlIo;
use crate::format::{self, LogRecord, LOG_RECS, MAP_ENTRIES};
use crate::meta;
use crate::pool::Pool;
use crate::PoolError;

/// Bits of the tail word that hold the record index.
const IDX_BITS: u32 = 16;

/// A log position: page number and record index, as one ordered number.
#[inline]
pub fn lsn(number: u64, idx: u64) -> u64 {
    number * LOG_RECS as u64 + idx
}

/// The tail as a position (the position the next record gets, or later).
#[inline]
pub fn tail_lsn(pool: &Pool) -> u64 {
    if pool.geo.log_pages == 0 {
        return 0;
    }
    let t = pool.arena.header().log_tail.load(Ordering::Acquire);
    lsn(t >> IDX_BITS, (t & 0xFFFF).min(LOG_RECS as u64))
}

/// Sets the log's state of a freshly loaded pool: the next record goes to page
/// `number` (its place reused), and everything before it is folded.
pub fn start(pool: &Pool, number: u64) {
    let h = pool.arena.header();
    let r = u64::from(pool.geo.log_pages);
    pool.arena
        .log_slot((number % r) as usize)
        .number
        .store(number, Ordering::Release);
    h.log_folded.store(number, Ordering::Release);
    h.log_tail.store(number << IDX_BITS, Ordering::Release);
}

/// Appends the record "entry `idx` of slot `slot` becomes `value`"; the log page to
/// wait for and the generation that makes the record durable, or `None` when the log
/// is full (try again once a checkpoint has folded a page). The entry must hold its
/// new value (in memory) already.
pub fn append(pool: &Pool, slot: u32, idx: u32, value: u32) -> Option<(u32, u64)> {
    let a = &pool.arena;
    let h = a.header();
    let r = u64::from(pool.geo.log_pages);
    loop {
        let t = h.log_tail.load(Ordering::Acquire);
        let (n, i) = (t >> IDX_BITS, t & 0xFFFF);
        if i < LOG_RECS as u64 {
            if h.log_tail
                .compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let q = (n % r) as usize;
            let rec = &a.log_slot(q).recs[i as usize];
            rec.id.store(
                pool.slot(slot).id.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            rec.idx.store(idx, Ordering::Relaxed);
            rec.value.store(value, Ordering::Relaxed);
            // The map page dirty after the position is taken (a write of it that sees
            // the mark records a later position) and before the record is complete (a
            // checkpoint that finds it complete finds the page dirty).
            dirty(pool, slot, idx);
            rec.number.store(n, Ordering::Release);
            let page = pool.geo.log_page(q as u32);
            return Some((page, meta::request(a.page(page))));
        }
        // The tail page is full: on to the next, if its place is folded.
        let next = n + 1;
        if next >= h.log_folded.load(Ordering::Acquire) + r {
            return None;
        }
        a.log_slot((next % r) as usize)
            .number
            .fetch_max(next, Ordering::AcqRel);
        let _ =
            h.log_tail
                .compare_exchange(t, next << IDX_BITS, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Marks the map page holding entry `idx` of slot `slot` dirty (a checkpoint writes
/// it).
#[inline]
fn dirty(pool: &Pool, slot: u32, idx: u32) {
    let page = pool.map_page_nums(slot)[idx as usize / MAP_ENTRIES].load(Ordering::Relaxed);
    meta::request(pool.arena.page(page));
}

/// The place in the ring of logical page `page`, if it is a log page.
#[inline]
pub fn ring_of(pool: &Pool, page: u32) -> Option<u32> {
    let first = pool.geo.table_pages + 1;
    (page >= first && page < first + pool.geo.log_pages).then(|| page - first)
}

/// Builds log page `q` (its current number, the records complete now) with sequence
/// `seq` into `p`.
pub fn build_page(pool: &Pool, q: u32, seq: u64, p: &mut [u8]) {
    let s = pool.arena.log_slot(q as usize);
    let n = s.number.load(Ordering::Acquire);
    // Records past the tail are not taken yet: only the page's filled part is read.
    let t = pool.arena.header().log_tail.load(Ordering::Acquire);
    let filled = if t >> IDX_BITS == n {
        ((t & 0xFFFF) as usize).min(LOG_RECS)
    } else {
        LOG_RECS
    };
    let recs = s.recs[..filled].iter().map(|r| {
        (r.number.load(Ordering::Acquire) == n).then(|| LogRecord {
            id: r.id.load(Ordering::Relaxed),
            idx: r.idx.load(Ordering::Relaxed),
            value: r.value.load(Ordering::Relaxed),
        })
    });
    format::encode_log(&pool.geo.pool, pool.geo.log_page(q), q, n, seq, recs, p);
}

/// Log pages in use (appended to and not folded).
pub fn used_pages(pool: &Pool) -> u64 {
    let h = pool.arena.header();
    let n = h.log_tail.load(Ordering::Acquire) >> IDX_BITS;
    (n + 1).saturating_sub(h.log_folded.load(Ordering::Acquire))
}

/// Writes every dirty map page, then marks the log pages below the tail seen at the
/// start folded. The caller holds the operation lock (no volume comes or goes).
pub fn checkpoint(pool: &Pool, io: &mut CtlIo) -> Result<u64, PoolError> {
    if pool.geo.log_pages == 0 {
        return Ok(0);
    }
    let h = pool.arena.header();
    let t = h.log_tail.load(Ordering::Acquire);
    let n = t >> IDX_BITS;
    // Every record before the tail complete (an append between taking its place and
    // tagging it is a few instructions on a reactor): its map page is marked dirty.
    let r = u64::from(pool.geo.log_pages);
    for m in h.log_folded.load(Ordering::Acquire)..=n {
        let upto = if m == n {
            ((t & 0xFFFF) as usize).min(LOG_RECS)
        } else {
            LOG_RECS
        };
        for rec in &pool.arena.log_slot((m % r) as usize).recs[..upto] {
            while rec.number.load(Ordering::Acquire) < m {
                std::thread::yield_now();
            }
        }
    }
    let mut written = 0u64;
    for i in 0..pool.arena.nslots() as u32 {
        if pool.slot(i).state.load(Ordering::Acquire) != 1 {
            continue;
        }
        let ks: Vec<usize> = pool
            .map_page_nums(i)
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                let r = pool.arena.page(p.load(Ordering::Relaxed));
                r.requested.load(Ordering::Acquire) > r.durable.load(Ordering::Acquire)
            })
            .map(|(k, _)| k)
            .collect();
        if !ks.is_empty() {
            pool.commit_maps(io, i, &ks)?;
            written += ks.len() as u64;
        }
    }
    // The tail's page too when it is full.
    let folded = if (t & 0xFFFF) as usize >= LOG_RECS {
        n + 1
    } else {
        n
    };
    h.log_folded.fetch_max(folded, Ordering::AcqRel);
    Ok(written)
}

/// Called by an operation (holding the operation lock) before it pauses a volume's
/// I/O: a write waiting for room in a full log would otherwise hold up the pause, and
/// the checkpoint thread that makes room waits for the lock.
pub fn before_pause(pool: &Pool, io: &mut CtlIo) {
    if pool.geo.log_pages > 0 && used_pages(pool) > 1 {
        if let Err(e) = checkpoint(pool, io) {
            tracing::warn!(pool = %pool.name, "mapping log checkpoint before a pause failed: {e}");
        }
    }
}

/// How often the checkpoint thread looks at the log.
const TICK: Duration = Duration::from_millis(2);

/// Starts the pool's checkpoint thread: it folds the log when half of it is in use
/// (or when records are left and the log has been idle for half a second), and ends
/// when the pool goes or another process owns it.
pub fn spawn_checkpointer(pool: &Arc<Pool>) {
    if pool.geo.log_pages == 0 {
        return;
    }
    let weak: Weak<Pool> = Arc::downgrade(pool);
    let name = format!("pool-ckpt-{}", pool.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let me = std::process::id();
        // Ticks since the tail last moved, the tail then, and at the last checkpoint.
        let (mut quiet, mut last, mut folded_at) = (0u32, 0u64, 0u64);
        loop {
            std::thread::sleep(TICK);
            let Some(pool) = weak.upgrade() else { return };
            if pool.arena.header().owner_pid.load(Ordering::Acquire) != me {
                return;
            }
            if !pool.owned.load(Ordering::Acquire) {
                continue;
            }
            let used = used_pages(&pool);
            let half = u64::from(pool.geo.log_pages).div_ceil(2).max(2);
            let tail = pool.arena.header().log_tail.load(Ordering::Acquire);
            if tail == last {
                quiet = quiet.saturating_add(1);
            } else {
                (quiet, last) = (0, tail);
            }
            // Half the ring in use, or records left unfolded by a log idle for 0.5 s.
            if used >= half || (quiet >= 250 && tail != folded_at) {
                folded_at = tail;
                let Ok(_g) = pool.ctl.lock() else { return };
                let r = CtlIo::open(&pool.dev).and_then(|mut io| checkpoint(&pool, &mut io));
                if let Err(e) = r {
                    tracing::error!(pool = %pool.name, "mapping log checkpoint failed: {e}");
                    pool.md_failed.store(true, Ordering::Release);
                    return;
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(pool = %pool.name, "cannot start the mapping log's checkpoint thread: {e}");
    }
}

/// Log pages of the next pool made, for tests (a small ring wraps often).
#[cfg(test)]
pub mod test_pages {
    use std::cell::Cell;
    thread_local! {
        /// `Some(0)`: a version 1 pool, without a log.
        pub static NEXT: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// Log pages of the pools this thread makes from now on.
    pub fn set(n: Option<u32>) {
        NEXT.with(|c| c.set(n));
    }

    pub fn get() -> Option<u32> {
        NEXT.with(|c| c.get())
    }
}
