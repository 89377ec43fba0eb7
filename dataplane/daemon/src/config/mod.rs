//! The TOML configuration of `lightpool-target` (documented in README.md; an example
//! is deploy/examples/target.toml): the desired state of a target. It is applied
//! through the same operations as the management API (`crate::manage::apply`), and
//! `lightpool config save` writes a running target back in this form
//! (`crate::manage::save`): block devices by name (`[[bdev]]`), subsystems, their
//! namespaces naming their devices, ANA states and listeners.
//!
//! Every error reads `FILE:LINE: KEY: reason`, with KEY a path such as
//! `subsystem[0].namespace[1].ram`, whoever finds it: the TOML parser, the checks
//! here, or the target applying the file.

mod api;
mod locate;
mod pool;
mod size;

pub use api::{ApiSection, ApiTls};
pub use locate::Locator;
pub use pool::{split_volume, volume_device_name, PoolSection};
pub use size::{format_size, parse_size, Size};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use lightpool_nvme_vfio::vfio::normalize_pci_address;
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// The whole file.
#[derive(Debug, Deserialize, Serialize, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub target: TargetSection,
    #[serde(default, rename = "listener", skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerSection>,
    /// Block devices by name, children before the devices stacked on them.
    #[serde(default, rename = "bdev", skip_serializing_if = "Vec::is_empty")]
    pub bdevs: Vec<BdevSection>,
    #[serde(default, rename = "subsystem", skip_serializing_if = "Vec::is_empty")]
    pub subsystems: Vec<SubsystemSection>,
    /// Arrays over several devices (see raid.rs): block devices by name, made before
    /// the `[[bdev]]`s, which namespaces name by `bdev` or `raid`.
    #[serde(default, rename = "raid", skip_serializing_if = "Vec::is_empty")]
    pub raids: Vec<crate::raid::RaidSection>,
    /// Volume stores (see pool.rs), made after the arrays and `[[bdev]]`s (a pool may
    /// be on one); namespaces serve their volumes by `volume`.
    #[serde(default, rename = "pool", skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolSection>,
    /// The management API on TCP with mutual TLS (see api.rs); the Unix socket is
    /// served either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSection>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// CPU cores to run reactors on, one reactor each, pinned. Empty: `reactors`
    /// unpinned reactors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_spin_us: Option<u64>,
    /// A directory on a tmpfs (e.g. /dev/shm/lightpool) for state that must outlive
    /// the process: RAM devices keep their data in files here, and a hot upgrade
    /// leaves its state region here, so `--recover` can restart from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// `IP:PORT` to serve Prometheus metrics on (`GET /metrics`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// NVMe/RDMA receives: `true`, one shared receive queue per reactor and device;
    /// `false` (the default), each queue pair its own. See docs/architecture.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_srq: Option<bool>,
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
            metrics_address: None,
            rdma_srq: None,
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

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// "IP:PORT", e.g. "127.0.0.1:4420" or "[::]:4420". For `rdma`, the address of an
    /// RDMA device's interface (rdma_cm does not route loopback).
    pub address: String,
    /// "tcp" (the default) or "rdma" (a binary built with the daemon's `rdma` feature).
    #[serde(default = "d_transport")]
    pub transport: String,
    /// NVMe/TCP in TLS 1.3 with pre-shared keys: "none" (default), "optional" (the
    /// host's first byte decides) or "required" (a plain ICReq is refused). The keys
    /// are `[[subsystem.tls_key]]`.
    #[serde(default, skip_serializing_if = "is_none")]
    pub secure: String,
    /// Where the TLS connections' records are encrypted once the handshake is done:
    /// "auto" (default: in the kernel, kTLS, where the kernel has the tls module, else
    /// in software) or "off" (in software, OpenSSL on the reactors, always).
    #[serde(default, skip_serializing_if = "is_auto")]
    pub ktls: String,
    /// How NVMe/TCP reaches the network: "kernel" (default: the kernel's sockets),
    /// "af_xdp" (an XDP program steers the listener's port on `interface` to AF_XDP
    /// sockets served by a userspace TCP stack on the reactors; a binary built with
    /// the daemon's `af_xdp` feature, run as root) or "dpdk" (the DPDK port
    /// `interface` served by the same stack, its reactors busy-polling; the daemon's
    /// `dpdk` feature, root).
    #[serde(default, skip_serializing_if = "is_kernel")]
    pub engine: String,
    /// The network interface an `af_xdp` listener takes over, e.g. "eth0"; for a
    /// `dpdk` listener the EAL device: a `--vdev` ("net_af_packet0,iface=veth0") or a
    /// PCI address ("0000:3b:00.0").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    /// Where an `af_xdp` listener's XDP program runs: "native" (default, in the
    /// driver) or "generic" (any interface, slower).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub xdp_mode: String,
}

