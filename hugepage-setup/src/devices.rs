//! NVMe controllers on the PCI bus: what they are bound to, their IOMMU group, whether
//! anything uses them; binding them to vfio-pci and giving them back to nvme.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::{Host, Result, SetupError};

/// PCI class of an NVM Express controller: mass storage (01), NVM (08), NVMe (02).
const NVME_CLASS: &str = "0x010802";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Device {
    pub addr: String,
    pub vendor: String,
    pub device: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// Other devices of the IOMMU group and their drivers.
    pub group_peers: Vec<(String, Option<String>)>,
    /// Block devices of its namespaces (nvme0n1, ...).
    pub disks: Vec<String>,
    /// Why it must not be taken (mounted, in use); empty when free.
    pub in_use: Vec<String>,
}

fn pci(h: &Host, addr: &str) -> PathBuf {
    h.sys("bus/pci/devices").join(addr)
}

/// Every NVMe controller on the PCI bus.
pub fn nvme_devices(h: &Host) -> Vec<Device> {
    h.list(&h.sys("bus/pci/devices"))
        .into_iter()
        .filter(|a| h.read(&pci(h, a).join("class")).as_deref() == Some(NVME_CLASS))
        .map(|a| describe(h, &a))
        .collect()
}

/// The canonical form "0000:00:04.0" of a PCI address (domain 0000 when left out).
pub fn normalize(addr: &str) -> Option<String> {
    let a = addr.trim().to_ascii_lowercase();
    let a = if a.matches(':').count() == 1 {
        format!("0000:{a}")
    } else {
        a
    };
    let ok = a.len() == 12
        && a.char_indices().all(|(i, c)| match i {
            4 | 7 => c == ':',
            10 => c == '.',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then_some(a)
}

pub fn describe(h: &Host, addr: &str) -> Device {
    let d = pci(h, addr);
    let iommu_group = h
        .link_name(&d.join("iommu_group"))
        .and_then(|g| g.parse().ok());
    let group_peers = iommu_group
        .map(|g| {
            h.list(&h.sys(&format!("kernel/iommu_groups/{g}/devices")))
                .into_iter()
                .filter(|p| p != addr)
                .map(|p| {
                    let drv = h.link_name(&pci(h, &p).join("driver"));
                    (p, drv)
                })
                .collect()
        })
        .unwrap_or_default();
    let disks = disks_of(h, addr);
    let in_use = usage(h, &disks);
    Device {
        addr: addr.to_string(),
        vendor: h.read(&d.join("vendor")).unwrap_or_default(),
        device: h.read(&d.join("device")).unwrap_or_default(),
        driver: h.link_name(&d.join("driver")),
        iommu_group,
        group_peers,
        disks,
        in_use,
    }
}

/// Namespace block devices of the controller: nvmeXnY entries of its controller
/// folders, and for multipath path devices nvmeAcBnZ the head disk nvmeAnZ.
fn disks_of(h: &Host, addr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let base = pci(h, addr).join("nvme");
    for ctrl in h.list(&base) {
        for e in h.list(&base.join(&ctrl)) {
            let Some(rest) = e.strip_prefix("nvme") else {
                continue;
            };
            let disk = match rest.split_once('c') {
                Some((a, bz)) => match bz.split_once('n') {
                    Some((_, z)) => format!("nvme{a}n{z}"),
                    None => continue,
                },
                None if rest.contains('n') => e.clone(),
                None => continue,
            };
            if !out.contains(&disk) {
                out.push(disk);
            }
        }
    }
    out
}

/// Why the disks must not be taken: mounts (by device number, from mountinfo), swap,
/// holders (device mapper, md), an exclusive open elsewhere.
fn usage(h: &Host, disks: &[String]) -> Vec<String> {
    let mut why = Vec::new();
    let mountinfo = h.read(&h.proc("self/mountinfo")).unwrap_or_default();
    let swaps = h.read(&h.proc("swaps")).unwrap_or_default();
    for disk in disks {
        let mut parts = vec![disk.clone()];
        parts.extend(
            h.list(&h.sys(&format!("block/{disk}")))
                .into_iter()
                .filter(|p| p.starts_with(disk.as_str()) && p != disk),
        );
        for p in &parts {
            let dev_file = if p == disk {
                h.sys(&format!("block/{disk}/dev"))
            } else {
                h.sys(&format!("block/{disk}/{p}/dev"))
            };
            if let Some(devno) = h.read(&dev_file) {
                for l in mountinfo.lines() {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    if f.len() > 4 && f[2] == devno {
                        why.push(format!("/dev/{p} is mounted on {}", f[4]));
                    }
                }
            }
            if swaps
                .lines()
                .skip(1)
                .any(|l| l.split_whitespace().next() == Some(&format!("/dev/{p}")))
            {
                why.push(format!("/dev/{p} is in use as swap"));
            }
            let holders_dir = if p == disk {
                h.sys(&format!("block/{disk}/holders"))
            } else {
                h.sys(&format!("block/{disk}/{p}/holders"))
            };
            for holder in h.list(&holders_dir) {
                why.push(format!("/dev/{p} is held by {holder}"));
            }
        }
        if h.real && why.is_empty() {
            let path = format!("/dev/{disk}");
            if let Ok(c) = std::ffi::CString::new(path.clone()) {
                // SAFETY: open(2) reads a NUL-terminated path; the fd is closed at once.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_EXCL) };
                if fd >= 0 {
                    // SAFETY: fd was just opened by us.
                    unsafe { libc::close(fd) };
                } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
                    why.push(format!("{path} is open exclusively by another program"));
                }
            }
        }
    }
    why
}

/// Whether the IOMMU is on: groups exist.
pub fn iommu_on(h: &Host) -> bool {
    !h.list(&h.sys("kernel/iommu_groups")).is_empty()
}

/// Drivers that leave an IOMMU group viable for VFIO.
fn viable_driver(d: &Option<String>) -> bool {
    matches!(
        d.as_deref(),
        None | Some("vfio-pci") | Some("pci-stub") | Some("pcieport")
    )
}

/// Binds the devices to vfio-pci, each after its checks. `taking`: every address this
/// call binds, so group peers among them count as taken.
pub fn bind(h: &Host, addrs: &[String], force: bool) -> Result<()> {
    if !iommu_on(h) {
        return Err(SetupError::Refused(
            "the IOMMU is off (no IOMMU groups): VFIO needs it. Enable VT-d/AMD-Vi in the \
             firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt"
                .into(),
        ));
    }
    ensure_vfio_driver(h)?;
    for addr in addrs {
        let d = describe(h, addr);
        if d.driver.as_deref() == Some("vfio-pci") {
            println!("{addr}: already bound to vfio-pci");
            continue;
        }
        let Some(group) = d.iommu_group else {
            return Err(SetupError::Refused(format!(
                "{addr} has no IOMMU group: the IOMMU does not cover it"
            )));
        };
        if !d.in_use.is_empty() {
            let msg = format!("{addr} is in use: {}", d.in_use.join("; "));
            if !force {
                return Err(SetupError::Refused(format!(
                    "{msg}. Unmount it and stop what uses it, or pass --force to take it anyway"
                )));
            }
            println!("warning: {msg}; taking it because of --force");
        }
        let blockers: Vec<String> = d
            .group_peers
            .iter()
            .filter(|(p, drv)| !viable_driver(drv) && !addrs.contains(p))
            .map(|(p, drv)| format!("{p} ({})", drv.as_deref().unwrap_or("no driver")))
            .collect();
        if !blockers.is_empty() {
            let msg = format!(
                "{addr} shares IOMMU group {group} with {}, which would stay on the host; VFIO \
                 can only take a group whole",
                blockers.join(", ")
            );
            if !force {
                return Err(SetupError::Refused(format!(
                    "{msg}. Bind those too (name them), or pass --force"
                )));
            }
            println!(
                "warning: {msg}; binding it anyway because of --force (VFIO will refuse the group)"
            );
        }
        let dir = pci(h, addr);
        h.say(&format!(
            "bind {addr} ({} {}) to vfio-pci (was {})",
            d.vendor,
            d.device,
            d.driver.as_deref().unwrap_or("unbound")
        ));
        h.write(&dir.join("driver_override"), "vfio-pci")?;
        if d.driver.is_some() {
            h.write(&dir.join("driver/unbind"), addr)?;
        }
        h.write(&h.sys("bus/pci/drivers_probe"), addr)?;
        if !h.dry_run {
            wait_driver(h, addr, Some("vfio-pci"))?;
            println!("{addr}: bound to vfio-pci (IOMMU group {group}, /dev/vfio/{group})");
        }
    }
    Ok(())
}

/// Gives the devices back to the kernel's nvme driver.
pub fn reset(h: &Host, addrs: &[String]) -> Result<()> {
    for addr in addrs {
        let d = describe(h, addr);
        if d.driver.as_deref() == Some("nvme") {
            println!("{addr}: already bound to nvme");
            continue;
        }
        let dir = pci(h, addr);
        h.say(&format!(
            "return {addr} to nvme (was {})",
            d.driver.as_deref().unwrap_or("unbound")
        ));
        h.write(&dir.join("driver_override"), "\n")?;
        if d.driver.is_some() {
            h.write(&dir.join("driver/unbind"), addr)?;
        }
        h.write(&h.sys("bus/pci/drivers_probe"), addr)?;
        if !h.dry_run {
            wait_driver(h, addr, Some("nvme"))?;
            println!("{addr}: bound to nvme");
        }
    }
    Ok(())
}

fn ensure_vfio_driver(h: &Host) -> Result<()> {
    let dir = h.sys("bus/pci/drivers/vfio-pci");
    if dir.is_dir() {
        return Ok(());
    }
    if h.real {
        h.say("load the vfio-pci module");
        if !h.dry_run {
            let ok = std::process::Command::new("modprobe")
                .arg("vfio-pci")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok && dir.is_dir() {
                return Ok(());
            }
        } else {
            return Ok(());
        }
    }
    Err(SetupError::Refused(
        "the vfio-pci driver is not available (modprobe vfio-pci failed or the kernel lacks \
         VFIO_PCI)"
            .into(),
    ))
}

fn wait_driver(h: &Host, addr: &str, want: Option<&str>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = h.link_name(&pci(h, addr).join("driver"));
        if now.as_deref() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SetupError::Failed(format!(
                "{addr} is bound to {} after the probe, not {}",
                now.as_deref().unwrap_or("no driver"),
                want.unwrap_or("no driver")
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
