//! Live migration end to end with the stock Linux initiator: a namespace moves from
//! target A to target B on the host while fio writes with verify in the guest. Both
//! targets present one subsystem (same NQN, serial, model, NGUID, UUID, ANA group;
//! disjoint controller IDs), B's path standing by (ANA inaccessible: it refuses I/O
//! from every host, so A copies into B's device through a second subsystem of B, the
//! "pipe", which serves the same device). The guest asks
//! the host to migrate (A copies to B through its Migrations API until synced), then
//! to switch (B optimized, then A inaccessible); the guest drops A's path, and A stops
//! the migration. fio sees zero errors, every block verifies through B, and the
//! kernel logs no reset or timeout.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:e2e-migrate";
const NGUID: &str = "6c70000000000000000000000000b001";
const UUID: &str = "6c700000-0000-4000-8000-00000000b001";
/// Where the source copies to on the destination.
const PIPE: &str = "nqn.2024-01.io.lightpool:e2e-migrate-pipe";

/// Target `name` on `port` with a 64 MiB RAM namespace, controller IDs `cntlid`, its
/// ANA group 1 in `state`.
fn start_target(name: &str, port: u16, cntlid: (u32, u32), state: &str) -> HostProcess {
    let ana = if state == "optimized" {
        String::new()
    } else {
        format!("[[subsystem.ana_group]]\ngroup = 1\nstate = \"{state}\"\n")
    };
    let cfg = format!(
        r#"
[target]
reactors = 1

[[bdev]]
name = "disk"
ram = "64MiB"
block_size = 512

[[listener]]
address = "127.0.0.1:{port}"

[[subsystem]]
nqn = "{NQN}"
serial = "LPMIGRATE001"
model = "LightPool migration"
allow_any_host = true
min_cntlid = {}
max_cntlid = {}
{ana}
[[subsystem.namespace]]
nsid = 1
bdev = "disk"
nguid = "{NGUID}"
uuid = "{UUID}"
ana_group = 1

# The copy's way in: the same device in a subsystem of its own, always optimized
# (the hosts' subsystem stands by, inaccessible, until the switch).
[[subsystem]]
nqn = "{PIPE}"
allow_any_host = true

[[subsystem.namespace]]
nsid = 1
bdev = "disk"
"#,
        cntlid.0, cntlid.1
    );
    let dir = e2e_dir().expect("e2e dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).expect("write config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--control-socket")
        .arg(dir.join(format!("{name}.sock")));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    HostProcess::spawn_listening(name, cmd, addr, Duration::from_secs(20)).expect("target starts")
}

/// Runs `bin args`, returning a line for the guest and the log.
fn run(bin: &str, args: &[String]) -> String {
    let out = Command::new(release_binary(bin).expect("built"))
        .args(args)
        .output()
        .expect("run");
    format!(
        "{}{}{}",
        if out.status.success() { "" } else { "FAILED " },
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', " | "),
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " | ")
    )
}

/// The host side: `migrate` (A to B, until synced), `ana a|b STATE`, `stop` (A ends
/// the migration), `done`. One request per connection, answered with one line.
fn agent(
    listener: TcpListener,
    socks: [PathBuf; 2],
    pb: u16,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut log = Vec::new();
        let api = |s: &PathBuf| s.with_extension("api.sock").display().to_string();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            let words: Vec<String> = b.split_whitespace().map(String::from).collect();
            let w: Vec<&str> = words.iter().map(String::as_str).collect();
            let line = match w.as_slice() {
                ["migrate"] => run(
                    "lightpool",
                    &[
                        "--socket".into(),
                        api(&socks[0]),
                        "target".into(),
                        "migrate".into(),
                        "start".into(),
                        "--nqn".into(),
                        NQN.into(),
                        "--nsid".into(),
                        "1".into(),
                        "--to".into(),
                        format!("127.0.0.1:{pb}"),
                        "--to-nqn".into(),
                        PIPE.into(),
                        "--region-size".into(),
                        "256KiB".into(),
                        "--wait".into(),
                    ],
                ),
                ["stop"] => run(
                    "lightpool",
                    &[
                        "--socket".into(),
                        api(&socks[0]),
                        "target".into(),
                        "migrate".into(),
                        "stop".into(),
                        "--nqn".into(),
                        NQN.into(),
                        "--nsid".into(),
                        "1".into(),
                    ],
                ),
                ["ana", which, state] => {
                    let sock = &socks[usize::from(*which == "b")];
                    run(
                        "lightpool-target",
                        &[
                            "ana".into(),
                            "--nqn".into(),
                            NQN.into(),
                            "--group".into(),
                            "1".into(),
                            "--state".into(),
                            (*state).into(),
                            "--control-socket".into(),
                            sock.display().to_string(),
                        ],
                    )
                }
                ["done"] => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => format!("FAILED unknown request {b:?}"),
            };
            log.push(format!("{b}: {line}"));
            let _ = s.write_all(format!("{line}\n").as_bytes());
        }
        log
    })
}

