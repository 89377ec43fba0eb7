//! Volumes of one pool served to the Linux 6.12 kernel initiator in the guest: fio
//! writes and verifies two volumes at once, first as two namespaces of one subsystem,
//! then as the namespaces of two subsystems (one guest boot for both), with a snapshot
//! of one of them taken while fio writes to it. What fio wrote is verified again after a
//! reconnect, and the pool's listing and check (its metadata read back from the device)
//! are checked from the host afterwards.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const ONE: &str = "nqn.2024-01.io.lightpool:pool-two-ns";
const TWO_A: &str = "nqn.2024-01.io.lightpool:pool-a";
const TWO_B: &str = "nqn.2024-01.io.lightpool:pool-b";

fn start_target(name: &str, port: u16) -> (HostProcess, String) {
    let cfg = format!(
        r#"
[target]
reactors = 1

[[listener]]
address = "127.0.0.1:{port}"

[[pool]]
name = "gp"
ram = "1GiB"
block_size = 512
cluster_size = "256KiB"

[[pool.volume]]
name = "a"
size = "128MiB"

[[pool.volume]]
name = "b"
size = "128MiB"

[[pool.volume]]
name = "c"
size = "128MiB"
thin = false

[[pool.volume]]
name = "d"
size = "128MiB"

[[subsystem]]
nqn = "{ONE}"
[[subsystem.namespace]]
nsid = 1
volume = "gp/a"
[[subsystem.namespace]]
nsid = 2
volume = "gp/b"

[[subsystem]]
nqn = "{TWO_A}"
[[subsystem.namespace]]
nsid = 1
volume = "gp/c"

[[subsystem]]
nqn = "{TWO_B}"
[[subsystem.namespace]]
nsid = 1
volume = "gp/d"
"#
    );
    let dir = e2e_dir().expect("e2e dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).expect("write config");
    let control = dir.join(format!("{name}.sock")).display().to_string();
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--control-socket")
        .arg(&control);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let t = HostProcess::spawn_listening(name, cmd, addr, Duration::from_secs(20))
        .expect("target starts");
    (t, control)
}

fn pool(control: &str, args: &[&str]) -> String {
    let out = Command::new(release_binary("lightpool-target").expect("built"))
        .arg("pool")
        .arg("--control-socket")
        .arg(control)
        .args(args)
        .output()
        .expect("run lightpool-target pool");
    assert!(
        out.status.success(),
        "pool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Answers the guest: `snapshot VOL NAME` takes a snapshot through the control socket;
/// `done` ends. Returns what each snapshot answered.
fn host_agent(listener: TcpListener, control: String) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut answers = Vec::new();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            let w: Vec<&str> = b.split_whitespace().collect();
            match w.as_slice() {
                ["snapshot", vol, name] => {
                    answers.push(pool(&control, &["gp", "snapshot", vol, name]))
                }
                ["done"] => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => {}
            }
            let _ = s.write_all(b"ok\n");
        }
        answers
    })
}

