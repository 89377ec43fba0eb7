//! The ublk local path in the guest (Linux 6.12, `ublk_drv`): lightpool-target runs
//! inside the guest with a pool on a sparse file there, and serves its volumes to the
//! guest's own kernel as /dev/ublkbN. One boot:
//!
//! - Bad input: an export before `modprobe ublk_drv` is FAILED_PRECONDITION saying
//!   so; a missing volume is NOT_FOUND.
//! - A volume exported (twice: the same device), shown in the volume's listing,
//!   refused for delete and for a hot upgrade while exported; fio randwrite + verify
//!   at 4k and 128k with zero errors; stopped (twice), no /dev/ublkb* left.
//! - Speed: the same volume through ublk and through NVMe/TCP loopback (the guest's
//!   kernel initiator to the target on 127.0.0.1), randread 4k QD32, randwrite 4k
//!   QD32 and read 128k QD8, the two sides alternated three times.
//! - The CSI node plugin (`lightpool csi --node --dataplane-api`) stages a volume
//!   whose context says it is on this node through ublk as ext4, files written,
//!   unstaged (no /dev/ublkb* left), staged again with the files there; a local
//!   volume that does not exist is NOT_FOUND.
//! - The control plane refuses to migrate a volume staged through ublk: a standalone
//!   instance in the guest, a volume of its exported through ublk, the agent's report
//!   of that (status.ublk), and `lightpool volume migrate` refused at Pending saying
//!   how to unstage; with the export stopped, the refusal is another one.
//! - A target killed with SIGKILL leaves its device; the next start deletes it. A
//!   target stopped with SIGTERM stops and deletes its devices.
#![cfg(feature = "e2e")]

use std::collections::BTreeMap;
use std::time::Duration;

use lightpool_e2e::{guest_release_binaries, run_guest, GuestConfig};

const NQN: &str = "nqn.2024-01.io.lightpool:ublk-perf";

