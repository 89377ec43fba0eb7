//! The LightPool volume store: thin volumes, snapshots and clones carved from one block
//! device (the pool device: a raw backend, or a RAID device), with crash-safe metadata.
//!
//! - A [`Pool`] is opened on any [`lightpool_bdev::Bdev`] (it depends on nothing else):
//!   a superblock, a volume table, and per volume a head page and map pages that say
//!   which cluster holds each of its clusters (docs/pool-format.md). Clusters are
//!   1 MiB by default; thin volumes get theirs on first write, thick ones at creation.
//! - Every volume, snapshot and clone is a block device ([`VolumeBdev`]) that a
//!   namespace serves; the pool itself is one too (kind `pool`, the child of every
//!   volume in the device graph), so a hot upgrade hands them over like any other.
//! - [`PoolOps`] is the one typed interface of the pool's operations (create, delete,
//!   grow, rename, list, snapshot, clone, inflate): the configuration calls it at
//!   start, the management API at run time.
//!
//! Crash consistency follows SPDK's blobstore: checksummed metadata pages with sequence
//! numbers (two copies of each, written in turn, so a torn write leaves the previous
//! one), chains written before their head, a clean flag, and a full replay after an
//! unclean shutdown that trusts no global allocation state: what is allocated is what
//! the volumes' maps say, and nothing else. A write that needs a new cluster is
//! acknowledged only once the map page naming that cluster is durable.
//!
//! The I/O path (see `channel`) runs on the reactors and takes no lock: cluster maps,
//! the allocation bitmap and the metadata pages' write tokens are atomics in shared
//! memory (see `arena`), metadata writes go through the channel's own channel to the
//! pool device, asynchronously, and nothing is allocated on a warm channel.

mod alloc;
mod arena;
mod channel;
mod check;
mod ctlio;
mod format;
mod gate;
mod load;
mod log;
mod meta;
mod ops;
mod persist;
mod pool;
mod snap;
mod volume;

pub use persist::{as_pool, PoolAdopter, VolumeAdopter, POOL_KIND, VOLUME_KIND};
pub use pool::{OpenReport, Pool};
pub use volume::VolumeBdev;

use lightpool_bdev::{BdevError, IoStatus};

/// How a new pool is laid out (a pool's geometry is fixed when it is made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Bytes per cluster: a power of two from 16 KiB to 1 GiB. Default 1 MiB.
    pub cluster_size: u32,
    /// Writable volumes may promise at most this percentage of the data space (thin
    /// volumes over-commit it). Default 100.
    pub overcommit: u32,
    /// Volumes, snapshots and clones the pool can hold. Default 4032.
    pub max_volumes: u32,
    /// Metadata pages (4 KiB, each kept twice); default: enough for every volume's
    /// head and, at the over-commit limit, every map page.
    pub md_pages: Option<u32>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            cluster_size: 1 << 20,
            overcommit: 100,
            max_volumes: 4032,
            md_pages: None,
        }
    }
}

/// What a pool reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    /// The pool device's name.
    pub device: String,
    pub uuid: [u8; 16],
    pub block_size: u32,
    pub cluster_size: u32,
    /// Clusters that hold data (the metadata area excluded).
    pub data_clusters: u64,
    pub free_clusters: u64,
    pub overcommit: u32,
    /// Bytes that writable volumes promise (the sum of their sizes).
    pub promised: u64,
    /// Bytes writable volumes may promise at most.
    pub promise_limit: u64,
    pub volumes: usize,
    pub max_volumes: usize,
    pub md_pages: u32,
    pub md_pages_free: u32,
}

/// What the pool says about one volume, snapshot or clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// Unique in the pool and never reused.
    pub id: u64,
    /// The volume's identity (a snapshot gets a new one; the volume keeps its own).
    pub uuid: [u8; 16],
    pub size: u64,
    /// Bytes of clusters the volume owns (a clone's shared clusters belong to its
    /// snapshot).
    pub used: u64,
    pub thin: bool,
    /// Read-only snapshot.
    pub snapshot: bool,
    /// The snapshot a clone was made from.
    pub parent: Option<String>,
    /// A snapshot's clones.
    pub clones: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// The pool's operations: what the configuration does at start and the management API
/// at run time. Each returns a typed error whose message says what to change.
pub trait PoolOps: Send + Sync {
    /// The pool itself.
    fn pool_info(&self) -> PoolInfo;
    /// Every volume, snapshot and clone, by name.
    fn list(&self) -> Vec<VolumeInfo>;
    /// One volume.
    fn volume_info(&self, name: &str) -> Result<VolumeInfo, PoolError>;
    /// A new volume of `size` bytes (a multiple of the block size); thin volumes get
    /// clusters as they are written, thick ones all at once.
    fn create(&self, name: &str, size: u64, thin: bool) -> Result<VolumeInfo, PoolError>;
    /// Deletes a volume or snapshot and gives its clusters back. A snapshot with one
    /// clone hands its clusters to that clone; with more it is refused. A volume that
    /// a namespace serves is refused.
    fn delete(&self, name: &str) -> Result<(), PoolError>;
    /// Grows a writable volume to `size` bytes.
    fn grow(&self, name: &str, size: u64) -> Result<VolumeInfo, PoolError>;
    /// After a grow of a served volume: a device of the new size that takes the served
    /// one's place (same record, same I/O gate), for the namespace to move to; `None`
    /// when no device is served or it has the volume's size already.
    fn regrown_device(&self, name: &str) -> Result<Option<std::sync::Arc<VolumeBdev>>, PoolError>;
    fn rename(&self, name: &str, new_name: &str) -> Result<VolumeInfo, PoolError>;
    /// A read-only snapshot `snapshot` of volume `name`, taken in constant time while
    /// the volume is served; the volume carries on as a clone of it.
    fn snapshot(&self, name: &str, snapshot: &str) -> Result<VolumeInfo, PoolError>;
    /// A writable clone `name` of `snapshot`.
    fn clone_snapshot(&self, snapshot: &str, name: &str) -> Result<VolumeInfo, PoolError>;
    /// Makes a clone independent of its snapshot (copies the clusters it shares).
    fn inflate(&self, name: &str) -> Result<VolumeInfo, PoolError>;
    /// The block device of a volume, for a namespace to serve (the same device for as
    /// long as one is in use).
    fn open_volume(&self, name: &str) -> Result<std::sync::Arc<VolumeBdev>, PoolError>;
    /// Re-reads the metadata from the device and checks it against itself and against
    /// what is in memory: every map page readable, no cluster owned twice, the free
    /// clusters those the maps leave. A report of what it checked.
    fn check(&self) -> Result<CheckReport, PoolError>;
}

