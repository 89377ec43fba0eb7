#!/usr/bin/env bash
# LightPool beside SPDK, measured by SPDK's own initiator: spdk_nvme_perf (core 1)
# against SPDK's nvmf_tgt serving a malloc bdev and against lightpool-target serving a
# RAM namespace of the same size (each target on core 0, each with its default
# settings), in short paired rounds that alternate the two targets; prints the median
# of the per-round ratios LightPool / SPDK (IOPS, and average latency).
#
#   perf/vs-spdk.sh SPDK_DIR                 (SPDK_DIR: an SPDK build, see below)
#   ROUNDS=7 T=5 perf/vs-spdk.sh /work/spdk
#   CASES="randread:4096:1" perf/vs-spdk.sh /work/spdk
#   LP_CONFIG=my.toml perf/vs-spdk.sh /work/spdk   (a configuration instead of the
#                                            default; it must serve LP_NQN)
#   TARGET_BIN=/path/to/lightpool-target perf/vs-spdk.sh /work/spdk
#
# SPDK is no dependency of LightPool and nothing in CI runs this: build it once by hand.
# v25.09 builds against Debian's libdpdk-dev 22.11 with two local edits (relax the DPDK
# 22.11 minor-version check in lib/env_dpdk/pci_dpdk.c; let configure go on without the
# isa-l submodule), then:
#   PATH=/usr/bin:$PATH ./configure --with-dpdk --without-crypto --without-vhost \
#       --without-virtio --without-vfio-user --without-rbd --without-rdma --without-fsdev \
#       --without-nvme-cuse --without-idxd --without-ublk --without-xnvme \
#       --without-iscsi-initiator --without-uring --without-fc --without-daos \
#       --without-usdt --without-sma --without-avahi --without-golang --without-ocf \
#       --without-fio --without-dpdk-compressdev --without-raid5f --without-aio-fsdev \
#       --disable-tests --disable-unit-tests --disable-examples && make -j2
# SPDK_DIR must hold build/bin/nvmf_tgt, build/bin/spdk_nvme_perf and scripts/rpc.py.
#
# How a round goes: the target not being measured is stopped (SIGSTOP: SPDK's reactor
# busy-polls its core even when idle, and both targets share core 0), the machine is
# let go quiet (wait_quiet), then spdk_nvme_perf runs T seconds after WARMUP seconds
# against one target, then against the other; odd rounds start with SPDK, even rounds
# with LightPool. A run during which either end waited for its CPU more than
# MAX_PREEMPT percent (default 3) of the time is repeated, up to TRIES (5) times.
#
# LightPool runs its embedded default configuration (one 1 GiB RAM namespace, one
# reactor), pinned with taskset: what `lightpool-target` does with no options. Huge
# pages: SPDK needs about 200 plus its malloc bdev's worth, and LightPool's default
# takes its RAM namespace's worth when they are free; the script reserves both
# (hugepage-setup reserve, which also mounts hugetlbfs) and gives back what it added.
# HUGEPAGES_FOR_LIGHTPOOL=0 reserves SPDK's share only, so LightPool falls back to
# ordinary memory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. perf/common.sh

SPDK_DIR=${1:?usage: perf/vs-spdk.sh SPDK_DIR (an SPDK build: build/bin/nvmf_tgt, build/bin/spdk_nvme_perf)}
SPDK_DIR=$(cd "$SPDK_DIR" && pwd)
T=${T:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-5}
TARGET_CORE=${TARGET_CORE:-0}
PERF_CORE=${PERF_CORE:-1}
SIZE_MIB=${SIZE_MIB:-1024}
SPDK_PORT=${SPDK_PORT:-4430}
LP_PORT=${LP_PORT:-4431}
LP_NQN=${LP_NQN:-nqn.2024-01.io.lightpool:default}
SPDK_NQN=nqn.2016-06.io.spdk:cnode1
CASES=${CASES:-"randread:4096:1 randread:4096:32 randwrite:4096:32 read:131072:16"}
OUT=${OUT:-target/vs-spdk}
BIN=target/release
TARGET_BIN=${TARGET_BIN:-$BIN/lightpool-target}

NVMF_TGT=$SPDK_DIR/build/bin/nvmf_tgt
PERF=$SPDK_DIR/build/bin/spdk_nvme_perf
for f in "$NVMF_TGT" "$PERF" "$SPDK_DIR/scripts/rpc.py"; do
    [[ -x $f ]] || { echo "vs-spdk: $f is missing: build SPDK first (see the README)" >&2; exit 2; }
done
if [[ -z ${LP_CONFIG:-} ]] && ((SIZE_MIB != 1024)); then
    echo "vs-spdk: LightPool's default namespace is 1 GiB; give LP_CONFIG for another size" >&2
    exit 2
