//! How the block devices travel to a successor (or are reopened by `--recover`): the
//! device graph of `lightpool_bdev::persist` (stacked devices included, each device
//! once), with the adopters of the backends this binary links.
//!
//! Devices that can be exported while serving (RAM, files) travel with the REACTORS
//! answer: their records go into the boot blob, rewritten at that moment so that its
//! descriptor indices are those of the descriptors sent. Devices whose state changes
//! while serving (a VFIO controller), and everything stacked on them, travel with
//! STATE: their records go into the handover blob.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use anyhow::{Context, Result};
use lightpool_bdev::{Adopters, Bdev, DeviceGraph, DeviceRecord};
use lightpool_bdev_nvme_vfio::NvmeVfioAdopter;
use lightpool_bdev_passthru::PassthruAdopter;
use lightpool_bdev_ram::RamAdopter;
use lightpool_bdev_uring::UringAdopter;
use lightpool_nvmf::{NvmfError, Target};
use lightpool_pool::{PoolAdopter, VolumeAdopter};
use lightpool_raid::RaidAdopter;
use serde::{Deserialize, Serialize};

use crate::manage::{DeviceSpec, Entry, Registry};

/// Each namespace's (NQN, NSID, id of its block device in the graph).
pub type NsDevices = Vec<(String, u32, u32)>;

/// Devices adopted so far, by id.
pub(super) type Devices = BTreeMap<u32, Arc<dyn Bdev>>;

/// The adopters of every backend this binary links.
pub(super) fn adopters() -> Adopters {
    let mut a = Adopters::new();
    a.register(Box::new(RamAdopter))
        .register(Box::new(UringAdopter))
        .register(Box::new(NvmeVfioAdopter))
        .register(Box::new(PassthruAdopter))
        .register(Box::new(lightpool_bdev_fault::FaultAdopter))
        .register(Box::new(PoolAdopter))
        .register(Box::new(VolumeAdopter));
    for r in RaidAdopter::all(Some(crate::raid::registry())) {
        a.register(r);
    }
    a
}

/// A device of the registry as the boot blob keeps it: its name, how it was made, and
/// its id in the device graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRecord {
    pub name: String,
    pub spec: DeviceSpec,
    pub id: u32,
}

/// The device graph of every device of the registry and every namespace's device,
/// which device each namespace serves, and the registry's devices by id.
pub fn graph(
    target: &Target,
    registry: &Registry,
) -> (DeviceGraph, NsDevices, Vec<RegistryRecord>) {
    let entries = registry.all();
    let mut roots: Vec<Arc<dyn Bdev>> = entries.iter().map(|e| e.bdev.clone()).collect();
    let mut ns = Vec::new();
    for s in target.subsystems() {
        for n in s.namespaces() {
            roots.push(n.bdev.clone());
            ns.push((s.nqn.clone(), n.nsid, n.bdev.clone()));
        }
    }
    let g = DeviceGraph::walk(&roots);
    let ns = ns
        .into_iter()
        .map(|(nqn, nsid, b)| (nqn, nsid, g.id_of(&b).expect("walked from it")))
        .collect();
    let reg = entries
        .into_iter()
        .map(|e| RegistryRecord {
            id: g.id_of(&e.bdev).expect("walked from it"),
            name: e.name,
            spec: e.spec,
        })
        .collect();
    (g, ns, reg)
}

/// The registry rebuilt from its records and the devices adopted by id.
pub(super) fn rebuild_registry(recs: &[RegistryRecord], devs: &Devices) -> Result<Registry> {
    let mut entries = Vec::new();
    for r in recs {
        let bdev = devs
            .get(&r.id)
            .with_context(|| format!("block device {} was not taken over", r.name))?;
        entries.push(Entry {
            name: r.name.clone(),
            bdev: bdev.clone(),
            spec: r.spec.clone(),
        });
    }
    Ok(Registry::new(entries))
}

/// What the boot blob says of the devices, and their descriptors.
pub(super) type EarlyExport = (
    Vec<DeviceRecord>,
    NsDevices,
    Vec<RegistryRecord>,
    Vec<OwnedFd>,
);

/// Records of every device (state for those exported while serving) and their
/// descriptors, indexed from 0.
pub(super) fn early_export(target: &Target, registry: &Registry) -> Result<EarlyExport> {
    if crate::manage::migrate::any() {
        anyhow::bail!("a live migration runs here (its mirror and connections are this process's): stop it, or let it end, first");
    }
    let (g, ns, reg) = graph(target, registry);
    let mut fds = Vec::new();
    let recs = g
        .export(|at_pause| !at_pause, &mut fds, 0)
        .context("exporting the block devices")?;
    Ok((recs, ns, reg, fds))
}

