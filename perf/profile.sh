#!/usr/bin/env bash
# Where lightpool-target spends its time on one workload, two ways:
#
#   instructions  user-space instructions per I/O, counted by callgrind. Independent of
#                 what else the machine is doing, so two builds compare exactly; blind
#                 to the kernel.
#   samples       perf record (cpu-clock) of the reactor while lightpool-perf drives
#                 it: kernel and user, by symbol. Needs linux-perf; noisy on a shared
#                 machine, but the shares hold up.
#
#   perf/profile.sh instructions                       4 KiB randread QD32
#   W=randwrite QD=32 perf/profile.sh instructions
#   W=read BS=131072 QD=16 SIZE=1GiB HUGEPAGES=1 perf/profile.sh samples
#   TARGET_BIN=/path/to/other/lightpool-target perf/profile.sh instructions
#   DEVICE=raid1 perf/profile.sh instructions          an array of two RAM members
#   DEVICE=thin W=randwrite perf/profile.sh instructions   first writes to a thin volume
#                                  (a RAM pool with 16 KiB clusters: every write allocates)
#   DEVICE=thick W=randread QD=1 perf/profile.sh instructions   a thick volume's allocated
#                                  clusters (the volume layer's cost on a read)
#
# Target on core 0, lightpool-perf on core 1, one RAM namespace (SIZE, default 64MiB;
# 512-byte blocks), written once before sampling. Output under target/profile/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODE=${1:-instructions}
W=${W:-randread}
BS=${BS:-4096}
QD=${QD:-32}
T=${T:-5}
SIZE=${SIZE:-64MiB}
HUGEPAGES=${HUGEPAGES:-0}
PORT=${PORT:-4421}
BIN=target/release
OUT=${OUT:-target/profile}
TARGET_BIN=${TARGET_BIN:-$BIN/lightpool-target}
# The namespace's device: ram, or raid0 / raid1 over two RAM members (SIZE in MiB).
DEVICE=${DEVICE:-ram}

case $MODE in
instructions) command -v valgrind > /dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; } ;;
samples) command -v perf > /dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; } ;;
*) echo "usage: perf/profile.sh instructions|samples" >&2; exit 2 ;;
esac

[[ ${NO_BUILD:-0} == 1 ]] || cargo build --release -q -p lightpool-daemon -p lightpool-perf -p hugepage-setup
mkdir -p "$OUT"
HP=false
if ((HUGEPAGES)); then
    HP=true
    "$BIN/hugepage-setup" reserve --pages 520 --no-mount > /dev/null
fi
case $DEVICE in
ram) NS=$(printf 'ram = "%s"\nblock_size = %s\nhugepages = %s' "$SIZE" "${BLOCK:-512}" $HP); ARRAY= ;;
raid0 | raid1)
    mib=${SIZE%MiB}
    each=$( [[ $DEVICE == raid0 ]] && echo $((mib / 2 + 1)) || echo $((mib + 1)) )
    NS='raid = "r"'
    ARRAY=$(printf '[[raid]]\nname = "r"\nlevel = "%s"\n[[raid.member]]\nram = "%sMiB"\n[[raid.member]]\nram = "%sMiB"\n' \
        "$DEVICE" $each $each)
    ;;
thin | thick)
    mib=${SIZE%MiB}
    NS=$(printf 'volume = "pp/v"')
    if [[ $DEVICE == thin ]]; then
        # 16 KiB clusters, a volume 16 times the pool: random 4 KiB writes nearly
        # always land in a cluster never written.
        ARRAY=$(printf '[[pool]]\nname = "pp"\nram = "%sMiB"\nblock_size = 4096\ncluster_size = "16KiB"\novercommit = 2000\n[[pool.volume]]\nname = "v"\nsize = "%sMiB"\n' \
            $((mib + 64)) $((mib * 16)))
    else
        ARRAY=$(printf '[[pool]]\nname = "pp"\nram = "%sMiB"\nblock_size = 4096\n[[pool.volume]]\nname = "v"\nsize = "%sMiB"\nthin = false\n' \
            $((mib + 64)) "$mib")
    fi
    ;;
*) echo "DEVICE is ram, raid0, raid1, thin or thick" >&2; exit 2 ;;
esac
cat > "$OUT/target.toml" <<EOF
[target]
cores = [0]

[[listener]]
address = "127.0.0.1:$PORT"
$ARRAY
[[subsystem]]
nqn = "nqn.2024-01.io.lightpool:profile"

[[subsystem.namespace]]
nsid = 1
$NS
EOF

run_target() {
    if [[ $MODE == instructions ]]; then
        valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
            "$TARGET_BIN" --config "$OUT/target.toml" --control-socket "$OUT/control.sock" --log warn \
            > "$OUT/target.log" 2>&1 &
    else
        "$TARGET_BIN" --config "$OUT/target.toml" --control-socket "$OUT/control.sock" --log warn \
            > "$OUT/target.log" 2>&1 &
    fi
    TGT=$!
}
run_target
trap 'kill $TGT 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 $TGT 2>/dev/null || { cat "$OUT/target.log" >&2; exit 1; }
    sleep 0.1
done
TRID="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2024-01.io.lightpool:profile"
if [[ $MODE == instructions ]]; then
    # No fill: its instructions would count too (unwritten RAM reads as zeroes, which
    # costs the target the same instructions). Start-up is a few million, under 2%.
    echo "profile: $W $BS B QD$QD for ${T}s under callgrind" >&2
    "$BIN/lightpool-perf" -r "$TRID" -w "$W" -o "$BS" -q "$QD" -t "$T" -c 1 --json > "$OUT/perf.json"
    kill -INT $TGT
    wait $TGT || true
    trap - EXIT
    python3 - "$OUT" <<'PY'
import glob, json, re, sys
out = sys.argv[1]
ios = json.load(open(f"{out}/perf.json"))["total"]["ios"]
total = 0
for f in glob.glob(f"{out}/callgrind.out*"):
    for line in open(f):
        m = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if m:
            total = max(total, int(m.group(1)))
print(f"{ios} I/Os, {total:,} user instructions in the target: {total / max(ios, 1):,.0f} per I/O")
PY
    callgrind_annotate "$OUT"/callgrind.out* 2> /dev/null | sed -n '/^Ir/,$p' | head -30
else
    echo "profile: filling the namespace" >&2
    "$BIN/lightpool-perf" -r "$TRID" -w write -o 131072 -q 8 -t "${FILL_SECONDS:-5}" -c 1 > /dev/null
    "$BIN/lightpool-perf" -r "$TRID" -w "$W" -o "$BS" -q "$QD" -t $((T + 2)) -c 1 --json > "$OUT/perf.json" &
    P=$!
    sleep 1
    perf record -e cpu-clock -F 10000 -g -p $TGT -o "$OUT/perf.data" -- sleep "$T" > /dev/null 2>&1
    wait $P
    python3 -c "import json; j = json.load(open('$OUT/perf.json')); print(f\"{j['total']['iops']:,.0f} IOPS, p50 {j['latency']['p50_us']:.1f} us (noisy: a shared machine)\")"
    perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2> /dev/null |
        grep -v '^#' | grep '%' | head -30
fi
