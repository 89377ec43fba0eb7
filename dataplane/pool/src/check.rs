//! [`crate::PoolOps::check`]: the metadata read back from the device, checked as an
//! open checks it, and compared with what the pool holds in memory.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::format::{BUSY, PENDING, VALUE_MASK};
use crate::pool::{Ctl, Pool};
use crate::{CheckReport, PoolError};

pub(crate) fn check(pool: &Pool, ctl: &Ctl) -> Result<CheckReport, PoolError> {
    let (disk, plan, pages) = crate::load::read_back(pool)?;
    let bad = |what: String| PoolError::Corrupt {
        device: pool.dev_name.clone(),
        what: format!("check: {what}"),
    };
    // Records on the device, by id.
    let mut on_disk: HashMap<u64, u32> = HashMap::new();
    for i in 0..disk.nslots() as u32 {
        let s = disk.slot(i);
        if s.state.load(Ordering::Relaxed) == 1 {
            on_disk.insert(s.id.load(Ordering::Relaxed), i);
        }
    }
    let mut owned = 0u64;
    for (&id, &i) in &ctl.by_id {
        let m = pool.slot(i);
        let name = m.name();
        let Some(&d) = on_disk.get(&id) else {
            return Err(bad(format!("volume {name:?} is not on the device")));
        };
        let ds = disk.slot(d);
        if ds.name() != name
            || ds.size.load(Ordering::Relaxed) != m.size.load(Ordering::Relaxed)
            || ds.flags.load(Ordering::Relaxed) != m.flags.load(Ordering::Relaxed)
        {
            return Err(bad(format!(
                "volume {name:?}: the device says {:?}, {} bytes, flags {:#x}; memory says {} bytes, flags {:#x}",
                ds.name(),
                ds.size.load(Ordering::Relaxed),
                ds.flags.load(Ordering::Relaxed),
                m.size.load(Ordering::Relaxed),
                m.flags.load(Ordering::Relaxed)
            )));
        }
        let dp = ds
            .parent
            .load(Ordering::Relaxed)
            .checked_sub(1)
            .map(|p| disk.slot(p).id.load(Ordering::Relaxed));
        let mp = pool
            .parent(i)
            .map(|p| pool.slot(p).id.load(Ordering::Relaxed));
        if dp != mp {
            return Err(bad(format!(
                "volume {name:?}: its parent differs between device and memory"
            )));
        }
        let n = ds.clusters.load(Ordering::Relaxed) as usize;
        let (dmp, dep) = (
            ds.map_pages.load(Ordering::Relaxed),
            ds.ext_pages.load(Ordering::Relaxed),
        );
        let de = disk.u32s(
            ds.extent.load(Ordering::Relaxed) + 4 * u64::from(dmp + dep),
            n,
        );
        for (idx, (a, b)) in de.iter().zip(pool.entries(i)).enumerate() {
            let mv = b.load(Ordering::Acquire);
            if mv & (BUSY | PENDING) != 0 {
                continue;
            }
            let dv = a.load(Ordering::Relaxed);
            if dv != mv & VALUE_MASK {
                return Err(bad(format!(
                    "volume {name:?}: cluster {idx} maps to {dv} on the device and {} in memory",
                    mv & VALUE_MASK
                )));
            }
        }
        owned += ds.used.load(Ordering::Relaxed);
    }
    if on_disk.len() != ctl.by_id.len() + plan.uncommitted.len() {
        return Err(bad(format!(
            "the device holds {} volumes, memory {}",
            on_disk.len(),
            ctl.by_id.len()
        )));
    }
    let free = disk.header().free_clusters.load(Ordering::Relaxed);
    let mem_free = pool.arena.header().free_clusters.load(Ordering::Acquire);
    if free != mem_free {
        return Err(bad(format!(
            "the maps on the device leave {free} clusters free; memory counts {mem_free}"
        )));
    }
    Ok(CheckReport {
        volumes: ctl.by_name.len(),
        md_pages_read: pages,
        clusters_owned: owned,
        free_clusters: free,
    })
}
