//! Live migration's faults through the real daemons: node-a (`lightpool standalone`:
//! the store and the controller) and two nodes that only serve, node-b and node-c
//! (`lightpool agent`, each with its own lightpool-target), so that node-a can die
//! without either side of the migration dying with it. v1 moves from node-b to
//! node-c while the project's NVMe/TCP host writes through node-b:
//! - node-a killed outright (SIGKILL) mid-copy and started again: the migration
//!   resumes where it was and succeeds; every block read back through node-c holds its
//!   last acknowledged write, node-b keeps nothing;
//! - the network between the targets cut mid-copy (node-c tells the others to reach
//!   it through a shim, which then drops every connection and refuses new ones): the
//!   migration rolls back, node-b serves on (every acknowledged write read back
//!   through it), node-c keeps nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lightpool_e2e::netshim::{Mode, NetShim};
use lightpool_e2e::nvme_host::{pattern, HostController};

mod common;
use common::standalone::*;
use common::writes::{verify, writer, Written, NQN};

const PIPE: &str = "nqn.2024-01.io.lightpool:migration:v1";

/// The tests here run one at a time: each runs three nodes' daemons, a writer and a
/// copy, and on a small machine (2 vCPUs shared with builds) three at once starved
/// the targets until a mirrored write timed out (Io(110)) and a migration that
/// should resume rolled back.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The block size of node `node`'s pool.
fn block_size(s: &Setup, node: &str) -> u32 {
    s.target_json(node, &["pool", "list"])
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "node"))
        .and_then(|p| p["block_size"].as_u64())
        .expect("the node's pool and its block size") as u32
}

fn subsystems(s: &Setup, node: &str) -> String {
    s.ok(&[
        "subsystem",
        "list",
        "--socket",
        s.dir.join(node).join("target.api.sock").to_str().unwrap(),
    ])
}

/// v1 (128 MiB) on node-b, 64 blocks spread over it.
fn volume_on_b(s: &Setup) -> (u32, Vec<u64>) {
    s.wait_for("node-b and node-c Ready", 90, || {
        s.health("node-b") == "Ready" && s.health("node-c") == "Ready"
    });
    s.ok(&[
        "volume",
        "create",
        "v1",
        "--size",
        "128MiB",
        "--consumer",
        "node-b",
    ]);
    assert_eq!(s.node_of("v1"), "node-b");
    let bs = block_size(s, "b");
    let blocks = (128u64 << 20) / u64::from(bs);
    (bs, (0..64).map(|i| i * (blocks / 64) + i % 5).collect())
}

/// Starts moving v1 to node-c, the copy slowed down, and waits until it is under way.
fn start_copy(s: &Setup) {
    s.ok(&[
        "volume",
        "migrate",
        "v1",
        "--to",
        "node-c",
        "--rate-limit",
        "8MiB",
    ]);
    let last = std::cell::RefCell::new(String::new());
    s.wait_for("the copy under way", 60, || {
        let st = s.ok(&["volume", "migrate", "status", "v1"]);
        if *last.borrow() != st {
            eprintln!("{st}");
            *last.borrow_mut() = st.clone();
        }
        st.contains("Syncing") && st.contains('%') && !st.contains(" 0.0%")
    });
}

