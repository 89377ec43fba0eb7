//! What the node service does to the machine: the kernel's NVMe/TCP initiator
//! through nvme-cli, the namespace found in sysfs by subsystem NQN, NSID and UUID,
//! file systems through blkid and mkfs, and mounts through mount(2).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What went wrong on the machine.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A tool failed or is missing.
    #[error("{cmd}: {why}")]
    Tool { cmd: String, why: String },
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The namespace did not show up.
    #[error("namespace {nsid} of {nqn} did not appear within {secs} s after connecting")]
    NoDevice { nqn: String, nsid: u32, secs: u64 },
}

/// One path to a volume: `nvme connect` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path4 {
    pub transport: String,
    pub traddr: String,
    pub trsvcid: String,
}

/// Runs `cmd args`; its stderr is the error.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, HostError> {
    let line = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| HostError::Tool {
            cmd: line.clone(),
            why: format!("{e} (is it installed?)"),
        })?;
    if !out.status.success() {
        return Err(HostError::Tool {
            cmd: line,
            why: format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                out.status
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The kernel's subsystem directory for `nqn`, if connected.
fn subsystem(nqn: &str) -> Option<PathBuf> {
    std::fs::read_dir("/sys/class/nvme-subsystem")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| read(&p.join("subsysnqn")).as_deref() == Some(nqn))
}

/// Controllers of `nqn` connected to `path` (`nvme0`, ...).
pub fn controllers_on(nqn: &str, path: &Path4) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/nvme") else {
        return Vec::new();
    };
    let want = format!("traddr={},trsvcid={}", path.traddr, path.trsvcid);
    dir.flatten()
        .filter(|e| read(&e.path().join("subsysnqn")).as_deref() == Some(nqn))
        .filter(|e| {
            read(&e.path().join("address")).is_some_and(|a| a.starts_with(&want))
                && read(&e.path().join("transport")).as_deref() == Some(path.transport.as_str())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every controller of `nqn` with its path (`nvme3`, tcp 10.0.0.2:4420).
pub fn controllers(nqn: &str) -> Vec<(String, Path4)> {
    let Ok(dir) = std::fs::read_dir("/sys/class/nvme") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| read(&e.path().join("subsysnqn")).as_deref() == Some(nqn))
        .filter_map(|e| {
            let address = read(&e.path().join("address"))?;
            let field = |k: &str| {
                address
                    .split(',')
                    .find_map(|kv| kv.trim().strip_prefix(k))
                    .map(str::to_string)
            };
            Some((
                e.file_name().to_string_lossy().into_owned(),
                Path4 {
                    transport: read(&e.path().join("transport"))?,
                    traddr: field("traddr=")?,
                    trsvcid: field("trsvcid=")?,
                },
            ))
        })
        .collect()
}

/// Connects to `nqn` on `path` unless a controller already is; true when this call
/// made the connection.
pub fn connect(nqn: &str, path: &Path4, hostnqn: Option<&str>) -> Result<bool, HostError> {
    if !controllers_on(nqn, path).is_empty() {
        return Ok(false);
    }
    let mut args = vec![
        "connect",
        "-t",
        &path.transport,
        "-a",
        &path.traddr,
        "-s",
        &path.trsvcid,
        "-n",
        nqn,
    ];
    if let Some(h) = hostnqn {
        args.extend(["-q", h]);
    }
    run("nvme", &args)?;
    Ok(true)
}

/// Disconnects every controller of `nqn` (each volume has a subsystem of its own).
pub fn disconnect(nqn: &str) -> Result<(), HostError> {
    if subsystem(nqn).is_none() {
        return Ok(());
    }
    run("nvme", &["disconnect", "-n", nqn]).map(|_| ())
}

/// Disconnects the controllers of `nqn` on `path` (undoing one connect).
pub fn disconnect_path(nqn: &str, path: &Path4) {
    for c in controllers_on(nqn, path) {
        let _ = run("nvme", &["disconnect", "-d", &c]);
    }
}

/// The block device of namespace `nsid` of `nqn` (with `uuid` when known), if there.
pub fn find_device(nqn: &str, nsid: u32, uuid: Option<&str>) -> Option<PathBuf> {
    let sub = subsystem(nqn)?;
    let mut dirs = vec![sub.clone()];
    // Without native multipath the namespaces sit under each controller.
    if let Ok(rd) = std::fs::read_dir(&sub) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("nvme"))
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        }));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("nvme") else {
                continue;
            };
            // nvmeXnY (a namespace head or namespace), not nvmeXcYnZ (a hidden path).
            let Some((ctl, ns)) = rest.split_once('n') else {
                continue;
            };
            if !ctl.chars().all(|c| c.is_ascii_digit()) || !ns.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let blk = Path::new("/sys/block").join(&name);
            if read(&blk.join("nsid")).and_then(|n| n.parse::<u32>().ok()) != Some(nsid) {
                continue;
            }
            if let Some(u) = uuid {
                if read(&blk.join("uuid")).as_deref() != Some(u) {
                    continue;
                }
            }
            return Some(PathBuf::from("/dev").join(name));
        }
    }
    None
}

