//! `lightpool` against a running lightpool-target: tables, --json, and the exit codes
//! the README documents (0 done, 1 refused by the target or no target, 2 bad usage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// lightpool-target of this build (beside lightpool; built first when missing).
fn target_bin() -> PathBuf {
    let me = Path::new(env!("CARGO_BIN_EXE_lightpool"));
    let t = me.with_file_name("lightpool-target");
    if !t.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if me.parent().is_some_and(|p| p.ends_with("release")) {
            vec!["--release"]
        } else {
            vec![]
        };
        let st = Command::new(cargo)
            .args([
                "build",
                "-p",
                "lightpool-daemon",
                "--bin",
                "lightpool-target",
            ])
            .args(profile)
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
    let dir = std::env::temp_dir().join(format!("lp-cli-tool-{}", std::process::id()));
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

const NQN: &str = "nqn.2024-01.io.lightpool:default";

#[test]
fn commands_tables_json_and_exit_codes() {
    let t = start();
    assert!(ok(&t, &["status"]).contains("lightpool-target"));
    ok(&t, &["bdev", "create", "r2", "--ram", "64MiB"]);
    let out = ok(
        &t,
        &[
            "namespace",
            "add",
            "--nqn",
            NQN,
            "--device",
            "r2",
            "--size",
            "32MiB",
        ],
    );
    assert!(
        out.contains(&format!("namespace {NQN}/2 added (r2)")),
        "{out}"
    );
    let table = ok(&t, &["namespace", "list"]);
    assert!(table.starts_with("NQN "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(" 2 ") && l.contains("32MiB")),
        "{table}"
    );
    let json = ok(&t, &["--json", "namespace", "list", "--nqn", NQN]);
    assert!(
        json.contains("\"nsid\": 2") && json.contains("\"num_blocks\": 65536"),
        "{json}"
    );
    let json = ok(&t, &["--json", "bdev", "list"]);
    assert!(
        json.contains("\"name\": \"r2\"") && json.contains(&format!("\"{NQN}/2\"")),
        "{json}"
    );
    let out = ok(&t, &["namespace", "resize", "--nqn", NQN, "--nsid", "2"]);
    assert!(out.contains("is now 64MiB"), "{out}");
    ok(
        &t,
        &[
            "ana",
            "set",
            "--nqn",
            NQN,
            "--group",
            "2",
            "--state",
            "inaccessible",
        ],
    );
    let json = ok(&t, &["--json", "ana", "list"]);
    assert!(json.contains("\"state\": \"inaccessible\""), "{json}");
    let saved = ok(&t, &["config", "save"]);
    assert!(
        saved.contains("name = \"r2\"") && saved.contains("state = \"inaccessible\""),
        "{saved}"
    );

    // Refused by the target: 1, with its message.
    let o = lp(&t, &["bdev", "delete", "r2"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("in use by namespace {NQN}/2")) && err.contains("FailedPrecondition"),
        "{err}"
    );
    let o = lp(&t, &["subsystem", "create", "db1"]);
    assert_eq!(o.status.code(), Some(1));
    // Bad usage: 2.
    assert_eq!(
        lp(&t, &["bdev", "create", "x"]).status.code(),
        Some(2),
        "no kind"
    );
    assert_eq!(
        lp(&t, &["bdev", "create", "x", "--ram", "1GB"])
            .status
            .code(),
        Some(2),
        "ambiguous unit"
    );
    assert_eq!(
        lp(
            &t,
            &["ana", "set", "--nqn", NQN, "--group", "1", "--state", "up"]
        )
        .status
        .code(),
        Some(2)
    );
    assert_eq!(lp(&t, &["frobnicate"]).status.code(), Some(2));
    // No target: 1.
    let o = Command::new(env!("CARGO_BIN_EXE_lightpool"))
        .args(["--socket", "/nonexistent/api.sock", "status"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("no lightpool-target answers on /nonexistent/api.sock"));

    ok(&t, &["namespace", "remove", "--nqn", NQN, "--nsid", "2"]);
    ok(&t, &["bdev", "delete", "r2"]);
    assert!(!ok(&t, &["bdev", "list"]).contains("r2"));
}
