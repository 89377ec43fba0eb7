//! Cluster and metadata-page allocation.
//!
//! Clusters are allocated on the I/O path, from any reactor, without a lock: a free
//! count is reserved first (so an allocation that may fail fails before it changes
//! anything), then a bit of the shared bitmap is set with a compare-and-swap, starting
//! from the caller's own cursor so that channels on different reactors rarely touch
//! the same word. Metadata pages are allocated by the control path only (under the
//! pool's operation lock), lowest first, so that metadata stays packed at the start of
//! its area.

use std::sync::atomic::Ordering;

use crate::arena::Arena;

/// Reserves `n` free clusters; false (nothing reserved) when fewer are free.
pub fn reserve(a: &Arena, n: u64) -> bool {
    let free = &a.header().free_clusters;
    let mut cur = free.load(Ordering::Relaxed);
    loop {
        if cur < n {
            return false;
        }
        match free.compare_exchange_weak(cur, cur - n, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(v) => cur = v,
        }
    }
}

/// Gives back a reservation that was not used.
pub fn unreserve(a: &Arena, n: u64) {
    a.header().free_clusters.fetch_add(n, Ordering::AcqRel);
}

/// Takes one free cluster, which the caller has reserved (so one exists), searching from
/// `cursor` (a word index, updated).
pub fn take(a: &Arena, cursor: &mut usize) -> u32 {
    let words = a.bitmap_words();
    let mut w = *cursor % words;
    loop {
        // A full pass cannot come up empty while the caller holds a reservation; the
        // loop keeps going in case others take and free bits as it passes.
        for _ in 0..words {
            let word = a.bitmap_word(w);
            let mut v = word.load(Ordering::Relaxed);
            while v != u64::MAX {
                let bit = (!v).trailing_zeros();
                match word.compare_exchange_weak(
                    v,
                    v | (1 << bit),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        *cursor = w;
                        return (w * 64) as u32 + bit;
                    }
                    Err(now) => v = now,
                }
            }
            w = (w + 1) % words;
        }
        std::hint::spin_loop();
    }
}

/// Returns cluster `c` to the free clusters.
pub fn release(a: &Arena, c: u32) {
    let prev = a
        .bitmap_word(c as usize / 64)
        .fetch_and(!(1u64 << (c % 64)), Ordering::AcqRel);
    debug_assert!(prev & (1 << (c % 64)) != 0, "cluster {c} freed twice");
    a.header().free_clusters.fetch_add(1, Ordering::AcqRel);
}

/// Marks cluster `c` used while the pool is being loaded (no reservation involved);
/// false when it was marked already (a second owner).
pub fn mark(a: &Arena, c: u32) -> bool {
    let prev = a
        .bitmap_word(c as usize / 64)
        .fetch_or(1u64 << (c % 64), Ordering::AcqRel);
    prev & (1 << (c % 64)) == 0
}

/// Whether cluster `c` is in use.
pub fn is_used(a: &Arena, c: u32) -> bool {
    a.bitmap_word(c as usize / 64).load(Ordering::Acquire) & (1 << (c % 64)) != 0
}

/// Sets up the bitmap of a freshly loaded pool: the metadata clusters and the bits past
/// the last cluster are marked used forever; the free count is what remains once the
/// caller has marked every owned cluster (see [`count_free`]).
pub fn init(a: &Arena, first_data: u32, num_clusters: u64) {
    for c in 0..first_data {
        mark(a, c);
    }
    let words = a.bitmap_words();
    let tail = num_clusters % 64;
    if tail != 0 {
        a.bitmap_word(words - 1)
            .fetch_or(!((1u64 << tail) - 1), Ordering::AcqRel);
    }
}

/// Sets the free count from the bitmap.
pub fn count_free(a: &Arena) -> u64 {
    let used: u64 = (0..a.bitmap_words())
        .map(|w| u64::from(a.bitmap_word(w).load(Ordering::Acquire).count_ones()))
        .sum();
    let free = (a.bitmap_words() as u64 * 64).saturating_sub(used);
    a.header().free_clusters.store(free, Ordering::Release);
    free
}

