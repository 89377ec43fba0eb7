//! A writer for the cpio "newc" format, the one the kernel unpacks as an
//! initramfs. Only what a per-test archive needs: directories and regular
//! files, owned by root.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

const MAGIC: &str = "070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    dirs: BTreeSet<String>,
    next_ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a regular file at `path` (absolute or relative to the guest's
    /// root) with permission bits `perm`, and every missing parent directory
    /// before it: the kernel does not create parents itself.
    pub fn add_file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        let rel = normalize(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = rel.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if self.dirs.insert(parent.clone()) {
                let dir = parent.clone();
                self.entry(&dir, 0o040_000 | 0o755, 2, &[])?;
            }
        }
        self.entry(&rel, 0o100_000 | (perm & 0o7777), 1, data)
    }

    /// Closes the archive and returns its bytes, padded to 512 bytes so that
    /// another archive can follow it.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.entry(TRAILER, 0, 1, &[])?;
        let padded = self.buf.len().div_ceil(512) * 512;
        self.buf.resize(padded, 0);
        Ok(self.buf)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<()> {
        let Ok(size) = u32::try_from(data.len()) else {
            bail!("{name}: {} bytes is too large for a cpio entry", data.len());
        };
        let Ok(namesize) = u32::try_from(name.len() + 1) else {
            bail!("cpio entry name too long");
        };
        let ino = if name == TRAILER {
            0
        } else {
            self.next_ino += 1;
            self.next_ino
        };
        let fields = [
            ino, mode, 0, /* uid */
            0, /* gid */
            nlink, 0, /* mtime */
            size, 0, 0, /* dev major, minor */
            0, 0, /* rdev major, minor */
            namesize, 0, /* check */
        ];
        let at = self.buf.len();
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        debug_assert_eq!(self.buf.len() - at, HEADER_LEN);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
        Ok(())
    }

    fn pad4(&mut self) {
        let padded = self.buf.len().div_ceil(4) * 4;
        self.buf.resize(padded, 0);
    }
}

/// "/test/run.sh" -> "test/run.sh"; refuses empty, "." and ".." components.
fn normalize(path: &str) -> Result<String> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("bad guest path {path:?}: want a plain absolute path such as /test/data.bin");
    }
    Ok(rel.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses an archive back: (name, mode, data) per entry.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            let off = total - b.len();
            assert_eq!(off % 4, 0);
            assert_eq!(&b[..6], MAGIC.as_bytes());
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&b[HEADER_LEN..HEADER_LEN + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[HEADER_LEN + namesize - 1], 0);
            let data_at = (off + HEADER_LEN + namesize).div_ceil(4) * 4 - off;
            let data = b[data_at..data_at + size].to_vec();
            let next = (off + data_at + size).div_ceil(4) * 4 - off;
            b = &b[next..];
            if name == TRAILER {
                assert!(b.iter().all(|&x| x == 0));
                assert_eq!(total % 512, 0);
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn parents_come_first_once() {
        let mut a = Archive::new();
        a.add_file("/test/run.sh", 0o755, b"echo hi\n").unwrap();
        a.add_file("/test/sub/x", 0o644, b"12345").unwrap();
        a.add_file("/y", 0o600, b"").unwrap();
        let entries = parse(&a.finish().unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["test", "test/run.sh", "test/sub", "test/sub/x", "y"]
        );
        assert_eq!(entries[0].1, 0o040_755);
        assert_eq!(entries[1].1, 0o100_755);
        assert_eq!(entries[1].2, b"echo hi\n");
        assert_eq!(entries[3].1, 0o100_644);
        assert_eq!(entries[3].2, b"12345");
        assert_eq!(entries[4].2, b"");
    }

    #[test]
    fn refuses_odd_paths() {
        let mut a = Archive::new();
        for p in ["", "/", "/a/../b", "a//b", "/a/./b", "/a/"] {
            assert!(a.add_file(p, 0o644, b"").is_err(), "{p:?}");
        }
    }
}
