#!/usr/bin/env bash
# Live migration under load (issue 14): two lightpool-target processes (A and B, each
# on its own pinned core) present one subsystem, the namespace on a sparse file of
# each; `lightpool-perf --multipath --verify` writes 4 KiB random at QD32 through both
# paths (A optimized, B inaccessible) while A's namespace moves to B through A's
# Migrations API (`lightpool target migrate start --wait`, to B's pipe subsystem),
# then the switch: B optimized, A inaccessible (the ANA flips the control plane's
# agents make), perf follows the path change as Linux's native multipath does, and A
# ends the migration. Prints, per volume size:
#
#   steady IOPS and latency (p50/p99/max) before the migration;
#   IOPS during the copy as a ratio to steady state;
#   the final pause (writes held; the source target's own measure) and the worst
#   I/O latency around the switch, and that less the steady seconds' worst (the added
#   latency);
#   the migration's time: start to synced, and start to switched;
#   perf's totals: I/O errors (must be 0), verify mismatches (must be 0).
#
# The Migrations API is driven directly, not `lightpool volume migrate`: the control
# plane's phases add polling between synced and the switch (time mirrored, not added
# latency) and would need a consumer host to follow its paths; the copy, the pause
# and the ANA switch measured here are the same code.
#
#   perf/migrate.sh                          (1 GiB and 10 GiB)
#   SIZES="1GiB" STEADY=5 AFTER=3 perf/migrate.sh
#   DIR=/var/tmp/lp-migrate A_CORE=0 B_CORE=1 PERF_CORE=2 perf/migrate.sh
#   MIGRATE_ARGS="--rate 200MiB --region-size 256KiB" perf/migrate.sh
#   BASELINE_BIN=/path/to/other/lightpool-target ROUNDS=2 perf/migrate.sh
#
# With BASELINE_BIN the run alternates, per size and ROUNDS times, a migration with
# that target binary (both A and B: "base" in the table) and one with this build's
# ("this"), so both see the same machine at nearly the same time.
#
# The volume files are sparse files in $DIR (deleted at the end); a volume needs its
# size free twice on that disk at most (both sides written by the run). Needs python3.
# With fewer than 3 cores perf runs unpinned beside the targets: ratios within one run
# are what to read, not absolute figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source perf/common.sh

SIZES=${SIZES:-"1GiB 10GiB"}
STEADY=${STEADY:-5}
AFTER=${AFTER:-3}
A_CORE=${A_CORE:-0}
B_CORE=${B_CORE:-1}
if [ -z "${PERF_CORE+x}" ]; then
    PERF_CORE=$( (($(nproc) > 2)) && echo 2 || echo "")
fi
PA=${PA:-4520}
PB=${PB:-4521}
DIR=${DIR:-target/migrate-bench}
BIN=target/release
ROUNDS=${ROUNDS:-1}
BASELINE_BIN=${BASELINE_BIN:-}
TGT=$BIN/lightpool-target
NQN=nqn.2024-01.io.lightpool:bench-migrate
PIPE=nqn.2024-01.io.lightpool:bench-migrate-pipe

