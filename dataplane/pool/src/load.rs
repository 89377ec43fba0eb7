//! Opening a pool: making one on a blank device, or reading and checking the metadata
//! of an existing one and, after an unclean shutdown, replaying it.
//!
//! Nothing is written until everything has been read and checked: a pool whose devices
//! are missing or whose metadata is corrupt is refused with the device and what is
//! wrong, and left exactly as it was. The replay trusts no global allocation state:
//! the clusters in use are those the volumes' maps name, and a cluster two volumes name
//! is corruption (unless a snapshot's deletion was handing it to its clone).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use lightpool_bdev::Bdev;

use crate::alloc;
use crate::arena::Arena;
use crate::ctlio::{Buf, CtlIo};
use crate::format::{
    self, flags, is_blank, Head, Kind, LogRecord, Super, MAP_ENTRIES, PAGE, TABLE_ENTRIES, ZERO,
};
use crate::meta::page_offset;
use crate::pool::{now_secs, random, Extents, OpenReport, Pool};
use crate::{PoolError, PoolOptions};

/// Logical pages read per batch while loading.
const BATCH: usize = 256;
const NONE: u32 = u32::MAX;

impl Pool {
    /// Opens pool `name` on `dev`: loads it (replaying it if it was not closed
    /// cleanly), or, when `create_blank` is set and the device's first 8 KiB are blank,
    /// makes a new pool with `opts` (which are otherwise ignored: a pool keeps the
    /// geometry it was made with).
    pub fn open(
        dev: Arc<dyn Bdev>,
        name: &str,
        opts: &PoolOptions,
        create_blank: bool,
    ) -> Result<(Arc<Pool>, OpenReport), PoolError> {
        check_pool_name(name)?;
        let devname = dev.info().name.clone();
        let mut io = CtlIo::open(&dev)?;
        let mut b = Buf::new(2 * PAGE);
        io.read(0, &mut b, "reading the superblock")?;
        if is_blank(b.as_slice()) {
            if !create_blank {
                return Err(PoolError::NotAPool {
                    device: devname,
                    why: "its first 8 KiB are blank (a new pool is made only when asked to)".into(),
                });
            }
            let pool = format_pool(dev, &mut io, name, opts)?;
            return Ok((pool, OpenReport::Created));
        }
        let (slot, h) = match format::pick(b.as_slice(), None, 0) {
            Ok(Some(x)) => x,
            Ok(None) => {
                return Err(PoolError::NotAPool {
                    device: devname,
                    why: "one copy of its superblock is blank and the other unreadable".into(),
                })
            }
            Err(why) => {
                return Err(PoolError::NotAPool {
                    device: devname,
                    why: format!(
                        "neither copy of a superblock in its first 8 KiB is valid ({why})"
                    ),
                })
            }
        };
        let sb = Super::decode(&b.as_slice()[slot * PAGE..(slot + 1) * PAGE], &h, &devname)?;
        if sb.name != name {
            return Err(PoolError::WrongPool {
                device: devname,
                found: sb.name,
                expected: name.to_string(),
            });
        }
        let info = dev.info();
        if info.block_size != sb.block_size {
            return Err(PoolError::BlockSize {
                device: devname,
                pool: sb.name,
                found: info.block_size,
                expected: sb.block_size,
            });
        }
        if info.num_blocks < sb.device_blocks {
            return Err(PoolError::DeviceSize {
                device: devname,
                pool: sb.name,
                found: info.num_blocks,
                expected: sb.device_blocks,
                block_size: sb.block_size,
            });
        }
        let mut l = Loader::new(&mut io, devname, sb, h.seq)?;
        l.read_table()?;
        l.read_heads()?;
        l.read_maps()?;
        l.read_log()?;
        let plan = l.check()?;
        let Loader {
            sb,
            arena,
            extents,
            log_next,
            replayed,
            ..
        } = l;
        let clean = sb.clean && plan.is_empty();
        let pool = Pool::new_arc(name.to_string(), dev, sb, arena, extents, false);
        pool.arena
            .header()
            .owner_pid
            .store(std::process::id(), Ordering::Release);
        if pool.geo.log_pages > 0 {
            // The records replayed, folded into their map pages before anything new
            // is logged (the ring's places are then all free).
            crate::log::start(&pool, log_next);
            let mut by_slot: HashMap<u32, Vec<usize>> = HashMap::new();
            for &(slot, k) in &replayed {
                by_slot.entry(slot).or_default().push(k);
            }
            for (slot, mut ks) in by_slot {
                ks.sort_unstable();
                pool.commit_maps(&mut io, slot, &ks)?;
            }
        }
        {
            let mut ctl = pool.ctl.lock().expect("fresh lock");
            for i in 0..pool.arena.nslots() as u32 {
                let s = pool.slot(i);
                if s.state.load(Ordering::Relaxed) == 1 {
                    ctl.by_id.insert(s.id.load(Ordering::Relaxed), i);
                    if !plan.uncommitted.contains(&i) && !plan.deleting.contains(&i) {
                        ctl.by_name.insert(s.name(), i);
                    }
                }
            }
        }
        let report = if clean {
            OpenReport::Clean {
                volumes: plan.volumes,
            }
        } else {
            let (finished, zeroed) = recover(&pool, &mut io, &plan)?;
            OpenReport::Recovered {
                volumes: plan.volumes - plan.uncommitted.len() - plan.deleting.len(),
                finished,
                zeroed_clusters: zeroed,
            }
        };
        pool.arena
            .header()
            .owner_pid
            .store(std::process::id(), Ordering::Release);
        // Marked open (not clean) before anything is served.
        pool.commit_super(&mut io, false)?;
        io.flush("flushing the superblock")?;
        pool.owned.store(true, Ordering::Release);
        crate::persist::register(&pool);
        crate::log::spawn_checkpointer(&pool);
        Ok((pool, report))
    }
}

