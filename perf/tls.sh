#!/usr/bin/env bash
# The speed cost of NVMe/TCP TLS and of digests, as IOPS ratios from one run:
# lightpool-target on core TARGET_CORE serving a RAM namespace on a plain listener and
# on one that requires TLS (the same target, the same namespace), lightpool-perf on
# core PERF_CORE; each case measured REPS times, the cases alternating within each
# round (plain, TLS, plain+digests, TLS+digests, ...), medians and ratios to plain.
#
#   perf/tls.sh                          (builds both binaries with --release first)
#   T=5 REPS=5 CASES="randread:4096:32 randwrite:4096:32" perf/tls.sh
#
# TLS is measured with the records in software on both ends (a listener with
# ktls = "off", lightpool-perf --ktls off) and, where the kernel has the tls module
# (the `tls` TCP ULP, `modprobe tls`), in the kernel on both ends (kTLS: a listener with
# ktls = "auto", lightpool-perf --ktls auto). A kernel without it: the kTLS columns say
# n/a and the script says why. The record layer each TLS connection got is what the
# target's log says ("record_layer"), counted at the end.
#
# TLS is software TLS here (both ends), kTLS the kernel's (both ends).
#
# Needs python3 (JSON) and 2 cores. Other work on those cores makes the figures noise:
# compare ratios from one run, not absolute numbers across runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source perf/common.sh

T=${T:-5}
WARMUP=${WARMUP:-1}
REPS=${REPS:-3}
PORT=${PORT:-4440}
TARGET_CORE=${TARGET_CORE:-0}
PERF_CORE=${PERF_CORE:-1}
CASES=${CASES:-"randread:4096:32 randwrite:4096:32 read:131072:16"}
OUT=${OUT:-target/bench-tls}
BIN=target/release
NQN=nqn.2024-01.io.lightpool:bench-tls
HOST=nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-0000000b7e57
# A configured PSK with the SHA-256 transformation (TLS_AES_128_GCM_SHA256), fixed so
# that runs compare: 32 bytes of 0x5a with their CRC-32.
KEY=${KEY:-$(python3 -c 'import base64, zlib
k = bytes([0x5a]) * 32
print("NVMeTLSkey-1:01:" + base64.b64encode(k + zlib.crc32(k).to_bytes(4, "little")).decode() + ":")')}

cargo build --release -q -p lightpool-daemon --features lightpool-daemon/tls -p lightpool-perf
mkdir -p "$OUT"
cat > "$OUT/target.toml" << EOF
[target]
cores = [$TARGET_CORE]

[[listener]]
address = "127.0.0.1:$PORT"

[[listener]]
address = "127.0.0.1:$((PORT + 1))"
secure = "required"
ktls = "off"

[[listener]]
address = "127.0.0.1:$((PORT + 2))"
secure = "required"

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

[[subsystem.tls_key]]
host = "$HOST"
key = "$KEY"

[[subsystem.namespace]]
nsid = 1
ram = "${RAM_SIZE:-256MiB}"
block_size = 512
EOF

"$BIN/lightpool-target" --config "$OUT/target.toml" --control-socket "$OUT/control.sock" \
    --log info > "$OUT/target.log" 2>&1 &
TGT=$!
trap 'kill $TGT 2> /dev/null || true' EXIT
wait_port "$PORT" $TGT "$OUT/target.log"
wait_port $((PORT + 1)) $TGT "$OUT/target.log"
wait_port $((PORT + 2)) $TGT "$OUT/target.log"
PLAIN="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$NQN"
TLS="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$((PORT + 1)) subnqn:$NQN"
KTLS="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$((PORT + 2)) subnqn:$NQN"
SIDES=("plain" "tls" "plain+digests" "tls+digests")
if grep -q "the kernel has the tls ULP" "$OUT/target.log"; then
    SIDES+=("ktls" "ktls+digests")
else
    echo "kTLS: $(grep -o 'no kernel TLS.*' "$OUT/target.log" | head -n 1 || echo 'the target found no kernel TLS')" >&2
    echo "kTLS: skipping the kTLS columns (this kernel cannot take the TLS record layer; modprobe tls where it can)" >&2
fi

# Fill the namespace once so reads find data and every page is in place.
"$BIN/lightpool-perf" -r "$PLAIN" --hostnqn "$HOST" -w write -o 131072 -q 16 -t 3 \
    -c "$PERF_CORE" > "$OUT/fill.txt"

# run NAME TRID WORKLOAD SIZE DEPTH [extra args]: the IOPS of one measurement.
run() {
    local name=$1 trid=$2 w=$3 o=$4 q=$5
    shift 5
    "$BIN/lightpool-perf" -r "$trid" --hostnqn "$HOST" -w "$w" -o "$o" -q "$q" \
        -t "$T" --warmup "$WARMUP" -c "$PERF_CORE" --json "$@" > "$OUT/$name.json"
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["total"]["iops"])' \
        "$OUT/$name.json"
}

declare -A IOPS
for c in $CASES; do
    IFS=: read -r w o q <<< "$c"
    for r in $(seq "$REPS"); do
        wait_quiet
        for s in "${SIDES[@]}"; do
            args=()
            trid=$PLAIN
            [[ $s == tls* ]] && { trid=$TLS; args+=(--tls-key "$KEY" --ktls off); }
            [[ $s == ktls* ]] && { trid=$KTLS; args+=(--tls-key "$KEY" --ktls auto); }
            [[ $s == *digests ]] && args+=(--digest)
            v=$(run "$w-$o-$q-$s-$r" "$trid" "$w" "$o" "$q" "${args[@]}")
            IOPS[$c/$s]="${IOPS[$c/$s]:-} $v"
            echo "$c $s round $r: $v IOPS" >&2
        done
    done
done

layer=$(grep -o 'record_layer="\?[a-z]*' "$OUT/target.log" | sort | uniq -c | tr '\n' ' ')
echo "record layer of the TLS connections (target log): ${layer:-none logged}"
echo
echo "| workload | plain IOPS | TLS / plain | digests / plain | TLS+digests / plain | kTLS / plain | kTLS+digests / plain |"
echo "|---|---|---|---|---|---|---|"
for c in $CASES; do
    python3 -c 'import statistics, sys
m = [statistics.median(map(float, a.split())) if a.strip() else None for a in sys.argv[2:]]
r = lambda v: "n/a" if v is None else f"{v/m[0]:.3f}"
print(f"| {sys.argv[1]} | {m[0]:.0f} | {r(m[1])} | {r(m[2])} | {r(m[3])} | {r(m[4])} | {r(m[5])} |")' \
        "$c" "${IOPS[$c/plain]}" "${IOPS[$c/tls]}" "${IOPS[$c/plain+digests]}" "${IOPS[$c/tls+digests]}" \
        "${IOPS[$c/ktls]:-}" "${IOPS[$c/ktls+digests]:-}"
done
