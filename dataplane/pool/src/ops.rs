//! The pool's operations ([`PoolOps`]): each runs on the calling (control) thread under
//! the pool's operation lock, does its metadata I/O through a channel of its own, and
//! writes in the order that keeps every step recoverable: pages a head names before the
//! head, a head before the table entry that names it, and the table entry (or the head
//! of the volume that changes) last, as the commit.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::alloc;
use crate::ctlio::CtlIo;
use crate::format::{self, flags, Head, MAP_ENTRIES, VALUE_MASK, ZERO};
use crate::pool::{new_id, now_secs, random, Ctl, Pool};
use crate::volume::VolumeBdev;
use crate::{CheckReport, PoolError, PoolInfo, PoolOps, VolumeInfo};

/// Volume (and pool) names: 1 to 255 bytes, no `/` (namespaces name a volume as
/// `pool/volume`), no spaces or control characters.
pub(crate) fn check_name(name: &str) -> Result<(), PoolError> {
    let bad = |why| {
        Err(PoolError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("a name cannot be empty");
    }
    if name.len() > format::MAX_NAME {
        return bad("a name has at most 255 bytes");
    }
    if name.contains('/') {
        return bad("a name cannot contain '/' (a namespace names a volume as \"pool/volume\")");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("a name cannot contain spaces or control characters");
    }
    Ok(())
}

impl Pool {
    pub(crate) fn no_such(&self, name: &str) -> PoolError {
        PoolError::NoSuchVolume {
            pool: self.name.clone(),
            name: name.to_string(),
        }
    }

    pub(crate) fn find(&self, ctl: &Ctl, name: &str) -> Result<u32, PoolError> {
        ctl.by_name
            .get(name)
            .copied()
            .ok_or_else(|| self.no_such(name))
    }

    pub(crate) fn name_free(&self, ctl: &Ctl, name: &str) -> Result<(), PoolError> {
        check_name(name)?;
        if ctl.by_name.contains_key(name) {
            return Err(PoolError::Exists {
                pool: self.name.clone(),
                name: name.to_string(),
            });
        }
        Ok(())
    }

    pub(crate) fn is_snapshot(&self, i: u32) -> bool {
        self.slot(i).flags.load(Ordering::Acquire) & flags::SNAPSHOT != 0
    }

    /// The clones of slot `i`.
    pub(crate) fn clones_of(&self, ctl: &Ctl, i: u32) -> Vec<u32> {
        let mut v: Vec<u32> = ctl
            .by_name
            .values()
            .copied()
            .filter(|&c| self.parent(c) == Some(i))
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn info_of(&self, ctl: &Ctl, i: u32) -> VolumeInfo {
        let s = self.slot(i);
        let f = s.flags.load(Ordering::Acquire);
        VolumeInfo {
            name: s.name(),
            id: s.id.load(Ordering::Acquire),
            uuid: s.uuid(),
            size: s.size.load(Ordering::Acquire),
            used: s.used.load(Ordering::Acquire) << self.cs_shift,
            thin: f & flags::THIN != 0,
            snapshot: f & flags::SNAPSHOT != 0,
            parent: self.parent(i).map(|p| self.slot(p).name()),
            clones: self
                .clones_of(ctl, i)
                .into_iter()
                .map(|c| self.slot(c).name())
                .collect(),
            created: s.created.load(Ordering::Acquire),
        }
    }

    pub(crate) fn check_size(&self, size: u64) -> Result<u64, PoolError> {
        if size == 0 || !size.is_multiple_of(self.bs) {
            return Err(PoolError::InvalidSize {
                pool: self.name.clone(),
                size,
                block_size: self.geo.block_size,
            });
        }
        let clusters = size.div_ceil(self.cs);
        if clusters > format::MAX_CLUSTERS {
            return Err(PoolError::Options(format!(
                "a volume of {size} bytes has more clusters than a map can hold"
            )));
        }
        Ok(clusters)
    }

    pub(crate) fn check_promise(&self, ctl: &Ctl, more: u64) -> Result<(), PoolError> {
        let promised = self.promised(ctl) + more;
        let limit = self.promise_limit();
        if promised > limit {
            return Err(PoolError::Overcommit {
                pool: self.name.clone(),
                promised,
                limit,
                percent: self.geo.overcommit,
            });
        }
        Ok(())
    }

    /// A free slot (table entry).
    pub(crate) fn free_slot(&self) -> Result<u32, PoolError> {
        (0..self.arena.nslots() as u32)
            .find(|&i| {
                self.slot(i).state.load(Ordering::Acquire) == 0
                    && self.slot(i).extent.load(Ordering::Acquire) == 0
            })
            .ok_or(PoolError::TooManyVolumes {
                pool: self.name.clone(),
                max: self.arena.nslots(),
            })
    }

    /// `n` free metadata pages.
    pub(crate) fn take_md(&self, n: usize) -> Result<Vec<u32>, PoolError> {
        alloc::take_md(&self.arena, n).ok_or_else(|| PoolError::MetadataFull {
            pool: self.name.clone(),
            need: n,
            free: alloc::free_md(&self.arena).len(),
        })
    }

    /// Sets up slot `i` (not yet live) for a volume of `clusters` clusters with fresh
    /// metadata pages and a zeroed map; returns the pages it took.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare_slot(
        &self,
        ctl: &mut Ctl,
        i: u32,
        name: &str,
        size: u64,
        flags: u32,
        parent: Option<u32>,
        uuid: [u8; 16],
        created: u64,
    ) -> Result<Vec<u32>, PoolError> {
        let clusters = size.div_ceil(self.cs);
        let mp = clusters.div_ceil(MAP_ENTRIES as u64) as usize;
        let ep = Head::ext_pages_needed(mp);
        let pages = self.take_md(1 + ep + mp)?;
        let bytes = Pool::extent_bytes(mp, ep, clusters);
        let Some((at, len)) = ctl.extents.take(bytes) else {
            for &p in &pages {
                alloc::release_md(&self.arena, p);
            }
            return Err(PoolError::MapAreaFull {
                pool: self.name.clone(),
            });
        };
        self.arena.zero(at, len);
        let s = self.slot(i);
        s.flags.store(flags, Ordering::Relaxed);
        s.parent
            .store(parent.map_or(0, |p| p + 1), Ordering::Relaxed);
        s.clusters.store(clusters as u32, Ordering::Relaxed);
        s.map_pages.store(mp as u32, Ordering::Relaxed);
        s.ext_pages.store(ep as u32, Ordering::Relaxed);
        s.head.store(pages[0], Ordering::Relaxed);
        s.id.store(new_id(), Ordering::Relaxed);
        s.size.store(size, Ordering::Relaxed);
        s.used.store(0, Ordering::Relaxed);
        s.transfer_to.store(0, Ordering::Relaxed);
        s.created.store(created, Ordering::Relaxed);
        s.set_uuid(&uuid);
        s.set_name(name);
        let refs = self.arena.u32s(at, ep + mp);
        // Map pages first in the extent, then continuation pages.
        for (k, r) in refs.iter().enumerate() {
            let p = if k < mp {
                pages[1 + ep + k]
            } else {
                pages[1 + k - mp]
            };
            r.store(p, Ordering::Relaxed);
        }
        s.extent.store(at, Ordering::Release);
        s.extent_len.store(len, Ordering::Release);
        Ok(pages)
    }

    /// Undoes [`Pool::prepare_slot`] after a failure: the pages may have been written,
    /// so they are wiped before they are freed (or, if that fails too, the pool is
    /// marked so that the next open wipes every free page).
    pub(crate) fn abandon_slot(&self, ctl: &mut Ctl, io: &mut CtlIo, i: u32, pages: &[u32]) {
        let s = self.slot(i);
        s.state.store(0, Ordering::Release);
        if self.wipe_pages(io, pages).is_err() {
            self.arena.header().tainted.store(1, Ordering::Release);
        }
        for &p in pages {
            alloc::release_md(&self.arena, p);
        }
        let (at, len) = (
            s.extent.load(Ordering::Acquire),
            s.extent_len.load(Ordering::Acquire),
        );
        if at != 0 {
            ctl.extents.give(at, len);
        }
        s.extent.store(0, Ordering::Release);
        s.clusters.store(0, Ordering::Release);
    }

    fn create_locked(
        &self,
        ctl: &mut Ctl,
        name: &str,
        size: u64,
        thin: bool,
    ) -> Result<u32, PoolError> {
        self.name_free(ctl, name)?;
        let clusters = self.check_size(size)?;
        self.check_promise(ctl, size)?;
        if !thin && !alloc::reserve(&self.arena, clusters) {
            return Err(PoolError::NoSpace {
                pool: self.name.clone(),
                need: clusters,
                free: self.arena.header().free_clusters.load(Ordering::Acquire),
            });
        }
        let unreserve = |n| {
            if !thin {
                alloc::unreserve(&self.arena, n)
            }
        };
        let i = match self.free_slot() {
            Ok(i) => i,
            Err(e) => {
                unreserve(clusters);
                return Err(e);
            }
        };
        let f = if thin { flags::THIN } else { 0 };
        let pages = match self.prepare_slot(ctl, i, name, size, f, None, random(), now_secs()) {
            Ok(p) => p,
            Err(e) => {
                unreserve(clusters);
                return Err(e);
            }
        };
        let mut io = CtlIo::open(&self.dev)?;
        let res = (|| {
            if !thin {
                let mut cursor = 0usize;
                let e = self.entries(i);
                for x in e.iter() {
                    x.store(alloc::take(&self.arena, &mut cursor), Ordering::Relaxed);
                }
                self.slot(i).used.store(clusters, Ordering::Relaxed);
                let ks: Vec<usize> = (0..self.map_page_nums(i).len()).collect();
                self.commit_maps(&mut io, i, &ks)?;
            }
            self.commit_head(&mut io, i)?;
            self.slot(i).state.store(1, Ordering::Release);
            self.commit_table(&mut io, i)
        })();
        if let Err(e) = res {
            if !thin {
                for x in self.entries(i) {
                    let c = x.swap(0, Ordering::AcqRel) & VALUE_MASK;
                    if c != 0 {
                        // Never written: still zeroes.
                        alloc::release(&self.arena, c);
                    }
                }
            }
            self.abandon_slot(ctl, &mut io, i, &pages);
            return Err(e);
        }
        ctl.by_name.insert(name.to_string(), i);
        ctl.by_id.insert(self.slot(i).id.load(Ordering::Relaxed), i);
        Ok(i)
    }

    /// Whether a namespace (or anyone) holds the volume of slot `i`'s device.
    pub(crate) fn served(&self, ctl: &Ctl, i: u32) -> Option<Arc<VolumeBdev>> {
        ctl.served.get(&i).and_then(|w| w.upgrade())
    }

    fn delete_locked(&self, ctl: &mut Ctl, name: &str) -> Result<(), PoolError> {
        let i = self.find(ctl, name)?;
        if self.served(ctl, i).is_some() {
            return Err(PoolError::InUse {
                pool: self.name.clone(),
                name: name.to_string(),
            });
        }
        let clones = self.clones_of(ctl, i);
        if clones.len() > 1 {
            return Err(PoolError::HasClones {
                pool: self.name.clone(),
                name: name.to_string(),
                clones: clones.len(),
                names: clones
                    .iter()
                    .map(|&c| self.slot(c).name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut io = CtlIo::open(&self.dev)?;
        let s = self.slot(i);
        let old = s.flags.fetch_or(flags::DELETING, Ordering::AcqRel);
        if let Some(&c) = clones.first() {
            s.transfer_to
                .store(self.slot(c).id.load(Ordering::Acquire), Ordering::Release);
        }
        // The commit of the deletion: from here on, a crash finishes it.
        if let Err(e) = self.commit_head(&mut io, i) {
            s.flags.store(old, Ordering::Release);
            s.transfer_to.store(0, Ordering::Release);
            return Err(e);
        }
        ctl.by_name.remove(name);
        let mut handed = HashSet::new();
        if let Some(&c) = clones.first() {
            let moved = crate::snap::hand_clusters(self, &mut io, i, c)?;
            handed.extend(moved.into_iter().map(|idx| (i, idx)));
            crate::snap::reparent(self, ctl, &mut io, c, i)?;
        }
        remove_slot(self, ctl, &mut io, i, &handed)?;
        ctl.by_id.retain(|_, v| *v != i);
        Ok(())
    }

    fn grow_locked(&self, ctl: &mut Ctl, name: &str, size: u64) -> Result<u32, PoolError> {
        let i = self.find(ctl, name)?;
        if self.is_snapshot(i) {
            return Err(PoolError::IsSnapshot {
                pool: self.name.clone(),
                name: name.to_string(),
            });
        }
        let s = self.slot(i);
        let old_size = s.size.load(Ordering::Acquire);
        if size < old_size {
            return Err(PoolError::Shrink {
                pool: self.name.clone(),
                name: name.to_string(),
                size: old_size,
                asked: size,
            });
        }
        let clusters = self.check_size(size)?;
        if size == old_size {
            return Ok(i);
        }
        self.check_promise(ctl, size - old_size)?;
        let thin = s.flags.load(Ordering::Acquire) & flags::THIN != 0;
        let old_clusters = u64::from(s.clusters.load(Ordering::Acquire));
        let more = clusters - old_clusters;
        if !thin && !alloc::reserve(&self.arena, more) {
            return Err(PoolError::NoSpace {
                pool: self.name.clone(),
                need: more,
                free: self.arena.header().free_clusters.load(Ordering::Acquire),
            });
        }
        let (mp0, ep0) = (self.map_page_nums(i).len(), self.ext_page_nums(i).len());
        let mp = clusters.div_ceil(MAP_ENTRIES as u64) as usize;
        let ep = Head::ext_pages_needed(mp);
        let new_pages = match self.take_md(mp + ep - mp0 - ep0) {
            Ok(p) => p,
            Err(e) => {
                if !thin {
                    alloc::unreserve(&self.arena, more);
                }
                return Err(e);
            }
        };
        let Some((at, len)) = ctl.extents.take(Pool::extent_bytes(mp, ep, clusters)) else {
            for &p in &new_pages {
                alloc::release_md(&self.arena, p);
            }
            if !thin {
                alloc::unreserve(&self.arena, more);
            }
            return Err(PoolError::MapAreaFull {
                pool: self.name.clone(),
            });
        };
        self.arena.zero(at, len);
        // The new extent: old map pages then new ones, old continuation pages then new
        // ones, the old entries then zeroes (or, thick, new clusters).
        let refs = self.arena.u32s(at, mp + ep);
        let mut fresh = new_pages.iter().copied();
        for (k, r) in refs.iter().enumerate().take(mp) {
            let p = match self.map_page_nums(i).get(k) {
                Some(p) => p.load(Ordering::Relaxed),
                None => fresh.next().expect("taken enough pages"),
            };
            r.store(p, Ordering::Relaxed);
        }
        for (k, r) in refs.iter().skip(mp).enumerate() {
            let p = match self.ext_page_nums(i).get(k) {
                Some(p) => p.load(Ordering::Relaxed),
                None => fresh.next().expect("taken enough pages"),
            };
            r.store(p, Ordering::Relaxed);
        }
        let new_entries = self
            .arena
            .u32s(at + 4 * (mp + ep) as u64, clusters as usize);
        let mut cursor = 0usize;
        if !thin {
            for e in &new_entries[old_clusters as usize..] {
                e.store(alloc::take(&self.arena, &mut cursor), Ordering::Relaxed);
            }
        }
        let undo = |ctl: &mut Ctl| {
            for &p in &new_pages {
                alloc::release_md(&self.arena, p);
            }
            if !thin {
                for e in &new_entries[old_clusters as usize..] {
                    alloc::release(&self.arena, e.swap(0, Ordering::AcqRel));
                }
            }
            ctl.extents.give(at, len);
        };
        let mut io = match CtlIo::open(&self.dev) {
            Ok(io) => io,
            Err(e) => {
                undo(ctl);
                return Err(e);
            }
        };
        let vol = self.served(ctl, i);
        let old = (
            s.extent.load(Ordering::Acquire),
            s.extent_len.load(Ordering::Acquire),
        );
        // Switch the volume to the new extent with its I/O paused (the map moves).
        if vol.is_some() {
            crate::log::before_pause(self, &mut io);
        }
        let gate = match &vol {
            Some(v) => match v.shared.gate.close(crate::pool::GATE_TIMEOUT) {
                Ok(g) => Some(g),
                Err(_) => {
                    undo(ctl);
                    return Err(PoolError::Busy {
                        pool: self.name.clone(),
                        name: name.to_string(),
                        waited: crate::pool::GATE_TIMEOUT,
                    });
                }
            },
            None => None,
        };
        for (n, o) in new_entries.iter().zip(self.entries(i)) {
            n.store(o.load(Ordering::Acquire), Ordering::Relaxed);
        }
        s.map_pages.store(mp as u32, Ordering::Release);
        s.ext_pages.store(ep as u32, Ordering::Release);
        s.clusters.store(clusters as u32, Ordering::Release);
        s.extent.store(at, Ordering::Release);
        s.extent_len.store(len, Ordering::Release);
        s.size.store(size, Ordering::Release);
        if !thin {
            s.used.fetch_add(more, Ordering::AcqRel);
        }
        drop(gate);
        ctl.extents.give(old.0, old.1);
        // New map pages (thick: they name clusters) before the head that names them.
        let res = (|| {
            if !thin {
                let ks: Vec<usize> = (mp0.saturating_sub(1)..mp).collect();
                self.commit_maps(&mut io, i, &ks)?;
            }
            self.commit_head(&mut io, i)
        })();
        if let Err(e) = res {
            // The volume keeps its new size in memory; the device may hold either.
            // Not closing cleanly makes the next open replay from what is durable.
            self.arena.header().tainted.store(1, Ordering::Release);
            return Err(e);
        }
        Ok(i)
    }

    fn rename_locked(&self, ctl: &mut Ctl, name: &str, new: &str) -> Result<u32, PoolError> {
        let i = self.find(ctl, name)?;
        if name == new {
            return Ok(i);
        }
        self.name_free(ctl, new)?;
        let mut io = CtlIo::open(&self.dev)?;
        let s = self.slot(i);
        s.set_name(new);
        if let Err(e) = self.commit_head(&mut io, i) {
            s.set_name(name);
            return Err(e);
        }
        ctl.by_name.remove(name);
        ctl.by_name.insert(new.to_string(), i);
        Ok(i)
    }

    fn open_locked(&self, ctl: &mut Ctl, name: &str) -> Result<Arc<VolumeBdev>, PoolError> {
        let i = self.find(ctl, name)?;
        if let Some(v) = self.served(ctl, i) {
            return Ok(v);
        }
        let v = VolumeBdev::new(self.arc(), i, name);
        ctl.served.insert(i, Arc::downgrade(&v));
        Ok(v)
    }
}

/// Removes slot `i` for good: its clusters (except those `handed` to a clone) zeroed
/// and freed, its table entry cleared (the commit), its metadata pages wiped and freed.
pub(crate) fn remove_slot(
    pool: &Pool,
    ctl: &mut Ctl,
    io: &mut CtlIo,
    i: u32,
    handed: &HashSet<(u32, usize)>,
) -> Result<(), PoolError> {
    let mut clusters: Vec<u32> = pool
        .entries(i)
        .iter()
        .enumerate()
        .filter(|(idx, _)| !handed.contains(&(i, *idx)))
        .map(|(_, e)| e.load(Ordering::Acquire) & VALUE_MASK)
        .filter(|&c| c != 0 && c != ZERO)
        .collect();
    pool.zero_clusters(io, &mut clusters)?;
    let mut pages = pool.head_pages(i);
    pages.extend(
        pool.map_page_nums(i)
            .iter()
            .map(|p| p.load(Ordering::Relaxed)),
    );
    let s = pool.slot(i);
    s.state.store(0, Ordering::Release);
    pool.commit_table(io, i)?;
    pool.wipe_pages(io, &pages)?;
    if pool.volatile {
        io.flush("flushing wiped metadata pages")?;
    }
    for &p in &pages {
        alloc::release_md(&pool.arena, p);
    }
    for c in clusters {
        alloc::release(&pool.arena, c);
    }
    let (at, len) = (
        s.extent.load(Ordering::Acquire),
        s.extent_len.load(Ordering::Acquire),
    );
    if at != 0 {
        ctl.extents.give(at, len);
    }
    s.extent.store(0, Ordering::Release);
    s.clusters.store(0, Ordering::Release);
    s.used.store(0, Ordering::Release);
    ctl.served.remove(&i);
    Ok(())
}

impl PoolOps for Pool {
    fn pool_info(&self) -> PoolInfo {
        self.collect_info()
    }

    fn list(&self) -> Vec<VolumeInfo> {
        let ctl = self.ctl.lock().expect("pool lock poisoned");
        let mut v: Vec<VolumeInfo> = ctl
            .by_name
            .values()
            .map(|&i| self.info_of(&ctl, i))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn volume_info(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        let ctl = self.ctl.lock().expect("pool lock poisoned");
        let i = self.find(&ctl, name)?;
        Ok(self.info_of(&ctl, i))
    }

    fn create(&self, name: &str, size: u64, thin: bool) -> Result<VolumeInfo, PoolError> {
        let mut ctl = self.lock()?;
        let i = self.create_locked(&mut ctl, name, size, thin)?;
        Ok(self.info_of(&ctl, i))
    }

    fn delete(&self, name: &str) -> Result<(), PoolError> {
        let mut ctl = self.lock()?;
        self.delete_locked(&mut ctl, name)
    }

    fn grow(&self, name: &str, size: u64) -> Result<VolumeInfo, PoolError> {
        let mut ctl = self.lock()?;
        let i = self.grow_locked(&mut ctl, name, size)?;
        Ok(self.info_of(&ctl, i))
    }

    fn regrown_device(&self, name: &str) -> Result<Option<Arc<VolumeBdev>>, PoolError> {
        let mut ctl = self.lock()?;
        let i = self.find(&ctl, name)?;
        let Some(old) = self.served(&ctl, i) else {
            return Ok(None);
        };
        let size = self.slot(i).size.load(Ordering::Acquire);
        let info = lightpool_bdev::Bdev::info(old.as_ref());
        if info.num_blocks * u64::from(info.block_size) >= size {
            return Ok(None);
        }
        let v = old.resized();
        ctl.served.insert(i, Arc::downgrade(&v));
        Ok(Some(v))
    }

    fn rename(&self, name: &str, new_name: &str) -> Result<VolumeInfo, PoolError> {
        let mut ctl = self.lock()?;
        let i = self.rename_locked(&mut ctl, name, new_name)?;
        Ok(self.info_of(&ctl, i))
    }

    fn snapshot(&self, name: &str, snapshot: &str) -> Result<VolumeInfo, PoolError> {
        let mut ctl = self.lock()?;
        let i = crate::snap::snapshot(self, &mut ctl, name, snapshot)?;
        Ok(self.info_of(&ctl, i))
    }

    fn clone_snapshot(&self, snapshot: &str, name: &str) -> Result<VolumeInfo, PoolError> {
        let mut ctl = self.lock()?;
        let i = crate::snap::clone(self, &mut ctl, snapshot, name)?;
        Ok(self.info_of(&ctl, i))
    }

    fn inflate(&self, name: &str) -> Result<VolumeInfo, PoolError> {
        let mut ctl = self.lock()?;
        let i = crate::snap::inflate(self, &mut ctl, name)?;
        Ok(self.info_of(&ctl, i))
    }

    fn open_volume(&self, name: &str) -> Result<Arc<VolumeBdev>, PoolError> {
        let mut ctl = self.ctl.lock().expect("pool lock poisoned");
        self.open_locked(&mut ctl, name)
    }

    fn check(&self) -> Result<CheckReport, PoolError> {
        let ctl = self.ctl.lock().expect("pool lock poisoned");
        crate::check::check(self, &ctl)
    }
}