/// Free runs of clusters (start, length), for zeroing them.
pub fn free_runs(a: &Arena) -> Vec<(u32, u32)> {
    let mut runs = Vec::new();
    let mut start: Option<u32> = None;
    let total = (a.bitmap_words() * 64) as u32;
    for c in 0..total {
        match (is_used(a, c), start) {
            (false, None) => start = Some(c),
            (true, Some(s)) => {
                runs.push((s, c - s));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, total - s));
    }
    runs
}

// ---- Metadata pages (control path) ----

/// Takes the `n` lowest free metadata pages; `None` (nothing taken) when fewer are free.
pub fn take_md(a: &Arena, n: usize) -> Option<Vec<u32>> {
    let mut got = Vec::with_capacity(n);
    let md = a.md_pages();
    for w in 0..a.md_words() {
        if got.len() == n {
            break;
        }
        let v = a.md_word(w).load(Ordering::Relaxed);
        if v == u64::MAX {
            continue;
        }
        for bit in 0..64u32 {
            let p = (w * 64) as u32 + bit;
            if p >= md || got.len() == n {
                break;
            }
            if v & (1 << bit) == 0 {
                got.push(p);
            }
        }
    }
    if got.len() < n {
        return None;
    }
    for &p in &got {
        mark_md(a, p);
    }
    Some(got)
}

/// Marks metadata page `p` used; false when it was already (a second owner).
pub fn mark_md(a: &Arena, p: u32) -> bool {
    let prev = a
        .md_word(p as usize / 64)
        .fetch_or(1u64 << (p % 64), Ordering::AcqRel);
    prev & (1 << (p % 64)) == 0
}

/// Frees metadata page `p`.
pub fn release_md(a: &Arena, p: u32) {
    a.md_word(p as usize / 64)
        .fetch_and(!(1u64 << (p % 64)), Ordering::AcqRel);
}

/// Free metadata pages.
pub fn free_md(a: &Arena) -> Vec<u32> {
    let md = a.md_pages();
    (0..md)
        .filter(|&p| a.md_word(p as usize / 64).load(Ordering::Relaxed) & (1 << (p % 64)) == 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Super;

    fn arena(clusters: u64) -> Arena {
        Arena::create(&Super {
            pool: [1; 16],
            name: "t".into(),
            block_size: 512,
            cluster_size: 1 << 20,
            md_pages: 130,
            table_pages: 1,
            first_data_cluster: 2,
            num_clusters: clusters,
            device_blocks: clusters << 11,
            overcommit: 100,
            clean: false,
            created: 0,
            log_pages: 0,
        })
        .expect("arena")
    }

    #[test]
    fn every_data_cluster_is_handed_out_once_then_none() {
        let a = arena(100);
        init(&a, 2, 100);
        assert_eq!(count_free(&a), 98);
        let mut cursor = 0;
        let mut seen = std::collections::HashSet::new();
        while reserve(&a, 1) {
            let c = take(&a, &mut cursor);
            assert!((2..100).contains(&c), "cluster {c}");
            assert!(seen.insert(c), "cluster {c} twice");
        }
        assert_eq!(seen.len(), 98);
        release(&a, 50);
        assert!(reserve(&a, 1));
        assert_eq!(take(&a, &mut cursor), 50);
        assert!(!reserve(&a, 1));
        assert!(!mark(&a, 50), "a second owner is noticed");
    }

    #[test]
    fn threads_never_get_the_same_cluster() {
        let a = std::sync::Arc::new(arena(10_000));
        init(&a, 2, 10_000);
        count_free(&a);
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    let mut cursor = t * 40;
                    let mut got = Vec::new();
                    while reserve(&a, 1) {
                        got.push(take(&a, &mut cursor));
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u32> = hs
            .into_iter()
            .flat_map(|h| h.join().expect("join"))
            .collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!((n, all.len()), (9_998, 9_998));
    }

    #[test]
    fn free_runs_and_metadata_pages() {
        let a = arena(200);
        init(&a, 2, 200);
        for c in [10, 11, 50] {
            mark(&a, c);
        }
        assert_eq!(free_runs(&a), vec![(2, 8), (12, 38), (51, 149)]);
        let got = take_md(&a, 3).expect("pages");
        assert_eq!(got, vec![0, 1, 2]);
        release_md(&a, 1);
        assert_eq!(take_md(&a, 1), Some(vec![1]));
        assert!(take_md(&a, 1000).is_none());
        assert_eq!(free_md(&a).len(), 130 - 3);
    }
}
