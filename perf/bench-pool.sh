#!/usr/bin/env bash
# Volumes of a pool against a raw device, side by side in one target: lightpool-target
# on core 0 serving a raw RAM namespace and volumes of two RAM pools, lightpool-perf on
# core 1 measuring each in turn, REPS rounds alternating raw and volume; prints the
# medians and the median of the per-round ratios (volume / raw, measured back to back).
#
#   perf/bench-pool.sh                 (needs target/release/lightpool-target-next for
#                                       the upgrade pauses: tests/run.sh builds it)
#   T=8 WARMUP=2 REPS=5 UPGRADES=8 perf/bench-pool.sh
#   OPEN_FILE=/var/tmp/pool.img OPEN_GIB=8 perf/bench-pool.sh   (also open on a file)
#   BASE_BIN=/path/to/other/lightpool-target perf/bench-pool.sh
#       only the first writes (2.), this build and another side by side: each round restarts the
#       target with one build then the other (the order alternating), each measuring
#       raw then fresh; medians and ranges of each build's ratios and of new / base.
#
# What it measures (4 KiB blocks everywhere):
# 1. steady: randread and randwrite QD32 on a thick volume whose clusters are all
#    allocated and written (pool "p", 1 MiB clusters) vs the raw device; QD1 randread
#    mean latency of both (the latency the volume layer adds).
# 2. first writes: randwrite QD32 on a fresh range of a 128 GiB thin volume (pool "f",
#    16 KiB clusters: nearly every write allocates a cluster; the allocations are
#    counted from the pool's used bytes) vs randwrite on the raw device.
# 3. snapshots under randwrite QD32 (a 256 MiB thin volume, all written): the pause the
#    pool reports (its gate closed: drain + one metadata write) and the run's max
#    latency against the same run without a snapshot; then the first writes after a
#    snapshot (each copies its 1 MiB cluster): IOPS over FIRST_T seconds right after an
#    idle snapshot vs the same run once every cluster is the volume's own again.
# 4. hot upgrades under randrw QD32: the handover pause of this target (pools and
#    volumes) vs a target serving only the raw device, UPGRADES each, alternating
#    lightpool-target and lightpool-target-next.
# 5. opening a pool of 10,000 volumes (the pool_open example), clean and after a crash,
#    on RAM and on a file.
#
# Method as perf/bench.sh: a run during which either end lost more than MAX_PREEMPT
# percent (default 3) of its core to other work is repeated, up to TRIES (5) times.
# Needs python3 and 2+ cores. Nothing else should run on cores 0 and 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T=${T:-6}
WARMUP=${WARMUP:-1}
REPS=${REPS:-5}
FRESH_T=${FRESH_T:-1}
SNAP_T=${SNAP_T:-4}
FIRST_T=${FIRST_T:-1}
UPGRADES=${UPGRADES:-6}
PORT=${PORT:-4481}
TARGET_CORE=${TARGET_CORE:-0}
PERF_CORE=${PERF_CORE:-1}
OUT=${OUT:-target/bench-pool}
VOLUMES=${VOLUMES:-10000}
BIN=target/release

cargo build --release -q -p lightpool-daemon -p lightpool-perf
cargo build --release -q -p lightpool-pool --example pool_open
rm -rf "$OUT"
mkdir -p "$OUT"

write_config() { # file port with-pools
    {
        cat <<EOF
[target]
cores = [$TARGET_CORE]

[[listener]]
address = "127.0.0.1:$2"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:raw"
[[subsystem.namespace]]
nsid = 1
ram = "512MiB"
block_size = 4096
# Ordinary pages, as the pools' RAM (a huge-page raw device would win on TLB misses).
hugepages = false
EOF
        (($3)) || return 0
        cat <<EOF

[[pool]]
name = "p"
ram = "1600MiB"
block_size = 4096

[[pool.volume]]
name = "thick"
size = "512MiB"
thin = false

[[pool.volume]]
name = "sv"
size = "256MiB"

[[pool]]
name = "f"
ram = "8GiB"
block_size = 4096
cluster_size = "16KiB"
overcommit = 2000

[[pool.volume]]
name = "fresh"
size = "128GiB"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:vol"
[[subsystem.namespace]]
nsid = 1
volume = "p/thick"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:snap"
[[subsystem.namespace]]
nsid = 1
volume = "p/sv"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:fresh"
[[subsystem.namespace]]
nsid = 1
volume = "f/fresh"
EOF
    } > "$1"
}

