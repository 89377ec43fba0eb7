//! Host-side helpers: processes the tests start (the target) and ports.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vm::tail;
use crate::{e2e_dir, target_dir};

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    wait_for_port_while(addr, timeout, || Ok(()))
}

fn wait_for_port_while(
    addr: SocketAddr,
    timeout: Duration,
    mut still_ok: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        still_ok()?;
        if Instant::now() >= deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A binary of the workspace built with `--release`
/// (`target/release/<name>`), e.g. "lightpool-target".
pub fn release_binary(name: &str) -> Result<PathBuf> {
    let p = target_dir().join("release").join(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build it first (tests/run.sh runs cargo build --release -p lightpool-daemon)",
            p.display()
        );
    }
    Ok(p)
}

/// A process on the host, killed when dropped. Its stdout and stderr go to
/// `target/e2e/<name>.log`.
#[derive(Debug)]
pub struct HostProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl HostProcess {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let log = e2e_dir()?.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Starts the process and waits until it accepts connections at `addr`;
    /// fails early, with its log, if it exits first.
    pub fn spawn_listening(
        name: &str,
        cmd: Command,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self> {
        let mut p = Self::spawn(name, cmd)?;
        p.wait_for_port(addr, timeout)?;
        Ok(p)
    }

    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let Self { name, child, log } = self;
        wait_for_port_while(addr, timeout, || match child.try_wait()? {
            Some(status) => bail!(
                "{name} exited ({status}) before listening on {addr}; log {}:\n{}",
                log.display(),
                tail(&fs::read_to_string(&*log).unwrap_or_default(), 40)
            ),
            None => Ok(()),
        })
        .with_context(|| format!("{} (log {})", self.name, self.log.display()))
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Asks the process to stop (SIGTERM), waits up to `grace`, then kills it.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of a child we have not yet reaped, so
        // the pid cannot have been reused by another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