/// What [`PoolOps::check`] found (it errs on anything wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub volumes: usize,
    pub md_pages_read: usize,
    pub clusters_owned: u64,
    pub free_clusters: u64,
}

/// Errors of the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool device {device}: {source}")]
    Device {
        device: String,
        #[source]
        source: BdevError,
    },
    #[error("pool device {device}: {what} failed: {status:?}")]
    Io {
        device: String,
        what: String,
        status: IoStatus,
    },
    #[error("pool device {device} holds no LightPool pool: {why}; refusing to format over data it cannot read (wipe its first 8 KiB to reuse it, or name another device)")]
    NotAPool { device: String, why: String },
    #[error("pool device {device}: metadata is corrupt: {what}; the pool is not opened and nothing was written")]
    Corrupt { device: String, what: String },
    #[error("pool device {device} has pool format version {found}; this binary reads versions 1 to {supported}")]
    Version {
        device: String,
        found: u32,
        supported: u32,
    },
    #[error("pool device {device} holds pool {found:?}, not {expected:?}: check which device the configuration names")]
    WrongPool {
        device: String,
        found: String,
        expected: String,
    },
    #[error("pool device {device} has {found} blocks of {block_size} bytes, but pool {pool:?} was made on {expected}: the device is missing, truncated or not the pool's")]
    DeviceSize {
        device: String,
        pool: String,
        found: u64,
        expected: u64,
        block_size: u32,
    },
    #[error("pool device {device} has {found}-byte blocks; pool {pool:?} was made with {expected}-byte blocks")]
    BlockSize {
        device: String,
        pool: String,
        found: u32,
        expected: u32,
    },
    #[error("invalid pool option: {0}")]
    Options(String),
    #[error("pool {pool}: no volume {name:?}")]
    NoSuchVolume { pool: String, name: String },
    #[error("pool {pool}: a volume {name:?} exists already; pick another name")]
    Exists { pool: String, name: String },
    #[error("volume name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error(
        "pool {pool}: size {size} is not a positive multiple of the {block_size}-byte block size"
    )]
    InvalidSize {
        pool: String,
        size: u64,
        block_size: u32,
    },
    #[error("pool {pool}: {need} free clusters are needed, {free} are free; delete volumes or snapshots, or make this one thin")]
    NoSpace { pool: String, need: u64, free: u64 },
    #[error("pool {pool}: volumes would promise {promised} bytes, more than the over-commit limit of {limit} bytes ({percent}% of the data space); raise the pool's overcommit or make the volume smaller")]
    Overcommit {
        pool: String,
        promised: u64,
        limit: u64,
        percent: u32,
    },
    #[error("pool {pool} holds {max} volumes, its maximum (a new pool with a larger max_volumes can hold more)")]
    TooManyVolumes { pool: String, max: usize },
    #[error("pool {pool}: its metadata area is full ({need} pages needed, {free} free); make the pool with more md_pages, or delete volumes")]
    MetadataFull {
        pool: String,
        need: usize,
        free: usize,
    },
    #[error("pool {pool}: its in-memory map area is full; restart the target to compact it")]
    MapAreaFull { pool: String },
    #[error("pool {pool}: {name:?} is a snapshot, which is read-only; clone it to write")]
    IsSnapshot { pool: String, name: String },
    #[error("pool {pool}: {name:?} is not a snapshot; only snapshots can be cloned")]
    NotSnapshot { pool: String, name: String },
    #[error("pool {pool}: {name:?} is not a clone; there is nothing to inflate")]
    NotClone { pool: String, name: String },
    #[error("pool {pool}: snapshot {name:?} has {clones} clones ({names}); delete or inflate all but one first")]
    HasClones {
        pool: String,
        name: String,
        clones: usize,
        names: String,
    },
    #[error("pool {pool}: volume {name:?} is being served (a namespace uses it); remove the namespace first")]
    InUse { pool: String, name: String },
    #[error(
        "pool {pool}: volume {name:?} has {size} bytes; a volume can only grow (asked for {asked})"
    )]
    Shrink {
        pool: String,
        name: String,
        size: u64,
        asked: u64,
    },
    #[error("pool {pool}: volume {name:?}: its I/O did not pause within {waited:?}")]
    Busy {
        pool: String,
        name: String,
        waited: std::time::Duration,
    },
    #[error("pool {pool} is being handed over to a new process (hot upgrade); retry the operation there")]
    HandedOver { pool: String },
    #[error("pool {pool}: cannot set up its shared memory: {source}")]
    Arena {
        pool: String,
        #[source]
        source: arena::ArenaError,
    },
}
#[cfg(test)]
mod tests;
