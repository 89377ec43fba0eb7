//! Hot upgrade: the pool and its volumes in the device graph.
//!
//! The pool exports its arena's memfd while serving (not at the pause): the successor
//! maps the same memory, so the maps, the allocation bitmap and the sequence numbers
//! the predecessor changes until its last request are exactly what the successor
//! starts from, and the pause gains nothing proportional to the pool's size. What the
//! successor derives for itself (names, the map area's allocator) changes only with the
//! pool's operations, which are refused from the export on. A volume exports which
//! record it serves. Recovery without descriptors (`--recover`) reopens the pool from
//! its device, replaying it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use lightpool_bdev::{Adopter, Adoption, Bdev, BdevError};

use crate::arena::Arena;
use crate::format::flags;
use crate::pool::{Extents, Pool, PoolState};
use crate::volume::VolumeState;
use crate::{PoolError, PoolOptions};

/// [`Bdev::kind`] of pools.
pub const POOL_KIND: &str = "pool";
/// [`Bdev::kind`] of volumes.
pub const VOLUME_KIND: &str = "volume";

/// Every pool of this process, for finding a volume's pool when adopting it.
static POOLS: Mutex<Vec<Weak<Pool>>> = Mutex::new(Vec::new());

pub(crate) fn register(p: &Arc<Pool>) {
    let mut v = POOLS.lock().expect("pool registry poisoned");
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(p));
}

/// The pool `dev` is (the same object as), if it is one of this process's pools.
pub fn as_pool(dev: &Arc<dyn Bdev>) -> Option<Arc<Pool>> {
    let key = Arc::as_ptr(dev) as *const () as usize;
    POOLS
        .lock()
        .expect("pool registry poisoned")
        .iter()
        .filter_map(|w| w.upgrade())
        .find(|p| Arc::as_ptr(p) as *const () as usize == key)
}

fn bad(name: &str, e: impl std::fmt::Display) -> BdevError {
    BdevError::Invalid(format!("{name}: {e}"))
}

/// Rebuilds pools: from the predecessor's arena, or (recovery) from the device.
pub struct PoolAdopter;

impl Adopter for PoolAdopter {
    fn kind(&self) -> &'static str {
        POOL_KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let st: PoolState = postcard::from_bytes(a.state)
            .map_err(|e| bad(a.name, format!("unreadable state: {e}")))?;
        let mut children = a.children;
        if children.len() != 1 {
            return Err(bad(
                a.name,
                format!(
                    "a pool sits on one device, the state names {}",
                    children.len()
                ),
            ));
        }
        let dev = children.pop().expect("length checked");
        let pool = match a.fds {
            Some(mut fds) => {
                if st.arena_layout != crate::arena::LAYOUT || fds.len() != 1 {
                    return Err(bad(
                        a.name,
                        format!(
                            "the pool's shared memory has layout {} ({} descriptors); this binary reads layout {}",
                            st.arena_layout,
                            fds.len(),
                            crate::arena::LAYOUT
                        ),
                    ));
                }
                let arena = Arena::adopt(fds.pop().expect("one")).map_err(|e| bad(a.name, e))?;
                Pool::from_arena(&st.name, dev, arena).map_err(|e| bad(a.name, e))?
            }
            None => {
                let (p, report) = Pool::open(dev, &st.name, &PoolOptions::default(), false)
                    .map_err(|e| bad(a.name, e))?;
                tracing::info!(pool = %st.name, ?report, "pool reopened from its device");
                p
            }
        };
        Ok(pool)
    }
}

/// Rebuilds volumes over their adopted pool.
pub struct VolumeAdopter;

impl Adopter for VolumeAdopter {
    fn kind(&self) -> &'static str {
        VOLUME_KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let st: VolumeState = postcard::from_bytes(a.state)
            .map_err(|e| bad(a.name, format!("unreadable state: {e}")))?;
        let [pool] = &a.children[..] else {
            return Err(bad(a.name, "a volume sits on one pool"));
        };
        let pool = as_pool(pool).ok_or_else(|| bad(a.name, "the device under it is not a pool"))?;
        let v = pool
            .volume_by_id(st.id, st.slot)
            .map_err(|e| bad(a.name, e))?;
        Ok(v)
    }
}

impl Pool {
    /// A pool over an arena handed over by a predecessor (which still serves until it
    /// lets go: nothing is written here, and this process owns the pool only once
    /// [`Bdev::adopted`] says so).
    pub(crate) fn from_arena(
        name: &str,
        dev: Arc<dyn Bdev>,
        arena: Arena,
    ) -> Result<Arc<Pool>, PoolError> {
        let geo = arena.geometry();
        let devname = dev.info().name.clone();
        if geo.name != name {
            return Err(PoolError::WrongPool {
                device: devname,
                found: geo.name,
                expected: name.to_string(),
            });
        }
        if dev.info().block_size != geo.block_size || dev.info().num_blocks < geo.device_blocks {
            return Err(PoolError::DeviceSize {
                device: devname,
                pool: geo.name,
                found: dev.info().num_blocks,
                expected: geo.device_blocks,
                block_size: geo.block_size,
            });
        }
        let (maps, len) = arena.maps_area();
        let mut extents = Extents::new(maps, len);
        let mut live = Vec::new();
        for i in 0..arena.nslots() as u32 {
            let s = arena.slot(i);
            let at = s.extent.load(Ordering::Acquire);
            if at != 0 && !extents.take_at(at, s.extent_len.load(Ordering::Acquire)) {
                return Err(PoolError::Corrupt {
                    device: devname,
                    what: format!("the handed-over memory gives volume record {i} an extent that overlaps another"),
                });
            }
            if s.state.load(Ordering::Acquire) == 1 {
                live.push(i);
            }
        }
        let pool = Pool::new_arc(name.to_string(), dev, geo, arena, extents, false);
        {
            let mut ctl = pool.ctl.lock().expect("fresh lock");
            for i in live {
                let s = pool.slot(i);
                ctl.by_id.insert(s.id.load(Ordering::Acquire), i);
                if s.flags.load(Ordering::Acquire) & flags::DELETING == 0 {
                    ctl.by_name.insert(s.name(), i);
                }
            }
        }
        register(&pool);
        Ok(pool)
    }

    /// The served device of the volume with id `id` (expected in record `slot`).
    pub(crate) fn volume_by_id(
        &self,
        id: u64,
        slot: u32,
    ) -> Result<Arc<crate::VolumeBdev>, PoolError> {
        let mut ctl = self.ctl.lock().expect("pool lock poisoned");
        let i = match ctl.by_id.get(&id) {
            Some(&i) => i,
            None => {
                return Err(PoolError::NoSuchVolume {
                    pool: self.name.clone(),
                    name: format!("id {id:#x} (record {slot})"),
                })
            }
        };
        if let Some(v) = self.served(&ctl, i) {
            return Ok(v);
        }
        let name = self.slot(i).name();
        let v = crate::VolumeBdev::new(self.arc(), i, &name);
        ctl.served.insert(i, Arc::downgrade(&v));
        Ok(v)
    }
}
