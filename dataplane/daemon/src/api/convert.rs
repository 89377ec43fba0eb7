//! The target's objects as the API's messages, and errors as gRPC statuses.

use std::sync::Arc;

use lightpool_api::v1 as pb;
use lightpool_bdev::Bdev;
use lightpool_nvmf::Subsystem;
use tonic::Status;

use crate::manage::save::{nguid_string, uuid_string};
use crate::manage::{ManageError, NsView};
use crate::Running;

pub fn status_of(e: ManageError) -> Status {
    match e {
        ManageError::NotFound(m) => Status::not_found(m),
        ManageError::Exists(m) => Status::already_exists(m),
        ManageError::Invalid(m) => Status::invalid_argument(m),
        ManageError::InUse(m) => Status::failed_precondition(m),
        ManageError::NoMemory(m) => Status::resource_exhausted(m),
        ManageError::Unavailable(m) => Status::unavailable(m),
        ManageError::Failed(m) => Status::internal(m),
    }
}

pub fn namespace(v: &NsView) -> pb::Namespace {
    pb::Namespace {
        nqn: v.nqn.clone(),
        nsid: v.ns.nsid,
        device: v.device.clone(),
        block_size: v.ns.block_size,
        num_blocks: v.ns.num_blocks,
        nguid: nguid_string(&v.ns.nguid),
        uuid: uuid_string(&v.ns.uuid),
        ana_group: v.ns.anagrpid,
        read_only: v.ns.read_only,
    }
}

pub fn subsystem(run: &Running, s: &Subsystem) -> pb::Subsystem {
    pb::Subsystem {
        nqn: s.nqn.clone(),
        serial: s.serial.clone(),
        model: s.model.clone(),
        allow_any_host: s.allow_any_host,
        hosts: s.hosts.clone(),
        min_cntlid: u32::from(s.min_cntlid),
        max_cntlid: u32::from(s.max_cntlid),
        namespaces: run
            .namespaces()
            .iter()
            .filter(|v| v.nqn == s.nqn)
            .map(namespace)
            .collect(),
        controllers: s.controllers().len() as u32,
        host_keys: s
            .all_host_keys()
            .iter()
            .map(|(h, k)| host_key(h, k))
            .collect(),
        tls_keys: run
            .target
            .tls
            .all()
            .iter()
            .filter(|(_, sub, _)| *sub == s.nqn)
            .map(|(h, sub, k)| tls_key(h, sub, k))
            .collect(),
    }
}

/// A host's TLS key without the key.
pub fn tls_key(host: &str, subnqn: &str, k: &lightpool_nvmf::tls::ConfiguredPsk) -> pb::TlsKey {
    use lightpool_nvmf::tls::{Derivation, IdentityVersion};
    pb::TlsKey {
        host: host.to_string(),
        hash: k.cipher_hash().name().to_string(),
        transform: k.transform().map_or("none", |h| h.name()).to_string(),
        identity: k
            .tls_psk(host, subnqn, IdentityVersion::V1, Derivation::Standard)
            .map(|p| p.identity)
            .unwrap_or_default(),
    }
}

/// A host's keys without their secrets.
pub fn host_key(host: &str, k: &lightpool_nvmf::auth::HostKeys) -> pb::HostKey {
    pb::HostKey {
        host: host.to_string(),
        bidirectional: k.ctrl.is_some(),
        hash: k.hash.name().to_string(),
        dhgroup: k.dhgroup.name().to_string(),
    }
}

pub fn ana_state(code: u8) -> pb::AnaState {
    use lightpool_spec::log::ana_state as a;
    match code {
        a::OPTIMIZED => pb::AnaState::Optimized,
        a::NON_OPTIMIZED => pb::AnaState::NonOptimized,
        a::INACCESSIBLE => pb::AnaState::Inaccessible,
        a::PERSISTENT_LOSS => pb::AnaState::PersistentLoss,
        a::CHANGE => pb::AnaState::Change,
        _ => pb::AnaState::Unspecified,
    }
}

