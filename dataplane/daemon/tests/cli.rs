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

/// Starts the target on `config`; returns what it printed on stdout until its banner
/// ended (or it exited), and its stderr if it exited.
fn start_and_read(config: &str) -> (String, Option<String>) {
    let dir = std::env::temp_dir().join(format!(
        "lp-cli-start-{}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("c.toml");
    std::fs::write(&p, config).expect("write config");
    let mut child = bin()
        .arg("--config")
        .arg(&p)
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let out = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    for l in BufReader::new(out).lines() {
        let Ok(l) = l else { break };
        let done = l.contains("control socket");
        seen.push(l);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let err = (!out.status.success() && seen.iter().all(|l| !l.contains("control socket")))
        .then(|| String::from_utf8_lossy(&out.stderr).to_string());
    (seen.join("\n"), err)
}

const NS: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:x\"\n[[subsystem.namespace]]\nnsid = 1\n";

#[test]
fn ram_larger_than_the_machine_is_refused() {
    fails_with(
        &[],
        Some(&format!("{NS}ram = \"1TiB\"\n")),
        &[
            ":7: subsystem[0].namespace[0].ram: a RAM device of 1TiB does not fit",
            "smaller size",
        ],
    );
}

#[test]
fn nqns_must_be_nvme_qualified_names() {
    fails_with(
        &[],
        Some("[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"db1\"\n"),
        &[
            ":4: subsystem[0].nqn: \"db1\" is not an NVMe Qualified Name",
            "nqn.2024-01.com.example:db1",
        ],
    );
}

#[test]
fn sizes_are_bytes_or_unambiguous_units() {
    fails_with(
        &[],
        Some(&format!("{NS}ram = \"64MB\"\n")),
        &[
            ":7: subsystem[0].namespace[0].ram: ",
            "ambiguous",
            "\"64MiB\" for 67108864 bytes",
        ],
    );
    let (out, err) = start_and_read(&format!("{NS}ram = 67108864\n"));
    assert_eq!(err, None);
    assert!(out.contains("nsid 1 (131072 x 512 B, ram1)"), "{out}");
}

#[test]
fn a_subsystem_without_namespaces_says_so() {
    let (out, err) = start_and_read(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:empty\"\n",
    );
    assert_eq!(err, None);
    assert!(
        out.contains("subsystem nqn.2024-01.io.lightpool:empty has no namespace yet (add one: lightpool namespace add"),
        "{out}"
    );
    assert!(
        !out.contains(" with \n") && !out.ends_with(" with "),
        "{out}"
    );
    assert!(
        !out.contains("Connect a Linux host"),
        "nothing to connect to: {out}"
    );
}

#[test]
fn address_in_use_is_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = std::env::temp_dir().join(format!("lp-cli-inuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join("c.toml");
    std::fs::write(&p, format!("[[listener]]\naddress = \"{addr}\"\n")).expect("config");
    let out = bin()
        .arg("--config")
        .arg(&p)
        .arg("--control-socket")
        .arg(dir.join("ctl.sock"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(":2: listener[0].address: cannot listen on {addr}")),
        "{err}"
    );
    assert_eq!(err.matches("in use").count(), 1, "{err}");
}
