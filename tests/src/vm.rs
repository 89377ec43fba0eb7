//! Boot the test guest: Debian's Linux 6.12 under QEMU (TCG), a busybox
//! initramfs made by tests/vm/setup.sh, and a per-test archive that carries
//! the script to run as /test/run.sh.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cpio::Archive;
use crate::{e2e_dir, workspace_root};

/// Printed by the guest's /init right before it runs /test/run.sh.
pub const START_MARKER: &str = "LIGHTPOOL-TEST-START";
/// Printed by the guest's /init after /test/run.sh, followed by its exit code.
pub const EXIT_MARKER: &str = "LIGHTPOOL-TEST-EXIT=";

/// What tests/vm/setup.sh leaves in the cache.
#[derive(Debug, Clone)]
pub struct VmAssets {
    /// `${LIGHTPOOL_CACHE:-<repo>/.cache}/vm`
    pub dir: PathBuf,
    pub kernel: PathBuf,
    /// The base initramfs, uncompressed newc.
    pub initramfs: PathBuf,
    /// e.g. "6.12.117+deb12-amd64"
    pub kernel_release: String,
    pub qemu: PathBuf,
}

/// Finds the guest kernel and base initramfs. Fails, never skips, when
/// tests/vm/setup.sh has not run.
pub fn assets() -> Result<VmAssets> {
    let root = match std::env::var_os("LIGHTPOOL_CACHE") {
        // A relative one is relative to the workspace root, where
        // tests/run.sh runs setup.sh from.
        Some(c) => workspace_root().join(c),
        None => workspace_root().join(".cache"),
    };
    let dir = root.join("vm");
    let kernel = dir.join("vmlinuz");
    let initramfs = dir.join("initramfs.cpio");
    for f in [&kernel, &initramfs] {
        if !f.is_file() {
            bail!(
                "{} is missing: run tests/vm/setup.sh first (as root the first time)",
                f.display()
            );
        }
    }
    let kernel_release = fs::read_to_string(dir.join("kernel-release"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let qemu = find_in_path("qemu-system-x86_64")
        .ok_or_else(|| anyhow!("qemu-system-x86_64 is not on PATH: run tests/vm/setup.sh first"))?;
    Ok(VmAssets {
        dir,
        kernel,
        initramfs,
        kernel_release,
        qemu,
    })
}

fn find_in_path(exe: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(exe))
        .find(|p| p.is_file())
}

/// One guest run.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Names the console log (`target/e2e/<name>.console.log`) and the run's
    /// scratch files; keep it unique per test.
    pub name: String,
    /// Contents of /test/run.sh, run by busybox `sh` after the network is up
    /// (10.0.2.15/24, default route and the host at 10.0.2.2). Its exit code
    /// is the guest's.
    pub script: String,
    /// `(host port, guest port)`: host 127.0.0.1:host reaches guest :guest.
    /// The guest reaches the host's loopback at 10.0.2.2 without any of this.
    pub host_forwards: Vec<(u16, u16)>,
    /// From QEMU's start to the exit marker; QEMU is killed after it.
    pub timeout: Duration,
    pub mem_mb: u32,
    pub cpus: u32,
    /// `(guest path, contents)`: more files for the guest, mode 0755.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// Appended to the kernel command line.
    pub kernel_args: Vec<String>,
    /// Appended to QEMU's arguments (e.g. an NVMe PCIe device).
    pub qemu_args: Vec<String>,
    /// The network namespace QEMU runs in (`ip netns exec`), e.g. to give the guest a
    /// tap device there; `None`: the test's own. The guest's first NIC (user-mode
    /// networking) works the same in either, but `host_forwards` then listen on that
    /// namespace's loopback and 10.0.2.2 is that namespace's.
    pub netns: Option<String>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            name: "guest".to_string(),
            script: String::new(),
            host_forwards: Vec::new(),
            timeout: Duration::from_secs(300),
            mem_mb: 2048,
            cpus: 2,
            extra_files: Vec::new(),
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            netns: None,
        }
    }
}

impl GuestConfig {
    pub fn new(name: &str, script: &str) -> Self {
        Self {
            name: name.to_string(),
            script: script.to_string(),
            ..Self::default()
        }
    }
}

/// Release binaries for the guest: each `(name under target/release, guest path)`
/// with its shared libraries ([`binary_with_libraries`]). Panics (a test helper) when
/// one is not built: tests/run.sh builds them.
pub fn guest_release_binaries(bins: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (bin, at) in bins {
        let p = crate::release_binary(bin).expect("built by tests/run.sh");
        files.extend(binary_with_libraries(&p, at).expect("binary and libraries"));
    }
    files
}

/// A host binary and every shared library `ldd` lists for it, as
/// [`GuestConfig::extra_files`] entries: the binary at `guest_path`, each library at
/// its host path (the guest has the same Debian base).
pub fn binary_with_libraries(binary: &Path, guest_path: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = vec![(
        guest_path.to_string(),
        fs::read(binary).with_context(|| format!("reading {}", binary.display()))?,
    )];
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (package libc-bin)")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let data = fs::read(p).with_context(|| format!("reading {p}"))?;
            out.push((p.to_string(), data));
        }
    }
    Ok(out)
}

