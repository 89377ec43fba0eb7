//! `lightpool target raid` against a running lightpool-target: a RAID1 made on two RAM
//! members, listed and shown (table and --json), a pool on it, a member failed (the
//! array and the pool say "degraded") and re-added, bad input with its exit codes.

mod common;
use common::*;

fn refused(t: &Target, args: &[&str], code: i32, want: &[&str]) {
    let o = lp(t, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{w:?} missing from {err}");
    }
}

#[test]
fn target_raid_arrays_and_their_members() {
    let t = start_with("raid", |_| Vec::new());
    let out = ok(
        &t,
        &[
            "target", "raid", "create", "md0", "--level", "raid1", "--ram", "16MiB", "--ram",
            "16MiB",
        ],
    );
    assert!(
        out.starts_with("array md0 (raid1): optimal, 15MiB"),
        "{out}"
    );
    let table = ok(&t, &["target", "raid", "list"]);
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("md0 ") && l.contains("raid1") && l.contains("optimal")),
        "{table}"
    );
    ok(&t, &["target", "pool", "create", "tank", "--bdev", "md0"]);
    let out = ok(&t, &["target", "raid", "fail", "md0", "#1"]);
    assert!(out.contains("degraded"), "{out}");
    let json = ok(&t, &["--json", "target", "pool", "show", "tank"]);
    let p: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(p["health"], "degraded");
    let json = ok(&t, &["--json", "target", "raid", "show", "md0"]);
    let r: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(r["members"][1]["state"], "faulty");
    assert_eq!(r["users"][0], "device tank");
    let show = ok(&t, &["target", "raid", "show", "md0"]);
    assert!(show.contains("slot 1") && show.contains("faulty"), "{show}");
    ok(&t, &["target", "raid", "readd", "md0", "#1"]);
    ok(&t, &["target", "raid", "rate", "md0", "0"]);
    // Refusals: by the target (1), by the command line (2).
    refused(
        &t,
        &["target", "raid", "delete", "md0"],
        1,
        &["in use", "device tank"],
    );
    refused(
        &t,
        &[
            "target", "raid", "create", "r5", "--level", "raid5", "--ram", "8MiB",
        ],
        1,
        &["level", "raid5"],
    );
    refused(
        &t,
        &["target", "raid", "show", "nope"],
        1,
        &["no array \"nope\""],
    );
    refused(&t, &["target", "raid", "create", "x"], 2, &["--level"]);
}
