//! NVMe/RDMA receives, per queue pair against one shared receive queue per reactor
//! (`[target] rdma_srq`): a measurement, not a test (ignored; it asserts only that the
//! runs completed). One guest, soft-RoCE; the target is started in each mode in turn,
//! alternating, [`ROUNDS`] times; each time [`HOSTS`] lightpool-perf processes (hosts)
//! run 4 KiB random reads at queue depth 32 on [`QPAIRS`] I/O queues each. Per run: IOPS
//! (the hosts' sum), the target's CPU time per I/O (utime + stime from /proc/PID/stat),
//! and the registered receive memory (the target's log: each connection's own receive
//! ring, or the SRQs). soft-RoCE under TCG is a software NIC on an emulated CPU: only
//! the ratios between the modes mean anything.
//!
//! cargo run --release -p lightpool-e2e --example rdma_srq_bench
//!
//! (the release binaries built by tests/run.sh: lightpool-target with the daemon's
//! rdma feature, lightpool-perf with perf's). docs/architecture.md has the figures.

use std::time::Duration;

use lightpool_e2e::{guest_release_binaries, rdma, run_guest, GuestConfig};

const NQN: &str = "nqn.2024-01.io.lightpool:rdma-srq";
const ROUNDS: usize = 5;
const HOSTS: usize = 2;
const QPAIRS: usize = 8;
const SECS: u32 = 4;

