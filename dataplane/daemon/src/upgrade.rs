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
//! old -> new   OK cores=.. idle_spin_us=.. fds=N  + region, RAM memfds, open files
//! new -> old   HELLO <min layout> <max layout> <version>
//! old -> new   REFUSE <reason>                      (layout unreadable; old keeps serving)
//!           |  STATE <layout> <fd count>  + fds     (old has quiesced and frozen; fd 0
//!              FDS + fds ...                         is the region, its handover blob
//!                                                    written; VFIO controllers' fds)
//! new -> old   ADOPTED | REFUSE <reason>
//! old -> new   BYE                                  (old exits; new starts polling)
//! ```
//!
//! Until it says BYE the old process can always take back its frozen state and resume:
//! when the new one refuses, dies (end of stream) or is too slow. The new one writes
//! nothing into the region before BYE. After BYE the old one has let go for good; every
//! acknowledged write is in the block devices (RAM devices live in memfds the new
//! process maps), so nothing acknowledged is lost either way.

use std::io::{BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lightpool_bdev::{
    Bdev, Handover, MallocBdev, NvmeVfioBdev, NvmeVfioHandover, UringBdev, UringOptions,
};
use lightpool_nvmf::region::objects;
use lightpool_nvmf::region::{Blob, Region, RegionError};
use lightpool_nvmf::{NvmfError, Target};
use lightpool_transport_tcp::{TcpState, TcpTransport};
use serde::{Deserialize, Serialize};

use crate::fdpass::{read_line, recv_with_fds, send_with_fds, FDS_PER_MESSAGE};
use crate::Running;

/// The layout of the state region this binary writes.
pub const STATE_LAYOUT: u32 = lightpool_nvmf::region::LAYOUT;
/// The layouts this binary can read.
pub const READABLE_LAYOUTS: std::ops::RangeInclusive<u32> = STATE_LAYOUT..=STATE_LAYOUT;

/// How long the old process waits for running commands to finish before it gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old process waits for the new one to adopt the state.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How the new process gets each namespace's block device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BdevState {
    Ram {
        /// Index among the descriptors that come with the REACTORS answer (after the
        /// region).
        fd: usize,
        block_size: u32,
        path: Option<String>,
    },
    /// A file or block device: its open descriptor (index as for `Ram`), so the
    /// successor serves the same file even if the path names another one by now;
    /// `path` for recovery, which reopens it.
    File {
        path: String,
        fd: usize,
        block_size: u32,
        read_only: bool,
        direct: bool,
        queue_depth: u32,
    },
    /// An NVMe namespace through VFIO (`name`): its controller state and descriptors
    /// come with STATE ([`Pause::vfio`]).
    Vfio { name: String },
}

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
    bdevs: BdevList,
}

/// The handover blob, written at pause time: descriptor indices and the connections'
/// pause-time parts (bytes read and not consumed, commands received and not finished).
#[derive(Debug, Serialize, Deserialize)]
struct Pause {
    version: String,
    pid: u32,
    control_fd: usize,
    stdout_fd: usize,
    stderr_fd: usize,
    tcp: TcpState,
    /// VFIO namespaces: (NQN, NSID, controller state, indices of their descriptors
    /// among STATE's).
    vfio: Vec<VfioPause>,
}

type VfioPause = (String, u32, Box<NvmeVfioHandover>, Vec<usize>);

/// Name of the region file in the state directory.
pub const REGION_FILE: &str = "state.region";

