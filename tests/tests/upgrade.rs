//! Hot upgrade of lightpool-target under load: hosts keep their connections, see no
//! error, and read back everything they wrote, across ten upgrades; a file namespace
//! whose file was unlinked (another file now at its path) is still served, because the
//! open descriptor is handed over, not the path; a state layout the
//! new binary cannot read is refused and the old binary keeps serving; a new binary
//! that dies while adopting leaves the old one serving.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lightpool_e2e::nvme_host::HostController;
use lightpool_e2e::perfjson::json_num;
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:upgrade";

struct Setup {
    addr: SocketAddr,
    control: String,
    first: HostProcess,
}

fn start(name: &str, extra: &[&str]) -> Setup {
    start_on(name, "reactors = 2", extra)
}

/// `reactors` is the [target] line choosing reactors, e.g. "cores = [0]".
fn start_on(name: &str, reactors: &str, extra: &[&str]) -> Setup {
    start_ns(name, reactors, "ram = \"64MiB\"", extra)
}

/// `backing` is the namespace's line choosing its device, e.g. `ram = "64MiB"`.
fn start_ns(name: &str, reactors: &str, backing: &str, extra: &[&str]) -> Setup {
    let port = free_port().expect("port");
    let dir = e2e_dir().expect("e2e dir");
    let control = dir.join(format!("{name}.sock")).display().to_string();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[target]\n{reactors}\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\n{backing}\nblock_size = 512\n"
        ),
    )
    .expect("config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(&control)
        .args(extra);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let first = HostProcess::spawn_listening(name, cmd, addr, Duration::from_secs(20))
        .expect("target starts");
    Setup {
        addr,
        control,
        first,
    }
}

