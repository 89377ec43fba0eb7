//! `lightpool target migrate` against a running lightpool-target: the listing, and the
//! refusals with their exit codes (the migration itself: dataplane/daemon/tests/
//! api_migrate.rs, two targets).

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
fn target_migrate_lists_and_refuses() {
    let t = start_with("migrate", |_| Vec::new());
    let table = ok(&t, &["target", "migrate", "list"]);
    assert!(table.starts_with("NAMESPACE "), "{table}");
    assert_eq!(
        ok(&t, &["--json", "target", "migrate", "list"]).trim(),
        "[]"
    );
    let nqn = "nqn.2024-01.io.lightpool:default";
    refused(
        &t,
        &["target", "migrate", "status", "--nqn", nqn, "--nsid", "1"],
        1,
        &["not being migrated"],
    );
    refused(
        &t,
        &[
            "target", "migrate", "start", "--nqn", nqn, "--nsid", "1", "--to", "nowhere",
        ],
        1,
        &["HOST:PORT"],
    );
    refused(
        &t,
        &["target", "migrate", "start", "--nqn", nqn],
        2,
        &["--nsid"],
    );
}
