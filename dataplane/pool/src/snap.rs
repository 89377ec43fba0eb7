//! Snapshots, clones, inflating a clone, and what deleting a snapshot with a clone
//! needs: handing its clusters to the clone and taking it out of the clone's chain.
//!
//! A snapshot copies no map: the volume's current record (its map, its clusters)
//! becomes the snapshot, and the volume carries on in a new, empty record that is a
//! clone of it. The new record and its table entry are written first; the volume's
//! I/O is then paused (its gate) for one metadata write, the commit: the old record's
//! head, renamed and marked read-only. A crash before that write leaves a clone whose
//! parent is not a snapshot, which the replay drops. The pause is therefore a drain of
//! the requests in flight plus one page write (its flush comes after the pause), whatever
//! the volume's size.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::alloc;
use crate::ctlio::{Buf, CtlIo};
use crate::format::{flags, BUSY, MAP_ENTRIES, PENDING, VALUE_MASK, ZERO};
use crate::pool::{now_secs, random, Ctl, Pool, GATE_TIMEOUT};
use crate::PoolError;

/// Takes snapshot `snap` of volume `name`; the snapshot's slot.
pub(crate) fn snapshot(
    pool: &Pool,
    ctl: &mut Ctl,
    name: &str,
    snap: &str,
) -> Result<u32, PoolError> {
    let b = pool.find(ctl, name)?;
    if pool.is_snapshot(b) {
        return Err(PoolError::IsSnapshot {
            pool: pool.name.clone(),
            name: name.to_string(),
        });
    }
    pool.name_free(ctl, snap)?;
    let s = pool.slot(b);
    let size = s.size.load(Ordering::Acquire);
    let thin = s.flags.load(Ordering::Acquire) & flags::THIN;
    let n = pool.free_slot()?;
    let pages = pool.prepare_slot(
        ctl,
        n,
        name,
        size,
        thin,
        Some(b),
        s.uuid(),
        s.created.load(Ordering::Acquire),
    )?;
    let mut io = match CtlIo::open(&pool.dev) {
        Ok(io) => io,
        Err(e) => {
            pool.abandon_slot(ctl, &mut CtlIo::open(&pool.dev)?, n, &pages);
            return Err(e);
        }
    };
    // The volume's new record, written but not committed: its parent is not a
    // snapshot yet.
    let undo_new = |ctl: &mut Ctl, io: &mut CtlIo| {
        pool.slot(n).state.store(0, Ordering::Release);
        if pool.commit_table(io, n).is_err() {
            pool.arena.header().tainted.store(1, Ordering::Release);
        }
        pool.abandon_slot(ctl, io, n, &pages);
    };
    let res = pool.commit_head(&mut io, n).and_then(|()| {
        pool.slot(n).state.store(1, Ordering::Release);
        pool.commit_table(&mut io, n)
    });
    if let Err(e) = res {
        undo_new(ctl, &mut io);
        return Err(e);
    }
    let vol = pool.served(ctl, b);
    crate::log::before_pause(pool, &mut io);
    let t0 = Instant::now();
    let gate = match &vol {
        Some(v) => match v.shared.gate.close(GATE_TIMEOUT) {
            Ok(g) => Some(g),
            Err(_) => {
                undo_new(ctl, &mut io);
                return Err(PoolError::Busy {
                    pool: pool.name.clone(),
                    name: name.to_string(),
                    waited: GATE_TIMEOUT,
                });
            }
        },
        None => None,
    };
    let drained = t0.elapsed();
    // The commit: the old record becomes the snapshot.
    let old_flags = s.flags.fetch_or(flags::SNAPSHOT, Ordering::AcqRel);
    let old_uuid = s.uuid();
    s.set_uuid(&random());
    s.set_name(snap);
    // Written, not flushed, inside the pause: whatever the volume writes next that
    // needs a cluster (all of its first writes do) flushes its own map page after this
    // write completed, which makes the commit durable before that write is
    // acknowledged; the flush below does it for the caller.
    if let Err(e) = pool.commit_head_with(&mut io, b, false) {
        s.flags.store(old_flags, Ordering::Release);
        s.set_uuid(&old_uuid);
        s.set_name(name);
        drop(gate);
        undo_new(ctl, &mut io);
        return Err(e);
    }
    if let Some(v) = &vol {
        v.shared.cur.store(n, Ordering::Release);
    }
    drop(gate);
    let paused = t0.elapsed();
    if pool.volatile {
        io.flush("flushing the snapshot's commit")?;
    }
    tracing::debug!(pool = %pool.name, volume = name, snapshot = snap, drained_us = drained.as_micros() as u64, paused_us = paused.as_micros() as u64, "snapshot taken");
    if let Some(v) = &vol {
        ctl.served.remove(&b);
        ctl.served.insert(n, std::sync::Arc::downgrade(v));
        v.shared
            .last_pause_ns
            .store(paused.as_nanos() as u64, Ordering::Release);
    }
    ctl.by_name.insert(name.to_string(), n);
    ctl.by_name.insert(snap.to_string(), b);
    ctl.by_id.insert(pool.slot(n).id.load(Ordering::Acquire), n);
    Ok(b)
}

