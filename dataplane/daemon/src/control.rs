//! The control socket: a Unix socket the running target listens on for operators'
//! commands (STATUS) and for a new binary taking over (HELLO, see upgrade.rs); and the
//! `upgrade` command that drives a hot upgrade from the outside.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

// The ANA state names are configuration vocabulary (config parses them); the control
// socket's ANA command and the management API use them from here as before.
pub use crate::config::{ana_state_code, ana_state_name};
use crate::fdpass::read_line;
use crate::{firmware_revision, upgrade, Running};

/// Listen on `path`; a stale socket file (nobody answers) is replaced, a live one is an
/// error (another target runs there).
pub fn bind(path: &str) -> Result<UnixListener> {
    if Path::new(path).exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("another lightpool-target answers on control socket {path}: stop it, or give this one its own --control-socket");
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {path}"))?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on control socket {path}"))
}

/// Removes the control socket's file when dropped (the target stops, or fails to
/// start), unless [`Unbind::keep`] hands it on. A process that hands its target over
/// exits without dropping it: the socket is its successor's.
pub struct Unbind(Option<String>);

impl Unbind {
    pub fn new(path: &str) -> Unbind {
        Unbind(Some(path.to_string()))
    }

    /// Leave the file in place (another guard, or a successor, owns it now).
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Unbind {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serve the control socket on a thread of its own (never a reactor).
/// The thread holds only a weak reference, so that at shutdown the target and its
/// block devices are dropped (a VFIO controller gets its orderly shutdown).
pub fn serve(run: Arc<Running>) -> Result<()> {
    let listener = run
        .control
        .try_clone()
        .context("duplicating the control socket")?;
    let weak = Arc::downgrade(&run);
    drop(run);
    std::thread::Builder::new()
        .name("lightpool-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                let Some(run) = weak.upgrade() else { break };
                if let Err(e) = handle(&run, stream) {
                    tracing::warn!(error = format!("{e:#}"), "control request failed");
                }
            }
        })
        .context("starting the control thread")?;
    Ok(())
}

fn handle(run: &Running, stream: UnixStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let line = {
        let mut r = BufReader::new(&stream);
        read_line(&mut r)?.unwrap_or_default()
    };
    let mut w = &stream;
    if line == "STATUS" {
        // The pod this process is, if any (pod.rs): what `ready` and a newcomer read.
        let instance = crate::pod::instance()
            .map(|i| format!(" instance={i}"))
            .unwrap_or_default();
        send_line!(
            w,
            "OK version={} pid={} layout={}{instance}",
            firmware_revision(),
            std::process::id(),
            run.layout
        )?;
    } else if line == "DEVICES" {
        let lines = devices_lines(run);
        let mut out = format!("OK {}\n", lines.len());
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        w.write_all(out.as_bytes())?;
    } else if line == "REACTORS" && !run.mgmt.ublk.describe().is_empty() {
        // A ublk device belongs to the process serving its queues: it is not handed
        // over (UBLK_F_USER_RECOVERY would stall the device while the queues move), so
        // the successor is refused before it prepares anything.
        send_line!(
            w,
            "ERR volumes are exported to this host as ublk devices ({}), which a hot upgrade cannot hand over: stop them (`lightpool target volume ublk stop POOL/VOLUME`) and upgrade again",
            run.mgmt.ublk.describe().join(", ")
        )?;
    } else if line == "REACTORS" {
        // What a successor needs before it asks for the state: how the reactors are laid
        // out, the state region and the RAM devices' memfds. The successor reads the
        // pools' structure now: their operations wait for the handover to end.
        crate::pools::freeze(run);
        match upgrade::reactors_answer(run) {
            Ok((answer, fds)) => {
                let raw: Vec<std::os::fd::RawFd> =
                    fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
                let line = format!("{answer}\n");
                crate::fdpass::send_with_fds(&stream, line.as_bytes(), &raw)?;
            }
            Err(e) => send_line!(w, "ERR {e:#}")?,
        }
    } else if let Some(rest) = line.strip_prefix("ANA ") {
        let answer = match set_ana(run, rest) {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("ERR {e:#}"),
        };
        send_line!(w, "{answer}")?;
    } else if let Some(rest) = line.strip_prefix("POOL") {
        let out = match crate::pools::command(run, rest) {
            Ok(lines) => {
                let mut out = format!("OK {}\n", lines.len());
                for l in lines {
                    out.push_str(&l);
                    out.push('\n');
                }
                out
            }
            Err(e) => format!("ERR {e:#}\n"),
        };
        w.write_all(out.as_bytes())?;
    } else if let Some(rest) = line.strip_prefix("RAID") {
        w.write_all(crate::raid::control(rest).as_bytes())?;
    } else if line.starts_with("HELLO ") {
        stream.set_read_timeout(None)?;
        // Returns only when the handover did not happen (else this process exits).
        let r = upgrade::hand_over(run, stream, &line);
        crate::pools::thaw(run);
        r?;
    } else {
        send_line!(w, "ERR unknown command {line:?}")?;
    }
    Ok(())
}

