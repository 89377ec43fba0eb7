//! The pool: its geometry, its shared state (the arena), the control-path state behind
//! the operation lock, and what every part shares: reading a volume's map, building
//! metadata pages from the in-memory state, and writing them from the control path.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lightpool_bdev::{Bdev, BdevError, BdevInfo, Export, IoChannel};

use crate::arena::{Arena, SlotRec, GRANULE};
use crate::ctlio::{Buf, CtlIo};
use crate::format::{self, flags, Head, Super, MAP_ENTRIES, PAGE, TABLE_ENTRIES};
use crate::meta;
use crate::volume::VolumeBdev;
use crate::{PoolError, PoolInfo};

/// How a pool came to be open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenReport {
    /// A blank device: a new pool was made on it.
    Created,
    /// Closed cleanly last time: loaded as it was.
    Clean { volumes: usize },
    /// Not closed cleanly: replayed from its metadata alone.
    Recovered {
        volumes: usize,
        /// Interrupted operations finished (deletions, snapshot deletions) or undone
        /// (snapshots not committed).
        finished: Vec<String>,
        /// Free clusters zeroed (they may have held data of writes never acknowledged).
        zeroed_clusters: u64,
    },
}

/// Control-path state (under the operation lock).
pub(crate) struct Ctl {
    pub by_name: HashMap<String, u32>,
    pub by_id: HashMap<u64, u32>,
    pub extents: Extents,
    /// Served volumes by the slot they serve now.
    pub served: HashMap<u32, Weak<VolumeBdev>>,
}

/// A volume store on one block device. Shared (`Arc`) by its volumes and their channels;
/// closed cleanly when the last of them goes.
pub struct Pool {
    pub(crate) me: Weak<Pool>,
    pub(crate) name: String,
    pub(crate) dev: Arc<dyn Bdev>,
    pub(crate) dev_name: String,
    pub(crate) geo: Super,
    pub(crate) arena: Arena,
    /// Bytes per cluster, and its log2.
    pub(crate) cs: u64,
    pub(crate) cs_shift: u32,
    /// Bytes per block, and its log2.
    pub(crate) bs: u64,
    pub(crate) bs_shift: u32,
    /// The pool device has a volatile write cache: metadata writes are flushed.
    pub(crate) volatile: bool,
    pub(crate) ctl: Mutex<Ctl>,
    /// This process may write the pool's metadata and close it (false in a successor
    /// until its predecessor has let go).
    pub(crate) owned: AtomicBool,
    /// While a hot upgrade hands the pool over, operations are refused (ms since the
    /// epoch until which; 0 when not).
    pub(crate) frozen_until: AtomicU64,
    /// A metadata write failed: allocations are refused until the pool is reopened.
    pub(crate) md_failed: AtomicBool,
    pub(crate) info: BdevInfo,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("device", &self.dev_name)
            .finish()
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Random bytes from the kernel.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        // SAFETY: getrandom writes at most N - got bytes into our buffer.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), N - got, 0) };
        if n > 0 {
            got += n as usize;
        }
    }
    b
}

/// A new volume id: random, never 0.
pub(crate) fn new_id() -> u64 {
    loop {
        let v = u64::from_le_bytes(random::<8>());
        if v != 0 {
            return v;
        }
    }
}

/// First-fit allocator of the arena's map area (control path only).
#[derive(Debug, Default)]
pub(crate) struct Extents {
    free: BTreeMap<u64, u64>,
}

impl Extents {
    pub fn new(start: u64, len: u64) -> Extents {
        let mut free = BTreeMap::new();
        free.insert(start, len);
        Extents { free }
    }

