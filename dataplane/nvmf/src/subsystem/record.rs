//! The subsystem's records in the state region: written when it is configured, and
//! again when its next controller ID or ANA states change.

use std::sync::Arc;

use crate::region::{
    AnaGroupRec, HostRec, Kind, NamespaceRec, Region, RegionError, Str, SubsystemRec,
};
use crate::subsystem::Subsystem;

/// A subsystem's records.
pub(crate) struct SubsysShm {
    pub(crate) region: Arc<Region>,
    pub(crate) rec: u32,
    /// (ANA group ID, record).
    pub(crate) ana: Vec<(u32, u32)>,
}

fn subsystem_rec(s: &Subsystem) -> Result<SubsystemRec, RegionError> {
    Ok(SubsystemRec {
        ana_chgcnt: s.ana_chgcnt(),
        nqn: Str::new("subsystem NQN", &s.nqn)?,
        serial: Str::new("serial", &s.serial)?,
        model: Str::new("model", &s.model)?,
        min_cntlid: s.min_cntlid,
        max_cntlid: s.max_cntlid,
        next_cntlid: s.next_cntlid(),
        allow_any_host: u8::from(s.allow_any_host),
        _pad: 0,
    })
}

/// Record a subsystem with its hosts, namespaces and ANA groups (configuration time).
pub(crate) fn record_subsystem(region: &Arc<Region>, s: &Subsystem) -> Result<(), RegionError> {
    let rec = region.alloc(Kind::Subsystem)?;
    region.write(Kind::Subsystem, rec, &subsystem_rec(s)?);
    for h in &s.hosts {
        let i = region.alloc(Kind::Host)?;
        region.write(
            Kind::Host,
            i,
            &HostRec {
                subsys: rec,
                nqn: Str::new("host NQN", h)?,
            },
        );
    }
    for n in s.namespaces() {
        let i = region.alloc(Kind::Namespace)?;
        region.write(
            Kind::Namespace,
            i,
            &NamespaceRec {
                subsys: rec,
                nsid: n.nsid,
                anagrpid: n.anagrpid,
                block_size: n.block_size,
                num_blocks: n.num_blocks,
                nguid: n.nguid,
                uuid: n.uuid,
            },
        );
    }
    let mut ana = Vec::new();
    for g in s.ana_groups() {
        let i = region.alloc(Kind::AnaGroup)?;
        region.write(
            Kind::AnaGroup,
            i,
            &ana_rec(rec, g.id, g.state(), g.chgcnt()),
        );
        ana.push((g.id, i));
    }
    *s.shm.lock().expect("subsystem shm lock poisoned") = Some(SubsysShm {
        region: region.clone(),
        rec,
        ana,
    });
    region.bump_config_gen();
    Ok(())
}

fn ana_rec(subsys: u32, id: u32, state: u8, chgcnt: u64) -> AnaGroupRec {
    AnaGroupRec {
        subsys,
        id,
        chgcnt,
        state,
        _pad: [0; 7],
    }
}

impl Subsystem {
    /// Rewrite the subsystem record (next controller ID, ANA change count) and, after an
    /// `ana` change, its ANA group records. Control path only.
    pub(crate) fn publish(&self, ana_changed: bool) {
        let shm = self.shm.lock().expect("subsystem shm lock poisoned");
        let Some(m) = shm.as_ref() else { return };
        match subsystem_rec(self) {
            Ok(r) => m.region.write(Kind::Subsystem, m.rec, &r),
            Err(e) => tracing::error!(error = %e, "subsystem record not updated"),
        }
        if ana_changed {
            for &(id, i) in &m.ana {
                if let Some(g) = self.ana_group(id) {
                    m.region.write(
                        Kind::AnaGroup,
                        i,
                        &ana_rec(m.rec, id, g.state(), g.chgcnt()),
                    );
                }
            }
            m.region.bump_config_gen();
        }
    }
}
