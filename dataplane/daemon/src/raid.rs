//! Arrays (`[[raid]]` in the configuration): their configuration, opening their
//! members and assembling them at start, the process's registry of arrays (which the
//! hot-upgrade adopters fill too), and the control socket's RAID command.
//!
//! ```toml
//! [[raid]]
//! name = "md0"
//! level = "raid1"                      # concat, raid0, raid1
//! devices = ["/dev/nvme1n1", "/var/lib/lightpool/b.img"]   # files or block devices
//! # or, for members of other kinds, tables with a namespace's keys:
//! # [[raid.member]]
//! # ram = "1GiB"
//! # [[raid.member]]
//! # vfio = "0000:03:00.0"
//!
//! [[subsystem.namespace]]
//! nsid = 1
//! raid = "md0"
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lightpool_bdev::Bdev;
use lightpool_bdev_nvme_vfio::{NvmeVfioBdev, NvmeVfioOptions};
use lightpool_bdev_ram::MallocBdev;
use lightpool_bdev_uring::{UringBdev, UringOptions};
use lightpool_nvme_vfio::vfio::normalize_pci_address;
use lightpool_raid::{ArrayOptions, Level, RaidBdev, Registry};
use serde::{Deserialize, Serialize};

use crate::config::{ferr, parse_size, FieldError};

/// One `[[raid]]` section (also how the device registry remembers the array).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaidSection {
    /// The array's name (at most 32 bytes): what namespaces name in `raid = ".."`.
    pub name: String,
    /// "concat", "raid0" or "raid1".
    pub level: String,
    /// Files or block devices, served through io_uring.
    #[serde(default)]
    pub devices: Vec<PathBuf>,
    /// Members of any kind, with a namespace's keys (after `devices`).
    #[serde(default, rename = "member")]
    pub members: Vec<MemberSection>,
    /// RAID0: bytes per strip (default "64KiB").
    pub strip_size: Option<String>,
    /// RAID1: bytes one write-intent bitmap bit covers (default 1 MiB, more past 1 TiB).
    pub region_size: Option<String>,
    /// RAID1: bytes per second a resync or rebuild copies at most ("0": no limit;
    /// default "200MiB").
    pub rebuild_rate: Option<String>,
    /// RAID1: milliseconds a region stays idle before its bitmap bit is cleared
    /// (default 5000).
    pub bitmap_clear_delay_ms: Option<u64>,
    /// RAID1: start without members that cannot be opened, or that the array last saw
    /// in sync (they may hold newer data).
    #[serde(default)]
    pub degraded: bool,
    /// RAID1 creation: the members' data areas are identical already (new files); not
    /// zeroed.
    #[serde(default)]
    pub assume_clean: bool,
    /// Logical block size of file and RAM members: 512 or 4096.
    pub block_size: Option<u32>,
    /// O_DIRECT for file members (default true).
    pub direct: Option<bool>,
}

/// A member given as a table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub ram: Option<String>,
    pub file: Option<PathBuf>,
    pub vfio: Option<String>,
    pub vfio_nsid: Option<u32>,
    #[serde(default)]
    pub hugepages: bool,
}

