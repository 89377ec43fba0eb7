//! Live migration between two real nodes on this machine (node-a: `lightpool
//! standalone`; node-b: `lightpool agent`, each with its own lightpool-target),
//! driven as a user does with `lightpool volume migrate` and `lightpool node drain`,
//! while the project's own NVMe/TCP host (lightpool-e2e's nvme_host) writes:
//! - v1 moves to node-b under writes through node-a's path: every block read back
//!   through node-b holds its last acknowledged write; node-a keeps nothing (pool
//!   volume, subsystem); node-b serves the same NQN and namespace UUID, and the pipe
//!   is gone; the progress lines show phase, percent, MiB/s, dirty bytes and ETA;
//! - and back to node-a under writes through node-b's path, verified through node-a;
//! - node-b's target killed mid-copy (a rate-limited copy): the migration Failed and
//!   rolled back, node-a serves on, and node-b, restarted, removes what it had made;
//! - refusals (its own node, an unknown node, no room, snapshots, already migrating)
//!   say what to change; `node drain` cordons node-a and moves every volume off it
//!   (a new volume lands on node-b until `node uncordon`).
//!
//! The controller restarted mid-migration is shown over in-memory dataplanes
//! (`controlplane/controller/tests/migrations.rs`): here node-a's controller runs in
//! the same process as node-a's target, so restarting one restarts the other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lightpool_e2e::nvme_host::{pattern, HostController};

mod common;
use common::standalone::*;
use common::writes::{verify, writer, NQN};

const PIPE: &str = "nqn.2024-01.io.lightpool:migration:v1";

fn block_size(s: &Setup) -> u32 {
    s.target_json("a", &["pool", "list"])
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "node"))
        .and_then(|p| p["block_size"].as_u64())
        .expect("node-a's pool and its block size") as u32
}

fn subsystems(s: &Setup, node: &str) -> String {
    s.ok(&[
        "subsystem",
        "list",
        "--socket",
        s.dir.join(node).join("target.api.sock").to_str().unwrap(),
    ])
}