fn script() -> String {
    format!(
        r#"
set -eu
NQN={NQN}
{setup}
{perf}
modprobe nvme-rdma
R="trtype:rdma adrfam:ipv4 traddr:$RDMA_ADDR trsvcid:4420 subnqn:$NQN"
ticks() {{ awk '{{ print $14 + $15 }}' /proc/$1/stat; }}
for round in $(seq 1 {ROUNDS}); do
for srq in false true; do
cat > /tmp/t.toml <<EOT
[target]
reactors = 2
rdma_srq = $srq
# 1,024 pool buffers (32 MiB of 32 KiB): the hosts' reads in flight all find one.
max_transfer_size = 32768

[[listener]]
transport = "rdma"
address = "$RDMA_ADDR:4420"

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

[[subsystem.namespace]]
nsid = 1
ram = "64MiB"
block_size = 512
EOT
rm -f /run/t.sock
/test/lightpool-target --config /tmp/t.toml --control-socket /run/t.sock \
    --log info,lightpool_transport_rdma=debug > /tmp/target.log 2>&1 &
TPID=$!
for i in $(seq 1 200); do grep -q "NVMe/RDMA listening" /tmp/target.log && break; sleep 0.1; done
T0=$(ticks $TPID)
PIDS=
for h in $(seq 1 {HOSTS}); do
    /test/lightpool-perf --json -r "$R" -w randread -o 4096 -q 32 --qpairs {QPAIRS} -t {SECS} \
        --connect-timeout 20 > /tmp/perf$h.json 2> /tmp/perf$h.err &
    PIDS="$PIDS $!"
done
rc=0
for p in $PIDS; do wait $p || rc=$?; done
T1=$(ticks $TPID)
# Receive memory: each connection's own ring (recv_bytes=), or the SRQs (bytes=).
mem=$(awk '/connection accepted/ && match($0, /recv_bytes=[0-9]+/) {{ s += substr($0, RSTART + 11, RLENGTH - 11) }}
    /shared receive queue made/ && match($0, / bytes=[0-9]+/) {{ s += substr($0, RSTART + 7, RLENGTH - 7) }}
    END {{ printf "%d", s }}' /tmp/target.log)
conns=$(grep -c "connection accepted" /tmp/target.log || true)
for h in $(seq 1 {HOSTS}); do
    echo "SRQB $round $srq $h $rc $(tr -d '\n' < /tmp/perf$h.json)"
    [ $rc = 0 ] || {{ tail -n 5 /tmp/perf$h.err; tail -n 20 /tmp/target.log; }}
done
echo "SRQT $round $srq ticks=$((T1 - T0)) hz=$(getconf CLK_TCK 2>/dev/null || echo 100) recv_bytes=$mem conns=$conns"
kill $TPID; wait $TPID || true
# The next target listens on the same port: let the CM identifiers of this one go.
sleep 2
done
done
echo "SRQ-BENCH: done"
"#,
        setup = rdma::setup_script(),
        perf = rdma::perf_script(),
    )
}

#[derive(Default, Clone, Copy)]
struct Run {
    iops: f64,
    ios: f64,
    cpu_s: f64,
    recv_bytes: f64,
    conns: f64,
}

fn main() {
    let files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("lightpool-perf", "/test/lightpool-perf"),
    ]);
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        mem_mb: 2048,
        extra_files: files,
        ..GuestConfig::new("rdma-srq-bench", &script())
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(80);
    assert!(out.console.contains("SRQ-BENCH: done"), "{tail}");
    // (round, srq) -> run
    let mut runs: std::collections::BTreeMap<(usize, bool), Run> = Default::default();
    for line in out.console.lines() {
        let mut w = line.trim_end().splitn(6, ' ');
        match w.next() {
            Some("SRQB") => {
                let (Some(round), Some(srq), _, Some(rc)) =
                    (w.next(), w.next(), w.next(), w.next())
                else {
                    continue;
                };
                let json = w.next().unwrap_or_default();
                assert_eq!(rc, "0", "a perf run failed: {line}\n{tail}");
                let v: serde_json::Value = serde_json::from_str(json).expect("perf JSON");
                let r = runs
                    .entry((round.parse().unwrap_or(0), srq == "true"))
                    .or_default();
                r.iops += v["total"]["iops"].as_f64().unwrap_or(0.0);
                r.ios += v["total"]["ios"].as_f64().unwrap_or(0.0);
            }
            Some("SRQT") => {
                let (Some(round), Some(srq)) = (w.next(), w.next()) else {
                    continue;
                };
                let kv: std::collections::HashMap<&str, f64> = w
                    .flat_map(|f| f.split(' '))
                    .filter_map(|f| f.split_once('='))
                    .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                    .collect();
                let r = runs
                    .entry((round.parse().unwrap_or(0), srq == "true"))
                    .or_default();
                r.cpu_s = kv.get("ticks").copied().unwrap_or(0.0)
                    / kv.get("hz").copied().unwrap_or(100.0);
                r.recv_bytes = kv.get("recv_bytes").copied().unwrap_or(0.0);
                r.conns = kv.get("conns").copied().unwrap_or(0.0);
            }
            _ => {}
        }
    }
    assert_eq!(runs.len(), 2 * ROUNDS, "{tail}");
    println!(
        "{HOSTS} hosts x {QPAIRS} I/O queues, 4 KiB randread QD32, {SECS} s, 2 reactors (soft-RoCE in a TCG guest: ratios only)"
    );
    println!(
        "{:>5} {:>8} {:>10} {:>14} {:>16} {:>6}",
        "round", "mode", "IOPS", "CPU us per I/O", "recv memory KiB", "queues"
    );
    let mut sum = [Run::default(); 2];
    for ((round, srq), r) in &runs {
        let per_io = r.cpu_s * 1e6 / r.ios.max(1.0);
        println!(
            "{round:>5} {:>8} {:>10.0} {per_io:>14.1} {:>16.0} {:>6.0}",
            if *srq { "srq" } else { "per-qp" },
            r.iops,
            r.recv_bytes / 1024.0,
            r.conns
        );
        let s = &mut sum[usize::from(*srq)];
        s.iops += r.iops;
        s.ios += r.ios;
        s.cpu_s += r.cpu_s;
        s.recv_bytes += r.recv_bytes;
    }
    let cpu = |s: &Run| s.cpu_s / s.ios.max(1.0);
    println!(
        "srq / per-qp: IOPS {:.2}, CPU per I/O {:.2}, receive memory {:.2}",
        sum[1].iops / sum[0].iops.max(1.0),
        cpu(&sum[1]) / cpu(&sum[0]).max(f64::MIN_POSITIVE),
        sum[1].recv_bytes / sum[0].recv_bytes.max(1.0)
    );
}
