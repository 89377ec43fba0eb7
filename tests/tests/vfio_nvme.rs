//! The userspace NVMe driver against QEMU's PCIe NVMe controller, in the Linux 6.12
//! guest with an emulated IOMMU: hugepage-setup reserves hugepages and binds the device
//! to vfio-pci, lightpool-target serves it over NVMe/TCP through the VFIO driver, the
//! guest kernel's initiator writes and reads back patterns over loopback; hugepage-setup
//! gives the device back to the nvme driver, which reads the same data; after power-off
//! the image file on the host holds the patterns at their offsets. Also: the driver's
//! IOPS in process against the kernel driver's (fio, io_uring) on the same device in the
//! same boot, and the refusals (mounted device, too many hugepages, no IOMMU).
#![cfg(feature = "e2e")]

use std::fs;
use std::path::Path;
use std::time::Duration;

use lightpool_e2e::{binary_with_libraries, e2e_dir, release_binary, run_guest, GuestConfig};

const IMG_MIB: u64 = 256;
/// Where the patterns go (bytes), and how long they are.
const OFF_A: u64 = 0;
const LEN_A: usize = 1 << 20;
const OFF_B: u64 = 100 * (1 << 20) + 3 * 4096;
const LEN_B: usize = 300 * 1024;
/// A MiB the guest zeroes with Write Zeroes over NVMe/TCP (pre-filled with 0xAB).
const OFF_Z: u64 = 200 * (1 << 20);
const LEN_Z: usize = 1 << 20;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// QEMU's NVMe controller at 00:04.0, backed by `img`.
fn nvme_qemu_args(img: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},if=none,id=nvm,format=raw", img.display()),
        "-device".into(),
        "nvme,serial=LPVFIO0001,drive=nvm,addr=0x4".into(),
    ]
}

fn guest_files(bins: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (bin, at) in bins {
        let p = release_binary(bin).expect("built by tests/run.sh");
        files.extend(binary_with_libraries(&p, at).expect("binary and libraries"));
    }
    files
}