fi
export LD_LIBRARY_PATH=$SPDK_DIR/build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# SPDK's rpc.py wants the system's python3 (and its python3-* packages).
RPC=(env PATH=/usr/bin:$PATH python3 "$SPDK_DIR/scripts/rpc.py" -s "$OUT/spdk.sock")

cargo build --release -q -p lightpool-daemon -p hugepage-setup
rm -rf "$OUT"
mkdir -p "$OUT"

# Huge pages: those in use by others stay theirs; add SPDK's and LightPool's.
meminfo() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
ORIG_PAGES=$(cat /proc/sys/vm/nr_hugepages)
IN_USE=$(($(meminfo HugePages_Total) - $(meminfo HugePages_Free)))
NEED=$((IN_USE + SIZE_MIB / 2 + 240))
((${HUGEPAGES_FOR_LIGHTPOOL:-1})) && NEED=$((NEED + SIZE_MIB / 2 + 32))
if ((ORIG_PAGES < NEED)) || ! grep -q hugetlbfs /proc/mounts; then
    "$BIN/hugepage-setup" reserve --pages "$((ORIG_PAGES > NEED ? ORIG_PAGES : NEED))" > "$OUT/hugepages.txt"
fi

SPDK_PID= LP_PID=
cleanup() {
    for p in $SPDK_PID $LP_PID; do
        kill -CONT "$p" 2> /dev/null || true
        kill "$p" 2> /dev/null || true
    done
    wait 2> /dev/null || true
    if (($(cat /proc/sys/vm/nr_hugepages) > ORIG_PAGES)); then
        echo "$ORIG_PAGES" > /proc/sys/vm/nr_hugepages || true
    fi
}
trap cleanup EXIT

# SPDK: nvmf_tgt on core 0, TCP transport and malloc bdev with their default options,
# 512-byte blocks as LightPool's default namespace has.
"$NVMF_TGT" -m "$((1 << TARGET_CORE))" -u -r "$OUT/spdk.sock" > "$OUT/nvmf_tgt.log" 2>&1 &
SPDK_PID=$!
for _ in $(seq 100); do
    "${RPC[@]}" -t 1 spdk_get_version > /dev/null 2>&1 && break
    kill -0 $SPDK_PID 2> /dev/null || { cat "$OUT/nvmf_tgt.log" >&2; exit 1; }
    sleep 0.3
done
{
    "${RPC[@]}" nvmf_create_transport -t TCP
    "${RPC[@]}" bdev_malloc_create -b Malloc0 "$SIZE_MIB" 512
    "${RPC[@]}" nvmf_create_subsystem "$SPDK_NQN" -a -s SPDK00000000000001
    "${RPC[@]}" nvmf_subsystem_add_ns "$SPDK_NQN" Malloc0
    "${RPC[@]}" nvmf_subsystem_add_listener "$SPDK_NQN" -t tcp -f ipv4 -a 127.0.0.1 -s "$SPDK_PORT"
} > "$OUT/spdk-rpc.log"
wait_port "$SPDK_PORT" $SPDK_PID "$OUT/nvmf_tgt.log"
kill -STOP $SPDK_PID

# LightPool: its default configuration (or LP_CONFIG), every thread on core 0.
LP_ARGS=(--listen "127.0.0.1:$LP_PORT" --control-socket "$OUT/lightpool.sock" --log info)
[[ -n ${LP_CONFIG:-} ]] && LP_ARGS+=(--config "$LP_CONFIG")
taskset -c "$TARGET_CORE" "$TARGET_BIN" "${LP_ARGS[@]}" > "$OUT/lightpool.log" 2>&1 &
LP_PID=$!
wait_port "$LP_PORT" $LP_PID "$OUT/lightpool.log"

trid() { # side
    if [[ $1 == spdk ]]; then
        echo "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$SPDK_PORT subnqn:$SPDK_NQN"
    else
        echo "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$LP_PORT subnqn:$LP_NQN"
    fi
}
pid_of() { [[ $1 == spdk ]] && echo $SPDK_PID || echo $LP_PID; }

# spdk_nvme_perf takes no huge pages (they are the targets'); it is the same initiator
# for both sides.
perf_run() { # side workload size depth seconds warmup outfile
    local p s=0
    "$PERF" --no-huge -s 512 -c "$((1 << PERF_CORE))" -r "$(trid "$1")" -w "$2" -o "$3" -q "$4" \
        -t "$5" -a "$6" > "$7" 2>&1 &
    p=$!
    # The worker is the main thread (the first core of the mask); its run delay is
    # read while it lives.
    while kill -0 $p 2> /dev/null; do
        s=$(awk '{print $2}' /proc/$p/schedstat 2> /dev/null || echo "$s")
        sleep 0.25
    done
    wait $p || { echo "vs-spdk: spdk_nvme_perf failed against $1:" >&2; cat "$7" >&2; exit 1; }
    echo "$s"
}

