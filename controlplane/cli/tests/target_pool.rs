//! `lightpool target pool|volume|snapshot` against a running lightpool-target: a pool
//! made, volumes, a snapshot and a clone, a volume served by `namespace add --volume`,
//! tables and --json, and the exit codes (1 refused by the target, 2 bad usage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// lightpool-target of this build (beside lightpool; built first when missing).
fn target_bin() -> PathBuf {
    let me = Path::new(env!("CARGO_BIN_EXE_lightpool"));
    let t = me.with_file_name("lightpool-target");
    if !t.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "-p",
                "lightpool-daemon",
                "--bin",
                "lightpool-target",
            ])
            .status()
            .expect("cargo build");
        assert!(st.success(), "building lightpool-target");
    }
    t
}

struct Target {
    child: Child,
    dir: PathBuf,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Target {
    let dir = std::env::temp_dir().join(format!("lp-cli-pool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let child = Command::new(target_bin())
        .args(["--listen", "127.0.0.1:0", "--control-socket"])
        .arg(dir.join("t.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the target");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("t.api.sock").exists() {
        assert!(Instant::now() < deadline, "the target did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Target { child, dir }
}

fn lp(t: &Target, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lightpool"))
        .arg("--control-socket")
        .arg(t.dir.join("t.sock"))
        .args(args)
        .output()
        .expect("run lightpool")
}

fn ok(t: &Target, args: &[&str]) -> String {
    let o = lp(t, args);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

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
    let t = start();
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
