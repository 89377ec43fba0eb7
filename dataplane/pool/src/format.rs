//! The on-disk format (docs/pool-format.md describes it for people): metadata pages
//! of 4 KiB, each kept in two slots written in turn, with a header that names the pool,
//! the page, its kind, its owner and a sequence number, and a CRC32C over the page.
//!
//! Everything here is pure: bytes in, bytes out. No I/O.

use crate::PoolError;

/// A metadata page, and the unit of every metadata I/O.
pub const PAGE: usize = 4096;
/// Bytes of header at the start of every metadata page.
pub const HEADER: usize = 64;
/// The first bytes of every metadata page.
pub const MAGIC: [u8; 8] = *b"LPPOOLMD";
/// The format this code writes (pools made with a mapping log).
pub const VERSION: u32 = 2;
/// The format of pools made before the mapping log: still read and served as they are
/// (their allocating writes write map pages directly).
pub const VERSION_NO_LOG: u32 = 1;

/// Map entries per map page: the clusters one map page describes.
pub const MAP_ENTRIES: usize = (PAGE - HEADER) / 4;
/// Volume-table entries per table page.
pub const TABLE_ENTRIES: usize = (PAGE - HEADER) / 4;

/// Low 30 bits of a map entry: its value. 0 = not allocated (the parent's data, or
/// zeroes); [`ZERO`] = reads as zeroes whatever the parent holds; anything else a
/// cluster number.
pub const VALUE_MASK: u32 = 0x3FFF_FFFF;
/// The map value of a cluster that reads as zeroes without any storage.
pub const ZERO: u32 = VALUE_MASK;
/// In memory only: an allocation is in progress; the low bits keep the value before
/// it (what reads see, and what a metadata write of the page records).
pub const BUSY: u32 = 1 << 31;
/// In memory only: the low bits are the new value, not yet durable in metadata. Reads
/// use it; writes wait for it to become durable.
pub const PENDING: u32 = 1 << 30;

/// Largest cluster number a map entry can hold.
pub const MAX_CLUSTERS: u64 = (VALUE_MASK - 1) as u64;

/// Longest volume (and pool) name, in bytes.
pub const MAX_NAME: usize = 255;

/// Kinds of metadata page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Super = 1,
    Table = 2,
    Head = 3,
    Ext = 4,
    Map = 5,
    /// A page of the mapping log (version 2).
    Log = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Super,
            2 => Kind::Table,
            3 => Kind::Head,
            4 => Kind::Ext,
            5 => Kind::Map,
            6 => Kind::Log,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Super => "superblock",
            Kind::Table => "volume table page",
            Kind::Head => "volume head page",
            Kind::Ext => "volume continuation page",
            Kind::Map => "map page",
            Kind::Log => "mapping log page",
        }
    }
}

/// The header of a metadata page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub pool: [u8; 16],
    /// Logical page number.
    pub page: u32,
    pub kind: Kind,
    /// Per logical page; the slot with the higher sequence is the newer copy.
    pub seq: u64,
    /// Volume id for head, continuation and map pages; 0 otherwise.
    pub owner: u64,
    /// Map page: its index in the volume's map. Continuation page: its place in the
    /// chain. Table page: its index in the table. Log page: its place in the ring.
    pub aux: u32,
    /// Map page: the log position it reflects (every log record before it is in the
    /// page, or superseded by what the page holds); 0 in version 1. Log page: 0.
    pub lsn: u64,
}

// Header layout.
const H_POOL: usize = 8;
const H_PAGE: usize = 24;
const H_KIND: usize = 28;
const H_SEQ: usize = 32;
const H_OWNER: usize = 40;
const H_AUX: usize = 48;
const H_LSN: usize = 52;
const H_CRC: usize = 60;

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// CRC32C of a page with its CRC field taken as zero.
fn page_crc(p: &[u8]) -> u32 {
    let c = crc32c::crc32c(&p[..H_CRC]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &p[H_CRC + 4..PAGE])
}