/// Makes clone `name` of snapshot `snap`; the clone's slot.
pub(crate) fn clone(pool: &Pool, ctl: &mut Ctl, snap: &str, name: &str) -> Result<u32, PoolError> {
    let s = pool.find(ctl, snap)?;
    if !pool.is_snapshot(s) {
        return Err(PoolError::NotSnapshot {
            pool: pool.name.clone(),
            name: snap.to_string(),
        });
    }
    pool.name_free(ctl, name)?;
    let size = pool.slot(s).size.load(Ordering::Acquire);
    pool.check_promise(ctl, size)?;
    let n = pool.free_slot()?;
    let pages = pool.prepare_slot(
        ctl,
        n,
        name,
        size,
        flags::THIN,
        Some(s),
        random(),
        now_secs(),
    )?;
    let mut io = CtlIo::open(&pool.dev)?;
    let res = pool.commit_head(&mut io, n).and_then(|()| {
        pool.slot(n).state.store(1, Ordering::Release);
        pool.commit_table(&mut io, n)
    });
    if let Err(e) = res {
        pool.slot(n).state.store(0, Ordering::Release);
        let _ = pool.commit_table(&mut io, n);
        pool.abandon_slot(ctl, &mut io, n, &pages);
        return Err(e);
    }
    ctl.by_name.insert(name.to_string(), n);
    ctl.by_id.insert(pool.slot(n).id.load(Ordering::Acquire), n);
    Ok(n)
}

/// Clusters copied per metadata commit while inflating.
const INFLATE_BATCH: usize = 64;