/// Reads the pool's metadata back from its device into a scratch arena, with every
/// check an open makes; for [`crate::PoolOps::check`].
pub(crate) fn read_back(pool: &Pool) -> Result<(Arena, Plan, usize), PoolError> {
    let mut io = CtlIo::open(&pool.dev)?;
    let mut sb = pool.geo.clone();
    sb.clean = false;
    let mut l = Loader::new(&mut io, pool.dev_name.clone(), sb, 0)?;
    l.read_table()?;
    l.read_heads()?;
    l.read_maps()?;
    l.read_log()?;
    let plan = l.check()?;
    let pages = (0..l.arena.md_pages())
        .filter(|&p| {
            l.arena.md_word(p as usize / 64).load(Ordering::Relaxed) & (1 << (p % 64)) != 0
        })
        .count();
    Ok((l.arena, plan, pages))
}

/// Pool names: like volume names.
pub(crate) fn check_pool_name(name: &str) -> Result<(), PoolError> {
    crate::ops::check_name(name)
}

/// Metadata pages a pool of `data` clusters gets by default: the superblock, the table,
/// two pages (a head and a map page) per volume it can hold, up to one volume per eight
/// clusters (at least 64), and four map pages per map page the over-commit limit allows
/// (snapshots keep maps of their own). A pool meant for many small volumes says so with
/// `md_pages`.
fn default_md_pages(data: u64, table_pages: u32, max_volumes: u32, overcommit: u32) -> u64 {
    let promised = data * u64::from(overcommit.max(100)) / 100;
    1 + u64::from(table_pages)
        + 2 * u64::from(max_volumes).min((data / 8).max(64))
        + 4 * promised.div_ceil(MAP_ENTRIES as u64)
        + 16
}

