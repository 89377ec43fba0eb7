//! `--take-over-or-start`, the start mode of a DaemonSet pod (src/pod.rs), on the host
//! without namespaces (tests/tests/upgrade_pods.rs runs it in PID and mount namespaces
//! under a guest's fio): it starts where nothing answers (a stale socket file left
//! over), takes over from an older instance in its own process, the old process
//! retires (same PID, idle, `ready` false, exit 0 at SIGTERM), a restarted old
//! instance stands by, a failed takeover leaves the old target serving, newcomers
//! arriving together take over one at a time, and `upgrade` refuses a pod's target.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lp-pod-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A "pod": one lightpool-target, killed when dropped; its log in the test's folder.
struct Pod {
    child: Child,
    log: PathBuf,
}

impl Pod {
    fn start(d: &Path, name: &str, instance: &str, extra: &[&str]) -> Pod {
        let log = d.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let child = bin()
            .arg("--take-over-or-start")
            .arg("--control-socket")
            .arg(d.join("t.sock"))
            .args(extra)
            .env("LIGHTPOOL_INSTANCE", instance)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start");
        Pod { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as kubelet stops a container; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on a child not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "did not stop:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// The process's command line now (the retired process has another).
    fn cmdline(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.child.id()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The STATUS line of whatever answers on `sock`, waiting for one.
fn status(sock: &Path, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            let mut line = String::new();
            if s.write_all(b"STATUS\n").is_ok()
                && BufReader::new(&s).read_line(&mut line).is_ok()
                && line.starts_with("OK ")
            {
                return line.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "nothing answers on {sock:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the instance serving on `sock` is `want`.
fn wait_serving(sock: &Path, want: &str, pods: &[&Pod]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(sock, Duration::from_secs(30));
        if st.contains(&format!("instance={want}")) {
            return st;
        }
        let logs: Vec<String> = pods.iter().map(|p| p.log()).collect();
        assert!(
            Instant::now() < deadline,
            "{want} does not serve ({st}):\n{}",
            logs.join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lightpool-target ready` as instance `me`: (ready, output).
fn ready(sock: &Path, me: &str) -> (bool, String) {
    let out = bin()
        .arg("ready")
        .arg("--control-socket")
        .arg(sock)
        .env("LIGHTPOOL_INSTANCE", me)
        .output()
        .expect("ready");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn pid_in(status: &str) -> u32 {
    status
        .split("pid=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {status:?}"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pods_take_over_in_turn_and_an_old_one_never_takes_back() {
    let d = dir("turn");
    let sock = d.join("t.sock");
    let addr = free_addr();
    // A stale socket file (a target that died): nobody answers, the first pod starts.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    assert!(sock.exists());
    let listen = addr.to_string();
    let mut a = Pod::start(&d, "a", "pod-a", &["--listen", &listen]);
    let st = wait_serving(&sock, "pod-a", &[&a]);
    assert_eq!(pid_in(&st), a.pid());
    assert!(
        a.log().contains("no target answers here: starting"),
        "{}",
        a.log()
    );
    let (ok, out) = ready(&sock, "pod-a");
    assert!(ok, "{out}");
    let (ok, out) = ready(&sock, "pod-b");
    assert!(!ok, "pod-b is not ready before it serves: {out}");

    // The rolling update: pod-b starts beside pod-a and takes over in its own process.
    let mut b = Pod::start(&d, "b", "pod-b", &["--listen", &listen]);
    let st = wait_serving(&sock, "pod-b", &[&a, &b]);
    assert_eq!(pid_in(&st), b.pid(), "the new pod's main process serves");
    assert!(b.log().contains("took over from"), "{}", b.log());
    TcpStream::connect(addr).expect("the listener, taken over, accepts");
    let (ok, out) = ready(&sock, "pod-b");
    assert!(ok, "{out}");
    // A pod is upgraded by its DaemonSet, not by a process started from it (which
    // would end with its container).
    let up = bin()
        .args([
            "upgrade",
            "--binary",
            env!("CARGO_BIN_EXE_lightpool-target"),
        ])
        .arg("--control-socket")
        .arg(&sock)
        .output()
        .expect("upgrade");
    let err = String::from_utf8_lossy(&up.stderr);
    assert!(
        !up.status.success() && err.contains("rolling update of its DaemonSet"),
        "{err}"
    );
    assert_eq!(pid_in(&status(&sock, Duration::from_secs(5))), b.pid());
    let (ok, out) = ready(&sock, "pod-a");
    assert!(!ok && out.contains("not ready"), "{out}");
    // The old pod's main process lives on, retired, under the same PID.
    wait_for("pod-a retires", || {
        a.log().contains("handed the dataplane over")
    });
    assert!(a.exited().is_none(), "pod-a's process ended:\n{}", a.log());
    assert!(a.cmdline().contains("--retired"), "{}", a.cmdline());
    // Kubelet deletes the old pod once the new one is ready: SIGTERM, exit 0.
    let st = a.stop();
    assert!(st.success(), "pod-a exits 0 at SIGTERM: {st}\n{}", a.log());
    assert_eq!(pid_in(&status(&sock, Duration::from_secs(5))), b.pid());

    // pod-a's container restarts (its process was killed) while pod-b serves: it stands
    // by, pod-b serves on.
    let mut a2 = Pod::start(&d, "a2", "pod-a", &["--listen", &listen]);
    wait_for("the restarted pod-a decides", || {
        a2.log().contains("standing by")
    });
    assert!(
        a2.log().contains("a newer instance (pod-b) serves"),
        "{}",
        a2.log()
    );
    assert_eq!(pid_in(&status(&sock, Duration::from_secs(5))), b.pid());
    assert!(!ready(&sock, "pod-a").0);
    assert!(a2.stop().success());

    // And the next update takes over from pod-b the same way.
    let mut c = Pod::start(&d, "c", "pod-c", &["--listen", &listen]);
    let st = wait_serving(&sock, "pod-c", &[&b, &c]);
    assert_eq!(pid_in(&st), c.pid());
    wait_for("pod-b retires", || {
        b.log().contains("handed the dataplane over")
    });
    assert!(b.stop().success());
    TcpStream::connect(addr).expect("still accepting");
    assert!(c.stop().success());
    assert!(!sock.exists(), "the last target removes its socket at exit");
}

#[test]
fn a_failed_take_over_leaves_the_old_target_serving() {
    let d = dir("refused");
    let sock = d.join("t.sock");
    // The serving target writes a state layout the newcomer does not read.
    let mut old = Pod::start(
        &d,
        "old",
        "pod-old",
        &["--listen", "127.0.0.1:0", "--state-layout", "7"],
    );
    let st = wait_serving(&sock, "pod-old", &[&old]);
    let mut new = Pod::start(&d, "new", "pod-new", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(st) = new.exited() {
            break st;
        }
        assert!(Instant::now() < deadline, "the newcomer did not give up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!exit.success(), "{}", new.log());
    assert!(
        new.log().contains("taking over from the target on") && new.log().contains("layout 7"),
        "the newcomer says why: {}",
        new.log()
    );
    assert_eq!(
        pid_in(&status(&sock, Duration::from_secs(5))),
        pid_in(&st),
        "the old target serves on"
    );
    assert!(ready(&sock, "pod-old").0);
    assert!(old.stop().success());
}

#[test]
fn newcomers_arriving_together_take_over_one_at_a_time() {
    let d = dir("race");
    let sock = d.join("t.sock");
    let mut a = Pod::start(&d, "a", "pod-a", &["--listen", "127.0.0.1:0"]);
    wait_serving(&sock, "pod-a", &[&a]);
    // While another holds the start lock, newcomers wait and nothing changes hands.
    let held = std::fs::File::open(d.join("t.sock.lock")).expect("the lock file is there");
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0, "the first pod let the lock go once it served");
    let mut b = Pod::start(&d, "b", "pod-b", &[]);
    let mut c = Pod::start(&d, "c", "pod-c", &[]);
    wait_for("both newcomers wait for the lock", || {
        b.log().contains("waiting for it") && c.log().contains("waiting for it")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        status(&sock, Duration::from_secs(5)).contains("instance=pod-a"),
        "nobody took over while the lock was held"
    );
    drop(held);
    // Whichever registered last is the newest and ends up serving; the other took over
    // first and retired, or found the newest serving and stood by.
    wait_for("both newcomers settle", || {
        let lb = b.log();
        let lc = c.log();
        let settled =
            |l: &str| l.contains("handed the dataplane over") || l.contains("standing by");
        (settled(&lb) && lc.contains("took over from"))
            || (settled(&lc) && lb.contains("took over from"))
    });
    let order = std::fs::read_to_string(d.join("t.sock.instances")).expect("registry");
    let newest = order
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("registry lines")
        .to_string();
    assert!(newest == "pod-b" || newest == "pod-c", "{order}");
    let st = status(&sock, Duration::from_secs(5));
    let serving_pid = if newest == "pod-b" { b.pid() } else { c.pid() };
    assert!(st.contains(&format!("instance={newest}")), "{st}\n{order}");
    assert_eq!(pid_in(&st), serving_pid);
    assert!(ready(&sock, &newest).0);
    for p in ["pod-a", "pod-b", "pod-c"].iter().filter(|p| **p != newest) {
        assert!(!ready(&sock, p).0, "{p} is not ready");
    }
    // No handover ran beside another: each newcomer's steps were under the lock, so no
    // takeover was refused or abandoned.
    for l in [a.log(), b.log(), c.log()] {
        assert!(!l.contains("abandoned") && !l.contains("refused"), "{l}");
    }
    for p in [&mut a, &mut b, &mut c] {
        assert!(
            p.exited().is_none(),
            "every pod's process lives on: {}",
            p.log()
        );
    }
    for p in [&mut a, &mut b, &mut c] {
        let st = p.stop();
        assert!(st.success(), "{st}: {}", p.log());
    }
}
