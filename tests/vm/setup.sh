#!/usr/bin/env bash
# Prepare what the end-to-end tests boot: a Debian Linux 6.12 kernel and a
# busybox initramfs that carries the NVMe/TCP initiator and target modules,
# nvme-cli and fio. Idempotent; a second run on a ready machine takes seconds.
#
#   tests/vm/setup.sh            (root, the first time: it installs packages)
#
# Output, under ${LIGHTPOOL_CACHE:-<repo>/.cache}/vm/:
#   vmlinuz          the guest kernel
#   initramfs.cpio   the base initramfs (uncompressed newc); the harness
#                    appends a per-test archive carrying /test/run.sh
#   kernel-release   e.g. 6.12.107+deb12-amd64
#   modules.txt      the modules the initramfs carries
#
# Environment:
#   LIGHTPOOL_CACHE        cache root (default <repo>/.cache)
#   LIGHTPOOL_KERNEL_PKG   pin the kernel package instead of the newest
#                          linux-image-6.12.*+deb12-amd64-unsigned
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE_ROOT=${LIGHTPOOL_CACHE:-$REPO/.cache}
VM=$CACHE_ROOT/vm
SELF=$REPO/tests/vm/setup.sh

# Packages the host needs. kmod: depmod; libc-bin: ldd.
# e2fsprogs, xfsprogs, util-linux: the file systems the CSI node plugin makes (and
# blkid, which it asks first).
# rdma-core, ibverbs-providers, libibverbs1, librdmacm1: soft-RoCE's userspace verbs
# (the rxe provider) for the guest; libibverbs-dev, librdmacm-dev, libclang-dev: what
# dataplane/rdma-sys builds against (bindgen reads the headers through libclang).
# openssl: s_client, the NVMe/TCP TLS handshake peer of the daemon's TLS test;
# libssl-dev, pkg-config: what the tls feature's openssl-sys builds against.
# libdpdk-dev, dpdk: DPDK 22.11 for offload/dpdk-sys (headers, pkg-config libdpdk) and
# the drivers EAL loads at run time (net_tap, net_af_packet, net_ring, mempool ring);
# ethtool: the DPDK test turns tx checksum offload off on its veth peer.
HOST_PKGS=(qemu-system-x86 busybox-static cpio xz-utils nvme-cli fio kmod libc-bin iproute2
    e2fsprogs xfsprogs util-linux
    rdma-core ibverbs-providers libibverbs1 librdmacm1 libibverbs-dev librdmacm-dev libclang-dev
    openssl libssl-dev pkg-config
    libdpdk-dev dpdk ethtool)
# The AF_XDP engine (offload/xdp, feature af_xdp): clang builds its XDP program for the
# BPF target against libbpf-dev's headers; its veth test pings the interface the
# kernel keeps (ethtool, above, turns the peer's offloads off).
HOST_PKGS+=(clang libbpf-dev iputils-ping)
# curl: the engine tests read the target's metrics page from inside its namespace.
HOST_PKGS+=(curl)

# Modules the guest loads, by name as modprobe knows them; their dependencies
# come from modules.dep. A name that is built into the kernel is skipped.
GUEST_MODULES=(
    # network to the host
    virtio_pci virtio_net
    # NVMe/TCP initiator
    nvme-core nvme-fabrics nvme-tcp
    # NVMe/TCP target (the smoke test's peer inside the guest)
    configfs nvmet nvmet-tcp
    # digests: the kernel asks modprobe for crypto-crc32c(c)
    crc32c_generic crc32c-intel libcrc32c
    # block devices to back a namespace
    brd loop null_blk
    # a PCIe NVMe SSD for the userspace driver: the kernel's driver (to give the
    # device back to), VFIO to take it, ext4 to mount it (hugepage-setup's refusal)
    nvme vfio vfio_iommu_type1 vfio-pci ext4
    # the CSI node plugin's other file system
    xfs
    # the local path: a pool volume served to the guest's kernel as /dev/ublkbN
    ublk_drv
    # kernel TLS (the tls ULP): NVMe/TCP TLS records in the kernel, with the AES-GCM
    # its record layer asks the crypto API for (gcm and ghash are modules in Debian's
    # kernel; AES is built in)
    tls gcm ghash-generic
    # NVMe/RDMA on soft-RoCE (rxe): verbs, the connection managers, userspace access
    # (uverbs, ucm); rxe fails "failed to add eth0" without crc32
    ib_core ib_uverbs udp_tunnel ip6_udp_tunnel crc32_pclmul crc32_generic rdma_rxe
    iw_cm ib_cm rdma_cm rdma_ucm nvme-rdma nvmet-rdma
    # lost and reordered segments on the guest's link (tc qdisc ... netem), toward the
    # target's userspace TCP stack
    sch_netem
)

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$VM"
# One setup at a time per cache (CI jobs, several shells).
exec 9>"$VM/.lock"
flock 9

