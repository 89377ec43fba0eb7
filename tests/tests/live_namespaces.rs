//! Namespaces added and removed through `lightpool` while the Linux kernel initiator in
//! the guest runs fio with verification on namespace 1: the host sees namespace 2
//! appear (Namespace Attribute Changed event, Changed Namespace List, rescan) and
//! disappear, on the same controller (no reconnect, no reset), and namespace 1's I/O
//! sees no error.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:live";

/// Runs `lightpool` on the target's API socket; returns its output (FAILED: prefix on
/// failure).
fn lightpool(api: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(release_binary("lightpool").expect("tests/run.sh builds it"))
        .arg("--socket")
        .arg(api)
        .args(args)
        .output()
        .expect("run lightpool");
    format!(
        "{}{}{}",
        if out.status.success() { "" } else { "FAILED: " },
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Answers the guest's requests (one line per connection, answered "ok"): `add` makes a
/// 64 MiB RAM device and adds it as namespace 2; `remove` removes namespace 2; `done`
/// ends. Returns what `lightpool` said for each.
fn host_agent(listener: TcpListener, api: PathBuf) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut said = Vec::new();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            match b.trim() {
                "add" => {
                    said.push(lightpool(
                        &api,
                        &["bdev", "create", "ns2dev", "--ram", "64MiB"],
                    ));
                    said.push(lightpool(
                        &api,
                        &[
                            "namespace",
                            "add",
                            "--nqn",
                            NQN,
                            "--nsid",
                            "2",
                            "--device",
                            "ns2dev",
                        ],
                    ));
                }
                "remove" => {
                    said.push(lightpool(
                        &api,
                        &["namespace", "remove", "--nqn", NQN, "--nsid", "2"],
                    ));
                    said.push(lightpool(&api, &["bdev", "delete", "ns2dev"]));
                }
                "done" => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => {}
            }
            let _ = s.write_all(b"ok\n");
        }
        said
    })
}

#[test]
fn kernel_host_sees_namespaces_come_and_go_under_fio_verify() {
    let port = free_port().expect("port");
    let dir = e2e_dir().expect("dir");
    let cfg = dir.join("live-namespaces.toml");
    std::fs::write(
        &cfg,
        format!(
            "[target]\nreactors = 1\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nram = \"256MiB\"\nblock_size = 512\n"
        ),
    )
    .expect("config");
    let control = dir.join("live-namespaces.sock");
    let api = dir.join("live-namespaces.api.sock");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(&control);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let target =
        HostProcess::spawn_listening("live-namespaces", cmd, addr, Duration::from_secs(20))
            .expect("target starts");
    let agent_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = agent_listener.local_addr().expect("addr").port();
    let agent = host_agent(agent_listener, api);
    let script = format!(
        r#"set -eu
say() {{ echo "E2E: $*"; }}
NQN={NQN}
nvme connect -t tcp -a 10.0.2.2 -s {port} -n $NQN --nr-io-queues=2
for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
C=/sys/class/nvme/nvme0
CNTLID=$(cat $C/cntlid)
say "connected cntlid $CNTLID state $(cat $C/state)"
[ ! -e /sys/block/nvme0n2 ]
fio --name=ns1 --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 --iodepth=8 \
    --rw=randwrite --bs=4k --size=64m --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --time_based --runtime=90 --output-format=terse --terse-version=3 > /tmp/fio.out 2>/tmp/fio.err &
FIO=$!
sleep 5
echo add | nc 10.0.2.2 {agent_port}
for i in $(seq 1 300); do [ -b /dev/nvme0n2 ] && break; sleep 0.1; done
[ -b /dev/nvme0n2 ] || {{ say "namespace 2 did not appear"; dmesg | tail -20; exit 1; }}
say "namespace 2 appeared: $(cat /sys/block/nvme0n2/size) sectors"
[ "$(cat /sys/block/nvme0n2/size)" = 131072 ]
dd if=/dev/urandom of=/tmp/blk bs=4096 count=16 2>/dev/null
dd if=/tmp/blk of=/dev/nvme0n2 bs=4096 count=16 oflag=direct 2>/dev/null
dd if=/dev/nvme0n2 of=/tmp/back bs=4096 count=16 iflag=direct 2>/dev/null
cmp /tmp/blk /tmp/back
say "namespace 2 reads back what was written"
sleep 3
echo remove | nc 10.0.2.2 {agent_port}
for i in $(seq 1 300); do [ ! -e /sys/block/nvme0n2 ] && break; sleep 0.1; done
[ ! -e /sys/block/nvme0n2 ] || {{ say "namespace 2 did not go"; dmesg | tail -20; exit 1; }}
say "namespace 2 gone"
[ -b /dev/nvme0n1 ]
wait $FIO || {{ say "fio failed: $(cat /tmp/fio.err)"; exit 1; }}
say "fio errors=$(cut -d';' -f5 /tmp/fio.out) write_kb=$(cut -d';' -f47 /tmp/fio.out)"
[ "$(cut -d';' -f5 /tmp/fio.out)" = 0 ]
say "after: cntlid $(cat $C/cntlid) state $(cat $C/state) controllers $(ls -d /sys/class/nvme/nvme* | wc -l)"
[ "$(cat $C/cntlid)" = "$CNTLID" ]
[ "$(cat $C/state)" = live ]
[ "$(ls -d /sys/class/nvme/nvme* | wc -l)" = 1 ]
dmesg > /tmp/dmesg
if grep -iE "I/O error|resetting|reconnect|Buffer I/O|blk_update_request" /tmp/dmesg; then say "kernel complained"; exit 1; fi
say "dmesg clean"
nvme disconnect -n $NQN
echo done | nc 10.0.2.2 {agent_port}
say "all good"
"#
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        ..GuestConfig::new("live-namespaces", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(60);
    let said = agent.join().expect("agent");
    eprintln!("lightpool said: {said:?}");
    assert_eq!(
        out.exit_code,
        0,
        "guest:\n{tail}\ntarget log:\n{}",
        target.log()
    );
    for want in [
        "E2E: namespace 2 appeared: 131072 sectors",
        "E2E: namespace 2 reads back what was written",
        "E2E: namespace 2 gone",
        "E2E: fio errors=0",
        "E2E: dmesg clean",
        "E2E: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing:\n{tail}");
    }
    assert_eq!(said.len(), 4, "{said:?}");
    assert!(said.iter().all(|s| !s.starts_with("FAILED")), "{said:?}");
    let log = target.log();
    assert!(
        log.contains("namespace added") && log.contains("namespace removed"),
        "{log}"
    );
    let status = target.stop(Duration::from_secs(5)).expect("stop");
    assert!(status.success(), "target exit status {status}");
}