/// Records of the devices exported at pause time (the target is drained), their
/// descriptors appended to `fds`, indexed from `fd_base`.
pub(super) fn pause_export(
    target: &Target,
    registry: &Registry,
    fds: &mut Vec<OwnedFd>,
    fd_base: usize,
) -> Result<Vec<DeviceRecord>> {
    let (g, _, _) = graph(target, registry);
    if !g.any_at_pause() {
        return Ok(Vec::new());
    }
    let recs = g
        .export(|at_pause| at_pause, fds, fd_base)
        .context("exporting the block devices at the pause")?;
    Ok(recs.into_iter().filter(|r| r.at_pause).collect())
}

/// Adopt `records` into `devs`; `take` hands out descriptors by index, `None` for
/// recovery.
pub(super) fn adopt_devices(
    records: &[DeviceRecord],
    devs: &mut Devices,
    take: Option<&mut dyn FnMut(usize) -> Option<OwnedFd>>,
) -> Result<()> {
    adopters()
        .adopt_all(records, devs, take)
        .context("taking the block devices over")
}

/// The block device of namespace `nsid` of `nqn`, for rebuilding subsystems.
pub(super) fn namespace_bdev(
    ns: &NsDevices,
    devs: &Devices,
    nqn: &str,
    nsid: u32,
) -> Result<Arc<dyn Bdev>, NvmfError> {
    ns.iter()
        .find(|(q, n, _)| q == nqn && *n == nsid)
        .and_then(|(_, _, id)| devs.get(id))
        .cloned()
        .ok_or_else(|| {
            NvmfError::Invalid(format!("no block device handed over for {nqn} nsid {nsid}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_bdev_ram::MallocBdev;
    use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, TargetOptions};

    fn registry_of(devs: &[(&str, &Arc<dyn Bdev>)]) -> Registry {
        Registry::new(
            devs.iter()
                .map(|(n, b)| Entry {
                    name: n.to_string(),
                    bdev: (*b).clone(),
                    spec: DeviceSpec::Ram {
                        size: b.info().num_blocks * u64::from(b.info().block_size),
                        block_size: b.info().block_size,
                        hugepages: Some(false),
                    },
                })
                .collect(),
        )
    }

    /// Two namespaces on one RAM device are one device in the graph; records and
    /// descriptors survive the boot blob's encoding and adopt into one device that
    /// both namespaces serve.
    #[test]
    fn a_device_under_two_namespaces_travels_once() {
        let t = Target::new(TargetOptions::default()).expect("target");
        let ram: Arc<dyn Bdev> = MallocBdev::new("ram1", 1 << 20, 512).expect("ram");
        let mut sc = SubsystemConfig::new("nqn.2024-01.io.lightpool:a");
        for nsid in [1, 2] {
            sc.namespaces.push(NamespaceConfig {
                nsid,
                bdev: ram.clone(),
                nguid: None,
                uuid: None,
                anagrpid: None,
                num_blocks: None,
            });
        }
        t.add_subsystem(sc).expect("subsystem");
        let unused: Arc<dyn Bdev> = MallocBdev::new("spare", 1 << 20, 512).expect("ram");
        let reg = registry_of(&[("ram1", &ram), ("spare", &unused)]);
        let (recs, ns, regrecs, fds) = early_export(&t, &reg).expect("export");
        // The device no namespace serves travels too.
        assert_eq!((recs.len(), fds.len(), regrecs.len()), (2, 2, 2));
        assert_eq!(ns[0].2, ns[1].2);
        let bytes = postcard::to_stdvec(&(recs.clone(), ns.clone())).expect("encode");
        let (recs2, ns2): (Vec<DeviceRecord>, NsDevices) =
            postcard::from_bytes(&bytes).expect("decode");
        assert_eq!((recs2.clone(), ns2.clone()), (recs, ns));
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let mut devs = Devices::new();
        adopt_devices(
            &recs2,
            &mut devs,
            Some(&mut |i: usize| fds.get_mut(i).and_then(Option::take)),
        )
        .expect("adopt");
        let a = namespace_bdev(&ns2, &devs, "nqn.2024-01.io.lightpool:a", 1).expect("ns 1");
        let b = namespace_bdev(&ns2, &devs, "nqn.2024-01.io.lightpool:a", 2).expect("ns 2");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.kind(), "ram");
        let reg2 = rebuild_registry(&regrecs, &devs).expect("registry");
        assert_eq!(reg2.get("spare").expect("spare").bdev.kind(), "ram");
        assert!(Arc::ptr_eq(&reg2.get("ram1").expect("ram1").bdev, &a));
        assert!(pause_export(&t, &reg, &mut Vec::new(), 1)
            .expect("nothing at pause")
            .is_empty());
    }
}
