#!/usr/bin/env bash
# lightpool-perf bdev (LightPool's io_uring backend, in-process) against fio's io_uring
# engine on the same file, same depth and size, both pinned to the same core, each
# case REPS times alternating; prints a markdown table of medians with the ratio.
#
#   perf/bench-bdev.sh
#   FILE=/var/tmp/lightpool-bench.img SIZE=1G T=10 REPS=3 CORE=1 perf/bench-bdev.sh
#
# Needs fio (apt-get install fio) and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FILE=${FILE:-/var/tmp/lightpool-bench.img}
SIZE=${SIZE:-1G}
T=${T:-10}
WARMUP=${WARMUP:-2}
REPS=${REPS:-3}
CORE=${CORE:-1}
CASES=${CASES:-"randread:4096:1 randread:4096:32 randwrite:4096:32 read:131072:16"}
OUT=${OUT:-target/bench-bdev}
BIN=target/release

command -v fio > /dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }
cargo build --release -q -p lightpool-perf
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
        "$BIN/lightpool-perf" bdev --file "$FILE" -c "$CORE" -w "$w" -o "$o" -q "$q" \
            -t "$T" --warmup "$WARMUP" --json > "$OUT/$name-perf-$rep.json"
        taskset -c "$CORE" fio --name=bench --filename="$FILE" --size="$SIZE" --ioengine=io_uring \
            --direct=1 --rw="$w" --bs="$o" --iodepth="$q" --numjobs=1 --time_based \
            --runtime="$T" --ramp_time="$WARMUP" --norandommap --randrepeat=0 --lat_percentiles=1 \
            --output-format=json > "$OUT/$name-fio-$rep.json"
    done
done

python3 - "$OUT" "$REPS" $CASES <<'PY'
import json, statistics, sys
out, reps, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(name, kind, r):
    return json.load(open(f"{out}/{name}-{kind}-{r}.json"))
def fio(j):
    job = j["jobs"][0]
    d = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
    return d["iops"], d["bw_bytes"] / 2**20, d["lat_ns"]["mean"] / 1000, d["lat_ns"]["percentile"]["50.000000"] / 1000
def perf(j):
    return j["total"]["iops"], j["total"]["mib_s"], j["latency"]["avg_us"], j["latency"]["p50_us"]
print("| Workload | lightpool-perf bdev IOPS | MiB/s | avg us | p50 us | fio IOPS | MiB/s | avg us | p50 us | IOPS ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for c in cases:
    w, o, q = c.split(":")
    name = f"{w}-{o}-qd{q}"
    p = [statistics.median(v) for v in zip(*(perf(load(name, "perf", r)) for r in range(1, reps + 1)))]
    f = [statistics.median(v) for v in zip(*(fio(load(name, "fio", r)) for r in range(1, reps + 1)))]
    size = f"{int(o) // 1024} KiB"
    print(f"| {w} {size} QD{q} | {p[0]:,.0f} | {p[1]:,.0f} | {p[2]:.1f} | {p[3]:.1f} | {f[0]:,.0f} | {f[1]:,.0f} | {f[2]:.1f} | {f[3]:.1f} | {p[0] / f[0]:.2f} |")
PY
