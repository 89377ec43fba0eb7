#!/usr/bin/env bash
# Packet engines side by side (root): lightpool-target on its end of a veth pair in
# one network namespace, pinned to core 0 with one reactor; lightpool-perf in the
# other namespace over the kernel's TCP, pinned to core 1. Each engine in turn, the
# order rotated every round, ROUNDS rounds, so that the machine's drift falls on all
# of them alike:
#   kernel  the kernel-socket engine (the default) on the same veth path
#   native  AF_XDP, XDP attached in native (driver) mode; copy mode (veth has no
#           zero-copy)
#   generic AF_XDP, generic (skb) XDP; copy mode
#   dpdk    DPDK (feature dpdk): net_af_packet on the same veth end, one queue pair,
#           the userspace stack on an address of its own ($AD); its reactor
#           busy-polls, so its CPU per I/O is a whole core over the IOPS
# Workloads: 4 KiB randread QD32, and 128 KiB sequential read QD8 (WORKLOADS also
# takes 4kw: 4 KiB randwrite QD32, in-capsule; 128kw: 128 KiB sequential write QD8,
# R2T and H2C data). PERF_ARGS go to every lightpool-perf run (e.g. --digest).
# Per run: IOPS, p50/p99, the target's CPU (utime+stime of /proc/PID/stat over the
# run) per I/O, and the host side's TCP retransmissions (nstat in the peer
# namespace: segments the target's side lost); at the end, medians per engine and
# their ratios to the kernel engine.
#
#   sudo perf/engines.sh                  (release binaries in target/release)
#   TARGET=/path/lightpool-target ENGINES="native generic" ROUNDS=5 SECS=5 perf/engines.sh
#   TARGET_OLD=/path/older/lightpool-target ENGINES="native native@old" perf/engines.sh
#                                         (ENGINE@old: that engine from TARGET_OLD)
#   TARGET_OLD=/path/main/lightpool-target ENGINES="kernel kernel@old" \
#     WORKLOADS="4k 4kw 128kw" PERF_ARGS=--digest perf/engines.sh
#                                         (a branch against main on kernel sockets)
#
# The target needs the daemon's af_xdp feature (and dpdk for the dpdk engine):
#   cargo build --release -p lightpool-daemon --features lightpool-daemon/af_xdp,lightpool-daemon/dpdk --bins -p lightpool-perf
#   ENGINES="kernel dpdk" perf/engines.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=${TARGET:-target/release/lightpool-target}
PERF=${PERF:-target/release/lightpool-perf}
ENGINES=${ENGINES:-kernel native generic}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
WORKLOADS=${WORKLOADS:-"4k 128k"}
read -ra PERF_ARGS <<< "${PERF_ARGS:-}"
OUT=${OUT:-$(mktemp -d /tmp/lp-engines.XXXX)}
TARGET_CORE=${TARGET_CORE:-0}
PERF_CORE=${PERF_CORE:-1}
NQN=nqn.2024-01.io.lightpool:engines
PORT=4420
ID=$$
NSA=lpe-$ID-a NSB=lpe-$ID-b DA=xe${ID}a DB=xe${ID}b
AA=10.77.0.1 AB=10.77.0.2 AD=10.77.0.3
TPID=

cleanup() {
    [[ -n $TPID ]] && kill "$TPID" 2> /dev/null && wait "$TPID" 2> /dev/null
    ip netns del "$NSA" 2> /dev/null || true
    ip netns del "$NSB" 2> /dev/null || true
}
trap cleanup EXIT

ip netns add "$NSA"
ip netns add "$NSB"
ip link add "$DA" netns "$NSA" type veth peer name "$DB" netns "$NSB"
for x in "$NSA $DA $AA" "$NSB $DB $AB"; do
    read -r ns dev addr <<< "$x"
    ip netns exec "$ns" ip addr add "$addr/24" dev "$dev"
    ip netns exec "$ns" ip link set "$dev" up
    ip netns exec "$ns" ip link set lo up
done
# Frames reach AF_XDP finished and no larger than the MTU (the e2e test does the
# same); the kernel engine gets the same path.
ip netns exec "$NSB" ethtool -K "$DB" tx off tso off gso off > /dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Busy ticks of both pinned cores (user, nice, system, irq, softirq): the softirq work
# of veth and XDP runs on whichever core raised it, often the sender's.
core_ticks() {
    awk -v a="cpu$TARGET_CORE" -v b="cpu$PERF_CORE" '$1 == a || $1 == b {s += $2 + $3 + $4 + $7 + $8} END {print s}' /proc/stat
}

