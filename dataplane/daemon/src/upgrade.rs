//! Hot upgrade: the running target hands its state and every descriptor to a new binary
//! over its control socket, and the new one carries on with the same connections.
//!
//! Protocol (lines over the Unix control socket; descriptors by SCM_RIGHTS):
//!
//! ```text
//! new -> old   HELLO <min layout> <max layout> <version>
//! old -> new   REFUSE <reason>                      (layout unreadable; old keeps serving)
//!           |  STATE <layout> <fd count>  + fds     (old has quiesced and frozen)
//!              FDS + fds ...                        (further batches of descriptors)
//! new -> old   ADOPTED | REFUSE <reason>
//! old -> new   BYE                                  (old exits; new starts polling)
//! ```
//!
//! Until it says BYE the old process can always take back its frozen state and resume:
//! when the new one refuses, dies (end of stream) or is too slow. After BYE the old one
//! has let go for good; every acknowledged write is in the block devices (RAM devices
//! live in memfds the new process maps), so nothing acknowledged is lost either way.

use std::io::{BufReader, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lightpool_bdev::{
    Bdev, Handover, MallocBdev, NvmeVfioBdev, NvmeVfioHandover, UringBdev, UringOptions,
};
use lightpool_nvmf::state::TargetState;
use lightpool_nvmf::{NvmfError, Target};
use lightpool_transport_tcp::{TcpState, TcpTransport};
use serde::{Deserialize, Serialize};

use crate::fdpass::{read_line, recv_with_fds, send_with_fds, FDS_PER_MESSAGE};
use crate::Running;

/// The layout of the state region this binary writes. 2: file namespaces carry their
/// open descriptor, VFIO namespaces their controller state.
pub const STATE_LAYOUT: u32 = 2;
/// The layouts this binary can read.
pub const READABLE_LAYOUTS: std::ops::RangeInclusive<u32> = 1..=2;

const MAGIC: &[u8; 8] = b"LPSTATE\0";
const HEADER: usize = 32;
/// How long the old process waits for running commands to finish before it gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old process waits for the new one to adopt the state.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How the new process gets each namespace's block device.
#[derive(Debug, Serialize, Deserialize)]
enum BdevState {
    Ram {
        fd: usize,
        block_size: u32,
        path: Option<String>,
    },
    /// A file or block device: its open descriptor when handed over (absent in layout
    /// 1, which reopened by path); `path` for recovery.
    File {
        path: String,
        fd: Option<usize>,
        block_size: u32,
        read_only: bool,
        direct: bool,
        queue_depth: u32,
    },
    /// An NVMe namespace through VFIO: the controller's state and its descriptors.
    Vfio {
        state: Box<NvmeVfioHandover>,
        fds: Vec<usize>,
    },
}

/// Layout 1, read when the running target is an older binary.
mod v1;

/// Everything in the region.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    layout: u32,
    version: String,
    pid: u32,
    cores: Vec<Option<usize>>,
    idle_spin_us: Option<u64>,
    control_path: String,
    control_fd: usize,
    stdout_fd: usize,
    stderr_fd: usize,
    state_dir: Option<String>,
    target: TargetState,
    tcp: TcpState,
    bdevs: Vec<(String, u32, BdevState)>,
}

/// Name of the region file a handover leaves in the state directory.
pub const REGION_FILE: &str = "state.region";

fn write_region(snap: &Snapshot, layout: u32) -> Result<OwnedFd> {
    let body = bincode::serialize(snap).context("encoding the state")?;
    let mut hdr = [0u8; HEADER];
    hdr[..8].copy_from_slice(MAGIC);
    hdr[8..12].copy_from_slice(&layout.to_le_bytes());
    hdr[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    hdr[24..28].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let name = std::ffi::CString::new("lightpool-state").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("creating the state region");
    }
    // SAFETY: raw is a new descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(raw) };
    f.write_all(&hdr)?;
    f.write_all(&body)?;
    Ok(f.into())
}

