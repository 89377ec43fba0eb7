//! Hot upgrade: the running target hands its state and every descriptor to a new binary
//! over its control socket, and the new one carries on with the same connections.
//!
//! The state lives in the state region (`lightpool_nvmf::region`) from the start: a
//! memfd, or `state.region` in the state directory. Before it asks for anything the new
//! binary learns the reactors and receives the region and the RAM devices' memfds
//! (REACTORS), maps the region, opens the block devices, rebuilds the subsystems and
//! starts its reactors. Only then does it send HELLO; inside the pause it reads what
//! changes while serving (controllers, queues, ANA states) from the region, and the
//! little the region does not hold from the handover blob. Devices whose state changes
//! while serving (a VFIO controller's queues) come only with STATE: a target with one
//! does all of its preparation inside the pause.
//!
//! Protocol (lines over the Unix control socket; descriptors by SCM_RIGHTS):
//!
//! ```text
//! new -> old   REACTORS
//! old -> new   OK cores=.. idle_spin_us=.. fds=N [api_fd=I api_tls=HEX:HEX:HEX]
//!                 [metrics_fd=J] [notify=SOCKET]  + region, RAM memfds, open files
//!                                                   (then the API's TCP socket and the
//!                                                   metrics socket, last)
//! new -> old   HELLO <min layout> <max layout> <version> pid=<new pid>
//! old -> new   REFUSE <reason>                      (layout unreadable; old keeps serving)
//!           |  STATE <layout> <fd count> quiesced_ns=T  + fds  (old has quiesced and
//!                                                    frozen at CLOCK_MONOTONIC T; fd 0
//!              FDS + fds ...                         is the region, its handover blob
//!                                                    written; VFIO controllers' fds)
//! new -> old   ADOPTED | REFUSE <reason>            (new said MAINPID=<new> first)
//! old -> new   BYE                                  (old says MAINPID=<new>, exits;
//!                                                    new starts polling, READY=1)
//! ```
//!
//! Words a side does not know are skipped, so binaries a version apart still agree.
//!
//! Until it says BYE the old process can always take back its frozen state and resume:
//! when the new one refuses, dies (end of stream) or is too slow. The new one writes
//! nothing into the region before BYE. After BYE the old one has let go for good; every
//! acknowledged write is in the block devices (RAM devices live in memfds the new
//! process maps), so nothing acknowledged is lost either way.

mod bdevs;
use bdevs::*;
mod new;
mod old;
mod recover;

pub use bdevs::graph as device_graph;
pub use new::{take_over, Output};
pub use old::{hand_over, reactors_answer};
pub use recover::recover;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use lightpool_nvmf::region::{Blob, Region};
use serde::{Deserialize, Serialize};

use crate::Running;

/// The layout of the state region this binary writes.
pub const STATE_LAYOUT: u32 = lightpool_nvmf::region::LAYOUT;
/// The layouts this binary can read.
pub const READABLE_LAYOUTS: std::ops::RangeInclusive<u32> = STATE_LAYOUT..=STATE_LAYOUT;

/// How long the old process waits for running commands to finish before it gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old process waits for the new one to adopt the state.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);

/// The daemon's boot blob in the region: written when it starts serving (and by each
/// successor once it has taken over); what a successor or `--recover` needs beyond the
/// records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Boot {
    version: String,
    pid: u32,
    cores: Vec<Option<usize>>,
    idle_spin_us: Option<u64>,
    control_path: String,
    state_dir: Option<String>,
    /// Every block device (state for those exported while serving), children first.
    devices: Vec<lightpool_bdev::DeviceRecord>,
    /// Which device each namespace serves.
    namespaces: NsDevices,
    /// The device registry: every device by name, with how it was made.
    registry: Vec<RegistryRecord>,
    /// Changes made through the management API or the configuration so far: a
    /// successor that prepared from a blob with another count refuses.
    changes: u64,
    /// The management API's socket.
    api_path: String,
}

