//! `status`: what the host offers the dataplane, as a table or JSON.

use std::fmt::Write;

use serde::Serialize;

use crate::devices::{self, Device};
use crate::host::Host;
use crate::hugepages::{self, Mount, PagePool};

#[derive(Debug, Serialize)]
pub struct Status {
    pub iommu: bool,
    pub hugepages: Vec<PagePool>,
    pub hugetlbfs: Vec<Mount>,
    pub nvme: Vec<NvmeStatus>,
}

#[derive(Debug, Serialize)]
pub struct NvmeStatus {
    #[serde(flatten)]
    pub device: Device,
    /// Every other device of the IOMMU group is on vfio-pci, pci-stub, pcieport or none.
    pub group_viable: bool,
}

pub fn collect(h: &Host) -> Status {
    Status {
        iommu: devices::iommu_on(h),
        hugepages: hugepages::pools(h),
        hugetlbfs: hugepages::mounts(h),
        nvme: devices::nvme_devices(h)
            .into_iter()
            .map(|d| NvmeStatus {
                group_viable: d.iommu_group.is_some()
                    && d.group_peers.iter().all(|(_, drv)| {
                        matches!(
                            drv.as_deref(),
                            None | Some("vfio-pci") | Some("pci-stub") | Some("pcieport")
                        )
                    }),
                device: d,
            })
            .collect(),
    }
}

pub fn table(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "IOMMU: {}", if s.iommu { "on" } else { "off" });
    let _ = writeln!(
        o,
        "\nHugepages:\n{:<8} {:>10} {:>8} {:>8}",
        "NODE", "PAGE", "TOTAL", "FREE"
    );
    for p in &s.hugepages {
        let size = if p.page_kb >= 1 << 20 {
            format!("{}G", p.page_kb >> 20)
        } else {
            format!("{}M", p.page_kb >> 10)
        };
        let _ = writeln!(o, "{:<8} {:>10} {:>8} {:>8}", p.node, size, p.total, p.free);
    }
    let _ = writeln!(o, "\nhugetlbfs mounts:");
    if s.hugetlbfs.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for m in &s.hugetlbfs {
        let _ = writeln!(o, "  {} ({} kB pages)", m.path, m.page_kb);
    }
    let _ = writeln!(
        o,
        "\nNVMe controllers:\n{:<14} {:<11} {:<10} {:<6} {:<7} {:<16} USE",
        "ADDRESS", "ID", "DRIVER", "GROUP", "VIABLE", "DISKS"
    );
    for n in &s.nvme {
        let d = &n.device;
        let id = format!(
            "{}:{}",
            d.vendor.trim_start_matches("0x"),
            d.device.trim_start_matches("0x")
        );
        let _ = writeln!(
            o,
            "{:<14} {:<11} {:<10} {:<6} {:<7} {:<16} {}",
            d.addr,
            id,
            d.driver.as_deref().unwrap_or("-"),
            d.iommu_group.map_or("-".into(), |g| g.to_string()),
            if n.group_viable { "yes" } else { "no" },
            if d.disks.is_empty() {
                "-".to_string()
            } else {
                d.disks.join(",")
            },
            if d.in_use.is_empty() {
                "free".to_string()
            } else {
                d.in_use.join("; ")
            }
        );
    }
    o
}