/// Makes a new pool on a blank device.
fn format_pool(
    dev: Arc<dyn Bdev>,
    io: &mut CtlIo,
    name: &str,
    o: &PoolOptions,
) -> Result<Arc<Pool>, PoolError> {
    let info = dev.info().clone();
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(16 << 10..=1 << 30).contains(&cs) {
        return Err(PoolError::Options(format!(
            "cluster_size {cs} must be a power of two from 16 KiB to 1 GiB"
        )));
    }
    if o.max_volumes == 0 {
        return Err(PoolError::Options("max_volumes must be at least 1".into()));
    }
    if !(1..=100_000).contains(&o.overcommit) {
        return Err(PoolError::Options(format!(
            "overcommit {}% must be between 1 and 100000",
            o.overcommit
        )));
    }
    let bytes = info.num_blocks * u64::from(info.block_size);
    let num_clusters = bytes / u64::from(cs);
    if num_clusters > format::MAX_CLUSTERS {
        return Err(PoolError::Options(format!(
            "{num_clusters} clusters of {cs} bytes are more than a pool can address; use larger clusters"
        )));
    }
    let table_pages = o.max_volumes.div_ceil(TABLE_ENTRIES as u32);
    let md_pages = match o.md_pages {
        Some(n) => u64::from(n),
        None => default_md_pages(num_clusters, table_pages, o.max_volumes, o.overcommit),
    };
    if md_pages <= u64::from(table_pages) + 1 || md_pages > u64::from(u32::MAX / 4) {
        return Err(PoolError::Options(format!(
            "md_pages {md_pages} cannot hold the superblock and {table_pages} table pages"
        )));
    }
    // The mapping log: a ring of pages after the table, on top of the pages asked for.
    let log_pages = (num_clusters / 256).clamp(16, 1024) as u32;
    #[cfg(test)]
    let log_pages = crate::log::test_pages::get().unwrap_or(log_pages);
    let md_pages = md_pages + u64::from(log_pages);
    let first_data = (2 * md_pages * PAGE as u64).div_ceil(u64::from(cs));
    if first_data >= num_clusters {
        return Err(PoolError::Options(format!(
            "device {} ({bytes} bytes) is too small: its metadata alone takes {first_data} clusters of {cs} bytes",
            info.name
        )));
    }
    let sb = Super {
        pool: random::<16>(),
        name: name.to_string(),
        block_size: info.block_size,
        cluster_size: cs,
        md_pages: md_pages as u32,
        table_pages,
        first_data_cluster: first_data as u32,
        num_clusters,
        device_blocks: info.num_blocks,
        overcommit: o.overcommit,
        clean: false,
        created: now_secs(),
        log_pages,
    };
    // Metadata pages read as never written, and free clusters as zeroes, from the start.
    io.zeroes(
        2 * PAGE as u64,
        first_data * u64::from(cs) - 2 * PAGE as u64,
        "zeroing the metadata area",
    )?;
    io.zeroes(
        first_data * u64::from(cs),
        (num_clusters - first_data) * u64::from(cs),
        "zeroing the data area",
    )?;
    io.flush("flushing the zeroed device")?;
    let arena = Arena::create(&sb).map_err(|source| PoolError::Arena {
        pool: name.to_string(),
        source,
    })?;
    alloc::init(&arena, sb.first_data_cluster, sb.num_clusters);
    alloc::count_free(&arena);
    for p in 0..=table_pages + log_pages {
        alloc::mark_md(&arena, p);
    }
    let (maps, len) = arena.maps_area();
    let pool = Pool::new_arc(
        name.to_string(),
        dev,
        sb,
        arena,
        Extents::new(maps, len),
        false,
    );
    pool.arena
        .header()
        .owner_pid
        .store(std::process::id(), Ordering::Release);
    if log_pages > 0 {
        crate::log::start(&pool, 1);
    }
    for t in 0..table_pages {
        let p = pool.clone();
        pool.commit(
            io,
            &[(1 + t, Box::new(move |seq, b| p.build_table_page(t, seq, b)))],
        )?;
    }
    io.flush("flushing the volume table")?;
    // The superblock last: until it is there, the device is still blank.
    pool.commit_super(io, false)?;
    io.flush("flushing the superblock")?;
    pool.owned.store(true, Ordering::Release);
    crate::persist::register(&pool);
    crate::log::spawn_checkpointer(&pool);
    tracing::info!(pool = name, device = %info.name, clusters = num_clusters, cluster_size = cs, md_pages, "made a new pool");
    Ok(pool)
}

/// What the replay must do (empty for a consistent pool).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub volumes: usize,
    /// Writable volumes whose snapshot was never committed: dropped.
    pub uncommitted: Vec<u32>,
    /// Volumes being deleted: finished (a transfer first).
    pub deleting: Vec<u32>,
    /// Clusters mapped by a deleting snapshot and by the clone it was handing them to:
    /// the clone's (slot of the snapshot, index).
    pub handed: HashSet<(u32, usize)>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.uncommitted.is_empty() && self.deleting.is_empty()
    }
}

struct Loader<'a> {
    io: &'a mut CtlIo,
    dev: String,
    sb: Super,
    arena: Arena,
    extents: Extents,
    /// Live slots and their heads.
    heads: Vec<(u32, Head)>,
    /// Per head: (index in `heads`, map pages in all, first continuation page).
    chains: Vec<(usize, usize, u32)>,
    /// Per head (same order): its continuation pages.
    ext: Vec<Vec<u32>>,
    /// Head page of each live slot.
    head_pages: HashMap<u32, u32>,
    by_id: HashMap<u64, u32>,
    /// The log position each map page read reflects, by (slot, index in its map).
    map_lsn: HashMap<(u32, usize), u64>,
    /// The log page number the next record goes to (past every one found).
    log_next: u64,
    /// Map pages (slot, index) that the log's replay changed.
    replayed: HashSet<(u32, usize)>,
}

