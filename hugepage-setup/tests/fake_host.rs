//! hugepage-setup against a fake sysfs/procfs tree: refusals, dry runs, idempotency and
//! status, with no hardware and no privileges.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fake {
    dir: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn write(p: &Path, s: &str) {
    fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
    fs::write(p, s).expect("write");
}

impl Fake {
    /// A host with the IOMMU on (group 0 holds a host bridge), 2 MiB and 1 GiB pools,
    /// 8 GiB available, nvme and vfio-pci drivers, no hugetlbfs mount.
    fn new() -> Fake {
        let f = Fake {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for kb in [2048, 1048576] {
            let d = f.sys(&format!("kernel/mm/hugepages/hugepages-{kb}kB"));
            write(&d.join("nr_hugepages"), "0\n");
            write(&d.join("free_hugepages"), "0\n");
        }
        for drv in ["nvme", "vfio-pci", "pcieport"] {
            write(&f.sys(&format!("bus/pci/drivers/{drv}/unbind")), "");
        }
        write(&f.sys("bus/pci/drivers_probe"), "");
        fs::create_dir_all(f.sys("kernel/iommu_groups/0/devices")).expect("mkdir");
        write(&f.proc("mounts"), "proc /proc proc rw 0 0\n");
        write(
            &f.proc("self/mountinfo"),
            "22 1 0:21 / /proc rw - proc proc rw\n",
        );
        write(&f.proc("swaps"), "Filename Type Size Used Priority\n");
        write(
            &f.proc("meminfo"),
            "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n",
        );
        f
    }

    fn sys(&self, rel: &str) -> PathBuf {
        self.dir.path().join("sys").join(rel)
    }

    fn proc(&self, rel: &str) -> PathBuf {
        self.dir.path().join("proc").join(rel)
    }

    fn no_iommu(&self) {
        fs::remove_dir_all(self.sys("kernel/iommu_groups")).expect("rm");
    }

    /// A PCI device of `class` in IOMMU `group`, bound to `driver`.
    fn device(&self, addr: &str, class: &str, group: Option<u32>, driver: Option<&str>) {
        let d = self.sys(&format!("bus/pci/devices/{addr}"));
        write(&d.join("class"), &format!("{class}\n"));
        write(&d.join("vendor"), "0x1b36\n");
        write(&d.join("device"), "0x0010\n");
        write(&d.join("driver_override"), "(null)\n");
        if let Some(g) = group {
            let gd = self.sys(&format!("kernel/iommu_groups/{g}/devices"));
            fs::create_dir_all(&gd).expect("mkdir");
            symlink(&d, gd.join(addr)).expect("symlink");
            symlink(
                format!("../../../kernel/iommu_groups/{g}"),
                d.join("iommu_group"),
            )
            .expect("symlink");
        }
        if let Some(drv) = driver {
            symlink(format!("../../../bus/pci/drivers/{drv}"), d.join("driver")).expect("symlink");
        }
    }

    /// An NVMe controller with one namespace disk `disk` (device number `devno`) and a
    /// partition `{disk}p1` (`devno` minor + 1); `multipath`: the controller folder
    /// holds the path device nvme0c0n1 instead of the disk.
    fn nvme(
        &self,
        addr: &str,
        group: Option<u32>,
        driver: Option<&str>,
        disk: &str,
        multipath: bool,
    ) {
        self.device(addr, "0x010802", group, driver);
        let ctrl = self.sys(&format!("bus/pci/devices/{addr}/nvme/nvme0"));
        let entry = if multipath {
            disk.replacen('n', "c0n", 2).replacen("c0n", "n", 1)
        } else {
            disk.to_string()
        };
        fs::create_dir_all(ctrl.join(entry)).expect("mkdir");
        write(&self.sys(&format!("block/{disk}/dev")), "259:0\n");
        fs::create_dir_all(self.sys(&format!("block/{disk}/holders"))).expect("mkdir");
        write(&self.sys(&format!("block/{disk}/{disk}p1/dev")), "259:1\n");
        fs::create_dir_all(self.sys(&format!("block/{disk}/{disk}p1/holders"))).expect("mkdir");
    }

    fn run(&self, args: &[&str]) -> Out {
        let o = Command::new(env!("CARGO_BIN_EXE_hugepage-setup"))
            .arg("--sysfs-root")
            .arg(self.dir.path().join("sys"))
            .arg("--procfs-root")
            .arg(self.dir.path().join("proc"))
            .args(args)
            .output()
            .expect("runs");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn read(&self, p: PathBuf) -> String {
        fs::read_to_string(p).expect("read")
    }
}

const A: &str = "0000:00:04.0";

#[test]
fn refuses_without_an_iommu() {
    let f = Fake::new();
    f.nvme(A, None, Some("nvme"), "nvme0n1", false);
    f.no_iommu();
    let o = f.run(&["bind", A]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("the IOMMU is off"), "{}", o.stderr);
    assert!(o.stderr.contains("intel_iommu=on"), "{}", o.stderr);
    // --force does not help: VFIO cannot work without it.
    assert_eq!(f.run(&["bind", "--force", A]).code, 1);
    assert_eq!(
        f.read(f.sys(&format!("bus/pci/devices/{A}/driver_override"))),
        "(null)\n"
    );
}

#[test]
fn refuses_a_mounted_device_unless_forced() {
    let f = Fake::new();
    f.nvme(A, Some(4), Some("nvme"), "nvme0n1", true);
    write(
        &f.proc("self/mountinfo"),
        "22 1 0:21 / /proc rw - proc proc rw\n40 1 259:1 / /data rw - ext4 /dev/nvme0n1p1 rw\n",
    );
    let o = f.run(&["bind", A]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("/dev/nvme0n1p1 is mounted on /data") && o.stderr.contains("--force"),
        "{}",
        o.stderr
    );
    assert_eq!(
        f.read(f.sys(&format!("bus/pci/devices/{A}/driver_override"))),
        "(null)\n"
    );
    // Without an address, a device in use is skipped, not taken.
    let o = f.run(&["bind", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("skipped, in use"), "{}", o.stdout);
    assert!(!o.stdout.contains("driver_override"), "{}", o.stdout);
    // Forced (dry run, so the fake tree needs no driver core behind it).
    let o = f.run(&["bind", "--force", "--dry-run", A]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("taking it because of --force"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("would write \"vfio-pci\""),
        "{}",
        o.stdout
    );
}

#[test]
fn refuses_a_device_in_use_as_swap_or_held() {
    let f = Fake::new();
    f.nvme(A, Some(4), Some("nvme"), "nvme0n1", false);
    write(
        &f.proc("swaps"),
        "Filename Type Size Used Priority\n/dev/nvme0n1p1 partition 100 0 -2\n",
    );
    let o = f.run(&["bind", A]);
    assert!(o.stderr.contains("in use as swap"), "{}", o.stderr);
    write(&f.proc("swaps"), "Filename Type Size Used Priority\n");
    fs::create_dir_all(f.sys("block/nvme0n1/holders/dm-0")).expect("mkdir");
    let o = f.run(&["bind", A]);
    assert!(
        o.stderr.contains("/dev/nvme0n1 is held by dm-0"),
        "{}",
        o.stderr
    );
}

#[test]
fn refuses_a_group_it_cannot_take_whole() {
    let f = Fake::new();
    f.nvme(A, Some(7), Some("nvme"), "nvme0n1", false);
    f.device("0000:00:05.0", "0x020000", Some(7), Some("e1000e"));
    let o = f.run(&["bind", A]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("shares IOMMU group 7 with 0000:00:05.0 (e1000e)"),
        "{}",
        o.stderr
    );
    let s = f.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).expect("json");
    assert_eq!(v["nvme"][0]["group_viable"], false);
    // Naming the peer takes the group whole.
    let o = f.run(&["bind", "--dry-run", A, "0000:00:05.0"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // A bridge on pcieport does not stand in the way.
    let g = Fake::new();
    g.nvme(A, Some(7), Some("nvme"), "nvme0n1", false);
    g.device("0000:00:1c.0", "0x060400", Some(7), Some("pcieport"));
    assert_eq!(g.run(&["bind", "--dry-run", A]).code, 0);
}

#[test]
fn refuses_more_hugepages_than_memory_or_kernel_give() {
    let f = Fake::new();
    write(
        &f.proc("meminfo"),
        "MemTotal: 2000000 kB\nMemAvailable: 100000 kB\n",
    );
    let o = f.run(&["reserve", "--pages", "1024", "--no-mount"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("not enough free memory") && o.stderr.contains("2048 MiB more"),
        "{}",
        o.stderr
    );
    assert_eq!(
        f.read(f.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")),
        "0\n"
    );
    // The kernel reserves fewer than asked (here: none; /dev/null reads back empty).
    let g = Fake::new();
    let nr = g.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    fs::remove_file(&nr).expect("rm");
    symlink("/dev/null", &nr).expect("symlink");
    let o = g.run(&["reserve", "--pages", "64", "--no-mount"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("not enough free hugepages: only 0 of the 64"),
        "{}",
        o.stderr
    );
}

/// `setup` checks every argument before it does (or prints) anything: a PCI address
/// that does not exist stops it before the reserve and mount steps.
#[test]
fn setup_checks_every_argument_first() {
    let f = Fake::new();
    for bad in ["0000:bad", "0000:00:09.0"] {
        let o = f.run(&["setup", "--dry-run", "--pages", "64", bad]);
        assert_ne!(o.code, 0, "{bad}: {}", o.stdout);
        assert!(
            o.stdout.is_empty(),
            "{bad}: printed steps before refusing: {}",
            o.stdout
        );
        assert!(
            o.stderr.contains("PCI") || o.stderr.contains("no PCI device"),
            "{}",
            o.stderr
        );
        let o = f.run(&["setup", "--pages", "64", bad]);
        assert_ne!(o.code, 0);
        assert_eq!(
            f.read(f.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
                .trim(),
            "0",
            "{bad}: pages were reserved before the address was refused"
        );
    }
    let o = f.run(&["setup", "--dry-run", "--pages", "64", "--page-size", "4M"]);
    assert_ne!(o.code, 0);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
}

#[test]
fn dry_run_prints_and_changes_nothing() {
    let f = Fake::new();
    f.nvme(A, Some(4), Some("nvme"), "nvme0n1", false);
    let mnt = f.dir.path().join("hugepages");
    let o = f.run(&[
        "setup",
        "--dry-run",
        "--pages",
        "64",
        "--mount",
        mnt.to_str().expect("utf-8"),
        A,
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for want in [
        "would reserve 64 hugepages of 2048 kB on the system (now 0)",
        "would write \"64\" to",
        "would mount hugetlbfs (pagesize=2M) at",
        "would bind 0000:00:04.0 (0x1b36 0x0010) to vfio-pci (was nvme)",
        "would write \"vfio-pci\" to",
        "driver/unbind",
        "drivers_probe",
    ] {
        assert!(o.stdout.contains(want), "{want:?} missing:\n{}", o.stdout);
    }
    assert_eq!(
        f.read(f.sys("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")),
        "0\n"
    );
    assert_eq!(
        f.read(f.sys(&format!("bus/pci/devices/{A}/driver_override"))),
        "(null)\n"
    );
    assert_eq!(f.read(f.sys("bus/pci/drivers_probe")), "");
    assert!(!mnt.exists());
}

#[test]
fn a_prepared_host_is_left_alone() {
    let f = Fake::new();
    f.nvme(A, Some(4), Some("vfio-pci"), "nvme0n1", false);
    let d = f.sys("kernel/mm/hugepages/hugepages-2048kB");
    write(&d.join("nr_hugepages"), "64\n");
    write(&d.join("free_hugepages"), "64\n");
    let mnt = f.dir.path().join("hugepages");
    write(
        &f.proc("mounts"),
        &format!(
            "hugetlbfs {} hugetlbfs rw,relatime,pagesize=2M 0 0\n",
            mnt.display()
        ),
    );
    for _ in 0..2 {
        let o = f.run(&[
            "setup",
            "--pages",
            "64",
            "--mount",
            mnt.to_str().expect("utf-8"),
            A,
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stdout
                .contains("64 hugepages of 2048 kB already reserved"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("already mounted"), "{}", o.stdout);
        assert!(
            o.stdout.contains("0000:00:04.0: already bound to vfio-pci"),
            "{}",
            o.stdout
        );
        assert!(!o.stdout.contains("would"), "{}", o.stdout);
    }
    assert_eq!(
        f.read(f.sys(&format!("bus/pci/devices/{A}/driver_override"))),
        "(null)\n"
    );
    assert_eq!(f.read(f.sys("bus/pci/drivers_probe")), "");
    // A hugetlbfs of the wrong page size at the mount point is refused.
    let o = f.run(&[
        "reserve",
        "--pages",
        "1",
        "--page-size",
        "1G",
        "--mount",
        mnt.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("not 1048576 kB"), "{}", o.stderr);
}

#[test]
fn reset_returns_devices_to_nvme() {
    let f = Fake::new();
    f.nvme(A, Some(4), Some("vfio-pci"), "nvme0n1", false);
    f.nvme("0000:00:06.0", Some(5), Some("nvme"), "nvme1n1", false);
    let o = f.run(&["reset", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("would return 0000:00:04.0 to nvme (was vfio-pci)"),
        "{}",
        o.stdout
    );
    assert!(
        !o.stdout.contains("0000:00:06.0"),
        "only devices on vfio-pci: {}",
        o.stdout
    );
    let o = f.run(&["reset", "00:06.0"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("0000:00:06.0: already bound to nvme"),
        "{}",
        o.stdout
    );
    let o = f.run(&["bind", "nvme0"]);
    assert!(o.stderr.contains("is not a PCI address"), "{}", o.stderr);
}

#[test]
fn status_table_and_json() {
    let f = Fake::new();
    f.nvme(A, Some(4), Some("nvme"), "nvme0n1", true);
    let d = f.sys("kernel/mm/hugepages/hugepages-2048kB");
    write(&d.join("nr_hugepages"), "32\n");
    write(&d.join("free_hugepages"), "30\n");
    let o = f.run(&["status"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("IOMMU: on"), "{}", o.stdout);
    let rows: Vec<Vec<&str>> = o
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["system", "2M", "32", "30"]),
        "{}",
        o.stdout
    );
    assert!(
        rows.contains(&vec![
            "0000:00:04.0",
            "1b36:0010",
            "nvme",
            "4",
            "yes",
            "nvme0n1",
            "free"
        ]),
        "{}",
        o.stdout
    );
    let o = f.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["iommu"], true);
    assert_eq!(v["nvme"][0]["addr"], A);
    assert_eq!(v["nvme"][0]["driver"], "nvme");
    assert_eq!(v["nvme"][0]["iommu_group"], 4);
    assert_eq!(
        v["nvme"][0]["disks"][0], "nvme0n1",
        "multipath path device maps to its disk"
    );
    assert_eq!(v["hugepages"][1]["page_kb"], 2048);
    assert_eq!(v["hugepages"][1]["free"], 30);
}

#[test]
fn numa_nodes_each_get_the_pages() {
    let f = Fake::new();
    for n in 0..2 {
        let d = f.sys(&format!(
            "devices/system/node/node{n}/hugepages/hugepages-2048kB"
        ));
        write(&d.join("nr_hugepages"), "0\n");
        write(&d.join("free_hugepages"), "0\n");
    }
    let o = f.run(&["reserve", "--pages", "16", "--no-mount"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for n in 0..2 {
        assert_eq!(
            f.read(f.sys(&format!(
                "devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages"
            ))),
            "16"
        );
    }
    assert!(o.stdout.contains("on node1"), "{}", o.stdout);
}
