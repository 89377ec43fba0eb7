//! The new binary's side of a hot upgrade: prepare before HELLO (reactors, region,
//! block devices, subsystems), then adopt inside the pause.

use std::io::{BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lightpool_nvmf::region::{Blob, Region, RegionError};
use lightpool_nvmf::restore;
use lightpool_nvmf::{Adopted, Target, TransportContext};

use crate::fdpass::{read_line, recv_with_fds};
use crate::Running;

use super::*;

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
    /// A target with devices exported at the pause (VFIO namespaces) is prepared
    /// inside the pause, once their state has come with STATE: the region and the
    /// REACTORS descriptors wait here.
    deferred: Option<(Arc<Region>, Vec<Option<OwnedFd>>)>,
    /// The metrics endpoint's socket, if the running target serves metrics.
    metrics: Option<std::net::TcpListener>,
    /// The API's TCP socket and TLS files, if the running target serves one.
    api_tcp: Option<crate::api::tcp::ApiTcp>,
}

struct Early {
    region: Arc<Region>,
    boot: Boot,
    target: Arc<Target>,
    /// Every block device taken over.
    devices: Devices,
    registry: crate::manage::Registry,
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
    if let Some(why) = line.strip_prefix("ERR ") {
        // The running target refuses (a ublk export, say): its words, as they are.
        bail!("the running target refuses the upgrade: {why}");
    }
    let rest = line
        .strip_prefix("OK ")
        .ok_or_else(|| anyhow!("unexpected answer to REACTORS: {line:?}"))?;
    let mut cores = Vec::new();
    let mut spin = None;
    let mut nfds = 0usize;
    let mut metrics_fd = None;
    let mut api_fd = None;
    let mut api_tls = None;
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
            // The service manager's socket, for a successor started without it.
            Some(("notify", v)) => crate::service::set_inherited_socket(v),
            Some(("metrics_fd", v)) => metrics_fd = Some(v.parse::<usize>()?),
            Some(("api_fd", v)) => api_fd = Some(v.parse::<usize>()?),
            Some(("api_tls", v)) => api_tls = Some(v.to_string()),
            _ => {}
        }
    }
    if cores.is_empty() {
        bail!("the running target reported no reactors");
    }
    recv_fds_until(&s, &mut got, nfds)?;
    // The metrics socket is the last descriptor (see `reactors_answer`).
    let metrics = match metrics_fd {
        Some(i) if i + 1 == got.len() && i > 0 => got.pop().map(std::net::TcpListener::from),
        Some(i) => bail!(
            "the metrics socket (descriptor {i} of {}) is not the last",
            got.len()
        ),
        None => None,
    };
    // The API's TCP socket comes just before it (see `reactors_answer`).
    let api_tcp = match (api_fd, api_tls) {
        (Some(i), Some(tls)) if i + 1 == got.len() && i > 0 => {
            let l = std::net::TcpListener::from(got.pop().expect("checked not empty"));
            Some(crate::api::tcp::ApiTcp::adopt(l, &tls)?)
        }
        (Some(i), _) => bail!(
            "the API's TCP socket (descriptor {i} of {}) is not the last but metrics, or comes without api_tls=",
            got.len()
        ),
        (None, _) => None,
    };
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
                if boot.devices.iter().any(|d| d.at_pause) {
                    deferred = Some((region, bdev_fds));
                    None
                } else {
                    Some(prepare_target(region, bdev_fds, None)?)
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
        metrics,
        api_tcp,
    })
}

/// The devices exported at the pause, and where their descriptors come from.
type LateDevices<'a> = (
    &'a [lightpool_bdev::DeviceRecord],
    &'a mut dyn FnMut(usize) -> Option<OwnedFd>,
);

