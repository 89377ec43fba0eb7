#!/usr/bin/env bash
# Scaling: lightpool-target with 1, 2, 4 and 8 reactors (cores 0..N-1) against
# lightpool-perf on as many other cores (N..2N-1, one queue pair each, so the queue
# pairs spread one per reactor), per workload; prints a markdown table of total IOPS,
# IOPS per reactor core, and that figure against the 1-reactor one (1.00: per-core
# figures kept). Counts that need more than the machine's cores are skipped and said.
#
#   perf/scale.sh
#   REACTORS="1 2 4" CASES="randread:4096:32" T=10 REPS=3 perf/scale.sh
#
# Each count runs REPS times (median); a run in which any worker waited for its CPU
# more than MAX_PREEMPT percent (default 3) of the time is repeated (TRIES, 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. perf/common.sh

T=${T:-8}
WARMUP=${WARMUP:-2}
REPS=${REPS:-3}
PORT=${PORT:-4450}
REACTORS=${REACTORS:-"1 2 4 8"}
CASES=${CASES:-"randread:4096:32 randwrite:4096:32"}
RAM_SIZE=${RAM_SIZE:-1GiB}
OUT=${OUT:-target/scale}
BIN=target/release
NCPU=$(nproc)

cargo build --release -q -p lightpool-daemon -p lightpool-perf -p hugepage-setup
rm -rf "$OUT"
mkdir -p "$OUT"

TGT=
trap 'kill $TGT 2> /dev/null || true' EXIT
TRID="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2024-01.io.lightpool:scale"
RAN=()
for n in $REACTORS; do
    if ((2 * n > NCPU)); then
        echo "scale: $n reactors need $((2 * n)) cores (target and initiator apart); this machine has $NCPU: skipped" >&2
        continue
    fi
    RAN+=("$n")
    cores=$(seq -s, 0 $((n - 1)))
    perf_cores=$(seq -s, "$n" $((2 * n - 1)))
    # The default configuration but for the reactors: the namespace in huge pages when
    # enough are free.
    cat > "$OUT/target-$n.toml" <<EOF
[target]
cores = [$cores]

[[listener]]
address = "127.0.0.1:$PORT"

[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:scale"

[[subsystem.namespace]]
nsid = 1
ram = "$RAM_SIZE"
EOF
    "$BIN/lightpool-target" --config "$OUT/target-$n.toml" --control-socket "$OUT/control.sock" \
        --log warn > "$OUT/target-$n.log" 2>&1 &
    TGT=$!
    wait_port "$PORT" $TGT "$OUT/target-$n.log"
    for c in $CASES; do
        IFS=: read -r w o q <<< "$c"
        for rep in $(seq "$REPS"); do
            f="$OUT/$w-$o-qd$q-r$n-$rep.json"
            for try in $(seq "${TRIES:-5}"); do
                wait_quiet
                "$BIN/lightpool-perf" -r "$TRID" -c "$perf_cores" -w "$w" -o "$o" -q "$q" \
                    -t "$T" --warmup "$WARMUP" --json > "$f" || true
                p=$(python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
w = [r.get("preempted_ms") or 0 for r in j["rows"]]
print(f"{max(w) / (float(sys.argv[2]) * 1000) * 100:.2f}")' "$f" "$((T + WARMUP))")
                python3 -c "import sys; sys.exit(0 if $p <= ${MAX_PREEMPT:-3} else 1)" && break
                echo "scale: $n reactors, $w QD$q run $rep lost $p% of a core to other work (try $try of ${TRIES:-5})" >&2
            done
        done
    done
    kill $TGT
    wait $TGT 2> /dev/null || true
    TGT=
done

python3 - "$OUT" "$REPS" "${RAN[*]}" $CASES <<'PY'
import json, statistics, sys
out, reps, ran, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
print("| Workload | Reactors (and initiator cores) | IOPS | IOPS per reactor | per reactor / 1 reactor |")
print("| --- | ---: | ---: | ---: | ---: |")
for c in cases:
    w, o, q = c.split(":")
    base = None
    for n in ran:
        iops = statistics.median(
            json.load(open(f"{out}/{w}-{o}-qd{q}-r{n}-{r}.json"))["total"]["iops"]
            for r in range(1, reps + 1))
        per = iops / int(n)
        base = base or per
        print(f"| {w} {int(o) // 1024} KiB QD{q} per queue pair | {n} | {iops:,.0f} | {per:,.0f} | {per / base:.2f} |")
PY