/// Checks the `[[raid]]` sections (names, levels, members, sizes).
pub fn validate(raids: &[RaidSection]) -> Result<(), FieldError> {
    for (i, r) in raids.iter().enumerate() {
        let f = |x: &str| format!("raid[{i}].{x}");
        if r.name.is_empty() || r.name.len() > lightpool_raid::format::MAX_NAME {
            return Err(ferr(f("name"), "must be 1 to 32 bytes"));
        }
        if raids[..i].iter().any(|o| o.name == r.name) {
            return Err(ferr(f("name"), format!("{:?} is configured twice", r.name)));
        }
        let level = Level::parse(&r.level).ok_or_else(|| {
            ferr(
                f("level"),
                format!("{:?} is not concat, raid0 or raid1", r.level),
            )
        })?;
        let n = r.devices.len() + r.members.len();
        let min = if level == Level::Concat { 1 } else { 2 };
        if n < min {
            return Err(ferr(
                f("devices"),
                format!("a {level} array needs at least {min} members, {n} given"),
            ));
        }
        for (k, m) in r.members.iter().enumerate() {
            let g = |x: &str| format!("raid[{i}].member[{k}].{x}");
            match (&m.ram, &m.file, &m.vfio) {
                (Some(s), None, None) => {
                    parse_size(s).map_err(|e| ferr(g("ram"), e))?;
                }
                (None, Some(_), None) => {}
                (None, None, Some(a)) => {
                    normalize_pci_address(a).ok_or_else(|| {
                        ferr(
                            g("vfio"),
                            format!("{a:?} is not a PCI address such as \"0000:00:04.0\""),
                        )
                    })?;
                }
                _ => return Err(ferr(
                    g("file"),
                    "a member is one of ram = \"SIZE\", file = \"PATH\" or vfio = \"PCI ADDRESS\"",
                )),
            }
            if m.hugepages && m.ram.is_none() {
                return Err(ferr(
                    g("hugepages"),
                    "only a ram member can be in huge pages",
                ));
            }
            if m.vfio_nsid.is_some() && m.vfio.is_none() {
                return Err(ferr(g("vfio_nsid"), "only a vfio member has one"));
            }
        }
        for (key, v) in [
            ("strip_size", &r.strip_size),
            ("region_size", &r.region_size),
            ("rebuild_rate", &r.rebuild_rate),
        ] {
            if let Some(v) = v {
                parse_size(v).map_err(|e| ferr(f(key), e))?;
            }
        }
        if level != Level::Raid0 && r.strip_size.is_some() {
            return Err(ferr(f("strip_size"), "only a raid0 array has strips"));
        }
        if level != Level::Raid1
            && (r.region_size.is_some() || r.rebuild_rate.is_some() || r.degraded || r.assume_clean)
        {
            return Err(ferr(
                f("level"),
                "region_size, rebuild_rate, degraded and assume_clean are for raid1 arrays",
            ));
        }
        if let Some(bs) = r.block_size {
            if bs != 512 && bs != 4096 {
                return Err(ferr(
                    f("block_size"),
                    format!("{bs} is neither 512 nor 4096"),
                ));
            }
        }
    }
    Ok(())
}

/// The arrays of this process, by name: filled at start and by the adopters of a hot
/// upgrade, read by the control socket (and the management API).
pub fn registry() -> Arc<Registry> {
    static R: OnceLock<Arc<Registry>> = OnceLock::new();
    R.get_or_init(|| Arc::new(Registry::new())).clone()
}

/// The tmpfs file of a RAM member in the state directory.
fn ram_member_file(dir: &Path, array: &str, i: usize) -> PathBuf {
    let safe: String = array
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("raid-{safe}-{i}"))
}

fn open_member(
    r: &RaidSection,
    i: usize,
    m: &MemberSection,
    state_dir: Option<&Path>,
) -> Result<Arc<dyn Bdev>> {
    if let Some(size) = &m.ram {
        let bytes = parse_size(size).map_err(anyhow::Error::msg)?;
        let name = format!("{}-ram{i}", r.name);
        let bs = r.block_size.unwrap_or(512);
        let d = match state_dir {
            Some(_) if m.hugepages => {
                bail!("huge pages cannot be used with a state directory (its RAM files live on tmpfs)")
            }
            Some(dir) => {
                MallocBdev::open_shared(&name, &ram_member_file(dir, &r.name, i), bytes, bs)
            }
            None if m.hugepages => MallocBdev::new_hugepages(&name, bytes, bs),
            None => MallocBdev::new(&name, bytes, bs),
        }?;
        return Ok(d);
    }
    if let Some(addr) = &m.vfio {
        let opts = NvmeVfioOptions {
            nsid: m.vfio_nsid.unwrap_or(1),
            ..NvmeVfioOptions::default()
        };
        return Ok(NvmeVfioBdev::open(addr, opts)?);
    }
    let path = m
        .file
        .as_ref()
        .expect("validate() guarantees ram, file or vfio");
    open_file(r, path)
}

fn open_file(r: &RaidSection, path: &Path) -> Result<Arc<dyn Bdev>> {
    let opts = UringOptions {
        block_size: r.block_size,
        direct: r.direct.unwrap_or(true),
        ..UringOptions::default()
    };
    Ok(UringBdev::open(path, opts)?)
}

fn options(r: &RaidSection) -> ArrayOptions {
    let level = Level::parse(&r.level).expect("validated");
    let mut o = ArrayOptions::new(&r.name, level);
    let size = |v: &Option<String>| v.as_deref().and_then(|v| parse_size(v).ok());
    if let Some(s) = size(&r.strip_size) {
        o.strip_bytes = s;
    }
    o.region_bytes = size(&r.region_size);
    if let Some(s) = size(&r.rebuild_rate) {
        o.rebuild_rate = s;
    }
    if let Some(ms) = r.bitmap_clear_delay_ms {
        o.bitmap_clear_delay = Duration::from_millis(ms);
    }
    o.allow_degraded = r.degraded;
    o.assume_clean = r.assume_clean;
    o
}