/// Writes `h` into the first bytes of `p` and seals the page with its CRC; the payload
/// (from [`HEADER`]) must be in place already.
pub fn seal(p: &mut [u8], h: &Header) {
    p[..HEADER].fill(0);
    p[..8].copy_from_slice(&MAGIC);
    p[H_POOL..H_POOL + 16].copy_from_slice(&h.pool);
    put_u32(p, H_PAGE, h.page);
    p[H_KIND] = h.kind as u8;
    put_u64(p, H_SEQ, h.seq);
    put_u64(p, H_OWNER, h.owner);
    put_u32(p, H_AUX, h.aux);
    put_u64(p, H_LSN, h.lsn);
    let crc = page_crc(p);
    put_u32(p, H_CRC, crc);
}

/// What one slot of a page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// All zeroes: never written (or wiped).
    Blank,
    /// A valid page.
    Valid(Header),
    /// Something else: a torn or corrupt write, or data that is not a pool's.
    Bad(&'static str),
}

/// Whether `p` is all zeroes (never written), compared a page at a time against a
/// zero page: memcmp's work, where a byte loop was a quarter of an open's time under
/// the fuzzer's coverage instrumentation (and is slower without it too).
pub fn is_blank(p: &[u8]) -> bool {
    static ZEROES: [u8; PAGE] = [0; PAGE];
    p.chunks(PAGE).all(|c| c == &ZEROES[..c.len()])
}

/// Checks one slot. `pool` is the pool's id, or `None` to accept any (the superblock,
/// read before the pool's id is known).
pub fn check_slot(p: &[u8], pool: Option<&[u8; 16]>, page: u32) -> Slot {
    if is_blank(p) {
        return Slot::Blank;
    }
    if p[..8] != MAGIC {
        return Slot::Bad("it does not start with the pool metadata magic");
    }
    if get_u32(p, H_CRC) != page_crc(p) {
        return Slot::Bad("its checksum does not match its contents (a torn or corrupt write)");
    }
    let Some(kind) = Kind::from_u8(p[H_KIND]) else {
        return Slot::Bad("it has an unknown page kind");
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&p[H_POOL..H_POOL + 16]);
    if pool.is_some_and(|want| *want != id) {
        return Slot::Bad(
            "it belongs to another pool (left over from an earlier pool on this device)",
        );
    }
    if get_u32(p, H_PAGE) != page {
        return Slot::Bad("it says it is another page");
    }
    if get_u64(p, H_SEQ) > MAX_SEQ {
        return Slot::Bad("its sequence number is beyond any a pool reaches");
    }
    Slot::Valid(Header {
        pool: id,
        page,
        kind,
        seq: get_u64(p, H_SEQ),
        owner: get_u64(p, H_OWNER),
        aux: get_u32(p, H_AUX),
        lsn: get_u64(p, H_LSN),
    })
}

/// The highest sequence number a page copy may carry: each write of a page adds one,
/// so a pool writing one page a million times a second reaches it after some 146,000
/// years. A copy above it is corrupt (and one at `u64::MAX` could not be written
/// after).
pub const MAX_SEQ: u64 = 1 << 62;

/// Of the two slots of a page (`both` is 2 x [`PAGE`] bytes: slot 0 then slot 1), the
/// newer valid one: `Ok(Some((slot, header)))`; `Ok(None)` when both are blank, or one
/// is blank and the other bad (a first write torn: nothing it held was acknowledged);
/// an error naming what is wrong when neither is valid otherwise.
pub fn pick(
    both: &[u8],
    pool: Option<&[u8; 16]>,
    page: u32,
) -> Result<Option<(usize, Header)>, &'static str> {
    let a = check_slot(&both[..PAGE], pool, page);
    let b = check_slot(&both[PAGE..2 * PAGE], pool, page);
    match (a, b) {
        (Slot::Valid(x), Slot::Valid(y)) => Ok(Some(if y.seq > x.seq { (1, y) } else { (0, x) })),
        (Slot::Valid(x), _) => Ok(Some((0, x))),
        (_, Slot::Valid(y)) => Ok(Some((1, y))),
        (Slot::Blank, Slot::Blank) | (Slot::Blank, Slot::Bad(_)) | (Slot::Bad(_), Slot::Blank) => {
            Ok(None)
        }
        (Slot::Bad(why), Slot::Bad(_)) => Err(why),
    }
}