fn is_kernel(s: &str) -> bool {
    s.is_empty() || s == "kernel"
}

fn is_auto(s: &str) -> bool {
    s.is_empty() || s == "auto"
}

fn is_none(s: &str) -> bool {
    s.is_empty() || s == "none"
}

fn d_transport() -> String {
    "tcp".to_string()
}

/// A block device, by name: exactly one of `ram`, `file`, `vfio`, `passthru` or
/// `fault`.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BdevSection {
    pub name: String,
    /// A RAM device of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<Size>,
    /// A file or block device, through io_uring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An NVMe SSD bound to vfio-pci (PCI address), driven from userspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio: Option<String>,
    /// A pass-through that counts the I/O of the device named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passthru: Option<String>,
    /// A device injecting faults into the device named here (for tests: see
    /// `faults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// A fault device's rules at start, e.g. `["write:eio,count=1"]` (the text form
    /// of `lightpool_bdev_fault::rule`); changed at run time through the API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_nsid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// A RAM device in 2 MiB huge pages: left out, whenever enough are free (else
    /// ordinary memory, said at start); true, always (refused when they are not free);
    /// false, never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemSection {
    pub nqn: String,
    #[serde(default = "d_serial")]
    pub serial: String,
    #[serde(default = "d_model")]
    pub model: String,
    #[serde(default = "yes")]
    pub allow_any_host: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default = "d_min_cntlid")]
    pub min_cntlid: u16,
    #[serde(default = "d_max_cntlid")]
    pub max_cntlid: u16,
    #[serde(default, rename = "namespace", skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceSection>,
    /// ANA groups whose state is not optimized.
    #[serde(default, rename = "ana_group", skip_serializing_if = "Vec::is_empty")]
    pub ana_groups: Vec<AnaGroupSection>,
    /// DH-HMAC-CHAP keys: a host listed here must authenticate in-band.
    #[serde(default, rename = "host_key", skip_serializing_if = "Vec::is_empty")]
    pub host_keys: Vec<HostKeySection>,
    /// NVMe/TCP TLS pre-shared keys: the host of each may connect in TLS (on a listener
    /// with `secure`) with the PSK derived from it for this subsystem.
    #[serde(default, rename = "tls_key", skip_serializing_if = "Vec::is_empty")]
    pub tls_keys: Vec<TlsKeySection>,
}

/// One host's configured TLS PSK for a subsystem (`[[subsystem.tls_key]]`), in the
/// interchange format `nvme gen-tls-key` prints (`NVMeTLSkey-1:01:...:`). It never
/// appears in `Debug` output or logs.
#[derive(Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsKeySection {
    pub host: String,
    pub key: String,
}

impl std::fmt::Debug for TlsKeySection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsKeySection")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// One host's DH-HMAC-CHAP keys (`[[subsystem.host_key]]`). Secrets are in the DHHC-1
/// form `nvme gen-dhchap-key` prints; they never appear in `Debug` output or logs.
#[derive(Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostKeySection {
    pub host: String,
    /// The host's secret (the host proves it holds it).
    pub key: String,
    /// The controller's secret, for bidirectional authentication.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ctrl_key: String,
    /// sha256 (default), sha384 or sha512.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// null (default), ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144 or ffdhe8192.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dhgroup: String,
}

