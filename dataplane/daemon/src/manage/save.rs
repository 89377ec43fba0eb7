//! A running target written as a configuration file: what `lightpool config save`
//! returns. Started from it (or applied to an empty target), a target is the same:
//! the same devices by name and kind, subsystems, namespaces with their NSIDs, sizes,
//! NGUIDs, UUIDs and ANA groups, ANA states, and listeners.

use crate::config::{
    AnaGroupSection, Config, ListenerSection, NamespaceSection, Size, SubsystemSection,
    TargetSection,
};
use crate::Running;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `8-4-4-4-12` hex.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn nguid_string(n: &[u8; 16]) -> String {
    hex(n)
}

/// The target as a configuration.
pub fn save(run: &Running) -> Config {
    let o = &run.target.opts;
    let (cores, reactors) = if run.cores.iter().all(Option::is_some) {
        (
            run.cores.iter().flatten().copied().collect(),
            run.cores.len(),
        )
    } else {
        (Vec::new(), run.cores.len())
    };
    let target = TargetSection {
        cores,
        reactors,
        max_queue_depth: o.max_queue_depth,
        max_io_queues: o.max_io_queues,
        in_capsule_data_size: o.in_capsule_data_size,
        max_transfer_size: o.max_transfer_size,
        idle_spin_us: run.idle_spin_us,
        state_dir: run.state_dir.clone(),
        // The address bound (a configured port 0 is saved as the port it got).
        metrics_address: run
            .metrics
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string()),
        rdma_srq: crate::transports::rdma_srq(),
    };
    let listeners = run
        .transports
        .all()
        .iter()
        .flat_map(|t| {
            let kind = crate::transports::kinds()
                .get(t.name())
                .map(|k| k.trtype())
                .ok();
            run.target
                .listeners()
                .into_iter()
                .filter(move |l| Some(l.addr.trtype) == kind)
                .map(move |l| {
                    let engine = t.listener_engine(&l.addr).unwrap_or_default();
                    ListenerSection {
                        address: l.addr.to_addr_string(),
                        transport: t.name().to_string(),
                        secure: match run.target.tls.listener(&l.addr.to_addr_string()) {
                            lightpool_nvmf::tls::Secure::None => String::new(),
                            s => s.name().to_string(),
                        },
                        ktls: match run.target.tls.listener_ktls(&l.addr.to_addr_string()) {
                            lightpool_nvmf::tls::Ktls::Auto => String::new(),
                            k => k.name().to_string(),
                        },
                        engine: engine.engine,
                        interface: engine.interface,
                        xdp_mode: engine.mode,
                    }
                })
        })
        .collect();
    let entries = run.mgmt.registry.all();
    let bdevs = entries
        .iter()
        .filter(|e| {
            !matches!(
                e.spec,
                crate::manage::DeviceSpec::Raid(_)
                    | crate::manage::DeviceSpec::Pool(_)
                    | crate::manage::DeviceSpec::Volume { .. }
            )
        })
        .map(|e| e.spec.to_section(&e.name))
        .collect();
    let raids = entries
        .iter()
        .filter_map(|e| match &e.spec {
            crate::manage::DeviceSpec::Raid(r) => Some((**r).clone()),
            _ => None,
        })
        .collect();
    let pools = entries
        .iter()
        .filter_map(|e| match &e.spec {
            crate::manage::DeviceSpec::Pool(text) => {
                let mut p = crate::pools::section(text).ok()?;
                // The volumes it names that are still there (one deleted or renamed
                // at run time must not come back at the next start); the others,
                // created at run time, are in the pool itself.
                if let Some(pool) = lightpool_pool::as_pool(&e.bdev) {
                    use lightpool_pool::PoolOps;
                    p.volumes
                        .retain(|v| pool.volume_info(&v.name).is_ok_and(|i| !i.snapshot));
                }
                Some(p)
            }
            _ => None,
        })
        .collect();
    // A namespace serving a volume names it as "POOL/VOLUME".
    let volume_of = |device: &str| {
        entries.iter().find_map(|e| match &e.spec {
            crate::manage::DeviceSpec::Volume { pool, volume } if e.name == device => {
                Some(format!("{pool}/{volume}"))
            }
            _ => None,
        })
    };
    let views = run.namespaces();
    let subsystems = run
        .target
        .subsystems()
        .iter()
        .map(|s| SubsystemSection {
            nqn: s.nqn.clone(),
            serial: s.serial.clone(),
            model: s.model.clone(),
            allow_any_host: s.allow_any_host,
            hosts: s.hosts.clone(),
            host_keys: s
                .all_host_keys()
                .iter()
                .map(|(h, k)| crate::config::HostKeySection::from_keys(h, k))
                .collect(),
            tls_keys: run
                .target
                .tls
                .all()
                .into_iter()
                .filter(|(_, sub, _)| *sub == s.nqn)
                .map(|(host, _, k)| crate::config::TlsKeySection {
                    host,
                    key: k.to_interchange(),
                })
                .collect(),
            min_cntlid: s.min_cntlid,
            max_cntlid: s.max_cntlid,
            namespaces: views
                .iter()
                .filter(|v| v.nqn == s.nqn)
                .map(|v| {
                    let info = v.ns.bdev.info();
                    let whole = v.ns.num_blocks == info.num_blocks;
                    let volume = volume_of(&v.device);
                    NamespaceSection {
                        nsid: v.ns.nsid,
                        bdev: volume.is_none().then(|| v.device.clone()),
                        volume,
                        size: (!whole)
                            .then_some(Size(v.ns.num_blocks * u64::from(v.ns.block_size))),
                        nguid: Some(nguid_string(&v.ns.nguid)),
                        uuid: Some(uuid_string(&v.ns.uuid)),
                        ana_group: Some(v.ns.anagrpid),
                        ..Default::default()
                    }
                })
                .collect(),
            ana_groups: s
                .ana_groups()
                .iter()
                .filter(|g| g.state() != lightpool_spec::log::ana_state::OPTIMIZED)
                .filter_map(|g| {
                    Some(AnaGroupSection {
                        group: g.id,
                        state: crate::control::ana_state_name(g.state())?.to_string(),
                    })
                })
                .collect(),
        })
        .collect();
    Config {
        target,
        listeners,
        bdevs,
        subsystems,
        raids,
        pools,
        api: run.api_tcp.as_ref().map(|t| t.section()),
    }
}
