//! lightpool-perf against the Linux kernel's NVMe/TCP target (nvmet-tcp) in the test
//! guest: the guest serves a RAM disk over configfs, the host reaches it through a
//! QEMU host forward, and lightpool-perf runs verified mixed I/O with and without
//! digests, in-capsule and R2T writes. Correctness only: the guest runs under TCG.
#![cfg(feature = "e2e")]

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use lightpool_e2e::{free_port, release_binary, run_guest, workspace_root, GuestConfig};

const NQN: &str = "nqn.2024-01.io.lightpool:kernel-target";

/// target/release/lightpool-perf, built here when tests/run.sh has not built it.
fn perf_binary() -> PathBuf {
    if let Ok(p) = release_binary("lightpool-perf") {
        return p;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "lightpool-perf",
            "--bin",
            "lightpool-perf",
        ])
        .status()
        .expect("cargo runs");
    assert!(st.success(), "building lightpool-perf failed");
    release_binary("lightpool-perf").expect("lightpool-perf was just built")
}

fn guest_script(ready: u16, done: u16) -> String {
    format!(
        r#"
set -eu
NQN={NQN}
modprobe brd rd_nr=1 rd_size=65536
modprobe nvmet-tcp
T=/sys/kernel/config/nvmet
mkdir $T/subsystems/$NQN
echo 1 > $T/subsystems/$NQN/attr_allow_any_host
mkdir $T/subsystems/$NQN/namespaces/1
echo /dev/ram0 > $T/subsystems/$NQN/namespaces/1/device_path
echo 1 > $T/subsystems/$NQN/namespaces/1/enable
mkdir $T/ports/1
echo tcp > $T/ports/1/addr_trtype
echo ipv4 > $T/ports/1/addr_adrfam
echo 10.0.2.15 > $T/ports/1/addr_traddr
echo 4420 > $T/ports/1/addr_trsvcid
ln -s $T/subsystems/$NQN $T/ports/1/subsystems/$NQN
echo "PERF: nvmet up, inline data $(cat $T/ports/1/param_inline_data_size 2>/dev/null || echo default)"
echo up | timeout 60 nc 10.0.2.2 {ready} > /dev/null
# Serve until the host says it is done (its listener appears then).
i=0
until echo bye | timeout 10 nc 10.0.2.2 {done} > /dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 600 ] || {{ echo "PERF: the host never finished"; exit 1; }}
    sleep 1
done
echo "PERF: host done"
"#
    )
}

struct PerfRun {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_perf(bin: &PathBuf, port: u16, extra: &[&str]) -> PerfRun {
    let r = format!("trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:{port} subnqn:{NQN}");
    let out = Command::new(bin)
        .args([
            "-r",
            &r,
            "--range",
            "0:65536",
            "--connect-timeout",
            "30",
            "--io-timeout",
            "30",
        ])
        .args(extra)
        .output()
        .expect("lightpool-perf runs");
    PerfRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// IOPS from the table's Total line.
fn total_iops(stdout: &str) -> f64 {
    stdout
        .lines()
        .find(|l| l.starts_with("Total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn perf_against_kernel_nvmet_tcp() {
    let bin = perf_binary();
    let ready = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ready_port = ready.local_addr().expect("addr").port();
    let done_port = free_port().expect("free port");
    let fwd = free_port().expect("free port");
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        host_forwards: vec![(fwd, 4420)],
        ..GuestConfig::new("perf-kernel-target", &guest_script(ready_port, done_port))
    };
    let guest = thread::spawn(move || run_guest(&cfg));

    // Wait for the guest's target to come up.
    ready.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        match ready.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut b = [0u8; 8];
                let _ = s.read(&mut b);
                break;
            }
            Err(_) if Instant::now() < deadline && !guest.is_finished() => {
                thread::sleep(Duration::from_millis(200))
            }
            Err(_) => {
                let out = guest.join().expect("guest thread");
                panic!("the guest's target never came up: {out:?}");
            }
        }
    }

    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "4 KiB randrw, in-capsule writes",
            vec!["-w", "randrw", "-q", "8", "-t", "2", "--verify"],
        ),
        (
            "4 KiB randrw, header and data digests",
            vec!["-w", "randrw", "-q", "8", "-t", "2", "--verify", "--digest"],
        ),
        (
            "64 KiB writes through R2T, digests",
            vec![
                "-w",
                "write",
                "-o",
                "65536",
                "-q",
                "4",
                "-t",
                "2",
                "--verify",
                "--digest",
                "--no-in-capsule",
            ],
        ),
        (
            "64 KiB reads back, verified",
            vec![
                "-w", "read", "-o", "65536", "-q", "4", "-t", "2", "--verify",
            ],
        ),
        (
            "two queue pairs, 512-byte I/O",
            vec![
                "-w", "randrw", "-o", "512", "-q", "4", "-t", "2", "--qpairs", "2", "--verify",
            ],
        ),
    ];
    let mut results = Vec::new();
    for (name, args) in &cases {
        let r = run_perf(&bin, fwd, args);
        eprintln!(
            "== {name}: exit {}, {:.0} IOPS\n{}{}",
            r.code,
            total_iops(&r.stdout),
            r.stdout,
            r.stderr
        );
        results.push((name, r));
    }
    // A wrong NQN is refused by the kernel too, with its reason.
    let wrong = Command::new(&bin)
        .args([
            "-r",
            &format!("trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:{fwd} subnqn:nqn.none"),
            "-t",
            "1",
            "--connect-timeout",
            "30",
        ])
        .output()
        .expect("runs");

    // Tell the guest we are done: accept its connection and close it.
    let done = TcpListener::bind(("127.0.0.1", done_port)).expect("bind the done port");
    thread::spawn(move || {
        for c in done.incoming() {
            drop(c);
        }
    });
    let out = guest.join().expect("guest thread").expect("guest run");
    let tail = out.tail(40);
    assert_eq!(out.exit_code, 0, "{tail}");
    assert!(out.console.contains("PERF: host done"), "{tail}");
    for (name, r) in &results {
        let all = format!("{name}: exit {}\n{}\n{}", r.code, r.stdout, r.stderr);
        assert_eq!(r.code, 0, "{all}");
        assert!(total_iops(&r.stdout) > 0.0, "{all}");
        assert!(r.stdout.contains("I/O errors: none"), "{all}");
        assert!(r.stdout.contains(", 0 mismatch(es)"), "{all}");
    }
    let wrong_err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{wrong_err}");
    assert!(
        wrong_err.contains("Connect to nqn.none refused"),
        "{wrong_err}"
    );
}
