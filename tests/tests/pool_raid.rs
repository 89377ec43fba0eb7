//! A pool on a RAID1 array (`[[pool]] raid = "md0"`): two volumes of the pool served
//! as two namespaces under `lightpool-perf --verify`, while one of them is snapshotted,
//! a member of the array fails and returns (resynced from its write-intent bitmap),
//! and the whole stack (array, pool, volumes) is handed over in a hot upgrade. Not one
//! I/O error, not one bad block; afterwards the pool's check (its metadata read back
//! through the array) passes, the members hold the same data, and a target started
//! again from the configuration assembles the array and opens the pool clean.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lightpool_e2e::perfjson::{json_num, perf_ok};
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:pool-raid";
const MEMBER: u64 = 256 << 20;
/// Each volume's verified range (32 MiB of 4 KiB blocks).
const RANGE_BLOCKS: u64 = 8192;
/// The array's header area, which the members do not share.
const HEADER: usize = 1 << 20;

fn perf(addr: SocketAddr, nsid: u32, workload: &str, secs: u32) -> Child {
    Command::new(release_binary("lightpool-perf").expect("tests/run.sh builds lightpool-perf"))
        .arg("-r")
        .arg(format!(
            "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{} subnqn:{NQN} ns:{nsid}",
            addr.ip(),
            addr.port()
        ))
        .args(["-q", "16", "-o", "4096", "-w", workload, "-M", "50"])
        .args(["--verify", "--json", "-c", "1", "--seed", &nsid.to_string()])
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

/// `lightpool-target --control-socket S ARGS...`, which must succeed: its output.
fn cmd(control: &str, args: &[&str]) -> String {
    let out = Command::new(release_binary("lightpool-target").expect("built"))
        .arg("--control-socket")
        .arg(control)
        .args(args)
        .output()
        .expect("run lightpool-target");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lightpool-target {args:?}: {text}");
    text
}

fn wait_optimal(control: &str) -> String {
    let t0 = Instant::now();
    loop {
        let st = cmd(control, &["raid", "status", "md0"]);
        if st
            .lines()
            .next()
            .is_some_and(|l| l.contains(" raid1 optimal "))
        {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "md0 never became optimal again: {st}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn member_file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(MEMBER))
        .expect("member file");
    p
}

fn start(cfg: &Path, control: &str, addr: SocketAddr, name: &str) -> HostProcess {
    let mut c = Command::new(release_binary("lightpool-target").expect("built"));
    c.arg("--config")
        .arg(cfg)
        .arg("--control-socket")
        .arg(control);
    HostProcess::spawn_listening(name, c, addr, Duration::from_secs(30)).expect("target starts")
}

/// Stops the target serving `control` (SIGTERM to the pid its STATUS reports) and
/// waits until its control socket is gone.
fn stop_target(control: &str) {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(control) else {
        return;
    };
    let _ = s.write_all(b"STATUS\n");
    let mut line = String::new();
    let _ = BufReader::new(&s).read_line(&mut line);
    let pid = line
        .split("pid=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    // SAFETY: kill(2) with the pid the target reported for itself.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t0 = Instant::now();
    // Until it is gone or a zombie (the successor of an upgrade is not our child).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
            .is_some_and(|r| !r.starts_with('Z'))
    };
    while alive() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "target {pid} did not stop"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_pool_on_raid1_keeps_its_volumes_through_member_loss_and_a_hot_upgrade() {
    let dir = e2e_dir().expect("dir").join("pool-raid");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let a = member_file(&dir, "a.img");
    let b = member_file(&dir, "b.img");
    let port = free_port().expect("port");
    let control = dir.join("control.sock").display().to_string();
    let cfg = dir.join("target.toml");
    std::fs::write(
        &cfg,
        format!(
            "[target]\ncores = [0]\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             [[raid]]\nname = \"md0\"\nlevel = \"raid1\"\nblock_size = 4096\ndirect = false\n\
             devices = [\"{}\", \"{}\"]\nbitmap_clear_delay_ms = 500\nrebuild_rate = \"0\"\n\
             [[pool]]\nname = \"rp\"\nraid = \"md0\"\ncluster_size = \"256KiB\"\n\
             [[pool.volume]]\nname = \"a\"\nsize = \"64MiB\"\n\
             [[pool.volume]]\nname = \"b\"\nsize = \"64MiB\"\nthin = false\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nvolume = \"rp/a\"\n\
             [[subsystem.namespace]]\nnsid = 2\nvolume = \"rp/b\"\n",
            a.display(),
            b.display()
        ),
    )
    .expect("config");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let t = start(&cfg, &control, addr, "pool-raid-target");
    let log = || t.log();
    assert!(
        log().contains("array md0 raid1 optimal") && log().contains("made a new pool on md0"),
        "{}",
        log()
    );

    // 1. Both volumes under verifying load; a snapshot of a, then member b fails.
    let runs = [perf(addr, 1, "randrw", 8), perf(addr, 2, "randrw", 8)];
    thread::sleep(Duration::from_secs(2));
    let snap = cmd(&control, &["pool", "rp", "snapshot", "a", "a-snap"]);
    assert!(
        snap.contains("name=a-snap") && snap.contains("snapshot=true"),
        "{snap}"
    );
    thread::sleep(Duration::from_secs(1));
    cmd(&control, &["raid", "fail", "md0", &b.display().to_string()]);
    for (i, r) in runs.into_iter().enumerate() {
        perf_ok(r, &format!("volume {} while member b fails", i + 1), &log);
    }
    let st = cmd(&control, &["raid", "status", "md0"]);
    assert!(st.contains(" raid1 degraded "), "{st}");

    // 2. It returns and is resynced (only what changed while it was away).
    cmd(
        &control,
        &["raid", "re-add", "md0", &b.display().to_string()],
    );
    let st = wait_optimal(&control);
    eprintln!("after the return:\n{st}");

    // 3. The stack handed over in a hot upgrade under verifying load.
    let runs = [perf(addr, 1, "randrw", 8), perf(addr, 2, "randrw", 8)];
    thread::sleep(Duration::from_secs(2));
    let next = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let out = cmd(
        &control,
        &["upgrade", "--binary", &next.display().to_string()],
    );
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.contains("pause"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (i, r) in runs.into_iter().enumerate() {
        let json = perf_ok(r, &format!("volume {} across the upgrade", i + 1), &log);
        eprintln!(
            "volume {} across the upgrade: {:.0} IOPS, max latency {:.0} us",
            i + 1,
            json_num(&json, "iops"),
            json_num(&json, "max_us")
        );
    }
    let devices = cmd(&control, &["devices"]);
    assert!(
        devices.contains("kind=raid1 name=md0")
            && devices.contains("kind=pool")
            && devices.contains("namespaces="),
        "{devices}"
    );
    let list = cmd(&control, &["pool", "rp", "list"]);
    assert!(
        list.contains("name=a-snap ") && list.contains("parent=a-snap"),
        "{list}"
    );
    let check = cmd(&control, &["pool", "rp", "check"]);
    assert!(check.starts_with("ok "), "{check}");
    let st = wait_optimal(&control);
    assert!(st.contains(" raid1 optimal "), "{st}");

    // 4. Stopped, the members hold the same data; started again from the configuration,
    //    the array assembles and the pool opens clean, with everything written.
    stop_target(&control);
    drop(t);
    let x = std::fs::read(&a).expect("read a");
    let y = std::fs::read(&b).expect("read b");
    assert!(x[HEADER..] == y[HEADER..], "the members differ");
    let t = start(&cfg, &control, addr, "pool-raid-restart");
    assert!(
        t.log()
            .contains("pool rp: opened (3 volumes, closed cleanly)"),
        "{}",
        t.log()
    );
    for nsid in [1, 2] {
        perf_ok(
            perf(addr, nsid, "randread", 2),
            &format!("volume {nsid} after the restart"),
            &|| t.log(),
        );
    }
    let check = cmd(&control, &["pool", "rp", "check"]);
    assert!(check.starts_with("ok "), "{check}");
    stop_target(&control);
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
