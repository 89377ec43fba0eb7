//! `[[pool]]` sections: volume stores (see docs/pool-format.md) on one device, and the
//! volumes the configuration wants in them; namespaces serve a volume with
//! `volume = "POOL/VOLUME"`.
//!
//! ```toml
//! [[pool]]
//! name = "p0"
//! device = "/dev/nvme1n1"   # or ram = "4GiB", vfio = "0000:03:00.0", or a device by
//!                           # name: raid = "md0" / bdev = "NAME"
//! cluster_size = "1MiB"
//! overcommit = 200
//! [[pool.volume]]
//! name = "vol1"
//! size = "100GiB"
//!
//! [[subsystem.namespace]]
//! nsid = 1
//! volume = "p0/vol1"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_device_name, ferr, Config, FieldError, NamespaceSection, Size};

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A pool: a volume store on one device.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// The pool's name; also its name among the target's block devices.
    pub name: String,
    /// The pool device: a file or block device (io_uring),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    /// or RAM of this size (in the state directory when there is one),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<Size>,
    /// or an NVMe SSD bound to vfio-pci,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_nsid: Option<u32>,
    /// or a `[[raid]]` array by name (the pool is then its only user),
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<String>,
    /// or a `[[bdev]]` by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdev: Option<String>,
    /// Block size of a RAM or file device (512 or 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// O_DIRECT for a file device (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
    /// Make a new pool when the device is blank (its first 8 KiB all zeroes). Default
    /// true; a device holding anything else is never formatted over.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub create: bool,
    /// Cluster size of a new pool (a power of two from 16 KiB to 1 GiB; default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<Size>,
    /// Percent of the data space writable volumes may promise (a new pool's; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit: Option<u32>,
    /// Volumes, snapshots and clones a new pool can hold (default 4032).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_volumes: Option<u32>,
    /// Metadata pages of a new pool (default: enough for max_volumes and the over-commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md_pages: Option<u32>,
    #[serde(default, rename = "volume", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<PoolVolumeSection>,
}

impl PoolSection {
    /// The target's device the pool is on, when it names one (`raid` or `bdev`).
    pub fn device_name(&self) -> Option<&String> {
        self.raid.as_ref().or(self.bdev.as_ref())
    }
}

/// A volume the pool must hold: created at start if missing, grown if smaller.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolVolumeSection {
    pub name: String,
    /// A multiple of the pool device's block size.
    pub size: Size,
    /// Clusters on first write (default) or all at creation.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub thin: bool,
}

/// The name among the target's block devices of volume `volume` of pool `pool`.
pub fn volume_device_name(pool: &str, volume: &str) -> String {
    format!("{pool}:{volume}")
}

/// Splits "POOL/VOLUME".
pub fn split_volume(spec: &str) -> Option<(&str, &str)> {
    let (p, v) = spec.split_once('/')?;
    (!p.is_empty() && !v.is_empty() && !v.contains('/')).then_some((p, v))
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_whitespace)
}

