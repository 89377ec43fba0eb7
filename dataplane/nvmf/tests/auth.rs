//! DH-HMAC-CHAP through `NvmfQueue`, as a transport drives it: Connect answers
//! AUTHREQ.ATR for a keyed host, the queue refuses all but Authentication Send/Receive
//! until the host proves its key, a wrong key gets AUTH_Failure1 and the queue closes
//! while other hosts' queues go on, and a rotated key applies to the next transaction
//! without dropping the connection.

mod common;
use common::run;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::auth::crypto::{self, DhKey};
use lightpool_nvmf::auth::{auth_timeout, DhGroup, HashFn, HostKeys, Secret, AUTH_TIMEOUT_FLOOR};
use lightpool_nvmf::queue::QueueState;
use lightpool_nvmf::{NamespaceConfig, NvmfQueue, SubsystemConfig, Target, TargetOptions};
use lightpool_spec::auth::{
    self as wire, failure, msg, AuthCommand, Challenge, Failure, Negotiate, Reply, Success1,
};
use lightpool_spec::fabrics::{
    fctype, ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC,
};
use lightpool_spec::nvme::{
    reg, Cqe, SglDescriptor, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{command_specific as cs, Status};

const NQN: &str = "nqn.2024-01.io.lightpool:auth";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000aa";
const OPEN_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000bb";

fn keys(dh: DhGroup, bidi: bool) -> HostKeys {
    HostKeys {
        host: Secret::generate(Some(HashFn::Sha256), 32).unwrap(),
        ctrl: bidi.then(|| Secret::generate(Some(HashFn::Sha384), 48).unwrap()),
        hash: HashFn::Sha384,
        dhgroup: dh,
    }
}

fn target(k: &HostKeys) -> Arc<Target> {
    let t = Target::new(TargetOptions::default()).expect("valid options");
    let mut sc = SubsystemConfig::new(NQN);
    sc.allow_any_host = false;
    sc.hosts = vec![HOST.into(), OPEN_HOST.into()];
    sc.host_keys = vec![(HOST.into(), k.clone())];
    sc.namespaces.push(NamespaceConfig::new(
        1,
        MallocBdev::new("ram", 4 << 20, 4096).expect("RAM"),
    ));
    t.add_subsystem(sc).expect("valid subsystem");
    t
}

fn connect(t: &Arc<Target>, qid: u16, cntlid: u16, host: &str) -> (NvmfQueue<()>, Cqe) {
    let mut q = NvmfQueue::new(t.clone(), 0);
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(1);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: 1024,
        id: SGL_DATA_BLOCK_OFFSET,
    }
    .to_bytes();
    let data = ConnectData::new([9; 16], cntlid, NQN, host).to_bytes();
    let (cqe, _) = run(&mut q, sqe, &data);
    assert!(cqe.status.is_success(), "{}", cqe.status);
    (q, cqe)
}

fn enable(q: &mut NvmfQueue<()>) -> Status {
    let sqe = PropertyCommand {
        size8: false,
        offset: reg::CC,
        value: 0x0046_0001,
    }
    .to_set_sqe(2);
    run(q, sqe, &[]).0.status
}

fn auth_send(q: &mut NvmfQueue<()>, data: &[u8]) -> Status {
    let mut sqe = AuthCommand {
        spsp0: 1,
        spsp1: 1,
        secp: wire::SECP_DHCHAP,
        len: data.len() as u32,
    }
    .to_sqe(fctype::AUTH_SEND, 3);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: data.len() as u32,
        id: SGL_DATA_BLOCK_OFFSET,
    }
    .to_bytes();
    run(q, sqe, data).0.status
}

fn auth_recv(q: &mut NvmfQueue<()>) -> Vec<u8> {
    let mut sqe = AuthCommand {
        spsp0: 1,
        spsp1: 1,
        secp: wire::SECP_DHCHAP,
        len: 4096,
    }
    .to_sqe(fctype::AUTH_RECV, 4);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: 4096,
        id: SGL_TRANSPORT_DATA_BLOCK,
    }
    .to_bytes();
    let (cqe, data) = run(q, sqe, &[]);
    assert!(cqe.status.is_success(), "{}", cqe.status);
    assert_eq!(data.len(), 4096);
    data
}

