//! One dataplane per node, its successor started beside it: `--take-over-or-start`.
//!
//! A DaemonSet rolling update with `maxSurge: 1` starts the new pod while the old one
//! still serves; both see the control socket's directory (a hostPath). The new pod's
//! main process:
//!
//! 1. takes `<control socket>.lock` (flock), so that one newcomer at a time goes
//!    through the steps below: two never take over from the same target at once;
//! 2. registers its instance (`--instance`, the pod's UID) in
//!    `<control socket>.instances`, which keeps the order in which instances first
//!    started on this node (a restarted container keeps its place);
//! 3. asks the control socket who serves (STATUS): nobody (no socket file, or a stale
//!    one) -> it starts from the configuration; an older instance, or a target started
//!    without one -> it takes everything over through the hot upgrade (upgrade/new.rs)
//!    and becomes the server in this process (no fork: the container's main process is
//!    the target); a newer instance, or itself -> it stands by (serves nothing, exits
//!    0 at SIGTERM);
//! 4. lets the lock go once it serves.
//!
//! A failed takeover leaves the old target serving (the handover's own guarantee) and
//! this process exits non-zero with the reason.
//!
//! The old pod's main process must not exit once it has handed over: kubelet would
//! restart its container (restartPolicy Always). It replaces itself with an idle
//! process instead ([`retire`]: execve, same PID, so the container lives on), which
//! holds nothing of the dataplane and exits 0 at SIGTERM: the pod gets that when the
//! DaemonSet controller deletes it, once the new pod is ready. Its readiness probe
//! (`lightpool-target ready`) fails from the handover on, since another instance
//! answers on the socket. If its container restarts anyway, the restarted process
//! finds a newer instance serving and stands by: an old pod never takes the dataplane
//! back.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a newcomer waits for another one's start or takeover to end.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// Instances remembered in the registry (the newest; older pods are long gone).
const KEEP_INSTANCES: usize = 64;

/// The environment variable that names the instance when `--instance` does not.
pub const INSTANCE_ENV: &str = "LIGHTPOOL_INSTANCE";

static INSTANCE: OnceLock<String> = OnceLock::new();

/// Name this process's instance (the pod's UID): said in STATUS, checked by `ready`,
/// and it makes a handover retire this process instead of ending it.
pub fn set_instance(id: &str) -> Result<()> {
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--instance {id:?}: give one word (the pod's UID, metadata.uid)");
    }
    let _ = INSTANCE.set(id.to_string());
    Ok(())
}

/// This process's instance, if it was given one.
pub fn instance() -> Option<&'static str> {
    INSTANCE.get().map(String::as_str)
}

/// `<control socket>.lock`, held (flock) while this process starts or takes over.
pub struct StartLock {
    _file: File,
}

impl StartLock {
    pub fn acquire(control: &str, timeout: Duration) -> Result<StartLock> {
        let path = format!("{control}.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the start lock {path}"))?;
        let t0 = Instant::now();
        let mut said = false;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(StartLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("locking {path}"));
            }
            if t0.elapsed() >= timeout {
                bail!(
                    "another lightpool-target has held {path} for {timeout:?} (starting, or \
                     taking over): this process serves nothing"
                );
            }
            if !said {
                tracing::info!(lock = %path, "another lightpool-target is starting or taking over here: waiting for it");
                said = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What a newcomer does, decided under the start lock.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing answers on the control socket: start from the configuration.
    Start,
    /// An older instance (or one without a name) serves, its STATUS given: take over.
    TakeOver(String),
    /// A newer instance, or this one, serves: serve nothing, wait for SIGTERM.
    StandBy(String),
}

/// Decide for this process (call with the start lock held).
pub fn decide(control: &str) -> Result<Decision> {
    let order = match instance() {
        Some(me) => Some((me, register(control, me)?)),
        None => None,
    };
    let Ok(serving) = crate::control::status(control) else {
        return Ok(Decision::Start);
    };
    Ok(decide_from(&serving, order))
}

