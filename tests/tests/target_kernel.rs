//! lightpool-target on the host against the Linux 6.12 kernel initiator in the guest:
//! discovery, connect, identify, fio with verify across reconnects, digests, and the
//! next host after a disconnect.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:e2e";
const SERIAL: &str = "LPE2E00000042";
const MODEL: &str = "LightPool e2e model";

fn start_target(name: &str, port: u16) -> HostProcess {
    let cfg = format!(
        r#"
[target]
reactors = 1

[[listener]]
address = "127.0.0.1:{port}"

[[subsystem]]
nqn = "{NQN}"
serial = "{SERIAL}"
model = "{MODEL}"
allow_any_host = true

[[subsystem.namespace]]
nsid = 1
ram = "256MiB"
block_size = 512
"#
    );
    let path = e2e_dir().expect("e2e dir").join(format!("{name}.toml"));
    std::fs::write(&path, cfg).expect("write config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    let control = e2e_dir().expect("e2e dir").join(format!("{name}.sock"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--control-socket")
        .arg(&control);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    HostProcess::spawn_listening(name, cmd, addr, Duration::from_secs(20)).expect("target starts")
}

/// The shell library every guest script below starts with.
const LIB: &str = r#"
set -eu
say() { echo "E2E: $*"; }
# The block device of $NQN once it shows up.
ns_dev() {
    for i in $(seq 1 200); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ "$(cat $s/subsysnqn 2>/dev/null)" = "$NQN" ] || continue
            for n in $s/nvme*n*; do
                [ -e "$n" ] && [ -b /dev/${n##*/} ] && { echo /dev/${n##*/}; return 0; }
            done
        done
        sleep 0.1
    done
    echo "namespace of $NQN did not show up" >&2
    return 1
}
ctrl_dev() { echo /dev/$(ls /sys/class/nvme-subsystem/nvme-subsys*/ | grep -m1 '^nvme[0-9]*$'); }
# fio over the namespace; $1 = name, rest = extra options. Terse v3: field 5 errors.
run_fio() {
    name=$1; shift
    fio --name=$name --filename=$DEV --ioengine=libaio --direct=1 --iodepth=8 \
        --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3 "$@" > /tmp/$name.out
    errs=$(cut -d';' -f5 /tmp/$name.out)
    say "fio $name errors=$errs read_kb=$(cut -d';' -f6 /tmp/$name.out) write_kb=$(cut -d';' -f47 /tmp/$name.out)"
    [ "$errs" = 0 ]
}
"#;

/// CPU time a process's threads have run, in nanoseconds, summed from
/// /proc/PID/task/*/schedstat (first field: time on CPU).
fn cpu_time(pid: u32) -> Duration {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("process tasks")
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// What the host side did for the guest.
#[derive(Default, Debug)]
struct AgentReport {
    /// Target CPU share between the guest's idle markers.
    idle: Option<f64>,
    /// Outputs of the ANA changes the guest asked for.
    ana: Vec<String>,
}

/// Acts on the guest's requests (one line per connection, answered "ok"): `idle-start`
/// and `idle-end` bracket a window in which the target's CPU use is measured; `ana G S`
/// sets ANA group G of the subsystem to state S through `lightpool-target ana`; `done`
/// ends.
fn host_agent(
    listener: TcpListener,
    pid: u32,
    control: PathBuf,
) -> std::thread::JoinHandle<AgentReport> {
    std::thread::spawn(move || {
        let mut report = AgentReport::default();
        let mut idle_start = None;
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            let words: Vec<&str> = b.split_whitespace().collect();
            match words.as_slice() {
                ["idle-start"] => idle_start = Some((Instant::now(), cpu_time(pid))),
                ["idle-end"] => {
                    if let Some((t, c)) = idle_start {
                        let cpu = cpu_time(pid) - c;
                        report.idle = Some(cpu.as_secs_f64() / t.elapsed().as_secs_f64());
                    }
                }
                ["ana", group, state] => {
                    let out = Command::new(release_binary("lightpool-target").expect("built"))
                        .args([
                            "ana",
                            "--nqn",
                            NQN,
                            "--group",
                            group,
                            "--state",
                            state,
                            "--control-socket",
                        ])
                        .arg(&control)
                        .output()
                        .expect("run lightpool-target ana");
                    report.ana.push(format!(
                        "{}{}{}",
                        if out.status.success() { "" } else { "FAILED: " },
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                ["done"] => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => {}
            }
            let _ = s.write_all(b"ok\n");
        }
        report
    })
}

#[test]
fn kernel_initiator_against_lightpool_target() {
    let port = free_port().expect("port");
    let target = start_target("e2e-kernel-target", port);
    let agent_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let idle_port = agent_listener.local_addr().expect("addr").port();
    let control = e2e_dir().expect("dir").join("e2e-kernel-target.sock");
    let agent = host_agent(agent_listener, target.id(), control);
    let script = format!(
        r#"NQN={NQN}
A="-t tcp -a 10.0.2.2 -s {port}"
{LIB}
say "discover"
nvme discover $A | tee /tmp/disc
grep -q "subnqn:  *$NQN" /tmp/disc
grep -q "subtype: *nvme subsystem" /tmp/disc
grep -q "trsvcid: *{port}" /tmp/disc

for digests in "" "--hdr-digest --data-digest"; do
    say "connect ${{digests:-plain}}"
    nvme connect $A -n $NQN --nr-io-queues=2 $digests
    DEV=$(ns_dev)
    CTRL=$(ctrl_dev)
    say "namespace $DEV controller $CTRL"
    nvme list-subsys | tee /tmp/ls
    grep -q "$NQN" /tmp/ls
    nvme id-ctrl $CTRL > /tmp/idc
    grep -E '^(sn|mn|fr|subnqn|cntlid|mdts|ioccsz) ' /tmp/idc
    grep -q "^sn  *: {SERIAL}" /tmp/idc
    grep -q "^mn  *: {MODEL}" /tmp/idc
    nvme id-ns $DEV > /tmp/idn
    grep -E '^(nsze|ncap|nuse|anagrpid) ' /tmp/idn
    grep -q '^nsze *: 0x80000$' /tmp/idn
    # Admin queue plus the two I/O queues asked for.
    say "queue_count $(cat /sys/class/nvme/${{CTRL##*/}}/queue_count)"
    [ "$(cat /sys/class/nvme/${{CTRL##*/}}/queue_count)" = 3 ]
    if [ -z "$digests" ]; then
        # Connected and idle (keep-alives only): the host measures the target's CPU.
        echo idle-start | nc 10.0.2.2 {idle_port}
        sleep 20
        echo idle-end | nc 10.0.2.2 {idle_port}
    fi

    # Random writes of 4 KiB to 1 MiB, verified while running.
    run_fio rand --rw=randwrite --bsrange=4k-1m --size=24m --do_verify=1 --numjobs=1
    # Sequential writes, verify deferred until after a reconnect.
    run_fio seqw --rw=write --bsrange=4k-1m --size=24m --offset=64m --do_verify=0
    nvme disconnect -n $NQN
    say "reconnect"
    nvme connect $A -n $NQN --nr-io-queues=2 $digests
    DEV=$(ns_dev)
    run_fio seqw --rw=write --bsrange=4k-1m --size=24m --offset=64m --verify_only
    run_fio rand --rw=randwrite --bsrange=4k-1m --size=24m --verify_only
    # Flush and write-zeroes/discard reach the target.
    nvme flush $CTRL -n 1
    blkdiscard -o 0 -l 1048576 $DEV
    nvme disconnect -n $NQN
    say "cycle done ${{digests:-plain}}"
done

say "next host"
nvme connect $A -n $NQN --hostnqn=nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555
DEV=$(ns_dev)
dd if=$DEV of=/dev/null bs=1M count=4 iflag=direct 2>&1 | tail -1
nvme disconnect -n $NQN

say "ana"
nvme connect $A -n $NQN
DEV=$(ns_dev)
P=$(ls -d /sys/class/nvme/nvme*/nvme*c*n1 /sys/block/nvme*c*n1 2>/dev/null | head -1)
say "ana path $P state $(cat $P/ana_state)"
[ "$(cat $P/ana_state)" = optimized ]
echo "ana 1 inaccessible" | nc 10.0.2.2 {idle_port}
for i in $(seq 1 100); do [ "$(cat $P/ana_state)" = inaccessible ] && break; sleep 0.1; done
say "ana after change: $(cat $P/ana_state)"
[ "$(cat $P/ana_state)" = inaccessible ]
echo "ana 1 optimized" | nc 10.0.2.2 {idle_port}
for i in $(seq 1 100); do [ "$(cat $P/ana_state)" = optimized ] && break; sleep 0.1; done
say "ana restored: $(cat $P/ana_state)"
[ "$(cat $P/ana_state)" = optimized ]
dd if=$DEV of=/dev/null bs=1M count=4 iflag=direct 2>&1 | tail -1
nvme disconnect -n $NQN
echo done | nc 10.0.2.2 {idle_port}
say "all good"
"#
    );
    let t0 = Instant::now();
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        ..GuestConfig::new("e2e-kernel-target", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    eprintln!(
        "kernel e2e: boot {:?}, guest {:?}, test {:?}",
        out.boot_time,
        out.total_time,
        t0.elapsed()
    );
    let tail = out.tail(80);
    let log = target.log();
    assert_eq!(out.exit_code, 0, "guest:\n{tail}\ntarget log:\n{log}");
    for want in [
        "E2E: connect plain",
        "E2E: connect --hdr-digest --data-digest",
        "E2E: cycle done plain",
        "E2E: cycle done --hdr-digest --data-digest",
        "E2E: next host",
        "E2E: ana after change: inaccessible",
        "E2E: ana restored: optimized",
        "E2E: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing:\n{tail}");
    }
    assert_eq!(out.console.matches("errors=0").count(), 8, "{tail}");
    for bad in [
        "I/O Error",
        "resetting controller",
        "failed to connect",
        "Connect command failed",
        "I/O tag",
    ] {
        assert!(
            !out.console.contains(bad),
            "guest kernel logged {bad:?}:\n{tail}"
        );
    }
    let report = agent.join().expect("agent thread");
    eprintln!("ANA changes: {:?}", report.ana);
    assert_eq!(report.ana.len(), 2, "{report:?}");
    assert!(
        report.ana.iter().all(|a| !a.starts_with("FAILED")),
        "{report:?}"
    );
    let idle = report.idle.expect("idle window measured");
    eprintln!(
        "target CPU while hosts are connected and idle: {:.3}% of one core",
        idle * 100.0
    );
    assert!(
        idle < 0.02,
        "idle target used {:.2}% of a core with a host connected",
        idle * 100.0
    );
    // The target is still up and served everything without crashing.
    let status = target.stop(Duration::from_secs(5)).expect("stop");
    assert!(status.success(), "target exit status {status}");
}
