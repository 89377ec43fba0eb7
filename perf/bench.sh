#!/usr/bin/env bash
# The README's benchmark: lightpool-target on core 0 serving a 1 GiB RAM namespace,
# lightpool-perf on core 1, each case measured against the target and against
# `lightpool-perf limit` (its server on core 0, client on core 1) back to back, REPS
# times alternating; prints a markdown table of medians with target/limit ratios.
#
#   perf/bench.sh                  (builds both binaries with --release first)
#   T=10 WARMUP=2 REPS=3 perf/bench.sh
#   CASES="randread:4096:32" perf/bench.sh
#   RAM_SIZE=2MiB perf/bench.sh    (namespace and limit data in the cache)
#   TARGET_BIN=/path/to/other/lightpool-target perf/bench.sh
#   COMPARE_BIN=/path/to/old/lightpool-target perf/bench.sh
#                                  (A/B of two builds: the other side of each pair is
#                                  COMPARE_BIN's target, on the same core, instead of
#                                  the limit; ratios are this build / that one)
#
# A run during which another process held core 0 or 1 for more than MAX_PREEMPT
# percent (default 3) of the time is repeated, up to TRIES (5) times: lightpool-perf
# reports its workers' (and the limit server's) run delay, the script reads the
# reactor's from /proc.
#
# Needs python3 (JSON) and 2+ cores. Nothing else should run on cores 0 and 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T=${T:-10}
WARMUP=${WARMUP:-2}
REPS=${REPS:-3}
PORT=${PORT:-4420}
TARGET_CORE=${TARGET_CORE:-0}
PERF_CORE=${PERF_CORE:-1}
CASES=${CASES:-"randread:4096:1 randread:4096:32 randwrite:4096:32 read:131072:16"}
OUT=${OUT:-target/bench}
BIN=target/release

cargo build --release -q -p lightpool-daemon -p lightpool-perf -p hugepage-setup
mkdir -p "$OUT"
# The namespace's size; the limit's server sends from (and stores to) a buffer as large
# (`--data-span`), so both sides pay the same memory traffic. RAM_SIZE=2MiB keeps both
# in the cache; LIMIT_SPAN=0 gives the limit one cache-hot buffer whatever the size.
RAM_SIZE=${RAM_SIZE:-1GiB}
# The RAM namespace lives in 2 MiB huge pages (HUGEPAGES=0: ordinary 4 KiB pages), as
# SPDK's malloc bdev does: random reads over 1 GiB would otherwise miss the TLB on
# nearly every block.
HUGEPAGES=${HUGEPAGES:-1}
if ((HUGEPAGES)) && (($(cat /proc/sys/vm/nr_hugepages) < 520)); then
    "$BIN/hugepage-setup" reserve --pages 520 --no-mount
fi
HP=$( ((HUGEPAGES)) && echo true || echo false)
cat > "$OUT/target.toml" <<EOF
[target]
cores = [$TARGET_CORE]

[[listener]]
address = "127.0.0.1:$PORT"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:bench"

[[subsystem.namespace]]
nsid = 1
ram = "$RAM_SIZE"
block_size = 512
hugepages = $HP
EOF

"${TARGET_BIN:-$BIN/lightpool-target}" --config "$OUT/target.toml" --control-socket "$OUT/control.sock" \
    --log warn > "$OUT/target.log" 2>&1 &
TGT=$!
trap 'kill $TGT ${CMP:-} 2>/dev/null || true' EXIT
wait_port() { # port pid log
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
        sleep 0.1
    done
}
wait_port "$PORT" $TGT "$OUT/target.log"
TRID="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2024-01.io.lightpool:bench"

# Write the whole namespace once (sequentially, 128 KiB at a time, past one full
# pass) so that reads find data, and the RAM device's pages are all in place: the
# first touch of each page costs a page fault that is no part of the target.
"$BIN/lightpool-perf" -r "$TRID" -w write -o 131072 -q 16 -t "${FILL_SECONDS:-15}" -c "$PERF_CORE" > "$OUT/fill.txt"