pub fn ana_code(s: pb::AnaState) -> Option<u8> {
    use lightpool_spec::log::ana_state as a;
    Some(match s {
        pb::AnaState::Optimized => a::OPTIMIZED,
        pb::AnaState::NonOptimized => a::NON_OPTIMIZED,
        pb::AnaState::Inaccessible => a::INACCESSIBLE,
        pb::AnaState::PersistentLoss => a::PERSISTENT_LOSS,
        pb::AnaState::Change => a::CHANGE,
        pb::AnaState::Unspecified => return None,
    })
}

pub fn ana_groups(run: &Running, s: &Subsystem) -> Vec<pb::AnaGroup> {
    let ns = s.namespaces();
    let _ = run;
    s.ana_groups()
        .iter()
        .map(|g| pb::AnaGroup {
            nqn: s.nqn.clone(),
            group: g.id,
            state: ana_state(g.state()) as i32,
            change_count: g.chgcnt(),
            nsids: ns
                .iter()
                .filter(|n| n.anagrpid == g.id)
                .map(|n| n.nsid)
                .collect(),
        })
        .collect()
}

pub fn controller(s: &Subsystem, c: &lightpool_nvmf::ctrlr::Controller) -> pb::Controller {
    let [rc, wc, rb, wb] = c.stats();
    pb::Controller {
        nqn: s.nqn.clone(),
        cntlid: u32::from(c.cntlid),
        host_nqn: c.hostnqn.clone(),
        host_id: nguid_string(&c.hostid),
        io_queues: c.io_queues_connected(),
        keep_alive_ms: c.kato_ms(),
        failed: c.is_failed(),
        read_commands: rc,
        write_commands: wc,
        blocks_read_512: rb,
        blocks_written_512: wb,
    }
}

/// The device graph, children first, named by the registry.
pub fn devices(run: &Running) -> Vec<pb::BlockDevice> {
    let (g, ns, _) = crate::upgrade::device_graph(&run.target, &run.mgmt.registry);
    let all: Vec<Arc<dyn Bdev>> = g.devices().cloned().collect();
    let name = |d: &Arc<dyn Bdev>| {
        run.mgmt
            .registry
            .name_of(d)
            .unwrap_or_else(|| d.info().name.clone())
    };
    all.iter()
        .enumerate()
        .map(|(id, d)| {
            let info = d.info();
            pb::BlockDevice {
                name: name(d),
                kind: d.kind().to_string(),
                backend_name: info.name.clone(),
                block_size: info.block_size,
                num_blocks: info.num_blocks,
                read_only: info.read_only,
                children: d.children().iter().map(&name).collect(),
                namespaces: ns
                    .iter()
                    .filter(|(_, _, i)| *i as usize == id)
                    .map(|(nqn, nsid, _)| format!("{nqn}/{nsid}"))
                    .collect(),
                parents: all
                    .iter()
                    .filter(|p| p.children().iter().any(|c| Arc::ptr_eq(c, d)))
                    .map(&name)
                    .collect(),
                io: d.io_stats().map(|s| pb::IoCounts {
                    reads: s.reads,
                    writes: s.writes,
                    other: s.other,
                    blocks_read: s.blocks_read,
                    blocks_written: s.blocks_written,
                }),
            }
        })
        .collect()
}

pub fn parse_id(what: &str, s: &Option<String>) -> Result<Option<[u8; 16]>, Status> {
    match s {
        None => Ok(None),
        Some(x) => crate::config::parse_hex::<16>(x).map(Some).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{what} {x:?} is not 32 hex digits (dashes allowed)"
            ))
        }),
    }
}

/// A fault device's rules and what each has done.
pub fn fault_rules(name: &str, d: &lightpool_bdev_fault::FaultBdev) -> pb::FaultRules {
    pb::FaultRules {
        name: name.to_string(),
        rules: d
            .rules()
            .into_iter()
            .map(|r| pb::FaultRuleStatus {
                rule: r.rule.to_string(),
                seen: r.seen,
                fired: r.fired,
            })
            .collect(),
    }
}