/// The slot a page's copy with sequence `seq` goes to: copies alternate, so the other
/// slot always holds the previous, complete copy.
pub fn slot_of(seq: u64) -> usize {
    (seq % 2) as usize
}

// ---- Superblock ----

/// What the superblock records: the pool's geometry and whether it was closed cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Super {
    pub pool: [u8; 16],
    pub name: String,
    pub block_size: u32,
    pub cluster_size: u32,
    /// Logical metadata pages, the superblock (page 0) included.
    pub md_pages: u32,
    /// Volume-table pages (logical pages 1..=table_pages).
    pub table_pages: u32,
    /// Clusters below this one hold metadata.
    pub first_data_cluster: u32,
    /// Clusters on the device (metadata ones included).
    pub num_clusters: u64,
    /// The device's size in blocks when the pool was made: a smaller device is a wrong
    /// or truncated one.
    pub device_blocks: u64,
    /// Thin volumes may promise at most this percentage of the data clusters.
    pub overcommit: u32,
    pub clean: bool,
    pub created: u64,
    /// Pages of the mapping log (logical pages `table_pages + 1` on); 0 for a pool of
    /// version 1, which has none.
    pub log_pages: u32,
}

const S_VERSION: usize = 64;
const S_BS: usize = 68;
const S_CS: usize = 72;
const S_MD: usize = 76;
const S_TABLE: usize = 80;
const S_FIRST: usize = 84;
const S_CLUSTERS: usize = 88;
const S_DEVBLOCKS: usize = 96;
const S_OVERCOMMIT: usize = 104;
const S_CLEAN: usize = 108;
const S_CREATED: usize = 112;
const S_NAMELEN: usize = 120;
const S_NAME: usize = 122;
const S_LOG: usize = 380;

impl Super {
    /// Logical page of log page `ring` (the log follows the volume table).
    pub fn log_page(&self, ring: u32) -> u32 {
        self.table_pages + 1 + ring
    }

    /// The superblock page with sequence `seq`.
    pub fn encode(&self, seq: u64, p: &mut [u8]) {
        p.fill(0);
        let version = if self.log_pages > 0 {
            VERSION
        } else {
            VERSION_NO_LOG
        };
        put_u32(p, S_VERSION, version);
        put_u32(p, S_LOG, self.log_pages);
        put_u32(p, S_BS, self.block_size);
        put_u32(p, S_CS, self.cluster_size);
        put_u32(p, S_MD, self.md_pages);
        put_u32(p, S_TABLE, self.table_pages);
        put_u32(p, S_FIRST, self.first_data_cluster);
        put_u64(p, S_CLUSTERS, self.num_clusters);
        put_u64(p, S_DEVBLOCKS, self.device_blocks);
        put_u32(p, S_OVERCOMMIT, self.overcommit);
        p[S_CLEAN] = u8::from(self.clean);
        put_u64(p, S_CREATED, self.created);
        let n = self.name.len().min(MAX_NAME);
        put_u16(p, S_NAMELEN, n as u16);
        p[S_NAME..S_NAME + n].copy_from_slice(&self.name.as_bytes()[..n]);
        seal(
            p,
            &Header {
                pool: self.pool,
                page: 0,
                kind: Kind::Super,
                seq,
                owner: 0,
                aux: 0,
                lsn: 0,
            },
        );
    }