/// The decision, given the serving target's STATUS and this instance with the
/// registry (`None`: this process has no instance and takes over from anyone).
fn decide_from(serving: &str, order: Option<(&str, Vec<(u64, String)>)>) -> Decision {
    let Some((me, order)) = order else {
        return Decision::TakeOver(serving.to_string());
    };
    let place = |id: &str| order.iter().find(|(_, i)| i == id).map(|(n, _)| *n);
    match status_value(serving, "instance") {
        Some(other) if other == me => Decision::StandBy(format!(
            "this instance ({me}) serves already, in another process: {serving}"
        )),
        Some(other) => match (place(other), place(me)) {
            (Some(theirs), Some(mine)) if theirs > mine => Decision::StandBy(format!(
                "a newer instance ({other}) serves (it first started here after this one, \
                 {me}): an old pod never takes the dataplane back; {serving}"
            )),
            _ => Decision::TakeOver(serving.to_string()),
        },
        None => Decision::TakeOver(serving.to_string()),
    }
}

/// `key=value` of a STATUS line.
pub fn status_value<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Registry lines: `<order> <instance>`.
fn parse_registry(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|l| {
            let (n, id) = l.trim().split_once(' ')?;
            Some((n.parse().ok()?, id.trim().to_string()))
        })
        .filter(|(_, id)| !id.is_empty())
        .collect()
}

/// Place `me` in the registry beside the control socket (at the end if new) and
/// return the registry. The caller holds the start lock.
fn register(control: &str, me: &str) -> Result<Vec<(u64, String)>> {
    let path = format!("{control}.instances");
    let mut order = match std::fs::read_to_string(&path) {
        Ok(t) => parse_registry(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    };
    if order.iter().any(|(_, id)| id == me) {
        return Ok(order);
    }
    let next = order.iter().map(|(n, _)| n + 1).max().unwrap_or(1);
    order.push((next, me.to_string()));
    order.sort();
    let drop_n = order.len().saturating_sub(KEEP_INSTANCES);
    order.drain(..drop_n);
    let tmp = format!("{path}.new");
    let mut f = File::create(&tmp).with_context(|| format!("writing {tmp}"))?;
    for (n, id) in &order {
        writeln!(f, "{n} {id}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {tmp}"))?;
    Ok(order)
}

/// Serve nothing until SIGTERM or SIGINT, then return (the process exits 0).
pub fn stand_by(sigs: &crate::service::Signals, why: &str) -> Result<()> {
    tracing::info!("standing by, serving nothing, until SIGTERM: {why}");
    let sig = sigs.wait_for_stop();
    tracing::info!(
        signal = crate::service::signal_name(sig),
        "stopping (this process served nothing)"
    );
    Ok(())
}

/// The old process of a pod once its successor has taken over: become an idle process
/// with the same PID (the container's main process lives on, so kubelet restarts
/// nothing), holding none of the dataplane's descriptors, memory or threads. Returns
/// only if the exec failed.
pub fn retire(new_pid: Option<u32>) -> std::io::Error {
    let mut cmd = std::process::Command::new("/proc/self/exe");
    // Named as this process was (ps, the container runtime).
    if let Some(name) = std::env::args_os().next() {
        cmd.arg0(name);
    }
    cmd.arg("--retired").arg("--log").arg(crate::logging::get());
    if let Some(me) = instance() {
        cmd.arg("--instance").arg(me);
    }
    if let Some(pid) = new_pid {
        cmd.arg("--retired-for").arg(pid.to_string());
    }
    // Only the retired mode's arguments: the configuration is not read again.
    cmd.env_remove("NOTIFY_SOCKET");
    cmd.exec()
}

/// The retired process (after [`retire`]): wait for SIGTERM, exit 0.
pub fn retired(new_pid: Option<u32>) -> Result<()> {
    // The descriptors the exec did not close (none should be left: every one is
    // CLOEXEC), and the real-time priority the handover thread had.
    // SAFETY: close_range over descriptors this process no longer uses (0-2 stay);
    // sched_setscheduler on this thread with a live local.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let normal = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal);
    }
    let sigs = crate::service::Signals::block();
    let to = new_pid.map_or_else(|| "its successor".to_string(), |p| format!("pid {p}"));
    stand_by(
        &sigs,
        &format!(
            "instance {} handed the dataplane over to {to}; this pod is done \
             (its readiness fails) and ends when it is deleted",
            instance().unwrap_or("-")
        ),
    )
}

