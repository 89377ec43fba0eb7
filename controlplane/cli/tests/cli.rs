//! `lightpool` against a running lightpool-target: tables, --json, and the exit codes
//! the README documents (0 done, 1 refused by the target or no target, 2 bad usage).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

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

/// Run lightpool with no socket named: only the runtime folder to look in.
fn lp_found(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lightpool"))
        .env("LIGHTPOOL_RUNTIME_DIR", run_dir)
        .env_remove("LIGHTPOOL_SOCKET")
        .args(args)
        .output()
        .expect("run lightpool")
}

fn spawn_in(run_dir: &Path, args: &[&str], api_socket: &Path) -> Target {
    let child = Command::new(target_bin())
        .env("LIGHTPOOL_RUNTIME_DIR", run_dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the target");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api_socket.exists() {
        assert!(Instant::now() < deadline, "the target did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Target {
        child,
        dir: run_dir.to_path_buf(),
    }
}

/// Without --socket or --control-socket, `lightpool` acts on the one target whose API
/// socket (beside its per-instance control socket) answers in the runtime folder; with
/// none it says where it looked, with several it lists them and refuses (exit 1).
#[test]
fn finds_the_one_target_running_and_refuses_when_several_run() {
    let run_dir = std::env::temp_dir().join(format!("lp-cli-find-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);

    let o = lp_found(&run_dir, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains(&format!(
            "no lightpool-target answers in {}",
            run_dir.display()
        )),
        "{err}"
    );

    // Default sockets: named after the first listener, the API's beside the control's.
    let _a = spawn_in(
        &run_dir,
        &["--listen", "127.0.0.1:0"],
        &run_dir.join("target-127.0.0.1-0.api.sock"),
    );
    let o = lp_found(&run_dir, &["status"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(&format!(
            "control socket {}",
            run_dir.join("target-127.0.0.1-0.sock").display()
        )),
        "{out}"
    );

    let second = run_dir.join("second.sock");
    let second_arg = second.display().to_string();
    let _b = spawn_in(
        &run_dir,
        &["--listen", "127.0.0.1:0", "--control-socket", &second_arg],
        &run_dir.join("second.api.sock"),
    );
    let o = lp_found(&run_dir, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("2 targets run here"), "{err}");
    assert!(err.contains("second.api.sock"), "{err}");
    assert!(err.contains("target-127.0.0.1-0.api.sock"), "{err}");
    let o = lp_found(&run_dir, &["--control-socket", &second_arg, "status"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&second_arg));
}

#[test]
fn the_api_over_tcp_with_mutual_tls() {
    let mut pki = None;
    let t = start_with("tls", |dir| {
        let p = lightpool_e2e::certs::make(&dir.join("pki"));
        let cfg = dir.join("c.toml");
        std::fs::write(&cfg, p.api_section("127.0.0.1:0")).expect("config");
        pki = Some(p);
        vec!["--config".into(), cfg.display().to_string()]
    });
    let pki = pki.expect("certificates made");
    let saved = ok(&t, &["config", "save"]);
    let addr = saved
        .lines()
        .skip_while(|l| l.trim() != "[api]")
        .find_map(|l| l.strip_prefix("address = "))
        .expect("[api] address")
        .trim_matches('"')
        .to_string();
    let path = |p: &Path| p.display().to_string();
    let tls = |cert: &Path, key: &Path| {
        vec![
            "--api".to_string(),
            addr.clone(),
            "--tls-ca".into(),
            path(&pki.ca),
            "--tls-cert".into(),
            path(cert),
            "--tls-key".into(),
            path(key),
        ]
    };
    let run = |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_lightpool"))
            .args(args)
            .env_remove("LIGHTPOOL_API")
            .output()
            .expect("run lightpool")
    };
    // Served with the client certificate: the same target as on the Unix socket.
    let mut a = tls(&pki.client_cert, &pki.client_key);
    a.extend(["bdev", "create", "via-tls", "--ram", "8MiB"].map(String::from));
    let o = run(a);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(ok(&t, &["bdev", "list"]).contains("via-tls"));
    // The same through the environment.
    let o = Command::new(env!("CARGO_BIN_EXE_lightpool"))
        .args(["--json", "bdev", "list"])
        .env("LIGHTPOOL_API", &addr)
        .env("LIGHTPOOL_TLS_CA", &pki.ca)
        .env("LIGHTPOOL_TLS_CERT", &pki.client_cert)
        .env("LIGHTPOOL_TLS_KEY", &pki.client_key)
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"via-tls\""));
    // A certificate another CA signed: refused by the target, exit 1, with advice.
    let mut a = tls(&pki.rogue_cert, &pki.rogue_key);
    a.extend(["bdev", "list"].map(String::from));
    let o = run(a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&addr) && err.contains("--tls-cert"), "{err}");
    // --api without the TLS files: bad usage, exit 2, naming the flag.
    let o = run(vec![
        "--api".into(),
        addr.clone(),
        "bdev".into(),
        "list".into(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--tls-ca") && err.contains("mutual TLS"),
        "{err}"
    );
}