/// A Negotiate offering every hash and DH group, as the Linux host sends it.
fn negotiate(t_id: u16) -> Vec<u8> {
    let mut idlist = [0u8; 60];
    idlist[..3].copy_from_slice(&[1, 2, 3]);
    idlist[30..36].copy_from_slice(&[0, 1, 2, 3, 4, 5]);
    let n = Negotiate {
        t_id,
        sc_c: 0,
        napd: 1,
        authid: 1,
        halen: 3,
        dhlen: 6,
        idlist,
    };
    let mut b = vec![0u8; 72];
    n.write(&mut b).unwrap();
    b
}

/// The Linux host's side of one transaction with `key` (and `ctrl_key` to ask for the
/// controller's proof). Returns the last message the controller sent and, when asked,
/// whether its proof checked out.
fn authenticate(
    q: &mut NvmfQueue<()>,
    key: &Secret,
    ctrl_key: Option<&Secret>,
    t_id: u16,
) -> (Vec<u8>, Option<bool>) {
    assert!(auth_send(q, &negotiate(t_id)).is_success());
    let ch = auth_recv(q);
    if ch[1] == msg::FAILURE1 {
        return (ch, None);
    }
    let c = Challenge::parse(&ch).unwrap();
    let hash = HashFn::from_id(c.hash_id).unwrap();
    let group = DhGroup::from_id(c.dhgroup_id).unwrap();
    let (dhv, ks) = match group {
        DhGroup::Null => (Vec::new(), None),
        g => {
            let k = DhKey::generate(g).unwrap();
            let ks = k.shared(c.dhv).unwrap();
            (k.public().to_vec(), Some(ks))
        }
    };
    let ca = crypto::challenge_for(hash, ks.as_deref().map(|v| &v[..]), c.c1);
    let r1 = crypto::host_response(
        hash,
        &key.transformed(HOST),
        &ca[..],
        c.seqnum,
        t_id,
        HOST,
        NQN,
    );
    let c2 = [0x33u8; 64];
    let s2 = if ctrl_key.is_some() { 41 } else { 0 };
    let reply = Reply {
        t_id,
        hl: hash.digest_len() as u8,
        cvalid: ctrl_key.is_some(),
        seqnum: s2,
        response: &r1[..hash.digest_len()],
        c2: &c2[..hash.digest_len()],
        dhv: &dhv,
    };
    let mut rb = vec![0u8; 2048];
    let rn = reply.write(&mut rb).unwrap();
    assert!(auth_send(q, &rb[..rn]).is_success());
    let s1 = auth_recv(q);
    if s1[1] == msg::FAILURE1 {
        return (s1, None);
    }
    let s = Success1::parse(&s1).unwrap();
    let Some(kc) = ctrl_key else {
        return (s1, None);
    };
    let ca2 = crypto::challenge_for(
        hash,
        ks.as_deref().map(|v| &v[..]),
        &c2[..hash.digest_len()],
    );
    let want = crypto::ctrl_response(hash, &kc.transformed(NQN), &ca2[..], s2, t_id, NQN, HOST);
    let ok = s.response == Some(&want[..hash.digest_len()]);
    let mut sb = [0u8; 16];
    wire::write_success2(t_id, &mut sb).unwrap();
    assert!(auth_send(q, &sb).is_success());
    (s1, Some(ok))
}

fn auth_required() -> Status {
    Status::command_specific(cs::AUTHENTICATION_REQUIRED).with_dnr()
}