/// Checks the `[[pool]]` sections.
pub fn validate(cfg: &Config) -> Result<(), FieldError> {
    for (pi, p) in cfg.pools.iter().enumerate() {
        let f = |x: &str| format!("pool[{pi}].{x}");
        check_device_name(&p.name).map_err(|e| ferr(f("name"), e))?;
        if cfg.pools[..pi].iter().any(|o| o.name == p.name)
            || cfg.bdevs.iter().any(|b| b.name == p.name)
            || cfg.raids.iter().any(|r| r.name == p.name)
        {
            return Err(ferr(
                f("name"),
                format!(
                    "{:?} is configured twice (pools, [[bdev]]s and [[raid]]s share names)",
                    p.name
                ),
            ));
        }
        let given = [
            p.device.is_some(),
            p.ram.is_some(),
            p.vfio.is_some(),
            p.raid.is_some(),
            p.bdev.is_some(),
        ];
        match given.iter().filter(|x| **x).count() {
            0 => {
                return Err(ferr(
                    f("device"),
                    "a pool needs a device: device = \"PATH\", ram = \"SIZE\", vfio = \"PCI ADDRESS\", raid = \"ARRAY\" or bdev = \"NAME\"",
                ))
            }
            1 => {}
            _ => {
                return Err(ferr(
                    f("device"),
                    "give one of device, ram, vfio, raid or bdev, not several",
                ))
            }
        }
        if let Some(a) = &p.vfio {
            lightpool_nvme_vfio::vfio::normalize_pci_address(a).ok_or_else(|| {
                ferr(
                    f("vfio"),
                    format!("{a:?} is not a PCI address such as \"0000:00:04.0\""),
                )
            })?;
        }
        if let Some(r) = &p.raid {
            if !cfg.raids.iter().any(|a| &a.name == r) {
                return Err(ferr(f("raid"), format!("no [[raid]] is named {r:?}")));
            }
        }
        if let Some(b) = &p.bdev {
            if !cfg.bdevs.iter().any(|x| &x.name == b) {
                return Err(ferr(f("bdev"), format!("no [[bdev]] is named {b:?}")));
            }
        }
        if let Some(d) = p.device_name() {
            let key = if p.raid.is_some() { "raid" } else { "bdev" };
            if let Some(o) = cfg.pools[..pi].iter().find(|o| o.device_name() == Some(d)) {
                return Err(ferr(
                    f(key),
                    format!("{d:?} is pool {:?}'s device already", o.name),
                ));
            }
            if p.block_size.is_some() || p.direct.is_some() {
                return Err(ferr(
                    f("block_size"),
                    "a pool on a named device has that device's block size; block_size and direct belong to its section",
                ));
            }
        }
        if let Some(bs) = p.block_size {
            if bs != 512 && bs != 4096 {
                return Err(ferr(
                    f("block_size"),
                    format!("{bs} is neither 512 nor 4096"),
                ));
            }
        }
        if let Some(Size(v)) = p.cluster_size {
            if !v.is_power_of_two() || !(16 << 10..=1 << 30).contains(&v) {
                return Err(ferr(
                    f("cluster_size"),
                    "must be a power of two from 16KiB to 1GiB",
                ));
            }
        }
        if p.overcommit == Some(0) {
            return Err(ferr(f("overcommit"), "must be at least 1 (percent)"));
        }
        if p.max_volumes == Some(0) {
            return Err(ferr(f("max_volumes"), "must be at least 1"));
        }
        for (vi, v) in p.volumes.iter().enumerate() {
            let g = |x: &str| format!("pool[{pi}].volume[{vi}].{x}");
            if !name_ok(&v.name) {
                return Err(ferr(
                    g("name"),
                    format!("{:?} is not a volume name (no '/', no spaces)", v.name),
                ));
            }
            if p.volumes[..vi].iter().any(|o| o.name == v.name) {
                return Err(ferr(g("name"), format!("{:?} is configured twice", v.name)));
            }
            if v.size.0 == 0 || v.size.0 % 512 != 0 {
                return Err(ferr(
                    g("size"),
                    "must be a positive multiple of the block size",
                ));
            }
        }
    }
    // A device a pool is on serves nothing else.
    for (si, s) in cfg.subsystems.iter().enumerate() {
        for (ni, n) in s.namespaces.iter().enumerate() {
            let Some(d) = n.device_name() else { continue };
            if let Some(p) = cfg.pools.iter().find(|p| p.device_name() == Some(d)) {
                let key = if n.raid.is_some() { "raid" } else { "bdev" };
                return Err(ferr(
                    format!("subsystem[{si}].namespace[{ni}].{key}"),
                    format!("{d:?} is pool {:?}'s device; serve one of its volumes (volume = \"{}/NAME\")", p.name, p.name),
                ));
            }
        }
    }
    for (bi, b) in cfg.bdevs.iter().enumerate() {
        for (field, base) in [("passthru", &b.passthru), ("fault", &b.fault)] {
            let Some(base) = base else { continue };
            if let Some(p) = cfg.pools.iter().find(|p| p.device_name() == Some(base)) {
                return Err(ferr(
                    format!("bdev[{bi}].{field}"),
                    format!("{base:?} is pool {:?}'s device", p.name),
                ));
            }
        }
    }
    Ok(())
}

/// Checks a namespace that serves a volume (`key` its table).
pub fn check_namespace(
    cfg: &Config,
    key: &str,
    n: &NamespaceSection,
    v: &str,
) -> Result<(), FieldError> {
    let g = |x: &str| format!("{key}.{x}");
    if n.device_name().is_some()
        || n.ram.is_some()
        || n.file.is_some()
        || n.vfio.is_some()
        || n.passthru
    {
        return Err(ferr(
            g("volume"),
            "give one of bdev, raid, ram, file, vfio or volume, not several",
        ));
    }
    let Some((pool, vol)) = split_volume(v) else {
        return Err(ferr(g("volume"), format!("{v:?} is not \"POOL/VOLUME\"")));
    };
    if !cfg.pools.iter().any(|p| p.name == pool) {
        return Err(ferr(g("volume"), format!("no [[pool]] is named {pool:?}")));
    }
    check_device_name(&volume_device_name(pool, vol)).map_err(|_| {
        ferr(
            g("volume"),
            format!(
                "volume {vol:?}: a served volume's name uses letters, digits, '.', '_', '-' or ':'"
            ),
        )
    })?;
    if n.block_size.is_some() || n.hugepages.is_some() || n.direct.is_some() || n.read_only {
        return Err(ferr(
            g("block_size"),
            "a volume has its pool's block size; block_size, hugepages, read_only and direct belong to the [[pool]]",
        ));
    }
    Ok(())
}
