//! The block devices of a target, by name, each with how it was made (what `config
//! save` writes back and a successor keeps): every device the configuration or the
//! API created, stacked ones included. A hot upgrade walks this registry, not only the
//! devices namespaces serve, so a device created and not (yet) served travels too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lightpool_bdev::Bdev;
use lightpool_bdev_nvme_vfio::{NvmeVfioBdev, NvmeVfioOptions};
use lightpool_bdev_ram::{MallocBdev, Pages, RamOptions};
use lightpool_bdev_uring::{UringBdev, UringOptions};
use serde::{Deserialize, Serialize};

use super::ManageError;
use crate::config::{format_size, BdevSection, Size};

/// How a device was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    Ram {
        size: u64,
        block_size: u32,
        /// None: huge pages whenever enough are free.
        hugepages: Option<bool>,
    },
    File {
        path: PathBuf,
        block_size: Option<u32>,
        read_only: bool,
        direct: bool,
    },
    Vfio {
        address: String,
        nsid: u32,
    },
    Passthru {
        base: String,
    },
    /// An array and its members, as its `[[raid]]` section says.
    Raid(Box<crate::raid::RaidSection>),
    /// A pool (volume store): its `[[pool]]` section, as TOML (the boot blob's
    /// encoding cannot carry the section's sizes and optional keys).
    Pool(String),
    /// A volume of a pool (registered when a namespace serves it).
    Volume {
        pool: String,
        volume: String,
    },
    /// A fault-injecting device over `base`, with its rules at creation (the text
    /// form; the device's own rules change at run time and travel by its export).
    Fault {
        base: String,
        rules: Vec<String>,
    },
}

impl DeviceSpec {
    /// From a configuration's device description (checked already).
    pub fn from_section(b: &BdevSection) -> DeviceSpec {
        if let Some(Size(size)) = b.ram {
            DeviceSpec::Ram {
                size,
                block_size: b.block_size.unwrap_or(512),
                hugepages: b.hugepages,
            }
        } else if let Some(path) = &b.file {
            DeviceSpec::File {
                path: path.clone(),
                block_size: b.block_size,
                read_only: b.read_only,
                direct: b.direct.unwrap_or(true),
            }
        } else if let Some(address) = &b.vfio {
            DeviceSpec::Vfio {
                address: address.clone(),
                nsid: b.vfio_nsid.unwrap_or(1),
            }
        } else if let Some(base) = &b.fault {
            DeviceSpec::Fault {
                base: base.clone(),
                rules: b.faults.clone(),
            }
        } else {
            DeviceSpec::Passthru {
                base: b.passthru.clone().unwrap_or_default(),
            }
        }
    }

    /// As a `[[bdev]]` of a saved configuration.
    pub fn to_section(&self, name: &str) -> BdevSection {
        let mut b = BdevSection {
            name: name.to_string(),
            ..Default::default()
        };
        match self {
            DeviceSpec::Ram {
                size,
                block_size,
                hugepages,
            } => {
                b.ram = Some(Size(*size));
                b.block_size = Some(*block_size);
                b.hugepages = *hugepages;
            }
            DeviceSpec::File {
                path,
                block_size,
                read_only,
                direct,
            } => {
                b.file = Some(path.clone());
                b.block_size = *block_size;
                b.read_only = *read_only;
                b.direct = (!direct).then_some(false);
            }
            DeviceSpec::Vfio { address, nsid } => {
                b.vfio = Some(address.clone());
                b.vfio_nsid = (*nsid != 1).then_some(*nsid);
            }
            DeviceSpec::Passthru { base } => b.passthru = Some(base.clone()),
            DeviceSpec::Fault { base, rules } => {
                b.fault = Some(base.clone());
                b.faults = rules.clone();
            }
            // Saved as a `[[raid]]` (see `raid_section`), never as a `[[bdev]]`; pools
            // as `[[pool]]`s, volumes by the namespaces serving them.
            DeviceSpec::Raid(_) | DeviceSpec::Pool(_) | DeviceSpec::Volume { .. } => {}
        }
        b
    }

