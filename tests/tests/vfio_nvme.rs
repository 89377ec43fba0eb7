//! The userspace NVMe driver against QEMU's PCIe NVMe controller, in the Linux 6.12
//! guest with an emulated IOMMU: hugepage-setup reserves hugepages and binds the device
//! to vfio-pci, lightpool-target serves it over NVMe/TCP through the VFIO driver, the
//! guest kernel's initiator writes and reads back patterns over loopback; hugepage-setup
//! gives the device back to the nvme driver, which reads the same data; after power-off
//! the image file on the host holds the patterns at their offsets. Also: the driver's
//! IOPS in process against the kernel driver's (fio, io_uring) and against the target's
//! (the kernel NVMe/TCP initiator through lightpool-target to the device) on the same
//! device in the same boot, and the refusals (mounted device, too many hugepages, no
//! IOMMU). And a hot upgrade of the target serving the device: the new binary takes the
//! controller, its queues and DMA memory over without resetting it, and everything
//! written before reads back after.
#![cfg(feature = "e2e")]

use std::fs;
use std::path::Path;
use std::time::Duration;

use lightpool_e2e::{e2e_dir, guest_release_binaries, release_binary, run_guest, GuestConfig};

const IMG_MIB: u64 = 256;
/// Where the patterns go (bytes), and how long they are.
const OFF_A: u64 = 0;
const LEN_A: usize = 1 << 20;
const OFF_B: u64 = 100 * (1 << 20) + 3 * 4096;
const LEN_B: usize = 300 * 1024;
/// Written after the hot upgrade.
const OFF_C: u64 = 160 * (1 << 20) + 5 * 4096;
const LEN_C: usize = 256 * 1024;
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