impl std::fmt::Debug for HostKeySection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeySection")
            .field("host", &self.host)
            .field("bidirectional", &!self.ctrl_key.is_empty())
            .field("hash", &self.hash)
            .field("dhgroup", &self.dhgroup)
            .finish_non_exhaustive()
    }
}

impl HostKeySection {
    pub fn text(&self) -> lightpool_nvmf::auth::HostKeysText {
        lightpool_nvmf::auth::HostKeysText {
            key: self.key.clone(),
            ctrl_key: self.ctrl_key.clone(),
            hash: self.hash.clone(),
            dhgroup: self.dhgroup.clone(),
        }
    }

    pub fn from_keys(host: &str, k: &lightpool_nvmf::auth::HostKeys) -> HostKeySection {
        let t = k.to_text();
        HostKeySection {
            host: host.to_string(),
            key: t.key,
            ctrl_key: t.ctrl_key,
            hash: t.hash,
            dhgroup: t.dhgroup,
        }
    }
}

/// The field of a `[[subsystem.host_key]]` entry a key error points at.
pub fn keys_error_field(e: &lightpool_nvmf::auth::KeysError) -> &'static str {
    use lightpool_nvmf::auth::KeysError;
    match e {
        KeysError::Key(_) => "key",
        KeysError::CtrlKey(_) => "ctrl_key",
        KeysError::Hash(_) => "hash",
        KeysError::DhGroup(_) => "dhgroup",
    }
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

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnaGroupSection {
    pub group: u32,
    /// optimized, non-optimized, inaccessible, persistent-loss or change.
    pub state: String,
}

/// A namespace: the device named by `bdev`, or one described inline (`ram`, `file` or
/// `vfio`, as a `[[bdev]]` would; `passthru = true` stacks a counting pass-through on
/// it).
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSection {
    pub nsid: u32,
    /// The `[[bdev]]` it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdev: Option<String>,
    /// Bytes of the device it presents; default all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfio_nsid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// A RAM device in 2 MiB huge pages: left out, whenever enough are free (else
    /// ordinary memory, said at start); true, always (refused when they are not free);
    /// false, never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<bool>,
    /// 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nguid: Option<String>,
    /// 8-4-4-4-12 hex UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ana_group: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub passthru: bool,
    /// The `[[raid]]` array it serves (the same as `bdev` naming it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<String>,
    /// A volume of a `[[pool]]`, as "POOL/VOLUME".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

impl NamespaceSection {
    /// The named device it serves: `bdev` or `raid`.
    pub fn device_name(&self) -> Option<&String> {
        self.bdev.as_ref().or(self.raid.as_ref())
    }

    /// The inline device, as a `[[bdev]]` (without a name).
    pub fn inline_bdev(&self) -> BdevSection {
        BdevSection {
            name: String::new(),
            ram: self.ram,
            file: self.file.clone(),
            vfio: self.vfio.clone(),
            passthru: None,
            fault: None,
            faults: Vec::new(),
            vfio_nsid: self.vfio_nsid,
            block_size: self.block_size,
            hugepages: self.hugepages,
            read_only: self.read_only,
            direct: self.direct,
        }
    }
}

/// The ANA state names operators use, and their codes.
pub fn ana_state_code(name: &str) -> Option<u8> {
    use lightpool_spec::log::ana_state;
    Some(match name {
        "optimized" => ana_state::OPTIMIZED,
        "non-optimized" => ana_state::NON_OPTIMIZED,
        "inaccessible" => ana_state::INACCESSIBLE,
        "persistent-loss" => ana_state::PERSISTENT_LOSS,
        "change" => ana_state::CHANGE,
        _ => return None,
    })
}

/// The name operators use for an ANA state code.
pub fn ana_state_name(code: u8) -> Option<&'static str> {
    use lightpool_spec::log::ana_state;
    Some(match code {
        ana_state::OPTIMIZED => "optimized",
        ana_state::NON_OPTIMIZED => "non-optimized",
        ana_state::INACCESSIBLE => "inaccessible",
        ana_state::PERSISTENT_LOSS => "persistent-loss",
        ana_state::CHANGE => "change",
        _ => return None,
    })
}