cargo build --release -q -p lightpool-daemon -p lightpool-perf -p lightpool-cli
mkdir -p "$DIR"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -f "$DIR"/*.img
}
trap cleanup EXIT

# target NAME PORT CORE CNTLID_MIN CNTLID_MAX ANA_STATE FILE
target() {
    local ana=""
    [ "$6" = optimized ] || ana=$'[[subsystem.ana_group]]\ngroup = 1\nstate = "'"$6"$'"'
    cat > "$DIR/$1.toml" << EOF
[target]
cores = [$3]

[[bdev]]
name = "disk"
file = "$(realpath "$7")"
block_size = 512

[[listener]]
address = "127.0.0.1:$2"

[[subsystem]]
nqn = "$NQN"
serial = "LPBENCHMIG01"
model = "LightPool migration bench"
allow_any_host = true
min_cntlid = $4
max_cntlid = $5
$ana

[[subsystem.namespace]]
nsid = 1
bdev = "disk"
nguid = "6c70000000000000000000000000be01"
uuid = "6c700000-0000-4000-8000-00000000be01"
ana_group = 1

[[subsystem]]
nqn = "$PIPE"
allow_any_host = true

[[subsystem.namespace]]
nsid = 1
bdev = "disk"
EOF
    "$TGT" --config "$DIR/$1.toml" --control-socket "$DIR/$1.sock" \
        --log warn,lightpool_migrate=info > "$DIR/$1.log" 2>&1 &
    PIDS+=($!)
    wait_port "$2" $! "$DIR/$1.log"
}

now() { date +%s.%N; }

bench() { # SIZE BUILD
    local size=$1 build=$2 t0 t_start t_synced t_switched perf
    df -h "$DIR" | tail -1 >&2
    echo "== $size ($build: $TGT)" >&2
    rm -f "$DIR"/*.img
    truncate -s "$size" "$DIR/a.img" "$DIR/b.img"
    PIDS=()
    target a "$PA" "$A_CORE" 1 32767 optimized "$DIR/a.img"
    target b "$PB" "$B_CORE" 32768 65519 inaccessible "$DIR/b.img"
    local trid="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 subnqn:$NQN"
    local pin=()
    [ -n "$PERF_CORE" ] && pin=(-c "$PERF_CORE")
    t0=$(now)
    "$BIN/lightpool-perf" --multipath -r "$trid trsvcid:$PA" -r "$trid trsvcid:$PB" \
        -q 32 -o 4096 -w randwrite --verify -t 3600 "${pin[@]}" --json --progress \
        > "$DIR/perf.json" 2> "$DIR/perf.err" &
    perf=$!
    sleep "$STEADY"
    kill -0 $perf || { cat "$DIR/perf.err" >&2; exit 1; }
    t_start=$(now)
    "$BIN/lightpool" --socket "$DIR/a.api.sock" target migrate start --nqn "$NQN" --nsid 1 \
        --to "127.0.0.1:$PB" --to-nqn "$PIPE" ${MIGRATE_ARGS:-} --wait > "$DIR/migrate.out" 2>&1 ||
        { cat "$DIR/migrate.out" >&2; exit 1; }
    t_synced=$(now)
    "$BIN/lightpool-target" ana --nqn "$NQN" --group 1 --state optimized \
        --control-socket "$DIR/b.sock" --log warn > /dev/null
    "$BIN/lightpool-target" ana --nqn "$NQN" --group 1 --state inaccessible \
        --control-socket "$DIR/a.sock" --log warn > /dev/null
    t_switched=$(now)
    sleep "$AFTER"
    kill -INT $perf
    wait $perf || true
    "$BIN/lightpool" --socket "$DIR/a.api.sock" target migrate stop --nqn "$NQN" --nsid 1 \
        > /dev/null
    kill "${PIDS[@]}" 2> /dev/null || true
    wait "${PIDS[@]}" 2> /dev/null || true
    cp "$DIR/a.log" "$DIR/a.migrated.log"
    grep -h 'path\|gone' "$DIR/perf.err" >&2 || true
    # Read back through B alone: every block must carry a valid stamp of its own LBA
    # (or be zeroes: never written).
    local bytes
    bytes=$(stat -c %s "$DIR/b.img")
    PIDS=()
    target b "$PB" "$B_CORE" 32768 65519 optimized "$DIR/b.img"
    "$BIN/lightpool-perf" -r "$trid trsvcid:$PB" -q 8 -o 128k -w read --verify \
        -t $((bytes / (200 << 20) + 2)) "${pin[@]}" --json > "$DIR/readback.json" 2> /dev/null || true
    kill "${PIDS[@]}" 2> /dev/null || true
    wait "${PIDS[@]}" 2> /dev/null || true
    python3 - "$size $build" "$t0" "$t_start" "$t_synced" "$t_switched" "$bytes" \
        "$DIR/perf.json" "$DIR/migrate.out" "$DIR/readback.json" "$DIR/a.migrated.log" << 'EOF'
import json, re, statistics as st, sys
size, t0, ts, tsy, tsw, nbytes, pj, mo, rb, alog = sys.argv[1:]
# The source's own account of the pause (a build that logs it): the regions still
# dirty when it began, and the writes in flight that raced a copy after it began and
# wrote the destination again (builds before that: the wait for the writes in flight).
log = re.sub(r"\x1b\[[0-9;]*m", "", open(alog, errors="replace").read())
d = re.findall(r"migration synced.*?regions=([0-9]+).*?resent=([0-9]+)", log)
old = re.findall(r"migration synced.*?drain_us=([0-9]+).*?regions=([0-9]+)", log)
if d:
    drain = f"{d[-1][0]} / {d[-1][1]}"
elif old:
    drain = f"{old[-1][1]} / – (drain {int(old[-1][0]) / 1000:.2f} ms)"
else:
    drain = "–"
t0, ts, tsy, tsw = map(float, (t0, ts, tsy, tsw))
r = json.load(open(pj))
iv = r["intervals"]
mig = open(mo).read()
m = re.findall(r"pause[^0-9]*([0-9.]+)\s*(ms|us|µs|s)\b", mig)
pause = "?"
if m:
    v, u = m[-1]
    pause = f"{float(v) * {'ms': 1, 'us': 1e-3, 'µs': 1e-3, 's': 1e3}[u]:.2f} ms"
# Seconds of the run (end times from perf's start, shifted by its setup: ~ms).
def within(a, b):
    return [x for x in iv if x["t_s"] - x["len_s"] >= a - t0 and x["t_s"] <= b - t0 and x["len_s"] > 0.5]
steady = within(t0 + 1, ts)
copy = within(ts + 0.5, tsy - 1.0)
sw = [x for x in iv if x["t_s"] >= tsy - 1.5 - t0 and x["t_s"] - x["len_s"] <= tsw + 0.5 - t0]
s_iops = st.median(x["iops"] for x in steady)
s_max = max(x["max_us"] for x in steady)
c_iops = st.mean(x["iops"] for x in copy) if copy else float("nan")
w_max = max(x["max_us"] for x in sw)
lat = r["write"]
v = r.get("verify") or {}
err = r.get("error") or ""
if err.startswith("interrupted"):
    err = ""
b = json.load(open(rb)).get("verify") or {}
checked = b.get("blocks_checked", 0) * 512 / int(nbytes)
print(f"| {size} | {s_iops:,.0f} | {r['latency']['p50_us']:.0f} / {st.median(x['p99_us'] for x in steady):.0f} / {s_max:.0f} "
      f"| {c_iops / s_iops:.2f} ({len(copy)} s) | {pause} | {drain} | {w_max / 1000:.1f} ms (+{(w_max - s_max) / 1000:.1f}) "
      f"| {tsy - ts:.1f} s / {tsw - ts:.1f} s | {r['error_total']} / {v.get('mismatches', '?')} {err} "
      f"| {b.get('mismatches', '?')} of {checked:.2f}x the volume |")
EOF
}

echo "| volume, build | steady IOPS | steady lat p50 / p99 / max us | copy IOPS / steady | final pause | regions copied / writes re-sent | worst I/O at switch (added) | synced / switched | errors / verify bad | read back through B: bad |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for s in $SIZES; do
    for _ in $(seq "$ROUNDS"); do
        if [ -n "$BASELINE_BIN" ]; then
            TGT=$BASELINE_BIN bench "$s" base
        fi
        TGT=$BIN/lightpool-target bench "$s" this
    done
done