/// A new region for a target with these options: `state.region` in the state
/// directory (so `--recover` finds it), or a memfd.
pub fn create_region(
    opts: &lightpool_nvmf::TargetOptions,
    state_dir: Option<&std::path::Path>,
    layout: u32,
) -> Result<Arc<Region>> {
    let (sizes, ropts) = objects::region_params(opts);
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

/// The block devices of a target as a successor reopens them, and the memfds of the RAM
/// devices (in the order their `fd` indices count).
/// Each namespace's (NQN, NSID, how to reopen its block device).
type BdevList = Vec<(String, u32, BdevState)>;

fn bdev_states(target: &Target) -> Result<(BdevList, Vec<OwnedFd>)> {
    let mut bdevs = Vec::new();
    let mut fds = Vec::new();
    for s in target.subsystems() {
        for n in s.namespaces() {
            if n.bdev.handover_at_pause() {
                bdevs.push((
                    s.nqn.clone(),
                    n.nsid,
                    BdevState::Vfio {
                        name: n.bdev.info().name.clone(),
                    },
                ));
                continue;
            }
            let st = match n.bdev.handover() {
                Handover::Ram {
                    memfd,
                    block_size,
                    path,
                } => {
                    fds.push(dup(memfd)?);
                    BdevState::Ram {
                        fd: fds.len() - 1,
                        block_size,
                        path,
                    }
                }
                Handover::File {
                    path,
                    fd,
                    block_size,
                    read_only,
                    direct,
                    queue_depth,
                } => {
                    fds.push(dup(fd)?);
                    BdevState::File {
                        path,
                        fd: fds.len() - 1,
                        block_size,
                        read_only,
                        direct,
                        queue_depth,
                    }
                }
                Handover::Vfio { .. } => {
                    bail!(
                        "namespace {} of {}: a VFIO device must report handover_at_pause",
                        n.nsid,
                        s.nqn
                    )
                }
                Handover::Unsupported { reason } => {
                    bail!(
                        "namespace {} of {} cannot be handed over: {reason}",
                        n.nsid,
                        s.nqn
                    )
                }
            };
            bdevs.push((s.nqn.clone(), n.nsid, st));
        }
    }
    Ok((bdevs, fds))
}

/// The VFIO namespaces' pause-time state (the target is drained), their descriptors
/// appended to `fds` (indices as `idx` numbers them).
fn vfio_states(
    target: &Target,
    fds: &mut Vec<OwnedFd>,
    idx: impl Fn(&mut Vec<OwnedFd>, OwnedFd) -> usize,
) -> Result<Vec<VfioPause>> {
    let mut out = Vec::new();
    for s in target.subsystems() {
        for n in s.namespaces() {
            if !n.bdev.handover_at_pause() {
                continue;
            }
            match n.bdev.handover() {
                Handover::Vfio { state, fds: vfds } => {
                    let ix = vfds.into_iter().map(|f| idx(fds, f)).collect();
                    out.push((s.nqn.clone(), n.nsid, state, ix));
                }
                Handover::Unsupported { reason } => bail!(
                    "namespace {} of {} cannot be handed over: {reason}",
                    n.nsid,
                    s.nqn
                ),
                _ => bail!(
                    "namespace {} of {}: unexpected pause-time handover",
                    n.nsid,
                    s.nqn
                ),
            }
        }
    }
    Ok(out)
}

/// Write the boot blob of a serving target (at start, and after a takeover).
pub fn write_boot(run: &Running) -> Result<()> {
    let (bdevs, _) = bdev_states(&run.target)?;
    let boot = Boot {
        version: crate::firmware_revision().to_string(),
        pid: std::process::id(),
        cores: run.cores.clone(),
        idle_spin_us: run.idle_spin_us,
        control_path: run.control_path.clone(),
        state_dir: run.state_dir.as_ref().map(|d| d.display().to_string()),
        bdevs,
    };
    let blob = postcard::to_stdvec(&boot).context("encoding the boot blob")?;
    run.region.write_blob(Blob::Boot, &blob)?;
    Ok(())
}

fn read_boot(region: &Region) -> Result<Boot> {
    let blob = region
        .read_blob(Blob::Boot)?
        .ok_or_else(|| anyhow!("the state region has no boot blob"))?;
    postcard::from_bytes(&blob).context("decoding the boot blob")
}

/// The REACTORS answer: what a successor needs before HELLO, and the descriptors that
/// go with it (the region, then the RAM devices' memfds).
pub fn reactors_answer(run: &Running) -> Result<(String, Vec<OwnedFd>)> {
    let cores: Vec<String> = run
        .cores
        .iter()
        .map(|c| c.map_or("-".to_string(), |c| c.to_string()))
        .collect();
    let spin = run.idle_spin_us.map_or("-".to_string(), |v| v.to_string());
    let (_, mem) = bdev_states(&run.target)?;
    let mut fds = vec![dup(run.region.fd())?];
    fds.extend(mem);
    if fds.len() > FDS_PER_MESSAGE {
        bail!("more RAM and file devices than one message carries");
    }
    Ok((
        format!(
            "OK cores={} idle_spin_us={spin} fds={}",
            cores.join(","),
            fds.len()
        ),
        fds,
    ))
}

/// Take a namespace's block device over. `take` hands out the descriptors that came
/// with REACTORS (RAM memfds, open files) by index, and `vfio` the VFIO controllers'
/// state and descriptors that came with STATE; without them (recovery) a RAM device
/// must live in the state directory and a file is reopened by path. A RAM device in the
/// state directory is reattached by name, so the next handover and `--recover` know
/// where it is.
fn open_bdev(
    nqn: &str,
    nsid: u32,
    st: &BdevState,
    take: Option<&mut dyn FnMut(usize) -> Result<OwnedFd>>,
    vfio: &mut Vec<(String, u32, Box<NvmeVfioHandover>, Vec<OwnedFd>)>,
) -> Result<Arc<dyn Bdev>> {
    let name = format!("ram{nsid}");
    Ok(match (st, take) {
        (
            BdevState::Ram {
                block_size,
                path: Some(p),
                ..
            },
            _,
        ) => {
            let len = std::fs::metadata(p)
                .with_context(|| format!("RAM data of {nqn} nsid {nsid} at {p}"))?
                .len();
            MallocBdev::open_shared(&name, std::path::Path::new(p), len, *block_size)?
        }
        (
            BdevState::Ram {
                fd,
                block_size,
                path: None,
            },
            Some(take),
        ) => MallocBdev::from_memfd(&name, take(*fd)?, *block_size)?,
        (BdevState::Ram { path: None, .. }, None) => {
            bail!("namespace {nsid} of {nqn} was a RAM device outside the state directory: its data did not survive")
        }
        (
            BdevState::File {
                path,
                fd,
                block_size,
                read_only,
                direct,
                queue_depth,
            },
            take,
        ) => {
            let opts = UringOptions {
                block_size: Some(*block_size),
                read_only: *read_only,
                direct: *direct,
                queue_depth: *queue_depth,
            };
            match take {
                Some(take) => UringBdev::adopt(take(*fd)?, path, opts)
                    .with_context(|| format!("namespace {nsid} of {nqn}"))?,
                None => UringBdev::open(std::path::Path::new(path), opts)?,
            }
        }
        (BdevState::Vfio { name }, _) => {
            let Some(i) = vfio.iter().position(|(q, n, _, _)| q == nqn && *n == nsid) else {
                bail!(
                    "namespace {nsid} of {nqn} was the NVMe device {name} through VFIO, which \
                     cannot be recovered without the process that drove it; start from the \
                     configuration"
                );
            };
            let (_, _, state, fds) = vfio.swap_remove(i);
            NvmeVfioBdev::adopt(&state, fds)
                .with_context(|| format!("namespace {nsid} of {nqn}"))?
        }
    })
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

/// Old side: serve one HELLO. Returns only if the handover did not happen (the target
/// keeps serving); on success the process exits.
pub fn hand_over(run: &Running, mut sock: UnixStream, hello: &str) -> Result<()> {
    let _urgent = Urgent::enter();
    let mut it = hello.split_whitespace().skip(1);
    let min: u32 = it
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("malformed HELLO"))?;
    let max: u32 = it
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("malformed HELLO"))?;
    let newver = it.next().unwrap_or("?").to_string();
    if !(min..=max).contains(&run.layout) {
        let why = format!(
            "this target's state has layout {}, the new binary reads {min}..={max}",
            run.layout
        );
        send_line!(sock, "REFUSE {why}")?;
        tracing::warn!(new_version = %newver, "upgrade refused: {why}; still serving");
        return Ok(());
    }
    tracing::info!(new_version = %newver, "upgrade: quiescing");
    let t0 = Instant::now();
    // Each reactor quiesces, and exports and freezes itself as soon as its connections
    // have drained: one round trip, however busy the machine.
    let exported = match run.tcp.quiesce_and_export(1, DRAIN_TIMEOUT) {
        Ok(x) => x,
        Err(e) => {
            // Some reactor could not export (a queue without a record, a descriptor that
            // cannot be duplicated): serve on.
            run.tcp.resume()?;
            let _ = send_line!(
                sock,
                "REFUSE the running target cannot export its state: {e}"
            );
            bail!("upgrade abandoned: {e}; still serving");
        }
    };
    let Some((tcp, fds)) = exported else {
        send_line!(
            sock,
            "REFUSE commands did not finish within {DRAIN_TIMEOUT:?}"
        )?;
        bail!("upgrade abandoned: commands did not finish in time; still serving");
    };
    let t_frozen = t0.elapsed();
    match send_state(run, &sock, tcp, fds) {
        Ok(()) => {}
        Err(e) => {
            run.tcp.resume()?;
            let _ = send_line!(sock, "REFUSE {e:#}");
            return Err(e.context("upgrade abandoned; still serving"));
        }
    }
    let t_sent = t0.elapsed();
    sock.set_read_timeout(Some(ADOPT_TIMEOUT))?;
    let reply = read_line(&mut BufReader::new(&sock)).ok().flatten();
    match reply.as_deref() {
        Some("ADOPTED") => {
            sock.write_all(b"BYE\n")?;
            tracing::info!(
                pause_ms = t0.elapsed().as_secs_f64() * 1e3,
                frozen_ms = t_frozen.as_secs_f64() * 1e3,
                sent_ms = t_sent.as_secs_f64() * 1e3,
                "upgrade: handed over; exiting"
            );
            // The new process owns every socket now: exit without closing anything at
            // the protocol level (the kernel just drops this process's references).
            std::process::exit(0);
        }
        other => {
            run.tcp.resume()?;
            let why = other.unwrap_or("the new process went away");
            bail!("upgrade abandoned ({why}); still serving");
        }
    }
}

