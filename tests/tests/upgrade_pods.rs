//! The DaemonSet rolling update, simulated: each "pod" is a lightpool-target started
//! with `--take-over-or-start` by `unshare --pid --fork --mount-proc --mount` (its own
//! PID and mount namespaces, the target its PID 1, as in a container), and every pod
//! sees one shared "hostPath" folder holding the control socket. The guest's kernel
//! initiator runs fio with verification over NVMe/TCP while five rolling updates
//! happen: the new pod starts beside the old one and takes over in its own process;
//! the old pod's PID 1 lives on, retired, until it gets SIGTERM as kubelet sends it,
//! exits 0 and is gone. Between two updates the retired pod's container is killed and
//! restarted: it stands by and does not take the dataplane back. No I/O error, fio's
//! verification passes, the guest's kernel logs no reset or reconnect, and after each
//! step exactly one dataplane process serves.
#![cfg(feature = "e2e")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

const NQN: &str = "nqn.2024-01.io.lightpool:upgrade-pods";
const UPDATES: usize = 5;

/// One "pod": `unshare` (the container runtime's part) and, under it, the target as
/// PID 1 of a new PID namespace.
struct Pod {
    instance: String,
    proc: HostProcess,
}

impl Pod {
    fn start(name: &str, bin: &Path, cfg: &Path, control: &str, instance: &str) -> Pod {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--mount", "--kill-child"])
            .arg(bin)
            .arg("--take-over-or-start")
            .arg("--config")
            .arg(cfg)
            .arg("--control-socket")
            .arg(control)
            .env("LIGHTPOOL_INSTANCE", instance);
        Pod {
            instance: instance.to_string(),
            proc: HostProcess::spawn(name, cmd).expect("unshare starts"),
        }
    }

    /// The host's PID of the pod's PID 1 (the child of `unshare`), once it exists.
    fn init_pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = child_of(self.proc.id()) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no process under unshare:\n{}",
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kubelet deleting the pod: SIGTERM to the container's PID 1; its exit status.
    fn terminate(&mut self) -> (u32, std::process::ExitStatus) {
        let pid = self.init_pid();
        signal(pid, libc::SIGTERM);
        (pid, self.wait_gone())
    }

    fn wait_gone(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.proc.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "pod {} did not end:\n{}",
                self.instance,
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.proc.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "pod {} never logged {what:?}:\n{}",
                self.instance,
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the pid of a process this test started (a child of its unshare).
    unsafe { libc::kill(pid as i32, sig) };
}

/// `(pid, ppid, command line)` of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The state is after the command name, which may hold spaces: after ") ".
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let ppid = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, ppid, cmd));
    }
    out
}

fn child_of(parent: u32) -> Option<u32> {
    processes()
        .into_iter()
        .find(|(_, ppid, _)| *ppid == parent)
        .map(|(pid, _, _)| pid)
}

/// The PID of `pid` in its own PID namespace (the last of NSpid), and whether that
/// namespace is another than this test's.
fn ns_pid(pid: u32) -> (u32, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let inner = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("NSpid");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).expect("ns link");
    (inner, ns(&pid.to_string()) != ns("self"))
}

/// Processes serving the dataplane on `control`: started in the pods' mode, not
/// retired.
fn serving_processes(control: &str) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|(_, _, c)| {
            c.contains("--take-over-or-start") && c.contains(control) && !c.starts_with("unshare")
        })
        .map(|(p, _, c)| (p, c))
        .collect()
}

/// The STATUS line of the target on `control`.
fn status(control: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(control).expect("control socket answers");
    s.write_all(b"STATUS\n").expect("send");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("answer");
    line.trim().to_string()
}

/// The readiness probe of pod `instance`: `lightpool-target ready`.
fn ready(bin: &Path, control: &str, instance: &str) -> bool {
    Command::new(bin)
        .arg("ready")
        .arg("--control-socket")
        .arg(control)
        .env("LIGHTPOOL_INSTANCE", instance)
        .output()
        .expect("ready")
        .status
        .success()
}