start_target() {
    local engine=${1%@*} cfg=$OUT/target-$1.toml listener bin=$TARGET
    # ENGINE@old: the same engine from the binary in TARGET_OLD (before and after).
    [[ $1 == *@old ]] && bin=$TARGET_OLD
    case $engine in
        kernel) listener="address = \"$AA:$PORT\"" ;;
        # The DPDK port's own address: the kernel in that namespace neither owns it
        # (no reset for its SYNs) nor forwards it.
        dpdk) listener="address = \"$AD:$PORT\"
engine = \"dpdk\"
interface = \"net_af_packet0,iface=$DA,qpairs=1\"" ;;
        *) listener="address = \"$AA:$PORT\"
engine = \"af_xdp\"
interface = \"$DA\"
xdp_mode = \"$engine\"" ;;
    esac
    cat > "$cfg" << EOF
[target]
reactors = 1
[[listener]]
$listener
[[subsystem]]
nqn = "$NQN"
[[subsystem.namespace]]
nsid = 1
ram = "256MiB"
block_size = 4096
EOF
    ip netns exec "$NSA" taskset -c "$TARGET_CORE" "$bin" --config "$cfg" \
        --control-socket "$OUT/ctl.sock" > "$OUT/target-$1.log" 2>&1 &
    TPID=$!
    for _ in $(seq 100); do
        grep -qE "listening" "$OUT/target-$1.log" && sleep 0.3 && return
        kill -0 "$TPID" 2> /dev/null || { cat "$OUT/target-$1.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "engines.sh: $1: no listener" >&2
    cat "$OUT/target-$1.log" >&2
    exit 1
}

stop_target() {
    # The veth's own drop counters (XDP drops, a full peer ring) and the link's.
    {
        ip netns exec "$NSA" ethtool -S "$DA" | grep -vE ': 0$' || true
        ip netns exec "$NSA" ip -s link show "$DA"
        ip netns exec "$NSB" ip -s link show "$DB"
    } >> "$OUT/link-$1.txt" 2>&1
    kill "$TPID"
    wait "$TPID" 2> /dev/null || true
    TPID=
}

retrans() { ip netns exec "$NSB" nstat -az TcpRetransSegs | awk '/TcpRetransSegs/ {print $2}'; }

# run ENGINE WORKLOAD ROUND: one perf run, one line in results.tsv.
run() {
    local engine=$1 wl=$2 round=$3 args t0 t1 c0 c1 r0 r1 j
    case $wl in
        4k) args=(-q 32 -o 4096 -w randread) ;;
        128k) args=(-q 8 -o 131072 -w read) ;;
        4kw) args=(-q 32 -o 4096 -w randwrite) ;;
        128kw) args=(-q 8 -o 131072 -w write) ;;
    esac
    args+=("${PERF_ARGS[@]}")
    j=$OUT/$engine-$wl-$round.json
    local addr=$AA
    [[ ${engine%@*} == dpdk ]] && addr=$AD
    r0=$(retrans)
    # PROFILE=ENGINE: a CPU profile of the target during that engine's first 4 KiB run.
    if [[ ${PROFILE:-} == "$engine" && $wl == 4k && $round == 1 ]]; then
        perf record -q -F 999 -g -p "$TPID" -o "$OUT/perf-$engine.data" -- sleep "$SECS" > /dev/null 2>&1 &
    fi
    t0=$(cpu_ticks "$TPID")
    c0=$(core_ticks)
    ip netns exec "$NSB" taskset -c "$PERF_CORE" "$PERF" \
        -r "trtype:tcp adrfam:ipv4 traddr:$addr trsvcid:$PORT subnqn:$NQN" \
        "${args[@]}" -t "$SECS" -c 1 --json --connect-timeout 20 > "$j" 2> "$OUT/perf.err" ||
        { echo "engines.sh: perf failed ($engine $wl):" >&2; cat "$OUT/perf.err" >&2; }
    t1=$(cpu_ticks "$TPID")
    c1=$(core_ticks)
    r1=$(retrans)
    { echo "== $engine $wl $round"; ip netns exec "$NSB" nstat -a | grep -iE 'retrans|loss|ofo|dsack|timeout|probe' || true; } >> "$OUT/nstat-host.txt"
    jq -r --arg e "$engine" --arg w "$wl" --arg r "$round" --argjson cpu $((t1 - t0)) \
        --argjson hz "$(getconf CLK_TCK)" --argjson rt $((r1 - r0)) --argjson cores $((c1 - c0)) \
        '[$e, $w, $r, (.total.iops|floor), (.latency.p50_us*10|round/10), (.latency.p99_us*10|round/10),
          (($cpu / $hz) * 1e6 / ([.total.ios,1]|max) * 100 | round / 100),
          (($cores / $hz) * 1e6 / ([.total.ios,1]|max) * 100 | round / 100), $rt] | @tsv' "$j" \
        >> "$OUT/results.tsv" || echo -e "$engine\t$wl\t$round\tfailed" >> "$OUT/results.tsv"
}