/// Descriptor 0 is the region, then listeners and connections (`fds`, exported with
/// base 1), then the rest. The handover blob goes into the region first.
fn send_state(
    run: &Running,
    sock: &UnixStream,
    tcp: TcpState,
    mut fds: Vec<OwnedFd>,
) -> Result<()> {
    let idx = |fds: &mut Vec<OwnedFd>, fd: OwnedFd| {
        fds.push(fd);
        fds.len()
    };
    let control_fd = idx(&mut fds, dup(&run.control)?);
    let stdout_fd = idx(&mut fds, dup(std::io::stdout().as_fd())?);
    let stderr_fd = idx(&mut fds, dup(std::io::stderr().as_fd())?);
    let vfio = vfio_states(&run.target, &mut fds, idx)?;
    let pause = Pause {
        version: crate::firmware_revision().to_string(),
        pid: std::process::id(),
        control_fd,
        stdout_fd,
        stderr_fd,
        tcp,
        vfio,
    };
    let blob = postcard::to_stdvec(&pause).context("encoding the handover blob")?;
    run.region.write_blob(Blob::Handover, &blob)?;
    let mut all: Vec<RawFd> = vec![run.region.fd().as_raw_fd()];
    all.extend(fds.iter().map(|f| f.as_raw_fd()));
    let mut first = true;
    for chunk in all.chunks(FDS_PER_MESSAGE) {
        let line = if first {
            format!("STATE {} {}\n", run.layout, all.len())
        } else {
            "FDS\n".to_string()
        };
        first = false;
        send_with_fds(sock, line.as_bytes(), chunk)?;
    }
    Ok(())
}

