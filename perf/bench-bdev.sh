#!/usr/bin/env bash
# lightpool-perf bdev (LightPool's io_uring backend, in-process) against fio's io_uring
# engine on the same file, same depth and size, both pinned to the same core, each
# case REPS times alternating; prints a markdown table of medians with the median of
# the per-pair ratios (each lightpool-perf run against the fio run beside it).
#
#   perf/bench-bdev.sh
#   FILE=/var/tmp/lightpool-bench.img SIZE=1G T=10 REPS=3 CORE=1 perf/bench-bdev.sh
#   RINGS="default plain no-fixed-buffers batch=8" perf/bench-bdev.sh
#       (one row per ring set-up, see `lightpool-perf bdev --ring`: what each choice
#       of the backend's io_uring set-up is worth against the same fio runs)
#
# Needs fio (apt-get install fio) and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. perf/common.sh

FILE=${FILE:-/var/tmp/lightpool-bench.img}
SIZE=${SIZE:-1G}
T=${T:-10}
WARMUP=${WARMUP:-2}
REPS=${REPS:-3}
CORE=${CORE:-1}
CASES=${CASES:-"randread:4096:1 randread:4096:32 randwrite:4096:32 read:131072:16"}
RINGS=${RINGS:-default}
OUT=${OUT:-target/bench-bdev}
BIN=target/release

command -v fio > /dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }
cargo build --release -q -p lightpool-perf
rm -rf "$OUT"
mkdir -p "$OUT"
# A file written through (no holes), so both read real blocks.
if [[ ! -f $FILE ]] || [[ $(stat -c %s "$FILE") != $(numfmt --from=iec "$SIZE") ]]; then
    fio --name=fill --filename="$FILE" --size="$SIZE" --rw=write --bs=1M --direct=1 \
        --ioengine=io_uring --iodepth=8 --output=/dev/null
fi

for c in $CASES; do
    IFS=: read -r w o q <<< "$c"
    name="$w-$o-qd$q"
    for rep in $(seq "$REPS"); do
        for ring in $RINGS; do
            args=()
            [[ $ring == default ]] || args=(--ring "$ring")
            wait_quiet
            "$BIN/lightpool-perf" bdev --file "$FILE" -c "$CORE" -w "$w" -o "$o" -q "$q" \
                -t "$T" --warmup "$WARMUP" "${args[@]}" --json > "$OUT/$name-perf-$ring-$rep.json"
        done
        wait_quiet
        taskset -c "$CORE" fio --name=bench --filename="$FILE" --size="$SIZE" --ioengine=io_uring \
            --direct=1 --rw="$w" --bs="$o" --iodepth="$q" --numjobs=1 --time_based \
            --runtime="$T" --ramp_time="$WARMUP" --norandommap --randrepeat=0 --lat_percentiles=1 \
            --output-format=json > "$OUT/$name-fio-$rep.json"
    done
done

python3 - "$OUT" "$REPS" "$RINGS" $CASES <<'PY'
import json, statistics, sys
out, reps, rings, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
def load(name, kind, r):
    return json.load(open(f"{out}/{name}-{kind}-{r}.json"))
def fio(j):
    job = j["jobs"][0]
    d = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
    return d["iops"], d["bw_bytes"] / 2**20, d["lat_ns"]["mean"] / 1000, d["lat_ns"]["percentile"]["50.000000"] / 1000
def perf(j):
    return j["total"]["iops"], j["total"]["mib_s"], j["latency"]["avg_us"], j["latency"]["p50_us"]
ring_col = len(rings) > 1
print(f"| Workload |{' ring |' if ring_col else ''} lightpool-perf bdev IOPS | MiB/s | avg us | p50 us | fio IOPS | MiB/s | avg us | p50 us | IOPS ratio |")
print(f"| --- |{' --- |' if ring_col else ''} ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in cases:
    w, o, q = c.split(":")
    name = f"{w}-{o}-qd{q}"
    fr = [fio(load(name, "fio", r)) for r in range(1, reps + 1)]
    f = [statistics.median(v) for v in zip(*fr)]
    for ring in rings:
        pr = [perf(load(name, f"perf-{ring}", r)) for r in range(1, reps + 1)]
        p = [statistics.median(v) for v in zip(*pr)]
        ratio = statistics.median(a[0] / b[0] for a, b in zip(pr, fr))
        size = f"{int(o) // 1024} KiB"
        rc = f" {ring} |" if ring_col else ""
        print(f"| {w} {size} QD{q} |{rc} {p[0]:,.0f} | {p[1]:,.0f} | {p[2]:.1f} | {p[3]:.1f} | {f[0]:,.0f} | {f[1]:,.0f} | {f[2]:.1f} | {f[3]:.1f} | {ratio:.2f} |")
PY