    /// Reads a valid superblock page (see [`check_slot`]); checks what a superblock
    /// must satisfy.
    pub fn decode(p: &[u8], h: &Header, device: &str) -> Result<Super, PoolError> {
        let bad = |why: String| PoolError::Corrupt {
            device: device.to_string(),
            what: format!("superblock: {why}"),
        };
        if h.kind != Kind::Super {
            return Err(bad(format!("block 0 holds a {}", h.kind.label())));
        }
        let version = get_u32(p, S_VERSION);
        if version != VERSION && version != VERSION_NO_LOG {
            return Err(PoolError::Version {
                device: device.to_string(),
                found: version,
                supported: VERSION,
            });
        }
        let n = usize::from(get_u16(p, S_NAMELEN)).min(MAX_NAME);
        let s = Super {
            pool: h.pool,
            name: String::from_utf8_lossy(&p[S_NAME..S_NAME + n]).into_owned(),
            block_size: get_u32(p, S_BS),
            cluster_size: get_u32(p, S_CS),
            md_pages: get_u32(p, S_MD),
            table_pages: get_u32(p, S_TABLE),
            first_data_cluster: get_u32(p, S_FIRST),
            num_clusters: get_u64(p, S_CLUSTERS),
            device_blocks: get_u64(p, S_DEVBLOCKS),
            overcommit: get_u32(p, S_OVERCOMMIT),
            clean: p[S_CLEAN] != 0,
            created: get_u64(p, S_CREATED),
            log_pages: if version == VERSION {
                get_u32(p, S_LOG)
            } else {
                0
            },
        };
        if !matches!(s.block_size, 512 | 4096) {
            return Err(bad(format!(
                "block size {} is neither 512 nor 4096",
                s.block_size
            )));
        }
        if !s.cluster_size.is_power_of_two() || (s.cluster_size as usize) < PAGE {
            return Err(bad(format!(
                "cluster size {} is not a power of two of at least 4 KiB",
                s.cluster_size
            )));
        }
        if version == VERSION && s.log_pages == 0 {
            return Err(bad("a version 2 pool without a mapping log".into()));
        }
        if s.table_pages == 0
            || u64::from(s.md_pages) <= u64::from(s.table_pages) + u64::from(s.log_pages)
        {
            return Err(bad(format!(
                "{} metadata pages cannot hold {} table pages and {} log pages",
                s.md_pages, s.table_pages, s.log_pages
            )));
        }
        let md_bytes = 2 * u64::from(s.md_pages) * PAGE as u64;
        if u64::from(s.first_data_cluster) * u64::from(s.cluster_size) < md_bytes
            || u64::from(s.first_data_cluster) > s.num_clusters
            || s.num_clusters > MAX_CLUSTERS
        {
            return Err(bad(format!(
                "the data area (from cluster {} of {}) overlaps the metadata area",
                s.first_data_cluster, s.num_clusters
            )));
        }
        // The clusters lie on the device the pool was made on (the open then checks the
        // device is at least that large): what is sized by the cluster count (the
        // ownership table, the allocator) is bounded by the device, not by the claim.
        let device_bytes = u128::from(s.device_blocks) * u128::from(s.block_size);
        if u128::from(s.num_clusters) * u128::from(s.cluster_size) > device_bytes {
            return Err(bad(format!(
                "{} clusters of {} bytes do not fit its device of {} blocks of {} bytes",
                s.num_clusters, s.cluster_size, s.device_blocks, s.block_size
            )));
        }
        Ok(s)
    }
}

// ---- Volume table ----

/// A table page: the head page of the volume in each slot (0 = free).
pub fn encode_table(pool: &[u8; 16], page: u32, index: u32, seq: u64, heads: &[u32], p: &mut [u8]) {
    p.fill(0);
    for (i, h) in heads.iter().take(TABLE_ENTRIES).enumerate() {
        put_u32(p, HEADER + 4 * i, *h);
    }
    seal(
        p,
        &Header {
            pool: *pool,
            page,
            kind: Kind::Table,
            seq,
            owner: 0,
            aux: index,
            lsn: 0,
        },
    );
}

/// The entries of a valid table page.
pub fn decode_table(p: &[u8]) -> Vec<u32> {
    (0..TABLE_ENTRIES)
        .map(|i| get_u32(p, HEADER + 4 * i))
        .collect()
}

// ---- Volume head and continuation pages ----

/// Volume flags (head pages).
pub mod flags {
    /// Clusters are allocated on first write (otherwise all at creation).
    pub const THIN: u32 = 1;
    /// Read-only: a snapshot.
    pub const SNAPSHOT: u32 = 2;
    /// Being deleted: recovery finishes the job (and, with a transfer target, hands
    /// its clusters to that clone first).
    pub const DELETING: u32 = 4;
}

