//! lightpool-target's NVMe/RDMA transport against the Linux 6.12 kernel's nvme-rdma
//! initiator, both in one guest on soft-RoCE (rxe on the guest's interface): discovery
//! (RDMA entries with their TSAS), connect, fio with verify from 4 KiB to 1 MiB, random
//! and sequential, within and beyond the in-capsule size (8 KiB), disconnect and
//! reconnect with another I/O queue count, a hostile host beside it (bad connect private
//! data rejected with the NVMe/RDMA statuses, an SGL over MDTS, a key it never
//! registered: its queue ends while fio goes on; Writes and Reads in flight when the
//! host's memory region goes, or its queue pair without a disconnect (the target's
//! stall bound ends it while another host is served): the queue ends, its ID is given
//! back; the host's next call after its queue ended fails at once), more Writes at once
//! than the registered buffer pool holds (Command Interrupted without DNR, then
//! success when sent again), a host killed (-9) in the middle of its I/O (its queues
//! end in bounded time while fio goes on), lightpool-perf over RDMA with and without
//! discovery, and a hot upgrade under fio (the RDMA queues end, the successor listens
//! again, the host reconnects and fio verifies). Twice: with per-QP receives (the
//! default) and with shared receive queues (`[target] rdma_srq = true`).
#![cfg(feature = "e2e")]

use std::time::Duration;

use lightpool_e2e::{guest_release_binaries, rdma, run_guest, GuestConfig};

const NQN: &str = "nqn.2024-01.io.lightpool:rdma";

/// fio jobs: rw, block sizes. In-capsule data up to 8 KiB (the default in-capsule
/// size), RDMA READ beyond; reads by RDMA WRITE in every job's verify pass.
const JOBS: &[(&str, &str)] = &[
    ("randwrite", "4k-4k"),
    ("write", "8k-8k"),
    ("randwrite", "16k-16k"),
    ("write", "128k-128k"),
    ("randwrite", "4k-1m"),
    ("write", "1m-1m"),
    ("randrw", "4k-64k"),
];