CTL=$OUT/control.sock
start_target() { # config port
    "$BIN/lightpool-target" --config "$1" --control-socket "$CTL" --log warn \
        >> "$OUT/target.log" 2>&1 &
    TGT=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return
        kill -0 "$TGT" 2>/dev/null || { cat "$OUT/target.log" >&2; exit 1; }
        sleep 0.1
    done
}
# The target's pid from its STATUS (after an upgrade it is not our child).
target_pid() {
    python3 - "$CTL" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"STATUS\n")
line = s.makefile().readline()
print(line.split("pid=")[1].split()[0])
PY
}
stop_target() {
    local pid
    pid=$(target_pid)
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
        sleep 0.1
    done
}
trap 'p=$(target_pid 2>/dev/null) && kill "$p" 2>/dev/null || true' EXIT
pool() { "$BIN/lightpool-target" --control-socket "$CTL" pool "$@"; }
trid() { echo "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2024-01.io.lightpool:$1"; }
used() { pool "$1" list | awk -v v="name=$2" '$1 == v { for (i = 1; i <= NF; i++) if ($i ~ /^used=/) { sub("used=", "", $i); print $i } }'; }

reactor_delay() {
    local t s=0
    for t in /proc/$1/task/*; do
        [[ $(cat "$t/comm" 2>/dev/null) == reactor-* ]] || continue
        s=$((s + $(awk '{print $2}' "$t/schedstat")))
    done
    echo $s
}
preempted() { # json reactor-delay-ns seconds
    python3 -c 'import json, sys
try:
    j = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("bench-pool: no report in " + sys.argv[1])
run_ms = float(sys.argv[3]) * 1000
w = [r.get("preempted_ms") or 0 for r in j["rows"]] + [int(sys.argv[2]) / 1e6]
print(f"{max(w) / run_ms * 100:.2f}")' "$1" "$2" "$3"
}
# run FILE DEV SECONDS WARMUP perf-args...: one measured run, repeated while preempted.
run() {
    local f=$1 dev=$2 t=$3 wu=$4 try d0 d1 p
    shift 4
    for try in $(seq "${TRIES:-5}"); do
        d0=$(reactor_delay "$TGT")
        "$BIN/lightpool-perf" -r "$(trid "$dev")" -c "$PERF_CORE" -o 4096 \
            -t "$t" --warmup "$wu" --json "$@" > "$f" || true
        d1=$(reactor_delay "$TGT")
        p=$(preempted "$f" $((d1 - d0)) "$((t + wu))")
        if python3 -c "import sys; sys.exit(0 if $p <= ${MAX_PREEMPT:-3} else 1)"; then
            echo "$p" >> "$OUT/preempted.txt"
            return
        fi
        echo "bench-pool: $f lost $p% of a core to other work; again" >&2
        [[ ${NO_RETRY:-0} == 1 ]] && break
    done
    echo "$p" >> "$OUT/preempted.txt"
    echo "bench-pool: $f kept despite $p% preemption" >&2
}

write_config "$OUT/target.toml" "$PORT" 1
if [[ -n ${BASE_BIN:-} ]]; then
    # First writes, this build against BASE_BIN, one target at a time (both busy-poll
    # core 0), restarted for each round so each starts from a blank pool.
    echo "bench-pool: first writes, $BIN/lightpool-target vs $BASE_BIN" >&2
    RANGE=4194304
    for rep in $(seq "$REPS"); do
        order="new base"
        ((rep % 2)) || order="base new"
        for tag in $order; do
            tbin=$BIN/lightpool-target
            [[ $tag == base ]] && tbin=$BASE_BIN
            "$tbin" --config "$OUT/target.toml" --control-socket "$CTL" --log warn >> "$OUT/target.log" 2>&1 &
            TGT=$!
            for _ in $(seq 300); do
                (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
                sleep 0.1
            done
            "$BIN/lightpool-perf" -r "$(trid raw)" -w write -o 131072 -q 16 -t "${FILL_SECONDS:-3}" \
                -c "$PERF_CORE" > /dev/null
            run "$OUT/fresh-raw-$tag-$rep.json" raw "$FRESH_T" 0 -w randwrite -q 32
            u0=$(used f fresh)
            NO_RETRY=1 run "$OUT/fresh-vol-$tag-$rep.json" fresh "$FRESH_T" 0 -w randwrite -q 32 \
                --range "0:$RANGE"
            echo "$(( ($(used f fresh) - u0) / 16384 ))" > "$OUT/fresh-alloc-$tag-$rep.txt"
            kill "$TGT"
            wait "$TGT" 2>/dev/null || true
        done
    done
    trap - EXIT
    python3 - "$OUT" "$REPS" <<'PY'
import json, statistics as st, sys
out, reps = sys.argv[1], int(sys.argv[2])
def iops(n): return json.load(open(f"{out}/{n}.json"))["total"]["iops"]
def ios(n): return json.load(open(f"{out}/{n}.json"))["total"]["ios"]
R = range(1, reps + 1)
rat = {}
for tag in ("base", "new"):
    raw = [iops(f"fresh-raw-{tag}-{i}") for i in R]
    vol = [iops(f"fresh-vol-{tag}-{i}") for i in R]
    alloc = [int(open(f"{out}/fresh-alloc-{tag}-{i}.txt").read()) / max(1, ios(f"fresh-vol-{tag}-{i}")) for i in R]
    rat[tag] = [v / r for v, r in zip(vol, raw)]
    print(f"{tag}: first writes / raw, median {st.median(rat[tag]):.3f} (range {min(rat[tag]):.3f}-{max(rat[tag]):.3f}; "
          f"{', '.join(f'{x:.3f}' for x in rat[tag])}); thin IOPS median {st.median(vol):,.0f}, raw {st.median(raw):,.0f}; "
          f"allocations per write {', '.join(f'{x:.3f}' for x in alloc)}")
nb = [n / b for n, b in zip(rat["new"], rat["base"])]
print(f"new / base (ratio of ratios, per round): median {st.median(nb):.2f} (range {min(nb):.2f}-{max(nb):.2f})")
pre = [float(x) for x in open(f"{out}/preempted.txt").read().split()]
print(f"preemption of either end per run (% of a core): median {st.median(pre):.2f}, max {max(pre):.2f} over {len(pre)} runs")
PY
    exit 0
fi
start_target "$OUT/target.toml" "$PORT"
# Every device written in full once (RAM pages in place; the thin volume's clusters).
for d in raw vol snap; do
    "$BIN/lightpool-perf" -r "$(trid $d)" -w write -o 131072 -q 16 -t "${FILL_SECONDS:-5}" \
        -c "$PERF_CORE" > "$OUT/fill-$d.txt"
done

echo "bench-pool: 1. steady state" >&2
for rep in $(seq "$REPS"); do
    for w in randread randwrite; do
        for d in raw vol; do
            run "$OUT/$w-$d-$rep.json" $d "$T" "$WARMUP" -w $w -q 32
        done
    done
    for d in raw vol; do
        run "$OUT/qd1-$d-$rep.json" $d "$T" "$WARMUP" -w randread -q 1
    done
done

echo "bench-pool: 2. first writes to a thin volume" >&2
# Each round writes its own 16 GiB of the 128 GiB volume (1 Mi clusters of 16 KiB).
RANGE=4194304
for rep in $(seq "$REPS"); do
    run "$OUT/fresh-raw-$rep.json" raw "$FRESH_T" 0 -w randwrite -q 32
    u0=$(used f fresh)
    NO_RETRY=1 run "$OUT/fresh-vol-$rep.json" fresh "$FRESH_T" 0 -w randwrite -q 32 \
        --range "$(((rep - 1) * RANGE)):$((rep * RANGE))"
    echo "$(( ($(used f fresh) - u0) / 16384 ))" > "$OUT/fresh-alloc-$rep.txt"
done

echo "bench-pool: 3. snapshots under randwrite QD32" >&2
for rep in $(seq "$REPS"); do
    run "$OUT/snapbase-$rep.json" snap "$SNAP_T" 0 -w randwrite -q 32
    "$BIN/lightpool-perf" -r "$(trid snap)" -c "$PERF_CORE" -o 4096 -t "$SNAP_T" --json \
        -w randwrite -q 32 > "$OUT/snaprun-$rep.json" &
    PF=$!
    sleep $((SNAP_T / 2))
    pool p snapshot sv "s$rep" > "$OUT/snap-$rep.txt"
    wait $PF
    # The first write to each cluster after an idle snapshot copies it.
    pool p snapshot sv "t$rep" >> "$OUT/snap-$rep.txt"
    run "$OUT/cow-$rep.json" snap "$FIRST_T" 0 -w randwrite -q 32
    used p sv > "$OUT/cow-used-$rep.txt"
    pool p delete "s$rep" > /dev/null
    pool p delete "t$rep" > /dev/null
    # Every cluster the volume's own again, then the same run.
    "$BIN/lightpool-perf" -r "$(trid snap)" -w write -o 131072 -q 16 -t 2 -c "$PERF_CORE" > /dev/null
    run "$OUT/owned-$rep.json" snap "$FIRST_T" 0 -w randwrite -q 32
done
pool p check > "$OUT/check.txt"
pool f check >> "$OUT/check.txt"

upgrades() { # tag device
    local next=$BIN/lightpool-target-next bin i
    "$BIN/lightpool-perf" -r "$(trid "$2")" -c "$PERF_CORE" -o 4096 -w randrw -M 50 -q 32 \
        -t $((UPGRADES + 3)) --json > "$OUT/upgrade-$1-perf.json" &
    local pf=$!
    sleep 1.5
    for i in $(seq "$UPGRADES"); do
        bin=$( ((i % 2)) && echo "$next" || echo "$BIN/lightpool-target")
        "$BIN/lightpool-target" --control-socket "$CTL" upgrade --binary "$bin" 2>&1 |
            sed -n 's/.*pause \([0-9.]*\) ms.*/\1/p' >> "$OUT/upgrade-$1.txt"
        sleep 0.8
    done
    wait $pf
}
if [[ -x $BIN/lightpool-target-next ]]; then
    echo "bench-pool: 4. hot upgrades" >&2
    upgrades pools vol
    stop_target
    write_config "$OUT/raw.toml" "$PORT" 0
    start_target "$OUT/raw.toml" "$PORT"
    upgrades raw raw
    stop_target
