//! `lightpool standalone` and `lightpool agent` as a user runs them, on this
//! machine: volumes created, refused, placed by their hints across two nodes,
//! deleted (pool volumes and subsystems gone); a node whose agent is killed is Unknown
//! within 15 s of the kill and gets no new volume, and Ready again when restarted; an
//! instance stopped and started serves the same volumes again; a snapshot of a
//! volume with data is taken in its node's pool, a volume restored from it holds
//! the data as it was, and the snapshot's delete waits for its clone to go.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lightpool_e2e::nvme_host::{pattern, HostController};

mod common;
use common::standalone::*;

/// Blocks of v1 written over NVMe/TCP, a snapshot taken and v1 written over
/// again: the snapshot is Ready and in node-a's pool, a volume restored from it
/// holds the first data, and the snapshot goes only once its clone has.
fn snapshot_restore_and_delete(s: &Setup, nqn: &str) {
    let pools = s.target_json("a", &["pool", "list"]);
    let bs = pools
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "node"))
        .and_then(|p| p["block_size"].as_u64())
        .expect("node-a's pool and its block size") as u32;
    let addr: SocketAddr = format!("127.0.0.1:{}", s.port_a).parse().unwrap();
    let lbas: Vec<u64> = (0..16).map(|i| i * 97).collect();
    let write = |h: &mut HostController, gen: u64| {
        let blocks: Vec<(u64, u64)> = lbas.iter().map(|l| (*l, gen)).collect();
        let ok = h.io[0].write_blocks(1, &blocks, bs).unwrap();
        assert!(ok.iter().all(|x| *x), "every write acknowledged: {ok:?}");
    };
    let holds = |h: &mut HostController, gen: u64, what: &str| {
        let got = h.io[0].read_blocks(1, &lbas, bs).unwrap();
        for (lba, data) in lbas.iter().zip(got) {
            assert!(
                data == pattern(*lba, gen, bs as usize),
                "{what} LBA {lba}: not round {gen}'s data"
            );
        }
    };
    let mut h = HostController::connect(addr, nqn, 1).unwrap();
    write(&mut h, 1);
    let out = s.ok(&["volume", "snapshot", "v1", "s1"]);
    assert!(
        out.contains("phase:     Ready") && out.contains("pool:      node-a (node node-a)"),
        "{out}"
    );
    write(&mut h, 2);
    // In node-a's target pool, as `lightpool target snapshot list` shows it.
    let snaps = s.target_json("a", &["snapshot", "list"]);
    let snap = snaps
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == "s1"))
        .unwrap_or_else(|| panic!("s1 not in node-a's pool: {snaps}"));
    assert_eq!(snap["snapshot"], true, "{snap}");
    assert_eq!(snap["size_bytes"], 64 << 20, "{snap}");
    let list = s.ok(&["snapshot", "list"]);
    let row = list.lines().find(|l| l.starts_with("s1 ")).unwrap_or("");
    assert!(
        row.contains("v1")
            && row.contains("Ready")
            && row.contains("64 MiB")
            && row.contains("node-a"),
        "{list}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&s.ok(&["snapshot", "show", "s1", "--json"])).unwrap();
    assert_eq!(shown["status"]["sizeBytes"], 64 << 20, "{shown}");
    assert!(shown["status"]["takenAt"].is_string(), "{shown}");
    assert!(shown["events"].to_string().contains("Taken"), "{shown}");
    let e = s.refused(&["volume", "snapshot", "v9", "s9"]);
    assert!(e.contains("does not exist"), "{e}");

    // Restored: a clone in the snapshot's pool, holding round 1; v1 holds round 2.
    let out = s.ok(&["volume", "create", "c1", "--from-snapshot", "s1"]);
    assert!(out.contains("volume:c1"), "{out}");
    assert_eq!(s.node_of("c1"), "node-a");
    let c1 = s.target_json("a", &["volume", "show", "node/c1"]);
    assert_eq!(c1["parent"], "s1", "{c1}");
    let mut hc = HostController::connect(addr, "nqn.2024-01.io.lightpool:volume:c1", 1).unwrap();
    holds(&mut hc, 1, "c1");
    holds(&mut h, 2, "v1");
    drop(hc);
    drop(h);

    // v1 and c1 depend on it: the pool refuses, and the command says why.
    let e = s.refused(&["snapshot", "delete", "s1", "--wait", "20"]);
    assert!(
        e.contains("cannot be deleted yet") && e.contains("c1"),
        "{e}"
    );
    let list = s.ok(&["snapshot", "list"]);
    assert!(list.contains("Deleting"), "{list}");
    // c1 goes: so does the snapshot, marked before.
    s.ok(&["volume", "delete", "c1"]);
    s.wait_for("s1 gone", 30, || {
        !s.ok(&["snapshot", "list"]).contains("s1 ")
    });
    let snaps = s.target_json("a", &["snapshot", "list"]);
    assert_eq!(snaps, serde_json::json!([]), "{snaps}");
    // Another, to outlive v1 (see the caller).
    s.ok(&["volume", "snapshot", "v1", "s2"]);
}

