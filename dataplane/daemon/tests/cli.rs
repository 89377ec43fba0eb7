//! The binary's start-up contract: bad input gives one clear message naming the field
//! and a non-zero exit; the embedded default serves without any configuration.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
}

fn fails_with(args: &[&str], config: Option<&str>, want: &[&str]) {
    let dir = std::env::temp_dir().join(format!("lp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cmd = bin();
    if let Some(text) = config {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = dir.join(format!(
            "c{}.toml",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&p, text).expect("write config");
        cmd.arg("--config").arg(p);
    }
    cmd.args(args)
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"));
    let out = cmd.output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
}

#[test]
fn unknown_field_is_named() {
    fails_with(
        &[],
        Some("[target]\nreactorz = 1\n"),
        &["target.reactorz", ":2: "],
    );
}

#[test]
fn bad_values_are_named() {
    fails_with(
        &[],
        Some("[[listener]]\naddress = \"127.0.0.1:1\"\n[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:x\"\n[[subsystem.namespace]]\nnsid = 1\nram = \"1GiB\"\nblock_size = 1000\n"),
        &["subsystem[0].namespace[0].block_size", "1000"],
    );
    fails_with(
        &[],
        Some("[[listener]]\naddress = \"nowhere\"\n"),
        &["listener[0].address"],
    );
    fails_with(
        &[],
        Some("[[listener]]\naddress = \"127.0.0.1:1\"\n[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:x\"\n[[subsystem.namespace]]\nnsid = 1\nfile = \"/nonexistent/img\"\n"),
        &["subsystem[0].namespace[0].file", "/nonexistent/img"],
    );
}

#[test]
fn missing_config_file_is_named() {
    fails_with(
        &["--config", "/nonexistent/lightpool.toml"],
        None,
        &["/nonexistent/lightpool.toml"],
    );
}

#[test]
fn embedded_default_serves_and_prints_the_connect_command() {
    let dir = std::env::temp_dir().join(format!("lp-cli-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Port 0: the default subsystem and namespace, on a free port.
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--control-socket"])
        .arg(dir.join("ctl.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let out = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(out).lines();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let Some(Ok(l)) = lines.next() else { break };
        let done = l.contains("Connect a Linux host with");
        seen.push(l);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = seen.join("\n");
    assert!(all.contains("nqn.2024-01.io.lightpool:default"), "{all}");
    assert!(
        all.contains("2097152 x 512 B"),
        "1 GiB of 512-byte blocks: {all}"
    );
    assert!(
        all.contains("nvme connect -t tcp -a 127.0.0.1 -s "),
        "{all}"
    );
}