/// The script; `srq`: the target's receives from shared receive queues
/// (`[target] rdma_srq = true`) instead of each queue pair's own.
fn script(srq: bool) -> String {
    let jobs: Vec<String> = JOBS.iter().map(|(rw, bs)| format!("{rw}:{bs}")).collect();
    format!(
        r#"
set -eu
NQN={NQN}
say() {{ echo "RDMA-E2E: $*"; }}
fail() {{ say "FAILED: $*"; echo "--- target log"; tail -n 60 /tmp/target.log; exit 1; }}
{setup}
modprobe nvme-rdma
cat > /tmp/t.toml <<EOT
[target]
reactors = 2
metrics_address = "127.0.0.1:9464"
rdma_srq = {srq}

[[listener]]
transport = "rdma"
address = "$RDMA_ADDR:4420"

# The same subsystem over NVMe/TCP, for the CPU-per-command comparison.
[[listener]]
address = "127.0.0.1:4421"

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

[[subsystem.namespace]]
nsid = 1
ram = "64MiB"
block_size = 512
EOT
/test/lightpool-target --config /tmp/t.toml --control-socket /run/t.sock \
    --log info,lightpool_transport_rdma=debug > /tmp/target.log 2>&1 &
TPID=$!
for i in $(seq 1 200); do grep -q "NVMe/RDMA listening" /tmp/target.log && break; sleep 0.1; done
grep -q "NVMe/RDMA listening" /tmp/target.log || fail "the target did not listen"
say "target up"
nvme discover -t rdma -a $RDMA_ADDR -s 4420 > /tmp/disc.out || fail "discovery"
cat /tmp/disc.out
grep -q "subnqn:  $NQN" /tmp/disc.out || fail "subsystem not in the discovery log"
ns_dev() {{
    for i in $(seq 1 200); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ "$(cat $s/subsysnqn 2>/dev/null)" = $NQN ] || continue
            for n in $s/nvme*n*; do
                [ -e "$n" ] && [ -b /dev/${{n##*/}} ] && {{ echo /dev/${{n##*/}}; return 0; }}
            done
        done
        sleep 0.1
    done
    return 1
}}
run_fio() {{
    rw=$1; bs=$2
    fio --name=j --filename=$DEV --ioengine=libaio --direct=1 --rw=$rw --bsrange=$bs \
        --size=16m --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --randrepeat=0 --output-format=terse --terse-version=3 > /tmp/fio.out \
        || {{ cat /tmp/fio.out; fail "fio $rw $bs"; }}
    say "fio $rw $bs errors=$(cut -d';' -f5 /tmp/fio.out) read_kb=$(cut -d';' -f6 /tmp/fio.out) write_kb=$(cut -d';' -f47 /tmp/fio.out)"
}}
io_queues() {{ ls -d /sys/class/nvme/$1/nvme*c*n* 2>/dev/null | wc -l; }}

nvme connect -t rdma -a $RDMA_ADDR -s 4420 -n $NQN || fail "connect"
DEV=$(ns_dev) || fail "namespace did not show up"
CTRL=$(ls /sys/class/nvme-subsystem/nvme-subsys*/ | grep -m1 '^nvme[0-9]*$')
say "connected $DEV over $(cat /sys/class/nvme/$CTRL/transport) queues=$(cat /sys/class/nvme/$CTRL/queue_count)"
for j in {jobs}; do
    run_fio ${{j%%:*}} ${{j#*:}}
done
nvme disconnect -n $NQN || fail "disconnect"
say "disconnected"
say "I/O queues with in-capsule data: $(grep -c 'first in-capsule data' /tmp/target.log)"
say "I/O queues with RDMA READ: $(grep -c 'first RDMA READ' /tmp/target.log)"

nvme connect -t rdma -a $RDMA_ADDR -s 4420 -n $NQN --nr-io-queues=1 || fail "reconnect"
DEV=$(ns_dev) || fail "namespace did not show up again"
CTRL=$(ls /sys/class/nvme-subsystem/nvme-subsys*/ | grep -m1 '^nvme[0-9]*$')
say "reconnected queues=$(cat /sys/class/nvme/$CTRL/queue_count)"
# A hostile host beside it: bad connect private data, an oversized transfer, a key it
# never registered (its queue ends); the kernel host's fio keeps verifying meanwhile.
queues() {{ wget -qO- http://127.0.0.1:9464/metrics | awk '/^lightpool_reactor_queues/ {{ s += $NF }} END {{ printf "%d", s }}'; }}
depth() {{ wget -qO- http://127.0.0.1:9464/metrics | awk '/^lightpool_reactor_queue_depth/ {{ s += $NF }} END {{ printf "%d", s }}'; }}
# The kernel host idle: its queues, and what it keeps outstanding (an AER).
D0=$(depth)
run_fio randwrite 4k-256k &
FIO=$!
/test/rdma_hostile $RDMA_ADDR:4420 $NQN > /tmp/hostile.out 2>&1 || {{ cat /tmp/hostile.out; fail "hostile host"; }}
cat /tmp/hostile.out
wait $FIO || fail "fio beside the hostile host"
# More Writes at once than the registered buffer pool holds: those that find no
# registered buffer end with Command Interrupted (no DNR) and succeed when sent again.
QP0=$(queues)
/test/rdma_hostile $RDMA_ADDR:4420 $NQN pool > /tmp/pool.out 2>&1 || {{ cat /tmp/pool.out; fail "pool-dry host"; }}
cat /tmp/pool.out
for i in $(seq 1 100); do [ "$(queues)" = "$QP0" ] && break; sleep 0.1; done
# One line per queue per interval (the first at once), each with the count it stood
# for: suppressed=N on the next line or at the queue's end.
unreg() {{ awk '/no registered buffer for a request/ {{ n++ }} /registered buffer/ && match($0, /suppressed=[0-9]+/) {{ n += substr($0, RSTART + 11, RLENGTH - 11) }} END {{ printf "%d", n }}' /tmp/target.log; }}
say "requests without a registered buffer: $(unreg) (log lines: $(grep -c 'registered buffer' /tmp/target.log))"
# A host that disappears: lightpool-perf killed (-9) in the middle of its I/O. The
# target must see its connections go (RDMA_CM DISCONNECTED: the kernel ends a dead
# process's connections) and end its queues within a bounded time, while the kernel
# host's fio beside it goes on.
Q0=$(queues)
fio --name=beside --filename=$DEV --ioengine=libaio --direct=1 --rw=randrw --bsrange=4k-64k \
    --size=8m --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
    --output-format=terse --terse-version=3 > /tmp/beside.out 2>&1 &
FIO=$!
/test/lightpool-perf -r "trtype:rdma adrfam:ipv4 traddr:$RDMA_ADDR trsvcid:4420 subnqn:$NQN" \
    -w randrw -o 65536 -q 16 -t 120 --range 98304:110000 --connect-timeout 10 \
    > /tmp/victim.out 2>&1 &
VPID=$!
for i in $(seq 1 100); do [ "$(queues)" -gt "$Q0" ] && break; sleep 0.1; done
QV=$(queues)
[ "$QV" -gt "$Q0" ] || {{ cat /tmp/victim.out; fail "lightpool-perf did not connect"; }}
sleep 1
kill -9 $VPID
# busybox date has no %N: milliseconds from /proc/uptime.
ms() {{ awk '{{ printf "%d", $1 * 1000 }}' /proc/uptime; }}
T0=$(ms)
for i in $(seq 1 150); do [ "$(queues)" = "$Q0" ] && break; sleep 0.1; done
QK=$(queues)
say "killed host: queues $QV -> $QK (before it $Q0) in $(($(ms) - T0)) ms"
[ "$QK" = "$Q0" ] || fail "the target kept the killed host's queues"
wait $FIO || {{ cat /tmp/beside.out; fail "fio beside the killed host"; }}
say "fio beside the killed host errors=$(cut -d';' -f5 /tmp/beside.out)"
# Idle again: only the kernel host's queues, nothing in flight but what it kept before.
same=no
for i in $(seq 1 50); do [ "$(queues)" = "$Q0" ] && [ "$(depth)" = "$D0" ] && {{ same=yes; break; }}; sleep 0.1; done
say "idle after hostile hosts: queues=$(queues) as before: $same (depth $(depth), before $D0)"
grep -E "NVMe/RDMA work request failed|NVMe/RDMA queue ended" /tmp/target.log | tail -n 8 | sed 's/^/TLOG: /'
say "target panics: $(grep -c panicked /tmp/target.log)"
nvme disconnect -n $NQN || fail "second disconnect"
say "disconnected again"

# Reactor busy time per command, RDMA against TCP, on the same 4 KiB random reads
# (the metrics endpoint's counters; soft-RoCE is a software NIC under an emulated CPU,
# so only the ratio says anything).
snap() {{
    wget -qO- http://127.0.0.1:9464/metrics > /tmp/m || fail "metrics endpoint"
    busy=$(awk '/^lightpool_reactor_seconds_total/ && /state="busy"/ {{ s += $NF }} END {{ printf "%.6f", s }}' /tmp/m)
    cmds=$(awk '/^lightpool_reactor_commands_total/ {{ s += $NF }} END {{ printf "%d", s }}' /tmp/m)
}}
cpu_per_cmd() {{
    snap; b0=$busy; c0=$cmds
    fio --name=cpu --filename=$DEV --ioengine=libaio --direct=1 --rw=randread --bs=4k \
        --iodepth=8 --size=16m --number_ios=6000 --output-format=terse --terse-version=3 \
        > /tmp/cpu.out || fail "fio for the CPU comparison over $1"
    snap
    say "busy us per command over $1: $(awk -v b0=$b0 -v b1=$busy -v c0=$c0 -v c1=$cmds 'BEGIN {{ printf "%.2f", (b1 - b0) * 1e6 / (c1 - c0) }}') ($((cmds - c0)) commands)"
}}
nvme connect -t rdma -a $RDMA_ADDR -s 4420 -n $NQN --nr-io-queues=1 || fail "connect for CPU"
DEV=$(ns_dev) || fail "namespace for CPU"
cpu_per_cmd rdma
nvme disconnect -n $NQN || fail "disconnect after CPU"
nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $NQN --nr-io-queues=1 || fail "TCP connect for CPU"
DEV=$(ns_dev) || fail "namespace over TCP"
cpu_per_cmd tcp
nvme disconnect -n $NQN || fail "TCP disconnect"

# lightpool-perf's NVMe/RDMA host: verified runs within and beyond the 8 KiB in-capsule
# size and by keyed SGL only; then RDMA against TCP on the same 4 KiB random reads
# (IOPS, and the target's reactor busy time per command).
{perf}
R="trtype:rdma adrfam:ipv4 traddr:$RDMA_ADDR trsvcid:4420 subnqn:$NQN"
# Each on LBAs fio never wrote (perf's verify takes zeroes or its own stamps); the
# random reads check what the random writes stamped.
for job in "randwrite 4096 32768:49152" "randread 4096 32768:49152" \
    "randrw 4096 49152:65536 --no-in-capsule" "randrw 16384 65536:81920" \
    "randrw 131072 81920:98304"; do
    set -- $job
    perf_run "$1-$2${{4:-}}" -r "$R" -w $1 -o $2 --range $3 -q 16 -t 2 --verify \
        --connect-timeout 10 ${{4:-}}
done
# Neither subnqn nor trsvcid: lightpool-perf reads the discovery log over NVMe/RDMA
# (nothing listens on the discovery port, 8009: it asks the I/O port) and runs on the
# RDMA entry it lists (the TCP one is passed over).
perf_run discovered -r "trtype:rdma adrfam:ipv4 traddr:$RDMA_ADDR" -w randread -o 4096 \
    --range 32768:49152 -q 8 -t 1 --verify --connect-timeout 10
grep -E "discovered|nothing listens" /tmp/perf.err | sed 's/^/PERF-DISC: /'
grep -iE "closing|WARN|deferred" /tmp/target.log | grep -v "rejected" | tail -n 12 | sed 's/^/TLOG: /'
perf_cmp() {{
    snap; b0=$busy; c0=$cmds
    perf_run "cmp-$1" -r "$2" -w randread -o 4096 -q 8 -t 3 --connect-timeout 10
    snap
    say "perf: target busy us per I/O over $1: $(awk -v b0=$b0 -v b1=$busy -v c0=$c0 -v c1=$cmds 'BEGIN {{ printf "%.2f", (b1 - b0) * 1e6 / (c1 - c0) }}') ($((cmds - c0)) commands)"
}}
perf_cmp rdma "$R"
perf_cmp tcp "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4421 subnqn:$NQN"

# Hot upgrade (to the same binary): RDMA queues cannot travel, so the old process ends
# them and the successor listens again; the host reconnects (after 1 s here) and fio,
# running across it, verifies everything it wrote.
nvme connect -t rdma -a $RDMA_ADDR -s 4420 -n $NQN --nr-io-queues=2 --reconnect-delay=1 \
    --ctrl-loss-tmo=60 || fail "connect before the upgrade"
DEV=$(ns_dev) || fail "namespace did not show up before the upgrade"
fio --name=across --filename=$DEV --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite \
    --bsrange=4k-256k --size=16m --loops=6 --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --output-format=terse --terse-version=3 > /tmp/across.out 2>&1 &
FPID=$!
sleep 3
/test/lightpool-target upgrade --binary /test/lightpool-target --control-socket /run/t.sock \
    > /tmp/up.out 2>&1 || {{ cat /tmp/up.out; fail "upgrade"; }}
grep "took over" /tmp/up.out || true
say "upgraded"
wait $FPID || {{ cat /tmp/across.out; fail "fio across the upgrade"; }}
say "fio across the upgrade errors=$(cut -d';' -f5 /tmp/across.out) write_kb=$(cut -d';' -f47 /tmp/across.out)"
dmesg | grep -iE "nvme.*(reconnect|rdma)" | tail -n 8 | sed 's/^/RDMA-DMESG: /'
say "reconnects $(dmesg | grep -c 'Successfully reconnected')"
nvme disconnect -n $NQN || fail "disconnect after the upgrade"
for p in $(pidof lightpool-target); do kill $p; done
sleep 1
grep -E "WARN|ERROR" /tmp/target.log | tail -n 20 || true
say "shared receive queues made: $(grep -c 'shared receive queue made' /tmp/target.log)"
say "all good"
"#,
        setup = rdma::setup_script(),
        perf = rdma::perf_script(),
        jobs = jobs.join(" ")
    )
}

#[test]
fn lightpool_target_over_nvme_rdma_against_the_kernel_initiator() {
    run(false);
}

/// The same with `[target] rdma_srq = true`: every receive from the reactors' shared
/// receive queues.
#[test]
fn lightpool_target_over_nvme_rdma_with_shared_receive_queues() {
    run(true);
}

fn run(srq: bool) {
    let files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("examples/rdma_hostile", "/test/rdma_hostile"),
        ("lightpool-perf", "/test/lightpool-perf"),
    ]);
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        mem_mb: 2048,
        extra_files: files,
        ..GuestConfig::new(
            if srq {
                "rdma-target-srq"
            } else {
                "rdma-target"
            },
            &script(srq),
        )
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(120);
    assert_eq!(out.exit_code, 0, "{tail}");
    for want in [
        "RDMA: rxe0 up",
        "RDMA-E2E: target up",
        "trtype:  rdma",
        "rdma_qptype: connected",
        "rdma_cms:    rdma-cm",
        "RDMA-E2E: connected /dev/nvme0n1 over rdma queues=3",
        "RDMA-E2E: disconnected",
        // Both I/O queues took writes within the in-capsule size in the capsule, and
        // longer ones by RDMA READ.
        "RDMA-E2E: I/O queues with in-capsule data: 2",
        "RDMA-E2E: I/O queues with RDMA READ: 2",
        "RDMA-E2E: reconnected queues=2",
        "RDMA-E2E: fio randwrite 4k-256k errors=0 read_kb=16384 write_kb=16384",
        // RoCE pads the CM's private data: a short one reads as HSQSIZE 0.
        "HOSTILE: reject short: RDMA_CM_EVENT_REJECTED sts=Some(4) ok",
        "HOSTILE: reject recfmt: RDMA_CM_EVENT_REJECTED sts=Some(2) ok",
        "HOSTILE: reject qid: RDMA_CM_EVENT_REJECTED sts=Some(3) ok",
        "HOSTILE: reject hsqsize0: RDMA_CM_EVENT_REJECTED sts=Some(4) ok",
        "HOSTILE: reject hsqsize-big: RDMA_CM_EVENT_REJECTED sts=Some(4) ok",
        "HOSTILE: reject hrqsize0: RDMA_CM_EVENT_REJECTED sts=Some(5) ok",
        "HOSTILE: bad key: disconnected ok",
        "HOSTILE: connect qid mismatch: ended ok",
        // Hosts gone mid-transfer: the target ends the queue, gives queue 1 back to the
        // controller (connected again) and serves I/O on it.
        "HOSTILE: teardown write, region gone: ended ok",
        "HOSTILE: teardown read, region gone: ended ok",
        // A queue pair destroyed without a disconnect (soft-RoCE retries for ever): the
        // target's stall bound (5 s) ends the queue, within it plus 3 s, while another
        // host's writes and reads go on.
        "HOSTILE: teardown write, queue pair gone: ended ok",
        "HOSTILE: teardown read, queue pair gone: ended ok",
        // A killed host: its queues end within 15 s, the kernel host's fio goes on.
        "RDMA-E2E: fio beside the killed host errors=0",
        "RDMA-E2E: idle after hostile hosts: queues=2 as before: yes",
        "RDMA-E2E: target panics: 0",
        "RDMA-E2E: disconnected again",
        "RDMA-E2E: upgraded",
        "RDMA-E2E: fio across the upgrade errors=0 write_kb=",
        "RDMA-E2E: all good",
        // lightpool-perf without subnqn: discovery over NVMe/RDMA.
        "PERF-DISC: lightpool-perf: nothing listens on 10.0.2.15:8009",
        "PERF-DISC: lightpool-perf: discovered nqn.2024-01.io.lightpool:rdma at 10.0.2.15:4420",
    ] {
        assert!(out.console.contains(want), "{want:?} missing from:\n{tail}");
    }
    // Per-QP receives make no SRQ; shared ones one per reactor that served a queue
    // (the log is the first process's: the hot upgrade's successor logs elsewhere).
    let srqs = out
        .console
        .lines()
        .find_map(|l| l.split("RDMA-E2E: shared receive queues made: ").nth(1))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if srq {
        assert!(srqs.is_some_and(|n| n >= 1), "{srqs:?}:\n{tail}");
    } else {
        assert_eq!(srqs, Some(0), "{tail}");
    }
    let reconnects = out
        .console
        .lines()
        .find_map(|l| l.split("RDMA-E2E: reconnects ").nth(1))
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert!(
        reconnects.is_some_and(|n| n >= 1),
        "the host did not reconnect across the upgrade ({reconnects:?}):\n{tail}"
    );
    for prefix in [
        "HOSTILE: oversized: ",
        "HOSTILE: the host's next call: ",
        "HOSTILE: pool dry: ",
    ] {
        assert!(
            out.console
                .lines()
                .any(|l| l.starts_with(prefix) && l.trim_end().ends_with(" ok")),
            "{prefix:?} ... ok missing from:\n{tail}"
        );
    }
    let per_cmd = |t: &str| -> Option<f64> {
        out.console
            .lines()
            .find_map(|l| l.split(&format!("busy us per command over {t}: ")).nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let (r, t) = (per_cmd("rdma"), per_cmd("tcp"));
    assert!(
        r.is_some_and(|v| v > 0.0) && t.is_some_and(|v| v > 0.0),
        "{r:?} {t:?}: {tail}"
    );
    eprintln!(
        "reactor busy time per command: RDMA {r:?} us, TCP {t:?} us, RDMA/TCP {:.2} (soft-RoCE in a TCG guest: only the ratio means anything)",
        r.unwrap_or(0.0) / t.unwrap_or(1.0)
    );
    let perf = rdma::perf_reports(&out.console);
    for name in [
        "randwrite-4096",
        "randread-4096",
        "randrw-4096--no-in-capsule",
        "randrw-16384",
        "randrw-131072",
        "discovered",
    ] {
        let r = perf
            .get(name)
            .unwrap_or_else(|| panic!("no perf run {name} in:\n{tail}"));
        // A write-only run reads nothing back to check.
        r.assert_clean(name, name != "randwrite-4096");
        if name == "randread-4096" {
            // It read back what randwrite-4096 stamped, not only zeroes.
            assert!(r.stamped_blocks_read() > 0, "{r:?}");
        }
    }
    let (cr, ct) = (perf.get("cmp-rdma"), perf.get("cmp-tcp"));
    for (name, r) in [("cmp-rdma", cr), ("cmp-tcp", ct)] {
        r.unwrap_or_else(|| panic!("no perf run {name} in:\n{tail}"))
            .assert_clean(name, false);
    }
    let busy = |t: &str| -> Option<f64> {
        out.console
            .lines()
            .find_map(|l| {
                l.split(&format!("perf: target busy us per I/O over {t}: "))
                    .nth(1)
            })
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let (br, bt) = (busy("rdma"), busy("tcp"));
    assert!(
        br.is_some_and(|v| v > 0.0) && bt.is_some_and(|v| v > 0.0),
        "{br:?} {bt:?}: {tail}"
    );
    let (ir, it) = (cr.map_or(0.0, |r| r.iops()), ct.map_or(0.0, |r| r.iops()));
    eprintln!(
        "lightpool-perf 4 KiB randread q8, 3 s: RDMA {ir:.0} IOPS, TCP {it:.0} IOPS, RDMA/TCP {:.2}; target reactor busy per I/O RDMA {br:?} us, TCP {bt:?} us, RDMA/TCP {:.2} (soft-RoCE in an emulated guest: ratios only)",
        ir / it.max(1.0),
        br.unwrap_or(0.0) / bt.unwrap_or(1.0)
    );
    for (rw, bs) in JOBS {
        let line = format!("RDMA-E2E: fio {rw} {bs} errors=0 ");
        assert!(
            out.console.contains(&line),
            "{line:?} missing from:\n{tail}"
        );
    }
}