/// Shell helpers for both guests.
const LIB: &str = r#"
set -eu
say() { echo "E2E: $*"; }
A=0000:00:04.0
NQN=nqn.2024-01.io.lightpool:vfio
# The kernel's block device of the PCIe controller at $A, once it shows up.
pci_disk() {
    for i in $(seq 1 100); do
        for c in /sys/bus/pci/devices/$A/nvme/nvme*; do
            for n in $c/nvme*n*; do
                [ -e "$n" ] || continue
                d=${n##*/}
                case $d in *c*n*) d=${d%%c*}n${d##*n};; esac
                [ -b /dev/$d ] && { echo /dev/$d; return 0; }
            done
        done
        sleep 0.1
    done
    echo "no block device for $A" >&2; return 1
}
fabrics_disk() {
    for i in $(seq 1 200); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ "$(cat $s/subsysnqn 2>/dev/null)" = "$NQN" ] || continue
            for n in $s/nvme*n*; do
                [ -b /dev/${n##*/} ] && { echo /dev/${n##*/}; return 0; }
            done
        done
        sleep 0.1
    done
    echo "namespace of $NQN did not show up" >&2; return 1
}
write_target_config() {
    printf '%s\n' '[target]' 'reactors = 2' '[[listener]]' 'address = "127.0.0.1:4420"' \
        '[[subsystem]]' "nqn = \"$NQN\"" '[[subsystem.namespace]]' 'nsid = 1' \
        "vfio = \"$A\"" > /tmp/target.toml
}
"#;

const MAIN_SCRIPT: &str = r#"
modprobe nvme; modprobe vfio-pci; modprobe vfio_iommu_type1; modprobe ext4
KDISK=$(pci_disk)
say "kernel disk $KDISK"

# Refusal: a mounted device.
mke2fs -q $KDISK >/dev/null
mkdir -p /mnt/ssd && mount -t ext2 $KDISK /mnt/ssd
if /test/hugepage-setup bind $A > /tmp/out 2>&1; then cat /tmp/out; say "FAIL: took a mounted device"; exit 1; fi
cat /tmp/out
grep -q "is mounted on /mnt/ssd" /tmp/out && say "refused mounted device"
umount /mnt/ssd
# Refusal: more hugepages than the guest has memory for.
if /test/hugepage-setup reserve --pages 100000 --no-mount > /tmp/out 2>&1; then cat /tmp/out; say "FAIL: reserved 200 GiB"; exit 1; fi
cat /tmp/out
grep -q "not enough free memory" /tmp/out && say "refused too many hugepages"
[ "$(cat /proc/sys/vm/nr_hugepages)" = 0 ] && say "no hugepages left behind"

# Set-up, twice (the second run changes nothing).
/test/hugepage-setup setup --pages 64 $A
/test/hugepage-setup setup --pages 64 $A | tee /tmp/out
grep -q "already bound to vfio-pci" /tmp/out && say "setup is idempotent"
/test/hugepage-setup status
ls /dev/vfio

write_target_config
/test/lightpool-target --config /tmp/target.toml > /tmp/target.log 2>&1 &
TPID=$!
for i in $(seq 1 600); do
    grep -q "listening on" /tmp/target.log && break
    kill -0 $TPID 2>/dev/null || { cat /tmp/target.log; say "FAIL: target exited"; exit 1; }
    sleep 0.1
done
cat /tmp/target.log
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
DEV=$(fabrics_disk)
say "fabrics disk $DEV"

# Patterns through the page cache (written back in large requests), read back after
# dropping the cache.
dd if=/test/a.bin of=$DEV bs=4096 seek=$((OFF_A / 4096)) conv=notrunc 2>/dev/null
dd if=/test/b.bin of=$DEV bs=4096 seek=$((OFF_B / 4096)) conv=notrunc 2>/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
dd if=$DEV of=/tmp/a.back bs=4096 skip=$((OFF_A / 4096)) count=256 2>/dev/null
dd if=$DEV of=/tmp/b.back bs=4096 skip=$((OFF_B / 4096)) count=$((LEN_B / 4096)) 2>/dev/null
cmp /tmp/a.back /test/a.bin && cmp /tmp/b.back /test/b.bin && say "patterns read back over NVMe/TCP"
# Write Zeroes, Flush, Dataset Management through to the device.
nvme write-zeroes $DEV -n 1 -s $((OFF_Z / 512)) -c 2047
nvme flush $DEV -n 1
blkdiscard -o $((150 << 20)) -l 1048576 $DEV
# Direct I/O of mixed sizes (PRP lists, split requests), verified.
fio --name=mixed --filename=$DEV --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite \
    --bsrange=4k-256k --offset=64m --size=16m --verify=crc32c --verify_fatal=1 \
    --randrepeat=1 --output-format=terse --terse-version=3 > /tmp/fio.out
say "fio mixed errors=$(cut -d';' -f5 /tmp/fio.out)"
nvme disconnect -n $NQN
kill -TERM $TPID; wait $TPID || true
tail -n 5 /tmp/target.log

# The driver's IOPS in process, then the kernel's on the same device.
/test/nvme_vfio_iops $A 32 8 2>&1 | tee /tmp/vfio.out
say "vfio_iops=$(sed -n 's/^IOPS=//p' /tmp/vfio.out)"
/test/hugepage-setup reset $A
KDISK=$(pci_disk)
say "back on nvme: $KDISK"
dd if=$KDISK of=/tmp/b.kernel bs=4096 skip=$((OFF_B / 4096)) count=$((LEN_B / 4096)) 2>/dev/null
cmp /tmp/b.kernel /test/b.bin && say "kernel driver reads the pattern"
fio --name=kernel --filename=$KDISK --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
    --iodepth=32 --runtime=8 --time_based --output-format=terse --terse-version=3 > /tmp/k.out
say "kernel_iops=$(cut -d';' -f8 /tmp/k.out)"
/test/hugepage-setup status
say "all good"
"#;

#[test]
fn vfio_nvme_served_over_tcp_and_back_to_the_kernel() {
    let dir = e2e_dir().expect("e2e dir");
    let img = dir.join("vfio-nvme.img");
    let a = pattern(LEN_A, 0xA11CE);
    let b = pattern(LEN_B, 0xB0B);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&img).expect("image");
        f.set_len(IMG_MIB << 20).expect("size");
        f.write_all_at(&vec![0xAB; LEN_Z], OFF_Z)
            .expect("junk to zero");
    }
    let mut files = guest_files(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("hugepage-setup", "/test/hugepage-setup"),
        ("examples/nvme_vfio_iops", "/test/nvme_vfio_iops"),
    ]);
    files.push(("/test/a.bin".into(), a.clone()));
    files.push(("/test/b.bin".into(), b.clone()));
    let script =
        format!("{LIB}\nOFF_A={OFF_A}; OFF_B={OFF_B}; OFF_Z={OFF_Z}; LEN_B={LEN_B}\n{MAIN_SCRIPT}");
    let mut cfg = GuestConfig::new("vfio-nvme", &script);
    cfg.timeout = Duration::from_secs(900);
    cfg.extra_files = files;
    cfg.qemu_args = vec![
        "-device".into(),
        "intel-iommu,intremap=on,caching-mode=on".into(),
    ];
    cfg.qemu_args.extend(nvme_qemu_args(&img));
    cfg.kernel_args = vec!["intel_iommu=on".into(), "iommu=pt".into()];
    let out = run_guest(&cfg).expect("guest runs");
    let tail = out.tail(80);
    assert_eq!(out.exit_code, 0, "{tail}");
    for want in [
        "E2E: refused mounted device",
        "E2E: refused too many hugepages",
        "E2E: no hugepages left behind",
        "E2E: setup is idempotent",
        "E2E: patterns read back over NVMe/TCP",
        "E2E: fio mixed errors=0",
        "NVMe controller shut down",
        "E2E: kernel driver reads the pattern",
        "E2E: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing:\n{tail}");
    }
    for bad in [
        "I/O Error",
        "timed out",
        "resetting the NVMe controller",
        "Oops",
    ] {
        assert!(
            !out.console.contains(bad),
            "{bad:?} on the console:\n{tail}"
        );
    }

    // What the guest wrote is in the image, where it was written.
    let data = fs::read(&img).expect("read image");
    let at = |off: u64, len: usize| &data[off as usize..off as usize + len];
    assert!(at(OFF_A, LEN_A) == a.as_slice(), "pattern A not at {OFF_A}");
    assert!(at(OFF_B, LEN_B) == b.as_slice(), "pattern B not at {OFF_B}");
    assert!(
        at(OFF_Z, LEN_Z).iter().all(|&x| x == 0),
        "Write Zeroes did not zero {OFF_Z}"
    );

    let num = |key: &str| -> f64 {
        out.console
            .lines()
            .find_map(|l| l.split(key).nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} missing:\n{tail}"))
    };
    let vfio = num("E2E: vfio_iops=");
    let kernel = num("E2E: kernel_iops=");
    let line = format!(
        "4 KiB random reads, QD 32, 8 s, same emulated device, same boot (TCG): VFIO driver \
         {vfio:.0} IOPS, kernel nvme driver (fio io_uring) {kernel:.0} IOPS, ratio {:.2}\n",
        vfio / kernel
    );
    eprint!("{line}");
    fs::write(dir.join("vfio-nvme-iops.txt"), line).expect("write");
    let _ = fs::remove_file(&img);
}