/// Why a target that is a pod (`instance`) is not upgraded by `upgrade` or the API: the
/// new process would be started inside the old pod's container and die with it when the
/// pod is deleted. A rolling update of the DaemonSet is its upgrade.
pub fn upgrade_refusal(instance: Option<&str>) -> Option<String> {
    instance.map(|i| {
        format!(
            "this target is the pod with instance {i}: a process started from it would end \
             with its container; upgrade it with a rolling update of its DaemonSet (README \
             \"Hot upgrade in Kubernetes\")"
        )
    })
}

/// `lightpool-target ready`: succeeds if the target answering on `control` is this
/// instance (any target, when no instance is given). The readiness probe of a pod.
pub fn ready_command(control: &str) -> Result<()> {
    let line = crate::control::status(control)?;
    match (instance(), status_value(&line, "instance")) {
        (Some(me), Some(s)) if s == me => {}
        (Some(me), other) => bail!(
            "not ready: this instance ({me}) does not serve; {} does: {line}",
            other.unwrap_or("a target without an instance")
        ),
        (None, _) => {}
    }
    println!("ready: {line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
        pairs.iter().map(|(n, s)| (*n, s.to_string())).collect()
    }

    #[test]
    fn a_newer_instance_takes_over_and_an_older_one_stands_by() {
        let reg = order(&[(1, "old"), (2, "new")]);
        let serving_old = "version=1 pid=7 layout=1 instance=old";
        let serving_new = "version=1 pid=8 layout=1 instance=new";
        assert_eq!(
            decide_from(serving_old, Some(("new", reg.clone()))),
            Decision::TakeOver(serving_old.into())
        );
        // The old pod's container restarted while the new one serves.
        assert!(matches!(
            decide_from(serving_new, Some(("old", reg.clone()))),
            Decision::StandBy(why) if why.contains("newer instance (new)")
        ));
        assert!(matches!(
            decide_from(serving_new, Some(("new", reg.clone()))),
            Decision::StandBy(_)
        ));
        // A target without an instance (started by hand, or by systemd), or one the
        // registry forgot: taken over.
        let bare = "version=1 pid=9 layout=1";
        assert_eq!(
            decide_from(bare, Some(("new", reg.clone()))),
            Decision::TakeOver(bare.into())
        );
        let unknown = "version=1 pid=9 layout=1 instance=gone";
        assert_eq!(
            decide_from(unknown, Some(("old", reg))),
            Decision::TakeOver(unknown.into())
        );
        // Without an instance of its own, a process takes over from anyone.
        assert_eq!(
            decide_from(serving_new, None),
            Decision::TakeOver(serving_new.into())
        );
    }

    #[test]
    fn the_registry_keeps_first_start_order_and_the_newest() {
        let dir = std::env::temp_dir().join(format!("lp-pod-reg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let ctl = dir.join("t.sock").display().to_string();
        assert_eq!(register(&ctl, "a").expect("a"), order(&[(1, "a")]));
        assert_eq!(
            register(&ctl, "b").expect("b"),
            order(&[(1, "a"), (2, "b")])
        );
        // A restarted container keeps its place.
        assert_eq!(
            register(&ctl, "a").expect("a again"),
            order(&[(1, "a"), (2, "b")])
        );
        for i in 0..KEEP_INSTANCES {
            register(&ctl, &format!("p{i}")).expect("more");
        }
        let all = register(&ctl, "last").expect("last");
        assert_eq!(all.len(), KEEP_INSTANCES);
        assert_eq!(
            all.last(),
            Some(&(KEEP_INSTANCES as u64 + 3, "last".into()))
        );
        assert!(
            !all.iter().any(|(_, id)| id == "a"),
            "the oldest are dropped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_values_and_instance_names() {
        assert_eq!(status_value("a=1 instance=x-y", "instance"), Some("x-y"));
        assert_eq!(status_value("instancex=1", "instance"), None);
        assert!(set_instance("two words").is_err());
        assert!(set_instance("").is_err());
    }
}