# A/B: the other build serves the same configuration on the next port, on the same
# core; each reactor sleeps while the other side is measured.
OTHER=limit
if [[ -n ${COMPARE_BIN:-} ]]; then
    OTHER=compare
    sed "s/127.0.0.1:$PORT/127.0.0.1:$((PORT + 1))/" "$OUT/target.toml" > "$OUT/compare.toml"
    if ((HUGEPAGES)) && (($(cat /proc/sys/vm/nr_hugepages) < 1040)); then
        "$BIN/hugepage-setup" reserve --pages 1040 --no-mount
    fi
    "$COMPARE_BIN" --config "$OUT/compare.toml" --control-socket "$OUT/compare.sock" \
        --log warn > "$OUT/compare.log" 2>&1 &
    CMP=$!
    wait_port $((PORT + 1)) $CMP "$OUT/compare.log"
    CTRID="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$((PORT + 1)) subnqn:nqn.2024-01.io.lightpool:bench"
    "$BIN/lightpool-perf" -r "$CTRID" -w write -o 131072 -q 16 -t "${FILL_SECONDS:-15}" -c "$PERF_CORE" > "$OUT/fill-compare.txt"
fi

# Run delay (ns runnable but off-CPU) of the reactor threads of process $1.
reactor_delay() {
    local t s=0
    for t in /proc/$1/task/*; do
        [[ $(cat "$t/comm") == reactor-* ]] || continue
        s=$((s + $(awk '{print $2}' "$t/schedstat")))
    done
    echo $s
}

# The worst share of the run (percent) that either end waited for its CPU: the
# workers' and the limit server's from the JSON, the reactor's from $2 (ns).
preempted() {
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
run_ms = float(sys.argv[3]) * 1000
w = [r.get("preempted_ms") or 0 for r in j["rows"]]
w += [j.get("server_preempted_ms") or 0, int(sys.argv[2]) / 1e6]
print(f"{max(w) / run_ms * 100:.2f}")' "$1" "$2" "$(python3 -c "print($T + $WARMUP)")"
}

# Waits (up to QUIET_WAIT seconds) until the CPUs are at least 90% idle over a second:
# other work on this machine would take cores from both ends.
wait_quiet() {
    local end=$((SECONDS + ${QUIET_WAIT:-300})) a b
    while ((SECONDS < end)); do
        read -ra a < /proc/stat
        sleep 1
        read -ra b < /proc/stat
        python3 -c 'import sys
a = list(map(int, sys.argv[1].split())); b = list(map(int, sys.argv[2].split()))
d = [y - x for x, y in zip(a, b)]
sys.exit(0 if d[3] * 100 >= 90 * max(1, sum(d[:8])) else 1)' "${a[*]:1}" "${b[*]:1}" && return
    done
    echo "bench: the machine stayed busy for ${QUIET_WAIT:-300}s; measuring anyway" >&2
}

# One measurement; repeated (up to TRIES times) while another process held one of the
# two cores for more than MAX_PREEMPT percent of it, since the figures would be low.
run() { # name workload size depth kind rep
    local f="$OUT/$1-$5-$6.json" try d0 d1 p
    for try in $(seq "${TRIES:-5}"); do
        wait_quiet
        d0=0; d1=0
        if [[ $5 == limit ]]; then
            "$BIN/lightpool-perf" limit --server-core "$TARGET_CORE" -c "$PERF_CORE" \
                --data-span "${LIMIT_SPAN:-$RAM_SIZE}" \
                -w "$2" -o "$3" -q "$4" -t "$T" --warmup "$WARMUP" --json > "$f" || true
        else
            local pid=$TGT trid=$TRID
            [[ $5 == compare ]] && pid=$CMP && trid=$CTRID
            d0=$(reactor_delay "$pid")
            "$BIN/lightpool-perf" -r "$trid" -c "$PERF_CORE" \
                -w "$2" -o "$3" -q "$4" -t "$T" --warmup "$WARMUP" --json > "$f" || true
            d1=$(reactor_delay "$pid")
        fi
        p=$(preempted "$f" $((d1 - d0)))
        if python3 -c "import sys; sys.exit(0 if $p <= ${MAX_PREEMPT:-3} else 1)"; then
            return
        fi
        echo "bench: $1 $5 run $6 lost $p% of a core to other work; again" >&2
    done
    echo "bench: $1 $5 run $6 kept despite $p% preemption" >&2
}

for c in $CASES; do
    IFS=: read -r w o q <<< "$c"
    name="$w-$o-qd$q"
    for rep in $(seq "$REPS"); do
        run "$name" "$w" "$o" "$q" "$OTHER" "$rep"
        run "$name" "$w" "$o" "$q" target "$rep"
    done
done

python3 - "$OUT" "$REPS" "$OTHER" $CASES <<'PY'
import json, statistics, sys
out, reps, other, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
if other == "compare":
    # A/B of two builds: the median of the per-pair ratios (each pair measured back
    # to back), which is what survives a machine whose speed drifts.
    print("| Workload | This build IOPS | Other build IOPS | IOPS ratio (median of pairs) | p50 us this / other | p50 ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        w, o, q = c.split(":")
        name = f"{w}-{o}-qd{q}"
        load = lambda kind, r: json.load(open(f"{out}/{name}-{kind}-{r}.json"))
        pairs = [(load("target", r), load("compare", r)) for r in range(1, reps + 1)]
        ti = statistics.median(t["total"]["iops"] for t, _ in pairs)
        ci = statistics.median(c["total"]["iops"] for _, c in pairs)
        ri = statistics.median(t["total"]["iops"] / c["total"]["iops"] for t, c in pairs)
        tp = statistics.median(t["latency"]["p50_us"] for t, _ in pairs)
        cp = statistics.median(c["latency"]["p50_us"] for _, c in pairs)
        rp = statistics.median(t["latency"]["p50_us"] / c["latency"]["p50_us"] for t, c in pairs)
        print(f"| {w} {int(o) // 1024} KiB QD{q} | {ti:,.0f} | {ci:,.0f} | {ri:.3f} | {tp:.1f} / {cp:.1f} | {rp:.3f} |")
    sys.exit(0)
def med(name, kind, f):
    return statistics.median(f(json.load(open(f"{out}/{name}-{kind}-{r}.json"))) for r in range(1, reps + 1))
print("| Workload | Target IOPS | MiB/s | avg us | p50 us | p99 us | Limit IOPS | Limit MiB/s | Limit p50 us | IOPS ratio | p50 ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in cases:
    w, o, q = c.split(":")
    name = f"{w}-{o}-qd{q}"
    t = {k: med(name, "target", f) for k, f in {
        "iops": lambda j: j["total"]["iops"], "mib": lambda j: j["total"]["mib_s"],
        "avg": lambda j: j["latency"]["avg_us"], "p50": lambda j: j["latency"]["p50_us"],
        "p99": lambda j: j["latency"]["p99_us"]}.items()}
    l = {k: med(name, "limit", f) for k, f in {
        "iops": lambda j: j["total"]["iops"], "mib": lambda j: j["total"]["mib_s"],
        "p50": lambda j: j["latency"]["p50_us"]}.items()}
    size = f"{int(o) // 1024} KiB"
    print(f"| {w} {size} QD{q} | {t['iops']:,.0f} | {t['mib']:,.0f} | {t['avg']:.1f} | {t['p50']:.1f} | {t['p99']:.1f} "
          f"| {l['iops']:,.0f} | {l['mib']:,.0f} | {l['p50']:.1f} | {t['iops'] / l['iops']:.2f} | {t['p50'] / l['p50']:.2f} |")
PY
