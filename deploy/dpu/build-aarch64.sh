#!/usr/bin/env bash
# Cross-builds the DPU profile's binaries (lightpool-target with the AF_XDP engine,
# lightpool, lightpool-perf, hugepage-setup) for aarch64 (arm64) on an x86-64 Debian 12
# machine, as root the first time (it installs the cross toolchain and arm64 OpenSSL):
#   deploy/dpu/build-aarch64.sh            -> target/aarch64-unknown-linux-gnu/release/
# Needs rustup (the aarch64 standard library comes from its distribution server).
# The image for a DPU node is built by deploy/docker/Dockerfile with buildx instead
# (deploy/dpu/target-dpu.yaml); this is for trying the build, or copying the binaries
# onto a DPU by hand.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

TRIPLE=aarch64-unknown-linux-gnu
FEATURES=${FEATURES:-lightpool-daemon/tls,lightpool-daemon/af_xdp}

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(crossbuild-essential-arm64)
dpkg -s libssl-dev:arm64 >/dev/null 2>&1 || need+=(libssl-dev:arm64)
command -v clang >/dev/null || need+=(clang)
dpkg -s libbpf-dev >/dev/null 2>&1 || need+=(libbpf-dev)
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || { echo "build-aarch64: missing ${need[*]}; run as root once" >&2; exit 1; }
    echo "build-aarch64: installing ${need[*]}"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-remove "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$TRIPLE" || rustup target add "$TRIPLE"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
export AARCH64_UNKNOWN_LINUX_GNU_OPENSSL_LIB_DIR=/usr/lib/aarch64-linux-gnu
export AARCH64_UNKNOWN_LINUX_GNU_OPENSSL_INCLUDE_DIR=/usr/include
echo "build-aarch64: cargo build --release --target $TRIPLE (features $FEATURES)"
cargo build --release --target "$TRIPLE" \
    -p lightpool-daemon --features "$FEATURES" \
    -p lightpool-cli -p lightpool-perf -p hugepage-setup --bins
ls -l "target/$TRIPLE/release/lightpool-target" "target/$TRIPLE/release/lightpool" \
    "target/$TRIPLE/release/lightpool-perf" "target/$TRIPLE/release/hugepage-setup"