/// `lightpool-target upgrade --binary BIN`; returns (success, output).
fn upgrade(control: &str, bin: &PathBuf, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("upgrade")
        .arg("--binary")
        .arg(bin)
        .arg("--control-socket")
        .arg(control);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run upgrade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// pid and version of the target behind the control socket.
fn status(control: &str) -> (u32, String) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(control).expect("control socket answers");
    s.write_all(b"STATUS\n").expect("send");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    let pid = line
        .split("pid=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("pid");
    let ver = line
        .split("version=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .expect("version")
        .to_string();
    (pid, ver)
}

fn kill(pid: u32) {
    // SAFETY: kill(2) with a pid we just read from the target itself.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// I/O load: one controller, `queues` I/O queues, each writing and verifying batches of
/// 16 blocks of 4 KiB in its own region until stopped. Returns blocks verified per
/// queue and the longest batch round trip.
fn load(
    addr: SocketAddr,
    queues: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Result<(Vec<usize>, Duration), String>> {
    thread::spawn(move || {
        let ctrl = HostController::connect(addr, NQN, queues).map_err(|e| format!("{e:#}"))?;
        let HostController { mut admin, io, .. } = ctrl;
        let mut handles = Vec::new();
        for (qi, mut q) in io.into_iter().enumerate() {
            let stop = stop.clone();
            handles.push(thread::spawn(
                move || -> Result<(usize, Duration), String> {
                    let mut done = 0;
                    let mut worst = Duration::ZERO;
                    let mut gen = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        gen += 1;
                        let base = (qi as u64) * 40_000;
                        let lbas: Vec<u64> = (0..16)
                            .map(|i| base + ((gen * 16 + i) % 4096) * 8)
                            .collect();
                        let t = Instant::now();
                        done += q
                            .write_verify_batch(&lbas, 4096, gen)
                            .map_err(|e| format!("queue {qi}: {e:#}"))?;
                        worst = worst.max(t.elapsed());
                    }
                    Ok((done, worst))
                },
            ));
        }
        // Keep the controller alive while the I/O queues work.
        while !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(500));
            let c = HostController {
                admin,
                io: Vec::new(),
                cntlid: 0,
            };
            let mut c = c;
            c.keep_alive().map_err(|e| format!("admin: {e:#}"))?;
            admin = c.admin;
        }
        let mut counts = Vec::new();
        let mut worst = Duration::ZERO;
        for h in handles {
            let (n, w) = h.join().map_err(|_| "I/O thread panicked".to_string())??;
            counts.push(n);
            worst = worst.max(w);
        }
        Ok((counts, worst))
    })
}

#[test]
fn ten_upgrades_under_load_lose_nothing() {
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("tests/run.sh builds the second binary");
    let s = start("upgrade-ten", &[]);
    let (pid0, v0) = status(&s.control);
    let stop = Arc::new(AtomicBool::new(false));
    let l = load(s.addr, 3, stop.clone());
    thread::sleep(Duration::from_secs(1));
    let mut pauses = Vec::new();
    let mut versions = vec![v0.clone()];
    for i in 0..10 {
        let bin = if i % 2 == 0 { &b } else { &a };
        let (ok, out) = upgrade(&s.control, bin, &[]);
        assert!(
            ok,
            "upgrade {i} failed:\n{out}\ntarget log:\n{}",
            s.first.log()
        );
        let pause: f64 = out
            .split("pause ")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no pause in:\n{out}"));
        pauses.push(pause);
        if let Some(steps) = out.lines().find(|l| l.contains("upgrade: steps")) {
            eprintln!("upgrade {i}: {steps}");
        }
        let (pid, v) = status(&s.control);
        assert_ne!(pid, pid0, "a new process serves after upgrade {i}");
        versions.push(v);
        thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::Relaxed);
    let (counts, worst) = l
        .join()
        .expect("load thread")
        .unwrap_or_else(|e| panic!("host saw an error: {e}\nlog:\n{}", s.first.log()));
    eprintln!(
        "blocks verified per queue: {counts:?}; longest batch of 16 writes + 16 reads: {worst:?}"
    );
    eprintln!("handover pauses (ms): {pauses:?}");
    eprintln!("versions: {versions:?}");
    assert!(counts.iter().all(|&n| n > 0), "every queue did I/O");
    // The last binary answers Identify with its own firmware revision, on a fresh
    // controller as well.
    let mut c = HostController::connect(s.addr, NQN, 1).expect("connect after upgrades");
    let fr = String::from_utf8_lossy(&c.identify().expect("identify").fr)
        .trim()
        .to_string();
    assert_eq!(fr, versions[10]);
    assert_ne!(
        versions[9], versions[10],
        "the two binaries report different versions"
    );
    let (pid, _) = status(&s.control);
    kill(pid);
}

#[test]
fn unreadable_layout_is_refused_and_the_old_target_serves_on() {
    let s = start("upgrade-refused", &["--state-layout", "7"]);
    let (pid0, _) = status(&s.control);
    let mut c = HostController::connect(s.addr, NQN, 1).expect("connect");
    c.io[0]
        .write_verify_batch(&[0, 8, 16], 4096, 1)
        .expect("I/O before");
    let b = release_binary("lightpool-target").expect("built");
    let (ok, out) = upgrade(&s.control, &b, &[]);
    assert!(!ok, "upgrade must fail:\n{out}");
    assert!(out.contains("layout 7"), "{out}");
    assert_eq!(status(&s.control).0, pid0, "the old process still serves");
    c.io[0]
        .write_verify_batch(&[0, 8, 16], 4096, 2)
        .expect("same connection still works");
    kill(pid0);
}

#[test]
fn new_binary_dying_mid_adoption_leaves_the_old_one_serving() {
    let s = start("upgrade-crash", &[]);
    let (pid0, _) = status(&s.control);
    let mut c = HostController::connect(s.addr, NQN, 2).expect("connect");
    c.io[0]
        .write_verify_batch(&[100, 108], 4096, 1)
        .expect("I/O before");
    let b = release_binary("lightpool-target").expect("built");
    let (ok, out) = upgrade(&s.control, &b, &[("LIGHTPOOL_TEST_CRASH_AT", "adopt")]);
    assert!(!ok, "upgrade must fail:\n{out}");
    assert_eq!(status(&s.control).0, pid0, "the old process still serves");
    for q in &mut c.io {
        q.write_verify_batch(&[200, 208, 216], 4096, 3)
            .expect("connections survive");
    }
    // And a later upgrade still works.
    let (ok, out) = upgrade(&s.control, &b, &[]);
    assert!(ok, "{out}");
    c.io[1]
        .write_verify_batch(&[300], 4096, 4)
        .expect("after the real upgrade");
    let (pid, _) = status(&s.control);
    kill(pid);
}

#[test]
fn both_sides_dying_after_let_go_recovers_from_the_region() {
    let dir = e2e_dir().expect("dir").join("upgrade-recover-state");
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let mut s = start("upgrade-recover", &["--state-dir", &dir_s]);
    let (pid0, _) = status(&s.control);
    let lbas: Vec<u64> = (0..32).map(|i| i * 64).collect();
    {
        let mut c = HostController::connect(s.addr, NQN, 1).expect("connect");
        c.io[0]
            .write_verify_batch(&lbas, 4096, 7)
            .expect("write before");
    }
    // A host still connected when both processes die: its controller and queues are in
    // the region, and recovery reads, checks and reports them before dropping them.
    let mut live = HostController::connect(s.addr, NQN, 2).expect("connect");
    live.io[0]
        .write_verify_batch(&[4096], 4096, 8)
        .expect("write before");
    let b = release_binary("lightpool-target").expect("built");
    let (ok, out) = upgrade(&s.control, &b, &[("LIGHTPOOL_TEST_CRASH_AT", "after-bye")]);
    assert!(
        !ok,
        "the new binary died, the upgrade cannot report success:\n{out}"
    );
    // The old one had let go and exited; the new one died: nobody serves.
    thread::sleep(Duration::from_millis(200));
    assert!(
        s.first.try_wait().expect("wait").is_some(),
        "the old process (pid {pid0}) exited after BYE"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&s.control).is_err(),
        "nobody answers on the control socket"
    );

    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--recover")
        .arg("--state-dir")
        .arg(&dir)
        .arg("--control-socket")
        .arg(&s.control);
    let p = HostProcess::spawn_listening("upgrade-recover-2", cmd, s.addr, Duration::from_secs(20))
        .expect("recovers");
    assert!(p.log().contains("recovered 1 subsystem"), "{}", p.log());
    assert!(
        p.log().contains("dropped 1 controller(s) and 3 queue(s)"),
        "{}",
        p.log()
    );
    drop(live);
    let mut c = HostController::connect(s.addr, NQN, 1).expect("hosts reconnect");
    c.io[0]
        .read_verify_batch(&lbas, 4096, 7)
        .expect("every acknowledged write is still there");
    kill(p.id());
}

