//! A RAID1 of two file-backed members under `lightpool-perf --verify`: one member fails
//! (its loop device shrunk under it: every data request past 1 MiB errors, its data
//! kept) and not one host I/O fails; the array reports itself degraded; the member
//! returns and is resynced, copying only what was written while it was away (the bytes
//! are reported and bounded by the range the host wrote); the resynced member alone
//! then serves every block the host reads back. Then a degraded array is handed over
//! in a hot upgrade under verifying load, and the new process resyncs it.
//!
//! Why a loop device: the host has no device-mapper (no dm-flakey, dm-error) and no
//! fault injection in its kernel; a loop device is built in, and shrinking its size
//! limit (LOOP_SET_STATUS64) while the target holds it open makes exactly the member's
//! data area fail (writes ENOSPC, reads end of device: the target's io_uring backend
//! answers EIO) while its superblocks at the start stay, and restoring the limit brings
//! the same data back: a disk that drops off its path and returns.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lightpool_e2e::perfjson::{json_num, perf_ok};
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:raid";
const MEMBER: u64 = 256 << 20;
/// The host writes 64 MiB of the array (4 KiB blocks).
const RANGE_BLOCKS: u64 = 16384;
const REGION: u64 = 1 << 20;

/// `struct loop_info64` of linux/loop.h.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// A loop device over a file, detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path) -> Loop {
        // Direct I/O: the file's page cache holds nothing the shrink would have to
        // write back first (which stalls the device for seconds).
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .expect("losetup (util-linux) runs");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        }
    }

    /// Limits the device to `bytes` (0: the whole file) while it is in use.
    fn set_limit(&self, bytes: u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.dev)
            .expect("open the loop device");
        // SAFETY: LoopInfo64 is plain data; zeroes are a valid value.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel fills a loop_info64 we own, through a descriptor we hold.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_GET_STATUS64, &mut info) };
        assert_eq!(
            r,
            0,
            "LOOP_GET_STATUS64: {}",
            std::io::Error::last_os_error()
        );
        info.lo_sizelimit = bytes;
        // SAFETY: the kernel reads the loop_info64 we pass.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), LOOP_SET_STATUS64, &info) };
        assert_eq!(
            r,
            0,
            "LOOP_SET_STATUS64: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn trid(addr: SocketAddr) -> String {
    format!(
        "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{} subnqn:{NQN}",
        addr.ip(),
        addr.port()
    )
}

