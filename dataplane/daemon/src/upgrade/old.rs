//! The running target's side of a hot upgrade: the REACTORS answer, then HELLO:
//! quiesce, export, send the state, wait for ADOPTED, say BYE and exit (or, in a pod,
//! retire: see pod.rs).

use std::io::{BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use lightpool_nvmf::region::Blob;

use crate::fdpass::{read_line, send_with_fds, FDS_PER_MESSAGE};
use crate::Running;

use super::*;

/// The REACTORS answer: what a successor needs before HELLO, and the descriptors that
/// go with it (the region, then the descriptors of the block devices exported while
/// serving, as the boot blob, rewritten now, indexes them).
pub fn reactors_answer(run: &Running) -> Result<(String, Vec<OwnedFd>)> {
    let cores: Vec<String> = run
        .cores
        .iter()
        .map(|c| c.map_or("-".to_string(), |c| c.to_string()))
        .collect();
    let spin = run.idle_spin_us.map_or("-".to_string(), |v| v.to_string());
    // No change while the blob is written: the count in it is the registry's.
    let changes = run.mgmt.changes.lock().expect("change lock poisoned");
    let mem = write_boot_fds(run, *changes)?;
    drop(changes);
    let mut fds = vec![dup(run.region.fd())?];
    fds.extend(mem);
    // The API's TCP socket, then the metrics endpoint's, go last, named by their
    // indexes (a successor that does not know a key leaves its socket unused; metrics
    // stays last for successors that know only it).
    let api_fd = match &run.api_tcp {
        Some(t) => {
            fds.push(dup(&t.listener)?);
            Some((fds.len() - 1, t.handover_value()))
        }
        None => None,
    };
    let metrics_fd = match &run.metrics {
        Some(l) => {
            fds.push(dup(l)?);
            Some(fds.len() - 1)
        }
        None => None,
    };
    if fds.len() > FDS_PER_MESSAGE {
        bail!("more block-device descriptors than one message carries");
    }
    let mut line = format!(
        "OK cores={} idle_spin_us={spin} fds={}",
        cores.join(","),
        fds.len()
    );
    if let Some((i, tls)) = api_fd {
        line.push_str(&format!(" api_fd={i} api_tls={tls}"));
    }
    if let Some(i) = metrics_fd {
        line.push_str(&format!(" metrics_fd={i}"));
    }
    // Keys a successor does not know are skipped by it.
    if let Some(path) = crate::service::socket_to_pass_on() {
        line.push_str(&format!(" notify={path}"));
    }
    Ok((line, fds))
}

/// Old side: serve one HELLO. Returns only if the handover did not happen (the target
/// keeps serving); on success the process exits.
pub fn hand_over(run: &Running, mut sock: UnixStream, hello: &str) -> Result<()> {
    let urgent = Urgent::enter();
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
    // The successor's pid (a successor that does not say it is not named to the service
    // manager by this side; it names itself).
    let new_pid = it.find_map(|w| w.strip_prefix("pid=")?.parse::<u32>().ok());
    if !(min..=max).contains(&run.layout) {
        let why = format!(
            "this target's state has layout {}, the new binary reads {min}..={max}",
            run.layout
        );
        send_line!(sock, "REFUSE {why}")?;
        tracing::warn!(new_version = %newver, "upgrade refused: {why}; still serving");
        return Ok(());
    }
    if crate::manage::migrate::any() {
        let why = "a live migration runs here (its mirror and connections are this process's): stop it, or let it end, first".to_string();
        send_line!(sock, "REFUSE {why}")?;
        tracing::warn!(new_version = %newver, "upgrade refused: {why}; still serving");
        return Ok(());
    }
    if let Some(why) = engine_listeners(run) {
        send_line!(sock, "REFUSE {why}")?;
        tracing::warn!(new_version = %newver, "upgrade refused: {why}; still serving");
        return Ok(());
    }
    // No change through the API or the configuration until this ends: the successor
    // prepared from the boot blob as it is now.
    let changes = run.mgmt.changes.lock().expect("change lock poisoned");
    tracing::info!(new_version = %newver, "upgrade: quiescing");
    let t0 = Instant::now();
    // The pause starts here: from now on no command starts until the successor's
    // reactors resume. The successor measures it to the end, on the same clock.
    let quiesced_ns = crate::service::monotonic_ns();
    // Each transport quiesces, and each of its reactors exports and freezes itself as
    // soon as its connections have drained: one round trip, however busy the machine.
    let mut fds = Vec::new();
    let mut exported = Vec::new();
    for t in run.transports.all() {
        match t.quiesce_and_export(1 + fds.len(), DRAIN_TIMEOUT) {
            Ok(Some(x)) => {
                fds.extend(x.fds);
                exported.push((t.name().to_string(), x.state));
            }
            Ok(None) => {
                // That transport serves on by itself; the ones frozen before it too.
                run.transports.resume_all()?;
                send_line!(
                    sock,
                    "REFUSE commands did not finish within {DRAIN_TIMEOUT:?}"
                )?;
                bail!("upgrade abandoned: commands did not finish in time; still serving");
            }
            Err(e) => {
                // Some reactor could not export (a queue without a record, a descriptor
                // that cannot be duplicated): serve on.
                run.transports.resume_all()?;
                let _ = send_line!(
                    sock,
                    "REFUSE the running target cannot export its state: {e}"
                );
                bail!("upgrade abandoned: {e}; still serving");
            }
        }
    }
    let t_frozen = t0.elapsed();
    match send_state(run, &sock, exported, fds, quiesced_ns) {
        Ok(()) => {}
        Err(e) => {
            run.transports.resume_all()?;
            let _ = send_line!(sock, "REFUSE {e:#}");
            return Err(e.context("upgrade abandoned; still serving"));
        }
    }
    let t_sent = t0.elapsed();
    sock.set_read_timeout(Some(ADOPT_TIMEOUT))?;
    let reply = read_line(&mut BufReader::new(&sock)).ok().flatten();
    match reply.as_deref() {
        Some("ADOPTED") => {
            // The main process names its successor too: the service manager takes that
            // from its main process whatever the unit's NotifyAccess, and from a root
            // process even for a successor outside the unit (an upgrade run by hand).
            if let Some(pid) = new_pid {
                crate::service::notify_or_log(&format!("MAINPID={pid}"));
            }
            if let Err(e) = sock.write_all(b"BYE\n") {
                // The successor is gone before it heard BYE: it never starts serving.
                // Changes wait on the lock until it is dropped here, and are taken again.
                crate::service::notify_or_log(&format!("MAINPID={}", std::process::id()));
                run.transports.resume_all()?;
                bail!(
                    "upgrade abandoned: the new process went away before BYE ({e}); still serving"
                );
            }
            run.mgmt
                .handed_over
                .store(true, std::sync::atomic::Ordering::Release);
            // Changes asked for from now on are refused (UNAVAILABLE).
            drop(changes);
            // Not the pause (that ends when the successor resumes, and the successor
            // reports it): how long this side took to let go.
            tracing::info!(
                frozen_ms = t_frozen.as_secs_f64() * 1e3,
                sent_ms = t_sent.as_secs_f64() * 1e3,
                adopted_ms = t0.elapsed().as_secs_f64() * 1e3,
                "upgrade: handed over (the successor reports the pause); letting go"
            );
            // An upgrade asked for through the management API is answered by this
            // process, once the successor has said it took over.
            run.mgmt.upgrade.wait_sent(ADOPT_TIMEOUT);
            drop(urgent);
            // The new process owns every socket now: exit without closing anything at
            // the protocol level (the kernel just drops this process's references). A
            // pod's main process execs instead (the same for the descriptors, memory
            // and threads), so that its container lives on until the pod is deleted.
            if crate::pod::instance().is_some() {
                let e = crate::pod::retire(new_pid);
                // Exiting is safe too: the restarted container stands by (pod.rs).
                tracing::warn!(error = %e, "cannot exec the retired process; exiting");
            }
            std::process::exit(0);
        }
        other => {
            run.transports.resume_all()?;
            let why = other.unwrap_or("the new process went away");
            bail!("upgrade abandoned ({why}); still serving");
        }
    }
}

/// Descriptor 0 is the region, then the transports' listeners and connections (`fds`,
/// exported with base 1), then the rest. The handover blob goes into the region first.
fn send_state(
    run: &Running,
    sock: &UnixStream,
    transports: Vec<(String, Vec<u8>)>,
    mut fds: Vec<OwnedFd>,
    quiesced_ns: u64,
) -> Result<()> {
    // Indices count the region as 0.
    let idx = |fds: &mut Vec<OwnedFd>, fd: OwnedFd| {
        fds.push(fd);
        fds.len()
    };
    let control_fd = idx(&mut fds, dup(&run.control)?);
    let api_fd = idx(&mut fds, dup(&run.mgmt.api)?);
    let stdout_fd = idx(&mut fds, dup(std::io::stdout().as_fd())?);
    let stderr_fd = idx(&mut fds, dup(std::io::stderr().as_fd())?);
    let devices = pause_export(&run.target, &run.mgmt.registry, &mut fds, 1)?;
    let pause = Pause {
        version: crate::firmware_revision().to_string(),
        pid: std::process::id(),
        control_fd,
        api_fd,
        stdout_fd,
        stderr_fd,
        transports,
        devices,
    };
    let blob = postcard::to_stdvec(&pause).context("encoding the handover blob")?;
    run.region.write_blob(Blob::Handover, &blob)?;
    let mut all: Vec<RawFd> = vec![run.region.fd().as_raw_fd()];
    all.extend(fds.iter().map(|f| f.as_raw_fd()));
    let mut first = true;
    for chunk in all.chunks(FDS_PER_MESSAGE) {
        let line = if first {
            format!(
                "STATE {} {} quiesced_ns={quiesced_ns}\n",
                run.layout,
                all.len()
            )
        } else {
            "FDS\n".to_string()
        };
        first = false;
        send_with_fds(sock, line.as_bytes(), chunk)?;
    }
    Ok(())
}

/// Why the listeners forbid a hot upgrade, if they do: a DPDK listener. The NVMe/TCP
/// transport ends engine listeners at quiesce and the successor listens again (AF_XDP
/// does that), but DPDK closes its port for good with its listener: were the handover
/// to fail after that, this process could not listen there again (EAL and the port
/// are made once per process).
fn engine_listeners(run: &Running) -> Option<String> {
    let mut held: Vec<String> = Vec::new();
    for t in run.transports.all() {
        for l in run.target.listeners() {
            if let Some(e) = t.listener_engine(&l.addr).filter(|e| e.engine == "dpdk") {
                held.push(format!(
                    "{} (engine {} on {})",
                    l.addr.to_addr_string(),
                    e.engine,
                    e.interface
                ));
            }
        }
    }
    (!held.is_empty()).then(|| {
        format!(
            "listeners served through DPDK ({}) cannot be handed over to a successor: restart the target to run the new binary (hosts reconnect), or serve those addresses with engine = \"kernel\" or \"af_xdp\"",
            held.join(", ")
        )
    })
}