/// What the new process prepares before HELLO: its reactors, and (when the running
/// target's region is one it reads) the region mapped, the block devices open and the
/// subsystems rebuilt.
struct Prepared {
    cores: Vec<Option<usize>>,
    spin: Option<u64>,
    reactors: Vec<lightpool_reactor::ReactorHandle>,
    /// `None` when the region is not readable: HELLO goes out anyway and the running
    /// target refuses it with its reason; or when it is deferred.
    early: Option<Early>,
    /// A target with VFIO namespaces is prepared inside the pause, once their state
    /// has come with STATE: the region and the REACTORS descriptors wait here.
    deferred: Option<(Arc<Region>, Vec<Option<OwnedFd>>)>,
}

struct Early {
    region: Arc<Region>,
    boot: Boot,
    target: Arc<Target>,
    config_gen: u64,
    nqns: Vec<String>,
}

/// Ask the running target how its reactors are laid out and for its region, and do
/// everything that does not need it quiesced: start reactors the same way, map the
/// region, open the block devices, rebuild the subsystems and listeners.
fn prepare(path: &str) -> Result<Prepared> {
    let s = UnixStream::connect(path)
        .with_context(|| format!("cannot reach the running target at {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&s).write_all(b"REACTORS\n")?;
    let (line, mut got) = read_answer(&s, "REACTORS")?;
    let rest = line
        .strip_prefix("OK ")
        .ok_or_else(|| anyhow!("unexpected answer to REACTORS: {line:?}"))?;
    let mut cores = Vec::new();
    let mut spin = None;
    let mut nfds = 0usize;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("cores", v)) => {
                for c in v.split(',').filter(|c| !c.is_empty()) {
                    cores.push(if c == "-" {
                        None
                    } else {
                        Some(c.parse().with_context(|| format!("core {c:?}"))?)
                    });
                }
            }
            Some(("idle_spin_us", v)) if v != "-" => spin = Some(v.parse()?),
            Some(("fds", v)) => nfds = v.parse()?,
            _ => {}
        }
    }
    if cores.is_empty() {
        bail!("the running target reported no reactors");
    }
    recv_fds_until(&s, &mut got, nfds)?;
    let mut deferred = None;
    let early = if got.is_empty() {
        bail!("the running target sent no state region (it writes an older layout)");
    } else {
        let mut fds = got.into_iter();
        let region_fd = fds.next().expect("checked not empty");
        match Region::open(std::fs::File::from(region_fd)) {
            Ok(region) => {
                let bdev_fds: Vec<Option<OwnedFd>> = fds.map(Some).collect();
                let boot = read_boot(&region)?;
                if boot
                    .bdevs
                    .iter()
                    .any(|(_, _, b)| matches!(b, BdevState::Vfio { .. }))
                {
                    deferred = Some((region, bdev_fds));
                    None
                } else {
                    Some(prepare_target(region, bdev_fds, Vec::new())?)
                }
            }
            Err(RegionError::Layout { found }) => {
                tracing::warn!(
                    layout = found,
                    "the running target's state layout is not one this binary reads"
                );
                None
            }
            Err(e) => return Err(e).context("the running target's state region"),
        }
    };
    let reactors = crate::spawn_reactors(&cores, spin)?;
    Ok(Prepared {
        cores,
        spin,
        reactors,
        early,
        deferred,
    })
}

