//! The target core driven directly through `NvmfQueue`, as a transport would: Connect
//! rules, properties, Identify, log pages, features, async events, keep-alive.

mod common;
use common::run;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::queue::{Exec, QueueState};
use lightpool_nvmf::{NamespaceConfig, NvmfQueue, SubsystemConfig, Target, TargetOptions};
use lightpool_spec::fabrics::{
    ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC, DISCOVERY_NQN,
};
use lightpool_spec::features::{aen, fid};
use lightpool_spec::identify::{IdentifyController, IdentifyNamespace};
use lightpool_spec::log::{self, ana_state, lid, GetLogPage};
use lightpool_spec::nvme::{
    admin_opcode, reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{command_specific as cs, generic, Status};

const NQN: &str = "nqn.2024-01.io.lightpool:unit";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000aa";

fn target(allow_any: bool, cntlids: (u16, u16)) -> Arc<Target> {
    let t = Target::new(TargetOptions::default()).expect("valid options");
    let mut sc = SubsystemConfig::new(NQN);
    sc.serial = "SN-UNIT-1".into();
    sc.model = "Unit Model".into();
    sc.allow_any_host = allow_any;
    sc.hosts = vec![HOST.into()];
    sc.min_cntlid = cntlids.0;
    sc.max_cntlid = cntlids.1;
    for nsid in [1u32, 3] {
        sc.namespaces.push(NamespaceConfig {
            nsid,
            bdev: MallocBdev::new("ram", 4 << 20, 4096).expect("RAM"),
            nguid: Some([nsid as u8; 16]),
            uuid: None,
            anagrpid: Some(if nsid == 1 { 1 } else { 2 }),
            num_blocks: None,
        });
    }
    t.add_subsystem(sc).expect("valid subsystem");
    t
}

fn connect_sqe(qid: u16, kato: u32) -> Sqe {
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato,
    }
    .to_sqe(1);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: 1024,
        id: SGL_DATA_BLOCK_OFFSET,
    }
    .to_bytes();
    sqe
}

fn connect(
    t: &Arc<Target>,
    qid: u16,
    cntlid: u16,
    subnqn: &str,
    host: &str,
) -> (NvmfQueue<()>, Cqe) {
    let mut q = NvmfQueue::new(t.clone(), 0);
    let data = ConnectData::new([9; 16], cntlid, subnqn, host).to_bytes();
    let (cqe, _) = run(&mut q, connect_sqe(qid, 5000), &data);
    (q, cqe)
}

/// Sets CC.EN (with the usual queue entry sizes) on an admin queue.
fn enable(q: &mut NvmfQueue<()>) {
    let (c, _) = run(
        q,
        PropertyCommand {
            size8: false,
            offset: reg::CC,
            value: 0x0046_0001,
        }
        .to_set_sqe(2),
        &[],
    );
    assert!(c.status.is_success(), "{}", c.status);
}

fn admin(t: &Arc<Target>) -> (NvmfQueue<()>, u16) {
    let (mut q, cqe) = connect(t, 0, CNTLID_DYNAMIC, NQN, HOST);
    assert!(cqe.status.is_success(), "{}", cqe.status);
    enable(&mut q);
    (q, cqe.dw0 as u16)
}

fn c2h(opcode: u8, nsid: u32, len: u32) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        nsid,
        cid: 7,
        ..Default::default()
    };
    sqe.dptr = SglDescriptor {
        address: 0,
        length: len,
        id: SGL_TRANSPORT_DATA_BLOCK,
    }
    .to_bytes();
    sqe
}

fn identify(q: &mut NvmfQueue<()>, cns: u8, nsid: u32) -> (Status, Vec<u8>) {
    let mut sqe = c2h(admin_opcode::IDENTIFY, nsid, 4096);
    sqe.cdw10 = u32::from(cns);
    let (c, d) = run(q, sqe, &[]);
    (c.status, d)
}