else
    echo "bench-pool: no $BIN/lightpool-target-next (tests/run.sh builds it): no upgrade pauses" >&2
    stop_target
fi

echo "bench-pool: 5. opening a pool of $VOLUMES volumes" >&2
"$BIN/examples/pool_open" --volumes "$VOLUMES" > "$OUT/open-ram.txt"
# On a file only when asked: making the pool zeroes the whole file, which takes its
# size in disk space (OPEN_GIB GiB, default 8) until it is removed.
if [[ -n ${OPEN_FILE:-} ]]; then
    trap 'rm -f "$OPEN_FILE"' EXIT
    "$BIN/examples/pool_open" --volumes "$VOLUMES" --gib "${OPEN_GIB:-8}" --file "$OPEN_FILE" \
        > "$OUT/open-file.txt"
fi

python3 - "$OUT" "$REPS" <<'PY'
import json, os, statistics as st, sys
out, reps = sys.argv[1], int(sys.argv[2])
def j(n): return json.load(open(f"{out}/{n}.json"))
def tot(n, k="iops"): return j(n)["total"][k]
def lat(n, k): return j(n)["latency"][k]
R = range(1, reps + 1)
errs = sum(j(f[:-5])["total"].get("error_total", 0) for f in os.listdir(out) if f.endswith(".json") and "perf" not in f)
print("| Measure | raw | volume | volume / raw (median of rounds) | per round |")
print("| --- | ---: | ---: | ---: | --- |")
for w in ("randread", "randwrite"):
    r = [tot(f"{w}-vol-{i}") / tot(f"{w}-raw-{i}") for i in R]
    print(f"| {w} 4 KiB QD32, allocated clusters (IOPS) | {st.median(tot(f'{w}-raw-{i}') for i in R):,.0f} "
          f"| {st.median(tot(f'{w}-vol-{i}') for i in R):,.0f} | {st.median(r):.3f} | {', '.join(f'{x:.3f}' for x in r)} |")