/// How a guest run ended: the script ran to its end and the guest powered off.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    /// The exit code of /test/run.sh.
    pub exit_code: i32,
    /// The serial console, `\r` removed.
    pub console: String,
    /// Where the console was written.
    pub console_log: PathBuf,
    /// From QEMU's start to the guest's start marker (kernel and /init).
    pub boot_time: Duration,
    /// From QEMU's start to its exit.
    pub total_time: Duration,
}

impl GuestOutcome {
    /// The last `lines` lines of the console, for assertion messages.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.console, lines)
    }
}

/// TCG guests on a small machine: run one at a time, so that parallel tests
/// in one binary do not slow each other past their timeouts.
static ONE_GUEST: Mutex<()> = Mutex::new(());

/// Boots the guest, runs `cfg.script` as /test/run.sh and waits for it to
/// power off. An error when QEMU cannot start, times out (it is killed), or
/// ends without the exit marker; the message names the console log and
/// carries its tail. A non-zero exit code of the script is not an error: it
/// is in the outcome.
pub fn run_guest(cfg: &GuestConfig) -> Result<GuestOutcome> {
    let assets = assets()?;
    let _one = ONE_GUEST
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());

    let dir = e2e_dir()?;
    let console_log = dir.join(format!("{}.console.log", cfg.name));
    let initrd = dir.join(format!("{}.{}.initrd.cpio", cfg.name, std::process::id()));
    write_initrd(&assets, cfg, &initrd)?;

    let mut netdev = "user,id=n0".to_string();
    for (host, guest) in &cfg.host_forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    // no_timer_check: under TCG on a loaded host the kernel's early check that the
    // timer interrupt arrives can miss it, and with interrupt remapping (the IOMMU
    // guests) that is a panic ("timer doesn't work through Interrupt-remapped
    // IO-APIC", seen once in a full run beside other builds).
    let mut append = "console=ttyS0 quiet panic=-1 no_timer_check".to_string();
    for a in &cfg.kernel_args {
        append.push(' ');
        append.push_str(a);
    }
    let mut cmd = match &cfg.netns {
        None => Command::new(&assets.qemu),
        Some(ns) => {
            // `ip netns exec` execs QEMU in its own process: the death signal below holds.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&assets.qemu);
            c
        }
    };
    cmd.args(["-accel", &format!("tcg,thread={}", tcg_thread())])
        .args(["-cpu", "max", "-M", "q35"])
        .args(["-m", &cfg.mem_mb.to_string()])
        .args(["-smp", &cfg.cpus.to_string()])
        .args(["-nographic", "-no-reboot"])
        .args(["-netdev", &netdev])
        // romfile=: no PXE option ROM, the guest boots from -kernel.
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .args(&cfg.qemu_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe and touches no memory of
    // ours. PR_SET_PDEATHSIG: QEMU dies with the thread that started it (this
    // one, which waits for it), even when the test process is killed.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", assets.qemu.display()))?;
    // Killed on every way out of this function.
    let mut child = KillOnDrop(child);
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let boot_at = Arc::new(Mutex::new(None::<Duration>));
    let stdout = child.0.stdout.take().map(|out| {
        let console = Arc::clone(&console);
        let boot_at = Arc::clone(&boot_at);
        thread::spawn(move || pump(out, &console, Some((&boot_at, started))))
    });
    let stderr_buf = Arc::new(Mutex::new(Vec::<u8>::new()));
    let stderr = child.0.stderr.take().map(|err| {
        let buf = Arc::clone(&stderr_buf);
        thread::spawn(move || pump(err, &buf, None))
    });

    let waited = wait_deadline(&mut child.0, started + cfg.timeout);
    let total_time = started.elapsed();
    join(stdout);
    join(stderr);
    let console = clean(&lock(&console));
    let qemu_stderr = clean(&lock(&stderr_buf));
    let boot_time = lock(&boot_at).unwrap_or(total_time);

    let mut log = console.clone();
    if !qemu_stderr.is_empty() {
        log.push_str("\n--- qemu stderr ---\n");
        log.push_str(&qemu_stderr);
    }
    fs::write(&console_log, &log).with_context(|| format!("writing {}", console_log.display()))?;
    let _ = fs::remove_file(&initrd);

    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) => bail!(
            "guest {:?} timed out after {:?} (QEMU killed); console in {}; its tail:\n{}",
            cfg.name,
            cfg.timeout,
            console_log.display(),
            tail(&log, 40)
        ),
        Err(e) => return Err(e.context(format!("waiting for QEMU ({})", cfg.name))),
    };
    let Some(exit_code) = parse_exit(&console) else {
        let crash = first_crash_line(&console)
            .map(|l| format!(" The guest kernel crashed: {l}."))
            .unwrap_or_default();
        bail!(
            "guest {:?} ended ({status}) without printing {EXIT_MARKER}<code>.{crash} Console in {}; its tail:\n{}",
            cfg.name,
            console_log.display(),
            tail(&log, 40)
        );
    };
    Ok(GuestOutcome {
        exit_code,
        console,
        console_log,
        boot_time,
        total_time,
    })
}