/// A configuration error: the key at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct FieldError {
    pub key: String,
    pub reason: String,
}

pub fn ferr(key: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// `FILE:LINE: KEY: reason`, the one form of every configuration error.
pub fn at_file(file: &Path, loc: &Locator, e: &FieldError) -> String {
    match loc.line_of(&e.key) {
        Some(line) => format!("{}:{line}: {}: {}", file.display(), e.key, e.reason),
        None => format!("{}: {}: {}", file.display(), e.key, e.reason),
    }
}

/// Read and check a configuration file; errors in the one form.
pub fn load(path: &Path) -> Result<(Config, Locator), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let loc = Locator::new(&text);
    let cfg: Config = toml::from_str(&text).map_err(|e| {
        let (line, key) = e.span().map_or((0, None), |s| loc.at(s.start));
        let key = key.map_or(String::new(), |k| format!("{k}: "));
        if line > 0 {
            format!("{}:{line}: {key}{}", path.display(), e.message().trim_end())
        } else {
            format!("{}: {key}{}", path.display(), e.message().trim_end())
        }
    })?;
    cfg.validate().map_err(|e| at_file(path, &loc, &e))?;
    Ok((cfg, loc))
}

pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    if digits.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(digits.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A device name: 1 to 64 letters, digits, '.', '_', '-' or ':'.
pub fn check_device_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a device name: use 1 to 64 letters, digits, '.', '_', '-' or ':'"
        ))
    }
}

/// Checks of one device description (`key` the table it is in).
fn check_device(key: &str, b: &BdevSection, stacked: bool) -> Result<(), FieldError> {
    let g = |x: &str| format!("{key}.{x}");
    let given = [
        b.ram.is_some(),
        b.file.is_some(),
        b.vfio.is_some(),
        b.passthru.is_some(),
        b.fault.is_some(),
    ];
    match given.iter().filter(|x| **x).count() {
        0 if stacked => {
            return Err(ferr(
                g("bdev"),
                "a namespace needs a device: bdev = \"NAME\" of a [[bdev]], or ram = \"SIZE\", file = \"PATH\" or vfio = \"PCI ADDRESS\"",
            ))
        }
        0 => {
            return Err(ferr(
                g("ram"),
                "a [[bdev]] needs one of ram = \"SIZE\", file = \"PATH\", vfio = \"PCI ADDRESS\", passthru = \"DEVICE\" or fault = \"DEVICE\"",
            ))
        }
        1 => {}
        _ => {
            let first = ["ram", "file", "vfio", "passthru", "fault"]
                .iter()
                .zip(given)
                .filter(|(_, g)| *g)
                .nth(1)
                .map_or("ram", |(n, _)| *n);
            return Err(ferr(
                g(first),
                "give one of ram, file, vfio, passthru or fault, not several",
            ));
        }
    }
    if let Some(bs) = b.block_size {
        if bs != 512 && bs != 4096 {
            return Err(ferr(
                g("block_size"),
                format!("{bs} is neither 512 nor 4096"),
            ));
        }
    }
    if let Some(Size(r)) = b.ram {
        let bs = u64::from(b.block_size.unwrap_or(512));
        if r == 0 || r % bs != 0 {
            return Err(ferr(
                g("ram"),
                format!(
                    "{} is not a whole number of {bs}-byte blocks",
                    format_size(r)
                ),
            ));
        }
    }
    if let Some(a) = &b.vfio {
        normalize_pci_address(a).ok_or_else(|| {
            ferr(
                g("vfio"),
                format!("{a:?} is not a PCI address such as \"0000:00:04.0\""),
            )
        })?;
        if b.block_size.is_some() {
            return Err(ferr(
                g("block_size"),
                "a vfio device has the block size the SSD is formatted with",
            ));
        }
    }
    if b.hugepages.is_some() && b.ram.is_none() {
        return Err(ferr(
            g("hugepages"),
            "only a ram device can be in huge pages",
        ));
    }
    match (b.vfio_nsid, &b.vfio) {
        (Some(_), None) => return Err(ferr(g("vfio_nsid"), "only a vfio device has one")),
        (Some(0), Some(_)) => return Err(ferr(g("vfio_nsid"), "must be 1 or more")),
        _ => {}
    }
    Ok(())
}