# --- 1. host packages --------------------------------------------------------
missing=()
for p in "${HOST_PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
}
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "packages missing (${missing[*]}); run this script as root once"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt_update_once
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
fi

# The DPDK engine's net_tap test opens /dev/net/tun: a container may lack the node
# even where the kernel has tun.
if [[ ! -c /dev/net/tun && $(id -u) == 0 ]]; then
    log "creating /dev/net/tun"
    modprobe tun 2>/dev/null || true
    mkdir -p /dev/net
    [[ -c /dev/net/tun ]] || mknod /dev/net/tun c 10 200 || die "cannot create /dev/net/tun"
fi

# --- 2. kernel ---------------------------------------------------------------
newest_kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' 2>/dev/null \
        | awk '{print $1}' | sort -V | tail -n1
}
KPKG=${LIGHTPOOL_KERNEL_PKG:-}
if [[ -z $KPKG ]]; then
    KPKG=$(newest_kernel_pkg)
    if [[ -z $KPKG ]]; then
        if [[ -f $VM/kernel-pkg ]]; then
            KPKG=$(cat "$VM/kernel-pkg")
            log "no linux-image-6.12 in the apt lists; keeping the cached $KPKG"
        else
            [[ $(id -u) == 0 ]] || die "no linux-image-6.12.*+deb12-amd64-unsigned in the apt lists; run as root so that apt-get update can run"
            apt_update_once
            KPKG=$(newest_kernel_pkg)
            [[ -n $KPKG ]] || die "apt has no linux-image-6.12.*+deb12-amd64-unsigned (is bookworm-backports or bookworm-updates in sources?)"
        fi
    fi