fn get_log(q: &mut NvmfQueue<()>, lid_v: u8, len: u32, lsp: u8, rae: bool) -> (Status, Vec<u8>) {
    let sqe = GetLogPage {
        lid: lid_v,
        lsp,
        rae,
        numd: len / 4,
        lpo: 0,
        lsi: 0,
    }
    .to_sqe(7, 0xFFFF_FFFF);
    let mut sqe = sqe;
    sqe.dptr = SglDescriptor {
        address: 0,
        length: len,
        id: SGL_TRANSPORT_DATA_BLOCK,
    }
    .to_bytes();
    let (c, d) = run(q, sqe, &[]);
    (c.status, d)
}

#[test]
fn connect_rules() {
    let t = target(false, (5, 6));
    // Unknown subsystem: invalid parameters naming SUBNQN in the connect data.
    let (_, c) = connect(&t, 0, CNTLID_DYNAMIC, "nqn.nope", HOST);
    assert_eq!(
        c.status,
        Status::command_specific(cs::CONNECT_INVALID_PARAMETERS).with_dnr()
    );
    assert_eq!(
        lightpool_spec::fabrics::parse_connect_invalid_param_dw0(c.dw0),
        (256, 1)
    );
    // Host not on the allowed list.
    let (_, c) = connect(
        &t,
        0,
        CNTLID_DYNAMIC,
        NQN,
        "nqn.2014-08.org.nvmexpress:uuid:stranger",
    );
    assert_eq!(
        c.status,
        Status::command_specific(cs::CONNECT_INVALID_HOST).with_dnr()
    );
    // Controller IDs come from the configured range; a third controller finds it full.
    let (a1, c1) = admin(&t);
    let (a2, c2) = admin(&t);
    assert_eq!({ c1 }.min(c2), 5);
    assert_eq!({ c1 }.max(c2), 6);
    let (_, c) = connect(&t, 0, CNTLID_DYNAMIC, NQN, HOST);
    assert_eq!(
        c.status,
        Status::command_specific(cs::CONNECT_CONTROLLER_BUSY)
    );
    // I/O queue for a controller that does not exist, and one that does.
    let (_, c) = connect(&t, 1, 99, NQN, HOST);
    assert_eq!(
        c.status,
        Status::command_specific(cs::CONNECT_INVALID_PARAMETERS).with_dnr()
    );
    let (_q, c) = connect(&t, 1, c1, NQN, HOST);
    assert!(c.status.is_success());
    // The same qid twice is refused.
    let (_, c) = connect(&t, 1, c1, NQN, HOST);
    assert_eq!(
        c.status,
        Status::command_specific(cs::CONNECT_INVALID_PARAMETERS).with_dnr()
    );
    drop((a1, a2));
}