/// Runs lightpool-perf (randrw, QD32, 4 queue pairs, --verify) for `secs` seconds
/// against `addr` and returns its JSON report and exit status.
fn perf_run(addr: SocketAddr, secs: u32) -> std::process::Child {
    Command::new(release_binary("lightpool-perf").expect("tests/run.sh builds lightpool-perf"))
        .arg("-r")
        .arg(format!(
            "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{} subnqn:{NQN}",
            addr.ip(),
            addr.port()
        ))
        .args([
            "-q", "32", "-o", "4096", "-w", "randrw", "-M", "50", "--qpairs", "4", "--verify",
            "--json",
        ])
        .args(["-t", &secs.to_string(), "--range", "0:65536", "--seed", "7"])
        // The initiator on core 1, the target on core 0, as the benchmarks run.
        .args(["-c", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lightpool-perf")
}

fn perf_report(child: std::process::Child) -> (bool, String, String) {
    let out = child.wait_with_output().expect("lightpool-perf finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn perf_verify_randrw_across_ten_upgrades() {
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("built");
    let s = start_on("upgrade-perf", "cores = [0]", &[]);
    // Baseline: the same run without upgrades.
    let (ok, base, err) = perf_report(perf_run(s.addr, 8));
    assert!(ok, "baseline run failed: {err}\n{base}");
    let base_p9999 = json_num(&base, "p99_99_us");
    let base_max = json_num(&base, "max_us");
    // With ten upgrades during the run.
    let child = perf_run(s.addr, 12);
    thread::sleep(Duration::from_millis(1500));
    let mut pauses = Vec::new();
    for i in 0..10 {
        let bin = if i % 2 == 0 { &b } else { &a };
        let (ok, out) = upgrade(&s.control, bin, &[]);
        assert!(ok, "upgrade {i} failed:\n{out}");
        pauses.push(
            out.split("pause ")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_string(),
        );
        thread::sleep(Duration::from_millis(800));
    }
    let (ok, run, err) = perf_report(child);
    eprintln!("handover pauses (ms): {pauses:?}");
    eprintln!(
        "baseline: p99.99 {base_p9999:.0} us, max {base_max:.0} us; with 10 upgrades: p99.99 {:.0} us, max {:.0} us, {:.0} IOPS",
        json_num(&run, "p99_99_us"),
        json_num(&run, "max_us"),
        json_num(&run, "iops")
    );
    assert!(ok, "lightpool-perf failed across upgrades: {err}\n{run}");
    assert_eq!(json_num(&run, "error_total"), 0.0, "{run}");
    assert_eq!(json_num(&run, "mismatches"), 0.0, "{run}");
    assert!(json_num(&run, "blocks_checked") > 0.0, "{run}");
    let (pid, _) = status(&s.control);
    kill(pid);
}

/// A file namespace upgraded under verifying I/O after its file was unlinked and another
/// (zeroed) file put at its path: the new binaries serve the open file, which reopening
/// by path cannot do; the decoy is never written.
#[test]
fn file_namespace_keeps_its_unlinked_file_across_upgrades() {
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let dir = e2e_dir().expect("dir");
    let path = dir.join("upgrade-file.img");
    let _ = std::fs::remove_file(&path);
    const SIZE: u64 = 64 << 20;
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(SIZE))
        .expect("backing file");
    let backing = format!("file = \"{}\"\ndirect = false", path.display());
    let s = start_ns("upgrade-file", "reactors = 2", &backing, &[]);
    let (pid0, _) = status(&s.control);
    // Data written before the file goes away, away from the load's blocks.
    let lbas: Vec<u64> = (0..32).map(|i| 100_000 + i * 64).collect();
    let mut c = HostController::connect(s.addr, NQN, 1).expect("connect");
    c.io[0]
        .write_verify_batch(&lbas, 4096, 21)
        .expect("write before");
    // Unlink the served file and put a zeroed one of the same size at its path.
    std::fs::remove_file(&path).expect("unlink");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(SIZE))
        .expect("decoy");
    let stop = Arc::new(AtomicBool::new(false));
    let l = load(s.addr, 2, stop.clone());
    thread::sleep(Duration::from_millis(800));
    let mut versions = Vec::new();
    for (i, bin) in [&b, &a, &b].into_iter().enumerate() {
        let (ok, out) = upgrade(&s.control, bin, &[]);
        assert!(
            ok,
            "upgrade {i} failed:\n{out}\ntarget log:\n{}",
            s.first.log()
        );
        let (pid, v) = status(&s.control);
        assert_ne!(pid, pid0);
        versions.push(v);
        thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let (counts, _) = l
        .join()
        .expect("load thread")
        .unwrap_or_else(|e| panic!("host saw an error: {e}\nlog:\n{}", s.first.log()));
    assert!(
        counts.iter().all(|&n| n > 0),
        "every queue did I/O: {counts:?}"
    );
    // The same connection, and a new one, read what was written before the unlink.
    c.io[0]
        .read_verify_batch(&lbas, 4096, 21)
        .expect("the unlinked file's data, on the old connection");
    let mut c2 = HostController::connect(s.addr, NQN, 1).expect("connect after upgrades");
    c2.io[0]
        .read_verify_batch(&lbas, 4096, 21)
        .expect("the unlinked file's data, on a new connection");
    c2.io[0]
        .write_verify_batch(&[120_000, 120_008], 4096, 22)
        .expect("new writes after the upgrades");
    let fr = String::from_utf8_lossy(&c2.identify().expect("identify").fr)
        .trim()
        .to_string();
    assert_eq!(fr, versions[2], "Identify FR is the last binary's");
    assert_ne!(versions[1], versions[2]);
    // Nothing reached the file now at the path.
    let decoy = std::fs::read(&path).expect("read decoy");
    assert!(
        decoy.iter().all(|&x| x == 0),
        "the file at the path was written: the target reopened by path"
    );
    let (pid, _) = status(&s.control);
    kill(pid);
    let _ = std::fs::remove_file(&path);
}

/// Kills whichever process serves `control` when dropped, so a failed assertion does
/// not leave a successor (started in its own process group by `upgrade`) running.
struct KillServing(String);

impl Drop for KillServing {
    fn drop(&mut self) {
        // A target the test stopped already may still accept and then exit without an
        // answer (its control thread outlived by the SIGTERM): nothing left to kill.
        use std::io::{BufRead, BufReader, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.0) else {
            return;
        };
        let mut line = String::new();
        if s.write_all(b"STATUS\n").is_err() || BufReader::new(&s).read_line(&mut line).is_err() {
            return;
        }
        if let Some(pid) = line
            .split("pid=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
        {
            kill(pid);
        }
    }
}

/// The block devices of the target behind `control`, one line each (DEVICES).
fn devices(control: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(control).expect("control socket answers");
    s.write_all(b"DEVICES\n").expect("send");
    let mut r = BufReader::new(&s);
    let mut head = String::new();
    r.read_line(&mut head).expect("answer");
    let n: usize = head
        .trim()
        .strip_prefix("OK ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("DEVICES answered {head:?}"));
    (0..n)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).expect("device line");
            l.trim().to_string()
        })
        .collect()
}

/// `key=value` of a DEVICES line, as a number.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from {line:?}"))
}