/// TCG's threading: "single" unless LIGHTPOOL_E2E_TCG_THREAD says otherwise.
///
/// With "multi" (one host thread per vCPU), QEMU 7.2 lets a vCPU run code
/// that another vCPU has just patched, now and then: the 6.12 guest dies at
/// boot with "Oops: int3" in a static branch the kernel was switching (seen in
/// sched_clock_cpu when the TSC becomes the clocksource). One thread for all
/// vCPUs makes code patching exact; the guest is no slower on our 2 cores.
fn tcg_thread() -> String {
    std::env::var("LIGHTPOOL_E2E_TCG_THREAD").unwrap_or_else(|_| "single".to_string())
}

/// The base initramfs followed by the per-test archive: the kernel unpacks
/// concatenated archives in order, later files replacing earlier ones.
fn write_initrd(assets: &VmAssets, cfg: &GuestConfig, path: &Path) -> Result<()> {
    let mut archive = Archive::new();
    archive.add_file("/test/run.sh", 0o755, cfg.script.as_bytes())?;
    for (guest_path, data) in &cfg.extra_files {
        archive.add_file(guest_path, 0o755, data)?;
    }
    let extra = archive.finish()?;
    fs::copy(&assets.initramfs, path).with_context(|| {
        format!(
            "copying {} to {}",
            assets.initramfs.display(),
            path.display()
        )
    })?;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // The base archive is a multiple of 512 bytes (cpio pads it so).
    f.write_all(&extra)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Copies a pipe into `buf` until EOF; records when the start marker shows.
fn pump(
    mut from: impl Read,
    buf: &Mutex<Vec<u8>>,
    start: Option<(&Mutex<Option<Duration>>, Instant)>,
) {
    let echo = std::env::var_os("LIGHTPOOL_E2E_ECHO").is_some();
    let mut chunk = [0u8; 8192];
    loop {
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if echo {
                    let _ = std::io::stderr().write_all(&chunk[..n]);
                }
                let mut b = lock(buf);
                b.extend_from_slice(&chunk[..n]);
                if let Some((at, t0)) = start {
                    let mut at = lock(at);
                    // Look only at the new bytes plus enough to span a split.
                    let from = b.len().saturating_sub(n + START_MARKER.len());
                    if at.is_none() && contains(&b[from..], START_MARKER.as_bytes()) {
                        *at = Some(t0.elapsed());
                    }
                }
            }
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The child's exit status, or `None` when the deadline passed first; the
/// child is dead either way (killed when need be), so its pipes close.
fn wait_deadline(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        }
    }
}

fn join(h: Option<JoinHandle<()>>) {
    if let Some(h) = h {
        let _ = h.join();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Console bytes as text: no `\r`, no terminal escapes (SeaBIOS clears
/// the screen).
fn clean(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\x1b' => {
                // CSI: ESC [ parameters final-byte; else ESC and one char.
                if chars.next() == Some('[') {
                    for p in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&p) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The first line that says the guest kernel went down.
fn first_crash_line(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| {
            ["Oops:", "BUG:", "Kernel panic"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(str::trim)
}

/// The code after the last exit marker.
fn parse_exit(console: &str) -> Option<i32> {
    let at = console.rfind(EXIT_MARKER)? + EXIT_MARKER.len();
    let digits: String = console[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

pub(crate) fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_marker() {
        assert_eq!(parse_exit("x\nLIGHTPOOL-TEST-EXIT=0\n"), Some(0));
        assert_eq!(parse_exit("LIGHTPOOL-TEST-EXIT=3\n[ 1.0] reboot"), Some(3));
        assert_eq!(
            parse_exit("echo LIGHTPOOL-TEST-EXIT=1\nLIGHTPOOL-TEST-EXIT=127"),
            Some(127)
        );
        assert_eq!(parse_exit("LIGHTPOOL-TEST-EXIT="), None);
        assert_eq!(parse_exit("no marker"), None);
    }

    #[test]
    fn console_cleaned() {
        assert_eq!(
            clean(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\nBooting\r\n"),
            "SeaBIOS\nBooting\n"
        );
    }

    #[test]
    fn crash_line() {
        let c = "Booting\n[    4.48] Oops: int3: 0000 [#1] PREEMPT SMP\n[ 4.49] Kernel panic - x\n";
        assert_eq!(
            first_crash_line(c),
            Some("[    4.48] Oops: int3: 0000 [#1] PREEMPT SMP")
        );
        assert_eq!(first_crash_line("all fine\n"), None);
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
