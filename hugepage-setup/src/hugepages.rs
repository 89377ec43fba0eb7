//! Hugepage reservation (per NUMA node where there are several) and the hugetlbfs
//! mount.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::host::{Host, Result, SetupError};

/// Hugepage sizes the tool reserves.
pub fn parse_page_size(s: &str) -> Option<u64> {
    match s.to_ascii_lowercase().as_str() {
        "2m" | "2mb" | "2mib" | "2048k" | "2048kb" => Some(2048),
        "1g" | "1gb" | "1gib" | "1048576k" | "1048576kb" => Some(1_048_576),
        _ => None,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PagePool {
    /// "node0", or "system" when the host has no NUMA nodes in sysfs.
    pub node: String,
    pub page_kb: u64,
    pub total: u64,
    pub free: u64,
}

/// The NUMA nodes with a hugepages folder (empty on a host without NUMA in sysfs).
pub fn nodes(h: &Host) -> Vec<String> {
    h.list(&h.sys("devices/system/node"))
        .into_iter()
        .filter(|n| n.starts_with("node") && n[4..].chars().all(|c| c.is_ascii_digit()))
        .filter(|n| {
            h.sys(&format!("devices/system/node/{n}/hugepages"))
                .is_dir()
        })
        .collect()
}

fn pool_dir(h: &Host, node: Option<&str>, kb: u64) -> PathBuf {
    match node {
        Some(n) => h.sys(&format!(
            "devices/system/node/{n}/hugepages/hugepages-{kb}kB"
        )),
        None => h.sys(&format!("kernel/mm/hugepages/hugepages-{kb}kB")),
    }
}

/// Every hugepage pool: per node where there are several, else system-wide.
pub fn pools(h: &Host) -> Vec<PagePool> {
    let mut out = Vec::new();
    let ns = nodes(h);
    let scopes: Vec<Option<String>> = if ns.len() > 1 {
        ns.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    for scope in scopes {
        let base = match &scope {
            Some(n) => h.sys(&format!("devices/system/node/{n}/hugepages")),
            None => h.sys("kernel/mm/hugepages"),
        };
        for d in h.list(&base) {
            let Some(kb) = d
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let dir = base.join(&d);
            out.push(PagePool {
                node: scope.clone().unwrap_or_else(|| "system".into()),
                page_kb: kb,
                total: h.read_u64(&dir.join("nr_hugepages")).unwrap_or(0),
                free: h.read_u64(&dir.join("free_hugepages")).unwrap_or(0),
            });
        }
    }
    out
}

fn mem_available_kb(h: &Host) -> Option<u64> {
    let text = h.read(&h.proc("meminfo"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Makes sure `pages` hugepages of `kb` KiB exist on every NUMA node (or system-wide
/// on a host with one node). Refuses when the memory is not there.
pub fn reserve(h: &Host, pages: u64, kb: u64) -> Result<()> {
    let ns = nodes(h);
    let scopes: Vec<Option<String>> = if ns.len() > 1 {
        ns.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    if !pool_dir(h, None, kb).is_dir() {
        return Err(SetupError::Refused(format!(
            "this kernel offers no {kb} kB hugepages (no {})",
            pool_dir(h, None, kb).display()
        )));
    }
    // All the memory asked for that is not reserved yet must be available.
    let mut missing_kb = 0;
    for s in &scopes {
        let have = h
            .read_u64(&pool_dir(h, s.as_deref(), kb).join("nr_hugepages"))
            .unwrap_or(0);
        missing_kb += pages.saturating_sub(have) * kb;
    }
    if missing_kb > 0 {
        if let Some(avail) = mem_available_kb(h) {
            if avail < missing_kb {
                return Err(SetupError::Refused(format!(
                    "not enough free memory for the hugepages asked for: {} MiB more are needed, \
                     {} MiB are available (MemAvailable); ask for fewer pages",
                    missing_kb >> 10,
                    avail >> 10
                )));
            }
        }
    }
    for s in &scopes {
        let where_ = s.as_deref().unwrap_or("the system");
        let file = pool_dir(h, s.as_deref(), kb).join("nr_hugepages");
        let have = h.read_u64(&file).unwrap_or(0);
        if have >= pages {
            println!("{where_}: {have} hugepages of {kb} kB already reserved (asked for {pages})");
            continue;
        }
        h.say(&format!(
            "reserve {pages} hugepages of {kb} kB on {where_} (now {have})"
        ));
        h.write(&file, &pages.to_string())?;
        if h.dry_run {
            continue;
        }
        let got = h.read_u64(&file).unwrap_or(0);
        if got < pages {
            // Give back what a partial reservation took: half a reservation helps no one.
            let _ = h.write(&file, &have.to_string());
            return Err(SetupError::Refused(format!(
                "not enough free hugepages: only {got} of the {pages} hugepages of {kb} kB \
                 asked for could be reserved on {where_} (memory is short or fragmented; \
                 reserve them at boot with hugepages={pages} on the kernel command line)"
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    pub path: String,
    pub page_kb: u64,
}

/// hugetlbfs mounts from /proc/mounts.
pub fn mounts(h: &Host) -> Vec<Mount> {
    let text = h.read(&h.proc("mounts")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[2] != "hugetlbfs" {
                return None;
            }
            let kb = f[3]
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .and_then(parse_page_size)
                .unwrap_or(2048);
            Some(Mount {
                path: f[1].to_string(),
                page_kb: kb,
            })
        })
        .collect()
}

/// Mounts hugetlbfs for `kb` pages at `path` unless it is mounted there already.
pub fn mount(h: &Host, path: &Path, kb: u64) -> Result<()> {
    let p = path.display().to_string();
    if let Some(m) = mounts(h).into_iter().find(|m| m.path == p) {
        if m.page_kb != kb {
            return Err(SetupError::Refused(format!(
                "{p} is a hugetlbfs of {} kB pages, not {kb} kB; unmount it or pick another \
                 --mount path",
                m.page_kb
            )));
        }
        println!("{p}: hugetlbfs ({kb} kB pages) already mounted");
        return Ok(());
    }
    let opt = if kb == 1_048_576 {
        "pagesize=1G"
    } else {
        "pagesize=2M"
    };
    h.say(&format!("mount hugetlbfs ({opt}) at {p}"));
    if h.dry_run {
        return Ok(());
    }
    if !h.real {
        return Err(SetupError::Failed(format!(
            "cannot mount {p}: not on the real machine (--sysfs-root is set)"
        )));
    }
    std::fs::create_dir_all(path).map_err(|source| SetupError::Io {
        path: p.clone(),
        source,
    })?;
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|_| SetupError::Failed(format!("{s:?} has a NUL byte")))
    };
    let (src, target, fstype, data) = (c("nodev")?, c(&p)?, c("hugetlbfs")?, c(opt)?);
    // SAFETY: mount(2) reads four NUL-terminated strings that live across the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(SetupError::Io {
            path: p,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