/// Take the block devices over and rebuild subsystems and listeners from the region's
/// records (no controllers yet: they are read inside the pause). `bdev_fds` came with
/// REACTORS; `late` are the devices exported at the pause and a source of STATE's
/// descriptors.
fn prepare_target(
    region: Arc<Region>,
    mut bdev_fds: Vec<Option<OwnedFd>>,
    late: Option<LateDevices<'_>>,
) -> Result<Early> {
    let boot = read_boot(&region)?;
    // Once in full, so the pages the pause reads are mapped already (the result may be
    // stale or caught mid-write: it is read again inside the pause).
    let _ = restore::read_image(&region, true);
    let image = restore::read_image(&region, false)?;
    let mut devs = Devices::new();
    let early: Vec<_> = boot
        .devices
        .iter()
        .filter(|d| !d.at_pause)
        .cloned()
        .collect();
    adopt_devices(
        &early,
        &mut devs,
        Some(&mut |i: usize| bdev_fds.get_mut(i).and_then(Option::take)),
    )?;
    if let Some((records, take)) = late {
        adopt_devices(records, &mut devs, Some(take))?;
    }
    let (target, _) =
        Target::import_state(&image.target, crate::firmware_revision(), |nqn, nsid| {
            namespace_bdev(&boot.namespaces, &devs, nqn, nsid)
        })?;
    let registry = rebuild_registry(&boot.registry, &devs)?;
    let keys = super::restore_host_keys(&region, &target)?;
    tracing::debug!(hosts = keys, "host authentication keys taken over");
    Ok(Early {
        registry,
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
        devices: devs,
    })
}

/// Where a successor's output goes once it has taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Where the old process's went (an upgrade started by hand or by systemd: one log).
    Predecessors,
    /// This process's own (a pod: its container's log, which outlives the old pod's).
    Own,
}

/// New side: take over from the target serving `path`. On success the old process has
/// let go (exited, or retired if it is a pod) and this one serves every connection it
/// had.
pub fn take_over(path: &str, output: Output) -> Result<Running> {
    let p = prepare(path)?;
    let reactors = p.reactors.clone();
    match take_over_with(path, p, output) {
        Ok(r) => Ok(r),
        Err(e) => {
            for r in &reactors {
                r.stop();
            }
            Err(e)
        }
    }
}