/// Checks what serde cannot: values, ranges, names and combinations.
impl Config {
    pub fn validate(&self) -> Result<(), FieldError> {
        let t = &self.target;
        if t.cores.is_empty() && (t.reactors == 0 || t.reactors > 1024) {
            return Err(ferr("target.reactors", "must be between 1 and 1024"));
        }
        // The cores this process may run on (its CPU affinity: a container's cpuset, a
        // taskset), not a count: under a cpuset of 4-7, core 5 is fine and core 1 is not.
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .map(|v| v.into_iter().map(|c| c.id).collect())
            .unwrap_or_default();
        for (i, c) in t.cores.iter().enumerate() {
            if !allowed.is_empty() && !allowed.contains(c) {
                let list: Vec<String> = allowed.iter().map(usize::to_string).collect();
                return Err(ferr(
                    format!("target.cores[{i}]"),
                    format!(
                        "core {c} is not one this process may run on (its CPU affinity allows {}): list cores from those, or give `reactors = N` instead",
                        list.join(", ")
                    ),
                ));
            }
            if t.cores[..i].contains(c) {
                return Err(ferr(
                    format!("target.cores[{i}]"),
                    format!("core {c} is listed twice"),
                ));
            }
        }
        if let Some(a) = &self.api {
            a.check()?;
        }
        if let Some(a) = &t.metrics_address {
            a.parse::<SocketAddr>().map_err(|_| {
                ferr(
                    "target.metrics_address",
                    format!("{a:?} is not IP:PORT (e.g. \"127.0.0.1:9464\")"),
                )
            })?;
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
        for (bi, b) in self.bdevs.iter().enumerate() {
            let key = format!("bdev[{bi}]");
            check_device_name(&b.name).map_err(|e| ferr(format!("{key}.name"), e))?;
            if self.bdevs[..bi].iter().any(|o| o.name == b.name)
                || self.raids.iter().any(|r| r.name == b.name)
            {
                return Err(ferr(
                    format!("{key}.name"),
                    format!("{:?} is configured twice", b.name),
                ));
            }
            check_device(&key, b, false)?;
            for (field, base) in [("passthru", &b.passthru), ("fault", &b.fault)] {
                let Some(base) = base else { continue };
                if !self.bdevs[..bi].iter().any(|o| &o.name == base)
                    && !self.raids.iter().any(|r| &r.name == base)
                {
                    return Err(ferr(
                        format!("{key}.{field}"),
                        format!("no [[bdev]] named {base:?} comes before it"),
                    ));
                }
            }
            if !b.faults.is_empty() && b.fault.is_none() {
                return Err(ferr(
                    format!("{key}.faults"),
                    "fault rules need a fault device: add fault = \"DEVICE\" (the device to inject into)",
                ));
            }
            for (ri, r) in b.faults.iter().enumerate() {
                r.parse::<lightpool_bdev_fault::FaultRule>()
                    .map_err(|e| ferr(format!("{key}.faults[{ri}]"), e.to_string()))?;
            }
        }
        for (si, s) in self.subsystems.iter().enumerate() {
            let f = |x: &str| format!("subsystem[{si}].{x}");
            lightpool_nvmf::nqn::check_nqn(&s.nqn).map_err(|e| ferr(f("nqn"), e))?;
            if self.subsystems[..si].iter().any(|o| o.nqn == s.nqn) {
                return Err(ferr(f("nqn"), format!("{:?} is configured twice", s.nqn)));
            }
            for (hi, h) in s.hosts.iter().enumerate() {
                lightpool_nvmf::nqn::check_nqn(h)
                    .map_err(|e| ferr(format!("subsystem[{si}].hosts[{hi}]"), e))?;
            }
            for (ki, k) in s.host_keys.iter().enumerate() {
                let g = |x: &str| format!("subsystem[{si}].host_key[{ki}].{x}");
                lightpool_nvmf::nqn::check_nqn(&k.host).map_err(|e| ferr(g("host"), e))?;
                if s.host_keys[..ki].iter().any(|o| o.host == k.host) {
                    return Err(ferr(g("host"), format!("{:?} has keys twice", k.host)));
                }
                k.text()
                    .parse()
                    .map_err(|e| ferr(g(keys_error_field(&e)), e.to_string()))?;
            }
            for (ki, k) in s.tls_keys.iter().enumerate() {
                let g = |x: &str| format!("subsystem[{si}].tls_key[{ki}].{x}");
                lightpool_nvmf::nqn::check_nqn(&k.host).map_err(|e| ferr(g("host"), e))?;
                if s.tls_keys[..ki].iter().any(|o| o.host == k.host) {
                    return Err(ferr(g("host"), format!("{:?} has a TLS key twice", k.host)));
                }
                lightpool_nvmf::tls::ConfiguredPsk::parse(&k.key)
                    .map_err(|e| ferr(g("key"), e.to_string()))?;
            }
            for (ai, a) in s.ana_groups.iter().enumerate() {
                let g = |x: &str| format!("subsystem[{si}].ana_group[{ai}].{x}");
                if a.group == 0 || a.group > lightpool_nvmf::subsystem::MAX_NAMESPACES {
                    return Err(ferr(g("group"), "must lie within 1..=32"));
                }
                ana_state_code(&a.state).ok_or_else(|| {
                    ferr(
                        g("state"),
                        format!("{:?} is not optimized, non-optimized, inaccessible, persistent-loss or change", a.state),
                    )
                })?;
            }
            for (ni, n) in s.namespaces.iter().enumerate() {
                let key = format!("subsystem[{si}].namespace[{ni}]");
                let g = |x: &str| format!("{key}.{x}");
                if s.namespaces[..ni].iter().any(|o| o.nsid == n.nsid) {
                    return Err(ferr(
                        g("nsid"),
                        format!("nsid {} is configured twice", n.nsid),
                    ));
                }
                if let Some(v) = &n.volume {
                    pool::check_namespace(self, &key, n, v)?;
                } else {
                    if let Some(r) = &n.raid {
                        if n.bdev.is_some() {
                            return Err(ferr(g("raid"), "give bdev or raid, not both"));
                        }
                        if n.block_size.is_some() {
                            return Err(ferr(
                                g("block_size"),
                                "an array has its members' block size",
                            ));
                        }
                        if n.inline_bdev() != (BdevSection::default()) || n.passthru {
                            return Err(ferr(
                                g("raid"),
                                "give one of ram, file, vfio or raid, not several",
                            ));
                        }
                        if !self.raids.iter().any(|a| &a.name == r) {
                            return Err(ferr(g("raid"), format!("no [[raid]] is named {r:?}")));
                        }
                    }
                    match &n.device_name() {
                        Some(_) if n.raid.is_some() => {}
                        Some(name) => {
                            let inline = n.inline_bdev();
                            if inline != (BdevSection::default()) || n.passthru {
                                return Err(ferr(
                                g("bdev"),
                                "a namespace names a [[bdev]] or describes its device, not both",
                            ));
                            }
                            if !self.bdevs.iter().any(|b| &b.name == *name)
                                && !self.raids.iter().any(|a| &a.name == *name)
                            {
                                return Err(ferr(
                                    g("bdev"),
                                    format!("no [[bdev]] or [[raid]] named {name:?}"),
                                ));
                            }
                        }
                        None => check_device(&key, &n.inline_bdev(), true)?,
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
        pool::validate(self)
    }

    pub fn nguid(n: &NamespaceSection) -> Option<[u8; 16]> {
        n.nguid.as_deref().and_then(parse_hex::<16>)
    }

    pub fn uuid(n: &NamespaceSection) -> Option<[u8; 16]> {
        n.uuid.as_deref().and_then(parse_hex::<16>)
    }
}

#[cfg(test)]
mod pool_tests;
#[cfg(test)]
mod tests;