/// The handover blob, written at pause time: descriptor indices and the connections'
/// pause-time parts (bytes read and not consumed, commands received and not finished).
#[derive(Debug, Serialize, Deserialize)]
struct Pause {
    version: String,
    pid: u32,
    control_fd: usize,
    api_fd: usize,
    stdout_fd: usize,
    stderr_fd: usize,
    /// Each transport's name and exported state (its descriptors indexed among
    /// STATE's).
    transports: Vec<(String, Vec<u8>)>,
    /// The block devices exported at pause time (VFIO controllers and what is stacked
    /// on them), their descriptors indexed among STATE's.
    devices: Vec<lightpool_bdev::DeviceRecord>,
}

/// Name of the region file in the state directory.
pub const REGION_FILE: &str = "state.region";

/// A new region for a target with these options: `state.region` in the state
/// directory (so `--recover` finds it), or a memfd.
pub fn create_region(
    opts: &lightpool_nvmf::TargetOptions,
    state_dir: Option<&std::path::Path>,
    layout: u32,
) -> Result<Arc<Region>> {
    let (sizes, ropts) = lightpool_nvmf::target::region_params(opts);
    let file = match state_dir {
        Some(dir) => {
            // A fresh file, renamed over the old one only once laid out.
            let tmp = dir.join(format!("{REGION_FILE}.new"));
            let _ = std::fs::remove_file(&tmp);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let r = Region::create(f, sizes, ropts, layout)?;
            std::fs::rename(&tmp, dir.join(REGION_FILE))
                .with_context(|| format!("renaming {}", tmp.display()))?;
            return Ok(r);
        }
        None => {
            let name = std::ffi::CString::new("lightpool-state").expect("no NUL");
            // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
            let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("creating the state region");
            }
            // SAFETY: raw is a new descriptor we own.
            unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        }
    };
    Ok(Region::create(file, sizes, ropts, layout)?)
}

/// Write the boot blob of a serving target (at start, and after a takeover).
pub fn write_boot(run: &Running) -> Result<()> {
    let changes = *run.mgmt.changes.lock().expect("change lock poisoned");
    write_boot_counted(run, changes)
}

/// Write the boot blob after change number `changes` (the caller holds the change
/// lock).
pub fn write_boot_counted(run: &Running, changes: u64) -> Result<()> {
    write_boot_fds(run, changes).map(drop)
}

/// Write the boot blob and return the descriptors of the devices it describes (in the
/// order its records index them): what a REACTORS answer sends.
fn write_boot_fds(run: &Running, changes: u64) -> Result<Vec<OwnedFd>> {
    let (devices, namespaces, registry, fds) = early_export(&run.target, &run.mgmt.registry)?;
    let boot = Boot {
        version: crate::firmware_revision().to_string(),
        pid: std::process::id(),
        cores: run.cores.clone(),
        idle_spin_us: run.idle_spin_us,
        control_path: run.control_path.clone(),
        state_dir: run.state_dir.as_ref().map(|d| d.display().to_string()),
        devices,
        namespaces,
        registry,
        changes,
        api_path: run.mgmt.api_path.clone(),
    };
    let mut blob = postcard::to_stdvec(&boot).context("encoding the boot blob")?;
    // The hosts' DH-HMAC-CHAP keys follow the boot record, as a value of their own: a
    // binary that does not know them reads the record and ignores what follows, and
    // one that does finds none after an older binary's record.
    blob.extend(postcard::to_stdvec(&host_keys(&run.target)).context("encoding the host keys")?);
    // The TLS PSKs follow in the same way: (subsystem NQN, host NQN, interchange form).
    let tls: TlsKeyRecords = run
        .target
        .tls
        .all()
        .into_iter()
        .map(|(host, sub, k)| (sub, host, k.to_interchange()))
        .collect();
    blob.extend(postcard::to_stdvec(&tls).context("encoding the TLS keys")?);
    run.region.write_blob(Blob::Boot, &blob)?;
    Ok(fds)
}