#[test]
fn a_migration_resumes_after_its_controller_is_killed() {
    let _one = one_at_a_time();
    let s = Setup::new("migrate-ctl");
    let mut a = s.standalone();
    let (pb, pc) = (free_port(), free_port());
    let _b = s.agent_as("b", pb, None);
    let _c = s.agent_as("c", pc, None);
    let (bs, lbas) = volume_on_b(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(addr(pb), lbas, bs, 1, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    start_copy(&s);

    // The controller (and the store with it) dies outright mid-copy; the source's
    // target copies on meanwhile.
    a.kill_hard();
    std::thread::sleep(Duration::from_secs(2));
    let _a = s.standalone();
    s.wait_for("the migration resumed and succeeded", 180, || {
        let st = s.ok(&["volume", "migrate", "status", "v1"]);
        assert!(
            !st.contains("Failed") && !st.contains("RollingBack"),
            "{st}"
        );
        st.contains("Succeeded")
    });
    stop.store(true, Ordering::Relaxed);
    let written = w.join().expect("writer");
    assert!(
        written.writes > 64,
        "the writer kept writing: {}",
        written.writes
    );
    verify(addr(pc), &written, bs, "after the controller's restart");
    assert_eq!(s.node_of("v1"), "node-c");
    s.wait_for("node-b keeps nothing", 30, || {
        !s.target_volumes("b").contains("node/v1 ")
    });
    assert!(!subsystems(&s, "b").contains(NQN));
    let subs_c = subsystems(&s, "c");
    assert!(subs_c.contains(NQN) && !subs_c.contains(PIPE), "{subs_c}");
}

#[test]
fn a_cut_between_the_targets_rolls_the_migration_back() {
    let _one = one_at_a_time();
    let s = Setup::new("migrate-cut");
    let _a = s.standalone();
    let (pb, pc) = (free_port(), free_port());
    // node-c is reached through the shim: the source's copy and mirror go through it.
    let shim = NetShim::start(addr(pc)).expect("shim");
    let _b = s.agent_as("b", pb, None);
    let _c = s.agent_as("c", pc, Some(shim.addr));
    let (bs, lbas) = volume_on_b(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(addr(pb), lbas, bs, 1, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    start_copy(&s);

    shim.set(Mode::Partition);
    s.wait_for("rolled back", 90, || {
        s.ok(&["volume", "migrate", "status", "v1"])
            .contains("Failed")
    });
    let st = s.ok(&["volume", "migrate", "status", "v1"]);
    assert!(
        st.contains("rolled back: volume v1 stays on node node-b"),
        "{st}"
    );
    assert_eq!(s.node_of("v1"), "node-b");
    // The writer wrote on through node-b all along: it stops only when a path
    // refuses it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w.is_finished(), "the writer was refused");
    stop.store(true, Ordering::Relaxed);
    let written = w.join().expect("writer");
    assert!(written.unknown.is_empty(), "a write went unanswered");
    verify(addr(pb), &written, bs, "node-b after the roll-back");
    let mut h = HostController::connect(addr(pb), NQN, 1).unwrap();
    assert_eq!(
        h.io[0].write_blocks(1, &[(3, 77)], bs).unwrap(),
        [true],
        "node-b serves on"
    );
    assert!(h.io[0].read_blocks(1, &[3], bs).unwrap()[0] == pattern(3, 77, bs as usize));
    drop(h);
    s.wait_for("node-c keeps nothing", 60, || {
        !s.target_volumes("c").contains("node/v1 ")
    });
    let subs_c = subsystems(&s, "c");
    assert!(!subs_c.contains(NQN) && !subs_c.contains(PIPE), "{subs_c}");
}

/// The VolumeMigration of v1 as `lightpool volume migrate status --json` prints it.
fn migration(s: &Setup) -> serde_json::Value {
    serde_json::from_str(&s.ok(&["volume", "migrate", "status", "v1", "--json"])).unwrap()
}

/// The migration's condition `type_`, as (status, reason, message).
fn condition(m: &serde_json::Value, type_: &str) -> Option<(String, String, String)> {
    let c = m["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

#[test]
fn a_source_killed_after_the_switch_does_not_fail_the_migration() {
    let _one = one_at_a_time();
    let s = Setup::new("migrate-src");
    let _a = s.standalone();
    let (pb, pc) = (free_port(), free_port());
    let mut b = s.agent_as("b", pb, None);
    let _c = s.agent_as("c", pc, None);
    let (bs, lbas) = volume_on_b(&s);
    // A host that has not dropped its path to node-b yet (its keep-alives keep its
    // controller there): node-b's Cleaning waits for it (up to the agent's
    // HOST_PATH_WAIT, 30 s), the window node-b dies in.
    let hold = Arc::new(AtomicBool::new(true));
    let mut h = HostController::connect(addr(pb), NQN, 1).expect("connect the holder");
    let holder = {
        let hold = hold.clone();
        std::thread::spawn(move || {
            while hold.load(Ordering::Relaxed) {
                let _ = h.keep_alive();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let w1 = writer(addr(pb), lbas.clone(), bs, 1, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    start_copy(&s);

    // The switch: node-b refuses the writer (ANA inaccessible) only once node-c
    // serves; the host goes on through node-c, as its multipath would.
    s.wait_for("node-b refuses the writer at the switch", 120, || {
        w1.is_finished()
    });
    let before = w1.join().expect("writer on node-b");
    assert!(before.unknown.is_empty(), "a write went unanswered");
    assert!(before.writes > 64, "the writer wrote: {}", before.writes);
    let w2 = writer(addr(pc), lbas, bs, 1_000_000, stop.clone());
    s.wait_for("Cleaning", 30, || {
        migration(&s)["status"]["phase"] == "Cleaning"
    });
    let m = migration(&s);
    assert_ne!(
        m["status"]["source"]["done"], "Cleaning",
        "node-b still owes its clean-up: {m}"
    );
    assert!(subsystems(&s, "b").contains(NQN));

    // node-b dies outright: its agent and its target.
    b.kill_hard();
    let killed = Instant::now();
    hold.store(false, Ordering::Relaxed);
    holder.join().expect("holder");
    s.wait_for("the migration succeeded without node-b", 60, || {
        let m = migration(&s);
        let phase = m["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(phase != "Failed" && phase != "RollingBack", "{m}");
        phase == "Succeeded"
    });
    eprintln!(
        "succeeded {:.1} s after node-b was killed",
        killed.elapsed().as_secs_f64()
    );
    let m = migration(&s);
    let msg = m["status"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("node node-b does not answer and deletes its copy when it does"),
        "{m}"
    );
    let (st, reason, why) = condition(&m, "SourceCleaned").expect("condition SourceCleaned");
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "SourceAway"),
        "{m}"
    );
    assert!(why.contains("node-b"), "{why}");
    assert_eq!(s.node_of("v1"), "node-c");
    let subs_c = subsystems(&s, "c");
    assert!(subs_c.contains(NQN) && !subs_c.contains(PIPE), "{subs_c}");

    // The host wrote on through node-c all along.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!w2.is_finished(), "node-c refused the writer");
    stop.store(true, Ordering::Relaxed);
    let after = w2.join().expect("writer on node-c");
    assert!(after.unknown.is_empty(), "a write went unanswered");
    assert!(after.writes > 64, "the writer wrote on: {}", after.writes);
    let mut written = Written {
        writes: before.writes + after.writes,
        ..before
    };
    written.acked.extend(after.acked);
    verify(addr(pc), &written, bs, "node-c after node-b died");

    // node-b returns: it serves nothing of v1 and deletes its stale copy.
    let _b = s.agent_as("b", pb, None);
    s.wait_for("node-b Ready again", 60, || s.health("node-b") == "Ready");
    s.wait_for("node-b deleted its copy", 60, || {
        let o = s.lp(&[
            "--socket",
            s.dir.join("b/target.api.sock").to_str().unwrap(),
            "target",
            "volume",
            "list",
        ]);
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("node/v1 ")
    });
    assert!(!subsystems(&s, "b").contains(NQN));
    assert!(
        HostController::connect(addr(pb), NQN, 1).is_err(),
        "node-b serves its stale copy"
    );
    let m = migration(&s);
    assert_eq!(m["status"]["source"]["done"], "Cleaning", "{m}");
    let (st, reason, _) = condition(&m, "SourceCleaned").expect("condition SourceCleaned");
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Cleaned"), "{m}");
    assert_eq!(s.node_of("v1"), "node-c");
    verify(addr(pc), &written, bs, "node-c after node-b returned");
}