# Both namespaces written in full once (128 KiB sequential writes past one pass).
for side in spdk lightpool; do
    kill -CONT "$(pid_of $side)"
    perf_run $side write 131072 16 "${FILL_SECONDS:-4}" 0 "$OUT/fill-$side.txt" > /dev/null
    kill -STOP "$(pid_of $side)"
done
{
    grep -iE "huge|memory" "$OUT/lightpool.log" || true
    # What of LightPool's memory is in huge pages (the RAM namespace, request buffers).
    awk '/_Hugetlb:/ {kb += $2} END {printf "lightpool-target: %d MiB in huge pages\n", kb / 1024}' \
        "/proc/$LP_PID/smaps_rollup"
} > "$OUT/lightpool-memory.txt"

run() { # side workload size depth round
    local f="$OUT/$2-$3-qd$4-$1-$5.txt" pid try d0 d1 dp p t0 t1
    pid=$(pid_of "$1")
    for try in $(seq "${TRIES:-5}"); do
        wait_quiet
        kill -CONT "$pid"
        d0=$(thread_delay "$pid")
        t0=$(date +%s%N)
        dp=$(perf_run "$1" "$2" "$3" "$4" "$T" "$WARMUP" "$f")
        t1=$(date +%s%N)
        d1=$(thread_delay "$pid")
        kill -STOP "$pid"
        # Percent of the run (spdk_nvme_perf's start and connection included) that the
        # target's reactor or the initiator's worker waited for its CPU.
        p=$(python3 -c "print(f'{max($d1 - $d0, $dp) * 100 / max(1, $t1 - $t0):.2f}')")
        if python3 -c "import sys; sys.exit(0 if $p <= ${MAX_PREEMPT:-3} else 1)"; then
            return
        fi
        echo "vs-spdk: $2 $3 QD$4 on $1, round $5, lost $p% of a core to other work; again" >&2
    done
    echo "vs-spdk: $2 $3 QD$4 on $1, round $5, kept despite $p% preemption" >&2
}

for r in $(seq "$ROUNDS"); do
    for c in $CASES; do
        IFS=: read -r w o q <<< "$c"
        if ((r % 2)); then order="spdk lightpool"; else order="lightpool spdk"; fi
        for side in $order; do
            run "$side" "$w" "$o" "$q" "$r"
        done
    done
    echo "vs-spdk: round $r of $ROUNDS done" >&2
done

python3 - "$OUT" "$ROUNDS" $CASES <<'PY'
import re, statistics, sys
out, rounds, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def total(path):
    for line in open(path):
        if line.startswith("Total"):
            iops, mib, avg, lo, hi = map(float, line.split(":")[1].split())
            return {"iops": iops, "mib": mib, "avg": avg}
    sys.exit(f"no Total line in {path}")
goals = {("randread", 4096, 1): "avg <= 0.85", ("randread", 4096, 32): "IOPS >= 1.10",
         ("randwrite", 4096, 32): "IOPS >= 1.10"}
print("| Workload | SPDK IOPS | LightPool IOPS | IOPS LightPool / SPDK | SPDK avg us | LightPool avg us | avg latency LightPool / SPDK | goal |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for c in cases:
    w, o, q = c.split(":")
    o, q = int(o), int(q)
    s = [total(f"{out}/{w}-{o}-qd{q}-spdk-{r}.txt") for r in range(1, rounds + 1)]
    l = [total(f"{out}/{w}-{o}-qd{q}-lightpool-{r}.txt") for r in range(1, rounds + 1)]
    ri = [b["iops"] / a["iops"] for a, b in zip(s, l)]
    ra = [b["avg"] / a["avg"] for a, b in zip(s, l)]
    med = statistics.median
    size = f"{o // 1024} KiB"
    print(f"| {w} {size} QD{q} | {med(x['iops'] for x in s):,.0f} | {med(x['iops'] for x in l):,.0f} "
          f"| {med(ri):.2f} ({min(ri):.2f}-{max(ri):.2f}) | {med(x['avg'] for x in s):.1f} "
          f"| {med(x['avg'] for x in l):.1f} | {med(ra):.2f} ({min(ra):.2f}-{max(ra):.2f}) "
          f"| {goals.get((w, o, q), '')} |")
print(f"\nmedian of {rounds} paired rounds (range of the per-round ratios in brackets)")
PY
echo "LightPool's memory, from its log:" >&2
cat "$OUT/lightpool-memory.txt" >&2 || true
