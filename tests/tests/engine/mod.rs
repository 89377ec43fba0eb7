//! What the packet-engine e2e tests share (tests/af_xdp.rs, tests/dpdk.rs, tests/engine_kernel.rs): a target
//! in one namespace of a veth pair serving a RAM namespace through a listener of some
//! engine, and lightpool-perf in the other namespace over the kernel's TCP.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lightpool_e2e::perfjson::perf_ok;
use lightpool_e2e::{e2e_dir, release_binary, HostProcess};
use lightpool_xdp::testing::VethPair;

pub const PORT: u16 = 4420;

/// A target serving a RAM namespace through a packet engine on its end of a veth pair.
pub struct Served {
    pub pair: VethPair,
    pub target: HostProcess,
    /// What the test calls this run (e.g. the XDP mode).
    pub mode: String,
    /// Where the listener serves.
    pub addr: Ipv4Addr,
    /// The target's management API socket (beside its control socket).
    pub api: std::path::PathBuf,
    /// Where lightpool-perf and the pings of [`Served::finish`] run: the pair's
    /// namespace b unless a test says otherwise.
    pub peer_ns: String,
    nqn: String,
}

impl Served {
    /// Starts the target in `pair`'s namespace a with `listener` (the `[[listener]]`
    /// table's lines after `address`) on `addr`, and waits for its log to say
    /// `listening`.
    pub fn start(
        pair: VethPair,
        addr: Ipv4Addr,
        listener: &str,
        name: &str,
        mode: &str,
        nqn: &str,
        listening: &str,
    ) -> Served {
        Served::start_with(pair, addr, "", listener, name, mode, nqn, listening)
    }

    /// As [`Served::start`], with `target` lines added to the `[target]` table and
    /// `listener` free to hold more `[[listener]]` tables after the first.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        pair: VethPair,
        addr: Ipv4Addr,
        target: &str,
        listener: &str,
        name: &str,
        mode: &str,
        nqn: &str,
        listening: &str,
    ) -> Served {
        let dir = e2e_dir().expect("dir");
        let cfg = dir.join(format!("{name}.toml"));
        let control = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&control);
        std::fs::write(
            &cfg,
            format!(
                "[target]\nreactors = 2\n{target}\n\
                 [[listener]]\naddress = \"{addr}:{PORT}\"\n{listener}\n\
                 [[subsystem]]\nnqn = \"{nqn}\"\n[[subsystem.namespace]]\nnsid = 1\nram = \"64MiB\"\nblock_size = 512\n"
            ),
        )
        .expect("config");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.ns_a])
            .arg(release_binary("lightpool-target").expect("built"))
            .arg("--config")
            .arg(&cfg)
            .arg("--control-socket")
            .arg(&control);
        let mut target = HostProcess::spawn(name, cmd).expect("start the target");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !target.log().contains(listening) {
            if let Some(st) = target.try_wait().expect("wait") {
                panic!("the target exited ({st}):\n{}", target.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {listening:?} in the log:\n{}",
                target.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Served {
            peer_ns: pair.ns_b.clone(),
            pair,
            target,
            mode: mode.to_string(),
            addr,
            api: control.with_extension("api.sock"),
            nqn: nqn.to_string(),
        }
    }

    /// lightpool-perf in the peer's namespace: verified random read/write of `size`.
    pub fn perf(&self, size: &str, secs: &str) -> std::process::Child {
        self.perf_to(PORT, size, secs, &[])
    }

    /// As [`Served::perf`], to `port`, with `extra` arguments (e.g. `--digest`).
    pub fn perf_to(
        &self,
        port: u16,
        size: &str,
        secs: &str,
        extra: &[&str],
    ) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.peer_ns])
            .arg(release_binary("lightpool-perf").expect("built"))
            .arg("-r")
            .arg(format!(
                "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{port} subnqn:{}",
                self.addr, self.nqn
            ))
            .args(["-q", "16", "-o", size, "-w", "randrw", "-M", "50"])
            .args(extra)
            .args(["--verify", "--json", "-c", "1", "-t", secs])
            .args(["--range", "0:16384", "--connect-timeout", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lightpool-perf")
    }

    /// Run perf to the end: verified, no errors. Its JSON.
    pub fn perf_ok(&self, size: &str, secs: &str, what: &str) -> String {
        let log = || self.target.log();
        perf_ok(
            self.perf(size, secs),
            &format!("{}: {what}", self.mode),
            &log,
        )
    }

    /// 4 KiB I/O (in-capsule writes), then 128 KiB (R2T and H2C data, C2H over many
    /// segments), both verified.
    pub fn perf_small_and_large(&self) {
        let small = self.perf_ok("4096", "4", "4 KiB");
        let large = self.perf_ok("131072", "4", "128 KiB");
        let mode = &self.mode;
        eprintln!("{mode}: 4 KiB {small}\n{mode}: 128 KiB {large}");
    }

    /// Each of `addrs` answers ping from the peer namespace (`what` says who should),
    /// the target still runs and logged no error; then stop it.
    pub fn finish(mut self, addrs: &[(Ipv4Addr, &str)]) {
        for (addr, what) in addrs {
            self.pair
                .exec(
                    &self.peer_ns,
                    &["ping", "-c", "2", "-W", "2", &addr.to_string()],
                )
                .unwrap_or_else(|e| panic!("{what} answers ping on {addr}: {e}"));
        }
        assert!(
            self.target.try_wait().expect("wait").is_none(),
            "the target exited:\n{}",
            self.target.log()
        );
        assert!(
            !self.target.log().contains("ERROR"),
            "errors in the target log:\n{}",
            self.target.log()
        );
        self.target
            .stop(Duration::from_secs(10))
            .expect("stop the target");
    }
}

/// Root is needed (namespaces, XDP, DPDK's raw sockets).
pub fn assert_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test needs root (netns, XDP, DPDK)");
}

/// The target's metrics page, fetched from inside its namespace.
pub fn scrape(s: &Served, at: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &s.pair.ns_a, "curl", "-sf"])
        .arg(format!("http://{at}/metrics"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "scrape {at}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The sum of a family's samples whose labels include every one of `labels`.
pub fn sum(page: &str, family: &str, labels: &[&str]) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
