//! The metrics endpoint over HTTP against known I/O: a host writes and reads a known
//! number of blocks (and one read past the end) through two I/O queues on two
//! reactors; the scrape reports exactly those commands, bytes and the one error, summed
//! over the reactors, per namespace, subsystem and reactor; after a hot upgrade the new
//! process serves the endpoint on the same socket and counts the I/O it does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lightpool_e2e::nvme_host::HostController;

const NQN: &str = "nqn.2024-01.io.lightpool:metrics";
/// 8 MiB of 512-byte blocks.
const BLOCKS: u64 = 16384;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn status(sock: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            s.write_all(b"STATUS\n").expect("send");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("answer");
            return line;
        }
        assert!(Instant::now() < deadline, "the target does not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("read");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    page
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let found: Vec<f64> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?} in\n{page}");
    found[0]
}

/// Sum of the samples `name` with `labels`, over any other label (e.g. reactors).
fn sum(page: &str, name: &str, labels: &[(&str, &str)]) -> (f64, usize) {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| want.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold((0.0, 0), |(s, n), v| (s + v, n + 1))
}

#[test]
fn scraped_counters_match_the_io_done_and_survive_a_hot_upgrade() {
    let dir = std::env::temp_dir().join(format!("lp-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, mport) = (free_port(), free_port());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().expect("addr");
    let cfg = dir.join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[target]\nreactors = 2\nmetrics_address = \"{maddr}\"\n[[listener]]\naddress = \"{addr}\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\nram = \"8MiB\"\nblock_size = 512\n"
        ),
    )
    .expect("config");
    let sock = dir.join("ctl.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
        .arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    status(&sock);

    // Before any I/O: the families are there, at zero.
    let page = scrape(maddr);
    let ns = [("subsystem", NQN), ("nsid", "1")];
    let read = [ns[0], ns[1], ("op", "read")];
    let write = [ns[0], ns[1], ("op", "write")];
    assert_eq!(
        value(&page, "lightpool_namespace_capacity_bytes", &ns),
        8.0 * 1048576.0
    );
    assert_eq!(
        sum(&page, "lightpool_namespace_commands_total", &read).0,
        0.0
    );

    // Connect (admin queue on one reactor, the two I/O queues round robin on both),
    // then 16 + 8 writes and reads of 4 KiB, then one read past the end.
    let mut c = HostController::connect(addr, NQN, 2).expect("connect");
    let lbas: Vec<u64> = (0..16).map(|i| i * 8).collect();
    assert_eq!(c.io[0].write_verify_batch(&lbas, 4096, 1).expect("I/O"), 16);
    let lbas: Vec<u64> = (100..108).map(|i| i * 8).collect();
    assert_eq!(c.io[1].write_verify_batch(&lbas, 4096, 1).expect("I/O"), 8);
    let e = c.io[1]
        .read_verify_batch(&[BLOCKS - 4], 4096, 1)
        .expect_err("past the end");
    assert!(e.to_string().contains("LBA out of range"), "{e:#}");

    let page = scrape(maddr);
    assert_eq!(
        value(&page, "lightpool_namespace_commands_total", &write),
        24.0
    );
    assert_eq!(
        value(&page, "lightpool_namespace_commands_total", &read),
        25.0
    );
    assert_eq!(
        value(&page, "lightpool_namespace_bytes_total", &write),
        24.0 * 4096.0
    );
    assert_eq!(
        value(&page, "lightpool_namespace_bytes_total", &read),
        24.0 * 4096.0,
        "the failed read moved no data"
    );
    assert_eq!(
        value(
            &page,
            "lightpool_namespace_errors_total",
            &[
                ns[0],
                ns[1],
                ("sct", "generic"),
                ("sc", "0x80"),
                ("status", "LBA out of range")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(&page, "lightpool_namespace_latency_seconds_count", &read),
        25.0
    );
    assert_eq!(
        value(
            &page,
            "lightpool_namespace_latency_seconds_bucket",
            &[ns[0], ns[1], ("op", "read"), ("le", "+Inf")]
        ),
        25.0
    );
    // Connect of the admin queue, Property Set (enable), two I/O queue Connects.
    assert_eq!(
        value(
            &page,
            "lightpool_subsystem_commands_total",
            &[("subsystem", NQN), ("op", "admin")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &page,
            "lightpool_subsystem_commands_total",
            &[("subsystem", NQN), ("op", "read")]
        ),
        25.0
    );
    let (reads, reactors) = sum(&page, "lightpool_reactor_commands_total", &[("op", "read")]);
    assert_eq!((reads, reactors), (25.0, 2), "summed over both reactors");
    for r in ["0", "1"] {
        assert!(
            value(
                &page,
                "lightpool_reactor_commands_total",
                &[("reactor", r), ("op", "read")]
            ) > 0.0,
            "reactor {r} served an I/O queue:\n{page}"
        );
        assert!(
            value(
                &page,
                "lightpool_reactor_seconds_total",
                &[("reactor", r), ("state", "busy")]
            ) > 0.0
        );
    }
    assert_eq!(
        value(&page, "lightpool_subsystem_queues", &[("subsystem", NQN)]),
        3.0
    );
    assert_eq!(
        value(
            &page,
            "lightpool_subsystem_queue_depth",
            &[("subsystem", NQN)]
        ),
        0.0
    );

    // Hot upgrade: the endpoint's socket goes to the new process, which counts anew.
    let out = Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
        .args([
            "upgrade",
            "--binary",
            env!("CARGO_BIN_EXE_lightpool-target"),
        ])
        .arg("--control-socket")
        .arg(&sock)
        .output()
        .expect("upgrade");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    child.wait().expect("the old process exits");
    let new_pid: u32 = status(&sock)
        .split("pid=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("pid");
    // Whatever happens below, the new process (not our child) is stopped at the end.
    let _stop = Stop(new_pid);
    let lbas: Vec<u64> = (0..4).map(|i| i * 8).collect();
    assert_eq!(c.io[0].read_verify_batch(&lbas, 4096, 1).expect("I/O"), 4);
    let page = scrape(maddr);
    assert_eq!(
        value(&page, "lightpool_namespace_commands_total", &read),
        4.0
    );
    assert_eq!(
        value(&page, "lightpool_subsystem_queues", &[("subsystem", NQN)]),
        3.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops a target this test started (one that took over from its child) when dropped.
struct Stop(u32);

impl Drop for Stop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid the target's control socket reported.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
    }
}
