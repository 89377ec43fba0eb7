//! The standalone instance as a user runs it, for the tests of `lightpool
//! standalone`, `lightpool agent` and what runs on them: node-a (`lightpool
//! standalone`: store, controller, agent, its target) and node-b (`lightpool
//! agent`: an agent and its target joining node-a's store), each a process of
//! ours killed when dropped, and `lightpool` run against them.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::target_bin;

pub fn lightpool() -> &'static str {
    env!("CARGO_BIN_EXE_lightpool")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process of ours, killed (and its target, found by its API) when dropped.
pub struct Proc {
    pub child: Child,
    pub target_api: PathBuf,
}

impl Proc {
    pub fn kill_hard(&mut self) {
        // SIGKILL: no clean-up, no lease released (as a crash).
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its dataplane, orphaned, is stopped by the pid it reports.
        let o = Command::new(lightpool())
            .args(["status", "--json", "--socket"])
            .arg(&self.target_api)
            .output()
            .unwrap();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            if let Some(pid) = v["pid"].as_u64() {
                // SAFETY: kill(2) on the pid our own target reported.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.target_api.exists() && Instant::now() < deadline {
            let _ = std::fs::remove_file(&self.target_api);
        }
    }

    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

pub struct Setup {
    pub dir: PathBuf,
    pub port_a: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Setup {
    pub fn lp(&self, args: &[&str]) -> Output {
        Command::new(lightpool())
            .arg("--data-dir")
            .arg(self.dir.join("a"))
            .args(args)
            .output()
            .expect("run lightpool")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.lp(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "lightpool {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn refused(&self, args: &[&str]) -> String {
        let o = self.lp(args);
        assert_eq!(o.status.code(), Some(1), "lightpool {args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn standalone(&self) -> Proc {
        let child = Command::new(lightpool())
            .arg("--data-dir")
            .arg(self.dir.join("a"))
            .args([
                "standalone",
                "--node",
                "node-a",
                "--pool-size",
                "1GiB",
                "--port",
            ])
            .arg(self.port_a.to_string())
            .arg("--target-binary")
            .arg(target_bin())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("a.err")).unwrap())
            .spawn()
            .unwrap();
        let p = Proc {
            child,
            target_api: self.dir.join("a/target.api.sock"),
        };
        self.wait_for("node-a Ready", 30, || self.health("node-a") == "Ready");
        p
    }

    pub fn agent(&self, port: u16) -> Proc {
        self.agent_as("b", port, None)
    }

    /// Node `node-NAME` (its directory NAME) on `port`, telling the others to reach
    /// it at `advertise` when given (a shim in between).
    pub fn agent_as(&self, name: &str, port: u16, advertise: Option<SocketAddr>) -> Proc {
        let mut cmd = Command::new(lightpool());
        cmd.arg("--data-dir")
            .arg(self.dir.join("a"))
            .args(["agent", "--node", &format!("node-{name}")])
            .args(["--pool-size", "1GiB", "--port"])
            .arg(port.to_string())
            .arg("--node-dir")
            .arg(self.dir.join(name))
            .arg("--target-binary")
            .arg(target_bin());
        if let Some(a) = advertise {
            cmd.arg("--advertise").arg(a.to_string());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            target_api: self.dir.join(name).join("target.api.sock"),
        }
    }

    pub fn health(&self, pool: &str) -> String {
        let o = self.lp(&["pool", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["metadata"]["name"] == pool)
                    .map(|p| p["status"]["health"].as_str().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    }

    /// Waits until `f` holds; returns how long it took.
    pub fn wait_for(&self, what: &str, secs: u64, f: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{what}: not within {secs} s; {}",
                std::fs::read_to_string(self.dir.join("a.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        start.elapsed()
    }

    /// `lightpool --json target ARGS` against node `node`'s target.
    pub fn target_json(&self, node: &str, args: &[&str]) -> serde_json::Value {
        let sock = self.dir.join(node).join("target.api.sock");
        let mut all = vec!["--json", "--socket", sock.to_str().unwrap(), "target"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The volumes of node `node`'s pool, as `lightpool target volume list` prints them.
    pub fn target_volumes(&self, node: &str) -> String {
        let sock = self.dir.join(node).join("target.api.sock");
        self.ok(&[
            "--socket",
            sock.to_str().unwrap(),
            "target",
            "volume",
            "list",
        ])
    }

    pub fn node_of(&self, volume: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["volume", "show", volume, "--json"])).unwrap();
        v["status"]["node"].as_str().unwrap_or("").to_string()
    }
}

impl Setup {
    /// A fresh directory named after `tag` and this process, node-a's port chosen.
    pub fn new(tag: &str) -> Setup {
        let dir = std::env::temp_dir().join(format!("lp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Setup {
            dir,
            port_a: free_port(),
        }
    }
}
