//! Bad input and bad peers: one clear message and a non-zero exit each, with the
//! partial figures when the run had started.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{perf, trid, TestTarget};

#[test]
fn unreachable_address_is_one_message() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let r = format!("trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:{port} subnqn:nqn.x");
    let run = perf(&["-r", &r, "-t", "1"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(
        run.stderr
            .contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{}",
        run.dump()
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.dump());
    assert!(run.stdout.is_empty(), "{}", run.dump());
}

#[test]
fn silent_peer_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let hold = thread::spawn(move || {
        let (s, _) = l.accept().expect("accept");
        thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let r = trid(addr, Some("nqn.x"));
    let t0 = Instant::now();
    let run = perf(&["-r", &r, "-t", "1", "--connect-timeout", "0.5"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(
        run.stderr.contains("no answer to ICResp within 500ms"),
        "{}",
        run.dump()
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    hold.join().expect("holder");
}

#[test]
fn wrong_nqn_is_named() {
    let t = TestTarget::start(8 << 20, 512);
    let r = trid(t.addr, Some("nqn.2024-01.io.lightpool:nope"));
    let run = perf(&["-r", &r, "-t", "1"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(
        run.stderr
            .contains("the target has no subsystem named \"nqn.2024-01.io.lightpool:nope\""),
        "{}",
        run.dump()
    );
}

#[test]
fn invalid_options_are_refused() {
    for (args, code, want) in [
        (vec!["-q", "abc"], 2, "invalid value 'abc'"),
        (vec!["-w", "sideways"], 2, "unknown workload"),
        (vec!["-M", "101"], 2, "101"),
        (vec!["--bogus"], 2, "unexpected argument"),
        (
            vec!["--digest", "-r", "trtype:rdma traddr:1.2.3.4"],
            2,
            // A build with the rdma feature takes RDMA (and its discovery) but not
            // digests; one without refuses the transport.
            if cfg!(feature = "rdma") {
                "digests are NVMe/TCP's"
            } else {
                "built with the rdma feature"
            },
        ),
        (vec!["-r", "trtype:tcp trsvcid:4420"], 2, "has no traddr"),
        (vec!["-t", "1"], 2, "give the target with -r"),
        (vec!["-t", "0", "-r", "traddr:127.0.0.1"], 2, "-t must be"),
        (vec!["--kato", "5", "-r", "traddr:127.0.0.1"], 2, "--kato"),
        (vec!["limit", "--verify"], 2, "--verify needs storage"),
        (
            vec!["-c", "4096", "-r", "traddr:127.0.0.1"],
            2,
            "core 4096 is not available",
        ),
        (vec!["bdev", "-q", "1"], 2, "--ram"),
    ] {
        let run = perf(&args);
        assert_eq!(run.code, code, "{args:?}\n{}", run.dump());
        assert!(
            run.stderr.contains(want),
            "{args:?}: {want:?}\n{}",
            run.dump()
        );
    }
    // Checked against what the target reports: invalid options too (exit code 2).
    let t = TestTarget::start(8 << 20, 512);
    let r = t.trid();
    for (args, want) in [
        (
            vec!["-o", "1000"],
            "not a multiple of the 512-byte block size",
        ),
        (
            vec!["-o", "1M"],
            "exceeds the controller's maximum transfer",
        ),
        (vec!["-q", "2000"], "use -q 1023 or less"),
        (vec!["--range", "0:99999999999"], "does not fit"),
    ] {
        let mut a = vec!["-r", r.as_str(), "-t", "0.2"];
        a.extend(args.iter().copied());
        let run = perf(&a);
        assert_eq!(run.code, 2, "{args:?}\n{}", run.dump());
        assert!(
            run.stderr.contains(want),
            "{args:?}: {want:?}\n{}",
            run.dump()
        );
    }
}

/// A TCP proxy in front of the target that, after `after`, either resets every
/// connection (RST) or stops forwarding (a hung target).
struct Proxy {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: std::net::SocketAddr, after: Duration, reset: bool) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let clients: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, f2, s2) = (clients.clone(), frozen.clone(), stop.clone());
        thread::spawn(move || {
            let t0 = Instant::now();
            while !s2.load(Ordering::SeqCst) && t0.elapsed() < after {
                thread::sleep(Duration::from_millis(10));
            }
            f2.store(true, Ordering::SeqCst);
            if reset {
                for s in c2.lock().expect("lock").iter() {
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: setsockopt reads `linger` (a live local of the size
                    // given) on a socket this proxy owns.
                    unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&linger as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                    let _ = s.shutdown(Shutdown::Both);
                }
                // Closing with linger 0 sends RST.
                c2.lock().expect("lock").clear();
            }
        });
        let s3 = stop.clone();
        thread::spawn(move || {
            for c in l.incoming() {
                if s3.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let Ok(u) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = c.set_nodelay(true);
                let _ = u.set_nodelay(true);
                clients
                    .lock()
                    .expect("lock")
                    .push(c.try_clone().expect("clone"));
                for (mut from, mut to) in [
                    (c.try_clone().expect("clone"), u.try_clone().expect("clone")),
                    (u, c),
                ] {
                    let frozen = frozen.clone();
                    thread::spawn(move || {
                        let mut b = vec![0u8; 65536];
                        while let Ok(n) = from.read(&mut b) {
                            if n == 0 {
                                break;
                            }
                            if !frozen.load(Ordering::SeqCst) && to.write_all(&b[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy { addr, stop }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn connection_reset_mid_run_reports_partial_figures() {
    let t = TestTarget::start(8 << 20, 512);
    let p = Proxy::start(t.addr, Duration::from_millis(1500), true);
    let r = trid(p.addr, Some(common::NQN));
    let run = perf(&["-r", &r, "-q", "8", "-t", "5", "--json"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(run.total_iops() > 0.0, "partial figures\n{}", run.dump());
    let err = run.field(&["error"]);
    let err = err.as_str().unwrap_or("");
    assert!(
        err.contains("reset the connection") || err.contains("closed the connection"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains("the run stopped early"),
        "{}",
        run.dump()
    );
}

#[test]
fn hung_target_fails_the_run_at_the_io_timeout() {
    let t = TestTarget::start(8 << 20, 512);
    let p = Proxy::start(t.addr, Duration::from_millis(1000), false);
    let r = trid(p.addr, Some(common::NQN));
    let t0 = Instant::now();
    let run = perf(&[
        "-r",
        &r,
        "-q",
        "8",
        "-t",
        "10",
        "--io-timeout",
        "1",
        "--kato",
        "0",
        "--json",
    ]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(t0.elapsed() < Duration::from_secs(8), "{}", run.dump());
    assert!(run.total_iops() > 0.0, "{}", run.dump());
    let err = run.field(&["error"]);
    assert!(
        err.as_str()
            .unwrap_or("")
            .contains("got no completion within 1s"),
        "{}",
        run.dump()
    );
}

#[test]
fn a_namespace_the_subsystem_lacks_is_named_as_missing() {
    let t = TestTarget::start(8 << 20, 512);
    let r = format!("{} ns:2", t.trid());
    let run = perf(&["-r", &r, "-t", "0.2"]);
    assert_eq!(run.code, 2, "{}", run.dump());
    assert!(
        run.stderr.contains("namespace 2 does not exist in")
            && run.stderr.contains("its namespace is 1")
            && run.stderr.contains("ns:N"),
        "{}",
        run.dump()
    );
    assert!(!run.stderr.contains("not usable"), "{}", run.dump());
}

#[test]
fn discovery_without_a_port_says_where_it_looked() {
    // Nothing listens on 127.0.0.3, on either the discovery port or the I/O port.
    let run = perf(&["-r", "trtype:tcp adrfam:ipv4 traddr:127.0.0.3", "-t", "0.2"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert!(
        run.stderr.contains("nothing listens on 127.0.0.3:8009")
            && run.stderr.contains("127.0.0.3:4420")
            && run.stderr.contains("trsvcid:PORT"),
        "{}",
        run.dump()
    );
}