/// Read and check a region: magic, a layout this binary reads, length and checksum.
fn read_region(fd: OwnedFd) -> Result<Snapshot> {
    let mut f = std::fs::File::from(fd);
    f.rewind()?;
    let mut hdr = [0u8; HEADER];
    f.read_exact(&mut hdr)
        .context("the state region is shorter than its header")?;
    if &hdr[..8] != MAGIC {
        bail!("the state region does not start with the LightPool magic");
    }
    let layout = u32::from_le_bytes(hdr[8..12].try_into().expect("4 bytes"));
    if !READABLE_LAYOUTS.contains(&layout) {
        bail!(
            "state layout {layout} cannot be read by this binary (it reads {READABLE_LAYOUTS:?})"
        );
    }
    let len = u64::from_le_bytes(hdr[16..24].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(hdr[24..28].try_into().expect("4 bytes"));
    let mut body = Vec::new();
    f.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len || crc32c::crc32c(&body) != crc {
        bail!("the state region is damaged (length or checksum does not match)");
    }
    let snap: Snapshot = if layout == 1 {
        bincode::deserialize::<v1::Snapshot>(&body)
            .context("decoding the state (layout 1)")?
            .into()
    } else {
        bincode::deserialize(&body).context("decoding the state")?
    };
    Ok(snap)
}

/// Take a namespace's block device over. `take` hands out the descriptors that came
/// with a handover (by index); without it (recovery from the state directory) a RAM
/// device must live in the state directory and a file is reopened by path. A RAM device
/// in the state directory is reattached by name, so the next handover and `--recover`
/// know where it is.
fn open_bdev(
    nqn: &str,
    nsid: u32,
    st: &BdevState,
    take: Option<&mut dyn FnMut(usize) -> Result<OwnedFd>>,
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
            match (fd, take) {
                (Some(fd), Some(take)) => UringBdev::adopt(take(*fd)?, path, opts)
                    .with_context(|| format!("namespace {nsid} of {nqn}"))?,
                _ => UringBdev::open(std::path::Path::new(path), opts)?,
            }
        }
        (BdevState::Vfio { state, fds }, Some(take)) => {
            let fds = fds.iter().map(|&i| take(i)).collect::<Result<Vec<_>>>()?;
            NvmeVfioBdev::adopt(state, fds).with_context(|| format!("namespace {nsid} of {nqn}"))?
        }
        (BdevState::Vfio { state, .. }, None) => bail!(
            "namespace {nsid} of {nqn} was the NVMe device {} through VFIO, which cannot be \
             recovered without the process that drove it; start from the configuration",
            state.controller.addr
        ),
    })
}

fn dup(fd: impl AsFd) -> Result<OwnedFd> {
    Ok(fd.as_fd().try_clone_to_owned()?)
}

