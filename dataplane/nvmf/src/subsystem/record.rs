//! The subsystem's records in the state region: written when it is configured, again
//! when its next controller ID or ANA states change, and as namespaces come, go and
//! change size; freed when it is deleted.

use std::sync::Arc;

use crate::region::{
    AnaGroupRec, HostRec, Kind, NamespaceRec, Region, RegionError, Str, SubsystemRec,
};
use crate::subsystem::{Namespace, Subsystem};
use crate::NvmfError;

/// A subsystem's records.
pub(crate) struct SubsysShm {
    pub(crate) region: Arc<Region>,
    pub(crate) rec: u32,
    /// (ANA group ID, record).
    pub(crate) ana: Vec<(u32, u32)>,
    /// (NSID, record).
    pub(crate) ns: Vec<(u32, u32)>,
    pub(crate) hosts: Vec<u32>,
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

fn namespace_rec(subsys: u32, n: &Namespace) -> NamespaceRec {
    NamespaceRec {
        subsys,
        nsid: n.nsid,
        anagrpid: n.anagrpid,
        block_size: n.block_size,
        num_blocks: n.num_blocks,
        nguid: n.nguid,
        uuid: n.uuid,
    }
}

/// Record a subsystem with its hosts, namespaces and ANA groups (configuration time).
pub(crate) fn record_subsystem(region: &Arc<Region>, s: &Subsystem) -> Result<(), RegionError> {
    let rec = region.alloc(Kind::Subsystem)?;
    region.write(Kind::Subsystem, rec, &subsystem_rec(s)?);
    let mut m = SubsysShm {
        region: region.clone(),
        rec,
        ana: Vec::new(),
        ns: Vec::new(),
        hosts: Vec::new(),
    };
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
        m.hosts.push(i);
    }
    for n in s.namespaces() {
        let i = region.alloc(Kind::Namespace)?;
        region.write(Kind::Namespace, i, &namespace_rec(rec, &n));
        m.ns.push((n.nsid, i));
    }
    write_ana(s, &mut m)?;
    *s.shm.lock().expect("subsystem shm lock poisoned") = Some(m);
    region.bump_config_gen();
    Ok(())
}

/// (Re)write the records of the ANA groups that hold a namespace or whose state was
/// ever changed, allocating those not recorded yet.
fn write_ana(s: &Subsystem, m: &mut SubsysShm) -> Result<(), RegionError> {
    for g in s.ana_groups() {
        let i = match m.ana.iter().find(|(id, _)| *id == g.id) {
            Some(&(_, i)) => i,
            None => {
                let i = m.region.alloc(Kind::AnaGroup)?;
                m.ana.push((g.id, i));
                i
            }
        };
        m.region.write(
            Kind::AnaGroup,
            i,
            &ana_rec(m.rec, g.id, g.state(), g.chgcnt()),
        );
    }
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
        let mut shm = self.shm.lock().expect("subsystem shm lock poisoned");
        let Some(m) = shm.as_mut() else { return };
        match subsystem_rec(self) {
            Ok(r) => m.region.write(Kind::Subsystem, m.rec, &r),
            Err(e) => tracing::error!(error = %e, "subsystem record not updated"),
        }
        if ana_changed {
            if let Err(e) = write_ana(self, m) {
                tracing::error!(error = %e, "ANA group records not updated");
            }
            m.region.bump_config_gen();
        }
    }

    /// A namespace added: its record (and its ANA group's, if new).
    pub(super) fn record_namespace(&self, n: &Namespace) -> Result<(), NvmfError> {
        let mut shm = self.shm.lock().expect("subsystem shm lock poisoned");
        let Some(m) = shm.as_mut() else {
            return Ok(());
        };
        let i = m.region.alloc(Kind::Namespace)?;
        m.region.write(Kind::Namespace, i, &namespace_rec(m.rec, n));
        m.ns.push((n.nsid, i));
        if !m.ana.iter().any(|(id, _)| *id == n.anagrpid) {
            let g = self
                .ana_group(n.anagrpid)
                .expect("checked by make_namespace");
            let a = m.region.alloc(Kind::AnaGroup)?;
            m.region.write(
                Kind::AnaGroup,
                a,
                &ana_rec(m.rec, g.id, g.state(), g.chgcnt()),
            );
            m.ana.push((g.id, a));
        }
        m.region.bump_config_gen();
        Ok(())
    }

    /// A namespace resized: its record rewritten.
    pub(super) fn rewrite_namespace(&self, n: &Namespace) {
        let shm = self.shm.lock().expect("subsystem shm lock poisoned");
        let Some(m) = shm.as_ref() else { return };
        if let Some(&(_, i)) = m.ns.iter().find(|(nsid, _)| *nsid == n.nsid) {
            m.region.write(Kind::Namespace, i, &namespace_rec(m.rec, n));
            m.region.bump_config_gen();
        }
    }

    /// A namespace removed: its record freed (its ANA group's stays: the group keeps its
    /// state for a namespace added to it later).
    pub(super) fn unrecord_namespace(&self, nsid: u32) {
        let mut shm = self.shm.lock().expect("subsystem shm lock poisoned");
        let Some(m) = shm.as_mut() else { return };
        if let Some(at) = m.ns.iter().position(|(n, _)| *n == nsid) {
            let (_, i) = m.ns.swap_remove(at);
            m.region.free(Kind::Namespace, i);
            m.region.bump_config_gen();
        }
    }

    /// The subsystem deleted: every record of it freed.
    pub(crate) fn unrecord(&self) {
        let mut shm = self.shm.lock().expect("subsystem shm lock poisoned");
        let Some(m) = shm.take() else { return };
        for (_, i) in m.ns {
            m.region.free(Kind::Namespace, i);
        }
        for (_, i) in m.ana {
            m.region.free(Kind::AnaGroup, i);
        }
        for i in m.hosts {
            m.region.free(Kind::Host, i);
        }
        m.region.free(Kind::Subsystem, m.rec);
        m.region.bump_config_gen();
    }
}