/// v1 grown from 64 to 96 MiB while a host is connected: the command returns once
/// the dataplane serves the new size, the host writes past the old end and reads
/// its data back, the old data stays; shrinking and growing past every pool are
/// refused with what to change.
fn grow_while_served(s: &Setup, nqn: &str) {
    let bs = s
        .target_json("a", &["pool", "list"])
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "node"))
        .and_then(|p| p["block_size"].as_u64())
        .expect("node-a's pool and its block size") as u32;
    let addr: SocketAddr = format!("127.0.0.1:{}", s.port_a).parse().unwrap();
    let old_end = (64u64 << 20) / u64::from(bs);
    let mut h = HostController::connect(addr, nqn, 1).unwrap();
    let ok = h.io[0].write_blocks(1, &[(7, 9)], bs).unwrap();
    assert_eq!(ok, [true]);

    let out = s.ok(&["volume", "resize", "v1", "--size", "96MiB"]);
    assert!(out.contains("serves:    96 MiB"), "{out}");
    let v = s.target_json("a", &["volume", "show", "node/v1"]);
    assert_eq!(v["size_bytes"], 96 << 20, "{v}");
    let ns: serde_json::Value = serde_json::from_str(&s.ok(&[
        "--json",
        "namespace",
        "list",
        "--socket",
        s.dir.join("a/target.api.sock").to_str().unwrap(),
    ]))
    .unwrap();
    let blocks = ns
        .as_array()
        .and_then(|l| l.iter().find(|n| n["nqn"] == nqn))
        .and_then(|n| n["num_blocks"].as_u64());
    assert_eq!(blocks, Some((96u64 << 20) / u64::from(bs)), "{ns}");
    // The connected host reaches the new blocks.
    let last = (96u64 << 20) / u64::from(bs) - 1;
    let ok = h.io[0]
        .write_blocks(1, &[(old_end, 9), (last, 9)], bs)
        .unwrap();
    assert_eq!(ok, [true, true], "writes past the old end");
    let got = h.io[0].read_blocks(1, &[7, old_end, last], bs).unwrap();
    for (lba, data) in [7, old_end, last].iter().zip(got) {
        assert!(data == pattern(*lba, 9, bs as usize), "LBA {lba}");
    }
    drop(h);
    let shown: serde_json::Value =
        serde_json::from_str(&s.ok(&["volume", "show", "v1", "--json"])).unwrap();
    assert_eq!(shown["status"]["capacityBytes"], 96 << 20, "{shown}");
    assert!(shown["events"].to_string().contains("Resized"), "{shown}");

    let e = s.refused(&["volume", "resize", "v1", "--size", "32MiB"]);
    assert!(
        e.contains("only grow") && e.contains("96 MiB or more"),
        "{e}"
    );
    let e = s.refused(&["volume", "expand", "v1", "--size", "100GiB"]);
    assert!(e.contains("larger than any pool"), "{e}");
    // Set back, it is valid again and still serves 96 MiB.
    let out = s.ok(&["volume", "resize", "v1", "--size", "96MiB"]);
    assert!(
        out.contains("serves:    96 MiB") && !out.contains("message"),
        "{out}"
    );
    let e = s.refused(&["volume", "resize", "nope", "--size", "1GiB"]);
    assert!(e.contains("does not exist"), "{e}");

    // A copy of v1 as it is now: a clone of an internal snapshot in v1's pool,
    // holding v1's data; the snapshot goes with the copy.
    let out = s.ok(&["volume", "create", "v1c", "--from-volume", "v1"]);
    assert!(out.contains("volume:v1c"), "{out}");
    assert_eq!(s.node_of("v1c"), "node-a");
    let c = s.target_json("a", &["volume", "show", "node/v1c"]);
    assert_eq!(
        (c["parent"].as_str(), c["size_bytes"].as_u64()),
        (Some("v1c_src"), Some(96 << 20)),
        "{c}"
    );
    let mut hc = HostController::connect(addr, "nqn.2024-01.io.lightpool:volume:v1c", 1).unwrap();
    let got = hc.io[0].read_blocks(1, &[7, last], bs).unwrap();
    for (lba, data) in [7, last].iter().zip(got) {
        assert!(
            data == pattern(*lba, 9, bs as usize),
            "the copy's LBA {lba}"
        );
    }
    drop(hc);
    let e = s.refused(&["volume", "create", "v1d", "--from-volume", "nope"]);
    assert!(e.contains("does not exist"), "{e}");
    s.ok(&["volume", "delete", "v1c"]);
    let snaps = s.target_json("a", &["snapshot", "list"]);
    assert!(
        !snaps.to_string().contains("v1c_src"),
        "the internal snapshot went with the copy: {snaps}"
    );
}