/// Waits up to `timeout` for the device.
pub fn wait_device(
    nqn: &str,
    nsid: u32,
    uuid: Option<&str>,
    timeout: Duration,
) -> Result<PathBuf, HostError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = find_device(nqn, nsid, uuid) {
            if d.exists() {
                return Ok(d);
            }
        }
        if Instant::now() >= deadline {
            return Err(HostError::NoDevice {
                nqn: nqn.to_string(),
                nsid,
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The file system on `dev` ("" when blkid finds none).
pub fn fs_type(dev: &Path) -> Result<String, HostError> {
    let d = dev.display().to_string();
    match Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE", &d])
        .output()
    {
        // blkid -p exits 2 when it finds nothing.
        Ok(o) if o.status.code() == Some(2) => Ok(String::new()),
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(HostError::Tool {
            cmd: format!("blkid -p {d}"),
            why: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(HostError::Tool {
            cmd: format!("blkid -p {d}"),
            why: format!("{e} (is util-linux installed?)"),
        }),
    }
}

/// Makes file system `fs` on `dev`.
pub fn mkfs(dev: &Path, fs: &str) -> Result<(), HostError> {
    let d = dev.display().to_string();
    match fs {
        "xfs" => run("mkfs.xfs", &["-q", &d]),
        _ => run("mkfs.ext4", &["-q", "-F", &d]),
    }
    .map(|_| ())
}

/// Whether `path` is a mount point (in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

fn cstr(p: &Path) -> Result<CString, HostError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| HostError::Sys {
        what: "path with a NUL byte",
        path: p.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// mount(2): `src` on `dst`, of `fs` (None for a bind mount), read-only if asked.
pub fn mount(src: &Path, dst: &Path, fs: Option<&str>, readonly: bool) -> Result<(), HostError> {
    let (s, d) = (cstr(src)?, cstr(dst)?);
    let fs_c = fs.map(|f| CString::new(f).unwrap_or_default());
    let mut flags: libc::c_ulong = if fs.is_none() { libc::MS_BIND } else { 0 };
    if readonly && fs.is_some() {
        flags |= libc::MS_RDONLY;
    }
    let sys = |what| HostError::Sys {
        what,
        path: dst.to_path_buf(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: the strings are NUL-terminated and live across the call; no data
    // argument is passed.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            fs_c.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(sys("mount"));
    }
    if readonly && fs.is_none() {
        // A bind mount takes MS_RDONLY only on a remount.
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = sys("remount read-only");
            let _ = umount(dst);
            return Err(e);
        }
    }
    Ok(())
}

/// umount(2) of `path` if it is mounted.
pub fn umount(path: &Path) -> Result<(), HostError> {
    if !is_mounted(path) {
        return Ok(());
    }
    let p = cstr(path)?;
    // SAFETY: a NUL-terminated path that lives across the call.
    if unsafe { libc::umount2(p.as_ptr(), 0) } != 0 {
        return Err(HostError::Sys {
            what: "umount",
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Size in bytes of the block device `dev`.
pub fn device_size(dev: &Path) -> Option<u64> {
    let name = std::fs::canonicalize(dev).ok()?;
    let name = name.file_name()?.to_string_lossy().into_owned();
    let sectors: u64 = read(&Path::new("/sys/class/block").join(name).join("size"))?
        .parse()
        .ok()?;
    Some(sectors * 512)
}

/// Asks the kernel to read the namespaces of every controller of `nqn` again
/// (their sizes included). The target's Namespace Attribute Changed event does
/// this by itself; this is for a host that missed it.
pub fn rescan(nqn: &str) {
    let Some(sub) = subsystem(nqn) else { return };
    let Ok(rd) = std::fs::read_dir(&sub) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_ctrl = name
            .strip_prefix("nvme")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if is_ctrl {
            let _ = std::fs::write(
                Path::new("/sys/class/nvme")
                    .join(&name)
                    .join("rescan_controller"),
                "1",
            );
        }
    }
}

/// Waits up to `timeout` for `dev` to hold at least `bytes`, rescanning `nqn`
/// once a second while it does not; its size when it does.
pub fn wait_size(nqn: &str, dev: &Path, bytes: u64, timeout: Duration) -> Result<u64, HostError> {
    let deadline = Instant::now() + timeout;
    let mut next_rescan = Instant::now() + Duration::from_secs(1);
    loop {
        let have = device_size(dev).unwrap_or(0);
        if have >= bytes {
            return Ok(have);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HostError::Tool {
                cmd: format!("waiting for {} to grow", dev.display()),
                why: format!(
                    "it holds {have} bytes after {} s, not {bytes}: the volume has not grown on its node (ControllerExpandVolume first)",
                    timeout.as_secs()
                ),
            });
        }
        if now >= next_rescan {
            rescan(nqn);
            next_rescan = now + Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Grows the file system `fs` on `dev`, mounted at `mounted`, to the device's
/// size: resize2fs for ext4 (online), xfs_growfs (which takes the mount point)
/// for xfs. Growing to the size it has is a no-op.
pub fn grow_fs(dev: &Path, fs: &str, mounted: &Path) -> Result<(), HostError> {
    match fs {
        "xfs" => run("xfs_growfs", &[&mounted.display().to_string()]),
        "ext4" | "ext3" | "ext2" => run("resize2fs", &[&dev.display().to_string()]),
        other => Err(HostError::Tool {
            cmd: format!("growing {}", dev.display()),
            why: format!("{other:?} is not a file system this driver grows (ext4, xfs)"),
        }),
    }
    .map(|_| ())
}