/// What a head page (and its continuation pages) describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub id: u64,
    /// Id of the snapshot this volume is a clone of; 0 for none.
    pub parent: u64,
    pub size: u64,
    pub flags: u32,
    /// With [`flags::DELETING`] on a snapshot: the clone its clusters pass to.
    pub transfer_to: u64,
    pub created: u64,
    pub uuid: [u8; 16],
    pub name: String,
    /// Metadata page of each map page, in order (one per [`MAP_ENTRIES`] clusters).
    pub map_pages: Vec<u32>,
}

const D_ID: usize = 64;
const D_PARENT: usize = 72;
const D_SIZE: usize = 80;
const D_FLAGS: usize = 88;
const D_NMAP: usize = 92;
const D_TRANSFER: usize = 96;
const D_CREATED: usize = 104;
const D_UUID: usize = 112;
const D_NAMELEN: usize = 128;
const D_NAME: usize = 130;
const D_NEXT: usize = 388;
const D_REFS: usize = 392;
/// Map-page references a head page holds; the rest go to continuation pages.
pub const HEAD_REFS: usize = (PAGE - D_REFS) / 4;
const E_NEXT: usize = HEADER;
const E_REFS: usize = HEADER + 4;
/// Map-page references a continuation page holds.
pub const EXT_REFS: usize = (PAGE - E_REFS) / 4;

impl Head {
    /// Continuation pages this head needs.
    pub fn ext_pages_needed(map_pages: usize) -> usize {
        map_pages.saturating_sub(HEAD_REFS).div_ceil(EXT_REFS)
    }

    /// The head page (first element) and its continuation pages, for the metadata
    /// pages `pages` (head first; `pages.len()` must be 1 + [`Head::ext_pages_needed`]),
    /// each with the sequence given for it in `seqs`.
    pub fn encode(&self, pool: &[u8; 16], pages: &[u32], seqs: &[u64]) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(pages.len());
        let mut p = vec![0u8; PAGE];
        put_u64(&mut p, D_ID, self.id);
        put_u64(&mut p, D_PARENT, self.parent);
        put_u64(&mut p, D_SIZE, self.size);
        put_u32(&mut p, D_FLAGS, self.flags);
        put_u32(&mut p, D_NMAP, self.map_pages.len() as u32);
        put_u64(&mut p, D_TRANSFER, self.transfer_to);
        put_u64(&mut p, D_CREATED, self.created);
        p[D_UUID..D_UUID + 16].copy_from_slice(&self.uuid);
        let n = self.name.len().min(MAX_NAME);
        put_u16(&mut p, D_NAMELEN, n as u16);
        p[D_NAME..D_NAME + n].copy_from_slice(&self.name.as_bytes()[..n]);
        put_u32(&mut p, D_NEXT, pages.get(1).copied().unwrap_or(0));
        let mut refs = self.map_pages.iter();
        for (i, r) in refs.by_ref().take(HEAD_REFS).enumerate() {
            put_u32(&mut p, D_REFS + 4 * i, *r);
        }
        seal(
            &mut p,
            &Header {
                pool: *pool,
                page: pages[0],
                kind: Kind::Head,
                seq: seqs[0],
                owner: self.id,
                aux: 0,
                lsn: 0,
            },
        );
        out.push(p);
        for (k, &page) in pages.iter().enumerate().skip(1) {
            let mut p = vec![0u8; PAGE];
            put_u32(&mut p, E_NEXT, pages.get(k + 1).copied().unwrap_or(0));
            for (i, r) in refs.by_ref().take(EXT_REFS).enumerate() {
                put_u32(&mut p, E_REFS + 4 * i, *r);
            }
            seal(
                &mut p,
                &Header {
                    pool: *pool,
                    page,
                    kind: Kind::Ext,
                    seq: seqs[k],
                    owner: self.id,
                    aux: k as u32,
                    lsn: 0,
                },
            );
            out.push(p);
        }
        out
    }

    /// Reads a valid head page: the descriptor, the map-page references it holds, the
    /// number it should hold in all, and its first continuation page (0 for none).
    pub fn decode(p: &[u8]) -> (Head, usize, u32) {
        let n = usize::from(get_u16(p, D_NAMELEN)).min(MAX_NAME);
        let total = get_u32(p, D_NMAP) as usize;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&p[D_UUID..D_UUID + 16]);
        let here = total.min(HEAD_REFS);
        let h = Head {
            id: get_u64(p, D_ID),
            parent: get_u64(p, D_PARENT),
            size: get_u64(p, D_SIZE),
            flags: get_u32(p, D_FLAGS),
            transfer_to: get_u64(p, D_TRANSFER),
            created: get_u64(p, D_CREATED),
            uuid,
            name: String::from_utf8_lossy(&p[D_NAME..D_NAME + n]).into_owned(),
            map_pages: (0..here).map(|i| get_u32(p, D_REFS + 4 * i)).collect(),
        };
        (h, total, get_u32(p, D_NEXT))
    }

    /// Reads a valid continuation page: up to `want` references, and the next page.
    pub fn decode_ext(p: &[u8], want: usize) -> (Vec<u32>, u32) {
        let n = want.min(EXT_REFS);
        (
            (0..n).map(|i| get_u32(p, E_REFS + 4 * i)).collect(),
            get_u32(p, E_NEXT),
        )
    }
}

