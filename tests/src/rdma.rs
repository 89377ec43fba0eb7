//! Soft-RoCE (rxe) in the test guest: the shell that loads the RDMA modules, binds an
//! rxe device to the guest's network interface and says its address. tests/vm/setup.sh
//! carries the modules, iproute2's `rdma` and the userspace verbs libraries (with the
//! rxe provider) into the initramfs.
//!
//! rdma_cm does not route 127.0.0.1, so RDMA peers in the guest meet at the network
//! interface's own address ([`GUEST_ADDR`]): the kernel's initiator and a target in the
//! same guest reach each other through rxe's loopback.

/// The guest's address on its network interface (the harness's /init sets it), where
/// RDMA listeners in the guest bind.
pub const GUEST_ADDR: &str = "10.0.2.15";

/// Shell (for a guest script, busybox `sh`, `set -e` safe) that brings soft-RoCE up:
/// modules, an rxe device `rxe0` on the first non-loopback interface, the userspace
/// device nodes. Afterwards `$RDMA_ADDR` holds [`GUEST_ADDR`] and `rdma link` lists
/// rxe0 ACTIVE; it exits the script with status 90 if the device does not come up.
pub fn setup_script() -> String {
    format!(
        r#"
rdma_up() {{
    for m in crc32_generic crc32_pclmul ib_core ib_uverbs rdma_rxe ib_cm iw_cm rdma_cm rdma_ucm; do
        modprobe $m
    done
    ifc=
    for d in /sys/class/net/*; do
        [ "${{d##*/}}" = lo ] || {{ ifc=${{d##*/}}; break; }}
    done
    rdma link add rxe0 type rxe netdev "$ifc"
    for i in $(seq 1 50); do
        rdma link show rxe0/1 2>/dev/null | grep -q ACTIVE && break
        sleep 0.1
    done
    if ! rdma link show rxe0/1 | grep -q ACTIVE; then
        echo "RDMA: rxe0 on $ifc did not become ACTIVE" >&2
        rdma link show >&2 || true
        exit 90
    fi
    [ -e /dev/infiniband/uverbs0 ] || {{ echo "RDMA: no /dev/infiniband/uverbs0" >&2; exit 90; }}
    [ -e /dev/infiniband/rdma_cm ] || {{ echo "RDMA: no /dev/infiniband/rdma_cm" >&2; exit 90; }}
    RDMA_ADDR={GUEST_ADDR}
    echo "RDMA: rxe0 up on $ifc, address $RDMA_ADDR"
}}
rdma_up
"#
    )
}