#[test]
fn keyed_host_must_authenticate_on_admin_and_io_queues() {
    let k = keys(DhGroup::Ffdhe2048, true);
    let t = target(&k);
    let (mut admin, cqe) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    assert_eq!(cqe.dw0 & wire::AUTHREQ_ATR, wire::AUTHREQ_ATR, "ATR set");
    assert!(admin.is_authenticating());
    assert!(!admin.is_authenticated());
    // Nothing but Authentication Send/Receive before the host proves its key.
    assert_eq!(enable(&mut admin), auth_required());
    let (_, ctrl_ok) = authenticate(&mut admin, &k.host, k.ctrl.as_ref(), 1);
    assert_eq!(ctrl_ok, Some(true), "the controller proved its key");
    assert!(!admin.is_authenticating());
    assert!(admin.is_authenticated(), "the management view says so");
    assert!(enable(&mut admin).is_success());
    // An I/O queue of the same controller authenticates too.
    let cntlid = cqe.dw0 as u16;
    let (mut io, cqe) = connect(&t, 1, cntlid, HOST);
    assert_ne!(cqe.dw0 & wire::AUTHREQ_ATR, 0);
    let (_, ok) = authenticate(&mut io, &k.host, k.ctrl.as_ref(), 2);
    assert_eq!(ok, Some(true));
    assert_eq!(io.state(), QueueState::Live);
    assert!(!io.is_authenticating());
}

#[test]
fn wrong_key_gets_failure1_and_only_that_queue_closes() {
    let k = keys(DhGroup::Null, false);
    let t = target(&k);
    // Another host, without a key, is connected and working.
    let (mut other, cqe) = connect(&t, 0, CNTLID_DYNAMIC, OPEN_HOST);
    assert_eq!(cqe.dw0 & wire::AUTHREQ_ATR, 0, "no key, no ATR");
    assert!(enable(&mut other).is_success());
    assert!(
        !other.is_authenticated(),
        "no key: not authenticated in-band"
    );
    let (mut q, _) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    let wrong = Secret::generate(Some(HashFn::Sha256), 32).unwrap();
    let (last, _) = authenticate(&mut q, &wrong, None, 9);
    let f = Failure::parse(&last).unwrap();
    assert_eq!(
        (f.auth_id, f.reason, f.explanation),
        (msg::FAILURE1, 1, failure::FAILED)
    );
    assert_eq!(q.state(), QueueState::Disconnecting);
    assert_eq!(enable(&mut q), auth_required());
    q.close();
    assert_eq!(other.state(), QueueState::Live);
    assert!(enable(&mut other).is_success());
}

#[test]
fn rotated_key_applies_to_the_next_transaction_without_dropping_the_queue() {
    let k = keys(DhGroup::Ffdhe3072, false);
    let t = target(&k);
    let (mut q, _) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    authenticate(&mut q, &k.host, None, 1);
    assert!(enable(&mut q).is_success());
    let subsys = t.find_subsystem(NQN).unwrap();
    let new = keys(DhGroup::Null, false);
    subsys.set_host_keys(HOST, Some(new.clone())).unwrap();
    // The live queue keeps working under the old authentication.
    assert_eq!(q.state(), QueueState::Live);
    assert!(enable(&mut q).is_success());
    // Re-authentication with the new key succeeds, and the queue serves throughout.
    let (last, _) = authenticate(&mut q, &new.host, None, 2);
    assert_eq!(last[1], msg::SUCCESS1);
    assert!(enable(&mut q).is_success());
    // With the old key it fails, and the queue goes.
    let (last, _) = authenticate(&mut q, &k.host, None, 3);
    assert_eq!(last[1], msg::FAILURE1);
    assert_eq!(q.state(), QueueState::Disconnecting);
    // Cleared keys: the host connects without authenticating.
    subsys.set_host_keys(HOST, None).unwrap();
    let (_, cqe) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    assert_eq!(cqe.dw0 & wire::AUTHREQ_ATR, 0);
}