/// The rolling updates, run while the guest's fio works; returns what each one saw.
fn roll(
    a: PathBuf,
    b: PathBuf,
    cfg: PathBuf,
    control: String,
    mut old: Pod,
) -> Result<(Vec<String>, Pod), String> {
    let mut seen = Vec::new();
    for i in 1..=UPDATES {
        std::thread::sleep(Duration::from_millis(2500));
        let bin = if i % 2 == 1 { &b } else { &a };
        let instance = format!("pod-{i}");
        // The new pod starts beside the old one and takes over: ready once it serves.
        let new = Pod::start(&format!("upgrade-pods-{i}"), bin, &cfg, &control, &instance);
        let t0 = Instant::now();
        while !ready(&a, &control, &instance) {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!("{instance} never got ready:\n{}", new.proc.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid1 = new.init_pid();
        let (inner, other_ns) = ns_pid(pid1);
        if inner != 1 || !other_ns {
            return Err(format!(
                "{instance}'s target is pid {inner} of {} namespace",
                if other_ns { "its own" } else { "the test's" }
            ));
        }
        // The guest's controller (admin and two I/O queues) was handed over, live.
        let log = new.proc.log();
        let connections = log
            .lines()
            .find(|l| l.contains("took over from"))
            .and_then(|l| l.split("): ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok());
        if connections.is_none_or(|n| n < 3) {
            return Err(format!(
                "{instance} did not take the guest's queues over:\n{log}"
            ));
        }
        // The old pod: its PID 1 lives on, retired, and is not ready.
        old.wait_log("handed the dataplane over");
        if ready(&a, &control, &old.instance) {
            return Err(format!("{} still ready after handing over", old.instance));
        }
        if i == 2 {
            // The old pod's container dies and kubelet restarts it (restartPolicy
            // Always) before the pod is deleted: it must not take the dataplane back.
            signal(old.init_pid(), libc::SIGKILL);
            old.wait_gone();
            old = Pod::start(
                "upgrade-pods-restarted",
                &a,
                &cfg,
                &control,
                &old.instance.clone(),
            );
            old.wait_log("standing by");
            if !old
                .proc
                .log()
                .contains(&format!("a newer instance ({instance}) serves"))
            {
                return Err(format!("restarted pod:\n{}", old.proc.log()));
            }
            if !status(&control).contains(&format!("instance={instance}")) {
                return Err(format!(
                    "the restarted old pod took over: {}",
                    status(&control)
                ));
            }
        }
        // Kubelet deletes the old pod: SIGTERM to its PID 1, exit 0, gone.
        let (pid, st) = old.terminate();
        if !st.success() {
            return Err(format!("{} exited {st}:\n{}", old.instance, old.proc.log()));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!(
                "{}'s PID 1 (host pid {pid}) is still there",
                old.instance
            ));
        }
        // Exactly one dataplane process serves: the new pod's.
        let serving = serving_processes(&control);
        if serving.len() != 1 || serving[0].0 != pid1 {
            return Err(format!("after update {i} serving: {serving:?}"));
        }
        let st = status(&control);
        if !st.contains(&format!("instance={instance}")) {
            return Err(format!("after update {i}: {st}"));
        }
        seen.push(format!(
            "update {i}: {} -> {instance} ({}); {}",
            old.instance,
            new.proc
                .log()
                .lines()
                .find(|l| l.contains("took over from"))
                .unwrap_or_default(),
            st
        ));
        old = new;
    }
    Ok((seen, old))
}

#[test]
fn rolling_updates_of_pods_cost_no_io() {
    let port = free_port().expect("port");
    let dir = e2e_dir().expect("dir");
    // The "hostPath": the one folder every pod sees.
    let host = dir.join("upgrade-pods-hostpath");
    let _ = std::fs::remove_dir_all(&host);
    std::fs::create_dir_all(&host).expect("hostPath folder");
    let control = host.join("target.sock").display().to_string();
    let cfg = dir.join("upgrade-pods.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:{port}\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.namespace]]\nnsid = 1\nram = \"128MiB\"\nblock_size = 512\n"
        ),
    )
    .expect("config");
    let a = release_binary("lightpool-target").expect("built");
    let b = release_binary("lightpool-target-next").expect("tests/run.sh builds it");
    let mut first = Pod::start("upgrade-pods-0", &a, &cfg, &control, "pod-0");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    first
        .proc
        .wait_for_port(addr, Duration::from_secs(20))
        .expect("the first pod serves");
    assert!(ready(&a, &control, "pod-0"));

    // The guest says when fio starts; it runs verifying passes until the host accepts
    // on `done`, which it does once the updates are over.
    let sig = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sig_port = sig.local_addr().expect("addr").port();
    let done_port = free_port().expect("port");
    let roller = {
        let (a, b, cfg, control) = (a.clone(), b.clone(), cfg.clone(), control.clone());
        std::thread::spawn(move || {
            let (mut s, _) = sig.accept().map_err(|e| e.to_string())?;
            let mut got = String::new();
            s.read_to_string(&mut got).map_err(|e| e.to_string())?;
            if got.trim() != "fio-start" {
                return Err(format!("expected fio-start, got {got:?}"));
            }
            let r = roll(a, b, cfg, control, first);
            // Whatever happened, let the guest finish.
            let done = TcpListener::bind(("127.0.0.1", done_port)).map_err(|e| e.to_string())?;
            std::thread::spawn(move || {
                for c in done.incoming() {
                    drop(c);
                }
            });
            r
        })
    };

    let script = format!(
        r#"set -eu
NQN={NQN}
say() {{ echo "UPP: $*"; }}
nvme connect -t tcp -a 10.0.2.2 -s {port} -n $NQN --nr-io-queues=2
for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
echo fio-start | nc 10.0.2.2 {sig_port}
pass=0
while :; do
    pass=$((pass + 1))
    fio --name=pods --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 --iodepth=16 \
        --rw=randwrite --bsrange=4k-256k --size=16m --verify=crc32c --verify_fatal=1 \
        --do_verify=1 --randseed=$pass --output-format=terse --terse-version=3 > /tmp/fio.out
    say "pass $pass errors=$(cut -d';' -f5 /tmp/fio.out) read_kb=$(cut -d';' -f6 /tmp/fio.out) write_kb=$(cut -d';' -f47 /tmp/fio.out)"
    if nc 10.0.2.2 {done_port} < /dev/null; then break; fi
    [ $pass -lt 500 ] || {{ say "updates never ended"; exit 1; }}
done
say "passes=$pass"
say "kernel log:"
dmesg | grep -i nvme | sed 's/^/UPP-DMESG: /'
nvme disconnect -n $NQN
say done
"#
    );
    let t0 = Instant::now();
    let out = run_guest(&GuestConfig {
        timeout: Duration::from_secs(900),
        ..GuestConfig::new("upgrade-pods", &script)
    })
    .expect("guest");
    eprintln!("guest {:?}, test {:?}", out.total_time, t0.elapsed());
    let tail = out.tail(60);
    let rolled = roller.join().expect("roller thread");
    let (seen, mut last) = rolled.unwrap_or_else(|e| panic!("{e}\n{tail}"));
    eprintln!("{}", seen.join("\n"));
    assert_eq!(out.exit_code, 0, "{tail}");
    assert_eq!(seen.len(), UPDATES);
    let passes: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("UPP: pass "))
        .collect();
    assert!(!passes.is_empty(), "{tail}");
    for p in &passes {
        assert!(p.contains(" errors=0 "), "fio saw errors: {p}\n{tail}");
    }
    eprintln!("fio passes across the updates:\n{}", passes.join("\n"));
    let dmesg: Vec<&str> = out
        .console
        .lines()
        .filter(|l| l.starts_with("UPP-DMESG"))
        .collect();
    for bad in ["reset", "reconnect", "I/O error", "timeout", "failed"] {
        assert!(
            !dmesg
                .iter()
                .any(|l| l.to_lowercase().contains(&bad.to_lowercase())),
            "guest kernel logged {bad:?}:\n{}",
            dmesg.join("\n")
        );
    }
    // The last pod is deleted too: the dataplane stops, its socket goes.
    let (_, st) = last.terminate();
    assert!(st.success(), "{}", last.proc.log());
    assert!(
        !Path::new(&control).exists(),
        "the control socket was left behind"
    );
}