/// A stacked block device (a pass-through that counts I/O, over a RAM device) is handed
/// over like any other across three upgrades under lightpool-perf --verify: no error,
/// no mismatch, the same device stack in every process, and its counts (its own state)
/// carried on and growing.
#[test]
fn stacked_device_is_handed_over_with_its_state() {
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let s = start_ns(
        "upgrade-stacked",
        "reactors = 2",
        "ram = \"64MiB\"\npassthru = true",
        &[],
    );
    let _cleanup = KillServing(s.control.clone());
    let before = devices(&s.control);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before[0].contains("kind=ram") && before[0].contains("name=ram1"),
        "{before:?}"
    );
    assert!(
        before[1].contains("kind=passthru") && before[1].contains("children=0"),
        "{before:?}"
    );
    assert!(
        before[1].contains(&format!("namespaces={NQN}/1")),
        "{before:?}"
    );
    assert_eq!(field(&before[1], "writes"), 0);

    let child = perf_run(s.addr, 10);
    thread::sleep(Duration::from_millis(1500));
    let mut seen = Vec::new();
    for (i, bin) in [&b, &a, &b].into_iter().enumerate() {
        let c = devices(&s.control);
        seen.push(field(&c[1], "reads") + field(&c[1], "writes"));
        let (ok, out) = upgrade(&s.control, bin, &[]);
        assert!(
            ok,
            "upgrade {i} failed:\n{out}\ntarget log:\n{}",
            s.first.log()
        );
        let after = devices(&s.control);
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(after[1].contains("kind=passthru"), "{after:?}");
        let n = field(&after[1], "reads") + field(&after[1], "writes");
        assert!(
            n >= *seen.last().expect("pushed"),
            "upgrade {i}: counts went from {seen:?} back to {n}"
        );
        thread::sleep(Duration::from_millis(1200));
    }
    let (ok, run, err) = perf_report(child);
    assert!(ok, "lightpool-perf failed across upgrades: {err}\n{run}");
    assert_eq!(json_num(&run, "error_total"), 0.0, "{run}");
    assert_eq!(json_num(&run, "mismatches"), 0.0, "{run}");
    let last = devices(&s.control);
    let total = field(&last[1], "reads") + field(&last[1], "writes");
    // Every command the run completed passed through the stacked device, in whichever
    // process served it: the counts add up across the handovers.
    let ios = json_num(&run, "ios") as u64;
    assert!(ios > 0, "{run}");
    assert!(
        total >= ios,
        "the stacked device counted {total} reads and writes, lightpool-perf completed {ios}: counts were lost in a handover ({seen:?})"
    );
    assert!(
        seen.windows(2).all(|w| w[1] > w[0]),
        "counts grew between upgrades: {seen:?}"
    );
    let (pid, _) = status(&s.control);
    kill(pid);
}