/// Every TLS PSK: (subsystem NQN, host NQN, `NVMeTLSkey-1:...`).
type TlsKeyRecords = Vec<(String, String, String)>;

/// Every subsystem's DH-HMAC-CHAP keys: (subsystem NQN, host NQN, keys).
type HostKeyRecords = Vec<(String, String, lightpool_nvmf::auth::HostKeysText)>;

fn host_keys(target: &lightpool_nvmf::Target) -> HostKeyRecords {
    let mut v = Vec::new();
    for s in target.subsystems() {
        for (h, k) in s.all_host_keys() {
            v.push((s.nqn.clone(), h, k.to_text()));
        }
    }
    v
}

/// Give the rebuilt subsystems the keys the boot blob carries (none after a binary
/// that did not write them).
pub(crate) fn restore_host_keys(region: &Region, target: &lightpool_nvmf::Target) -> Result<usize> {
    let blob = region
        .read_blob(Blob::Boot)?
        .ok_or_else(|| anyhow!("the state region has no boot blob"))?;
    let (_, rest) = postcard::take_from_bytes::<Boot>(&blob).context("decoding the boot blob")?;
    if rest.is_empty() {
        return Ok(0);
    }
    let (keys, rest): (HostKeyRecords, _) =
        postcard::take_from_bytes(rest).context("decoding the host keys")?;
    for (nqn, host, text) in &keys {
        let s = target
            .find_subsystem(nqn)
            .with_context(|| format!("host keys for subsystem {nqn}, which was not rebuilt"))?;
        let k = text
            .parse()
            .map_err(|e| anyhow!("host keys of {host} on {nqn}: {e}"))?;
        s.set_host_keys(host, Some(k))
            .map_err(|e| anyhow!("host keys of {host} on {nqn}: {e}"))?;
    }
    // TLS PSKs: none after a binary that did not write them.
    let tls: TlsKeyRecords = if rest.is_empty() {
        Vec::new()
    } else {
        postcard::from_bytes(rest).context("decoding the TLS keys")?
    };
    for (nqn, host, text) in &tls {
        let k = lightpool_nvmf::tls::ConfiguredPsk::parse(text)
            .map_err(|e| anyhow!("TLS key of {host} on {nqn}: {e}"))?;
        target
            .tls
            .set(host, nqn, Some(k))
            .map_err(|e| anyhow!("TLS key of {host} on {nqn}: {e}"))?;
    }
    Ok(keys.len() + tls.len())
}

fn read_boot(region: &Region) -> Result<Boot> {
    let blob = region
        .read_blob(Blob::Boot)?
        .ok_or_else(|| anyhow!("the state region has no boot blob"))?;
    postcard::from_bytes(&blob).context("decoding the boot blob")
}

/// For the length of the handover, the thread that drives it runs ahead of ordinary
/// threads (SCHED_FIFO, lowest real-time priority): it blocks on the control socket
/// between steps, and each wake-up would otherwise wait for a scheduler slice on cores
/// where reactors and initiators busy-poll (about 4 ms per wake-up on a 2-core box).
/// Without the privilege (CAP_SYS_NICE) it runs as before. The policy is restored when
/// dropped.
struct Urgent(Option<(libc::c_int, libc::sched_param)>);

impl Urgent {
    fn enter() -> Urgent {
        // SAFETY: plain syscalls on the calling thread (pid 0) with live locals.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut old: libc::sched_param = std::mem::zeroed();
            if policy < 0 || libc::sched_getparam(0, &mut old) != 0 {
                return Urgent(None);
            }
            let fifo = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) != 0 {
                tracing::debug!("handover thread stays at normal priority (no CAP_SYS_NICE)");
                return Urgent(None);
            }
            Urgent(Some((policy, old)))
        }
    }
}

impl Drop for Urgent {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.0 {
            // SAFETY: restores what `enter` read, on the same thread.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}

fn dup(fd: impl AsFd) -> Result<OwnedFd> {
    Ok(fd.as_fd().try_clone_to_owned()?)
}
