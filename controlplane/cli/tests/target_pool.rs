//! `lightpool target pool|volume|snapshot` against a running lightpool-target: a pool
//! made, volumes, a snapshot and a clone, a volume served by `namespace add --volume`,
//! tables and --json, and the exit codes (1 refused by the target, 2 bad usage).

mod common;
use common::*;

/// Refused by the target: exit 1, its message on stderr.
fn refused(t: &Target, args: &[&str], want: &[&str]) {
    let o = lp(t, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{w:?} missing from {err}");
    }
}

const NQN: &str = "nqn.2024-01.io.lightpool:default";

#[test]
fn target_pools_volumes_and_snapshots() {
    let t = start_with("pool", |_| Vec::new());
    let help = ok(&t, &["target", "--help"]);
    assert!(help.contains("pool") && help.contains("snapshot"), "{help}");
    ok(&t, &["bdev", "create", "d0", "--ram", "64MiB"]);
    let out = ok(
        &t,
        &[
            "target",
            "pool",
            "create",
            "p0",
            "--bdev",
            "d0",
            "--overcommit",
            "150",
        ],
    );
    assert!(out.contains("pool p0 on d0 (created)"), "{out}");
    let table = ok(&t, &["target", "pool", "list"]);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("p0 ") && l.contains("(150%)")),
        "{table}"
    );
    ok(
        &t,
        &["target", "volume", "create", "p0/v1", "--size", "16MiB"],
    );
    ok(
        &t,
        &[
            "target", "volume", "create", "p0/v2", "--size", "4MiB", "--thick",
        ],
    );
    let json = ok(&t, &["--json", "target", "pool", "show", "p0"]);
    let p: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(p["volumes"], 2);
    assert_eq!(p["allocated_bytes"], 4 << 20);
    ok(&t, &["namespace", "add", "--nqn", NQN, "--volume", "p0/v1"]);
    let table = ok(&t, &["target", "volume", "list"]);
    assert!(
        table.lines().any(|l| l.starts_with("p0/v1 ")
            && l.contains("thin")
            && l.contains(&format!("{NQN}/2"))),
        "{table}"
    );
    ok(&t, &["target", "volume", "snapshot", "p0/v1", "s1"]);
    ok(&t, &["target", "volume", "clone", "p0/s1", "c1"]);
    let snaps = ok(&t, &["--json", "target", "snapshot", "list", "p0"]);
    let s: serde_json::Value = serde_json::from_str(&snaps).expect("json");
    assert_eq!(s[0]["name"], "s1");
    assert_eq!(s[0]["clones"], serde_json::json!(["v1", "c1"]));
    ok(&t, &["target", "volume", "grow", "p0/v2", "--size", "8MiB"]);
    ok(&t, &["target", "volume", "rename", "p0/v2", "v3"]);
    ok(&t, &["target", "volume", "inflate", "p0/c1"]);
    assert!(ok(&t, &["target", "pool", "check", "p0"]).contains("pool p0: ok (4 volumes"));

    // Refused by the target: 1.
    refused(
        &t,
        &["target", "volume", "delete", "p0/v1"],
        &["served by namespace", "FailedPrecondition"],
    );
    refused(
        &t,
        &["target", "pool", "delete", "p0"],
        &["v1 by namespace", "FailedPrecondition"],
    );
    refused(
        &t,
        &["target", "volume", "create", "p0/big", "--size", "1GiB"],
        &["over-commit limit", "ResourceExhausted"],
    );
    refused(
        &t,
        &["target", "pool", "show", "nope"],
        &["no pool", "NotFound"],
    );
    // Bad usage: 2.
    for args in [
        &["target", "volume", "create", "v1", "--size", "1MiB"][..],
        &["target", "volume", "create", "p0/v9", "--size", "1GB"],
        &["target", "pool", "create", "p1"],
        &[
            "target", "pool", "create", "p1", "--bdev", "d0", "--ram", "1MiB",
        ],
        &["namespace", "add", "--nqn", NQN],
    ] {
        assert_eq!(lp(&t, args).status.code(), Some(2), "{args:?}");
    }

    ok(&t, &["namespace", "remove", "--nqn", NQN, "--nsid", "2"]);
    ok(&t, &["target", "volume", "delete", "p0/v1"]);
    ok(&t, &["target", "snapshot", "delete", "p0/s1"]);
    let left = ok(&t, &["--json", "target", "volume", "list", "p0", "--all"]);
    let v: serde_json::Value = serde_json::from_str(&left).expect("json");
    let names: Vec<&str> = v
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["c1", "v3"]);
    ok(&t, &["target", "pool", "delete", "p0"]);
    let out = ok(
        &t,
        &["target", "pool", "create", "p0", "--bdev", "d0", "--import"],
    );
    assert!(
        out.contains("(clean)") && out.contains("2 volumes"),
        "{out}"
    );
}
