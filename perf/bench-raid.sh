#!/usr/bin/env bash
# Arrays against a raw device, side by side in one target: lightpool-target on core 0
# serving three namespaces over RAM (one raw device, a RAID0 of two members, a RAID1
# of two members, each the same size), lightpool-perf on core 1 measuring each in
# turn, REPS rounds alternating raw, raid0, raid1 per case; prints the median IOPS of
# each and the median of the per-round ratios (array / raw, measured back to back).
#
#   perf/bench-raid.sh
#   T=8 WARMUP=2 REPS=5 perf/bench-raid.sh
#   CASES="randread:4096:32" SIZE=256MiB perf/bench-raid.sh
#   HUGEPAGES=1 perf/bench-raid.sh     (RAM in 2 MiB pages; needs free huge pages)
#
# Method as perf/bench.sh: a run during which either end lost more than MAX_PREEMPT
# percent (default 3) of its core to other work is repeated, up to TRIES (5) times.
# Needs python3 (JSON) and 2+ cores. Nothing else should run on cores 0 and 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T=${T:-8}
WARMUP=${WARMUP:-2}
REPS=${REPS:-5}
PORT=${PORT:-4471}
TARGET_CORE=${TARGET_CORE:-0}
PERF_CORE=${PERF_CORE:-1}
CASES=${CASES:-"randread:4096:32 randwrite:4096:32"}
OUT=${OUT:-target/bench-raid}
SIZE_MIB=${SIZE_MIB:-512}
HUGEPAGES=${HUGEPAGES:-0}
BIN=target/release

cargo build --release -q -p lightpool-daemon -p lightpool-perf
mkdir -p "$OUT"
HP=$( ((HUGEPAGES)) && echo true || echo false)
# Each array member carries a 1 MiB header (superblocks, bitmap; 2 MiB in huge pages,
# whose sizes go by 2 MiB): the arrays then hold SIZE_MIB, as the raw device does.
HDR=$( ((HUGEPAGES)) && echo 2 || echo 1)
R0=$((SIZE_MIB / 2 + HDR))
R1=$((SIZE_MIB + HDR))
cat > "$OUT/target.toml" <<EOF
[target]
cores = [$TARGET_CORE]

[[listener]]
address = "127.0.0.1:$PORT"

[[raid]]
name = "r0"
level = "raid0"
strip_size = "64KiB"
[[raid.member]]
ram = "${R0}MiB"
hugepages = $HP
[[raid.member]]
ram = "${R0}MiB"
hugepages = $HP

[[raid]]
name = "r1"
level = "raid1"
[[raid.member]]
ram = "${R1}MiB"
hugepages = $HP
[[raid.member]]
ram = "${R1}MiB"
hugepages = $HP

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:raw"
[[subsystem.namespace]]
nsid = 1
ram = "${SIZE_MIB}MiB"
block_size = 512
hugepages = $HP

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:raid0"
[[subsystem.namespace]]
nsid = 1
raid = "r0"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:raid1"
[[subsystem.namespace]]
nsid = 1
raid = "r1"
EOF

"$BIN/lightpool-target" --config "$OUT/target.toml" --control-socket "$OUT/control.sock" \
    --log warn > "$OUT/target.log" 2>&1 &
TGT=$!
trap 'kill $TGT 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$TGT" 2>/dev/null || { cat "$OUT/target.log" >&2; exit 1; }
    sleep 0.1
done
trid() { echo "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2024-01.io.lightpool:$1"; }
DEVS="raw raid0 raid1"

# Every namespace written in full once (RAM pages in place; the RAID1 bitmap set).
for d in $DEVS; do
    "$BIN/lightpool-perf" -r "$(trid "$d")" -w write -o 131072 -q 16 -t "${FILL_SECONDS:-6}" \
        -c "$PERF_CORE" > "$OUT/fill-$d.txt"
done
"$BIN/lightpool-target" --control-socket "$OUT/control.sock" raid list > "$OUT/arrays.txt"

reactor_delay() {
    local t s=0
    for t in /proc/$1/task/*; do
        [[ $(cat "$t/comm") == reactor-* ]] || continue
        s=$((s + $(awk '{print $2}' "$t/schedstat")))
    done
    echo $s
}

preempted() { # json reactor-delay-ns
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
run_ms = float(sys.argv[3]) * 1000
w = [r.get("preempted_ms") or 0 for r in j["rows"]] + [int(sys.argv[2]) / 1e6]
print(f"{max(w) / run_ms * 100:.2f}")' "$1" "$2" "$(python3 -c "print($T + $WARMUP)")"
}

run() { # name workload size depth dev rep
    local f="$OUT/$1-$5-$6.json" try d0 d1 p
    for try in $(seq "${TRIES:-5}"); do
        d0=$(reactor_delay $TGT)
        "$BIN/lightpool-perf" -r "$(trid "$5")" -c "$PERF_CORE" \
            -w "$2" -o "$3" -q "$4" -t "$T" --warmup "$WARMUP" --json > "$f" || true
        d1=$(reactor_delay $TGT)
        p=$(preempted "$f" $((d1 - d0)))
        if python3 -c "import sys; sys.exit(0 if $p <= ${MAX_PREEMPT:-3} else 1)"; then
            return
        fi
        echo "bench-raid: $1 $5 run $6 lost $p% of a core to other work; again" >&2
    done
    echo "bench-raid: $1 $5 run $6 kept despite $p% preemption" >&2
}

for c in $CASES; do
    IFS=: read -r w o q <<< "$c"
    name="$w-$o-qd$q"
    for rep in $(seq "$REPS"); do
        for d in $DEVS; do
            run "$name" "$w" "$o" "$q" "$d" "$rep"
        done
    done
done
"$BIN/lightpool-target" --control-socket "$OUT/control.sock" raid list >> "$OUT/arrays.txt"

python3 - "$OUT" "$REPS" $CASES <<'PY'
import json, statistics, sys
out, reps, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def j(name, dev, r):
    return json.load(open(f"{out}/{name}-{dev}-{r}.json"))
print("| Workload | raw IOPS | raid0 IOPS | raid1 IOPS | raid0 / raw | raid1 / raw | p50 us raw / raid0 / raid1 | ratios per round (raid0; raid1) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
for c in cases:
    w, o, q = c.split(":")
    name = f"{w}-{o}-qd{q}"
    rounds = [{d: j(name, d, r) for d in ("raw", "raid0", "raid1")} for r in range(1, reps + 1)]
    iops = {d: statistics.median(x[d]["total"]["iops"] for x in rounds) for d in ("raw", "raid0", "raid1")}
    p50 = {d: statistics.median(x[d]["latency"]["p50_us"] for x in rounds) for d in ("raw", "raid0", "raid1")}
    r0 = [x["raid0"]["total"]["iops"] / x["raw"]["total"]["iops"] for x in rounds]
    r1 = [x["raid1"]["total"]["iops"] / x["raw"]["total"]["iops"] for x in rounds]
    errs = sum(x[d].get("error_total", 0) for x in rounds for d in x)
    assert errs == 0, f"{name}: {errs} I/O errors"
    print(f"| {w} {int(o) // 1024} KiB QD{q} | {iops['raw']:,.0f} | {iops['raid0']:,.0f} | {iops['raid1']:,.0f} "
          f"| {statistics.median(r0):.3f} | {statistics.median(r1):.3f} "
          f"| {p50['raw']:.1f} / {p50['raid0']:.1f} / {p50['raid1']:.1f} "
          f"| {', '.join(f'{v:.2f}' for v in r0)}; {', '.join(f'{v:.2f}' for v in r1)} |")
PY
