//! Finding a hugetlbfs mount to take DMA memory from.

use std::path::{Path, PathBuf};

/// A mounted hugetlbfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugetlbfsMount {
    pub path: PathBuf,
    /// Page size of the mount in bytes (the `pagesize=` option, else the default 2 MiB).
    pub page_size: usize,
}

/// The default hugepage size on x86_64 and aarch64 with 4 KiB pages.
const DEFAULT_HUGEPAGE: usize = 2 << 20;

/// Every hugetlbfs mount listed in `mounts` (the text of /proc/mounts).
pub fn parse_mounts(mounts: &str) -> Vec<HugetlbfsMount> {
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[2] != "hugetlbfs" {
            continue;
        }
        let page_size = f[3]
            .split(',')
            .find_map(|o| o.strip_prefix("pagesize="))
            .and_then(parse_page_size)
            .unwrap_or(DEFAULT_HUGEPAGE);
        out.push(HugetlbfsMount {
            path: PathBuf::from(unescape(f[1])),
            page_size,
        });
    }
    out
}

/// "2M", "1G", "2048k" as the kernel prints them in mount options.
fn parse_page_size(s: &str) -> Option<usize> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first hugetlbfs mount under `proc_root` (normally "/") whose page size has free
/// pages, preferring `page_size` when given. `None` when there is none, with the reason.
pub fn find_hugetlbfs(proc_root: &Path) -> Result<HugetlbfsMount, String> {
    let text = std::fs::read_to_string(proc_root.join("proc/mounts"))
        .map_err(|e| format!("cannot read /proc/mounts: {e}"))?;
    let mounts = parse_mounts(&text);
    if mounts.is_empty() {
        return Err("no hugetlbfs is mounted".to_string());
    }
    for m in &mounts {
        if free_hugepages(proc_root, m.page_size).unwrap_or(0) > 0 {
            return Ok(m.clone());
        }
    }
    Err(format!(
        "no free hugepages for the hugetlbfs mount(s) {}",
        mounts
            .iter()
            .map(|m| m.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Free pages of `page_size` bytes system-wide, from sysfs.
pub(crate) fn free_hugepages(root: &Path, page_size: usize) -> Option<u64> {
    let p = root.join(format!(
        "sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages",
        page_size >> 10
    ));
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_with_and_without_pagesize() {
        let text = "proc /proc proc rw 0 0\n\
                    hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n\
                    none /mnt/huge\\0401g hugetlbfs rw,pagesize=1024M 0 0\n\
                    nodev /mnt/h hugetlbfs rw 0 0\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, PathBuf::from("/dev/hugepages"));
        assert_eq!(m[0].page_size, 2 << 20);
        assert_eq!(m[1].path, PathBuf::from("/mnt/huge 1g"));
        assert_eq!(m[1].page_size, 1 << 30);
        assert_eq!(m[2].page_size, 2 << 20);
    }

    #[test]
    fn find_prefers_a_mount_with_free_pages() {
        let root = std::env::temp_dir().join(format!("lp-dma-huge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc")).expect("mkdir");
        std::fs::write(root.join("proc/mounts"), "rootfs / ext4 rw 0 0\n").expect("write");
        assert!(find_hugetlbfs(&root).unwrap_err().contains("no hugetlbfs"));
        std::fs::write(
            root.join("proc/mounts"),
            "a /a hugetlbfs rw,pagesize=1G 0 0\nb /b hugetlbfs rw,pagesize=2M 0 0\n",
        )
        .expect("write");
        for (kb, free) in [(1048576, 0), (2048, 3)] {
            let d = root.join(format!("sys/kernel/mm/hugepages/hugepages-{kb}kB"));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("free_hugepages"), format!("{free}\n")).expect("write");
        }
        let m = find_hugetlbfs(&root).expect("found");
        assert_eq!(m.path, PathBuf::from("/b"));
        std::fs::write(
            root.join("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"),
            "0\n",
        )
        .expect("write");
        assert!(find_hugetlbfs(&root)
            .unwrap_err()
            .contains("no free hugepages"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