    /// The configuration key of what makes the device (for errors).
    pub fn key(&self) -> &'static str {
        match self {
            DeviceSpec::Ram { .. } => "ram",
            DeviceSpec::File { .. } => "file",
            DeviceSpec::Vfio { .. } => "vfio",
            DeviceSpec::Passthru { .. } => "passthru",
            DeviceSpec::Fault { .. } => "fault",
            DeviceSpec::Raid(_) => "raid",
            DeviceSpec::Pool(_) => "pool",
            DeviceSpec::Volume { .. } => "volume",
        }
    }
}

/// One device of the registry.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    pub bdev: Arc<dyn Bdev>,
    pub spec: DeviceSpec,
}

/// The devices, in creation order (children before what is stacked on them).
#[derive(Default)]
pub struct Registry {
    devs: Mutex<Vec<Entry>>,
}

impl Registry {
    pub fn new(entries: Vec<Entry>) -> Registry {
        Registry {
            devs: Mutex::new(entries),
        }
    }

    pub fn all(&self) -> Vec<Entry> {
        self.devs.lock().expect("registry lock poisoned").clone()
    }

    pub fn get(&self, name: &str) -> Option<Entry> {
        self.all().into_iter().find(|e| e.name == name)
    }

    /// The name of a device of the registry.
    pub fn name_of(&self, d: &Arc<dyn Bdev>) -> Option<String> {
        self.all()
            .into_iter()
            .find(|e| Arc::ptr_eq(&e.bdev, d))
            .map(|e| e.name)
    }

    pub(super) fn insert(&self, e: Entry) -> Result<(), ManageError> {
        let mut d = self.devs.lock().expect("registry lock poisoned");
        if d.iter().any(|x| x.name == e.name) {
            return Err(ManageError::Exists(format!(
                "a block device named {:?} exists already: pick another name",
                e.name
            )));
        }
        d.push(e);
        Ok(())
    }

    /// Device `name` is now `bdev` (the same data on a device that grew).
    pub(super) fn replace_bdev(&self, name: &str, bdev: Arc<dyn Bdev>) {
        let mut d = self.devs.lock().expect("registry lock poisoned");
        if let Some(e) = d.iter_mut().find(|e| e.name == name) {
            e.bdev = bdev;
        }
    }

    pub(super) fn remove(&self, name: &str) -> Option<Entry> {
        let mut d = self.devs.lock().expect("registry lock poisoned");
        let at = d.iter().position(|e| e.name == name)?;
        Some(d.remove(at))
    }

    /// Replaces how device `name` was made (an array whose members changed).
    pub(super) fn set_spec(&self, name: &str, spec: DeviceSpec) -> bool {
        let mut d = self.devs.lock().expect("registry lock poisoned");
        match d.iter_mut().find(|e| e.name == name) {
            Some(e) => {
                e.spec = spec;
                true
            }
            None => false,
        }
    }

    /// A name not taken yet: `base`, else `base.2`, `base.3`, ...
    pub fn free_name(&self, base: &str) -> String {
        let d = self.devs.lock().expect("registry lock poisoned");
        let taken = |n: &str| d.iter().any(|e| e.name == n);
        if !taken(base) {
            return base.to_string();
        }
        (2..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !taken(n))
            .expect("some suffix is free")
    }

    /// Bytes of ordinary memory the RAM devices may come to hold.
    fn ram_committed(&self) -> u64 {
        self.all()
            .iter()
            .map(|e| match e.spec {
                DeviceSpec::Ram {
                    size,
                    hugepages: None | Some(false),
                    ..
                } => size,
                _ => 0,
            })
            .sum()
    }
}

/// A `/proc/meminfo` field, in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib << 10)
}

/// Free bytes of the file system holding `dir`.
fn fs_free(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct for a NUL-terminated path we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
}