/// Copies every cluster clone `name` reads through its snapshot into clusters of its
/// own, then detaches it. Runs beside the clone's I/O: each copy claims its map entry
/// as a write would, so a write to that cluster waits for the copy (or the copy sees
/// the write's cluster and skips it).
pub(crate) fn inflate(pool: &Pool, ctl: &mut Ctl, name: &str) -> Result<u32, PoolError> {
    let c = pool.find(ctl, name)?;
    let Some(parent) = pool.parent(c) else {
        return Err(PoolError::NotClone {
            pool: pool.name.clone(),
            name: name.to_string(),
        });
    };
    let mut io = CtlIo::open(&pool.dev)?;
    let mut buf = Buf::new(pool.cs as usize);
    let mut cursor = 0usize;
    let mut batch: Vec<(usize, u32)> = Vec::new();
    let n = pool.entries(c).len();
    for idx in 0..n {
        let e = &pool.entries(c)[idx];
        loop {
            let v = e.load(Ordering::Acquire);
            if v & (BUSY | PENDING) != 0 {
                std::thread::yield_now();
                continue;
            }
            if v & VALUE_MASK != 0 {
                break;
            }
            let src = pool.resolve(parent, idx);
            if src == 0 {
                break;
            }
            if e.compare_exchange(0, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            if !alloc::reserve(&pool.arena, 1) {
                e.store(0, Ordering::Release);
                commit_batch(pool, &mut io, c, &mut batch)?;
                return Err(PoolError::NoSpace {
                    pool: pool.name.clone(),
                    need: 1,
                    free: 0,
                });
            }
            let y = alloc::take(&pool.arena, &mut cursor);
            let copied = io
                .read(
                    u64::from(src) << pool.cs_shift,
                    &mut buf,
                    "inflating: reading a shared cluster",
                )
                .and_then(|()| {
                    io.write(
                        u64::from(y) << pool.cs_shift,
                        &buf,
                        "inflating: writing its copy",
                    )
                });
            if let Err(err) = copied {
                e.store(0, Ordering::Release);
                // The copy's cluster may hold part of a copy: not reused in this run.
                pool.arena.header().tainted.store(1, Ordering::Release);
                commit_batch(pool, &mut io, c, &mut batch)?;
                return Err(err);
            }
            e.store(y | PENDING, Ordering::Release);
            batch.push((idx, y));
            break;
        }
        if batch.len() >= INFLATE_BATCH {
            commit_batch(pool, &mut io, c, &mut batch)?;
        }
    }
    commit_batch(pool, &mut io, c, &mut batch)?;
    let s = pool.slot(c);
    let old = s.parent.swap(0, Ordering::AcqRel);
    if let Err(e) = pool.commit_head(&mut io, c) {
        s.parent.store(old, Ordering::Release);
        return Err(e);
    }
    Ok(c)
}

/// Makes the copies of a batch durable (data, then the map pages naming them), then
/// lets writes at them go ahead.
fn commit_batch(
    pool: &Pool,
    io: &mut CtlIo,
    c: u32,
    batch: &mut Vec<(usize, u32)>,
) -> Result<(), PoolError> {
    if batch.is_empty() {
        return Ok(());
    }
    if pool.volatile {
        io.flush("inflating: flushing copied clusters")?;
    }
    let ks: BTreeSet<usize> = batch.iter().map(|(idx, _)| idx / MAP_ENTRIES).collect();
    let ks: Vec<usize> = ks.into_iter().collect();
    let res = pool.commit_maps(io, c, &ks);
    let e = pool.entries(c);
    for &(idx, y) in batch.iter() {
        match res {
            Ok(()) => e[idx].store(y, Ordering::Release),
            // Not durable: the copy is not the clone's; its cluster is left unused
            // until the next open (which finds it free and zeroes it).
            Err(_) => e[idx].store(0, Ordering::Release),
        }
    }
    if res.is_ok() {
        pool.slot(c)
            .used
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
    } else {
        pool.arena.header().tainted.store(1, Ordering::Release);
    }
    batch.clear();
    res
}

/// Hands snapshot `s`'s clusters to its clone `c` where the clone has none of its own
/// (the snapshot is being deleted): each entry claimed as a write would, the clone's
/// map pages made durable, then released. The indices the clone now holds (those it
/// held already from an interrupted earlier run included).
pub(crate) fn hand_clusters(
    pool: &Pool,
    io: &mut CtlIo,
    s: u32,
    c: u32,
) -> Result<Vec<usize>, PoolError> {
    let se = pool.entries(s);
    let ce = pool.entries(c);
    let mut moved = Vec::new();
    let mut claimed = Vec::new();
    let mut pages = BTreeSet::new();
    for idx in 0..se.len().min(ce.len()) {
        let v = se[idx].load(Ordering::Acquire) & VALUE_MASK;
        if v == 0 {
            continue;
        }
        loop {
            let e = ce[idx].load(Ordering::Acquire);
            if e & (BUSY | PENDING) != 0 {
                std::thread::yield_now();
                continue;
            }
            let cv = e & VALUE_MASK;
            if cv == v {
                moved.push(idx);
                break;
            }
            if cv != 0 {
                break;
            }
            if ce[idx]
                .compare_exchange(0, v | PENDING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                moved.push(idx);
                claimed.push(idx);
                pages.insert(idx / MAP_ENTRIES);
                break;
            }
        }
    }
    let ks: Vec<usize> = pages.into_iter().collect();
    let res = pool.commit_maps(io, c, &ks);
    for &idx in &claimed {
        let v = ce[idx].load(Ordering::Acquire) & VALUE_MASK;
        ce[idx].store(if res.is_ok() { v } else { 0 }, Ordering::Release);
    }
    res?;
    let real = claimed
        .iter()
        .filter(|&&idx| ce[idx].load(Ordering::Acquire) != ZERO)
        .count() as u64;
    pool.slot(c).used.fetch_add(real, Ordering::AcqRel);
    pool.slot(s).used.fetch_sub(
        real.min(pool.slot(s).used.load(Ordering::Acquire)),
        Ordering::AcqRel,
    );
    Ok(moved)
}

/// Takes snapshot `s` out of clone `c`'s chain (the clone's parent becomes the
/// snapshot's), then waits until no request that may still be reading `s`'s map is
/// running: every served volume whose chain passes through `c` pauses for a moment.
pub(crate) fn reparent(
    pool: &Pool,
    ctl: &mut Ctl,
    io: &mut CtlIo,
    c: u32,
    s: u32,
) -> Result<(), PoolError> {
    let r = pool.slot(c);
    let newp = pool.slot(s).parent.load(Ordering::Acquire);
    let old = r.parent.swap(newp, Ordering::AcqRel);
    if let Err(e) = pool.commit_head(io, c) {
        r.parent.store(old, Ordering::Release);
        return Err(e);
    }
    let vols: Vec<_> = ctl
        .served
        .values()
        .filter_map(|w| w.upgrade())
        .filter(|v| {
            let mut at = Some(v.shared.cur.load(Ordering::Acquire));
            while let Some(x) = at {
                if x == c {
                    return true;
                }
                at = pool.parent(x);
            }
            false
        })
        .collect();
    if !vols.is_empty() {
        crate::log::before_pause(pool, io);
    }
    for v in &vols {
        let g = v
            .shared
            .gate
            .close(GATE_TIMEOUT)
            .map_err(|_| PoolError::Busy {
                pool: pool.name.clone(),
                name: v.info_name(),
                waited: GATE_TIMEOUT,
            })?;
        drop(g);
    }
    Ok(())
}