fn script() -> String {
    format!(
        r#"set -eu
say() {{ echo "E2E: $*"; }}
fail() {{ say "FAILED: $*"; echo "--- target log"; tail -n 40 /tmp/target.log; exit 1; }}
# What a stuck step leaves to look at: requests in flight per device, the target's
# threads and where they wait, and the kernel's blocked tasks (sysrq w).
diag() {{ echo "--- in flight"
    for d in /sys/block/ublkb* /sys/block/nvme*; do if [ -e $d/inflight ]; then echo "$d: $(cat $d/inflight)"; fi; done
    echo "--- target threads"
    for t in /proc/${{TPID:-0}}/task/*; do if [ -e $t/stat ]; then echo "$(cut -d' ' -f2-3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null || true)"; fi; done
    echo w > /proc/sysrq-trigger 2>/dev/null || true
    echo "--- kernel log"; dmesg | tail -n 40 || true; }}
# A step that may hang: bounded, and a hang says where it stuck instead of waiting for
# the guest's timeout.
bounded() {{ secs=$1; what=$2; shift 2; timeout $secs "$@" || {{ rc=$?; diag; fail "$what (exit $rc; 143 is the limit of ${{secs}}s)"; }}; }}
cat > /tmp/t.toml <<EOT
[target]
reactors = 2

[[listener]]
address = "127.0.0.1:4420"

[[pool]]
name = "node"
device = "/tmp/pool.img"

[[pool.volume]]
name = "v1"
size = "160MiB"

[[pool.volume]]
name = "perf"
size = "128MiB"

[[pool.volume]]
name = "csi"
size = "96MiB"

[[subsystem]]
nqn = "{NQN}"
[[subsystem.namespace]]
nsid = 1
volume = "node/perf"
EOT
dd if=/dev/zero of=/tmp/pool.img bs=1M count=0 seek=640 2>/dev/null
start_target() {{
    /test/lightpool-target --config /tmp/t.toml --control-socket /run/t.sock >> /tmp/target.log 2>&1 &
    TPID=$!
    for i in $(seq 1 200); do [ -S /run/t.api.sock ] && return 0; sleep 0.1; done
    fail "the target did not start"
}}
L="/test/lightpool --socket /run/t.api.sock"
devices() {{ ls /sys/class/ublk-char 2>/dev/null | wc -l; }}
refused() {{ want=$1; shift; if out=$("$@" 2>&1); then fail "not refused: $* -> $out"; fi
    case "$out" in *"$want"*) say "refused: $out" ;; *) fail "wrong refusal of $*: $out" ;; esac; }}
fio_verify() {{ bounded 300 "fio $2 on $1" fio --name=v --filename=$1 --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite \
    --bs=$2 --size=$3 --verify=crc32c --verify_fatal=1 --randrepeat=1 --eta=never --output-format=terse --terse-version=3 --output=/tmp/fio.out; say "fio bs=$2 errors=$(cut -d';' -f5 /tmp/fio.out)"; }}

start_target
say "bad input"
refused "modprobe ublk_drv" $L target volume ublk start node/v1
modprobe ublk_drv
[ -e /dev/ublk-control ] || fail "no /dev/ublk-control after modprobe"
refused "no volume" $L target volume ublk start node/missing

say "export"
DEV=$($L target volume ublk start node/v1) || fail "export"
say "exported as $DEV"
[ -b "$DEV" ] || fail "$DEV is not a block device"
[ "$($L target volume ublk start node/v1)" = "$DEV" ] || fail "a second export gave another device"
$L target volume list node | grep -q "$DEV" || fail "the listing does not show $DEV"
[ "$(cat /sys/block/${{DEV#/dev/}}/queue/logical_block_size)" = 4096 ] || fail "logical block size"
[ "$(cat /sys/block/${{DEV#/dev/}}/size)" = $((160 * 2048)) ] || fail "size"
refused "ublk stop" $L target volume delete node/v1
refused "refuses the upgrade: volumes are exported to this host as ublk devices" /test/lightpool-target upgrade --binary /test/lightpool-target --control-socket /run/t.sock
fio_verify $DEV 4k 48m
fio_verify $DEV 128k 96m
fio --name=t --filename=$DEV --ioengine=libaio --direct=1 --iodepth=8 --rw=randtrim --bs=128k --size=32m \
    --output-format=terse --terse-version=3 > /tmp/fio.out || fail "fio trim"
say "fio trim errors=$(cut -d';' -f5 /tmp/fio.out)"
$L target volume ublk stop node/v1 || fail "stop"
$L target volume ublk stop node/v1 || fail "stop again"
[ ! -e "$DEV" ] || fail "$DEV left after stop"
[ $(devices) = 0 ] || fail "a ublk device left after stop: $(ls /sys/class/ublk-char)"

say "speed"
P=$(timeout 60 $L target volume ublk start node/perf) || {{ diag; fail "export perf"; }}
say "perf exported as $P"
# Two writers, one per vCPU and so one per ublk queue and reactor, taking fresh clusters
# of the same map pages at once (a reactor that slept while its writes waited for the
# other's map page write hung here once).
bounded 300 "fill" fio --name=fill --filename=$P --ioengine=libaio --direct=1 --iodepth=8 --rw=write --bs=128k \
    --numjobs=2 --size=64m --offset_increment=64m --cpus_allowed=0,1 --cpus_allowed_policy=split --eta=never --output-format=terse --output=/dev/null
modprobe nvme-tcp
bounded 120 "connect" sh -c 'echo "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn={NQN}" > /dev/nvme-fabrics'
for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
[ -b /dev/nvme0n1 ] || fail "no /dev/nvme0n1"
perf() {{ side=$1 dev=$2 wl=$3 rw=$4 bs=$5 qd=$6 field=$7 round=$8
    bounded 120 "fio $wl on $side" fio --name=p --filename=$dev --ioengine=libaio --direct=1 --iodepth=$qd --rw=$rw --bs=$bs \
        --time_based --runtime=4 --ramp_time=1 --randrepeat=0 --eta=never --output-format=terse --terse-version=3 --output=/tmp/perf.out
    say "perf side=$side wl=$wl round=$round iops=$(cut -d';' -f$field /tmp/perf.out | cut -d. -f1)"; }}
for round in 1 2 3; do
    for side in ublk nvmf; do
        if [ $side = ublk ]; then dev=$P; else dev=/dev/nvme0n1; fi
        perf $side $dev randread4k randread 4k 32 8 $round
        perf $side $dev randwrite4k randwrite 4k 32 49 $round
        perf $side $dev read128k read 128k 8 8 $round
    done
done
echo 1 > /sys/class/nvme/nvme0/delete_controller
$L target volume ublk stop node/perf || fail "stop perf"

say "csi"
mkdir -p /run/csi
/test/lightpool csi --node guest-1 --dataplane-api /run/t.api.sock --endpoint unix:///run/csi/csi.sock --state-dir /run/csi/state > /tmp/csi.log 2>&1 &
for i in $(seq 1 100); do [ -S /run/csi/csi.sock ] && break; sleep 0.1; done
C="/test/csi-client /run/csi/csi.sock"
ok() {{ out=$($C "$@") || {{ cat /tmp/csi.log; fail "$* -> $out"; }}; say "$1: $out"; }}
csirefused() {{ code=$1; shift; if out=$($C "$@"); then fail "not refused: $* -> $out"; fi
    case "$out" in "ERR $code "*) say "refused $1: $out" ;; *) fail "wrong refusal: $* -> $out" ;; esac; }}
HERE="node=guest-1 pool_volume=node/csi nqn=nqn.2024-01.io.lightpool:volume:csi nsid=1"
ok stage csi /stage/csi ext4 $HERE
S=$(sed -n 2p /run/csi/state/csi.stage)
case "$S" in /dev/ublkb*) say "staged on $S" ;; *) fail "staged on $S, not a ublk device" ;; esac
[ "$(blkid -p -o value -s TYPE $S)" = ext4 ] || fail "no ext4 on $S"
ok stage csi /stage/csi ext4 $HERE
ok publish csi /stage/csi /pods/p1/data ext4
dd if=/dev/urandom of=/pods/p1/data/blob bs=1M count=16 2>/dev/null
echo "local path" > /pods/p1/data/hello
sha=$(sha256sum /pods/p1/data/blob | cut -d' ' -f1)
sync
ok unpublish csi /pods/p1/data
ok unstage csi /stage/csi
[ $(devices) = 0 ] || fail "unstage left a ublk device: $(ls /sys/class/ublk-char)"
ls /dev/ublkb* 2>/dev/null && fail "unstage left a /dev/ublkb"
ok stage csi /stage/csi ext4 $HERE
[ "$(cat /stage/csi/hello)" = "local path" ] || fail "hello lost"
[ "$(sha256sum /stage/csi/blob | cut -d' ' -f1)" = "$sha" ] || fail "blob changed"
say "csi files verified"
ok unstage csi /stage/csi
ok unstage csi /stage/csi
[ $(devices) = 0 ] || fail "a ublk device left"
csirefused NotFound stage gone /stage/gone ext4 node=guest-1 pool_volume=node/gone nqn=x nsid=1
[ $(devices) = 0 ] || fail "a refused stage left a ublk device"

say "a killed target's device is deleted at the next start"
$L target volume ublk start node/v1 > /dev/null || fail "export before kill"
kill -KILL $TPID; wait $TPID 2>/dev/null || true
[ $(devices) = 1 ] || fail "expected the killed target's device, found $(devices)"
rm -f /run/t.api.sock /run/t.sock
start_target
[ $(devices) = 0 ] || fail "the restarted target left the dead one's device: $(ls /sys/class/ublk-char)"
grep -q "left by LightPool process" /tmp/target.log || fail "no log line for the stale device"
say "stale device deleted"
D=$($L target volume ublk start node/v1) || fail "export after restart"
fio_verify $D 4k 16m
kill -TERM $TPID; wait $TPID || fail "the target's exit status after SIGTERM"
[ $(devices) = 0 ] || fail "SIGTERM left a ublk device"
ls /dev/ublkb* 2>/dev/null && fail "SIGTERM left a /dev/ublkb"
grep -E "ublk: request|failed at the block device" /tmp/target.log && fail "the target logged an I/O error"
# Zero copy beyond ublk's own: every queue's buffers came from the volume's DMA pool.
grep -q "queue's own memory" /tmp/target.log && fail "a queue's buffers were not from the device's DMA pool"
grep "ublk queue ready" /tmp/target.log | sed 's/^.*INFO/E2E: target:/' | cut -c1-160
say "queues with pool buffers: $(grep -c "device's DMA pool" /tmp/target.log)"

say "a volume staged through ublk is refused for migration"
# The control plane's own path: a standalone instance (controller, agent and its own
# lightpool-target) in the guest, a volume exported to this kernel through ublk on
# its node, the agent's report of the export (status.ublk), and the controller's
# refusal of the volume's migration at Pending, naming what to do.
rm -f /tmp/pool.img
mkdir -p /tmp/sa
/test/lightpool --data-dir /tmp/sa standalone --node guest-1 --pool-size 256MiB --port 4430 \
    --target-binary /test/lightpool-target > /tmp/sa.log 2>&1 &
SAPID=$!
for i in $(seq 1 600); do [ -S /tmp/sa/controlplane.sock ] && [ -S /tmp/sa/target.api.sock ] && break; sleep 0.1; done
[ -S /tmp/sa/controlplane.sock ] || {{ tail -n 20 /tmp/sa.log; fail "standalone did not start"; }}
S="/test/lightpool --data-dir /tmp/sa"
timeout 120 $S volume create mv --size 32MiB > /tmp/sa.out 2>&1 || {{ cat /tmp/sa.out; tail -n 20 /tmp/sa.log; fail "volume create"; }}
SD=$(timeout 60 /test/lightpool --socket /tmp/sa/target.api.sock target volume ublk start node/mv) || fail "export mv"
say "mv exported as $SD"
ublk_reported() {{ $S volume show mv --json | tr -d ' \n' | grep -q "\"ublk\":$1"; }}
for i in $(seq 1 120); do ublk_reported true && break; sleep 0.5; done
ublk_reported true || {{ $S volume show mv --json; fail "the agent did not report mv's ublk export"; }}
if out=$(timeout 120 $S volume migrate mv --wait 60 2>&1); then fail "the migration of a ublk-staged volume was not refused: $out"; fi
case "$out" in
    *"staged through ublk on node guest-1"*"ublk stop node/mv"*) say "migration refused: $(echo "$out" | tail -n 1 | cut -c1-200)" ;;
    *) fail "wrong refusal of mv's migration: $out" ;;
esac
[ -b "$SD" ] || fail "the refused migration took $SD away"
/test/lightpool --socket /tmp/sa/target.api.sock target volume ublk stop node/mv || fail "stop mv"
for i in $(seq 1 120); do ublk_reported false && break; sleep 0.5; done
ublk_reported false || {{ $S volume show mv --json; fail "the agent did not report mv's export gone"; }}
# Without the export the ublk check passes and the next one speaks (one node: no
# destination): the refusal above was the export's.
if out=$(timeout 120 $S volume migrate mv --wait 60 2>&1); then fail "a one-node migration was not refused: $out"; fi
case "$out" in
    *ublk*) fail "refused for ublk after the export stopped: $out" ;;
    *) say "then refused for another reason: $(echo "$out" | tail -n 1 | cut -c1-200)" ;;
esac
kill -TERM $SAPID; wait $SAPID || {{ tail -n 20 /tmp/sa.log; fail "standalone's exit status after SIGTERM"; }}
[ $(devices) = 0 ] || fail "standalone left a ublk device"
say "all good"
"#
    )
}

/// Mean IOPS of each (side, workload) from the guest's "perf" lines.
fn perf_table(console: &str) -> BTreeMap<(String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for l in console.lines().filter(|l| l.contains("E2E: perf side=")) {
        let kv: BTreeMap<&str, &str> = l
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let (Some(side), Some(wl), Some(iops)) = (kv.get("side"), kv.get("wl"), kv.get("iops"))
        else {
            continue;
        };
        if let Ok(v) = iops.parse::<f64>() {
            out.entry((wl.to_string(), side.to_string()))
                .or_default()
                .push(v);
        }
    }
    out
}

#[test]
fn a_pool_volume_served_to_the_guests_kernel_through_ublk() {
    let files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("lightpool", "/test/lightpool"),
        ("csi-client", "/test/csi-client"),
    ]);
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        mem_mb: 3072,
        extra_files: files,
        ..GuestConfig::new("ublk", &script())
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(100);
    assert_eq!(out.exit_code, 0, "guest:\n{tail}");
    assert!(out.console.contains("E2E: all good"), "{tail}");
    for bs in ["4k", "128k"] {
        assert!(
            out.console.contains(&format!("E2E: fio bs={bs} errors=0")),
            "fio {bs}: {tail}"
        );
    }
    assert!(out.console.contains("E2E: fio trim errors=0"), "{tail}");
    // At least six exports (v1, perf, csi twice, v1 before the kill and after the
    // restart), one queue per reactor (two), each with its buffers from the volume's
    // DMA pool (the script fails on any queue with memory of its own).
    let pooled = out
        .console
        .lines()
        .find_map(|l| l.split("E2E: queues with pool buffers: ").nth(1))
        .and_then(|n| n.trim().parse::<u32>().ok());
    assert!(pooled.is_some_and(|n| n >= 12), "{pooled:?}: {tail}");
    assert!(out.console.contains("E2E: csi files verified"), "{tail}");
    assert!(out.console.contains("E2E: migration refused: "), "{tail}");
    for bad in [
        "I/O error",
        "Buffer I/O error",
        "EXT4-fs error",
        "blk_update_request",
    ] {
        assert!(
            !out.console.contains(bad),
            "guest kernel logged {bad:?}:\n{tail}"
        );
    }

    let t = perf_table(&out.console);
    println!("ublk vs NVMe/TCP loopback, same volume, in the guest (2 vCPUs, TCG):");
    println!(
        "{:<12} {:>12} {:>12} {:>7}  runs",
        "workload", "ublk IOPS", "nvmf IOPS", "ratio"
    );
    for wl in ["randread4k", "randwrite4k", "read128k"] {
        let get = |side: &str| {
            t.get(&(wl.to_string(), side.to_string()))
                .cloned()
                .unwrap_or_default()
        };
        let (u, n) = (get("ublk"), get("nvmf"));
        assert_eq!(
            (u.len(), n.len()),
            (3, 3),
            "three runs of {wl} on each side: {t:?}"
        );
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mu, mn) = (mean(&u), mean(&n));
        assert!(mu > 0.0 && mn > 0.0, "{wl}: {u:?} {n:?}");
        println!(
            "{wl:<12} {mu:>12.0} {mn:>12.0} {:>7.2}  ublk {u:?} nvmf {n:?}",
            mu / mn
        );
    }
}