/// Open the block devices and rebuild subsystems and listeners from the region's
/// records (no controllers yet: they are read inside the pause).
fn prepare_target(
    region: Arc<Region>,
    mut bdev_fds: Vec<Option<OwnedFd>>,
    mut vfio: Vec<(String, u32, Box<NvmeVfioHandover>, Vec<OwnedFd>)>,
) -> Result<Early> {
    let boot = read_boot(&region)?;
    // Once in full, so the pages the pause reads are mapped already (the result may be
    // stale or caught mid-write: it is read again inside the pause).
    let _ = objects::read_image(&region, true);
    let image = objects::read_image(&region, false)?;
    let mut devs: Vec<(String, u32, Arc<dyn Bdev>)> = Vec::new();
    let mut take = |i: usize| {
        bdev_fds
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("block device descriptor {i} did not come with REACTORS"))
    };
    for (nqn, nsid, st) in &boot.bdevs {
        let b = open_bdev(nqn, *nsid, st, Some(&mut take), &mut vfio)?;
        devs.push((nqn.clone(), *nsid, b));
    }
    let (target, _) =
        Target::import_state(&image.target, crate::firmware_revision(), |nqn, nsid| {
            devs.iter()
                .find(|(q, n, _)| q == nqn && *n == nsid)
                .map(|(_, _, b)| b.clone())
                .ok_or_else(|| {
                    NvmfError::Invalid(format!("no block device handed over for {nqn} nsid {nsid}"))
                })
        })?;
    Ok(Early {
        nqns: image
            .target
            .subsystems
            .iter()
            .map(|s| s.nqn.clone())
            .collect(),
        config_gen: image.config_gen,
        region,
        boot,
        target,
    })
}

/// New side: take over from the target serving `path`. On success the old process has
/// exited and this one serves every connection it had.
pub fn take_over(path: &str) -> Result<Running> {
    let p = prepare(path)?;
    let reactors = p.reactors.clone();
    match take_over_with(path, p) {
        Ok(r) => Ok(r),
        Err(e) => {
            for r in &reactors {
                r.stop();
            }
            Err(e)
        }
    }
}

fn take_over_with(path: &str, p: Prepared) -> Result<Running> {
    let _urgent = Urgent::enter();
    let t0 = Instant::now();
    let sock = UnixStream::connect(path)
        .with_context(|| format!("cannot reach the running target at {path}"))?;
    let mut w = &sock;
    send_line!(
        w,
        "HELLO {} {} {}",
        READABLE_LAYOUTS.start(),
        READABLE_LAYOUTS.end(),
        crate::firmware_revision()
    )?;
    let (first, mut got) = read_answer(&sock, "HELLO")?;
    if let Some(why) = first.strip_prefix("REFUSE ") {
        bail!("the running target refused the upgrade: {why}");
    }
    let mut words = first.split_whitespace();
    let total: usize = match (words.next(), words.nth(1).and_then(|v| v.parse().ok())) {
        (Some("STATE"), Some(t)) => t,
        _ => bail!("unexpected answer from the running target: {first:?}"),
    };
    recv_fds_until(&sock, &mut got, total)?;
    if std::env::var("LIGHTPOOL_TEST_CRASH_AT").as_deref() == Ok("adopt") {
        // Test hook: die in the middle of adoption; the old process must resume.
        std::process::abort();
    }
    let t_state = t0.elapsed();
    let mut fds: Vec<Option<OwnedFd>> = got.into_iter().map(Some).collect();
    match adopt(p, &mut fds, t0, t_state, &sock) {
        Ok(run) => Ok(run),
        Err(e) => {
            let _ = send_line!(w, "REFUSE {e:#}");
            Err(e)
        }
    }
}

/// The running target's one-line answer to `what`, gathered whole (it may arrive in
/// pieces), and the descriptors that came with it.
fn read_answer(s: &UnixStream, what: &str) -> Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    let mut got = Vec::new();
    while !head.contains(&b'\n') {
        let (n, fds) = recv_with_fds(s, &mut buf)?;
        if n == 0 {
            bail!("the running target closed the control connection without answering {what}");
        }
        head.extend_from_slice(&buf[..n]);
        got.extend(fds);
    }
    Ok((String::from_utf8_lossy(&head).trim_end().to_string(), got))
}

/// Receive descriptors (in further messages) until `got` holds `total`.
fn recv_fds_until(s: &UnixStream, got: &mut Vec<OwnedFd>, total: usize) -> Result<()> {
    let mut buf = [0u8; 4096];
    while got.len() < total {
        let (n, more) = recv_with_fds(s, &mut buf)?;
        if n == 0 && more.is_empty() {
            bail!(
                "the running target went away after sending {} of {total} descriptors",
                got.len()
            );
        }
        got.extend(more);
    }
    Ok(())
}

/// Whether two descriptors are the same file.
fn same_file(a: &impl AsFd, b: &impl AsFd) -> Result<bool> {
    let st = |f: &dyn AsFd| -> Result<(u64, u64)> {
        // SAFETY: stat is plain data; fstat fills it for a descriptor we hold.
        let mut s: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(f.as_fd().as_raw_fd(), &mut s) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok((s.st_dev, s.st_ino))
    };
    Ok(st(a)? == st(b)?)
}

