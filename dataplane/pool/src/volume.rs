//! A volume (or snapshot, or clone) as a block device.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lightpool_bdev::{Bdev, BdevError, BdevInfo, Export, IoChannel};

use crate::format::flags;
use crate::gate::Gate;
use crate::pool::Pool;

/// What every channel of a served volume shares.
pub(crate) struct VolShared {
    /// The record the volume reads and writes now (a snapshot moves the volume to a
    /// new record).
    pub cur: AtomicU32,
    pub gate: Gate,
    /// How long the last snapshot paused this volume's I/O, in nanoseconds.
    pub last_pause_ns: AtomicU64,
}

/// A volume of a pool, served as a block device: its blocks map through its cluster
/// map (and its snapshot's, for a clone) to the pool device.
pub struct VolumeBdev {
    pub(crate) pool: Arc<Pool>,
    pub(crate) shared: Arc<VolShared>,
    info: BdevInfo,
}

impl std::fmt::Debug for VolumeBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeBdev")
            .field("info", &self.info)
            .finish()
    }
}

impl VolumeBdev {
    pub(crate) fn new(pool: Arc<Pool>, slot: u32, name: &str) -> Arc<VolumeBdev> {
        let s = pool.slot(slot);
        let d = pool.dev.info();
        let info = BdevInfo {
            name: format!("{}/{}", pool.name, name),
            block_size: d.block_size,
            num_blocks: s.size.load(Ordering::Acquire) / u64::from(d.block_size),
            read_only: s.flags.load(Ordering::Acquire) & flags::SNAPSHOT != 0,
            volatile_write_cache: d.volatile_write_cache,
            supports_deallocate: true,
        };
        Arc::new(VolumeBdev {
            pool,
            shared: Arc::new(VolShared {
                cur: AtomicU32::new(slot),
                gate: Gate::new(),
                last_pause_ns: AtomicU64::new(0),
            }),
            info,
        })
    }

    /// The same served volume at its record's size now (after a grow): it shares the
    /// record and the gate with `self`, so the I/O of both pauses together while the
    /// namespace moves to the new device (its queues open channels of the new size and
    /// let the old ones finish).
    pub(crate) fn resized(&self) -> Arc<VolumeBdev> {
        let cur = self.shared.cur.load(Ordering::Acquire);
        let size = self.pool.slot(cur).size.load(Ordering::Acquire);
        let mut info = self.info.clone();
        info.num_blocks = size / u64::from(info.block_size);
        Arc::new(VolumeBdev {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
            info,
        })
    }

    /// The name this device was opened under (`pool/volume`).
    pub fn info_name(&self) -> String {
        self.info.name.clone()
    }

    /// How long the last snapshot of this volume paused its I/O (zero if none was
    /// taken while it was served).
    pub fn last_snapshot_pause(&self) -> Duration {
        Duration::from_nanos(self.shared.last_pause_ns.load(Ordering::Acquire))
    }

    /// The volume's id (its record's now).
    pub fn id(&self) -> u64 {
        let cur = self.shared.cur.load(Ordering::Acquire);
        self.pool.slot(cur).id.load(Ordering::Acquire)
    }
}

/// What a successor needs to find the volume in the handed-over pool.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct VolumeState {
    pub slot: u32,
    pub id: u64,
}

impl Bdev for VolumeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        crate::VOLUME_KIND
    }

    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        vec![self.pool.clone()]
    }

    /// Which record of the pool it serves: the pool's arena holds everything else.
    fn export(&self) -> Result<Export, BdevError> {
        let slot = self.shared.cur.load(Ordering::Acquire);
        let st = VolumeState {
            slot,
            id: self.pool.slot(slot).id.load(Ordering::Acquire),
        };
        Ok(Export {
            state: postcard::to_stdvec(&st)
                .map_err(|e| BdevError::Invalid(format!("{}: state: {e}", self.info.name)))?,
            fds: Vec::new(),
        })
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(crate::channel::VolChannel::new(
            self.pool.clone(),
            self.shared.clone(),
            &self.info,
        )?))
    }
}
