//! Running as a service: systemd's readiness protocol against a fake NOTIFY_SOCKET
//! (READY=1 and MAINPID at start; MAINPID of the new process across a hot upgrade,
//! passed on by the old one when the upgrade command has no NOTIFY_SOCKET), signals
//! (SIGHUP logged and ignored; the control socket removed at exit), logs without colour
//! codes off a terminal, `--log` checked, and a control socket of each target's own.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lp-svc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The STATUS line of the target behind `sock`, once it answers.
fn status(sock: &Path, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(mut s) = UnixStream::connect(sock) {
            s.write_all(b"STATUS\n").expect("send");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("answer");
            return line.trim().to_string();
        }
        assert!(Instant::now() < deadline, "nothing answers on {sock:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_of(status: &str) -> u32 {
    status
        .split("pid=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {status:?}"))
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid this test started (or read from the target it started).
    unsafe { libc::kill(pid as i32, sig) };
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn wait_exit(child: &mut Child, wait: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(Instant::now() < deadline, "the target did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ask the kernel to say who sent each datagram (SCM_CREDENTIALS), as systemd does.
fn pass_credentials(sock: &UnixDatagram) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one int from a live local.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_PASSCRED");
}

/// One datagram and the pid of the process that sent it.
fn recv_from_pid(sock: &UnixDatagram) -> std::io::Result<(u32, String)> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; the pointers set below stay valid for the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    // SAFETY: recvmsg writes into `buf` and `cmsg` within the lengths given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut pid = 0;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>());
                pid = cred.pid as u32;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((pid, String::from_utf8_lossy(&buf[..n as usize]).to_string()))
}

/// Datagrams the fake service manager received (sender pid, text), until one contains
/// `want`.
fn recv_until(sock: &UnixDatagram, want: &str, got: &mut Vec<(u32, String)>) -> (u32, String) {
    loop {
        let (pid, m) = recv_from_pid(sock)
            .unwrap_or_else(|e| panic!("no notification with {want:?} (got {got:?}): {e}"));
        got.push((pid, m.clone()));
        if m.contains(want) {
            return (pid, m);
        }
    }
}

struct Target {
    child: Child,
    stderr: Option<std::process::ChildStderr>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], envs: &[(&str, &Path)]) -> Target {
    let mut cmd = bin();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start");
    let stderr = child.stderr.take();
    Target { child, stderr }
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal() {
    let d = dir("colour");
    let sock = d.join("ctl.sock");
    let mut t = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--control-socket",
            sock.to_str().expect("utf-8"),
        ],
        &[],
    );
    status(&sock, Duration::from_secs(30));
    signal(t.child.id(), libc::SIGTERM);
    wait_exit(&mut t.child, Duration::from_secs(30));
    let mut log = String::new();
    t.stderr
        .take()
        .expect("piped")
        .read_to_string(&mut log)
        .expect("read");
    assert!(log.contains("NVMe/TCP listening"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
}

#[test]
fn an_invalid_log_filter_is_refused_saying_what_is_valid() {
    let out = bin()
        .args(["--log", "debgu", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"debgu\" is not a log level"), "{err}");
    assert!(
        err.contains("off, error, warn, info, debug, trace") && err.contains("TARGET=LEVEL"),
        "{err}"
    );
}

#[test]
fn sighup_is_logged_and_ignored_and_the_socket_goes_at_exit() {
    let d = dir("hup");
    let sock = d.join("ctl.sock");
    let mut t = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--control-socket",
            sock.to_str().expect("utf-8"),
        ],
        &[],
    );
    let pid = pid_of(&status(&sock, Duration::from_secs(30)));
    let mut lines = BufReader::new(t.stderr.take().expect("piped")).lines();
    signal(pid, libc::SIGHUP);
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.expect("log line");
        let hup = l.contains("SIGHUP received and ignored");
        seen.push(l);
        if hup {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("SIGHUP")),
        "no log line for SIGHUP: {seen:?}"
    );
    assert_eq!(
        pid_of(&status(&sock, Duration::from_secs(5))),
        pid,
        "still serving"
    );
    // The management API's socket sits beside the control socket, and goes with it.
    let api = d.join("ctl.api.sock");
    assert!(api.exists(), "no API socket beside the control socket");
    signal(pid, libc::SIGTERM);
    let st = wait_exit(&mut t.child, Duration::from_secs(30));
    assert!(st.success(), "{st}");
    assert!(!sock.exists(), "the control socket was left behind");
    assert!(!api.exists(), "the API socket was left behind");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("shutting down") && l.contains("SIGTERM")),
        "{rest:?}"
    );
}