/// RAM is taken only as hosts write, so a device larger than the machine would start
/// and fail later: refuse one that cannot fit in the memory available now, or with the
/// other RAM devices in this machine's memory (or, in a state directory, on its file
/// system).
fn check_ram_fits(
    size: u64,
    registry: &Registry,
    state_dir: Option<&Path>,
) -> Result<(), ManageError> {
    let what = format_size(size);
    if let Some(avail) = meminfo("MemAvailable") {
        if size > avail {
            return Err(ManageError::NoMemory(format!(
                "a RAM device of {what} does not fit in the {} of memory available now (MemAvailable): give a smaller size, or serve a file",
                gib(avail)
            )));
        }
    }
    if let Some(total) = meminfo("MemTotal") {
        let all = registry.ram_committed() + size;
        if all > total / 10 * 9 {
            return Err(ManageError::NoMemory(format!(
                "with this {what} device the RAM devices would hold {} in all, more than 90% of this machine's {}: give a smaller size, or delete a RAM device",
                gib(all),
                gib(total)
            )));
        }
    }
    if let Some(dir) = state_dir {
        if let Some(free) = fs_free(dir) {
            if size > free {
                return Err(ManageError::NoMemory(format!(
                    "a RAM device of {what} does not fit in the {} free in the state directory {}",
                    gib(free),
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// The tmpfs file of RAM device `name` in the state directory.
pub fn ram_file(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("ram-{safe}"))
}

/// Make the device `spec` describes (not registered yet).
pub(super) fn open_device(
    name: &str,
    spec: &DeviceSpec,
    registry: &Registry,
    state_dir: Option<&Path>,
) -> Result<Arc<dyn Bdev>, ManageError> {
    let bad = |e: lightpool_bdev::BdevError| ManageError::Invalid(e.to_string());
    Ok(match spec {
        DeviceSpec::Ram {
            size,
            block_size,
            hugepages,
        } => {
            if *size == 0 || *size % u64::from(*block_size) != 0 {
                return Err(ManageError::Invalid(format!(
                    "{} is not a whole number of {block_size}-byte blocks",
                    format_size(*size)
                )));
            }
            if *hugepages != Some(true) {
                check_ram_fits(*size, registry, state_dir)?;
            }
            let opts = RamOptions {
                pages: match hugepages {
                    None => Pages::Auto,
                    Some(true) => Pages::Huge,
                    Some(false) => Pages::Ordinary,
                },
                populate: true,
                file: state_dir.map(|dir| ram_file(dir, name)),
            };
            MallocBdev::with_options(name, *size, *block_size, &opts).map_err(bad)?
        }
        DeviceSpec::File {
            path,
            block_size,
            read_only,
            direct,
        } => UringBdev::open(
            path,
            UringOptions {
                block_size: *block_size,
                read_only: *read_only,
                direct: *direct,
                ..UringOptions::default()
            },
        )
        .map_err(bad)?,
        DeviceSpec::Vfio { address, nsid } => NvmeVfioBdev::open(
            address,
            NvmeVfioOptions {
                nsid: *nsid,
                ..NvmeVfioOptions::default()
            },
        )
        .map_err(bad)?,
        DeviceSpec::Passthru { base } => {
            let b = registry.get(base).ok_or_else(|| {
                ManageError::NotFound(format!(
                    "no block device named {base:?} to stack a pass-through on"
                ))
            })?;
            lightpool_bdev_passthru::PassthruBdev::new(b.bdev)
        }
        DeviceSpec::Fault { base, rules } => {
            let b = registry.get(base).ok_or_else(|| {
                ManageError::NotFound(format!(
                    "no block device named {base:?} to inject faults into"
                ))
            })?;
            let rules = parse_rules(rules)?;
            let d = lightpool_bdev_fault::FaultBdev::new(name, b.bdev);
            d.set_rules(rules);
            d
        }
        DeviceSpec::Raid(r) => {
            if r.name != name {
                return Err(ManageError::Invalid(format!(
                    "an array is named as its section says ({:?}), not {name:?}",
                    r.name
                )));
            }
            crate::raid::open_array(r, state_dir)
                .map_err(|e| ManageError::Invalid(format!("{e:#}")))?
        }
        DeviceSpec::Pool(text) => {
            let p = crate::pools::section(text)?;
            if p.name != name {
                return Err(ManageError::Invalid(format!(
                    "a pool is named as its section says ({:?}), not {name:?}",
                    p.name
                )));
            }
            crate::pools::open_pool(&p, registry, state_dir)?
        }
        DeviceSpec::Volume { pool, volume } => crate::pools::open_volume(registry, pool, volume)?,
    })
}

/// Fault rules from their text form; the first bad one refused with what to change.
pub fn parse_rules(rules: &[String]) -> Result<Vec<lightpool_bdev_fault::FaultRule>, ManageError> {
    rules
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e: lightpool_bdev_fault::RuleError| ManageError::Invalid(e.to_string()))
        })
        .collect()
}
