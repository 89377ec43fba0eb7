//! The TOML configuration of `lightpool-target` (documented in README.md; an example
//! is deploy/examples/target.toml).

use std::net::SocketAddr;
use std::path::PathBuf;

use lightpool_nvme_vfio::vfio::normalize_pci_address;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    #[serde(default, rename = "subsystem")]
    pub subsystems: Vec<SubsystemSection>,
    /// Arrays over several devices (see raid.rs), which namespaces name by `raid` and
    /// pools by their `raid` key.
    #[serde(default, rename = "raid")]
    pub raids: Vec<crate::raid::RaidSection>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// CPU cores to run reactors on, one reactor each, pinned. Empty: `reactors`
    /// unpinned reactors.
    #[serde(default)]
    pub cores: Vec<usize>,
    /// Unpinned reactors when `cores` is empty.
    #[serde(default = "one")]
    pub reactors: usize,
    #[serde(default = "d_queue_depth")]
    pub max_queue_depth: u16,
    #[serde(default = "d_io_queues")]
    pub max_io_queues: u16,
    #[serde(default = "d_in_capsule")]
    pub in_capsule_data_size: u32,
    #[serde(default = "d_max_transfer")]
    pub max_transfer_size: u32,
    /// Microseconds a reactor keeps polling with nothing to do before it sleeps.
    #[serde(default)]
    pub idle_spin_us: Option<u64>,
    /// A directory on a tmpfs (e.g. /dev/shm/lightpool) for state that must outlive
    /// the process: RAM namespaces keep their data in files here, and a hot upgrade
    /// leaves its state region here, so `--recover` can restart from it.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl Default for TargetSection {
    fn default() -> Self {
        TargetSection {
            cores: Vec::new(),
            reactors: 1,
            max_queue_depth: d_queue_depth(),
            max_io_queues: d_io_queues(),
            in_capsule_data_size: d_in_capsule(),
            max_transfer_size: d_max_transfer(),
            idle_spin_us: None,
            state_dir: None,
        }
    }
}

fn one() -> usize {
    1
}
fn d_queue_depth() -> u16 {
    1024
}
fn d_io_queues() -> u16 {
    64
}
fn d_in_capsule() -> u32 {
    8192
}
fn d_max_transfer() -> u32 {
    128 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// "IP:PORT", e.g. "127.0.0.1:4420" or "[::]:4420".
    pub address: String,
    #[serde(default = "d_transport")]
    pub transport: String,
}

fn d_transport() -> String {
    "tcp".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemSection {
    pub nqn: String,
    #[serde(default = "d_serial")]
    pub serial: String,
    #[serde(default = "d_model")]
    pub model: String,
    #[serde(default = "yes")]
    pub allow_any_host: bool,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "d_min_cntlid")]
    pub min_cntlid: u16,
    #[serde(default = "d_max_cntlid")]
    pub max_cntlid: u16,
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<NamespaceSection>,
}