#[test]
fn authentication_commands_check_their_fields() {
    let k = keys(DhGroup::Null, false);
    let t = target(&k);
    let (mut q, _) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    let data = [0u8; 72];
    let mut sqe = AuthCommand {
        spsp0: 1,
        spsp1: 1,
        secp: 0xEA,
        len: 72,
    }
    .to_sqe(fctype::AUTH_SEND, 3);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: 72,
        id: SGL_DATA_BLOCK_OFFSET,
    }
    .to_bytes();
    let (cqe, _) = run(&mut q, sqe, &data);
    assert_eq!(
        cqe.status,
        Status::generic(lightpool_spec::status::generic::INVALID_FIELD).with_dnr()
    );
    // TL disagreeing with the data sent.
    let mut sqe = AuthCommand {
        spsp0: 1,
        spsp1: 1,
        secp: wire::SECP_DHCHAP,
        len: 64,
    }
    .to_sqe(fctype::AUTH_SEND, 3);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: 72,
        id: SGL_DATA_BLOCK_OFFSET,
    }
    .to_bytes();
    let (cqe, _) = run(&mut q, sqe, &data);
    assert!(!cqe.status.is_success());
    assert!(q.is_authenticating());
}

#[test]
fn the_transaction_timeout_follows_the_keep_alive_timeout() {
    assert_eq!(auth_timeout(0), Duration::from_secs(120), "no KATO: 120 s");
    assert_eq!(auth_timeout(30_000), Duration::from_secs(30));
    assert_eq!(
        auth_timeout(5_000),
        AUTH_TIMEOUT_FLOOR,
        "never under the floor"
    );
}

#[test]
fn a_host_that_never_finishes_authenticating_has_its_queue_closed() {
    let k = keys(DhGroup::Null, false);
    let t = target(&k);
    // Connected (KATO 0: 120 s), never starts.
    let (mut idle, _) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    // Connected, sends a Negotiate, then stops after the Challenge.
    let (mut stalled, _) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    assert!(auth_send(&mut stalled, &negotiate(1)).is_success());
    assert_eq!(auth_recv(&mut stalled)[1], msg::CHALLENGE);
    // A host without a key beside them is not affected.
    let (mut other, _) = connect(&t, 0, CNTLID_DYNAMIC, OPEN_HOST);
    let now = Instant::now();
    for q in [&mut idle, &mut stalled, &mut other] {
        q.poll(now + Duration::from_secs(110));
        assert_eq!(q.state(), QueueState::Live, "not yet");
    }
    for q in [&mut idle, &mut stalled, &mut other] {
        q.poll(now + Duration::from_secs(125));
    }
    assert_eq!(idle.state(), QueueState::Disconnecting);
    assert_eq!(stalled.state(), QueueState::Disconnecting);
    assert_eq!(other.state(), QueueState::Live);
    assert!(enable(&mut other).is_success());
}

#[test]
fn a_stalled_reauthentication_is_forgotten_and_the_queue_keeps_serving() {
    let k = keys(DhGroup::Null, false);
    let t = target(&k);
    let (mut q, _) = connect(&t, 0, CNTLID_DYNAMIC, HOST);
    let (last, _) = authenticate(&mut q, &k.host, None, 1);
    assert_eq!(last[1], msg::SUCCESS1);
    assert!(enable(&mut q).is_success());
    // Authenticated: no deadline runs.
    q.poll(Instant::now() + Duration::from_secs(600));
    assert_eq!(q.state(), QueueState::Live);
    // Re-authentication starts and stalls after the Challenge.
    assert!(auth_send(&mut q, &negotiate(2)).is_success());
    assert_eq!(auth_recv(&mut q)[1], msg::CHALLENGE);
    q.poll(Instant::now() + Duration::from_secs(125));
    assert_eq!(q.state(), QueueState::Live, "the queue stays");
    assert!(!q.is_authenticating());
    // The host starts again, and that succeeds.
    let (last, _) = authenticate(&mut q, &k.host, None, 3);
    assert_eq!(last[1], msg::SUCCESS1);
    assert!(enable(&mut q).is_success());
}
