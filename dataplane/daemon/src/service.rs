//! Running as a service: the signals the target takes, and systemd's readiness
//! protocol (sd_notify: datagrams to the socket named by `$NOTIFY_SOCKET`).
//!
//! Readiness: `READY=1` once every listener and the control socket accept. A hot
//! upgrade keeps systemd's view right: the new process sends `MAINPID=<its pid>` while
//! the old one is still alive and waiting for it (so the unit never sees its main
//! process exit), and `READY=1` once it serves; if the old process does not let go
//! after all, the new one gives the main PID back (`MAINPID=<old pid>`) before it
//! exits. Messages from a process other than the unit's main one need the unit's
//! `NotifyAccess=all` (deploy/systemd/lightpool-target.service sets it) and count only
//! from the unit's control group (a new process started by `systemctl reload`); so the
//! old process, the main one, also names its successor (`MAINPID=<new pid>`) just
//! before it lets go, which systemd takes from a privileged main process even for a
//! successor started by hand outside the unit.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where notifications go: `$NOTIFY_SOCKET` of this process, else the one a hot
/// upgrade's predecessor passed on (set with [`set_inherited_socket`]).
fn socket() -> Option<String> {
    std::env::var(NOTIFY_SOCKET)
        .ok()
        .or_else(|| INHERITED.get().cloned())
        .filter(|s| !s.is_empty())
}

static INHERITED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A hot upgrade started by hand (not through the unit's ExecReload) has no
/// `$NOTIFY_SOCKET`: the predecessor's is used instead.
pub fn set_inherited_socket(path: &str) {
    let _ = INHERITED.set(path.to_string());
}

/// The socket to pass on to a successor, if this process has one.
pub fn socket_to_pass_on() -> Option<String> {
    socket().filter(|s| !s.chars().any(char::is_whitespace))
}

/// Sends one notification (`KEY=VALUE` lines). `Ok(false)` when there is no socket
/// (not started by systemd): nothing to do.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = socket() else {
        return Ok(false);
    };
    send(&path, state)?;
    Ok(true)
}

/// One datagram to a socket named as `$NOTIFY_SOCKET` names it: a path, or `@name` in
/// the abstract namespace.
fn send(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// [`notify`], logging a failure (the target serves on either way).
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state = state.replace('\n', " "), "cannot notify the service manager");
    }
}

/// The signals the main thread takes with `sigwait`: blocked in every thread
/// (reactors inherit the mask).
pub struct Signals(libc::sigset_t);

impl Signals {
    /// Block SIGINT, SIGTERM, SIGQUIT and SIGHUP in this thread and every thread it
    /// starts afterwards.
    pub fn block() -> Signals {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it and
        // pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals(set)
        }
    }

    /// Waits for a signal that stops the target and returns it. SIGHUP (a closed
    /// terminal, or a reload by habit) is logged and ignored: the configuration is not
    /// reread by signal (a new binary comes in with `lightpool-target upgrade`).
    pub fn wait_for_stop(&self) -> i32 {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: the set was initialised by `block`; sigwait writes one int.
            let rc = unsafe { libc::sigwait(&self.0, &mut sig) };
            if rc != 0 {
                continue;
            }
            if sig == libc::SIGHUP {
                tracing::info!(
                    "SIGHUP received and ignored: the target keeps serving (it rereads nothing \
                     on a signal; replace the binary with `lightpool-target upgrade`, stop it \
                     with SIGTERM)"
                );
                continue;
            }
            return sig;
        }
    }
}

/// A signal's name, for the log.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so a
/// time taken by one side of a hot upgrade is read by the other.
pub fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("lp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        send(path.to_str().expect("utf-8"), "READY=1\nMAINPID=42").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("lightpool-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(&format!("@{name}"), "STOPPING=1").expect("send");
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