fn take_over_with(path: &str, p: Prepared, output: Output) -> Result<Running> {
    let _urgent = Urgent::enter();
    let t0 = Instant::now();
    let sock = UnixStream::connect(path)
        .with_context(|| format!("cannot reach the running target at {path}"))?;
    let mut w = &sock;
    send_line!(
        w,
        "HELLO {} {} {} pid={}",
        READABLE_LAYOUTS.start(),
        READABLE_LAYOUTS.end(),
        crate::firmware_revision(),
        std::process::id()
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
    // When the running target stopped starting commands (CLOCK_MONOTONIC): the pause
    // is measured from there to this process's resume.
    let quiesced_ns = words.find_map(|w| w.strip_prefix("quiesced_ns=")?.parse::<u64>().ok());
    recv_fds_until(&sock, &mut got, total)?;
    if std::env::var("LIGHTPOOL_TEST_CRASH_AT").as_deref() == Ok("adopt") {
        // Test hook: die in the middle of adoption; the old process must resume.
        std::process::abort();
    }
    let t_state = t0.elapsed();
    let mut fds: Vec<Option<OwnedFd>> = got.into_iter().map(Some).collect();
    match adopt(p, &mut fds, t0, t_state, quiesced_ns, &sock, output) {
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
    quiesced_ns: Option<u64>,
    sock: &UnixStream,
    output: Output,
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
            // Devices exported at the pause (VFIO controllers) came with STATE: take
            // every device over and rebuild the subsystems now.
            if !same_file(&region_fd, &region.fd())? {
                bail!("the running target handed over another state region than it announced");
            }
            let pause: Pause = postcard::from_bytes(
                &region
                    .read_blob(Blob::Handover)?
                    .ok_or_else(|| anyhow!("the running target wrote no handover blob"))?,
            )
            .context("decoding the handover blob")?;
            let mut late = |i: usize| fds.get_mut(i).and_then(Option::take);
            prepare_target(region, bdev_fds, Some((&pause.devices, &mut late)))?
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
    let changes = read_boot(&region)?.changes;
    if changes != early.boot.changes {
        bail!(
            "the running target's configuration changed while this binary prepared (change {} -> {changes}): upgrade again",
            early.boot.changes
        );
    }
    let image = restore::read_image(&region, true)?;
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
    restore::bind(&target, &region, &image)?;
    let t_target = t0.elapsed();
    let image = Arc::new(image);
    let ctx = TransportContext {
        target: target.clone(),
        reactors: p.reactors.clone(),
    };
    let kinds = crate::transports::kinds();
    let mut transports = Vec::new();
    let mut adopted = Adopted::default();
    for (name, state) in &pause.transports {
        let (t, a) = kinds
            .get(name)?
            .adopt(ctx.clone(), region.clone(), image.clone(), state, fds)
            .with_context(|| format!("taking over transport {name}"))?;
        transports.push(t);
        adopted.listeners += a.listeners;
        adopted.connections += a.connections;
        adopted.commands += a.commands;
        adopted.queue_records.extend(a.queue_records);
    }
    let transports = crate::transports::Transports::with(ctx, transports);
    let t_adopt = t0.elapsed();
    let mut take = |i: usize| {
        fds.get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("descriptor {i} is missing"))
    };
    let control = UnixListener::from(take(pause.control_fd)?);
    let api = UnixListener::from(take(pause.api_fd)?);
    let out = take(pause.stdout_fd)?;
    let err = take(pause.stderr_fd)?;

    // Become the service's main process while the old one is alive and waiting, so
    // that the service manager never sees its main process exit (see service.rs).
    let me = std::process::id();
    crate::service::notify_or_log(&format!("MAINPID={me}"));
    let mut w = sock;
    w.write_all(b"ADOPTED\n")?;
    let bye = read_line(&mut BufReader::new(sock));
    if !matches!(bye.as_ref().map(|b| b.as_deref()), Ok(Some("BYE"))) {
        crate::service::notify_or_log(&format!("MAINPID={}", pause.pid));
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
    for d in early.devices.values() {
        d.adopted();
    }
    let swept = restore::sweep(&target, &region, &adopted.queue_records);
    transports.resume_all()?;
    let resumed_ns = crate::service::monotonic_ns();
    drop(ctrlrs);
    // The pause: from the moment the old process stopped starting commands to the
    // moment this one's reactors start them again. An old binary that does not say
    // when it quiesced: from HELLO (a little longer).
    let pause_t = match quiesced_ns {
        Some(q) => Duration::from_nanos(resumed_ns.saturating_sub(q)),
        None => t0.elapsed(),
    };
    tracing::info!(
        state_ms = t_state.as_secs_f64() * 1e3,
        target_ms = t_target.as_secs_f64() * 1e3,
        adopt_ms = t_adopt.as_secs_f64() * 1e3,
        bye_ms = t_bye.as_secs_f64() * 1e3,
        swept,
        pause_ms = pause_t.as_secs_f64() * 1e3,
        "upgrade: steps (since HELLO); pause from the old process's quiesce to this one's resume"
    );
    println!(
        "lightpool-target {}: took over from {} (pid {}): {} connection(s), {} listener(s), {} command(s) held or receiving; pause {:.3} ms",
        crate::firmware_revision(),
        pause.version,
        pause.pid,
        adopted.connections,
        adopted.listeners,
        adopted.commands,
        pause_t.as_secs_f64() * 1e3
    );
    std::io::stdout().flush().ok();
    if output == Output::Predecessors {
        // From here on, log where the previous process logged.
        // SAFETY: dup2 onto our own stdout/stderr with descriptors we own.
        unsafe {
            libc::dup2(out.as_raw_fd(), 1);
            libc::dup2(err.as_raw_fd(), 2);
        }
    }
    let run = Running {
        target,
        reactors: p.reactors,
        transports,
        cores: early.boot.cores,
        idle_spin_us: early.boot.idle_spin_us,
        control,
        control_path: early.boot.control_path,
        layout: STATE_LAYOUT,
        state_dir: early.boot.state_dir.map(std::path::PathBuf::from),
        region,
        mgmt: crate::manage::Mgmt::new(early.registry, changes, early.boot.api_path, api),
        metrics: p.metrics,
        api_tcp: p.api_tcp,
    };
    if let Err(e) = write_boot(&run) {
        tracing::warn!(error = format!("{e:#}"), "boot blob not rewritten");
    }
    Ok(run)
}