r = [tot(f"fresh-vol-{i}") / tot(f"fresh-raw-{i}") for i in R]
alloc = [int(open(f"{out}/fresh-alloc-{i}.txt").read()) / max(1, j(f"fresh-vol-{i}")["total"]["ios"]) for i in R]
print(f"| first writes to a thin volume, randwrite 4 KiB QD32 (IOPS) | {st.median(tot(f'fresh-raw-{i}') for i in R):,.0f} "
      f"| {st.median(tot(f'fresh-vol-{i}') for i in R):,.0f} | {st.median(r):.3f} | {', '.join(f'{x:.3f}' for x in r)} |")
d = [lat(f"qd1-vol-{i}", "avg_us") - lat(f"qd1-raw-{i}", "avg_us") for i in R]
print(f"| randread 4 KiB QD1 mean latency (us) | {st.median(lat(f'qd1-raw-{i}', 'avg_us') for i in R):.2f} "
      f"| {st.median(lat(f'qd1-vol-{i}', 'avg_us') for i in R):.2f} | added {st.median(d):+.2f} us | {', '.join(f'{x:+.2f}' for x in d)} |")
print()
print(f"First writes: writes that allocated a cluster (allocations / writes, per round): {', '.join(f'{x:.3f}' for x in alloc)}")
pauses = []
for i in R:
    for l in open(f"{out}/snap-{i}.txt"):
        if "pause_us=" in l and f"name=s{i} " in l:
            pauses.append(int(l.split("pause_us=")[1].split()[0]))