#[test]
fn a_namespace_migrates_to_another_target_under_fio_verify() {
    let dir = e2e_dir().expect("e2e dir");
    let (pa, pb) = (free_port().expect("port"), free_port().expect("port"));
    let a = start_target("e2e-mig-a", pa, (1, 0x7fff), "optimized");
    let b = start_target("e2e-mig-b", pb, (0x8000, 0xffef), "inaccessible");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = listener.local_addr().expect("addr").port();
    let host = agent(
        listener,
        [dir.join("e2e-mig-a.sock"), dir.join("e2e-mig-b.sock")],
        pb,
    );
    let script = format!(
        r#"set -eu
NQN={NQN}
AGENT={agent_port}
{lib}

modprobe nvme-tcp
connect {pa}
connect {pb}
for i in $(seq 1 100); do [ "$(paths)" = 2 ] && break; sleep 0.1; done
HEAD=$(ls /sys/block | grep -m1 -E '^nvme[0-9]+n1$')
CA=$(ctrl_of {pa}); CB=$(ctrl_of {pb})
say "head $HEAD paths $(paths) a=$CA b=$CB"
wait_state $CA optimized; wait_state $CB inaccessible
FIO="fio --filename=/dev/$HEAD --ioengine=libaio --direct=1 --iodepth=16 --bs=4k --size=48m \
     --rw=randwrite --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3"
$FIO --name=mig --do_verify=1 > /tmp/mig.out 2>&1 &
PID=$!
sleep 2
ask migrate
ask ana b optimized
wait_state $CB optimized
ask ana a inaccessible
wait_state $CA inaccessible
say "switched"
echo 1 > /sys/class/nvme/$CA/delete_controller
say "old path gone, paths $(paths)"
[ "$(paths)" = 1 ]
ask stop
wait $PID || {{ cat /tmp/mig.out; exit 1; }}
say "fio errors=$(cut -d';' -f5 /tmp/mig.out) write_kb=$(cut -d';' -f47 /tmp/mig.out)"
[ "$(cut -d';' -f5 /tmp/mig.out)" = 0 ]
$FIO --name=mig --verify_only > /tmp/v.out
say "verify through b errors=$(cut -d';' -f5 /tmp/v.out)"
[ "$(cut -d';' -f5 /tmp/v.out)" = 0 ]
echo done | nc 10.0.2.2 {agent_port} > /dev/null
dmesg | grep -iE 'reset|timeout|I/O error' || true
say "all good"
"#,
        lib = lightpool_e2e::paths::GUEST_LIB
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        ..GuestConfig::new("e2e-migrate-switch", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(80);
    let logs = format!("target a:\n{}\ntarget b:\n{}", a.log(), b.log());
    // The agent ends at "done": say it here too, for a guest that stopped early.
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", agent_port)) {
        let _ = s.write_all(b"done\n");
    }
    let said = host.join().expect("agent");
    eprintln!("host side: {said:#?}");
    assert_eq!(out.exit_code, 0, "guest:\n{tail}\n{logs}");
    for want in [
        "E2E: switched",
        "E2E: old path gone, paths 1",
        "E2E: fio errors=0",
        "E2E: verify through b errors=0",
        "E2E: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing:\n{tail}");
    }
    assert!(
        said.iter()
            .any(|l| l.starts_with("migrate") && l.contains("synced")),
        "{said:?}"
    );
    lightpool_e2e::paths::assert_kernel_quiet(&out.console, &tail);
}