/// Opens an array's members and creates or assembles the array; it goes into the
/// arrays' registry. An array that cannot start is refused with a message naming the
/// member and what is wrong.
pub fn open_array(r: &RaidSection, state_dir: Option<&Path>) -> Result<Arc<dyn Bdev>> {
    let mut members: Vec<Arc<dyn Bdev>> = Vec::new();
    let files = r
        .devices
        .iter()
        .map(|p| (p.display().to_string(), open_file(r, p)));
    let others = r.members.iter().enumerate().map(|(k, m)| {
        (
            format!("member[{k}]"),
            open_member(r, r.devices.len() + k, m, state_dir),
        )
    });
    for (what, d) in files.chain(others) {
        match d {
            Ok(d) => members.push(d),
            Err(e) if r.degraded => {
                tracing::warn!(array = %r.name, member = %what, error = %format!("{e:#}"), "member cannot be opened; starting degraded without it");
            }
            Err(e) => {
                return Err(e.context(format!(
                    "array {}: member {what} (set degraded = true to start without it)",
                    r.name
                )))
            }
        }
    }
    let a = RaidBdev::open(members, &options(r))?;
    let st = a.status();
    println!("lightpool-target: array {}", st.summary());
    registry().insert(&a)?;
    Ok(a as Arc<dyn Bdev>)
}

/// The control socket's `RAID ...` command; the answer's first line is `OK <lines>`
/// or `ERR <reason>`.
pub fn control(args: &str) -> String {
    match control_lines(args) {
        Ok(lines) => {
            let mut out = format!("OK {}\n", lines.len());
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
            out
        }
        Err(e) => format!("ERR {}\n", format!("{e:#}").replace('\n', " ")),
    }
}

fn find(name: &str) -> Result<Arc<RaidBdev>> {
    registry()
        .get(name)
        .with_context(|| format!("no array named {name:?}"))
}

fn control_lines(args: &str) -> Result<Vec<String>> {
    let w: Vec<&str> = args.split_whitespace().collect();
    Ok(match w.as_slice() {
        ["LIST"] | [] => registry().list().iter().map(|a| a.status().summary()).collect(),
        ["STATUS", name] => {
            let st = find(name)?.status();
            let mut v = vec![st.summary()];
            for m in &st.members {
                let mut l = format!(
                    "  slot {} {} {} member {}",
                    m.slot,
                    m.device.as_deref().unwrap_or("-"),
                    m.state.name(),
                    m.member_uuid
                );
                if let Some(r) = &m.recovery {
                    l.push_str(&format!(
                        " {} copied_bytes={} of {} cursor={}/{}",
                        r.kind, r.copied_bytes, r.total_bytes, r.cursor_region, r.regions
                    ));
                }
                v.push(l);
            }
            v
        }
        ["FAIL", name, member] => vec![find(name)?.fail_member(member)?],
        ["REMOVE", name, member] => vec![find(name)?.remove_member(member)?],
        ["READD", name, member] => vec![find(name)?.readd_member(member)?],
        ["ADD", name, path] => {
            let a = find(name)?;
            let opts = UringOptions {
                block_size: Some(a.info().block_size),
                ..UringOptions::default()
            };
            let dev: Arc<dyn Bdev> = UringBdev::open(Path::new(path), opts)?;
            vec![a.add_member(dev)?]
        }
        ["RATE", name, rate] => {
            let bytes = parse_size(rate).map_err(anyhow::Error::msg)?;
            find(name)?.set_rebuild_rate(bytes)?;
            vec![format!("{name}: rebuild rate {bytes} bytes/s")]
        }
        _ => bail!(
            "usage: RAID LIST | STATUS NAME | FAIL NAME MEMBER | REMOVE NAME MEMBER | READD NAME MEMBER | ADD NAME PATH | RATE NAME BYTES"
        ),
    })
}