base_max = [lat(f"snapbase-{i}", "max_us") for i in R]
snap_max = [lat(f"snaprun-{i}", "max_us") for i in R]
print(f"Snapshot under randwrite QD32: pause reported by the pool (us): median {st.median(pauses)}, max {max(pauses)} ({pauses}); "
      f"run max latency with a snapshot (us): median {st.median(snap_max):.0f} ({', '.join(f'{x:.0f}' for x in snap_max)}), "
      f"without: median {st.median(base_max):.0f} ({', '.join(f'{x:.0f}' for x in base_max)})")
cow = [tot(f"cow-{i}") / tot(f"owned-{i}") for i in R]
copied = [int(open(f"{out}/cow-used-{i}.txt").read()) >> 20 for i in R]
t_first = float(os.environ.get("FIRST_T", "1"))
cost = [(1 - c) * t_first * 1e6 / max(1, n) for c, n in zip(cow, copied)]
print(f"First writes after a snapshot (1 MiB clusters copied): IOPS / IOPS on own clusters, median {st.median(cow):.3f} "
      f"({', '.join(f'{x:.3f}' for x in cow)}); clusters copied per {t_first:g} s run {copied}; I/O time lost per copied cluster: median {st.median(cost):.0f} us")
for tag in ("pools", "raw"):
    f = f"{out}/upgrade-{tag}.txt"
    if os.path.exists(f):
        p = [float(x) for x in open(f).read().split()]
        pj = json.load(open(f"{out}/upgrade-{tag}-perf.json"))
        print(f"Hot upgrade pause, target with {'two pools, three volumes served' if tag == 'pools' else 'the raw device only'}: "
              f"median {st.median(p):.1f} ms ({', '.join(f'{x:.1f}' for x in p)}); load across: {pj['total']['iops']:,.0f} IOPS, "
              f"errors {pj['total'].get('error_total', 0)}, max latency {pj['latency']['max_us']:.0f} us")
pre = [float(x) for x in open(f"{out}/preempted.txt").read().split()]
print(f"Preemption of either end per run (% of a core): median {st.median(pre):.2f}, max {max(pre):.2f} over {len(pre)} runs; I/O errors in measured runs: {errs}")
for f in ("open-ram", "open-file"):
    if os.path.exists(f"{out}/{f}.txt"):
        print(f"{f}: " + open(f"{out}/{f}.txt").read().strip().replace("\n", "; "))
PY