// ---- Map pages ----

/// A map page of volume `owner`: `entries` are its values (flags are stripped here);
/// `lsn` the log position it reflects (0 without a log).
#[allow(clippy::too_many_arguments)]
pub fn encode_map(
    pool: &[u8; 16],
    page: u32,
    owner: u64,
    index: u32,
    seq: u64,
    lsn: u64,
    entries: impl Iterator<Item = u32>,
    p: &mut [u8],
) {
    p[HEADER..].fill(0);
    for (i, e) in entries.take(MAP_ENTRIES).enumerate() {
        put_u32(p, HEADER + 4 * i, e & VALUE_MASK);
    }
    seal(
        p,
        &Header {
            pool: *pool,
            page,
            kind: Kind::Map,
            seq,
            owner,
            aux: index,
            lsn,
        },
    );
}

/// The entry `i` of a valid map page.
pub fn map_entry(p: &[u8], i: usize) -> u32 {
    get_u32(p, HEADER + 4 * i)
}

// ---- Mapping log pages (version 2) ----

/// Bytes of one log record: volume id (8), cluster index in the volume (4), new map
/// value (4).
pub const LOG_REC: usize = 16;
/// Records one log page holds.
pub const LOG_RECS: usize = (PAGE - HEADER) / LOG_REC;

/// One mapping change: entry `idx` of volume `id`'s map becomes `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord {
    pub id: u64,
    pub idx: u32,
    pub value: u32,
}

/// Log page `ring` (logical page `page`) holding log page number `number` (its
/// records' positions are `number * LOG_RECS + j`); `records[j]` is `None` for a
/// position not (yet) filled, written as zeroes.
pub fn encode_log(
    pool: &[u8; 16],
    page: u32,
    ring: u32,
    number: u64,
    seq: u64,
    records: impl Iterator<Item = Option<LogRecord>>,
    p: &mut [u8],
) {
    p[HEADER..].fill(0);
    for (j, r) in records.take(LOG_RECS).enumerate() {
        if let Some(r) = r {
            let at = HEADER + LOG_REC * j;
            put_u64(p, at, r.id);
            put_u32(p, at + 8, r.idx);
            put_u32(p, at + 12, r.value & VALUE_MASK);
        }
    }
    seal(
        p,
        &Header {
            pool: *pool,
            page,
            kind: Kind::Log,
            seq,
            owner: number,
            aux: ring,
            lsn: 0,
        },
    );
}

/// The records of a valid log page, with their place in it (empty places skipped).
pub fn decode_log(p: &[u8]) -> Vec<(usize, LogRecord)> {
    (0..LOG_RECS)
        .filter_map(|j| {
            let at = HEADER + LOG_REC * j;
            let id = get_u64(p, at);
            (id != 0).then(|| {
                (
                    j,
                    LogRecord {
                        id,
                        idx: get_u32(p, at + 8),
                        value: get_u32(p, at + 12),
                    },
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