echo "# engine workload round iops p50_us p99_us target_cpu_us_per_io both_cores_us_per_io host_retrans" > "$OUT/results.tsv"
read -ra engines <<< "$ENGINES"
for round in $(seq "$ROUNDS"); do
    n=${#engines[@]}
    for i in $(seq 0 $((n - 1))); do
        engine=${engines[$(((i + round) % n))]}
        start_target "$engine"
        for wl in $WORKLOADS; do
            run "$engine" "$wl" "$round"
        done
        stop_target "$engine"
    done
done
column -t "$OUT/results.tsv"
echo
echo "medians, and ratios to the kernel engine (IOPS: higher is better; CPU/IO: lower is better)"
python3 - "$OUT/results.tsv" << 'EOF'
import sys, statistics as st
rows = [l.split("\t") for l in open(sys.argv[1]) if not l.startswith("#")]
rows = [r for r in rows if len(r) == 9]
med = {}
for e, w in sorted({(r[0], r[1]) for r in rows}):
    sel = [r for r in rows if r[0] == e and r[1] == w]
    med[e, w] = [st.median(float(r[i]) for r in sel) for i in (3, 4, 5, 6, 7, 8)]
print(f"{'engine':8} {'wl':5} {'IOPS':>9} {'p50us':>7} {'p99us':>8} {'tgt us/IO':>9} {'2core us/IO':>11} {'retrans':>7} {'IOPS/k':>7} {'tgtCPU/k':>8} {'2core/k':>7}")
for (e, w), m in sorted(med.items(), key=lambda x: (x[0][1], x[0][0])):
    k = med.get(("kernel", w))
    ri = f"{m[0] / k[0]:.2f}" if k and k[0] else "-"
    rc = f"{m[3] / k[3]:.2f}" if k and k[3] else "-"
    r2 = f"{m[4] / k[4]:.2f}" if k and k[4] else "-"
    print(f"{e:8} {w:5} {m[0]:9.0f} {m[1]:7.1f} {m[2]:8.1f} {m[3]:9.2f} {m[4]:11.2f} {m[5]:7.0f} {ri:>7} {rc:>8} {r2:>7}")
# ENGINE@old against ENGINE, paired within each round (the two ran back to back, so a
# shared machine's drift between rounds cancels): the median of the per-round ratios.
pairs = sorted({(r[0][:-4], r[1]) for r in rows if r[0].endswith("@old")})
if pairs:
    print()
    print("paired per round, new / old (median of the rounds' ratios; IOPS: >1 better; CPU/IO: <1 better)")
    print(f"{'engine':8} {'wl':5} {'rounds':>6} {'IOPS':>6} {'tgt CPU/IO':>10} {'2core CPU/IO':>12}")
    for e, w in pairs:
        new = {r[2]: r for r in rows if r[0] == e and r[1] == w}
        old = {r[2]: r for r in rows if r[0] == e + "@old" and r[1] == w}
        rs = sorted(set(new) & set(old))
        ratio = lambda i: st.median(float(new[k][i]) / float(old[k][i]) for k in rs if float(old[k][i]))
        print(f"{e:8} {w:5} {len(rs):6} {ratio(3):6.3f} {ratio(6):10.3f} {ratio(7):12.3f}")
EOF
if [[ -n ${PROFILE:-} && -f $OUT/perf-$PROFILE.data ]]; then
    echo
    echo "where the target's time went ($PROFILE, 4 KiB), top symbols:"
    perf report -i "$OUT/perf-$PROFILE.data" --no-children --percent-limit 1.5 --stdio 2> /dev/null |
        grep -E '^ +[0-9.]+%' | head -30
fi
echo "raw: $OUT"