fn d_serial() -> String {
    "LIGHTPOOL0000001".to_string()
}
fn d_model() -> String {
    "LightPool".to_string()
}
fn yes() -> bool {
    true
}
fn d_min_cntlid() -> u16 {
    1
}
fn d_max_cntlid() -> u16 {
    0xFFEF
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSection {
    pub nsid: u32,
    /// Size of a RAM namespace, e.g. "1GiB", "512MiB", "4096" (bytes).
    pub ram: Option<String>,
    /// File or block device served through io_uring.
    pub file: Option<PathBuf>,
    /// PCI address of an NVMe SSD bound to vfio-pci, driven from userspace.
    pub vfio: Option<String>,
    /// The namespace of the `vfio` device to serve (default 1).
    pub vfio_nsid: Option<u32>,
    /// Logical block size: 512 or 4096 (RAM default 512; files: the device's).
    pub block_size: Option<u32>,
    /// RAM namespace in 2 MiB huge pages (reserved at start; see hugepage-setup).
    #[serde(default)]
    pub hugepages: bool,
    #[serde(default)]
    pub read_only: bool,
    /// O_DIRECT for files (default true).
    pub direct: Option<bool>,
    /// 32 hex digits.
    pub nguid: Option<String>,
    /// 8-4-4-4-12 hex UUID.
    pub uuid: Option<String>,
    pub ana_group: Option<u32>,
    /// Serve the device through a stacked pass-through that counts its I/O (shown by
    /// the control socket's DEVICES).
    #[serde(default)]
    pub passthru: bool,
    /// The name of a `[[raid]]` array to serve.
    pub raid: Option<String>,
    /// A volume of a pool, as "POOL/VOLUME".
    pub volume: Option<String>,
}

/// A pool: a volume store on one device (see docs/pool-format.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    pub name: String,
    /// The pool device: a file or block device (io_uring).
    pub device: Option<PathBuf>,
    /// Or RAM of this size ("4GiB"); in the state directory when there is one.
    pub ram: Option<String>,
    /// Or an NVMe SSD bound to vfio-pci.
    pub vfio: Option<String>,
    /// Or a `[[raid]]` array, by name (the pool is then its only user).
    pub raid: Option<String>,
    pub vfio_nsid: Option<u32>,
    /// Block size of a RAM or file device (512 or 4096).
    pub block_size: Option<u32>,
    /// O_DIRECT for a file device (default true).
    pub direct: Option<bool>,
    /// Make a new pool when the device is blank (its first 8 KiB all zeroes). Default
    /// true; a device holding anything else is never formatted over.
    #[serde(default = "yes")]
    pub create: bool,
    /// Cluster size of a new pool ("1MiB"; a power of two from 16 KiB to 1 GiB).
    pub cluster_size: Option<String>,
    /// Percent of the data space writable volumes may promise (a new pool's; default 100).
    pub overcommit: Option<u32>,
    /// Volumes, snapshots and clones a new pool can hold (default 4032).
    pub max_volumes: Option<u32>,
    /// Metadata pages of a new pool (default: enough for max_volumes and the over-commit).
    pub md_pages: Option<u32>,
    #[serde(default, rename = "volume")]
    pub volumes: Vec<PoolVolumeSection>,
}

/// A volume the pool must hold: created at start if missing, grown if smaller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolVolumeSection {
    pub name: String,
    /// "10GiB", a multiple of the pool device's block size.
    pub size: String,
    /// Clusters on first write (default) or all at creation.
    #[serde(default = "yes")]
    pub thin: bool,
}

/// A configuration error that names the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn ferr(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parse "1GiB", "512 MiB", "4096", "2G" into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"1GiB\" or \"4096\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    if digits.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// The identifiers of a namespace, if given, parse.
fn check_ids(g: &dyn Fn(&str) -> String, n: &NamespaceSection) -> Result<(), FieldError> {
    if let Some(x) = &n.nguid {
        parse_hex::<16>(x).ok_or_else(|| ferr(g("nguid"), "must be 32 hex digits"))?;
    }
    if let Some(x) = &n.uuid {
        parse_hex::<16>(x)
            .ok_or_else(|| ferr(g("uuid"), "must be a UUID (32 hex digits, dashes allowed)"))?;
    }
    Ok(())
}