    /// An extent of at least `len` bytes (rounded to the granule).
    pub fn take(&mut self, len: u64) -> Option<(u64, u64)> {
        let len = len.max(1).div_ceil(GRANULE) * GRANULE;
        let (&at, &have) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&at);
        if have > len {
            self.free.insert(at + len, have - len);
        }
        Some((at, len))
    }

    /// Takes a specific extent (rebuilding the allocator from live volumes).
    pub fn take_at(&mut self, at: u64, len: u64) -> bool {
        let Some((&start, &have)) = self.free.range(..=at).next_back() else {
            return false;
        };
        if at + len > start + have {
            return false;
        }
        self.free.remove(&start);
        if at > start {
            self.free.insert(start, at - start);
        }
        if start + have > at + len {
            self.free.insert(at + len, start + have - at - len);
        }
        true
    }

    pub fn give(&mut self, at: u64, len: u64) {
        let mut start = at;
        let mut end = at + len;
        if let Some((&s, &l)) = self.free.range(..at).next_back() {
            if s + l == at {
                self.free.remove(&s);
                start = s;
            }
        }
        if let Some(&l) = self.free.get(&end) {
            self.free.remove(&end);
            end += l;
        }
        self.free.insert(start, end - start);
    }
}

/// A control-path write of one metadata page: the page and how to build it for a
/// sequence number.
pub(crate) type PageWrite<'a> = (u32, Box<dyn Fn(u64, &mut [u8]) + 'a>);