fi
# linux-image-6.12.107+deb12-amd64-unsigned -> 6.12.107+deb12-amd64
KREL=${KPKG#linux-image-}
KREL=${KREL%-unsigned}
KDIR=$VM/kernel/$KPKG
if [[ ! -f $KDIR/.unpacked ]]; then
    rm -rf "$VM/dl" "$KDIR"
    mkdir -p "$VM/dl"
    log "downloading $KPKG (about 100 MB)"
    # apt-get download drops privileges to _apt when it can; let it write here.
    chmod 0777 "$VM/dl" 2>/dev/null || true
    (cd "$VM/dl" && apt-get download -qq "$KPKG") || {
        apt_update_once
        (cd "$VM/dl" && apt-get download -qq "$KPKG") || die "apt-get download $KPKG failed"
    }
    deb=$(ls "$VM/dl"/*.deb)
    log "unpacking $(basename "$deb")"
    mkdir -p "$KDIR"
    dpkg -x "$deb" "$KDIR"
    [[ -f $KDIR/boot/vmlinuz-$KREL ]] || die "$deb has no boot/vmlinuz-$KREL"
    [[ -d $KDIR/lib/modules/$KREL ]] || die "$deb has no lib/modules/$KREL"
    # The package ships no modules.dep (its postinst makes one): make it.
    depmod -b "$KDIR" "$KREL"
    touch "$KDIR/.unpacked"
    rm -rf "$VM/dl"
    # Drop other kernels: one is enough and each is about 500 MB unpacked.
    for d in "$VM"/kernel/*/; do
        [[ ${d%/} == "$KDIR" ]] || { log "removing old kernel $(basename "$d")"; rm -rf "$d"; }
    done
fi

# --- 3. initramfs ------------------------------------------------------------
MODSRC=$KDIR/lib/modules/$KREL

# Resolve the modules and their dependencies from modules.dep
# (lines "kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz ...").
declare -A MODPATH=()    # normalized name -> relative path
while IFS= read -r line; do
    rel=${line%%:*}
    n=${rel##*/}; n=${n%%.ko*}; n=${n//-/_}
    MODPATH[$n]=$rel
done <"$MODSRC/modules.dep"
declare -A DEPS=()
while IFS= read -r line; do
    rel=${line%%:*}
    DEPS[$rel]=${line#*:}
done <"$MODSRC/modules.dep"
declare -A BUILTIN=()
while IFS= read -r rel; do
    n=${rel##*/}; n=${n%%.ko*}; n=${n//-/_}
    BUILTIN[$n]=1
done <"$MODSRC/modules.builtin"

declare -A WANT=()       # relative path -> 1
builtin_names=()
for m in "${GUEST_MODULES[@]}"; do
    n=${m//-/_}
    if [[ -n ${MODPATH[$n]:-} ]]; then
        rel=${MODPATH[$n]}
        WANT[$rel]=1
        for d in ${DEPS[$rel]}; do WANT[$d]=1; done
    elif [[ -n ${BUILTIN[$n]:-} ]]; then
        builtin_names+=("$n")
    else
        die "module $m is neither in modules.dep nor modules.builtin of $KREL"
    fi
done
mapfile -t MODS < <(printf '%s\n' "${!WANT[@]}" | sort)

# Host programs and every shared library they load (ldd), plus libgcc_s,
# which glibc dlopens for thread cancellation and unwinding.
# rdma (iproute2): `rdma link add rxe0 type rxe netdev eth0`.
BINS=(/usr/sbin/nvme /usr/bin/fio /usr/sbin/mke2fs /usr/sbin/resize2fs /usr/sbin/blkid
    /usr/sbin/mkfs.xfs /usr/sbin/xfs_growfs /bin/rdma /sbin/tc)
for b in "${BINS[@]}"; do [[ -x $b ]] || die "$b missing (nvme-cli, fio, e2fsprogs, xfsprogs, util-linux, iproute2 not installed?)"; done
# Soft-RoCE's userspace verbs for a program in the guest (lightpool-target built with
# the rdma feature): libibverbs, librdmacm and what they load (libnl), the rxe provider
# libibverbs dlopens, and its driver file.
LIBDIR=/usr/lib/x86_64-linux-gnu
VERBS_FILES=("$LIBDIR/libibverbs.so.1" "$LIBDIR/librdmacm.so.1" "$LIBDIR/libnl-3.so.200"
    "$LIBDIR/libnl-route-3.so.200" "$LIBDIR/libibverbs/librxe-rdmav34.so"
    /etc/libibverbs.d/rxe.driver)
for f in "${VERBS_FILES[@]}"; do [[ -e $f ]] || die "$f missing (rdma-core, ibverbs-providers, libibverbs1, librdmacm1 not installed?)"; done
mapfile -t LIBS < <(
    {
        for b in "${BINS[@]}" "$LIBDIR/libibverbs.so.1" "$LIBDIR/librdmacm.so.1" \
            "$LIBDIR/libibverbs/librxe-rdmav34.so"; do
            ldd "$b" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'
        done
        echo /lib/x86_64-linux-gnu/libgcc_s.so.1
        printf '%s\n' "${VERBS_FILES[@]}"
    } | sort -u
)
for f in "${LIBS[@]}"; do [[ -e $f ]] || die "library $f missing"; done
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing (busybox-static not installed?)"

# Stamp: everything the image is made of. Rebuild only when it changed.
stamp=$(
    {
        sha256sum "$SELF"
        echo "$KPKG"
        printf '%s\n' "${MODS[@]}"
        for f in "$BUSYBOX" "${BINS[@]}" "${LIBS[@]}"; do
            stat -L -c '%n %s %Y' "$f"
        done
    } | sha256sum | cut -d' ' -f1
)
if [[ -f $VM/initramfs.cpio && -f $VM/vmlinuz && "$(cat "$VM/initramfs.stamp" 2>/dev/null)" == "$stamp" ]]; then
    log "ready: $VM (kernel $KREL, initramfs up to date)"
    exit 0
fi

log "building initramfs (${#MODS[@]} modules, kernel $KREL)"
WORK=$(mktemp -d "$VM/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc/nvme,proc,sys,dev,tmp,run,root,test,mnt}
chmod 1777 "$R/tmp"

# busybox and its applet links
cp "$BUSYBOX" "$R/bin/busybox"
while IFS= read -r applet; do
    [[ -e $R/$applet ]] || ln -s /bin/busybox "$R/$applet"
done < <("$BUSYBOX" --list-full)
[[ -L $R/sbin/modprobe ]] || ln -sf /bin/busybox "$R/sbin/modprobe"

# nvme-cli, fio, the file-system tools and their libraries, at the paths the host
# has them (replacing a busybox applet of the same name: remove the link first, or
# cp would write through it into busybox)
for f in "${BINS[@]}" "${LIBS[@]}"; do
    mkdir -p "$R$(dirname "$f")"
    rm -f "$R$f"
    cp -L "$f" "$R$f"
done
# mke2fs makes ext4 when called by that name; its defaults file
ln -sf mke2fs "$R/usr/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$R/etc/mke2fs.conf"
# /lib64/ld-linux-x86-64.so.2 is how binaries name the loader
if [[ ! -e $R/lib64/ld-linux-x86-64.so.2 ]]; then
    ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
fi

# modules, decompressed (busybox modprobe cannot read .ko.xz), and depmod
MD=$R/lib/modules/$KREL
mkdir -p "$MD"
for rel in "${MODS[@]}"; do
    dst=$MD/${rel%.xz}
    mkdir -p "$(dirname "$dst")"
    case $rel in
        *.xz) xz -dc "$MODSRC/$rel" >"$dst" ;;
        *.zst) die "zstd modules are not handled: $rel" ;;
        *) cp "$MODSRC/$rel" "$dst" ;;
    esac
done
cp "$MODSRC"/modules.builtin "$MODSRC"/modules.builtin.modinfo "$MODSRC"/modules.order "$MD"/ 2>/dev/null || true
depmod -b "$R" "$KREL"

# fixed identity, so that target ACLs in tests can name the host
echo "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427" >"$R/etc/nvme/hostnqn"
echo "1b4e28ba-2fa1-11d2-883f-0016d3cca427" >"$R/etc/nvme/hostid"
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
echo "127.0.0.1 localhost" >"$R/etc/hosts"

cat >"$R/init" <<'INIT'
#!/bin/sh
# LightPool test guest: bring up the network, run /test/run.sh, print its exit
# status on the console, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
modprobe configfs 2>/dev/null
mount -t configfs configfs /sys/kernel/config
modprobe crc32c 2>/dev/null
modprobe virtio_net
modprobe nvme-tcp
ip link set lo up
ifc=
for i in 1 2 3 4 5 6 7 8 9 10; do
    for d in /sys/class/net/*; do
        [ "${d##*/}" = lo ] || { ifc=${d##*/}; break; }
    done
    [ -n "$ifc" ] && break
    sleep 0.2
done
if [ -n "$ifc" ]; then
    ip link set "$ifc" up
    ip addr add 10.0.2.15/24 dev "$ifc"
    ip route add default via 10.0.2.2
else
    echo "LIGHTPOOL: no network interface" >&2
fi
echo "LIGHTPOOL-TEST-START"
if [ -f /test/run.sh ]; then
    cd /test && sh /test/run.sh
    rc=$?
    cd /
else
    echo "LIGHTPOOL: /test/run.sh missing" >&2
    rc=127
fi
sync
echo "LIGHTPOOL-TEST-EXIT=$rc"
poweroff -f
INIT
chmod 0755 "$R/init"

(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$WORK/initramfs.cpio"
cp "$KDIR/boot/vmlinuz-$KREL" "$WORK/vmlinuz"
printf '%s\n' "${MODS[@]}" | sed 's|.*/||; s|\.ko.*||' >"$WORK/modules.txt"
if ((${#builtin_names[@]})); then printf '%s (built in)\n' "${builtin_names[@]}" >>"$WORK/modules.txt"; fi
mv -f "$WORK/vmlinuz" "$VM/vmlinuz"
mv -f "$WORK/modules.txt" "$VM/modules.txt"
echo "$KREL" >"$VM/kernel-release"
echo "$KPKG" >"$VM/kernel-pkg"
mv -f "$WORK/initramfs.cpio" "$VM/initramfs.cpio"
echo "$stamp" >"$VM/initramfs.stamp"
log "ready: $VM (kernel $KREL, initramfs $(du -h "$VM/initramfs.cpio" | cut -f1))"
