//! The RDMA baseline in one guest: soft-RoCE (rxe) on the guest's network interface,
//! the guest kernel's own NVMe/RDMA target (nvmet-rdma) on a RAM disk, and its NVMe/RDMA
//! initiator (nvme-rdma) discovering it, connecting and running fio with verify; then
//! lightpool-perf's NVMe/RDMA host against the same target with --verify. Proves
//! the guest image carries what RDMA needs; the lightpool-target test (rdma.rs) and the
//! perf comparison stand on it.
#![cfg(feature = "e2e")]

use std::time::Duration;

use lightpool_e2e::{binary_with_libraries, rdma, release_binary, run_guest, GuestConfig};

const NQN: &str = "nqn.2024-01.io.lightpool:rdma-kernel";

fn script() -> String {
    format!(
        r#"
set -eu
NQN={NQN}
say() {{ echo "RDMAK: $*"; }}
{setup}
modprobe brd rd_nr=1 rd_size=65536
modprobe nvmet-rdma
modprobe nvme-rdma
T=/sys/kernel/config/nvmet
mkdir $T/subsystems/$NQN
echo 1 > $T/subsystems/$NQN/attr_allow_any_host
mkdir $T/subsystems/$NQN/namespaces/1
echo /dev/ram0 > $T/subsystems/$NQN/namespaces/1/device_path
echo 1 > $T/subsystems/$NQN/namespaces/1/enable
mkdir $T/ports/1
echo rdma > $T/ports/1/addr_trtype
echo ipv4 > $T/ports/1/addr_adrfam
echo $RDMA_ADDR > $T/ports/1/addr_traddr
echo 4420 > $T/ports/1/addr_trsvcid
ln -s $T/subsystems/$NQN $T/ports/1/subsystems/$NQN
say "target up"
nvme discover -t rdma -a $RDMA_ADDR -s 4420
nvme connect -t rdma -a $RDMA_ADDR -s 4420 -n $NQN
dev=
for i in $(seq 1 100); do
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [ "$(cat $s/subsysnqn 2>/dev/null)" = $NQN ] || continue
        for n in $s/nvme*n*; do
            [ -e "$n" ] && [ -b /dev/${{n##*/}} ] && dev=/dev/${{n##*/}}
        done
    done
    [ -n "$dev" ] && break
    sleep 0.1
done
[ -n "$dev" ] || {{ say "namespace did not show up"; exit 1; }}
say "namespace $dev transport $(cat /sys/class/nvme/nvme0/transport)"
for job in "randwrite 4k-1m" "write 128k-128k"; do
    set -- $job
    fio --name=k$1 --filename=$dev --ioengine=libaio --direct=1 --rw=$1 --bsrange=$2 \
        --size=8m --iodepth=8 --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --randrepeat=0 --output-format=terse --terse-version=3 > /tmp/fio.out
    summary=$(cut -d';' -f5,6,47 /tmp/fio.out)
    say "fio $1 $2 err;read_kb;write_kb = $summary"
    [ "$summary" = "0;8192;8192" ]
done
nvme disconnect -n $NQN
{perf}
R="trtype:rdma adrfam:ipv4 traddr:$RDMA_ADDR trsvcid:4420 subnqn:$NQN"
# Each on LBAs fio never wrote (perf's verify takes zeroes or its own stamps); the
# random reads check what the random writes stamped.
for job in "randwrite 4096 32768:49152" "randread 4096 32768:49152" \
    "randrw 4096 49152:65536 --no-in-capsule" "randrw 16384 65536:81920" \
    "randrw 131072 81920:98304"; do
    set -- $job
    perf_run "$1-$2${{4:-}}" -r "$R" -w $1 -o $2 --range $3 -q 16 -t 2 --verify \
        --connect-timeout 10 ${{4:-}}
done
# The same over IPv6: a ULA on the rxe interface (DAD off), a second nvmet port.
echo 0 > /proc/sys/net/ipv6/conf/$ifc/accept_dad
ip -6 addr add fd00::15/64 dev $ifc
# Without DAD the address is still tentative until the kernel's DAD work runs, and
# nvmet-rdma cannot bind a tentative address (-EADDRNOTAVAIL, seen once in CI); busybox
# ip has no `nodad`. Wait for the tentative flag (0x40, the fifth field of
# /proc/net/if_inet6) to clear.
addr_ready() {{
    f=$(awk '$1 == "fd000000000000000000000000000015" {{ print $5 }}' /proc/net/if_inet6)
    [ -n "$f" ] && [ $((0x$f & 0x40)) = 0 ]
}}
for i in $(seq 1 100); do addr_ready && break; sleep 0.1; done
addr_ready || {{ say "fd00::15 still tentative after 10 s"; cat /proc/net/if_inet6; exit 1; }}
mkdir $T/ports/2
echo rdma > $T/ports/2/addr_trtype
echo ipv6 > $T/ports/2/addr_adrfam
echo fd00::15 > $T/ports/2/addr_traddr
echo 4420 > $T/ports/2/addr_trsvcid
ln -s $T/subsystems/$NQN $T/ports/2/subsystems/$NQN
say "ipv6 port up"
perf_run ipv6-randrw-4096 -r "trtype:rdma adrfam:ipv6 traddr:fd00::15 trsvcid:4420 subnqn:$NQN" \
    -w randrw -o 4096 --range 98304:114688 -q 16 -t 2 --verify --connect-timeout 10
say "all good"
"#,
        setup = rdma::setup_script(),
        perf = rdma::perf_script(),
    )
}

#[test]
fn kernel_nvme_rdma_against_kernel_nvmet_rdma_on_soft_roce() {
    let perf = release_binary("lightpool-perf").expect("built by tests/run.sh (rdma feature)");
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        extra_files: binary_with_libraries(&perf, "/test/lightpool-perf")
            .expect("binary and libraries"),
        ..GuestConfig::new("rdma-kernel", &script())
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(60);
    assert_eq!(out.exit_code, 0, "{tail}");
    for want in [
        "RDMA: rxe0 up",
        "RDMAK: target up",
        "trtype:  rdma",
        "RDMAK: namespace /dev/nvme0n1 transport rdma",
        "RDMAK: fio randwrite 4k-1m err;read_kb;write_kb = 0;8192;8192",
        "RDMAK: fio write 128k-128k err;read_kb;write_kb = 0;8192;8192",
        "RDMAK: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing from:\n{tail}");
    }
    // lightpool-perf's NVMe/RDMA host against nvmet-rdma: every run verified clean,
    // writes within nvmet-rdma's 4 KiB in-capsule size, beyond it, and by keyed SGL
    // only.
    let perf = rdma::perf_reports(&out.console);
    for name in [
        "randwrite-4096",
        "randread-4096",
        "randrw-4096--no-in-capsule",
        "randrw-16384",
        "randrw-131072",
        "ipv6-randrw-4096",
    ] {
        let r = perf
            .get(name)
            .unwrap_or_else(|| panic!("no perf run {name} in:\n{tail}"));
        // A write-only run reads nothing back to check.
        r.assert_clean(name, name != "randwrite-4096");
        if name == "randread-4096" {
            // It read back what randwrite-4096 stamped, not only zeroes.
            assert!(r.stamped_blocks_read() > 0, "{r:?}");
        }
        println!(
            "perf {name} over nvmet-rdma: {} I/Os, {:.0} IOPS",
            r.ios(),
            r.iops()
        );
    }
}