/// A guest with an IOMMU (intel-iommu, passthrough) and the NVMe device backed by `img`.
fn iommu_guest(name: &str, script: &str, files: Vec<(String, Vec<u8>)>, img: &Path) -> GuestConfig {
    let mut cfg = GuestConfig::new(name, script);
    cfg.timeout = Duration::from_secs(900);
    cfg.extra_files = files;
    cfg.qemu_args = vec![
        "-device".into(),
        "intel-iommu,intremap=on,caching-mode=on".into(),
    ];
    cfg.qemu_args.extend(nvme_qemu_args(img));
    cfg.kernel_args = vec!["intel_iommu=on".into(), "iommu=pt".into()];
    cfg
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
# The block device of namespace ${1:-1} of $NQN (by NSID: the kernel scans namespaces
# in parallel, so nvmeXn1 may be any of them).
fabrics_disk() {
    for i in $(seq 1 200); do
        for s in /sys/class/nvme-subsystem/nvme-subsys*; do
            [ "$(cat $s/subsysnqn 2>/dev/null)" = "$NQN" ] || continue
            for n in $s/nvme*n*; do
                d=${n##*/}
                [ "$(cat /sys/block/$d/nsid 2>/dev/null)" = "${1:-1}" ] || continue
                [ -b /dev/$d ] && { echo /dev/$d; return 0; }
            done
        done
        sleep 0.1
    done
    echo "namespace ${1:-1} of $NQN did not show up" >&2; return 1
}
# The target serving the device as namespace 1; `write_target_config ram` adds a RAM
# namespace 2 (the same path with no device behind it).
write_target_config() {
    printf '%s\n' '[target]' 'reactors = 2' '[[listener]]' 'address = "127.0.0.1:4420"' \
        '[[subsystem]]' "nqn = \"$NQN\"" '[[subsystem.namespace]]' 'nsid = 1' \
        "vfio = \"$A\"" > /tmp/target.toml
    if [ "${1:-}" = ram ]; then
        printf '%s\n' '[[subsystem.namespace]]' 'nsid = 2' 'ram = "64MiB"' >> /tmp/target.toml
    fi
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

write_target_config ram
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
# The target's IOPS: the same 4 KiB random reads at QD 32 as the in-process driver's
# below, from the kernel's NVMe/TCP initiator through the target to the device; then
# the same against the RAM namespace, the most this initiator gets through the target.
randread() {
    fio --name=$1 --filename=$2 --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
        --iodepth=32 --runtime=8 --time_based --output-format=terse --terse-version=3 > /tmp/$1.out
    cut -d';' -f8 /tmp/$1.out
}
say "target_iops=$(randread target $DEV)"
say "target_ram_iops=$(randread ram $(fabrics_disk 2))"
nvme disconnect -n $NQN
kill -TERM $TPID; wait $TPID || true
tail -n 5 /tmp/target.log
# Requests whose data the VFIO driver had to copy through a buffer of its own (its
# count, logged when the namespace closes): none, the target's buffers are its pool's.
# The log has colour codes between a field's name and its value: dropped first.
B=$(grep 'VFIO NVMe namespace closed' /tmp/target.log | tr -d '\033' | sed 's/\[[0-9;]*m//g' \
    | grep -o 'bounced=[0-9]*' || true)
say "target_bounced=${B#bounced=}"

# The driver's IOPS in process, then the kernel's on the same device.
/test/nvme_vfio_iops $A 32 8 2>&1 | tee /tmp/vfio.out
say "vfio_iops=$(sed -n 's/^IOPS=//p' /tmp/vfio.out)"
say "vfio_bounced=$(sed -n 's/^BOUNCED=//p' /tmp/vfio.out)"
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
    let mut files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("hugepage-setup", "/test/hugepage-setup"),
        ("examples/nvme_vfio_iops", "/test/nvme_vfio_iops"),
    ]);
    files.push(("/test/a.bin".into(), a.clone()));
    files.push(("/test/b.bin".into(), b.clone()));
    let script =
        format!("{LIB}\nOFF_A={OFF_A}; OFF_B={OFF_B}; OFF_Z={OFF_Z}; LEN_B={LEN_B}\n{MAIN_SCRIPT}");
    let cfg = iommu_guest("vfio-nvme", &script, files, &img);
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
    // The target's request buffers come from the device's DMA pool: nothing it served
    // was bounced; nor was anything of the in-process run, which reads into pool buffers.
    assert_eq!(num("E2E: target_bounced="), 0.0, "{tail}");
    assert_eq!(num("E2E: vfio_bounced="), 0.0, "{tail}");
    let vfio = num("E2E: vfio_iops=");
    let kernel = num("E2E: kernel_iops=");
    let target = num("E2E: target_iops=");
    let ram = num("E2E: target_ram_iops=");
    let line = format!(
        "4 KiB random reads, QD 32, 8 s, same emulated device, same boot (TCG): VFIO driver \
         {vfio:.0} IOPS, kernel nvme driver (fio io_uring) {kernel:.0} IOPS, ratio {:.2}; \
         lightpool-target serving it to the kernel NVMe/TCP initiator (fio io_uring) \
         {target:.0} IOPS, {:.2} of the in-process driver's; a RAM namespace of the same \
         target {ram:.0} IOPS, the device namespace {:.2} of that\n",
        vfio / kernel,
        target / vfio,
        target / ram
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
    cfg.extra_files = guest_release_binaries(&[
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

const UPGRADE_SCRIPT: &str = r#"
modprobe nvme; modprobe vfio-pci; modprobe vfio_iommu_type1
/test/hugepage-setup setup --pages 64 $A
write_target_config
CTL=/tmp/lp.sock
/test/lightpool-target --config /tmp/target.toml --control-socket $CTL > /tmp/target.log 2>&1 &
TPID=$!
for i in $(seq 1 600); do
    grep -q "listening on" /tmp/target.log && break
    kill -0 $TPID 2>/dev/null || { cat /tmp/target.log; say "FAIL: target exited"; exit 1; }
    sleep 0.1
done
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN
DEV=$(fabrics_disk)
say "fabrics disk $DEV"
fr() { nvme id-ctrl $DEV | sed -n 's/^fr *: *//p' | tr -d ' '; }
say "fr before=$(fr)"
# Before: a pattern, and a verified fio region (re-verified after the upgrade).
dd if=/test/a.bin of=$DEV bs=4096 seek=$((OFF_A / 4096)) oflag=direct conv=notrunc 2>/dev/null
FIOV="--filename=$DEV --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite --bs=8k \
    --offset=64m --size=8m --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3"
fio --name=before $FIOV > /tmp/fio1.out
say "fio before errors=$(cut -d';' -f5 /tmp/fio1.out)"
FREE0=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)
# During: writes with verification in another region while the target is replaced.
fio --name=during --filename=$DEV --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite \
    --bs=4k --offset=96m --size=4m --loops=4 --verify=crc32c --verify_fatal=1 \
    --output-format=terse --terse-version=3 > /tmp/fio2.out 2>&1 &
FPID=$!
sleep 1
kill -0 $FPID 2>/dev/null && say "fio running when the upgrade starts"
/test/lightpool-target upgrade --binary /test/lightpool-target-next --control-socket $CTL > /tmp/up.out 2>&1 \
    || { cat /tmp/up.out; cat /tmp/target.log; say "FAIL: upgrade"; exit 1; }
cat /tmp/up.out
grep -q "took over from" /tmp/up.out && say "upgrade took over"
wait $FPID || { cat /tmp/fio2.out; say "FAIL: fio across the upgrade"; exit 1; }
say "fio during errors=$(cut -d';' -f5 /tmp/fio2.out)"
# After: what was written before reads back; new I/O works; the new version answers.
dd if=$DEV of=/tmp/a.back bs=4096 skip=$((OFF_A / 4096)) count=$((LEN_A / 4096)) iflag=direct 2>/dev/null
cmp /tmp/a.back /test/a.bin && say "pattern A reads back after the upgrade"
fio --name=before $FIOV --verify_only > /tmp/fio3.out
say "fio reverify errors=$(cut -d';' -f5 /tmp/fio3.out)"
dd if=/test/c.bin of=$DEV bs=4096 seek=$((OFF_C / 4096)) oflag=direct conv=notrunc 2>/dev/null
dd if=$DEV of=/tmp/c.back bs=4096 skip=$((OFF_C / 4096)) count=$((LEN_C / 4096)) iflag=direct 2>/dev/null
cmp /tmp/c.back /test/c.bin && say "pattern C written and read after the upgrade"
say "fr after=$(fr)"
FREE1=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)
say "hugepages free before=$FREE0 after=$FREE1"
say "controller enables=$(cat /tmp/target.log /tmp/up.out | grep -c 'CC.EN set')"
grep -q "NVMe controller adopted (VFIO), no reset" /tmp/up.out && say "controller adopted"
say "queues taken over=$(cat /tmp/target.log /tmp/up.out | grep -c 'hardware I/O queue pair taken over')"
# A second upgrade, back to the first binary: an adopted controller hands over again
# (queues taken and not taken, the container's IOVAs, the enable count).
fio --name=during2 --filename=$DEV --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite \
    --bs=4k --offset=112m --size=4m --loops=4 --verify=crc32c --verify_fatal=1 \
    --output-format=terse --terse-version=3 > /tmp/fio4.out 2>&1 &
FPID=$!
sleep 1
/test/lightpool-target upgrade --binary /test/lightpool-target --control-socket $CTL > /tmp/up2.out 2>&1 \
    || { cat /tmp/up2.out; cat /tmp/target.log; say "FAIL: second upgrade"; exit 1; }
cat /tmp/up2.out
wait $FPID || { cat /tmp/fio4.out; say "FAIL: fio across the second upgrade"; exit 1; }
say "fio during second errors=$(cut -d';' -f5 /tmp/fio4.out)"
fio --name=before $FIOV --verify_only > /tmp/fio5.out
dd if=$DEV of=/tmp/c.back2 bs=4096 skip=$((OFF_C / 4096)) count=$((LEN_C / 4096)) iflag=direct 2>/dev/null
cmp /tmp/c.back2 /test/c.bin && [ "$(cut -d';' -f5 /tmp/fio5.out)" = 0 ] && say "data reads back after the second upgrade"
say "fr after second=$(fr)"
say "controller enables after second=$(cat /tmp/target.log /tmp/up.out /tmp/up2.out | grep -c 'CC.EN set')"
say "hugepages free after second=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages)"
say "kernel log:"
dmesg | grep -i nvme | sed 's/^/UPV-DMESG: /'
nvme disconnect -n $NQN
NPID=$(sed -n 's/.*now serving: .*pid=\([0-9]*\).*/\1/p' /tmp/up2.out)
kill -TERM $NPID
for i in $(seq 1 100); do kill -0 $NPID 2>/dev/null || break; sleep 0.1; done
tail -n 8 /tmp/target.log
grep -q "NVMe controller shut down" /tmp/target.log && say "new process shut the controller down"
say "all good"
"#;

#[test]
fn vfio_namespace_hot_upgrade_without_controller_reset() {
    let dir = e2e_dir().expect("e2e dir");
    let img = dir.join("vfio-nvme-upgrade.img");
    let a = pattern(LEN_A, 0xA11CE5);
    let c = pattern(LEN_C, 0xC0FFEE);
    fs::File::create(&img)
        .and_then(|f| f.set_len(IMG_MIB << 20))
        .expect("image");
    let mut files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("hugepage-setup", "/test/hugepage-setup"),
    ]);
    let next = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    files.push((
        "/test/lightpool-target-next".into(),
        fs::read(&next).expect("read lightpool-target-next"),
    ));
    files.push(("/test/a.bin".into(), a.clone()));
    files.push(("/test/c.bin".into(), c.clone()));
    let script = format!(
        "{LIB}\nOFF_A={OFF_A}; LEN_A={LEN_A}; OFF_C={OFF_C}; LEN_C={LEN_C}\n{UPGRADE_SCRIPT}"
    );
    let cfg = iommu_guest("vfio-nvme-upgrade", &script, files, &img);
    let out = run_guest(&cfg).expect("guest runs");
    let tail = out.tail(100);
    assert_eq!(out.exit_code, 0, "{tail}");
    let line = |key: &str| -> String {
        out.console
            .lines()
            .find_map(|l| l.split(key).nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{key:?} missing:\n{tail}"))
    };
    for want in [
        "E2E: upgrade took over",
        "E2E: fio before errors=0",
        "E2E: fio during errors=0",
        "E2E: pattern A reads back after the upgrade",
        "E2E: fio reverify errors=0",
        "E2E: pattern C written and read after the upgrade",
        "E2E: controller adopted",
        "E2E: new process shut the controller down",
        "E2E: all good",
    ] {
        assert!(out.console.contains(want), "{want:?} missing:\n{tail}");
    }
    // Identify answers with the new binary's firmware revision.
    let before = line("E2E: fr before=");
    let after = line("E2E: fr after=");
    assert_eq!(after, "0.1.0-n", "Identify FR after the upgrade:\n{tail}");
    assert_ne!(before, after);
    // The controller was enabled once, by the first process: no reset, no CC.EN toggle
    // in the new one; its I/O queues were taken over, not re-created.
    assert_eq!(line("E2E: controller enables="), "1", "{tail}");
    let queues: u32 = line("E2E: queues taken over=").parse().expect("a count");
    assert!(queues >= 1, "no hardware queue was taken over:\n{tail}");
    // The DMA memory was taken over, not allocated again: the pool alone is 16
    // hugepages, the admin queue one, each I/O queue one. At most one more may be in use
    // after: an I/O queue for a reactor that had none before the upgrade.
    let free = line("E2E: hugepages free before=");
    let (f0, f1) = free.split_once(" after=").expect("two numbers");
    let (f0, f1): (i64, i64) = (f0.parse().expect("count"), f1.parse().expect("count"));
    assert!(
        f0 - f1 <= 1,
        "{} hugepages more in use after the upgrade:\n{tail}",
        f0 - f1
    );
    // And once more, back to the first binary.
    assert!(
        out.console.contains("E2E: fio during second errors=0"),
        "{tail}"
    );
    assert!(
        out.console
            .contains("E2E: data reads back after the second upgrade"),
        "{tail}"
    );
    assert_eq!(line("E2E: fr after second="), before, "{tail}");
    assert_eq!(line("E2E: controller enables after second="), "1", "{tail}");
    let f2: i64 = line("E2E: hugepages free after second=")
        .parse()
        .expect("count");
    assert!(f0 - f2 <= 1, "hugepages used by the upgrades:\n{tail}");
    for bad in [
        "resetting the NVMe controller",
        "I/O Error",
        "timed out",
        "Oops",
    ] {
        assert!(
            !out.console.contains(bad),
            "{bad:?} on the console:\n{tail}"
        );
    }
    let dmesg: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("UPV-DMESG"))
        .collect();
    for bad in ["reconnect", "I/O error", "timeout", "resetting"] {
        assert!(
            !dmesg.iter().any(|l| l.contains(bad)),
            "the guest kernel logged {bad:?}:\n{}",
            dmesg.join("\n")
        );
    }
    // What was written before and after the upgrade is on the device.
    let data = fs::read(&img).expect("read image");
    let at = |off: u64, len: usize| &data[off as usize..off as usize + len];
    assert!(at(OFF_A, LEN_A) == a.as_slice(), "pattern A not at {OFF_A}");
    assert!(at(OFF_C, LEN_C) == c.as_slice(), "pattern C not at {OFF_C}");
    let _ = fs::remove_file(&img);
}
