//! Where a target's sockets are, one scheme for the target and its clients. A target's
//! control socket is its own, named after its first listener, in one runtime folder
//! ([`runtime_dir`]: e.g. `/run/lightpool/target-127.0.0.1-4420.sock`); its API socket
//! is the control socket's path with `.sock` replaced by `.api.sock`
//! ([`api_path_for`]). A client given neither finds the one target whose API socket
//! answers in the runtime folder ([`find_api_socket`]), and refuses when several do.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// How an API socket's name ends.
pub const API_SUFFIX: &str = ".api.sock";

/// Where default sockets live: `$LIGHTPOOL_RUNTIME_DIR` if set, else `/run/lightpool`
/// for root (the systemd unit's RuntimeDirectory), else `/tmp/lightpool-UID`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LIGHTPOOL_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        PathBuf::from("/run/lightpool")
    } else {
        std::env::temp_dir().join(format!("lightpool-{uid}"))
    }
}

/// The API socket beside the control socket `control` (`.sock` -> `.api.sock`, else
/// `.api` appended).
pub fn api_path_for(control: &str) -> String {
    match control.strip_suffix(".sock") {
        Some(base) => format!("{base}{API_SUFFIX}"),
        None => format!("{control}.api"),
    }
}

/// The API sockets in `dir` that accept a connection (a target serves them), sorted.
pub fn answering_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut live: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(API_SUFFIX))
        })
        .filter(|p| UnixStream::connect(p).is_ok())
        .collect();
    live.sort();
    live
}

/// The API socket of the one target running (its API socket answering in
/// [`runtime_dir`]); an error that says what to give when none or several answer.
pub fn find_api_socket() -> Result<PathBuf, String> {
    let dir = runtime_dir();
    let mut live = answering_in(&dir);
    match live.len() {
        0 => Err(format!(
            "no lightpool-target answers in {}: start one, or name its socket with --socket or --control-socket",
            dir.display()
        )),
        1 => Ok(live.remove(0)),
        n => Err(format!(
            "{n} targets run here; say which with --socket PATH (or --control-socket PATH):\n{}",
            live.iter()
                .map(|p| format!("  {}", p.display()))
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_api_socket_sits_beside_the_control_socket() {
        assert_eq!(
            api_path_for("/run/lightpool/target-127.0.0.1-4420.sock"),
            "/run/lightpool/target-127.0.0.1-4420.api.sock"
        );
        assert_eq!(api_path_for("/tmp/ctl"), "/tmp/ctl.api");
    }

    #[test]
    fn only_answering_api_sockets_are_found() {
        let dir = std::env::temp_dir().join(format!("lp-api-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // A control socket, a live API socket, and a stale one (its listener gone).
        let _ctl = UnixListener::bind(dir.join("target-a.sock")).expect("bind");
        let _a = UnixListener::bind(dir.join("target-a.api.sock")).expect("bind");
        drop(UnixListener::bind(dir.join("target-b.api.sock")).expect("bind"));
        assert_eq!(answering_in(&dir), vec![dir.join("target-a.api.sock")]);
        let _c = UnixListener::bind(dir.join("target-c.api.sock")).expect("bind");
        assert_eq!(answering_in(&dir).len(), 2);
        assert!(answering_in(&dir.join("none")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