/// One line per block device of the target, children first: `ID kind=.. name=..
/// children=ID,.. namespaces=NQN/NSID,..` and, for devices that count, their I/O.
fn devices_lines(run: &Running) -> Vec<String> {
    let (g, ns, _) = upgrade::device_graph(&run.target, &run.mgmt.registry);
    g.devices()
        .enumerate()
        .map(|(id, d)| {
            let children: Vec<String> = d
                .children()
                .iter()
                .filter_map(|c| g.id_of(c))
                .map(|c| c.to_string())
                .collect();
            let serves: Vec<String> = ns
                .iter()
                .filter(|(_, _, i)| *i as usize == id)
                .map(|(nqn, nsid, _)| format!("{nqn}/{nsid}"))
                .collect();
            let mut l = format!(
                "{id} kind={} name={} blocks={} block_size={} children={} namespaces={}",
                d.kind(),
                d.info().name,
                d.info().num_blocks,
                d.info().block_size,
                children.join(","),
                serves.join(",")
            );
            if let Some(s) = d.io_stats() {
                l.push_str(&format!(
                    " reads={} writes={} other={} blocks_read={} blocks_written={}",
                    s.reads, s.writes, s.other, s.blocks_read, s.blocks_written
                ));
            }
            l
        })
        .collect()
}

/// `lightpool-target devices`: the block devices of the running target.
pub fn devices_command(path: &str) -> Result<()> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("no lightpool-target answers on control socket {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"DEVICES\n")?;
    let mut r = BufReader::new(&s);
    let head = read_line(&mut r)?.unwrap_or_default();
    let n: usize = head
        .strip_prefix("OK ")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected answer {head:?}"))?;
    for _ in 0..n {
        println!("{}", read_line(&mut r)?.unwrap_or_default());
    }
    Ok(())
}

/// "ANA <nqn> <group> <state>"
fn set_ana(run: &Running, args: &str) -> Result<()> {
    let mut it = args.split_whitespace();
    let (Some(nqn), Some(group), Some(state)) = (it.next(), it.next(), it.next()) else {
        bail!("usage: ANA <nqn> <group> <state>");
    };
    let group: u32 = group
        .parse()
        .with_context(|| format!("ANA group {group:?} is not a number"))?;
    let code = ana_state_code(state).with_context(|| {
        format!("unknown ANA state {state:?} (optimized, non-optimized, inaccessible, persistent-loss, change)")
    })?;
    run.set_ana(nqn, group, code)
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    Ok(())
}

/// `lightpool-target ana --nqn N --group G --state S`.
pub fn ana_command(path: &str, nqn: &str, group: u32, state: &str) -> Result<()> {
    if ana_state_code(state).is_none() {
        bail!("unknown ANA state {state:?} (optimized, non-optimized, inaccessible, persistent-loss, change)");
    }
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("no lightpool-target answers on control socket {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    send_line!(s, "ANA {nqn} {group} {state}")?;
    let line = read_line(&mut BufReader::new(&s))?.unwrap_or_default();
    match line.as_str() {
        "OK" => {
            println!("{nqn}: ANA group {group} is now {state}");
            Ok(())
        }
        other => bail!("{}", other.strip_prefix("ERR ").unwrap_or(other)),
    }
}

/// Ask the target behind `path` for its status line.
pub fn status(path: &str) -> Result<String> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("no lightpool-target answers on control socket {path}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"STATUS\n")?;
    let line = read_line(&mut BufReader::new(&s))?.unwrap_or_default();
    match line.strip_prefix("OK ") {
        Some(rest) => Ok(rest.to_string()),
        None => bail!("unexpected status answer {line:?}"),
    }
}

/// `lightpool-target upgrade --binary NEW`: start NEW so that it takes over from the
/// running target, and report how it went.
pub fn upgrade_command(path: &str, binary: &Path, log: &str) -> Result<()> {
    let meta =
        std::fs::metadata(binary).with_context(|| format!("new binary {}", binary.display()))?;
    if !meta.is_file() {
        bail!("new binary {} is not a file", binary.display());
    }
    let before = status(path)?;
    if let Some(why) = crate::pod::upgrade_refusal(crate::pod::status_value(&before, "instance")) {
        bail!("{why}");
    }
    eprintln!(
        "upgrading the target on {path} ({before}) to {}",
        binary.display()
    );
    let t0 = Instant::now();
    let mut child = Command::new(binary)
        .arg("--upgrade-from")
        .arg(path)
        .arg("--control-socket")
        .arg(path)
        .arg("--log")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group: the new target must outlive this command.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let out = child.stdout.take().expect("stdout was piped");
    let mut took_over = None;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if line.contains("took over from") {
            took_over = Some(line);
        } else {
            println!("{line}");
        }
    }
    // The new target closes our pipe once it logs where the old one did (it took over)
    // or when it exits (it did not).
    match took_over {
        Some(line) => {
            let after = status(path)?;
            println!("{line}");
            println!(
                "upgrade complete in {:.1} ms overall; now serving: {after}",
                t0.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
        None => {
            let st = child.wait()?;
            let still = status(path).unwrap_or_else(|e| format!("nothing ({e:#})"));
            bail!("the new binary exited ({st}) without taking over; the target on {path} is serving: {still}")
        }
    }
}