fn adopt(
    p: Prepared,
    fds: &mut [Option<OwnedFd>],
    t0: Instant,
    t_state: Duration,
    sock: &UnixStream,
) -> Result<Running> {
    let mut take = |i: usize| {
        fds.get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("descriptor {i} is missing"))
    };
    let region_fd = take(0).context("no state region")?;
    let early = match (p.early, p.deferred) {
        (Some(early), _) => early,
        (None, Some((region, bdev_fds))) => {
            // VFIO namespaces: their controllers' state came with STATE; open every
            // device and rebuild the subsystems now.
            if !same_file(&region_fd, &region.fd())? {
                bail!("the running target handed over another state region than it announced");
            }
            let pause: Pause = postcard::from_bytes(
                &region
                    .read_blob(Blob::Handover)?
                    .ok_or_else(|| anyhow!("the running target wrote no handover blob"))?,
            )
            .context("decoding the handover blob")?;
            let mut vfio = Vec::new();
            for (nqn, nsid, st, ix) in pause.vfio {
                let fds = ix.iter().map(|&i| take(i)).collect::<Result<Vec<_>>>()?;
                vfio.push((nqn, nsid, st, fds));
            }
            prepare_target(region, bdev_fds, vfio)?
        }
        (None, None) => {
            // Not prepared: the layout is one this binary does not read (the running
            // target should have refused HELLO already).
            Region::open(std::fs::File::from(region_fd))
                .context("cannot read the running target's state")?;
            bail!("the running target's state region could not be prepared");
        }
    };
    if !same_file(&region_fd, &early.region.fd())? {
        bail!("the running target handed over another state region than it announced");
    }
    let region = early.region;
    let pause: Pause = postcard::from_bytes(
        &region
            .read_blob(Blob::Handover)?
            .ok_or_else(|| anyhow!("the running target wrote no handover blob"))?,
    )
    .context("decoding the handover blob")?;
    if early.boot.cores != p.cores || early.boot.idle_spin_us != p.spin {
        bail!("the reactors changed between REACTORS and HELLO");
    }
    let image = objects::read_image(&region, true)?;
    let nqns: Vec<&String> = image.target.subsystems.iter().map(|s| &s.nqn).collect();
    if nqns != early.nqns.iter().collect::<Vec<_>>() {
        bail!("the running target's subsystems changed while this binary prepared");
    }
    if image.config_gen != early.config_gen {
        tracing::info!(
            "the configuration (ANA states) changed while this binary prepared; read again"
        );
    }
    let target = early.target;
    let ctrlrs = target.import_live(&image.with_controllers())?;
    objects::bind(&target, &region, &image)?;
    let t_target = t0.elapsed();
    let image = Arc::new(image);
    let tcp = TcpTransport::adopt(
        target.clone(),
        p.reactors.clone(),
        region.clone(),
        image.clone(),
        &pause.tcp,
        fds,
    )?;
    let t_adopt = t0.elapsed();
    let mut take = |i: usize| {
        fds.get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("descriptor {i} is missing"))
    };
    let control = UnixListener::from(take(pause.control_fd)?);
    let out = take(pause.stdout_fd)?;
    let err = take(pause.stderr_fd)?;

    let mut w = sock;
    w.write_all(b"ADOPTED\n")?;
    let bye = read_line(&mut BufReader::new(sock))?;
    if bye.as_deref() != Some("BYE") {
        for r in &p.reactors {
            r.stop();
        }
        bail!("the running target did not let go ({bye:?}); it keeps serving");
    }
    let t_bye = t0.elapsed();
    if std::env::var("LIGHTPOOL_TEST_CRASH_AT").as_deref() == Ok("after-bye") {
        // Test hook: die after the old process has let go; `--recover` must restore.
        std::process::abort();
    }
    region.take_ownership();
    // The old process has let go: the devices are ours alone (an adopted VFIO
    // controller may now delete queues, unmap memory and shut down when dropped).
    for s in target.subsystems() {
        for n in s.namespaces() {
            n.bdev.adopted();
        }
    }
    let adopted: Vec<u32> = pause
        .tcp
        .conns
        .iter()
        .map(|(c, _, _)| c.queue_record())
        .collect();
    let swept = objects::sweep(&target, &region, &adopted);
    tcp.release()?;
    drop(ctrlrs);
    let pause_t = t0.elapsed();
    tracing::info!(
        state_ms = t_state.as_secs_f64() * 1e3,
        target_ms = t_target.as_secs_f64() * 1e3,
        adopt_ms = t_adopt.as_secs_f64() * 1e3,
        bye_ms = t_bye.as_secs_f64() * 1e3,
        swept,
        "upgrade: steps (since HELLO)"
    );
    println!(
        "lightpool-target {}: took over from {} (pid {}): {} connection(s), {} listener(s), {} command(s) held or receiving; pause {:.3} ms",
        crate::firmware_revision(),
        pause.version,
        pause.pid,
        pause.tcp.conns.len(),
        pause.tcp.listeners.len(),
        pause.tcp.conns.iter().map(|(c, _, _)| c.commands()).sum::<usize>(),
        pause_t.as_secs_f64() * 1e3
    );
    std::io::stdout().flush().ok();
    // From here on, log where the previous process logged.
    // SAFETY: dup2 onto our own stdout/stderr with descriptors we own.
    unsafe {
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(err.as_raw_fd(), 2);
    }
    let run = Running {
        target,
        reactors: p.reactors,
        tcp,
        cores: early.boot.cores,
        idle_spin_us: early.boot.idle_spin_us,
        control,
        control_path: early.boot.control_path,
        layout: STATE_LAYOUT,
        state_dir: early.boot.state_dir.map(std::path::PathBuf::from),
        region,
    };
    if let Err(e) = write_boot(&run) {
        tracing::warn!(error = format!("{e:#}"), "boot blob not rewritten");
    }
    Ok(run)
}

