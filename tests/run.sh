#!/usr/bin/env bash
# The project's test command: prepares the test guest, builds the target,
# runs every test of the workspace including the end-to-end ones.
#
#   ./tests/run.sh                 (root the first time: setup installs packages)
#   ./tests/run.sh guest_smoke     extra arguments go to `cargo test`
#
# Console logs of guest runs: target/e2e/<test>.console.log
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck source=/dev/null
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "tests/run.sh: cargo is not on PATH" >&2; exit 1; }

# Free disk where the build goes: a full disk kills the linker with SIGBUS, which says
# nothing about space itself.
disk_free() { df -h --output=avail . 2>/dev/null | tail -n 1 | tr -d ' '; }
TIMINGS=()
phase() {
    local name=$1 t0 ms rc=0 free
    shift
    echo "==> $name"
    t0=$(date +%s%N)
    "$@" || rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    free=$(disk_free)
    TIMINGS+=("$(printf '%-36s %5d.%d s  (disk free after: %s)' "$name" $((ms / 1000)) $((ms % 1000 / 100)) "${free:-?}")$([[ $rc == 0 ]] || echo "  FAILED (exit $rc)")")
    return $rc
}
summary() {
    echo "==> timings"
    printf '    %s\n' "${TIMINGS[@]}"
}
trap summary EXIT

echo "==> disk free at start: $(disk_free) (a clean run needs about 10 GB: see README)"
phase "setup (tests/vm/setup.sh)" ./tests/vm/setup.sh
# deploy/ manifests, offline, strict, oldest and newest Kubernetes supported.
phase "validate manifests (kubernetes-validate)" ./tests/validate-manifests.sh
# --bins: a no-op while the daemon has no binary target.
# The hot-upgrade tests need a second binary that reports another version: build it
# first (only the daemon crate recompiles), set it aside, then build the real one.
# Both with the NVMe/RDMA transport and NVMe/TCP TLS (the daemon's rdma and tls
# features; setup.sh installed rdma-core and libssl-dev): the rdma guest test runs
# lightpool-target on soft-RoCE, the TLS tests need OpenSSL in it. With AF_XDP (the
# af_xdp feature; setup.sh installed clang and libbpf-dev) for tests/af_xdp.rs, and
# with DPDK (the dpdk feature; libdpdk-dev) for tests/dpdk.rs.
build_next() {
    LIGHTPOOL_FIRMWARE_REVISION=0.1.0-n cargo build --release -p lightpool-daemon --features lightpool-daemon/rdma,lightpool-daemon/tls,lightpool-daemon/af_xdp,lightpool-daemon/dpdk --bins &&
        cp target/release/lightpool-target target/release/lightpool-target-next
}
phase "build lightpool-target-next (release)" build_next
phase "build lightpool-target, lightpool, lightpool-tlshd, lightpool-perf, csi-client, lp-relay (release)" cargo build --release -p lightpool-daemon --features lightpool-daemon/rdma,lightpool-daemon/tls,lightpool-daemon/af_xdp,lightpool-daemon/dpdk -p lightpool-cli -p lightpool-tlshd -p lightpool-perf --features lightpool-perf/rdma --bins -p lightpool-e2e --bin csi-client --bin lp-relay
# What the VFIO, RDMA and kTLS guest tests carry into the guest.
phase "build hugepage-setup, nvme_vfio_iops, rdma_hostile, tls_hostile (release)" \
    cargo build --release -p hugepage-setup --bins -p lightpool-bdev-nvme-vfio --example nvme_vfio_iops \
    -p lightpool-transport-rdma --example rdma_hostile \
    -p lightpool-tcp-framing --features lightpool-tcp-framing/tls --example tls_hostile
# The RAM-in-huge-pages tests need a few free 2 MiB pages and a hugetlbfs mount (for a
# state directory's RAM file); only raised, never lowered.
reserve_hugepages() {
    local have
    have=$(cat /proc/sys/vm/nr_hugepages)
    if ((have < 24)) || ! grep -q " hugetlbfs " /proc/mounts; then
        ./target/release/hugepage-setup reserve --pages $((have > 24 ? have : 24))
    fi
}
phase "reserve 24 huge pages, mount hugetlbfs (hugepage-setup)" reserve_hugepages
phase "cargo test (with e2e, rdma, tls, dpdk, af_xdp)" cargo test --workspace --features lightpool-e2e/e2e,lightpool-daemon/rdma,lightpool-daemon/tls,lightpool-perf/rdma,lightpool-dpdk/dpdk,lightpool-daemon/af_xdp,lightpool-e2e/af_xdp,lightpool-daemon/dpdk,lightpool-e2e/dpdk "$@"