/// `lightpool` on the target's API socket (beside its control socket); panics with
/// its output on failure.
fn lightpool(control: &str, args: &[&str]) -> String {
    let out = Command::new(release_binary("lightpool").expect("tests/run.sh builds it"))
        .arg("--control-socket")
        .arg(control)
        .args(args)
        .output()
        .expect("run lightpool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lightpool {args:?}: {text}");
    text
}

/// Objects made through the management API at run time (block devices, one served
/// and one not, a subsystem, namespaces, a listener) are handed over like configured
/// ones, across three upgrades started through `lightpool upgrade` under load, with a
/// namespace added between two of them: the successor serves them, their data is
/// there, the API answers on the same socket.
#[test]
fn objects_made_at_run_time_are_handed_over() {
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let s = start("upgrade-runtime", &[]);
    let _cleanup = KillServing(s.control.clone());
    let rt = "nqn.2024-01.io.lightpool:runtime";
    lightpool(&s.control, &["bdev", "create", "rt1", "--ram", "64MiB"]);
    lightpool(&s.control, &["bdev", "create", "rt2", "--ram", "32MiB"]);
    lightpool(&s.control, &["bdev", "create", "spare", "--ram", "16MiB"]);
    lightpool(&s.control, &["subsystem", "create", rt]);
    lightpool(
        &s.control,
        &[
            "namespace",
            "add",
            "--nqn",
            rt,
            "--nsid",
            "1",
            "--device",
            "rt1",
        ],
    );
    lightpool(
        &s.control,
        &[
            "namespace",
            "add",
            "--nqn",
            NQN,
            "--nsid",
            "2",
            "--device",
            "rt2",
        ],
    );
    let port = free_port().expect("port");
    let second: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    lightpool(&s.control, &["listener", "add", &second.to_string()]);
    // Data on the run-time subsystem, through the run-time listener.
    let lbas: Vec<u64> = (0..16).map(|i| i * 128).collect();
    let mut c = HostController::connect(second, rt, 1).expect("connect to the run-time subsystem");
    c.io[0]
        .write_verify_batch(&lbas, 4096, 31)
        .expect("write before");
    let stop = Arc::new(AtomicBool::new(false));
    let l = load(s.addr, 2, stop.clone());
    thread::sleep(Duration::from_millis(800));
    for (i, bin) in [&b, &a, &b].into_iter().enumerate() {
        let out = lightpool(
            &s.control,
            &["upgrade", "--binary", bin.to_str().expect("utf-8")],
        );
        assert!(out.contains("upgrade complete"), "upgrade {i}: {out}");
        if i == 0 {
            // A change between two upgrades is carried by the next one.
            lightpool(
                &s.control,
                &[
                    "namespace",
                    "add",
                    "--nqn",
                    rt,
                    "--nsid",
                    "2",
                    "--device",
                    "spare",
                ],
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let (counts, _) = l
        .join()
        .expect("load thread")
        .unwrap_or_else(|e| panic!("host saw an error: {e}\nlog:\n{}", s.first.log()));
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    c.io[0]
        .read_verify_batch(&lbas, 4096, 31)
        .expect("the run-time namespace's data, on the same connection");
    let mut c2 = HostController::connect(second, rt, 1).expect("the run-time listener serves");
    c2.io[0]
        .read_verify_batch(&lbas, 4096, 31)
        .expect("and on a new one");
    let ns = lightpool(&s.control, &["--json", "namespace", "list"]);
    for want in [
        format!("\"nqn\": \"{rt}\""),
        "\"device\": \"rt1\"".to_string(),
        "\"device\": \"rt2\"".to_string(),
        "\"device\": \"spare\"".to_string(),
    ] {
        assert!(ns.contains(&want), "{want} missing from {ns}");
    }
    let listeners = lightpool(&s.control, &["listener", "list"]);
    assert!(listeners.contains(&second.to_string()), "{listeners}");
    let status = lightpool(&s.control, &["status"]);
    assert!(
        status.contains("0.1.0-n"),
        "the last binary serves: {status}"
    );
}
