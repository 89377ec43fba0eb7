#!/usr/bin/env bash
# The fuzz targets (docs/fuzzing.md): cargo fuzz with libFuzzer on the stable toolchain.
#
#   fuzz/run.sh short [TARGET...]   CI's pass: 20 s per target (FUZZ_SECONDS)
#   fuzz/run.sh long  [TARGET...]   1e8 executions per target (FUZZ_RUNS), or FUZZ_SECONDS;
#                                   FUZZ_WORKERS=N: N processes a target, the runs split
#   fuzz/run.sh build               build only
#   fuzz/run.sh seeds               rewrite fuzz/seeds/ with the project's own writers
#
# Stable Rust: `cargo fuzz build -s none` (no sanitizer: -Zsanitizer is nightly-only),
# -O -a (optimized, with debug assertions and overflow checks). cargo-fuzz comes from
# crates.io, installed with `cargo install --locked` under the cache:
#   ${LIGHTPOOL_CACHE:-<repo>/.cache}/fuzz/cargo-fuzz/   the tool
#   ${LIGHTPOOL_CACHE:-<repo>/.cache}/fuzz/target/       the build (kept between runs)
#   ${LIGHTPOOL_CACHE:-<repo>/.cache}/fuzz/corpus/T/     the corpus each target grows
#   ${LIGHTPOOL_CACHE:-<repo>/.cache}/fuzz/artifacts/    crashing inputs (T-crash-...)
# A crash, hang (10 s per input), allocation beyond a target's bound or RSS over 2 GiB
# fails the run and leaves the input there; reproduce with
#   fuzz/run.sh repro TARGET FILE
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck source=/dev/null
    . "$HOME/.cargo/env"
fi
REPO=$PWD
CACHE=${LIGHTPOOL_CACHE:-$REPO/.cache}/fuzz
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(pdu recv conn commands config pool_meta raid_meta)
export CARGO_INCREMENTAL=0

install() {
    if [[ ! -x $CACHE/cargo-fuzz/bin/cargo-fuzz ]] ||
        ! "$CACHE/cargo-fuzz/bin/cargo-fuzz" --version | grep -q "$CARGO_FUZZ_VERSION"; then
        echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION under $CACHE/cargo-fuzz"
        cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$CACHE/cargo-fuzz"
    fi
    export PATH=$CACHE/cargo-fuzz/bin:$PATH
}

build() {
    install
    echo "==> cargo fuzz build -s none -O -a"
    cargo fuzz build -s none -O -a --target-dir "$CACHE/target"
}

bin() {
    echo "$CACHE/target/x86_64-unknown-linux-gnu/release/$1"
}

# run TARGET LIBFUZZER-ARGS...: prints "TARGET: N runs, E exec/s"; non-zero on a finding.
# With WORKERS > 1, that many processes fuzz the one corpus directory (each reloads
# what the others add to it), each with its own log (TARGET.log, TARGET.w2.log, ...);
# their counts add up.
run() {
    local t=$1 rc=0 w workers=${WORKERS:-1}
    shift
    mkdir -p "$CACHE/corpus/$t" "$CACHE/artifacts"
    local dict=()
    [[ ! -f fuzz/dict/$t.dict ]] || dict=(-dict="fuzz/dict/$t.dict")
    local cmd=("$(bin "$t")" "${dict[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$CACHE/artifacts/$t-" "$@" "$CACHE/corpus/$t" "fuzz/seeds/$t")
    local logs=("$CACHE/$t.log") pids=()
    if [[ $workers -le 1 ]]; then
        "${cmd[@]}" >"${logs[0]}" 2>&1 || rc=$?
    else
        for ((w = 2; w <= workers; w++)); do logs+=("$CACHE/$t.w$w.log"); done
        for log in "${logs[@]}"; do
            "${cmd[@]}" >"$log" 2>&1 &
            pids+=($!)
        done
        # The first to fail (a finding) stops the others.
        local live=("${pids[@]}") st id p next
        while ((${#live[@]} > 0)); do
            st=0
            wait -n -p id "${live[@]}" || st=$?
            next=()
            for p in "${live[@]}"; do [[ $p == "$id" ]] || next+=("$p"); done
            live=("${next[@]}")
            if [[ $st != 0 && $rc == 0 ]]; then
                rc=$st
                kill -INT "${live[@]}" 2>/dev/null || true
            fi
        done
    fi
    local runs=0 secs=0 n s log
    for log in "${logs[@]}"; do
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        s=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
        runs=$((runs + ${n:-0}))
        [[ ${s:-0} -le $secs ]] || secs=$s
    done
    local rate="? s"
    [[ $secs == 0 ]] || rate="$secs s ($((runs / secs)) exec/s)"
    echo "$t: $runs runs in $rate$([[ $workers -le 1 ]] || echo ", $workers processes")$([[ $rc == 0 ]] || echo "  FAILED (exit $rc, logs ${logs[*]})")"
    if [[ $rc != 0 ]]; then
        grep -E -A12 'panicked at|==fuzz==|ERROR: libFuzzer' "${logs[@]}" | head -40 >&2
    fi
    return $rc
}

pass() {
    local passed=0 failed=0 t
    for t in "$@"; do
        if run "$t" "${ARGS[@]}"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    done
    echo "fuzz: $passed passed, $failed failed"
    [[ $failed == 0 ]]
}

mode=${1:-short}
shift || true
sel=("$@")
[[ ${#sel[@]} -gt 0 ]] || sel=("${TARGETS[@]}")
case $mode in
    build) build ;;
    short)
        build
        ARGS=(-max_total_time="${FUZZ_SECONDS:-20}")
        pass "${sel[@]}"
        ;;
    long)
        build
        WORKERS=${FUZZ_WORKERS:-1}
        if [[ -n ${FUZZ_SECONDS:-} ]]; then
            ARGS=(-max_total_time="$FUZZ_SECONDS")
        else
            runs=${FUZZ_RUNS:-100000000}
            ARGS=(-runs="$(((runs + WORKERS - 1) / WORKERS))")
        fi
        pass "${sel[@]}"
        ;;
    repro)
        build
        "$(bin "$1")" "$2"
        ;;
    seeds)
        (cd fuzz && cargo run --release --example seeds --target-dir "$CACHE/target-plain")
        ;;
    *)
        echo "usage: fuzz/run.sh short|long|build|seeds [TARGET...] | repro TARGET FILE" >&2
        exit 2
        ;;
esac