impl<'a> Loader<'a> {
    fn new(
        io: &'a mut CtlIo,
        dev: String,
        sb: Super,
        sb_seq: u64,
    ) -> Result<Loader<'a>, PoolError> {
        let arena = Arena::create(&sb).map_err(|source| PoolError::Arena {
            pool: sb.name.clone(),
            source,
        })?;
        arena.page(0).seq.store(sb_seq, Ordering::Relaxed);
        alloc::mark_md(&arena, 0);
        for q in 0..sb.log_pages {
            alloc::mark_md(&arena, sb.log_page(q));
        }
        let (maps, len) = arena.maps_area();
        Ok(Loader {
            io,
            dev,
            sb,
            arena,
            extents: Extents::new(maps, len),
            heads: Vec::new(),
            chains: Vec::new(),
            ext: Vec::new(),
            head_pages: HashMap::new(),
            by_id: HashMap::new(),
            map_lsn: HashMap::new(),
            log_next: 1,
            replayed: HashSet::new(),
        })
    }

    fn corrupt(&self, what: String) -> PoolError {
        PoolError::Corrupt {
            device: self.dev.clone(),
            what,
        }
    }

    /// Reads logical pages (both slots each) in batches; `f` gets each page's number
    /// and its 8 KiB.
    fn read_pages(
        &mut self,
        pages: &[u32],
        what: &str,
        mut f: impl FnMut(&mut Self, usize, &[u8]) -> Result<(), PoolError>,
    ) -> Result<(), PoolError> {
        let mut buf = Buf::new(BATCH.min(pages.len().max(1)) * 2 * PAGE);
        for (c, chunk) in pages.chunks(BATCH).enumerate() {
            let offs: Vec<u64> = chunk.iter().map(|&p| page_offset(p)).collect();
            self.io.read_many(&offs, 2 * PAGE, &mut buf, what)?;
            for (i, _) in chunk.iter().enumerate() {
                let b = &buf.as_slice()[i * 2 * PAGE..(i + 1) * 2 * PAGE];
                f(self, c * BATCH + i, b)?;
            }
        }
        Ok(())
    }

    /// Claims metadata page `p` for `what`: it must lie in the area and be claimed once.
    fn claim(&self, p: u32, what: &str) -> Result<(), PoolError> {
        let first = self.sb.table_pages + 1 + self.sb.log_pages;
        if p < first || p >= self.sb.md_pages {
            return Err(self.corrupt(format!(
                "{what} is metadata page {p}, outside the pages volumes use (from {} to {})",
                first,
                self.sb.md_pages - 1
            )));
        }
        if !alloc::mark_md(&self.arena, p) {
            return Err(self.corrupt(format!(
                "{what} is metadata page {p}, which another page uses too"
            )));
        }
        Ok(())
    }

    /// The valid newer copy of page `p` of kind `kind`, or an error naming `what`.
    fn valid(
        &self,
        b: &[u8],
        p: u32,
        kind: Kind,
        what: &str,
    ) -> Result<Option<(usize, format::Header)>, PoolError> {
        match format::pick(b, Some(&self.sb.pool), p) {
            Ok(Some((s, h))) if h.kind == kind => {
                self.arena.page(p).seq.store(h.seq, Ordering::Relaxed);
                Ok(Some((s, h)))
            }
            Ok(Some((_, h))) => Err(self.corrupt(format!(
                "{what} (metadata page {p}) holds a {} instead",
                h.kind.label()
            ))),
            Ok(None) => Ok(None),
            Err(why) => Err(self.corrupt(format!(
                "{what} (metadata page {p}): neither copy is valid: {why}"
            ))),
        }
    }

    fn read_table(&mut self) -> Result<(), PoolError> {
        let pages: Vec<u32> = (1..=self.sb.table_pages).collect();
        let mut found: Vec<(u32, u32)> = Vec::new();
        self.read_pages(&pages, "reading the volume table", |l, i, b| {
            let p = 1 + i as u32;
            let what = format!("volume table page {i}");
            let Some((s, _)) = l.valid(b, p, Kind::Table, &what)? else {
                return Err(l.corrupt(format!("{what} (metadata page {p}) was never written")));
            };
            alloc::mark_md(&l.arena, p);
            for (e, head) in format::decode_table(&b[s * PAGE..(s + 1) * PAGE])
                .into_iter()
                .enumerate()
            {
                if head != 0 {
                    found.push(((i * TABLE_ENTRIES + e) as u32, head));
                }
            }
            Ok(())
        })?;
        for &(slot, head) in &found {
            self.claim(head, &format!("the head of volume table entry {slot}"))?;
        }
        let pages: Vec<u32> = found.iter().map(|&(_, h)| h).collect();
        self.read_pages(&pages, "reading volume heads", |l, i, b| {
            let (slot, p) = found[i];
            let what = format!("the head page of volume table entry {slot}");
            let Some((s, h)) = l.valid(b, p, Kind::Head, &what)? else {
                return Err(l.corrupt(format!("{what} (metadata page {p}) was never written")));
            };
            let (head, total, next) = Head::decode(&b[s * PAGE..(s + 1) * PAGE]);
            if head.id != h.owner || head.id == 0 {
                return Err(l.corrupt(format!(
                    "{what} (metadata page {p}) names two different volume ids"
                )));
            }
            l.head_pages.insert(slot, p);
            l.heads.push((slot, head));
            l.chains.push((l.heads.len() - 1, total, next));
            Ok(())
        })
    }

    /// Follows continuation chains and checks every volume's descriptor.
    fn read_heads(&mut self) -> Result<(), PoolError> {
        let chains = std::mem::take(&mut self.chains);
        for (hi, total, mut next) in chains {
            let mut k = 1u32;
            let mut ext = Vec::new();
            while self.heads[hi].1.map_pages.len() < total {
                let name = self.heads[hi].1.name.clone();
                let what = format!("continuation page {k} of volume {name:?}");
                if next == 0 {
                    return Err(self.corrupt(format!("{what} is missing: the chain ends early")));
                }
                self.claim(next, &what)?;
                let mut b = Buf::new(2 * PAGE);
                self.io.read(
                    page_offset(next),
                    &mut b,
                    "reading a volume's continuation page",
                )?;
                let Some((s, h)) = self.valid(b.as_slice(), next, Kind::Ext, &what)? else {
                    return Err(
                        self.corrupt(format!("{what} (metadata page {next}) was never written"))
                    );
                };
                if h.owner != self.heads[hi].1.id || h.aux != k {
                    return Err(self.corrupt(format!(
                        "{what} (metadata page {next}) belongs to another volume"
                    )));
                }
                let want = total - self.heads[hi].1.map_pages.len();
                let (refs, n) = Head::decode_ext(&b.as_slice()[s * PAGE..(s + 1) * PAGE], want);
                self.heads[hi].1.map_pages.extend(refs);
                ext.push(next);
                next = n;
                k += 1;
            }
            self.ext.push(ext);
        }
        // Descriptors.
        let cs = u64::from(self.sb.cluster_size);
        for hi in 0..self.heads.len() {
            let (slot, h) = &self.heads[hi];
            let (slot, h) = (*slot, h.clone());
            let what = format!("volume {:?} (table entry {slot})", h.name);
            if h.size == 0 || !h.size.is_multiple_of(u64::from(self.sb.block_size)) {
                return Err(self.corrupt(format!("{what} has size {} bytes", h.size)));
            }
            let clusters = h.size.div_ceil(cs);
            if clusters > format::MAX_CLUSTERS
                || h.map_pages.len() as u64 != clusters.div_ceil(MAP_ENTRIES as u64)
            {
                return Err(self.corrupt(format!(
                    "{what} has {} map pages for {clusters} clusters",
                    h.map_pages.len()
                )));
            }
            if self.by_id.insert(h.id, slot).is_some() {
                return Err(self.corrupt(format!("{what} has the id of another volume")));
            }
            for (k, &p) in h.map_pages.iter().enumerate() {
                self.claim(p, &format!("map page {k} of {what}"))?;
            }
            let ext = &self.ext[hi];
            let bytes = Pool::extent_bytes(h.map_pages.len(), ext.len(), clusters);
            let (at, len) = self
                .extents
                .take(bytes)
                .ok_or_else(|| PoolError::MapAreaFull {
                    pool: self.sb.name.clone(),
                })?;
            self.arena.zero(at, len);
            let r = self.arena.slot(slot);
            r.flags.store(h.flags, Ordering::Relaxed);
            r.clusters.store(clusters as u32, Ordering::Relaxed);
            r.map_pages
                .store(h.map_pages.len() as u32, Ordering::Relaxed);
            r.ext_pages.store(ext.len() as u32, Ordering::Relaxed);
            r.head.store(self.found_head(slot), Ordering::Relaxed);
            r.id.store(h.id, Ordering::Relaxed);
            r.size.store(h.size, Ordering::Relaxed);
            r.extent.store(at, Ordering::Relaxed);
            r.extent_len.store(len, Ordering::Relaxed);
            r.used.store(0, Ordering::Relaxed);
            r.transfer_to.store(h.transfer_to, Ordering::Relaxed);
            r.created.store(h.created, Ordering::Relaxed);
            r.set_uuid(&h.uuid);
            r.set_name(&h.name);
            let refs = self.arena.u32s(at, h.map_pages.len() + ext.len());
            for (a, v) in refs.iter().zip(h.map_pages.iter().chain(ext.iter())) {
                a.store(*v, Ordering::Relaxed);
            }
            r.state.store(1, Ordering::Release);
        }
        Ok(())
    }

    fn found_head(&self, slot: u32) -> u32 {
        self.head_pages.get(&slot).copied().unwrap_or(0)
    }

    fn read_maps(&mut self) -> Result<(), PoolError> {
        let mut jobs: Vec<(u32, usize, u32)> = Vec::new();
        for (slot, h) in &self.heads {
            for (k, &p) in h.map_pages.iter().enumerate() {
                jobs.push((*slot, k, p));
            }
        }
        let pages: Vec<u32> = jobs.iter().map(|j| j.2).collect();
        let (first, last) = (self.sb.first_data_cluster, self.sb.num_clusters);
        self.read_pages(&pages, "reading map pages", |l, i, b| {
            let (slot, k, p) = jobs[i];
            let r = l.arena.slot(slot);
            let (id, name) = (r.id.load(Ordering::Relaxed), r.name());
            let what = format!("map page {k} of volume {name:?}");
            let Some((s, h)) = l.valid(b, p, Kind::Map, &what)? else {
                // Never written (or its first write torn): nothing allocated there.
                return Ok(());
            };
            if h.owner != id || h.aux != k as u32 {
                return Err(l.corrupt(format!(
                    "{what} (metadata page {p}) belongs to another volume or place"
                )));
            }
            l.map_lsn.insert((slot, k), h.lsn);
            let page = &b[s * PAGE..(s + 1) * PAGE];
            let n = r.clusters.load(Ordering::Relaxed) as usize;
            let (mp, ep) = (
                r.map_pages.load(Ordering::Relaxed),
                r.ext_pages.load(Ordering::Relaxed),
            );
            let at = r.extent.load(Ordering::Relaxed) + 4 * u64::from(mp + ep);
            let e = l.arena.u32s(at, n);
            for j in 0..MAP_ENTRIES.min(n - k * MAP_ENTRIES) {
                let v = format::map_entry(page, j);
                if v != 0 && v != ZERO && (v < first || u64::from(v) >= last) {
                    return Err(l.corrupt(format!(
                        "{what} maps cluster {} to cluster {v}, outside the data area",
                        k * MAP_ENTRIES + j
                    )));
                }
                e[k * MAP_ENTRIES + j].store(v, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// Reads the mapping log and applies, in position order, every record at or after
    /// its map page's lsn whose volume exists (a record of a volume deleted since is
    /// left: its id is never reused). A torn log page reads as its previous copy,
    /// whose records are all there; a record is never half there (the page's checksum
    /// covers it).
    fn read_log(&mut self) -> Result<(), PoolError> {
        if self.sb.log_pages == 0 {
            return Ok(());
        }
        let pages: Vec<u32> = (0..self.sb.log_pages)
            .map(|q| self.sb.log_page(q))
            .collect();
        let mut recs: Vec<(u64, LogRecord)> = Vec::new();
        let mut last = 0u64;
        self.read_pages(&pages, "reading the mapping log", |l, q, b| {
            let p = l.sb.log_page(q as u32);
            let what = format!("mapping log page {q}");
            let Some((s, h)) = l.valid(b, p, Kind::Log, &what)? else {
                return Ok(());
            };
            if h.aux != q as u32 || h.owner % u64::from(l.sb.log_pages) != q as u64 {
                return Err(l.corrupt(format!(
                    "{what} (metadata page {p}) says it is log page {} at place {}",
                    h.owner, h.aux
                )));
            }
            last = last.max(h.owner);
            for (j, r) in format::decode_log(&b[s * PAGE..(s + 1) * PAGE]) {
                recs.push((crate::log::lsn(h.owner, j as u64), r));
            }
            Ok(())
        })?;
        self.log_next = last + 1;
        recs.sort_unstable_by_key(|r| r.0);
        let (first, end) = (self.sb.first_data_cluster, self.sb.num_clusters);
        for (lsn, r) in recs {
            let Some(&slot) = self.by_id.get(&r.id) else {
                continue;
            };
            let k = r.idx as usize / MAP_ENTRIES;
            if lsn < self.map_lsn.get(&(slot, k)).copied().unwrap_or(0) {
                continue;
            }
            let s = self.arena.slot(slot);
            let n = s.clusters.load(Ordering::Relaxed) as usize;
            let v = r.value;
            if r.idx as usize >= n || (v != 0 && v != ZERO && (v < first || u64::from(v) >= end)) {
                return Err(self.corrupt(format!(
                    "the mapping log maps cluster {} of volume {:?} ({n} clusters) to cluster {v}",
                    r.idx,
                    s.name()
                )));
            }
            let (mp, ep) = (
                s.map_pages.load(Ordering::Relaxed),
                s.ext_pages.load(Ordering::Relaxed),
            );
            let at = s.extent.load(Ordering::Relaxed) + 4 * u64::from(mp + ep);
            self.arena.u32s(at, n)[r.idx as usize].store(v, Ordering::Relaxed);
            self.replayed.insert((slot, k));
        }
        Ok(())
    }

    /// Links parents, checks ownership and names; what the replay must do.
    fn check(&mut self) -> Result<Plan, PoolError> {
        let mut plan = Plan {
            volumes: self.heads.len(),
            ..Plan::default()
        };
        for (slot, h) in &self.heads {
            if h.parent != 0 {
                let Some(&p) = self.by_id.get(&h.parent) else {
                    return Err(self.corrupt(format!(
                        "volume {:?} is a clone of volume id {:#x}, which the pool does not hold",
                        h.name, h.parent
                    )));
                };
                self.arena
                    .slot(*slot)
                    .parent
                    .store(p + 1, Ordering::Relaxed);
            }
        }
        let flag = |s: u32| self.arena.slot(s).flags.load(Ordering::Relaxed);
        for (slot, h) in &self.heads {
            if h.flags & flags::DELETING != 0 {
                plan.deleting.push(*slot);
            }
            if h.flags & flags::SNAPSHOT == 0 {
                if let Some(&p) = self.by_id.get(&h.parent) {
                    if flag(p) & flags::SNAPSHOT == 0 {
                        // The new volume of a snapshot whose commit never happened.
                        plan.uncommitted.push(*slot);
                    }
                }
            }
        }
        // An operation holds the pool's operation lock: no volume is both being deleted
        // and the new half of a snapshot that was never committed.
        if let Some(slot) = plan.deleting.iter().find(|s| plan.uncommitted.contains(s)) {
            let name = self
                .heads
                .iter()
                .find(|(s, _)| s == slot)
                .map_or("?", |(_, h)| h.name.as_str());
            return Err(self.corrupt(format!(
                "volume {name:?} is both being deleted and the new volume of a snapshot never committed"
            )));
        }
        // The replay removes the deleting and the uncommitted: none may leave a clone
        // behind but the one a deleting snapshot hands its clusters to (a snapshot with
        // more clones is never deleted), or that clone would name a parent that is gone.
        let removed = |s: u32| plan.deleting.contains(&s) || plan.uncommitted.contains(&s);
        for (slot, h) in &self.heads {
            let Some(&p) = self.by_id.get(&h.parent).filter(|_| h.parent != 0) else {
                continue;
            };
            if removed(*slot) || !removed(p) {
                continue;
            }
            let hands_to = self
                .heads
                .iter()
                .find(|(s, _)| *s == p)
                .map_or(0, |(_, x)| x.transfer_to);
            if !plan.deleting.contains(&p) || hands_to != h.id {
                return Err(self.corrupt(format!(
                    "volume {:?} is a clone of a volume an unfinished operation removes",
                    h.name
                )));
            }
        }
        // Names, once the uncommitted are set aside.
        let mut names: HashMap<String, u32> = HashMap::new();
        for (slot, h) in &self.heads {
            if plan.uncommitted.contains(slot) || h.flags & flags::DELETING != 0 {
                continue;
            }
            if let Some(o) = names.insert(h.name.clone(), *slot) {
                return Err(self.corrupt(format!(
                    "volume table entries {o} and {slot} are both named {:?}",
                    h.name
                )));
            }
        }
        // Ownership.
        alloc::init(
            &self.arena,
            self.sb.first_data_cluster,
            self.sb.num_clusters,
        );
        let mut owner = vec![NONE; self.sb.num_clusters as usize];
        let ids: Vec<(u32, u64, u64)> = self
            .heads
            .iter()
            .map(|(s, h)| (*s, h.id, h.transfer_to))
            .collect();
        let id_of = |s: u32| ids.iter().find(|x| x.0 == s).map_or(0, |x| x.1);
        let handing_to = |s: u32| ids.iter().find(|x| x.0 == s).map_or(0, |x| x.2);
        for &(slot, _, _) in &ids {
            let r = self.arena.slot(slot);
            let n = r.clusters.load(Ordering::Relaxed) as usize;
            let (mp, ep) = (
                r.map_pages.load(Ordering::Relaxed),
                r.ext_pages.load(Ordering::Relaxed),
            );
            let at = r.extent.load(Ordering::Relaxed) + 4 * u64::from(mp + ep);
            let mut used = 0u64;
            for (idx, e) in self.arena.u32s(at, n).iter().enumerate() {
                let c = e.load(Ordering::Relaxed);
                if c == 0 || c == ZERO {
                    continue;
                }
                let o = owner[c as usize];
                if o == NONE {
                    owner[c as usize] = slot;
                    used += 1;
                    alloc::mark(&self.arena, c);
                } else if flag(o) & flags::DELETING != 0 && handing_to(o) == id_of(slot) {
                    // A snapshot was handing its clusters to this clone: the clone's.
                    owner[c as usize] = slot;
                    used += 1;
                    self.arena.slot(o).used.fetch_sub(1, Ordering::Relaxed);
                    plan.handed.insert((o, self.index_of(o, c)));
                } else if flag(slot) & flags::DELETING != 0 && handing_to(slot) == id_of(o) {
                    plan.handed.insert((slot, idx));
                } else {
                    let name = |s: u32| self.arena.slot(s).name();
                    return Err(self.corrupt(format!(
                        "cluster {c} is mapped by both volume {:?} and volume {:?}",
                        name(o),
                        name(slot)
                    )));
                }
            }
            r.used.fetch_add(used, Ordering::Relaxed);
        }
        alloc::count_free(&self.arena);
        Ok(plan)
    }

    /// The index at which slot `s` maps cluster `c`.
    fn index_of(&self, s: u32, c: u32) -> usize {
        let r = self.arena.slot(s);
        let n = r.clusters.load(Ordering::Relaxed) as usize;
        let (mp, ep) = (
            r.map_pages.load(Ordering::Relaxed),
            r.ext_pages.load(Ordering::Relaxed),
        );
        let at = r.extent.load(Ordering::Relaxed) + 4 * u64::from(mp + ep);
        self.arena
            .u32s(at, n)
            .iter()
            .position(|e| e.load(Ordering::Relaxed) == c)
            .unwrap_or(usize::MAX)
    }
}

/// The replay: undoes snapshots never committed, finishes deletions (handing a deleting
/// snapshot's clusters to its clone first), zeroes every free cluster and metadata page
/// (a write never acknowledged may have left data there), and flushes. Each step is
/// idempotent, so a crash during the replay is replayed again.
fn recover(pool: &Arc<Pool>, io: &mut CtlIo, plan: &Plan) -> Result<(Vec<String>, u64), PoolError> {
    let mut finished = Vec::new();
    let mut guard = pool.ctl.lock().expect("pool lock poisoned");
    let ctl = &mut *guard;
    for &w in &plan.uncommitted {
        let name = pool.slot(w).name();
        crate::ops::remove_slot(pool, ctl, io, w, &HashSet::new())?;
        ctl.by_id.retain(|_, v| *v != w);
        finished.push(format!(
            "undid the snapshot of {name:?} that was never committed"
        ));
    }
    for &s in &plan.deleting {
        let r = pool.slot(s);
        let name = r.name();
        let to = r.transfer_to.load(Ordering::Relaxed);
        let child = ctl.by_id.get(&to).copied();
        let mut handed = plan.handed.clone();
        if let Some(c) = child.filter(|_| to != 0) {
            let moved = crate::snap::hand_clusters(pool, io, s, c)?;
            handed.extend(moved.into_iter().map(|idx| (s, idx)));
            if pool.parent(c) == Some(s) {
                // Nothing is served during the replay: no pause needed.
                let newp = pool.slot(s).parent.load(Ordering::Acquire);
                pool.slot(c).parent.store(newp, Ordering::Release);
                pool.commit_head(io, c)?;
            }
            finished.push(format!(
                "finished deleting snapshot {name:?} (its clusters passed to {:?})",
                pool.slot(c).name()
            ));
        } else {
            finished.push(format!("finished deleting {name:?}"));
        }
        crate::ops::remove_slot(pool, ctl, io, s, &handed)?;
        ctl.by_id.retain(|_, v| *v != s);
    }
    drop(guard);
    // Everything free reads as zeroes and as never written again.
    let mut zeroed = 0u64;
    let ranges: Vec<(u64, u64)> = alloc::free_runs(&pool.arena)
        .into_iter()
        .filter(|&(c, _)| c >= pool.geo.first_data_cluster && u64::from(c) < pool.geo.num_clusters)
        .map(|(c, n)| {
            let n = u64::from(n).min(pool.geo.num_clusters - u64::from(c));
            zeroed += n;
            (u64::from(c) << pool.cs_shift, n << pool.cs_shift)
        })
        .collect();
    io.zero_ranges(&ranges, "zeroing free clusters")?;
    let free_md = alloc::free_md(&pool.arena);
    pool.wipe_pages(io, &free_md)?;
    io.flush("flushing the replay")?;
    Ok((finished, zeroed))
}