#[test]
fn kernel_initiator_verifies_two_volumes_of_one_pool_at_once() {
    let port = free_port().expect("port");
    let (target, control) = start_target("pool-kernel", port);
    let agent_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = agent_listener.local_addr().expect("addr").port();
    let agent = host_agent(agent_listener, control.clone());
    let script = format!(
        r#"set -eu
A="-t tcp -a 10.0.2.2 -s {port}"
say() {{ echo "E2E: $*"; }}
# The block devices of subsystem $1, once $2 of them show up.
devs() {{
    for i in $(seq 1 200); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ "$(cat $s/subsysnqn 2>/dev/null)" = "$1" ] || continue
            d=$(ls -d $s/nvme*n* 2>/dev/null | sed 's#.*/##' | sort)
            [ $(echo "$d" | grep -c nvme) -ge $2 ] && {{ echo $d; return 0; }}
        done
        sleep 0.1
    done
    echo "namespaces of $1 did not show up" >&2
    return 1
}}
# fio writes and verifies two devices at once (two jobs, one run); $1 name, $2 $3 devices.
two() {{
    name=$1; d1=$2; d2=$3; shift 3
    fio --ioengine=libaio --direct=1 --iodepth=8 --verify=crc32c --verify_fatal=1 \
        --randrepeat=1 --output-format=terse --terse-version=3 "$@" \
        --name=$name-1 --filename=/dev/$d1 --name=$name-2 --filename=/dev/$d2 > /tmp/$name.out
    cat /tmp/$name.out | while read l; do
        say "fio $name job $(echo "$l" | cut -d';' -f3) errors=$(echo "$l" | cut -d';' -f5) write_kb=$(echo "$l" | cut -d';' -f47)"
    done
    [ "$(cut -d';' -f5 /tmp/$name.out | sort -u)" = 0 ]
}}

say "one subsystem, two namespaces"
nvme connect $A -n {ONE} --nr-io-queues=2
set -- $(devs {ONE} 2)
N1=$1; N2=$2
say "devices $N1 $N2"
two ns $N1 $N2 --rw=randwrite --bsrange=4k-256k --size=24m --do_verify=1
two nsw $N1 $N2 --rw=write --bs=128k --size=16m --offset=64m --do_verify=0
nvme disconnect -n {ONE}
nvme connect $A -n {ONE} --nr-io-queues=2
set -- $(devs {ONE} 2)
two nsw $1 $2 --rw=write --bs=128k --size=16m --offset=64m --verify_only
nvme disconnect -n {ONE}

say "two subsystems"
nvme connect $A -n {TWO_A}
nvme connect $A -n {TWO_B}
D1=$(devs {TWO_A} 1)
D2=$(devs {TWO_B} 1)
say "devices $D1 $D2"
# A snapshot of the thin volume d while fio writes to it.
( sleep 4; echo "snapshot d d-snap" | nc 10.0.2.2 {agent_port} ) &
two subsys $D1 $D2 --rw=randwrite --bsrange=4k-256k --size=32m --do_verify=1
wait
two subsysw $D1 $D2 --rw=write --bs=64k --size=16m --offset=96m --do_verify=0
nvme disconnect -n {TWO_A}
nvme disconnect -n {TWO_B}
nvme connect $A -n {TWO_A}
nvme connect $A -n {TWO_B}
D1=$(devs {TWO_A} 1)
D2=$(devs {TWO_B} 1)
two subsysw $D1 $D2 --rw=write --bs=64k --size=16m --offset=96m --verify_only
blkdiscard -o 0 -l 1048576 /dev/$D2
nvme disconnect -n {TWO_A}
nvme disconnect -n {TWO_B}
echo done | nc 10.0.2.2 {agent_port}
say "all good"
"#
    );
    let t0 = Instant::now();
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        ..GuestConfig::new("pool-kernel", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    eprintln!(
        "pool kernel e2e: boot {:?}, guest {:?}, test {:?}",
        out.boot_time,
        out.total_time,
        t0.elapsed()
    );
    let tail = out.tail(80);
    let log = target.log();
    assert_eq!(out.exit_code, 0, "guest:\n{tail}\ntarget log:\n{log}");
    assert!(out.console.contains("E2E: all good"), "{tail}");
    // Six fio runs of two jobs each.
    assert_eq!(out.console.matches("errors=0").count(), 12, "{tail}");
    for bad in [
        "I/O Error",
        "resetting controller",
        "failed to connect",
        "I/O tag",
    ] {
        assert!(
            !out.console.contains(bad),
            "guest kernel logged {bad:?}:\n{tail}"
        );
    }
    let snaps = agent.join().expect("agent");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(
        snaps[0].contains("name=d-snap") && snaps[0].contains("snapshot=true"),
        "{snaps:?}"
    );
    let list = pool(&control, &["gp", "list"]);
    for v in ["a", "b", "c", "d", "d-snap"] {
        assert!(list.contains(&format!("name={v} ")), "{v} missing: {list}");
    }
    assert!(
        list.contains("name=d size=134217728") && list.contains("parent=d-snap"),
        "{list}"
    );
    let check = pool(&control, &["gp", "check"]);
    assert!(check.starts_with("ok "), "{check}");
    let status = target.stop(Duration::from_secs(5)).expect("stop");
    assert!(status.success(), "target exit status {status}");
}
