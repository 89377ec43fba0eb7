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
    /// RAM namespace in 2 MiB huge pages: absent, whenever enough are free (else
    /// ordinary memory, said at start); true, always (an error when they are not free);
    /// false, never.
    pub hugepages: Option<bool>,
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
        for (si, s) in self.subsystems.iter().enumerate() {
            let f = |x: &str| format!("subsystem[{si}].{x}");
            if self.subsystems[..si].iter().any(|o| o.nqn == s.nqn) {
                return Err(ferr(f("nqn"), format!("{:?} is configured twice", s.nqn)));
            }
            for (ni, n) in s.namespaces.iter().enumerate() {
                let g = |x: &str| format!("subsystem[{si}].namespace[{ni}].{x}");
                match (&n.ram, &n.file, &n.vfio) {
                    (None, None, None) => {
                        return Err(ferr(
                            g("file"),
                            "a namespace needs a backend: ram = \"SIZE\", file = \"PATH\" or vfio = \"PCI ADDRESS\"",
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
                if n.hugepages.is_some() && n.ram.is_none() {
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
                if let Some(x) = &n.nguid {
                    parse_hex::<16>(x).ok_or_else(|| ferr(g("nguid"), "must be 32 hex digits"))?;
                }
                if let Some(x) = &n.uuid {
                    parse_hex::<16>(x).ok_or_else(|| {
                        ferr(g("uuid"), "must be a UUID (32 hex digits, dashes allowed)")
                    })?;
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