/// Old side: serve one HELLO. Returns only if the handover did not happen (the target
/// keeps serving); on success the process exits.
pub fn hand_over(run: &Running, mut sock: UnixStream, hello: &str) -> Result<()> {
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
    let Some((tcp, fds)) = run.tcp.quiesce_and_export(1, DRAIN_TIMEOUT)? else {
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
/// base 1), then the rest.
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
    let mut bdevs = Vec::new();
    for s in run.target.subsystems() {
        for n in s.namespaces() {
            let st = match n.bdev.handover() {
                Handover::Ram {
                    memfd,
                    block_size,
                    path,
                } => BdevState::Ram {
                    fd: idx(&mut fds, dup(memfd)?),
                    block_size,
                    path,
                },
                Handover::File {
                    path,
                    fd,
                    block_size,
                    read_only,
                    direct,
                    queue_depth,
                } => BdevState::File {
                    path,
                    fd: Some(idx(&mut fds, dup(fd)?)),
                    block_size,
                    read_only,
                    direct,
                    queue_depth,
                },
                Handover::Vfio { state, fds: vfds } => BdevState::Vfio {
                    state,
                    fds: vfds.into_iter().map(|f| idx(&mut fds, f)).collect(),
                },
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
    let snap = Snapshot {
        layout: run.layout,
        version: crate::firmware_revision().to_string(),
        pid: std::process::id(),
        cores: run.cores.clone(),
        idle_spin_us: run.idle_spin_us,
        control_path: run.control_path.clone(),
        control_fd,
        stdout_fd,
        stderr_fd,
        state_dir: run.state_dir.as_ref().map(|d| d.display().to_string()),
        target: run.target.export_state(),
        tcp,
        bdevs,
    };
    let region = write_region(&snap, run.layout)?;
    if let Some(dir) = &run.state_dir {
        // A copy that outlives both processes: `--recover` starts from it if the new
        // one dies after the old one has let go.
        let tmp = dir.join(format!("{REGION_FILE}.tmp"));
        let mut src = std::fs::File::from(dup(&region)?);
        src.rewind()?;
        let mut dst =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
        std::fs::rename(&tmp, dir.join(REGION_FILE))?;
    }
    let mut all: Vec<RawFd> = vec![region.as_raw_fd()];
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

/// New side: take over from the target serving `path`. On success the old process has
/// exited and this one serves every connection it had.
/// Cores, idle spin and the handles of reactors started ahead of a takeover.
type Prestarted = (
    Vec<Option<usize>>,
    Option<u64>,
    Vec<lightpool_reactor::ReactorHandle>,
);

/// Ask the running target how its reactors are laid out, and start ours the same way
/// before the handover begins, so that starting threads is not part of the pause.
fn prestart_reactors(path: &str) -> Result<Prestarted> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("cannot reach the running target at {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"REACTORS\n")?;
    let line = read_line(&mut BufReader::new(&s))?.unwrap_or_default();
    let rest = line
        .strip_prefix("OK ")
        .ok_or_else(|| anyhow!("unexpected answer to REACTORS: {line:?}"))?;
    let mut cores = Vec::new();
    let mut spin = None;
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
            _ => {}
        }
    }
    if cores.is_empty() {
        bail!("the running target reported no reactors");
    }
    let reactors = crate::spawn_reactors(&cores, spin)?;
    Ok((cores, spin, reactors))
}

pub fn take_over(path: &str) -> Result<Running> {
    let (cores, spin, reactors) = prestart_reactors(path)?;
    let stop = |reactors: &[lightpool_reactor::ReactorHandle]| {
        for r in reactors {
            r.stop();
        }
    };
    match take_over_with(path, &cores, spin, reactors.clone()) {
        Ok(r) => Ok(r),
        Err(e) => {
            stop(&reactors);
            Err(e)
        }
    }
}

fn take_over_with(
    path: &str,
    cores: &[Option<usize>],
    spin: Option<u64>,
    reactors: Vec<lightpool_reactor::ReactorHandle>,
) -> Result<Running> {
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
    let mut buf = [0u8; 4096];
    // The first line (REFUSE or STATE) may arrive in pieces: gather it whole.
    let mut head = Vec::new();
    let mut got = Vec::new();
    while !head.contains(&b'\n') {
        let (n, fds) = recv_with_fds(&sock, &mut buf)?;
        if n == 0 {
            bail!("the running target closed the control connection without answering");
        }
        head.extend_from_slice(&buf[..n]);
        got.extend(fds);
    }
    let first = String::from_utf8_lossy(&head).trim_end().to_string();
    if let Some(why) = first.strip_prefix("REFUSE ") {
        bail!("the running target refused the upgrade: {why}");
    }
    let mut words = first.split_whitespace();
    let total: usize = match (words.next(), words.nth(1).and_then(|v| v.parse().ok())) {
        (Some("STATE"), Some(t)) => t,
        _ => bail!("unexpected answer from the running target: {first:?}"),
    };
    while got.len() < total {
        let (n, more) = recv_with_fds(&sock, &mut buf)?;
        if n == 0 {
            bail!("the running target went away during the handover");
        }
        got.extend(more);
    }
    if std::env::var("LIGHTPOOL_TEST_CRASH_AT").as_deref() == Ok("adopt") {
        // Test hook: die in the middle of adoption; the old process must resume.
        std::process::abort();
    }
    let t_state = t0.elapsed();
    let mut fds: Vec<Option<OwnedFd>> = got.into_iter().map(Some).collect();
    let snap = match fds[0]
        .take()
        .ok_or_else(|| anyhow!("no state region"))
        .and_then(read_region)
    {
        Ok(s) => s,
        Err(e) => {
            let _ = send_line!(w, "REFUSE {e:#}");
            return Err(e.context("cannot read the running target's state"));
        }
    };
    tracing::debug!(
        state_ms = t_state.as_secs_f64() * 1e3,
        "upgrade: state received"
    );
    if snap.cores != cores || snap.idle_spin_us != spin {
        let why = "the reactors changed between REACTORS and HELLO";
        let _ = send_line!(w, "REFUSE {why}");
        bail!("{why}");
    }
    match adopt(snap, &mut fds, t0, &sock, reactors) {
        Ok(run) => Ok(run),
        Err(e) => {
            let _ = send_line!(w, "REFUSE {e:#}");
            Err(e)
        }
    }
}

fn adopt(
    snap: Snapshot,
    fds: &mut [Option<OwnedFd>],
    t0: Instant,
    sock: &UnixStream,
    reactors: Vec<lightpool_reactor::ReactorHandle>,
) -> Result<Running> {
    let mut take = |i: usize| {
        fds.get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("descriptor {i} is missing"))
    };
    let mut devs: Vec<(String, u32, Arc<dyn Bdev>)> = Vec::new();
    for (nqn, nsid, st) in &snap.bdevs {
        devs.push((
            nqn.clone(),
            *nsid,
            open_bdev(nqn, *nsid, st, Some(&mut take))?,
        ));
    }
    let (target, ctrlrs) =
        Target::import_state(&snap.target, crate::firmware_revision(), |nqn, nsid| {
            devs.iter()
                .find(|(q, n, _)| q == nqn && *n == nsid)
                .map(|(_, _, b)| b.clone())
                .ok_or_else(|| {
                    NvmfError::Invalid(format!("no block device handed over for {nqn} nsid {nsid}"))
                })
        })?;
    let t_target = t0.elapsed();
    // The reactors were started before HELLO (prestart_reactors).
    let t_reactors = t0.elapsed();
    let tcp = TcpTransport::adopt(target.clone(), reactors.clone(), &snap.tcp, fds)?;
    let t_adopt = t0.elapsed();
    let mut take = |i: usize| {
        fds.get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("descriptor {i} is missing"))
    };
    let control = UnixListener::from(take(snap.control_fd)?);
    let out = take(snap.stdout_fd)?;
    let err = take(snap.stderr_fd)?;

    let mut w = sock;
    w.write_all(b"ADOPTED\n")?;
    let bye = read_line(&mut BufReader::new(sock))?;
    if bye.as_deref() != Some("BYE") {
        for r in &reactors {
            r.stop();
        }
        bail!("the running target did not let go ({bye:?}); it keeps serving");
    }
    let t_bye = t0.elapsed();
    if std::env::var("LIGHTPOOL_TEST_CRASH_AT").as_deref() == Ok("after-bye") {
        // Test hook: die after the old process has let go; `--recover` must restore.
        std::process::abort();
    }
    // The old process has let go: the devices are ours alone (an adopted VFIO
    // controller may now delete queues, unmap memory and shut down when dropped).
    for (_, _, b) in &devs {
        b.adopted();
    }
    tcp.release()?;
    drop(ctrlrs);
    let pause = t0.elapsed();
    tracing::info!(
        target_ms = t_target.as_secs_f64() * 1e3,
        reactors_ms = t_reactors.as_secs_f64() * 1e3,
        adopt_ms = t_adopt.as_secs_f64() * 1e3,
        bye_ms = t_bye.as_secs_f64() * 1e3,
        "upgrade: steps (since HELLO)"
    );
    println!(
        "lightpool-target {}: took over from {} (pid {}): {} connection(s), {} listener(s); pause {:.3} ms",
        crate::firmware_revision(),
        snap.version,
        snap.pid,
        snap.tcp.conns.len(),
        snap.tcp.listeners.len(),
        pause.as_secs_f64() * 1e3
    );
    std::io::stdout().flush().ok();
    // From here on, log where the previous process logged.
    // SAFETY: dup2 onto our own stdout/stderr with descriptors we own.
    unsafe {
        libc::dup2(out.as_raw_fd(), 1);
        libc::dup2(err.as_raw_fd(), 2);
    }
    Ok(Running {
        target,
        reactors,
        tcp,
        cores: snap.cores,
        idle_spin_us: snap.idle_spin_us,
        control,
        control_path: snap.control_path,
        layout: STATE_LAYOUT,
        state_dir: snap.state_dir.map(std::path::PathBuf::from),
    })
}

/// Start from the region a handover left in `dir`, after both processes died: the same
/// subsystems, namespaces (RAM data from the state directory's files), ANA states and
/// listeners. Controllers and connections are gone with the processes; hosts reconnect.
pub fn recover(dir: &std::path::Path, control_path: &str) -> Result<Running> {
    let path = dir.join(REGION_FILE);
    let f = std::fs::File::open(&path)
        .with_context(|| format!("no state region to recover from at {}", path.display()))?;
    let mut snap = read_region(f.into()).with_context(|| format!("reading {}", path.display()))?;
    let mut devs: Vec<(String, u32, Arc<dyn Bdev>)> = Vec::new();
    for (nqn, nsid, st) in &snap.bdevs {
        devs.push((nqn.clone(), *nsid, open_bdev(nqn, *nsid, st, None)?));
    }
    for s in &mut snap.target.subsystems {
        s.controllers.clear();
    }
    snap.target.discovery_controllers.clear();
    let listeners = std::mem::take(&mut snap.target.listeners);
    let (target, _) =
        Target::import_state(&snap.target, crate::firmware_revision(), |nqn, nsid| {
            devs.iter()
                .find(|(q, n, _)| q == nqn && *n == nsid)
                .map(|(_, _, b)| b.clone())
                .ok_or_else(|| NvmfError::Invalid(format!("no block device for {nqn} nsid {nsid}")))
        })?;
    let control = crate::control::bind(control_path)?;
    let reactors = crate::spawn_reactors(&snap.cores, snap.idle_spin_us)?;
    let tcp = TcpTransport::new(target.clone(), reactors.clone())?;
    for l in &listeners {
        let addr: std::net::SocketAddr = format!("{}:{}", l.traddr, l.trsvcid)
            .parse()
            .or_else(|_| format!("[{}]:{}", l.traddr, l.trsvcid).parse())
            .with_context(|| format!("listener {}:{}", l.traddr, l.trsvcid))?;
        tcp.listen(addr)?;
    }
    println!(
        "lightpool-target {}: recovered {} subsystem(s) from {} (left by {} pid {})",
        crate::firmware_revision(),
        snap.target.subsystems.len(),
        path.display(),
        snap.version,
        snap.pid
    );
    Ok(Running {
        target,
        reactors,
        tcp,
        cores: snap.cores,
        idle_spin_us: snap.idle_spin_us,
        control,
        control_path: control_path.to_string(),
        layout: STATE_LAYOUT,
        state_dir: Some(dir.to_path_buf()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_nvme_vfio::{
        AdminState, ContainerState, ControllerInfo, ControllerOptions, ControllerState, MemState,
        NamespaceInfo, QueueState,
    };

    fn target_state() -> TargetState {
        TargetState {
            max_queue_depth: 128,
            max_admin_queue_depth: 32,
            max_io_queues: 4,
            in_capsule_data_size: 8192,
            max_transfer_size: 131072,
            genctr: 3,
            listeners: Vec::new(),
            subsystems: Vec::new(),
            discovery_controllers: Vec::new(),
        }
    }

    fn snapshot(bdevs: Vec<(String, u32, BdevState)>) -> Snapshot {
        Snapshot {
            layout: STATE_LAYOUT,
            version: "0.1.0".into(),
            pid: 42,
            cores: vec![Some(0), None],
            idle_spin_us: None,
            control_path: "/tmp/x.sock".into(),
            control_fd: 1,
            stdout_fd: 2,
            stderr_fd: 3,
            state_dir: None,
            target: target_state(),
            tcp: TcpState {
                listeners: Vec::new(),
                conns: Vec::new(),
            },
            bdevs,
        }
    }

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

    /// The region carries file descriptors' indices and a VFIO controller's whole state
    /// through encoding, checksum and decoding.
    #[test]
    fn region_round_trip_with_file_and_vfio_namespaces() {
        let snap = snapshot(vec![
            (
                "nqn.a".into(),
                1,
                BdevState::File {
                    path: "/srv/a.img".into(),
                    fd: Some(4),
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
                    state: Box::new(vfio_state()),
                    fds: vec![5, 6, 7, 8, 9, 10],
                },
            ),
        ]);
        let back = read_region(write_region(&snap, STATE_LAYOUT).expect("write")).expect("read");
        match &back.bdevs[0].2 {
            BdevState::File { fd, path, .. } => {
                assert_eq!((*fd, path.as_str()), (Some(4), "/srv/a.img"))
            }
            other => panic!("{other:?}"),
        }
        match &back.bdevs[1].2 {
            BdevState::Vfio { state, fds } => {
                assert_eq!(**state, vfio_state());
                assert_eq!(fds, &[5, 6, 7, 8, 9, 10]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A region written by a layout-1 binary (files reopened by path) still reads.
    #[test]
    fn layout_1_regions_are_read() {
        let old = v1::Snapshot {
            layout: 1,
            version: "0.0.9".into(),
            pid: 7,
            cores: vec![None],
            idle_spin_us: Some(50),
            control_path: "/tmp/y.sock".into(),
            control_fd: 1,
            stdout_fd: 2,
            stderr_fd: 3,
            state_dir: None,
            target: target_state(),
            tcp: TcpState {
                listeners: Vec::new(),
                conns: Vec::new(),
            },
            bdevs: vec![(
                "nqn.b".into(),
                1,
                v1::BdevState::File {
                    path: "/srv/b.img".into(),
                    block_size: 512,
                    read_only: true,
                    direct: false,
                    queue_depth: 64,
                },
            )],
        };
        let body = bincode::serialize(&old).expect("encode");
        let mut f = std::fs::File::from(memfd());
        let mut hdr = [0u8; HEADER];
        hdr[..8].copy_from_slice(MAGIC);
        hdr[8..12].copy_from_slice(&1u32.to_le_bytes());
        hdr[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        hdr[24..28].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        f.write_all(&hdr).expect("write");
        f.write_all(&body).expect("write");
        let snap = read_region(f.into()).expect("layout 1 reads");
        match &snap.bdevs[0].2 {
            BdevState::File {
                fd,
                read_only,
                path,
                ..
            } => assert_eq!((*fd, *read_only, path.as_str()), (None, true, "/srv/b.img")),
            other => panic!("{other:?}"),
        }
        assert_eq!(snap.idle_spin_us, Some(50));
    }

    #[test]
    fn unknown_layouts_are_refused() {
        let snap = snapshot(Vec::new());
        let e = read_region(write_region(&snap, 9).expect("write")).unwrap_err();
        assert!(
            e.to_string().contains("state layout 9 cannot be read"),
            "{e}"
        );
    }

    fn memfd() -> OwnedFd {
        let name = std::ffi::CString::new("upgrade-test").expect("no NUL");
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd is new and ours.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }
}
