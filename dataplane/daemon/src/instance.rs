//! Which control socket belongs to which target. Each target's default control socket
//! is its own, named after its first listener, in one runtime folder
//! (`/run/lightpool/` for root, `/tmp/lightpool-UID/` otherwise, or
//! `$LIGHTPOOL_RUNTIME_DIR`), so two targets on one
//! machine never share it by accident. The commands that talk to a running target
//! (`upgrade`, `ana`, `devices`) find it from the same listener (`--config` or
//! `--listen`), or else act only when exactly one target answers in that folder, and
//! say which; with several they refuse and list them.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::fdpass::read_line;

/// The listener of the embedded default configuration.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:4420";

/// Where default control sockets live: `$LIGHTPOOL_RUNTIME_DIR` if set, else
/// `/run/lightpool` for root (the systemd unit's RuntimeDirectory), else
/// `/tmp/lightpool-UID` (one definition, shared with the `lightpool` CLI, which finds
/// the API sockets beside these).
pub fn runtime_dir() -> PathBuf {
    lightpool_api::socket::runtime_dir()
}

/// The default control socket of a target whose first listener is `address`
/// (`IP:PORT` as configured), e.g. `/run/lightpool/target-127.0.0.1-4420.sock`.
pub fn socket_for_listener(address: &str) -> String {
    let name: String = address
        .trim()
        .chars()
        .filter(|c| !matches!(c, '[' | ']'))
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    runtime_dir()
        .join(format!("target-{name}.sock"))
        .display()
        .to_string()
}

/// Only the first listener's address of a configuration file (the rest is checked
/// when the target loads it).
#[derive(serde::Deserialize)]
struct Listeners {
    #[serde(default)]
    listener: Vec<ListenerAddress>,
}

#[derive(serde::Deserialize)]
struct ListenerAddress {
    address: String,
}

/// The first listener a target started with these options serves: the first
/// `--listen`, else the configuration's first `[[listener]]`, else the embedded
/// default. `None` when the configuration cannot be read (the target reports why).
pub fn first_listener(config: Option<&Path>, listen: &[std::net::SocketAddr]) -> Option<String> {
    if let Some(a) = listen.first() {
        return Some(a.to_string());
    }
    let Some(path) = config else {
        return Some(DEFAULT_LISTENER.to_string());
    };
    let text = std::fs::read_to_string(path).ok()?;
    let l: Listeners = toml::from_str(&text).ok()?;
    l.listener.into_iter().next().map(|l| l.address)
}

/// Make the runtime folder (owner only) so a target can bind its socket there.
pub fn prepare_dir(socket: &str) -> Result<()> {
    let Some(dir) = Path::new(socket).parent() else {
        return Ok(());
    };
    if dir != runtime_dir() || dir.is_dir() {
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the control socket folder {}", dir.display()))
}

/// STATUS of the target behind `path`, if one answers.
fn status(path: &Path) -> Option<String> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"STATUS\n").ok()?;
    let line = read_line(&mut BufReader::new(&s)).ok()??;
    line.strip_prefix("OK ").map(str::to_string)
}

/// The control socket a command acts on when none was given: the one derived from
/// `--config`/`--listen` when either is given, else the one target answering in the
/// runtime folder. Says on stderr which target it picked.
pub fn find_running(config: Option<&Path>, listen: &[std::net::SocketAddr]) -> Result<String> {
    if config.is_some() || !listen.is_empty() {
        let Some(first) = first_listener(config, listen) else {
            bail!(
                "cannot tell the control socket from {}: it has no [[listener]] (give --control-socket PATH)",
                config.map_or(String::new(), |c| c.display().to_string())
            );
        };
        return Ok(socket_for_listener(&first));
    }
    let dir = runtime_dir();
    let mut live = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            // Control sockets only: each API socket beside one speaks gRPC.
            let api = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(lightpool_api::socket::API_SUFFIX));
            if p.extension().is_some_and(|e| e == "sock") && !api {
                if let Some(st) = status(&p) {
                    live.push((p, st));
                }
            }
        }
    }
    match live.len() {
        0 => bail!(
            "no lightpool-target answers in {}: give its --control-socket PATH (or the --config or --listen it was started with)",
            dir.display()
        ),
        1 => {
            let (p, st) = live.remove(0);
            eprintln!(
                "lightpool-target: the one target running here: {} ({st})",
                p.display()
            );
            Ok(p.display().to_string())
        }
        _ => {
            let list: Vec<String> = live
                .iter()
                .map(|(p, st)| format!("  {} ({st})", p.display()))
                .collect();
            bail!(
                "{} targets run here; say which with --control-socket PATH:\n{}",
                live.len(),
                list.join("\n")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listener_has_its_own_socket() {
        let a = socket_for_listener("127.0.0.1:4420");
        let b = socket_for_listener("127.0.0.1:4421");
        let c = socket_for_listener("[::1]:4420");
        assert!(a.ends_with("/target-127.0.0.1-4420.sock"), "{a}");
        assert!(c.ends_with("/target---1-4420.sock"), "{c}");
        assert_ne!(a, b);
        assert!(a.starts_with(&runtime_dir().display().to_string()));
    }

    #[test]
    fn the_first_listener_comes_from_listen_then_the_file_then_the_default() {
        let dir = std::env::temp_dir().join(format!("lp-instance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("t.toml");
        std::fs::write(
            &f,
            "[target]\nreactors = 2\n[[listener]]\naddress = \"10.1.2.3:4430\"\n[[listener]]\naddress = \"10.1.2.3:4431\"\n",
        )
        .expect("write");
        let l: Vec<std::net::SocketAddr> = vec!["127.0.0.1:5000".parse().expect("addr")];
        assert_eq!(
            first_listener(Some(&f), &l).as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(
            first_listener(Some(&f), &[]).as_deref(),
            Some("10.1.2.3:4430")
        );
        assert_eq!(first_listener(None, &[]).as_deref(), Some(DEFAULT_LISTENER));
        assert_eq!(first_listener(Some(&dir.join("none.toml")), &[]), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
