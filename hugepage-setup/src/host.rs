//! The host as hugepage-setup sees it: sysfs and procfs under configurable roots (tests
//! point them at a fake tree), and every change it makes going through one place that
//! either does it or, in a dry run, prints what it would do.

use std::fs;
use std::path::{Path, PathBuf};

/// Errors: each a sentence an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, SetupError>;

pub struct Host {
    pub sys: PathBuf,
    pub proc: PathBuf,
    pub dry_run: bool,
    /// The real machine (sysfs at /sys): only then are modules loaded, filesystems
    /// mounted and block devices opened.
    pub real: bool,
}

impl Host {
    pub fn new(sys: PathBuf, proc: PathBuf, dry_run: bool) -> Host {
        let real = sys == Path::new("/sys");
        Host {
            sys,
            proc,
            dry_run,
            real,
        }
    }

    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }

    pub fn proc(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }

    pub fn read(&self, p: &Path) -> Option<String> {
        fs::read_to_string(p).ok().map(|s| s.trim().to_string())
    }

    pub fn read_u64(&self, p: &Path) -> Option<u64> {
        self.read(p)?.parse().ok()
    }

    /// The last component of a symlink's target (a driver or group name).
    pub fn link_name(&self, p: &Path) -> Option<String> {
        let t = fs::read_link(p).ok()?;
        t.file_name()?.to_str().map(str::to_string)
    }

    pub fn list(&self, p: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Writes `value` to a sysfs/procfs file, or says it would.
    pub fn write(&self, p: &Path, value: &str) -> Result<()> {
        if self.dry_run {
            println!("would write {value:?} to {}", p.display());
            return Ok(());
        }
        fs::write(p, value).map_err(|source| SetupError::Io {
            path: p.display().to_string(),
            source,
        })
    }

    /// Says what is being done (or would be).
    pub fn say(&self, what: &str) {
        if self.dry_run {
            println!("would {what}");
        } else {
            println!("{what}");
        }
    }
}
