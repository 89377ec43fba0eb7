#!/usr/bin/env bash
# The pool's SIGKILL crash run, benchmark-style: tests/tests/pool_crash.rs for ROUNDS
# rounds (default 200). Each round kills lightpool-target with SIGKILL at a random
# moment while verifying writers and lightpool-perf --verify (QD32) write to three
# volumes of one pool and volumes are snapshotted, cloned, created, grown and deleted;
# the restart replays the pool, and every acknowledged block, every block perf wrote,
# the volumes acknowledged, and the pool's check are verified. Prints the totals.
#
#   ROUNDS=200 perf/pool-crash.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-200}
cargo build --release -p lightpool-daemon -p lightpool-perf --bins
LIGHTPOOL_POOL_CRASH_ROUNDS=$ROUNDS cargo test -p lightpool-e2e --features e2e \
    --test pool_crash -- --nocapture 2>&1 | grep -E "SIGKILL rounds|test result|panicked|round [0-9]+:"