/// SPDK's initiator with its default options (`spdk_nvme_perf -r 'trtype:TCP ...
/// subnqn:...'`, no `hostnqn:`) sends Connect data whose host NQN is all zeroes, with
/// admin SQSIZE 31 and KATO 10 s. Where any host may connect it is accepted, admin and
/// I/O queue alike (SPDK's target and Linux nvmet accept it); where the subsystem lists
/// its hosts it is refused, pointing at HOSTNQN (byte 512 of the data).
#[test]
fn empty_host_nqn_as_spdk_sends_it() {
    let spdk_connect = |t: &Arc<Target>, qid: u16, cntlid: u16| {
        let mut data = [0u8; 1024];
        data[16..18].copy_from_slice(&cntlid.to_le_bytes());
        data[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
        // Bytes 512..768 (HOSTNQN) stay zero: an empty string.
        let mut q = NvmfQueue::new(t.clone(), 0);
        let (cqe, _) = run(&mut q, connect_sqe(qid, 10_000), &data);
        (q, cqe)
    };
    let open = target(true, (1, 0xffef));
    let (mut q, c) = spdk_connect(&open, 0, CNTLID_DYNAMIC);
    assert!(c.status.is_success(), "{}", c.status);
    let cntlid = c.dw0 as u16;
    enable(&mut q);
    assert_eq!(q.controller().expect("connected").hostnqn, "");
    let (_io, c) = spdk_connect(&open, 1, cntlid);
    assert!(c.status.is_success(), "I/O queue: {}", c.status);

    let listed = target(false, (1, 0xffef));
    let (_, c) = spdk_connect(&listed, 0, CNTLID_DYNAMIC);
    assert_eq!(
        c.status,
        Status::command_specific(cs::CONNECT_INVALID_PARAMETERS).with_dnr()
    );
    assert_eq!(
        lightpool_spec::fabrics::parse_connect_invalid_param_dw0(c.dw0),
        (512, 1)
    );
}

#[test]
fn io_queue_before_enable_is_a_sequence_error() {
    let t = target(true, (1, 100));
    let (_a, c) = connect(&t, 0, CNTLID_DYNAMIC, NQN, HOST);
    let (_, c) = connect(&t, 1, c.dw0 as u16, NQN, HOST);
    assert_eq!(
        c.status,
        Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr()
    );
}

#[test]
fn properties() {
    let t = target(true, (1, 100));
    let (mut q, _) = admin(&t);
    let (c, _) = run(
        &mut q,
        PropertyCommand {
            size8: true,
            offset: reg::CAP,
            value: 0,
        }
        .to_get_sqe(3),
        &[],
    );
    let cap = u64::from(c.dw0) | (u64::from(c.dw1) << 32);
    assert_eq!(cap & 0xFFFF, 1023, "MQES");
    assert_ne!(cap & (1 << 37), 0, "NVM command set");
    let (c, _) = run(
        &mut q,
        PropertyCommand {
            size8: false,
            offset: reg::VS,
            value: 0,
        }
        .to_get_sqe(3),
        &[],
    );
    assert_eq!(c.dw0, 0x0001_0400);
    let (c, _) = run(
        &mut q,
        PropertyCommand {
            size8: false,
            offset: reg::CSTS,
            value: 0,
        }
        .to_get_sqe(3),
        &[],
    );
    assert_eq!(c.dw0 & 1, 1, "ready after CC.EN");
    // Shutdown notification completes at once.
    run(
        &mut q,
        PropertyCommand {
            size8: false,
            offset: reg::CC,
            value: 0x0046_4001,
        }
        .to_set_sqe(3),
        &[],
    );
    let (c, _) = run(
        &mut q,
        PropertyCommand {
            size8: false,
            offset: reg::CSTS,
            value: 0,
        }
        .to_get_sqe(3),
        &[],
    );
    assert_eq!(c.dw0 & 0xC, 0x8, "shutdown complete");
    let (c, _) = run(
        &mut q,
        PropertyCommand {
            size8: false,
            offset: 0x1234,
            value: 0,
        }
        .to_get_sqe(3),
        &[],
    );
    assert_eq!(c.status, Status::generic(generic::INVALID_FIELD).with_dnr());
}

#[test]
fn identify_reports_the_configured_identity() {
    let t = target(true, (1, 100));
    let (mut q, cntlid) = admin(&t);
    let (st, d) = identify(&mut q, 1, 0);
    assert!(st.is_success());
    let id = IdentifyController::parse(d.as_slice().try_into().expect("4096 bytes"));
    assert_eq!(&id.sn[..9], b"SN-UNIT-1");
    assert_eq!(&id.mn[..10], b"Unit Model");
    assert_eq!(id.cntlid, cntlid);
    assert_eq!(&id.subnqn[..NQN.len()], NQN.as_bytes());
    assert_eq!(id.cntrltype, 1);
    assert_ne!(id.cmic & 0x08, 0, "ANA reporting");
    assert!(id.mnan >= 1 && id.mnan <= id.nn);
    assert_eq!(id.ioccsz, (64 + 8192) / 16);
    assert_eq!(id.mdts, 5);
    assert_eq!(&id.fr[..5], env!("CARGO_PKG_VERSION").as_bytes());

    let (st, d) = identify(&mut q, 2, 0);
    assert!(st.is_success());
    assert_eq!(
        &d[..12],
        &[1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
        "active NSIDs 1 and 3"
    );

    let (st, d) = identify(&mut q, 0, 3);
    assert!(st.is_success());
    let ns = IdentifyNamespace::parse(d.as_slice().try_into().expect("4096 bytes"));
    assert_eq!(ns.nsze, 1024, "4 MiB of 4 KiB blocks");
    assert_eq!(ns.lbads, 12);
    assert_eq!(ns.anagrpid, 2);
    assert_eq!(ns.nguid, [3; 16]);

    // Inactive NSID inside the range reads as zeroes; outside it is invalid.
    let (st, d) = identify(&mut q, 0, 2);
    assert!(st.is_success() && d.iter().all(|&b| b == 0));
    let (st, _) = identify(&mut q, 0, 0x1000);
    assert_eq!(st, Status::generic(generic::INVALID_NAMESPACE).with_dnr());
    let (st, _) = identify(&mut q, 0x42, 0);
    assert_eq!(st, Status::generic(generic::INVALID_FIELD).with_dnr());
}

#[test]
fn ana_change_raises_an_async_event_and_fails_io_on_the_inaccessible_group() {
    let t = target(true, (1, 100));
    let (mut a, cntlid) = admin(&t);
    // Enable ANA change notices.
    let sqe = Sqe {
        opcode: admin_opcode::SET_FEATURES,
        cid: 4,
        cdw10: u32::from(fid::ASYNC_EVENT_CONFIG),
        cdw11: 1 << 11,
        ..Default::default()
    };
    assert!(run(&mut a, sqe, &[]).0.status.is_success());
    // Park an AER.
    let aer = Sqe {
        opcode: admin_opcode::ASYNC_EVENT_REQUEST,
        cid: 5,
        ..Default::default()
    };
    let slot = a.alloc(&aer).expect("slot");
    a.prepare(slot, 0).expect("no data");
    assert_eq!(a.execute(slot, Instant::now()), Exec::Pending);
    a.poll(Instant::now());
    assert!(a.next_done().is_none(), "no event yet");

    let subsys = t.find_subsystem(NQN).expect("subsystem");
    subsys
        .set_ana_state(2, ana_state::INACCESSIBLE)
        .expect("valid state");
    a.poll(Instant::now());
    assert_eq!(a.next_done(), Some(slot));
    let (ty, info, page) = aen::parse_dw0(a.req(slot).cqe.dw0);
    assert_eq!((ty, info, page), (aen::NOTICE, aen::ANA_CHANGE, lid::ANA));
    a.free(slot);

    // The ANA log shows group 2 inaccessible with NSID 3 in it.
    let (st, d) = get_log(&mut a, lid::ANA, 4096, 0, false);
    assert!(st.is_success());
    let (hdr, groups) = log::parse_ana_log(&d).expect("well-formed ANA log");
    assert_eq!(hdr.ngrps, 2);
    let g2 = groups
        .map(|g| g.expect("well-formed group"))
        .find(|g| g.grpid == 2)
        .expect("group 2");
    assert_eq!(g2.state, ana_state::INACCESSIBLE);
    assert_eq!(g2.nsids().collect::<Vec<_>>(), vec![3]);

    // I/O to NSID 3 fails with the ANA path status (no DNR), NSID 1 still works.
    let (mut io, c) = connect(&t, 1, cntlid, NQN, HOST);
    assert!(c.status.is_success());
    let mut rd = c2h(0x02, 3, 4096);
    rd.cdw12 = 0;
    let (c, _) = run(&mut io, rd, &[]);
    assert_eq!(
        c.status,
        Status::path(lightpool_spec::status::path::ASYMMETRIC_ACCESS_INACCESSIBLE)
    );
    assert!(!c.status.dnr());
    rd.nsid = 1;
    assert!(run(&mut io, rd, &[]).0.status.is_success());
}

#[test]
fn keep_alive_timeout_fails_the_controller_and_its_io_queues() {
    let t = target(true, (1, 100));
    let (mut a, cntlid) = admin(&t); // KATO 5000 ms
    let (mut io, c) = connect(&t, 1, cntlid, NQN, HOST);
    assert!(c.status.is_success());
    let now = Instant::now();
    a.poll(now + Duration::from_secs(4));
    assert_eq!(a.state(), QueueState::Live, "within KATO");
    let ka = Sqe {
        opcode: admin_opcode::KEEP_ALIVE,
        cid: 8,
        ..Default::default()
    };
    assert!(run(&mut a, ka, &[]).0.status.is_success());
    a.poll(now + Duration::from_secs(8));
    assert_eq!(
        a.state(),
        QueueState::Live,
        "keep-alive restarted the timer"
    );
    a.poll(now + Duration::from_secs(60));
    assert_eq!(a.state(), QueueState::Failed);
    io.poll(Instant::now());
    assert_eq!(
        io.state(),
        QueueState::Failed,
        "I/O queues follow their controller"
    );
}

#[test]
fn number_of_queues_and_unknown_features() {
    let t = target(true, (1, 100));
    let (mut a, _) = admin(&t);
    let sqe = Sqe {
        opcode: admin_opcode::SET_FEATURES,
        cid: 4,
        cdw10: u32::from(fid::NUMBER_OF_QUEUES),
        cdw11: (3 << 16) | 3,
        ..Default::default()
    };
    let (c, _) = run(&mut a, sqe, &[]);
    assert!(c.status.is_success());
    assert_eq!(c.dw0, (3 << 16) | 3, "4 queues granted (0's based)");
    let sqe = Sqe {
        opcode: admin_opcode::GET_FEATURES,
        cid: 4,
        cdw10: 0x7C,
        ..Default::default()
    };
    assert_eq!(
        run(&mut a, sqe, &[]).0.status,
        Status::generic(generic::INVALID_FIELD).with_dnr()
    );
    let sqe = Sqe {
        opcode: 0xC5,
        cid: 4,
        ..Default::default()
    };
    assert_eq!(
        run(&mut a, sqe, &[]).0.status,
        Status::generic(generic::INVALID_OPCODE).with_dnr()
    );
}

#[test]
fn discovery_log_lists_subsystems_and_listeners() {
    let t = target(true, (1, 100));
    t.add_listener(lightpool_nvmf::ListenerInfo {
        addr: lightpool_nvmf::ListenAddr::tcp("127.0.0.1:4420".parse().expect("addr")),
        portid: 1,
    });
    let (mut q, c) = connect(&t, 0, CNTLID_DYNAMIC, DISCOVERY_NQN, HOST);
    assert!(c.status.is_success());
    let (st, d) = identify(&mut q, 1, 0);
    assert!(st.is_success());
    assert_eq!(
        IdentifyController::parse(d.as_slice().try_into().expect("4096")).cntrltype,
        2
    );
    let (st, d) = get_log(&mut q, lid::DISCOVERY, 3 * 1024, 0, false);
    assert!(st.is_success());
    let hdr = log::DiscoveryLogHeader::parse(&d).expect("header");
    assert_eq!(
        hdr.numrec, 2,
        "the discovery subsystem itself and our subsystem"
    );
    let e = log::discovery_log_entry(&d, 1).expect("entry 1");
    assert_eq!(e.subnqn_str(), NQN);
    assert_eq!(e.traddr_str(), "127.0.0.1");
    assert_eq!(e.trsvcid_str(), "4420");
    // I/O commands and other logs are not for discovery controllers.
    let (st, _) = get_log(&mut q, lid::SMART_HEALTH, 512, 0, false);
    assert_eq!(
        st,
        Status::command_specific(cs::INVALID_LOG_PAGE).with_dnr()
    );
}