/// Start from the region in `dir` after the processes that wrote it died: the same
/// subsystems, namespaces (RAM data from the state directory's files), ANA states and
/// listeners, in a fresh region. Controllers and queues are read, checked and reported,
/// then dropped: their connections died with the processes, and hosts reconnect.
pub fn recover(dir: &std::path::Path, control_path: &str) -> Result<Running> {
    let path = dir.join(REGION_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("no state region to recover from at {}", path.display()))?;
    let old = Region::open(f).with_context(|| format!("reading {}", path.display()))?;
    let boot = read_boot(&old).with_context(|| format!("reading {}", path.display()))?;
    let mut image = objects::read_image(&old, true)
        .with_context(|| format!("reading the records of {}", path.display()))?;
    let in_flight: usize = image.queues.iter().map(|q| q.busy.len()).sum();
    let dropped = (image.controllers.len(), image.queues.len());
    tracing::info!(
        controllers = image.controllers.len(),
        queues = image.queues.len(),
        commands_in_flight = in_flight,
        writer_pid = old.owner_pid(),
        "recovery: controller and queue records read and checked; dropped (their connections died with the processes)"
    );
    for q in &image.queues {
        tracing::info!(
            record = q.rec,
            cntlid = q.stat.cntlid,
            qid = q.stat.qid,
            entries = q.stat.entries,
            sqhd = q.sqhd,
            in_flight = q.busy.len(),
            rx_state = q.rx.kind,
            "recovery: dropped queue"
        );
    }
    let mut devs: Vec<(String, u32, Arc<dyn Bdev>)> = Vec::new();
    for (nqn, nsid, st) in &boot.bdevs {
        devs.push((
            nqn.clone(),
            *nsid,
            open_bdev(nqn, *nsid, st, None, &mut Vec::new())?,
        ));
    }
    image.controllers.clear();
    let listeners = std::mem::take(&mut image.target.listeners);
    let (target, _) =
        Target::import_state(&image.target, crate::firmware_revision(), |nqn, nsid| {
            devs.iter()
                .find(|(q, n, _)| q == nqn && *n == nsid)
                .map(|(_, _, b)| b.clone())
                .ok_or_else(|| NvmfError::Invalid(format!("no block device for {nqn} nsid {nsid}")))
        })?;
    let region = create_region(&target.opts, Some(dir), STATE_LAYOUT)?;
    drop(old);
    target.attach_region(region.clone())?;
    let control = crate::control::bind(control_path)?;
    let reactors = crate::spawn_reactors(&boot.cores, boot.idle_spin_us)?;
    let tcp = TcpTransport::new(target.clone(), reactors.clone())?;
    for l in &listeners {
        let addr: std::net::SocketAddr = format!("{}:{}", l.traddr, l.trsvcid)
            .parse()
            .or_else(|_| format!("[{}]:{}", l.traddr, l.trsvcid).parse())
            .with_context(|| format!("listener {}:{}", l.traddr, l.trsvcid))?;
        tcp.listen(addr)?;
    }
    println!(
        "lightpool-target {}: recovered {} subsystem(s) from {} (left by {} pid {}); dropped {} controller(s) and {} queue(s)",
        crate::firmware_revision(),
        image.target.subsystems.len(),
        path.display(),
        boot.version,
        boot.pid,
        dropped.0,
        dropped.1,
    );
    let run = Running {
        target,
        reactors,
        tcp,
        cores: boot.cores,
        idle_spin_us: boot.idle_spin_us,
        control,
        control_path: control_path.to_string(),
        layout: STATE_LAYOUT,
        state_dir: Some(dir.to_path_buf()),
        region,
    };
    write_boot(&run)?;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_nvme_vfio::{
        AdminState, ContainerState, ControllerInfo, ControllerOptions, ControllerState, MemState,
        NamespaceInfo, QueueState,
    };

    fn mem(iova: u64) -> MemState {
        MemState {
            len: 2 << 20,
            iova,
            backing: lightpool_dma::Backing::Hugepages {
                mount: "/dev/hugepages".into(),
                page_size: 2 << 20,
            },
        }
    }

    fn vfio_state() -> NvmeVfioHandover {
        NvmeVfioHandover {
            ns: NamespaceInfo {
                nsid: 1,
                num_blocks: 524288,
                block_size: 512,
                metadata_size: 0,
                deallocate_reads_zeroes: true,
                write_protected: false,
            },
            pool_buf_size: 128 << 10,
            pool_count: 256,
            pool_mem: mem(1 << 32),
            container: ContainerState {
                groups: vec![7],
                next_iova: (1 << 32) + (40 << 20),
                free_iovas: vec![((1 << 32) + (36 << 20), 2 << 20)],
            },
            controller: ControllerState {
                addr: "0000:00:04.0".into(),
                group: 7,
                cap: 0x0020_0000_2001_07ff,
                info: ControllerInfo {
                    vid: 0x1b36,
                    serial: "LPVFIO0001".into(),
                    model: "QEMU NVMe Ctrl".into(),
                    firmware: "9.0".into(),
                    max_transfer: Some(512 << 10),
                    nn: 256,
                    oncs: 0x15d,
                    volatile_write_cache: true,
                    io_queues: 64,
                    io_queue_depth: 256,
                },
                opts: ControllerOptions::default(),
                admin: AdminState {
                    sq_tail: 9,
                    sq_head: 9,
                    cq_head: 9,
                    cq_phase: true,
                    cid: 9,
                    mem: mem((1 << 32) + (32 << 20)),
                },
                io_queues: vec![QueueState {
                    qid: 1,
                    depth: 256,
                    sq_tail: 200,
                    sq_head: 200,
                    cq_head: 200,
                    cq_phase: false,
                    mem: mem((1 << 32) + (34 << 20)),
                    cq_off: 16384,
                    prp_off: 20480,
                }],
                enables: 1,
            },
        }
    }

    /// The boot blob carries file descriptors' indices, the handover blob a VFIO
    /// controller's whole state, through encoding and decoding.
    #[test]
    fn blobs_round_trip_with_file_and_vfio_namespaces() {
        let boot = Boot {
            version: "0.1.0".into(),
            pid: 42,
            cores: vec![Some(0), None],
            idle_spin_us: None,
            control_path: "/tmp/x.sock".into(),
            state_dir: None,
            bdevs: vec![
                (
                    "nqn.a".into(),
                    1,
                    BdevState::File {
                        path: "/srv/a.img".into(),
                        fd: 4,
                        block_size: 4096,
                        read_only: false,
                        direct: true,
                        queue_depth: 128,
                    },
                ),
                (
                    "nqn.a".into(),
                    2,
                    BdevState::Vfio {
                        name: "0000:00:04.0".into(),
                    },
                ),
            ],
        };
        let back: Boot = postcard::from_bytes(&postcard::to_stdvec(&boot).unwrap()).unwrap();
        match &back.bdevs[0].2 {
            BdevState::File { fd, path, .. } => {
                assert_eq!((*fd, path.as_str()), (4, "/srv/a.img"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&back.bdevs[1].2, BdevState::Vfio { name } if name == "0000:00:04.0"));
        let pause = Pause {
            version: "0.1.0".into(),
            pid: 42,
            control_fd: 1,
            stdout_fd: 2,
            stderr_fd: 3,
            tcp: TcpState {
                listeners: Vec::new(),
                conns: Vec::new(),
            },
            vfio: vec![(
                "nqn.a".into(),
                2,
                Box::new(vfio_state()),
                vec![5, 6, 7, 8, 9, 10],
            )],
        };
        let back: Pause = postcard::from_bytes(&postcard::to_stdvec(&pause).unwrap()).unwrap();
        let (nqn, nsid, state, fds) = &back.vfio[0];
        assert_eq!((nqn.as_str(), *nsid), ("nqn.a", 2));
        assert_eq!(**state, vfio_state());
        assert_eq!(fds, &[5, 6, 7, 8, 9, 10]);
    }

    /// Without the process that drove it, a VFIO namespace cannot be recovered: the
    /// error says so and names the device.
    #[test]
    fn vfio_namespaces_are_not_recovered() {
        let e = open_bdev(
            "nqn.a",
            2,
            &BdevState::Vfio {
                name: "0000:00:04.0".into(),
            },
            None,
            &mut Vec::new(),
        )
        .err()
        .expect("refused");
        let e = format!("{e:#}");
        assert!(
            e.contains("0000:00:04.0") && e.contains("start from the configuration"),
            "{e}"
        );
    }
}