#[test]
fn standalone_volumes_two_nodes_heartbeats_and_a_restart() {
    let s = Setup::new("standalone");
    let mut a = s.standalone();

    // A volume: created, served, the connect line printed.
    let out = s.ok(&["volume", "create", "v1", "--size", "64MiB"]);
    let nqn = "nqn.2024-01.io.lightpool:volume:v1";
    assert!(
        out.contains(&format!(
            "nvme connect -t tcp -a 127.0.0.1 -s {} -n {nqn}",
            s.port_a
        )),
        "{out}"
    );
    // A volume of the node's pool (one of the target's own pools, on a sparse file).
    assert!(s.dir.join("a/pool/pool.img").exists());
    let v = s.target_json("a", &["volume", "show", "node/v1"]);
    assert_eq!(v["size_bytes"], 64 << 20);
    assert_eq!(
        v["namespaces"],
        serde_json::json!(["nqn.2024-01.io.lightpool:volume:v1/1"])
    );
    let subs = s.ok(&[
        "subsystem",
        "list",
        "--socket",
        s.dir.join("a/target.api.sock").to_str().unwrap(),
    ]);
    assert!(subs.contains(nqn), "{subs}");
    // The namespace carries the UUID the volume's status gives hosts.
    let shown: serde_json::Value =
        serde_json::from_str(&s.ok(&["volume", "show", "v1", "--json"])).unwrap();
    let uuid = shown["status"]["target"]["uuid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(uuid.len(), 36, "{shown}");
    let ns = s.ok(&[
        "--json",
        "namespace",
        "list",
        "--socket",
        s.dir.join("a/target.api.sock").to_str().unwrap(),
    ]);
    assert!(
        ns.contains(&format!("\"uuid\": \"{uuid}\"")),
        "{uuid} not in {ns}"
    );

    snapshot_restore_and_delete(&s, nqn);
    grow_while_served(&s, nqn);

    // Refusals say what to change, and make nothing.
    let e = s.refused(&["volume", "create", "big", "--size", "100GiB"]);
    assert!(
        e.contains("larger than any pool") && e.contains("ask for at most"),
        "{e}"
    );
    let e = s.refused(&["volume", "create", "v1", "--size", "64MiB"]);
    assert!(e.contains("exists"), "{e}");
    let e = s.refused(&["volume", "create", "zero", "--size", "0"]);
    assert!(e.contains("spec.size"), "{e}");
    let e = s.refused(&["volume", "show", "nope"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = s.refused(&[
        "volume",
        "create",
        "m",
        "--size",
        "1MiB",
        "--placement",
        "must-remote",
        "--consumer",
        "node-a",
        "--wait",
        "5",
    ]);
    assert!(
        e.contains("node-a") && e.contains("MustRemote"),
        "no other node yet: {e}"
    );
    // The refusal is an event that `volume show` prints.
    let show = s.ok(&["volume", "show", "m"]);
    assert!(
        show.contains("events:")
            && show.contains("Warning  NoPoolFits")
            && show.contains("MustRemote"),
        "{show}"
    );
    s.ok(&["volume", "delete", "m"]);
    s.ok(&["volume", "delete", "big"]);
    assert!(!s.target_volumes("a").contains("node/big "));

    // A second node joins; hints place volumes on one or the other.
    let port_b = free_port();
    let mut b = s.agent(port_b);
    s.wait_for("node-b Ready", 90, || s.health("node-b") == "Ready");
    let nodes = s.ok(&["node", "list"]);
    assert!(
        nodes.contains("node-a") && nodes.contains("node-b"),
        "{nodes}"
    );
    s.ok(&[
        "volume",
        "create",
        "r1",
        "--size",
        "16MiB",
        "--placement",
        "must-remote",
        "--consumer",
        "node-a",
    ]);
    s.ok(&[
        "volume",
        "create",
        "l1",
        "--size",
        "16MiB",
        "--placement",
        "must-local",
        "--consumer",
        "node-b",
    ]);
    s.ok(&[
        "volume",
        "create",
        "p1",
        "--size",
        "16MiB",
        "--placement",
        "prefer-local",
        "--consumer",
        "node-a",
    ]);
    assert_eq!(s.node_of("r1"), "node-b");
    assert_eq!(s.node_of("l1"), "node-b");
    assert_eq!(s.node_of("p1"), "node-a");
    assert!(s.target_volumes("b").contains("node/r1 "));
    let show = s.ok(&["volume", "show", "r1"]);
    assert!(
        show.contains(&format!(
            "-s {port_b} -n nqn.2024-01.io.lightpool:volume:r1"
        )),
        "{show}"
    );
    assert!(
        show.contains("Normal   Placed")
            && show.contains("placed on pool node-b of node node-b (remote)"),
        "{show}"
    );

    // Deleted: the pool volume and subsystem go; its snapshot stays, Ready, to
    // restore from.
    s.ok(&["volume", "delete", "v1"]);
    assert!(!s.target_volumes("a").contains("node/v1 "));
    let snaps = s.target_json("a", &["snapshot", "list"]);
    assert!(snaps.to_string().contains("\"s2\""), "{snaps}");
    let list = s.ok(&["snapshot", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("s2 ") && l.contains("Ready")),
        "{list}"
    );
    s.ok(&["volume", "create", "c2", "--from-snapshot", "s2"]);
    assert_eq!(s.node_of("c2"), "node-a");
    let subs = s.ok(&[
        "subsystem",
        "list",
        "--socket",
        s.dir.join("a/target.api.sock").to_str().unwrap(),
    ]);
    assert!(!subs.contains(nqn), "{subs}");

    // node-b's agent killed: Unknown within 15 s of the kill (14 s of silence,
    // looked at every 250 ms), and nothing new lands there.
    let killed = Instant::now();
    b.kill_hard();
    s.wait_for("node-b Unknown", 20, || s.health("node-b") == "Unknown");
    let took = killed.elapsed();
    eprintln!("node-b Unknown {took:?} after its agent was killed");
    assert!(
        took <= Duration::from_secs(15),
        "Unknown {took:?} after the kill"
    );
    s.ok(&[
        "volume",
        "create",
        "p2",
        "--size",
        "16MiB",
        "--placement",
        "prefer-remote",
        "--consumer",
        "node-a",
    ]);
    assert_eq!(s.node_of("p2"), "node-a", "not on the Unknown node");
    let e = s.refused(&[
        "volume",
        "create",
        "r2",
        "--size",
        "16MiB",
        "--placement",
        "must-remote",
        "--consumer",
        "node-a",
        "--wait",
        "3",
    ]);
    assert!(e.contains("node-b"), "{e}");
    // Restarted: Ready again, and r2 lands there; r1 is served by the new target.
    let _b = s.agent(port_b);
    s.wait_for("node-b Ready again", 30, || s.health("node-b") == "Ready");
    s.wait_for("r2 placed", 30, || s.node_of("r2") == "node-b");
    let subs = s.ok(&[
        "subsystem",
        "list",
        "--socket",
        s.dir.join("b/target.api.sock").to_str().unwrap(),
    ]);
    assert!(
        subs.contains("volume:r1") && subs.contains("volume:l1"),
        "{subs}"
    );

    // The instance stopped and started: the same volumes served again.
    a.stop();
    let _a = s.standalone();
    s.wait_for("p1 served again", 30, || {
        let o = s.lp(&[
            "subsystem",
            "list",
            "--socket",
            s.dir.join("a/target.api.sock").to_str().unwrap(),
        ]);
        String::from_utf8_lossy(&o.stdout).contains("volume:p1")
    });
    let list = s.ok(&["volume", "list"]);
    for v in ["r1", "l1", "p1", "p2", "r2", "c2"] {
        assert!(list.contains(v), "{list}");
    }
}