/// `lightpool-target raid ...`: sends the command to the running target and prints
/// its answer.
pub fn command(path: &str, args: &[String]) -> Result<()> {
    let (verb, rest) = match args.split_first() {
        None => ("LIST".to_string(), &[][..]),
        Some((v, rest)) => (v.to_ascii_uppercase().replace('-', ""), rest),
    };
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("no lightpool-target answers on control socket {path}"))?;
    // A re-add or remove waits for the array's superblocks.
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let line = std::iter::once(verb.as_str())
        .chain(rest.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    s.write_all(format!("RAID {line}\n").as_bytes())?;
    let mut r = BufReader::new(&s);
    let mut head = String::new();
    r.read_line(&mut head)?;
    let head = head.trim_end();
    if let Some(why) = head.strip_prefix("ERR ") {
        bail!("{why}");
    }
    let n: usize = head
        .strip_prefix("OK ")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected answer {head:?}"))?;
    for _ in 0..n {
        let mut l = String::new();
        r.read_line(&mut l)?;
        print!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeMap;

    fn check(body: &str) -> Option<String> {
        let c: Config = toml::from_str(body).expect("parses");
        c.validate().err().map(|e| e.key)
    }

    #[test]
    fn raid_sections_are_checked_field_by_field() {
        let ok = "[[raid]]\nname = \"md0\"\nlevel = \"raid1\"\ndevices = [\"/a\", \"/b\"]\n\
                  [[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:x\"\n[[subsystem.namespace]]\nnsid = 1\nraid = \"md0\"\n";
        assert_eq!(check(ok), None);
        assert_eq!(
            check("[[raid]]\nname = \"md0\"\nlevel = \"raid5\"\ndevices = [\"/a\", \"/b\"]\n"),
            Some("raid[0].level".into())
        );
        assert_eq!(
            check("[[raid]]\nname = \"md0\"\nlevel = \"raid1\"\ndevices = [\"/a\"]\n"),
            Some("raid[0].devices".into())
        );
        assert_eq!(
            check("[[raid]]\nname = \"md0\"\nlevel = \"raid1\"\ndevices = [\"/a\"]\n[[raid.member]]\nram = \"1 parsec\"\n"),
            Some("raid[0].member[0].ram".into())
        );
        assert_eq!(
            check("[[raid]]\nname = \"md0\"\nlevel = \"raid0\"\ndevices = [\"/a\", \"/b\"]\nregion_size = \"1MiB\"\n"),
            Some("raid[0].level".into())
        );
        assert_eq!(
            check("[[raid]]\nname = \"md0\"\nlevel = \"raid1\"\ndevices = [\"/a\"]\n[[raid.member]]\nram = \"1GiB\"\nfile = \"/b\"\n"),
            Some("raid[0].member[0].file".into())
        );
        // A namespace naming an array that is not configured.
        assert_eq!(
            check("[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:x\"\n[[subsystem.namespace]]\nnsid = 1\nraid = \"md9\"\n"),
            Some("subsystem[0].namespace[0].raid".into())
        );
        assert_eq!(
            check("[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:x\"\n[[subsystem.namespace]]\nnsid = 1\nraid = \"md0\"\nram = \"1GiB\"\n"),
            Some("subsystem[0].namespace[0].raid".into())
        );
    }

    /// RAM members: created at the first start, served, and found in the registry.
    #[test]
    fn arrays_open_from_their_sections() {
        let c: Config = toml::from_str(
            "[[raid]]\nname = \"cfg-r1\"\nlevel = \"raid1\"\nregion_size = \"1MiB\"\n\
             [[raid.member]]\nram = \"16MiB\"\n[[raid.member]]\nram = \"16MiB\"\n\
             [[raid]]\nname = \"cfg-r0\"\nlevel = \"raid0\"\nstrip_size = \"8KiB\"\nblock_size = 4096\n\
             [[raid.member]]\nram = \"8MiB\"\n[[raid.member]]\nram = \"8MiB\"\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        let arrays: BTreeMap<String, Arc<dyn Bdev>> = c
            .raids
            .iter()
            .map(|r| (r.name.clone(), open_array(r, None).expect("open")))
            .collect();
        assert_eq!(arrays["cfg-r1"].kind(), "raid1");
        assert_eq!(arrays["cfg-r1"].info().num_blocks, 15 * (1 << 20) / 512);
        assert_eq!(arrays["cfg-r0"].info().block_size, 4096);
        let st = registry().get("cfg-r0").expect("registered").status();
        assert_eq!(st.members.len(), 2);
        let out = control("STATUS cfg-r1");
        assert!(out.starts_with("OK 3\ncfg-r1 raid1 optimal"), "{out}");
        assert!(control("FAIL cfg-r1 #1").starts_with("OK 1"));
        assert!(control("STATUS cfg-r1").contains("degraded"));
        assert!(control("FAIL cfg-r0 #1").starts_with("ERR "));
        assert!(control("NOPE").starts_with("ERR usage"));
    }
}