impl Pool {
    pub(crate) fn new_arc(
        name: String,
        dev: Arc<dyn Bdev>,
        geo: Super,
        arena: Arena,
        extents: Extents,
        owned: bool,
    ) -> Arc<Pool> {
        let d = dev.info().clone();
        Arc::new_cyclic(|me| Pool {
            me: me.clone(),
            info: BdevInfo {
                name: format!("pool:{name}"),
                block_size: d.block_size,
                num_blocks: d.num_blocks,
                read_only: true,
                volatile_write_cache: d.volatile_write_cache,
                supports_deallocate: false,
            },
            dev_name: d.name.clone(),
            cs: u64::from(geo.cluster_size),
            cs_shift: geo.cluster_size.trailing_zeros(),
            bs: u64::from(d.block_size),
            bs_shift: d.block_size.trailing_zeros(),
            volatile: d.volatile_write_cache,
            name,
            dev,
            geo,
            arena,
            ctl: Mutex::new(Ctl {
                by_name: HashMap::new(),
                by_id: HashMap::new(),
                extents,
                served: HashMap::new(),
            }),
            owned: AtomicBool::new(owned),
            frozen_until: AtomicU64::new(0),
            md_failed: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool device's name.
    pub fn device_name(&self) -> &str {
        &self.dev_name
    }

    /// A hot upgrade is handing the pool over: operations are refused (with
    /// [`PoolError::HandedOver`]) until [`Pool::thaw`], or for `at_most` (an upgrade
    /// abandoned without a word). Waits for an operation in progress to end.
    pub fn freeze(&self, at_most: Duration) {
        let _g = self.ctl.lock().expect("pool lock poisoned");
        self.frozen_until
            .store(now_ms() + at_most.as_millis() as u64, Ordering::Release);
    }

    /// Operations are allowed again (the handover did not happen).
    pub fn thaw(&self) {
        self.frozen_until.store(0, Ordering::Release);
    }

    /// The device of volume `name` if something serves it now.
    pub fn served_volume(&self, name: &str) -> Option<Arc<VolumeBdev>> {
        let ctl = self.ctl.lock().expect("pool lock poisoned");
        let i = *ctl.by_name.get(name)?;
        ctl.served.get(&i).and_then(|w| w.upgrade())
    }

    pub(crate) fn arc(&self) -> Arc<Pool> {
        self.me.upgrade().expect("a pool in use is alive")
    }

    /// The operation lock, refusing while the pool is handed over.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Ctl>, PoolError> {
        let g = self.ctl.lock().expect("pool lock poisoned");
        let mine = self.arena.header().owner_pid.load(Ordering::Acquire) == std::process::id();
        let frozen = self.frozen_until.load(Ordering::Acquire) > now_ms();
        if !mine || frozen || !self.owned.load(Ordering::Acquire) {
            return Err(PoolError::HandedOver {
                pool: self.name.clone(),
            });
        }
        Ok(g)
    }

    pub(crate) fn slot(&self, i: u32) -> &SlotRec {
        self.arena.slot(i)
    }

    /// Map-page count, continuation-page count and cluster count of slot `i`.
    #[inline]
    fn dims(&self, i: u32) -> (usize, usize, usize, u64) {
        let s = self.slot(i);
        (
            s.map_pages.load(Ordering::Acquire) as usize,
            s.ext_pages.load(Ordering::Acquire) as usize,
            s.clusters.load(Ordering::Acquire) as usize,
            s.extent.load(Ordering::Acquire),
        )
    }

    /// The map of slot `i`: one entry per cluster of the volume.
    #[inline]
    pub(crate) fn entries(&self, i: u32) -> &[AtomicU32] {
        let (mp, ep, n, at) = self.dims(i);
        if at == 0 {
            return &[];
        }
        self.arena.u32s(at + 4 * (mp + ep) as u64, n)
    }

    /// The metadata page of each map page of slot `i`.
    pub(crate) fn map_page_nums(&self, i: u32) -> &[AtomicU32] {
        let (mp, _, _, at) = self.dims(i);
        if at == 0 {
            return &[];
        }
        self.arena.u32s(at, mp)
    }

    /// The continuation pages of slot `i`'s head.
    pub(crate) fn ext_page_nums(&self, i: u32) -> &[AtomicU32] {
        let (mp, ep, _, at) = self.dims(i);
        if at == 0 {
            return &[];
        }
        self.arena.u32s(at + 4 * mp as u64, ep)
    }

    /// Parent slot of slot `i`.
    #[inline]
    pub(crate) fn parent(&self, i: u32) -> Option<u32> {
        self.slot(i).parent.load(Ordering::Acquire).checked_sub(1)
    }

    /// What a read of cluster `idx` of slot `i` finds: a cluster number, or 0 (zeroes).
    #[inline]
    pub(crate) fn resolve(&self, i: u32, idx: usize) -> u32 {
        let mut s = i;
        loop {
            let e = self.entries(s);
            let v = e
                .get(idx)
                .map_or(0, |e| e.load(Ordering::Acquire) & format::VALUE_MASK);
            match v {
                format::ZERO => return 0,
                0 => match self.parent(s) {
                    Some(p) => s = p,
                    None => return 0,
                },
                c => return c,
            }
        }
    }

    /// Bytes needed for an extent with these dimensions.
    pub(crate) fn extent_bytes(map_pages: usize, ext_pages: usize, clusters: u64) -> u64 {
        4 * (map_pages as u64 + ext_pages as u64 + clusters)
    }

    /// The descriptor of slot `i` as its head page records it.
    pub(crate) fn head_of(&self, i: u32) -> Head {
        let s = self.slot(i);
        Head {
            id: s.id.load(Ordering::Acquire),
            parent: self
                .parent(i)
                .map_or(0, |p| self.slot(p).id.load(Ordering::Acquire)),
            size: s.size.load(Ordering::Acquire),
            flags: s.flags.load(Ordering::Acquire),
            transfer_to: s.transfer_to.load(Ordering::Acquire),
            created: s.created.load(Ordering::Acquire),
            uuid: s.uuid(),
            name: s.name(),
            map_pages: self
                .map_page_nums(i)
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// The metadata pages of slot `i`'s head chain: head first.
    pub(crate) fn head_pages(&self, i: u32) -> Vec<u32> {
        let mut v = vec![self.slot(i).head.load(Ordering::Acquire)];
        v.extend(
            self.ext_page_nums(i)
                .iter()
                .map(|p| p.load(Ordering::Relaxed)),
        );
        v
    }

    /// Builds map page `k` of slot `i` with sequence `seq` into `p`.
    pub(crate) fn build_map_page(&self, i: u32, k: usize, seq: u64, p: &mut [u8]) {
        let page = self.map_page_nums(i)[k].load(Ordering::Relaxed);
        // The log position before the entries are read: every record before it stored
        // its entry first, so the page reflects it.
        let lsn = crate::log::tail_lsn(self);
        let e = self.entries(i);
        let end = ((k + 1) * MAP_ENTRIES).min(e.len());
        let vals = e[k * MAP_ENTRIES..end]
            .iter()
            .map(|x| x.load(Ordering::Acquire));
        format::encode_map(
            &self.geo.pool,
            page,
            self.slot(i).id.load(Ordering::Acquire),
            k as u32,
            seq,
            lsn,
            vals,
            p,
        );
    }

    /// Builds table page `t` (logical page `1 + t`) from the live slots.
    pub(crate) fn build_table_page(&self, t: u32, seq: u64, p: &mut [u8]) {
        let heads: Vec<u32> = (0..TABLE_ENTRIES as u32)
            .map(|e| {
                let s = t * TABLE_ENTRIES as u32 + e;
                let r = self.slot(s);
                if r.state.load(Ordering::Acquire) == 1 {
                    r.head.load(Ordering::Acquire)
                } else {
                    0
                }
            })
            .collect();
        format::encode_table(&self.geo.pool, 1 + t, t, seq, &heads, p);
    }

    /// Writes `pages` (in parallel, one flush), each with its next sequence number,
    /// following the page write protocol: tokens taken, contents built from the current
    /// state, published when durable.
    pub(crate) fn commit(&self, io: &mut CtlIo, pages: &[PageWrite<'_>]) -> Result<(), PoolError> {
        self.commit_with(io, pages, true)
    }

    /// [`Pool::commit`], flushing (with a volatile cache) only when `flush` says so: a
    /// caller that writes a commit inside a pause flushes after it (see the snapshot).
    pub(crate) fn commit_with(
        &self,
        io: &mut CtlIo,
        pages: &[PageWrite<'_>],
        flush: bool,
    ) -> Result<(), PoolError> {
        let mut turns = Vec::with_capacity(pages.len());
        let mut bufs = Vec::with_capacity(pages.len());
        for (page, build) in pages {
            let rec = self.arena.page(*page);
            let turn = loop {
                match meta::try_take(rec) {
                    Some(t) => break t,
                    // An I/O-path write of this page is in flight; it ends by itself.
                    None => std::thread::yield_now(),
                }
            };
            let mut b = Buf::new(PAGE);
            build(turn.seq, b.as_mut_slice());
            turns.push(turn);
            bufs.push(b);
        }
        let pieces: Vec<(u64, &Buf)> = pages
            .iter()
            .zip(&turns)
            .zip(&bufs)
            .map(|(((page, _), t), b)| (meta::slot_offset(*page, t.seq), b))
            .collect();
        let res = io.write_many(&pieces, "writing metadata").and_then(|()| {
            if self.volatile && flush {
                io.flush("flushing metadata")
            } else {
                Ok(())
            }
        });
        for ((page, _), t) in pages.iter().zip(&turns) {
            let rec = self.arena.page(*page);
            match res {
                Ok(()) => meta::publish(rec, *t),
                Err(_) => meta::give_up(rec),
            }
        }
        res
    }

    /// Writes slot `i`'s head chain: continuation pages first, then the head (the
    /// chain is written before its head; the head's write is the commit).
    pub(crate) fn commit_head(&self, io: &mut CtlIo, i: u32) -> Result<(), PoolError> {
        self.commit_head_with(io, i, true)
    }

    /// [`Pool::commit_head`]; the head's write flushed only when `flush` says so (the
    /// continuation pages always are: they must be durable before the head).
    pub(crate) fn commit_head_with(
        &self,
        io: &mut CtlIo,
        i: u32,
        flush: bool,
    ) -> Result<(), PoolError> {
        let pages = self.head_pages(i);
        let head = self.head_of(i);
        let build = |k: usize| {
            let pages = pages.clone();
            let head = head.clone();
            let pool = self.geo.pool;
            Box::new(move |seq: u64, p: &mut [u8]| {
                let seqs = vec![seq; pages.len()];
                let enc = head.encode(&pool, &pages, &seqs);
                p.copy_from_slice(&enc[k]);
            }) as Box<dyn Fn(u64, &mut [u8])>
        };
        if pages.len() > 1 {
            let ext: Vec<PageWrite<'_>> = (1..pages.len()).map(|k| (pages[k], build(k))).collect();
            self.commit(io, &ext)?;
        }
        self.commit_with(io, &[(pages[0], build(0))], flush)
    }

    /// Writes the table page holding slot `i`.
    pub(crate) fn commit_table(&self, io: &mut CtlIo, i: u32) -> Result<(), PoolError> {
        let t = i / TABLE_ENTRIES as u32;
        self.commit(
            io,
            &[(
                1 + t,
                Box::new(move |seq, p| self.build_table_page(t, seq, p)),
            )],
        )
    }

    /// Writes map pages `ks` of slot `i`.
    pub(crate) fn commit_maps(
        &self,
        io: &mut CtlIo,
        i: u32,
        ks: &[usize],
    ) -> Result<(), PoolError> {
        let nums = self.map_page_nums(i);
        let w: Vec<PageWrite<'_>> = ks
            .iter()
            .map(|&k| {
                (
                    nums[k].load(Ordering::Relaxed),
                    Box::new(move |seq, p: &mut [u8]| self.build_map_page(i, k, seq, p))
                        as Box<dyn Fn(u64, &mut [u8])>,
                )
            })
            .collect();
        for chunk in w.chunks(256) {
            self.commit(io, chunk)?;
        }
        Ok(())
    }

    /// Writes the superblock with the clean flag given.
    pub(crate) fn commit_super(&self, io: &mut CtlIo, clean: bool) -> Result<(), PoolError> {
        let mut s = self.geo.clone();
        s.clean = clean;
        self.commit(io, &[(0, Box::new(move |seq, p| s.encode(seq, p)))])
    }

    /// Zeroes both slots of metadata pages (freed ones: a page nobody references must
    /// read as never written, so that a later owner starts from nothing).
    pub(crate) fn wipe_pages(&self, io: &mut CtlIo, pages: &[u32]) -> Result<(), PoolError> {
        let ranges: Vec<(u64, u64)> = pages
            .iter()
            .map(|&p| (meta::page_offset(p), 2 * PAGE as u64))
            .collect();
        io.zero_ranges(&ranges, "wiping freed metadata pages")?;
        for &p in pages {
            let r = self.arena.page(p);
            r.seq.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Zeroes clusters (merged into runs) and, with a volatile cache, flushes.
    pub(crate) fn zero_clusters(
        &self,
        io: &mut CtlIo,
        clusters: &mut [u32],
    ) -> Result<(), PoolError> {
        clusters.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &c in clusters.iter() {
            let off = u64::from(c) << self.cs_shift;
            match ranges.last_mut() {
                Some((s, l)) if *s + *l == off => *l += self.cs,
                _ => ranges.push((off, self.cs)),
            }
        }
        io.zero_ranges(&ranges, "zeroing freed clusters")?;
        if self.volatile {
            io.flush("flushing zeroed clusters")?;
        }
        Ok(())
    }

    /// Data clusters (the metadata area excluded).
    pub(crate) fn data_clusters(&self) -> u64 {
        self.geo.num_clusters - u64::from(self.geo.first_data_cluster)
    }

    /// Bytes writable volumes may promise.
    pub(crate) fn promise_limit(&self) -> u64 {
        (self.data_clusters() << self.cs_shift) / 100 * u64::from(self.geo.overcommit)
    }

    /// Bytes writable volumes promise now.
    pub(crate) fn promised(&self, ctl: &Ctl) -> u64 {
        ctl.by_name
            .values()
            .map(|&i| self.slot(i))
            .filter(|s| s.flags.load(Ordering::Relaxed) & flags::SNAPSHOT == 0)
            .map(|s| s.size.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn collect_info(&self) -> PoolInfo {
        let ctl = self.ctl.lock().expect("pool lock poisoned");
        PoolInfo {
            name: self.name.clone(),
            device: self.dev_name.clone(),
            uuid: self.geo.pool,
            block_size: self.geo.block_size,
            cluster_size: self.geo.cluster_size,
            data_clusters: self.data_clusters(),
            free_clusters: self.arena.header().free_clusters.load(Ordering::Acquire),
            overcommit: self.geo.overcommit,
            promised: self.promised(&ctl),
            promise_limit: self.promise_limit(),
            volumes: ctl.by_name.len(),
            max_volumes: self.arena.nslots(),
            md_pages: self.geo.md_pages,
            md_pages_free: crate::alloc::free_md(&self.arena).len() as u32,
        }
    }

    /// Closes the pool cleanly: everything durable, then the clean flag.
    fn close(&self) -> Result<(), PoolError> {
        let mut io = CtlIo::open(&self.dev)?;
        // The mapping log folded into the map pages: the next open replays nothing.
        crate::log::checkpoint(self, &mut io)?;
        io.flush("flushing before close")?;
        self.commit_super(&mut io, true)?;
        io.flush("flushing the clean superblock")
    }
}

impl Drop for Pool {
    /// A pool this process owns is closed cleanly when the last user lets go (the target
    /// stopping). One handed over to a successor, or tainted by an I/O error (a cluster
    /// whose contents are unknown), is left as it is: the next open replays it.
    fn drop(&mut self) {
        let mine = self.arena.header().owner_pid.load(Ordering::Acquire) == std::process::id();
        if !mine || !self.owned.load(Ordering::Acquire) {
            return;
        }
        if self.arena.header().tainted.load(Ordering::Acquire) != 0 {
            tracing::warn!(pool = %self.name, "an I/O error left clusters in an unknown state: not marking the pool clean, so the next open zeroes the free clusters");
            return;
        }
        match self.close() {
            Ok(()) => {
                tracing::info!(pool = %self.name, device = %self.dev_name, "pool closed cleanly")
            }
            Err(e) => tracing::warn!(pool = %self.name, "pool not closed cleanly: {e}"),
        }
    }
}

/// What a successor needs of the pool besides its arena: nothing it cannot read from
/// the arena; the name is checked against it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PoolState {
    pub name: String,
    pub arena_layout: u32,
}

impl Bdev for Pool {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        crate::POOL_KIND
    }

    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        vec![self.dev.clone()]
    }

    /// The arena's memfd: the successor maps the same memory, so what changes while
    /// serving (maps, allocation, sequence numbers) needs no export at the pause. What
    /// the successor derives from it (names, the map area's allocator) changes only
    /// with operations, which the daemon freezes ([`Pool::freeze`]) for the length of
    /// the handover.
    fn export(&self) -> Result<Export, BdevError> {
        let fd = self.arena.fd().try_clone().map_err(BdevError::Setup)?;
        let st = PoolState {
            name: self.name.clone(),
            arena_layout: crate::arena::LAYOUT,
        };
        Ok(Export {
            state: postcard::to_stdvec(&st)
                .map_err(|e| BdevError::Invalid(format!("{}: state: {e}", self.info.name)))?,
            fds: vec![fd],
        })
    }

    /// The predecessor has let go: this process owns the pool from now on (its
    /// operations run from here).
    fn adopted(&self) {
        self.arena
            .header()
            .owner_pid
            .store(std::process::id(), Ordering::Release);
        self.owned.store(true, Ordering::Release);
        crate::log::spawn_checkpointer(&self.arc());
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Err(BdevError::Invalid(format!(
            "{} is a pool: serve its volumes, not the pool itself",
            self.info.name
        )))
    }
}

/// How long operations wait for a volume's I/O to pause.
pub(crate) const GATE_TIMEOUT: Duration = Duration::from_secs(10);