/// lightpool-perf with --verify over the host's range: randrw while failing and
/// returning members, randread to check what a member serves.
fn perf(addr: SocketAddr, workload: &str, secs: u32) -> Child {
    Command::new(release_binary("lightpool-perf").expect("tests/run.sh builds lightpool-perf"))
        .arg("-r")
        .arg(trid(addr))
        .args([
            "-q", "32", "-o", "4096", "-w", workload, "-M", "50", "--qpairs", "2",
        ])
        .args(["--verify", "--json", "--seed", "11", "-c", "1"])
        .args([
            "-t",
            &secs.to_string(),
            "--range",
            &format!("0:{RANGE_BLOCKS}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lightpool-perf")
}

/// `lightpool-target [--control-socket S] ARGS...`: (success, stdout + stderr).
fn target_cmd(control: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(release_binary("lightpool-target").expect("built"))
        .arg("--control-socket")
        .arg(control)
        .args(args)
        .output()
        .expect("run lightpool-target");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn raid(control: &str, args: &[&str]) -> String {
    let mut all = vec!["raid"];
    all.extend_from_slice(args);
    let (ok, out) = target_cmd(control, &all);
    assert!(ok, "lightpool-target raid {args:?}: {out}");
    out
}

/// The `key=` number of the array's status line.
fn field(status: &str, key: &str) -> u64 {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

fn wait_state(control: &str, state: &str) -> String {
    let t0 = Instant::now();
    loop {
        let st = raid(control, &["status", "md0"]);
        if st
            .lines()
            .next()
            .is_some_and(|l| l.contains(&format!(" raid1 {state} ")))
        {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "md0 never became {state}: {st}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The data areas of the two members (past the 1 MiB header) are identical.
fn same_data(a: &Path, b: &Path) -> bool {
    let x = std::fs::read(a).expect("read a");
    let y = std::fs::read(b).expect("read b");
    x.len() == y.len() && x[REGION as usize..] == y[REGION as usize..]
}

fn member_file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(MEMBER))
        .expect("member file");
    p
}

#[test]
fn raid1_member_fails_returns_and_travels_degraded_under_verify() {
    let dir = e2e_dir().expect("dir").join("raid1-e2e");
    std::fs::create_dir_all(&dir).expect("dir");
    let a = member_file(&dir, "a.img");
    let b = member_file(&dir, "b.img");
    let lo = Loop::attach(&b);
    let port = free_port().expect("port");
    let control = dir.join("control.sock").display().to_string();
    let cfg = dir.join("target.toml");
    std::fs::write(
        &cfg,
        format!(
            "[target]\ncores = [0]\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             [[raid]]\nname = \"md0\"\nlevel = \"raid1\"\nblock_size = 4096\n\
             devices = [\"{}\", \"{}\"]\nbitmap_clear_delay_ms = 500\nrebuild_rate = \"0\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\nraid = \"md0\"\n",
            a.display(),
            lo.dev
        ),
    )
    .expect("config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(&control);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let t = HostProcess::spawn_listening("raid1-e2e-target", cmd, addr, Duration::from_secs(30))
        .expect("target starts");
    let log = || t.log();
    assert!(log().contains("array md0 raid1 optimal"), "{}", log());

    // 1. Member b fails under a verifying load: not one error.
    let run = perf(addr, "randrw", 8);
    thread::sleep(Duration::from_secs(3));
    lo.set_limit(REGION);
    let json = perf_ok(run, "member loss", &log);
    eprintln!(
        "member loss under load: {:.0} IOPS, {} blocks checked, max latency {:.0} us",
        json_num(&json, "iops"),
        json_num(&json, "blocks_checked"),
        json_num(&json, "max_us")
    );
    let st = raid(&control, &["status", "md0"]);
    eprintln!("after the loss:\n{st}");
    assert!(
        st.contains(" raid1 degraded ") && st.contains(&format!("{} faulty", lo.dev)),
        "{st}"
    );

    // 2. More writes while it is away, then it returns and is resynced: only what
    //    was written while away (within the host's 64 MiB range of a 255 MiB array).
    let json = perf_ok(perf(addr, "randrw", 3), "degraded", &log);
    assert!(json_num(&json, "iops") > 0.0);
    lo.set_limit(0);
    let out = raid(&control, &["re-add", "md0", &lo.dev]);
    eprintln!("{out}");
    assert!(out.contains("resync of"), "{out}");
    let st = wait_state(&control, "optimal");
    let copied = field(&st, "copied_bytes");
    eprintln!("after the return:\n{st}");
    let array = field(&st, "blocks") * 4096;
    assert!(copied > 0, "{st}");
    assert!(
        copied <= RANGE_BLOCKS * 4096 + REGION,
        "copied {copied} bytes: more than the host wrote to ({} bytes): {st}",
        RANGE_BLOCKS * 4096
    );
    assert!(
        copied < array / 2,
        "copied {copied} of {array}: not a full resync"
    );
    assert!(same_data(&a, &b), "the members differ after the resync");

    // 3. The returned member alone serves everything the host wrote.
    raid(&control, &["fail", "md0", &a.display().to_string()]);
    perf_ok(
        perf(addr, "randread", 3),
        "reads from the resynced member alone",
        &log,
    );
    raid(&control, &["re-add", "md0", &a.display().to_string()]);
    wait_state(&control, "optimal");

    // 4. A degraded array handed over in a hot upgrade, under verifying load.
    raid(&control, &["fail", "md0", &lo.dev]);
    wait_state(&control, "degraded");
    let run = perf(addr, "randrw", 8);
    thread::sleep(Duration::from_secs(2));
    let next = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let (ok, out) = target_cmd(
        &control,
        &["upgrade", "--binary", &next.display().to_string()],
    );
    assert!(ok, "upgrade failed:\n{out}\ntarget log:\n{}", log());
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.contains("pause"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let json = perf_ok(run, "hot upgrade of a degraded array", &log);
    eprintln!(
        "across the upgrade: {:.0} IOPS, max latency {:.0} us",
        json_num(&json, "iops"),
        json_num(&json, "max_us")
    );
    let st = raid(&control, &["status", "md0"]);
    assert!(
        st.contains(" raid1 degraded ") && st.contains(&format!("{} faulty", lo.dev)),
        "the successor knows the failed member: {st}"
    );
    // The new process resyncs it.
    raid(&control, &["re-add", "md0", &lo.dev]);
    let st = wait_state(&control, "optimal");
    eprintln!("after the upgrade and the return:\n{st}");
    assert!(
        same_data(&a, &b),
        "the members differ after the second resync"
    );
    let (ok, out) = target_cmd(&control, &["devices"]);
    assert!(ok && out.contains("kind=raid1 name=md0"), "{out}");
    // Stop the new process (it is not our child: by its pid).
    stop_target(&control);
    drop(t);
}

/// Stops the target serving `control` (SIGTERM to the pid its STATUS reports).
fn stop_target(control: &str) {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(control) else {
        return;
    };
    let _ = s.write_all(b"STATUS\n");
    let mut line = String::new();
    let _ = BufReader::new(&s).read_line(&mut line);
    if let Some(pid) = line
        .split("pid=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<i32>().ok())
    {
        // SAFETY: kill(2) with the pid the target reported for itself.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        thread::sleep(Duration::from_millis(500));
    }
}
