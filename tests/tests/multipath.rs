//! One subsystem on two nodes, as live migration's switch will use it: two
//! lightpool-targets on the host present the same subsystem (NQN, serial, model,
//! NSID, NGUID, UUID, ANA group) with disjoint controller ID ranges, both serving one
//! shared file (O_DIRECT, so each sees the other's writes). The guest's stock Linux
//! 6.12 initiator connects both paths (native multipath: one /dev/nvme0n1), and while
//! fio writes with verify, the ANA states flip (the new path optimized first, then the
//! old one inaccessible) and the old path is disconnected; then back the other way.
//! Zero I/O errors, every block verified, no controller reset in the kernel log.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:e2e-multipath";
const NGUID: &str = "6c70000000000000000000000000a001";
const UUID: &str = "6c700000-0000-4000-8000-00000000a001";

/// Target `name` on `port`, handing out controller IDs `cntlid`, its ANA group 1 in
/// `state`, serving `image`.
fn start_target(
    name: &str,
    port: u16,
    cntlid: (u32, u32),
    state: &str,
    image: &Path,
) -> HostProcess {
    let ana = if state == "optimized" {
        String::new()
    } else {
        format!("[[subsystem.ana_group]]\ngroup = 1\nstate = \"{state}\"\n")
    };
    let cfg = format!(
        r#"
[target]
reactors = 1

[[listener]]
address = "127.0.0.1:{port}"

[[subsystem]]
nqn = "{NQN}"
serial = "LPMPATH0001"
model = "LightPool multipath"
allow_any_host = true
min_cntlid = {}
max_cntlid = {}
{ana}
[[subsystem.namespace]]
nsid = 1
file = "{}"
block_size = 512
nguid = "{NGUID}"
uuid = "{UUID}"
ana_group = 1
"#,
        cntlid.0,
        cntlid.1,
        image.display()
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

/// Sets ANA states for the guest: a line `ana a|b STATE` per connection, answered `ok`
/// (or `FAILED ...`); `done` ends.
fn ana_agent(listener: TcpListener, sockets: [PathBuf; 2]) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut log = Vec::new();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            let words: Vec<&str> = b.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["ana", which, state] => {
                    let sock = &sockets[usize::from(*which == "b")];
                    let out = Command::new(release_binary("lightpool-target").expect("built"))
                        .args(["ana", "--nqn", NQN, "--group", "1", "--state", state])
                        .arg("--control-socket")
                        .arg(sock)
                        .output()
                        .expect("lightpool-target ana");
                    let line = format!(
                        "{}ana {which} {state}: {}{}",
                        if out.status.success() { "" } else { "FAILED " },
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    log.push(line.clone());
                    line
                }
                ["done"] => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => format!("FAILED unknown request {b:?}"),
            };
            let _ = s.write_all(format!("{answer}\n").as_bytes());
        }
        log
    })
}