const NO_IOMMU_SCRIPT: &str = r#"
modprobe nvme; modprobe vfio-pci; modprobe vfio_iommu_type1
if /test/hugepage-setup bind $A > /tmp/out 2>&1; then cat /tmp/out; say "FAIL: bound without an IOMMU"; exit 1; fi
cat /tmp/out
grep -q "the IOMMU is off" /tmp/out && say "refused without an IOMMU"
write_target_config
if /test/lightpool-target --config /tmp/target.toml > /tmp/out 2>&1; then say "FAIL: target started"; exit 1; fi
cat /tmp/out
grep -q "namespace\[0\].vfio: .*no IOMMU group" /tmp/out && say "target names the field and the cause"
"#;

#[test]
fn no_iommu_no_vfio() {
    let dir = e2e_dir().expect("e2e dir");
    let img = dir.join("vfio-nvme-noiommu.img");
    fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    let mut cfg = GuestConfig::new("vfio-nvme-noiommu", &format!("{LIB}\n{NO_IOMMU_SCRIPT}"));
    cfg.timeout = Duration::from_secs(300);
    cfg.extra_files = guest_files(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("hugepage-setup", "/test/hugepage-setup"),
    ]);
    cfg.qemu_args = nvme_qemu_args(&img);
    let out = run_guest(&cfg).expect("guest runs");
    let tail = out.tail(40);
    assert_eq!(out.exit_code, 0, "{tail}");
    assert!(
        out.console.contains("E2E: refused without an IOMMU"),
        "{tail}"
    );
    assert!(
        out.console
            .contains("E2E: target names the field and the cause"),
        "{tail}"
    );
    let _ = fs::remove_file(&img);
}