#[test]
fn readiness_and_main_pid_across_a_hot_upgrade() {
    let d = dir("notify");
    let sock = d.join("ctl.sock");
    let notify_path = d.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("fake NOTIFY_SOCKET");
    pass_credentials(&notify);
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut t = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--control-socket",
            sock.to_str().expect("utf-8"),
        ],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let mut got = Vec::new();
    let (from, ready) = recv_until(&notify, "READY=1", &mut got);
    let old = t.child.id();
    assert!(ready.contains(&format!("MAINPID={old}")), "{ready:?}");
    assert_eq!(from, old);
    // READY=1 comes once the control socket accepts.
    assert_eq!(pid_of(&status(&sock, Duration::from_secs(1))), old);

    // The upgrade command runs without NOTIFY_SOCKET (by hand, not by the unit): the
    // running target passes its socket on to the new process.
    let out = bin()
        .env_remove("NOTIFY_SOCKET")
        .args([
            "upgrade",
            "--binary",
            env!("CARGO_BIN_EXE_lightpool-target"),
        ])
        .arg("--control-socket")
        .arg(&sock)
        .output()
        .expect("upgrade");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let new = pid_of(&status(&sock, Duration::from_secs(5)));
    assert_ne!(new, old);
    let mut after = Vec::new();
    let (from, main) = recv_until(&notify, "MAINPID=", &mut after);
    assert_eq!(
        (from, main.trim()),
        (new, format!("MAINPID={new}").as_str()),
        "the new process names itself first: {after:?}"
    );
    let (from, main) = recv_until(&notify, "MAINPID=", &mut after);
    assert_eq!(
        (from, main.trim()),
        (old, format!("MAINPID={new}").as_str()),
        "then the old one, the main process, names it before it lets go: {after:?}"
    );
    let (from, ready) = recv_until(&notify, "READY=1", &mut after);
    assert!(ready.contains(&format!("MAINPID={new}")), "{ready:?}");
    assert_eq!(from, new);
    let st = wait_exit(&mut t.child, Duration::from_secs(30));
    assert!(st.success(), "the old process exits cleanly: {st}");
    // Not a child of the old process (which has exited): it lives on.
    let stat = std::fs::read_to_string(format!("/proc/{new}/stat")).expect("new process");
    let ppid: u32 = stat
        .rsplit(") ")
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("ppid");
    assert_ne!(ppid, old, "{stat}");
    assert!(alive(new));

    // The pause is one figure: what the command printed is what the new process logged.
    let printed: f64 = text
        .split("pause ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pause in {text}"));
    assert!(printed > 0.0, "{text}");

    signal(new, libc::SIGTERM);
    recv_until(&notify, "STOPPING=1", &mut after);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(new) {
        assert!(Instant::now() < deadline, "the new process did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sock.exists(), "the control socket was left behind");
}

#[test]
fn each_target_has_its_own_control_socket_and_commands_refuse_to_guess() {
    let d = dir("instances");
    let (p1, p2) = (free_port(), free_port());
    let a1 = format!("127.0.0.1:{p1}");
    let a2 = format!("127.0.0.1:{p2}");
    let env = [("LIGHTPOOL_RUNTIME_DIR", d.as_path())];
    let t1 = start(&["--listen", &a1], &env);
    let s1 = d.join(format!("target-127.0.0.1-{p1}.sock"));
    let pid1 = pid_of(&status(&s1, Duration::from_secs(30)));
    let t2 = start(&["--listen", &a2], &env);
    let s2 = d.join(format!("target-127.0.0.1-{p2}.sock"));
    let pid2 = pid_of(&status(&s2, Duration::from_secs(30)));
    assert_ne!(pid1, pid2);

    let devices = |extra: &[&str]| {
        let out = bin()
            .env("LIGHTPOOL_RUNTIME_DIR", &d)
            .args(extra)
            .arg("devices")
            .output()
            .expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = devices(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("2 targets run here"), "{err}");
    assert!(
        err.contains(&s1.display().to_string()) && err.contains(&s2.display().to_string()),
        "{err}"
    );
    let (code, out, err) = devices(&["--listen", &a2]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("kind=ram"), "{out}");

    drop(t2);
    let (code, _, err) = devices(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("the one target running here") && err.contains(&format!("pid={pid1}")),
        "{err}"
    );
    drop(t1);
}

/// The unit's ExecStart may use `--take-over-or-start` (the pods' start mode): it
/// starts when nothing answers and says READY=1 with its MAINPID; the unit's reload
/// (the `upgrade` command) hands over as before; and a second process in that mode,
/// given the unit's NOTIFY_SOCKET, takes over itself, says MAINPID and READY=1, and the
/// old one (no --instance: not a pod) exits 0.
#[test]
fn take_over_or_start_under_the_service_manager() {
    let d = dir("mode");
    let sock = d.join("ctl.sock");
    let notify_path = d.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("fake NOTIFY_SOCKET");
    pass_credentials(&notify);
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let args = [
        "--take-over-or-start",
        "--listen",
        "127.0.0.1:0",
        "--control-socket",
        sock.to_str().expect("utf-8"),
    ];
    let mut t = start(&args, &[("NOTIFY_SOCKET", &notify_path)]);
    let mut got = Vec::new();
    let (from, ready) = recv_until(&notify, "READY=1", &mut got);
    assert_eq!(from, t.child.id());
    assert!(ready.contains(&format!("MAINPID={from}")), "{ready:?}");

    // Reload: the upgrade command, as the unit runs it.
    let out = bin()
        .args([
            "upgrade",
            "--binary",
            env!("CARGO_BIN_EXE_lightpool-target"),
        ])
        .arg("--control-socket")
        .arg(&sock)
        .env("NOTIFY_SOCKET", &notify_path)
        .output()
        .expect("upgrade");
    assert!(out.status.success(), "{out:?}");
    let second = pid_of(&status(&sock, Duration::from_secs(5)));
    let (from, ready) = recv_until(&notify, "READY=1", &mut got);
    assert_eq!(from, second);
    assert!(ready.contains(&format!("MAINPID={second}")), "{ready:?}");
    assert!(wait_exit(&mut t.child, Duration::from_secs(30)).success());

    // A newcomer in the same mode takes over in its own process.
    let mut third = start(&args, &[("NOTIFY_SOCKET", &notify_path)]);
    let (from, main) = recv_until(&notify, "MAINPID=", &mut got);
    assert_eq!(
        (from, main.trim()),
        (
            third.child.id(),
            format!("MAINPID={}", third.child.id()).as_str()
        ),
        "{got:?}"
    );
    let (from, ready) = recv_until(&notify, "READY=1", &mut got);
    assert_eq!(from, third.child.id(), "{got:?}");
    assert!(ready.contains(&format!("MAINPID={from}")), "{ready:?}");
    assert_eq!(pid_of(&status(&sock, Duration::from_secs(5))), from);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(second) {
        assert!(
            Instant::now() < deadline,
            "the reloaded process did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(third.child.id(), libc::SIGTERM);
    assert!(wait_exit(&mut third.child, Duration::from_secs(30)).success());
    assert!(!sock.exists());
}