#[test]
fn one_subsystem_on_two_targets_switches_paths_under_fio_verify() {
    let dir = e2e_dir().expect("e2e dir");
    let image = dir.join("multipath.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(128 << 20))
        .expect("shared image");
    let (pa, pb) = (free_port().expect("port"), free_port().expect("port"));
    let a = start_target("e2e-mpath-a", pa, (1, 0x7fff), "optimized", &image);
    let b = start_target("e2e-mpath-b", pb, (0x8000, 0xffef), "inaccessible", &image);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = listener.local_addr().expect("addr").port();
    let agent = ana_agent(
        listener,
        [dir.join("e2e-mpath-a.sock"), dir.join("e2e-mpath-b.sock")],
    );
    let script = format!(
        r#"set -eu
NQN={NQN}
AGENT={agent_port}
{lib}
FIO="fio --filename=/dev/nvme-head --ioengine=libaio --direct=1 --iodepth=16 --bs=4k \
     --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3"

modprobe nvme-tcp
connect {pa}
connect {pb}
for i in $(seq 1 100); do HEAD=$(ls /sys/block | grep -m1 -E '^nvme[0-9]+n1$' || true); [ -n "$HEAD" ] && break; sleep 0.1; done
ln -sf /dev/$HEAD /dev/nvme-head
CA=$(ctrl_of {pa}); CB=$(ctrl_of {pb})
for i in $(seq 1 100); do [ "$(paths)" = 2 ] && break; sleep 0.1; done
say "head $HEAD paths $(paths) a=$CA b=$CB"
[ "$(paths)" = 2 ]
nvme list-subsys | tee /tmp/ls
[ "$(grep -c 'tcp traddr=10.0.2.2' /tmp/ls)" = 2 ]
nvme id-ctrl /dev/$CA | grep -E '^cntlid' | tee /tmp/ida
nvme id-ctrl /dev/$CB | grep -E '^cntlid' | tee /tmp/idb
wait_state $CA optimized; wait_state $CB inaccessible

for round in 1 2; do
    if [ $round = 1 ]; then OLD=$CA; NEW=$CB; o=a; n=b; OLDPORT={pa}; else OLD=$CB; NEW=$CA; o=b; n=a; OLDPORT={pb}; fi
    $FIO --name=r$round --rw=randwrite --size=48m --offset=$(( (round - 1) * 48 ))m --do_verify=1 > /tmp/r$round.out 2>&1 &
    PID=$!
    sleep 3
    ask ana $n optimized
    wait_state $NEW optimized
    ask ana $o inaccessible
    wait_state $OLD inaccessible
    say "round $round: switched to $n"
    sleep 2
    echo 1 > /sys/class/nvme/$OLD/delete_controller
    say "round $round: old path gone, paths $(paths)"
    [ "$(paths)" = 1 ]
    wait $PID || {{ cat /tmp/r$round.out; exit 1; }}
    errs=$(cut -d';' -f5 /tmp/r$round.out)
    say "round $round: fio errors=$errs write_kb=$(cut -d';' -f47 /tmp/r$round.out)"
    [ "$errs" = 0 ]
    # The old node comes back as a standby path for the next round.
    connect $OLDPORT
    for i in $(seq 1 100); do [ "$(paths)" = 2 ] && break; sleep 0.1; done
    if [ $round = 1 ]; then CA=$(ctrl_of {pa}); else CB=$(ctrl_of {pb}); fi
    say "round $round: old node back as a path, paths $(paths), state $(state_of $OLD)"
    [ "$(paths)" = 2 ]
done
# Everything written in both rounds, read back through the last path.
$FIO --name=r1 --rw=randwrite --size=48m --offset=0 --verify_only > /tmp/v1.out
$FIO --name=r2 --rw=randwrite --size=48m --offset=48m --verify_only > /tmp/v2.out
say "verify errors=$(cut -d';' -f5 /tmp/v1.out)+$(cut -d';' -f5 /tmp/v2.out)"
[ "$(cut -d';' -f5 /tmp/v1.out)" = 0 ] && [ "$(cut -d';' -f5 /tmp/v2.out)" = 0 ]
echo done | nc 10.0.2.2 {agent_port} > /dev/null
dmesg | grep -iE 'reset|timeout|I/O error' || true
say "all good"
"#,
        lib = lightpool_e2e::paths::GUEST_LIB
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        ..GuestConfig::new("e2e-multipath", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(80);
    let logs = format!("target a:\n{}\ntarget b:\n{}", a.log(), b.log());
    assert_eq!(out.exit_code, 0, "guest:\n{tail}\n{logs}");
    for want in [
        "E2E: round 1: switched to b",
        "E2E: round 1: old path gone, paths 1",
        "E2E: round 1: fio errors=0",
        "E2E: round 2: switched to a",
        "E2E: round 2: fio errors=0",
        "E2E: verify errors=0+0",
        "E2E: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing:\n{tail}");
    }
    lightpool_e2e::paths::assert_kernel_quiet(&out.console, &tail);
    let ana = agent.join().expect("agent");
    assert_eq!(ana.len(), 4, "{ana:?}");
    assert!(ana.iter().all(|l| !l.starts_with("FAILED")), "{ana:?}");
}