/// Checks what serde cannot: values, ranges and combinations.
impl Config {
    pub fn validate(&self) -> Result<(), FieldError> {
        let t = &self.target;
        if t.cores.is_empty() && (t.reactors == 0 || t.reactors > 1024) {
            return Err(ferr("target.reactors", "must be between 1 and 1024"));
        }
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (i, c) in t.cores.iter().enumerate() {
            if *c >= ncpu {
                return Err(ferr(
                    format!("target.cores[{i}]"),
                    format!("core {c} does not exist (this machine has {ncpu})"),
                ));
            }
            if t.cores[..i].contains(c) {
                return Err(ferr(
                    format!("target.cores[{i}]"),
                    format!("core {c} is listed twice"),
                ));
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Err(e) = crate::transports::kinds().get(&l.transport) {
                return Err(ferr(format!("listener[{i}].transport"), e.to_string()));
            }
            l.address.parse::<SocketAddr>().map_err(|_| {
                ferr(
                    format!("listener[{i}].address"),
                    format!("{:?} is not IP:PORT", l.address),
                )
            })?;
        }
        crate::raid::validate(&self.raids)?;
        for (si, s) in self.subsystems.iter().enumerate() {
            let f = |x: &str| format!("subsystem[{si}].{x}");
            if self.subsystems[..si].iter().any(|o| o.nqn == s.nqn) {
                return Err(ferr(f("nqn"), format!("{:?} is configured twice", s.nqn)));
            }
            for (ni, n) in s.namespaces.iter().enumerate() {
                let g = |x: &str| format!("subsystem[{si}].namespace[{ni}].{x}");
                if let Some(v) = &n.volume {
                    if n.ram.is_some() || n.file.is_some() || n.vfio.is_some() || n.raid.is_some() {
                        return Err(ferr(
                            g("volume"),
                            "give one of ram, file, vfio, raid or volume, not several",
                        ));
                    }
                    let Some((pool, vol)) = v.split_once('/') else {
                        return Err(ferr(g("volume"), format!("{v:?} is not \"POOL/VOLUME\"")));
                    };
                    if !self.pools.iter().any(|p| p.name == pool) {
                        return Err(ferr(g("volume"), format!("no [[pool]] is named {pool:?}")));
                    }
                    if vol.is_empty() || vol.contains('/') {
                        return Err(ferr(g("volume"), format!("{v:?} is not \"POOL/VOLUME\"")));
                    }
                    if n.block_size.is_some() || n.hugepages || n.direct.is_some() {
                        return Err(ferr(
                            g("block_size"),
                            "a volume has its pool's block size; block_size, hugepages and direct belong to the [[pool]]",
                        ));
                    }
                    check_ids(&g, n)?;
                    continue;
                }
                if let Some(r) = &n.raid {
                    if n.ram.is_some() || n.file.is_some() || n.vfio.is_some() {
                        return Err(ferr(
                            g("raid"),
                            "give one of ram, file, vfio or raid, not several",
                        ));
                    }
                    if !self.raids.iter().any(|a| &a.name == r) {
                        return Err(ferr(g("raid"), format!("no [[raid]] is named {r:?}")));
                    }
                    if let Some(p) = self.pools.iter().find(|p| p.raid.as_ref() == Some(r)) {
                        return Err(ferr(
                            g("raid"),
                            format!("array {r:?} is pool {:?}'s device; serve one of its volumes (volume = \"{}/NAME\")", p.name, p.name),
                        ));
                    }
                    if n.block_size.is_some() {
                        return Err(ferr(
                            g("block_size"),
                            "an array has its members' block size",
                        ));
                    }
                }
                match (&n.ram, &n.file, &n.vfio) {
                    (None, None, None) if n.raid.is_some() => {}
                    (None, None, None) => {
                        return Err(ferr(
                            g("file"),
                            "a namespace needs a backend: ram = \"SIZE\", file = \"PATH\", vfio = \"PCI ADDRESS\", raid = \"NAME\" or volume = \"POOL/VOLUME\"",
                        ))
                    }
                    (Some(r), None, None) => {
                        parse_size(r).map_err(|e| ferr(g("ram"), e))?;
                    }
                    (None, Some(_), None) => {}
                    (None, None, Some(a)) => {
                        normalize_pci_address(a).ok_or_else(|| {
                            ferr(
                                g("vfio"),
                                format!("{a:?} is not a PCI address such as \"0000:00:04.0\""),
                            )
                        })?;
                        if n.block_size.is_some() {
                            return Err(ferr(
                                g("block_size"),
                                "a vfio namespace has the block size the SSD is formatted with",
                            ));
                        }
                    }
                    (Some(_), _, _) => {
                        return Err(ferr(g("ram"), "give one of ram, file or vfio, not several"))
                    }
                    (None, Some(_), Some(_)) => {
                        return Err(ferr(g("file"), "give one of ram, file or vfio, not several"))
                    }
                }
                if n.hugepages && n.ram.is_none() {
                    return Err(ferr(
                        g("hugepages"),
                        "only a ram namespace can be in huge pages",
                    ));
                }
                match (n.vfio_nsid, &n.vfio) {
                    (Some(_), None) => {
                        return Err(ferr(g("vfio_nsid"), "only a vfio namespace has one"))
                    }
                    (Some(0), Some(_)) => return Err(ferr(g("vfio_nsid"), "must be 1 or more")),
                    _ => {}
                }
                if let Some(bs) = n.block_size {
                    if bs != 512 && bs != 4096 {
                        return Err(ferr(
                            g("block_size"),
                            format!("{bs} is neither 512 nor 4096"),
                        ));
                    }
                }
                check_ids(&g, n)?;
            }
        }
        self.validate_pools()
    }

    fn validate_pools(&self) -> Result<(), FieldError> {
        for (pi, p) in self.pools.iter().enumerate() {
            let f = |x: &str| format!("pool[{pi}].{x}");
            if p.name.is_empty() || p.name.contains('/') || p.name.chars().any(char::is_whitespace)
            {
                return Err(ferr(
                    f("name"),
                    format!("{:?} is not a pool name (no '/', no spaces)", p.name),
                ));
            }
            if self.pools[..pi].iter().any(|o| o.name == p.name) {
                return Err(ferr(f("name"), format!("{:?} is configured twice", p.name)));
            }
            if let Some(r) = &p.raid {
                if p.device.is_some() || p.ram.is_some() || p.vfio.is_some() {
                    return Err(ferr(
                        f("raid"),
                        "give one of device, ram, vfio or raid, not several",
                    ));
                }
                if !self.raids.iter().any(|a| &a.name == r) {
                    return Err(ferr(f("raid"), format!("no [[raid]] is named {r:?}")));
                }
                if let Some(o) = self.pools[..pi].iter().find(|o| o.raid.as_ref() == Some(r)) {
                    return Err(ferr(
                        f("raid"),
                        format!("array {r:?} is pool {:?}'s device already", o.name),
                    ));
                }
                if p.block_size.is_some() || p.direct.is_some() {
                    return Err(ferr(
                        f("block_size"),
                        "a pool on an array has the array's block size; block_size and direct belong to the [[raid]]",
                    ));
                }
            }
            match (&p.device, &p.ram, &p.vfio) {
                (None, None, None) if p.raid.is_some() => {}
                (None, None, None) => {
                    return Err(ferr(
                        f("device"),
                        "a pool needs a device: device = \"PATH\", ram = \"SIZE\", vfio = \"PCI ADDRESS\" or raid = \"ARRAY\"",
                    ))
                }
                (Some(_), None, None) => {}
                (None, Some(r), None) => {
                    parse_size(r).map_err(|e| ferr(f("ram"), e))?;
                }
                (None, None, Some(a)) => {
                    normalize_pci_address(a).ok_or_else(|| {
                        ferr(f("vfio"), format!("{a:?} is not a PCI address such as \"0000:00:04.0\""))
                    })?;
                }
                _ => return Err(ferr(f("device"), "give one of device, ram or vfio, not several")),
            }
            if let Some(bs) = p.block_size {
                if bs != 512 && bs != 4096 {
                    return Err(ferr(
                        f("block_size"),
                        format!("{bs} is neither 512 nor 4096"),
                    ));
                }
            }
            if let Some(cs) = &p.cluster_size {
                let v = parse_size(cs).map_err(|e| ferr(f("cluster_size"), e))?;
                if !v.is_power_of_two() || !(16 << 10..=1 << 30).contains(&v) {
                    return Err(ferr(
                        f("cluster_size"),
                        format!("{cs:?} must be a power of two from 16KiB to 1GiB"),
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
                if v.name.is_empty()
                    || v.name.contains('/')
                    || v.name.chars().any(char::is_whitespace)
                {
                    return Err(ferr(
                        g("name"),
                        format!("{:?} is not a volume name (no '/', no spaces)", v.name),
                    ));
                }
                if p.volumes[..vi].iter().any(|o| o.name == v.name) {
                    return Err(ferr(g("name"), format!("{:?} is configured twice", v.name)));
                }
                let size = parse_size(&v.size).map_err(|e| ferr(g("size"), e))?;
                if size == 0 || size % 512 != 0 {
                    return Err(ferr(
                        g("size"),
                        format!("{:?} is not a positive multiple of the block size", v.size),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn nguid(n: &NamespaceSection) -> Option<[u8; 16]> {
        n.nguid.as_deref().and_then(parse_hex::<16>)
    }

    pub fn uuid(n: &NamespaceSection) -> Option<[u8; 16]> {
        n.uuid.as_deref().and_then(parse_hex::<16>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/examples/target.toml"
        ))
        .expect("the example config exists");
        let c: Config = toml::from_str(&text).expect("example parses");
        c.validate().expect("example is valid");
        assert!(!c.subsystems.is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let e = toml::from_str::<Config>("[target]\nreactorz = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reactorz"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let c: Config = toml::from_str(
            "[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\nram = \"1GiB\"\nblock_size = 1000\n",
        )
        .expect("parses");
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "subsystem[0].namespace[0].block_size");
        let c: Config = toml::from_str("[[listener]]\naddress = \"localhost\"\n").expect("parses");
        assert_eq!(c.validate().unwrap_err().field, "listener[0].address");
        let c: Config =
            toml::from_str("[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\n")
                .expect("parses");
        assert_eq!(
            c.validate().unwrap_err().field,
            "subsystem[0].namespace[0].file"
        );
    }

    #[test]
    fn pools_and_volume_namespaces() {
        let check = |body: &str| {
            let c: Config = toml::from_str(body).expect("parses");
            c.validate().err().map(|e| e.field)
        };
        let pool = "[[pool]]\nname = \"p0\"\nram = \"1GiB\"\ncluster_size = \"1MiB\"\novercommit = 200\n\
                    [[pool.volume]]\nname = \"v1\"\nsize = \"100MiB\"\n[[pool.volume]]\nname = \"v2\"\nsize = \"1GiB\"\nthin = false\n";
        let ns = |v: &str| {
            format!(
                "{pool}[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\n{v}\n"
            )
        };
        assert_eq!(check(&ns("volume = \"p0/v1\"")), None);
        let c: Config = toml::from_str(&ns("volume = \"p0/v1\"")).expect("parses");
        assert_eq!(c.pools[0].volumes.len(), 2);
        assert!(!c.pools[0].volumes[1].thin && c.pools[0].volumes[0].thin);
        assert!(
            c.pools[0].create,
            "a blank device becomes a pool by default"
        );
        let f = |x: &str| Some(format!("subsystem[0].namespace[0].{x}"));
        assert_eq!(check(&ns("volume = \"p1/v1\"")), f("volume"));
        assert_eq!(check(&ns("volume = \"v1\"")), f("volume"));
        assert_eq!(
            check(&ns("volume = \"p0/v1\"\nram = \"1GiB\"")),
            f("volume")
        );
        assert_eq!(
            check(&ns("volume = \"p0/v1\"\nblock_size = 512")),
            f("block_size")
        );
        let p = |extra: &str| check(&format!("[[pool]]\nname = \"p\"\n{extra}\n"));
        assert_eq!(p("device = \"/dev/x\""), None);
        assert_eq!(p(""), Some("pool[0].device".into()));
        assert_eq!(
            p("device = \"/x\"\nram = \"1GiB\""),
            Some("pool[0].device".into())
        );
        assert_eq!(
            p("ram = \"1GiB\"\ncluster_size = \"3MiB\""),
            Some("pool[0].cluster_size".into())
        );
        assert_eq!(
            p("ram = \"1GiB\"\ncluster_size = \"4KiB\""),
            Some("pool[0].cluster_size".into())
        );
        assert_eq!(
            p("ram = \"1GiB\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1000\""),
            Some("pool[0].volume[0].size".into())
        );
        assert_eq!(
            p("ram = \"1GiB\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1MiB\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1MiB\""),
            Some("pool[0].volume[1].name".into())
        );
        assert_eq!(
            check("[[pool]]\nname = \"a/b\"\nram = \"1GiB\"\n"),
            Some("pool[0].name".into())
        );
        let e = toml::from_str::<Config>("[[pool]]\nname = \"p\"\nram = \"1GiB\"\nlayoutt = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("layoutt"), "{e}");
    }

    #[test]
    fn pools_on_arrays() {
        let check = |body: &str| {
            let c: Config = toml::from_str(body).expect("parses");
            c.validate().err().map(|e| e.field)
        };
        let md = "[[raid]]\nname = \"md0\"\nlevel = \"raid1\"\ndevices = [\"/a\", \"/b\"]\n";
        let pool = |extra: &str| {
            format!("{md}[[pool]]\nname = \"p\"\n{extra}\n[[pool.volume]]\nname = \"v\"\nsize = \"1GiB\"\n")
        };
        assert_eq!(check(&pool("raid = \"md0\"")), None);
        let c: Config = toml::from_str(&pool("raid = \"md0\"")).expect("parses");
        assert_eq!(c.pools[0].raid.as_deref(), Some("md0"));
        let f = |x: &str| Some(format!("pool[0].{x}"));
        assert_eq!(check(&pool("raid = \"md1\"")), f("raid"), "no such array");
        assert_eq!(
            check(&pool("raid = \"md0\"\ndevice = \"/x\"")),
            f("raid"),
            "two devices"
        );
        assert_eq!(
            check(&pool("raid = \"md0\"\nblock_size = 4096")),
            f("block_size"),
            "the array's block size"
        );
        // Two pools on one array, or a namespace serving a pool's array, would write
        // over each other.
        assert_eq!(
            check(&format!(
                "{}[[pool]]\nname = \"q\"\nraid = \"md0\"\n",
                pool("raid = \"md0\"")
            )),
            Some("pool[1].raid".into())
        );
        let ns = |v: &str| {
            format!(
                "{}[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\n{v}\n",
                pool("raid = \"md0\"")
            )
        };
        assert_eq!(check(&ns("volume = \"p/v\"")), None);
        assert_eq!(
            check(&ns("raid = \"md0\"")),
            Some("subsystem[0].namespace[0].raid".into())
        );
        assert_eq!(
            check(&ns("raid = \"md0\"\nvolume = \"p/v\"")),
            Some("subsystem[0].namespace[0].volume".into())
        );
    }

    #[test]
    fn vfio_namespaces() {
        let ns = |body: &str| {
            let c: Config = toml::from_str(&format!(
                "[[subsystem]]\nnqn = \"nqn.x\"\n[[subsystem.namespace]]\nnsid = 1\n{body}\n"
            ))
            .expect("parses");
            c.validate().err().map(|e| e.field)
        };
        assert_eq!(ns("vfio = \"0000:00:04.0\"\nvfio_nsid = 2"), None);
        assert_eq!(ns("vfio = \"00:04.0\""), None);
        let f = |x: &str| Some(format!("subsystem[0].namespace[0].{x}"));
        assert_eq!(ns("vfio = \"nvme0\""), f("vfio"));
        assert_eq!(ns("vfio = \"0000:00:04.0\"\nram = \"1GiB\""), f("ram"));
        assert_eq!(ns("vfio = \"0000:00:04.0\"\nfile = \"/x\""), f("file"));
        assert_eq!(ns("ram = \"1GiB\"\nvfio_nsid = 1"), f("vfio_nsid"));
        assert_eq!(ns("ram = \"1GiB\"\nhugepages = true"), None);
        assert_eq!(ns("file = \"/x\"\nhugepages = true"), f("hugepages"));
        assert_eq!(
            ns("vfio = \"0000:00:04.0\"\nhugepages = true"),
            f("hugepages")
        );
        assert_eq!(ns("vfio = \"0000:00:04.0\"\nvfio_nsid = 0"), f("vfio_nsid"));
        assert_eq!(
            ns("vfio = \"0000:00:04.0\"\nblock_size = 512"),
            f("block_size")
        );
    }
}