/// Migrates v1 to `to` with `lightpool volume migrate --wait` while a writer
/// writes through `from_addr`; verifies through `to_addr`.
fn migrate_under_writes(
    s: &Setup,
    to: &str,
    from_addr: SocketAddr,
    to_addr: SocketAddr,
    gen: u64,
) -> String {
    let bs = block_size(s);
    // 64 blocks spread over the 256 MiB volume.
    let blocks = (256u64 << 20) / u64::from(bs);
    let lbas: Vec<u64> = (0..64).map(|i| i * (blocks / 64) + i % 7).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(from_addr, lbas, bs, gen, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let out = s.ok(&["volume", "migrate", "v1", "--to", to, "--wait", "120"]);
    stop.store(true, Ordering::Relaxed);
    let written = w.join().expect("writer");
    eprintln!(
        "{out}\n{} writes acknowledged during the migration to {to}",
        written.writes
    );
    assert!(
        written.writes > 64,
        "the writer kept writing: {}",
        written.writes
    );
    verify(to_addr, &written, bs, &format!("after the move to {to}"));
    out
}

#[test]
fn a_volume_moves_between_two_real_nodes_under_writes() {
    let s = Setup::new("migrate");
    let _a = s.standalone();
    let port_b = free_port();
    let mut b = s.agent(port_b);
    s.wait_for("node-b Ready", 90, || s.health("node-b") == "Ready");
    let addr_a: SocketAddr = format!("127.0.0.1:{}", s.port_a).parse().unwrap();
    let addr_b: SocketAddr = format!("127.0.0.1:{port_b}").parse().unwrap();
    s.ok(&[
        "volume",
        "create",
        "v1",
        "--size",
        "256MiB",
        "--consumer",
        "node-a",
    ]);
    assert_eq!(s.node_of("v1"), "node-a");
    let shown: serde_json::Value =
        serde_json::from_str(&s.ok(&["volume", "show", "v1", "--json"])).unwrap();
    let uuid = shown["status"]["target"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();

    // To node-b, under writes through node-a.
    let out = migrate_under_writes(&s, "node-b", addr_a, addr_b, 1);
    for phase in ["Syncing", "Succeeded"] {
        assert!(out.contains(phase), "{phase} not in {out}");
    }
    assert!(
        out.contains("MiB/s") && out.contains("dirty") && out.contains('%'),
        "{out}"
    );
    assert_eq!(s.node_of("v1"), "node-b");
    let shown: serde_json::Value =
        serde_json::from_str(&s.ok(&["volume", "show", "v1", "--json"])).unwrap();
    let paths = shown["status"]["target"]["paths"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(paths.len(), 1, "{shown}");
    assert_eq!(paths[0]["trsvcid"], port_b, "{shown}");
    assert_eq!(
        shown["status"]["target"]["uuid"],
        uuid.as_str(),
        "the same namespace UUID"
    );
    assert!(
        !s.target_volumes("a").contains("node/v1 "),
        "node-a keeps nothing"
    );
    assert!(!subsystems(&s, "a").contains(NQN));
    assert!(s.target_volumes("b").contains("node/v1 "));
    let subs_b = subsystems(&s, "b");
    assert!(subs_b.contains(NQN) && !subs_b.contains(PIPE), "{subs_b}");
    let ns = s.ok(&[
        "--json",
        "namespace",
        "list",
        "--socket",
        s.dir.join("b/target.api.sock").to_str().unwrap(),
    ]);
    assert!(
        ns.contains(&uuid),
        "node-b's namespace carries the volume's UUID: {ns}"
    );
    let list = s.ok(&["volume", "migrate", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("v1") && l.contains("Succeeded") && l.contains("100%")),
        "{list}"
    );

    // And back, under writes through node-b.
    migrate_under_writes(&s, "node-a", addr_b, addr_a, 1000);
    assert_eq!(s.node_of("v1"), "node-a");
    assert!(
        !s.target_volumes("b").contains("node/v1 "),
        "node-b keeps nothing"
    );

    // Refusals say what to change.
    let e = s.refused(&["volume", "migrate", "v1", "--to", "node-a", "--wait", "30"]);
    assert!(
        e.contains("lives on node node-a already: name another node"),
        "{e}"
    );
    let e = s.refused(&["volume", "migrate", "v1", "--to", "node-z", "--wait", "30"]);
    assert!(
        e.contains("there is no node node-z with a pool: name one of node-b"),
        "{e}"
    );
    s.ok(&[
        "volume",
        "create",
        "fat",
        "--size",
        "900MiB",
        "--consumer",
        "node-b",
        "--placement",
        "must-local",
    ]);
    let e = s.refused(&["volume", "migrate", "v1", "--to", "node-b", "--wait", "30"]);
    assert!(e.contains("no node can take volume v1"), "{e}");
    s.ok(&["volume", "delete", "fat"]);
    s.ok(&["volume", "snapshot", "v1", "s1"]);
    let e = s.refused(&["volume", "migrate", "v1", "--to", "node-b", "--wait", "30"]);
    assert!(
        e.contains("volume v1 has snapshots (s1)") && e.contains("delete them first"),
        "{e}"
    );
    s.ok(&["snapshot", "delete", "s1"]);

    // node-b's target dies mid-copy: rolled back, node-a serves on, and node-b
    // restarted removes what it had made.
    s.ok(&[
        "volume",
        "migrate",
        "v1",
        "--to",
        "node-b",
        "--rate-limit",
        "4MiB",
    ]);
    let e = s.refused(&["volume", "migrate", "v1", "--to", "node-b"]);
    assert!(
        e.contains("already migrating") && e.contains("migrate cancel v1"),
        "{e}"
    );
    s.wait_for("the copy under way", 60, || {
        let st = s.ok(&["volume", "migrate", "status", "v1"]);
        st.contains("Syncing") && st.contains('%') && !st.contains(" 0.0%")
    });
    b.kill_hard();
    s.wait_for("rolled back", 60, || {
        s.ok(&["volume", "migrate", "status", "v1"])
            .contains("Failed")
    });
    let st = s.ok(&["volume", "migrate", "status", "v1"]);
    assert!(
        st.contains("rolled back: volume v1 stays on node node-a"),
        "{st}"
    );
    assert_eq!(s.node_of("v1"), "node-a");
    let bs = block_size(&s);
    let mut h = HostController::connect(addr_a, NQN, 1).unwrap();
    assert_eq!(
        h.io[0].write_blocks(1, &[(3, 77)], bs).unwrap(),
        [true],
        "node-a serves on"
    );
    assert!(h.io[0].read_blocks(1, &[3], bs).unwrap()[0] == pattern(3, 77, bs as usize));
    drop(h);
    let _b = s.agent(port_b);
    s.wait_for("node-b Ready again", 30, || s.health("node-b") == "Ready");
    s.wait_for("node-b's leftovers removed", 30, || {
        !s.target_volumes("b").contains("node/v1 ")
    });
    let subs_b = subsystems(&s, "b");
    assert!(!subs_b.contains(NQN) && !subs_b.contains(PIPE), "{subs_b}");

    // A drain moves every volume off node-a.
    s.ok(&[
        "volume",
        "create",
        "v2",
        "--size",
        "16MiB",
        "--consumer",
        "node-a",
    ]);
    let out = s.ok(&[
        "node",
        "drain",
        "node-a",
        "--parallel",
        "2",
        "--wait",
        "120",
    ]);
    assert!(
        out.contains("node node-a drained: 2 volume(s) moved"),
        "{out}"
    );
    assert_eq!(
        (s.node_of("v1"), s.node_of("v2")),
        ("node-b".into(), "node-b".into())
    );
    assert!(
        !s.target_volumes("a").contains("node/v"),
        "{}",
        s.target_volumes("a")
    );
    // The drain cordoned node-a: a volume its consumer would have there lands
    // elsewhere, until it is uncordoned.
    assert!(out.contains("node node-a cordoned"), "{out}");
    s.ok(&[
        "volume",
        "create",
        "v3",
        "--size",
        "16MiB",
        "--consumer",
        "node-a",
    ]);
    assert_eq!(s.node_of("v3"), "node-b", "a cordoned node takes nothing");
    s.ok(&["node", "uncordon", "node-a"]);
    s.ok(&[
        "volume",
        "create",
        "v4",
        "--size",
        "16MiB",
        "--consumer",
        "node-a",
    ]);
    assert_eq!(
        s.node_of("v4"),
        "node-a",
        "uncordoned, it takes volumes again"
    );
}
