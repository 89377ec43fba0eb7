//! Against an in-process LightPool target serving a RAM namespace over NVMe/TCP on
//! loopback: the checks every backend passes, a backlog deeper than the queue, and the
//! failures a remote device meets (connections cut under load, a peer that stops
//! answering) through a TCP relay the test controls.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Bdev, IoOp, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use lightpool_transport_tcp::TcpTransport;

use crate::{RemoteBdev, RemoteOptions};

const NQN: &str = "nqn.2024-01.io.lightpool:remote-test";
const MIB: u64 = 1 << 20;

struct TestTarget {
    addr: SocketAddr,
    reactor: ReactorHandle,
}

impl TestTarget {
    fn start(bytes: u64, block_size: u32) -> TestTarget {
        let t = Target::new(TargetOptions::default()).expect("valid options");
        let bdev = MallocBdev::new("ram", bytes, block_size).expect("RAM device");
        let mut sc = SubsystemConfig::new(NQN);
        sc.namespaces.push(NamespaceConfig {
            nsid: 1,
            bdev,
            nguid: None,
            uuid: None,
            anagrpid: None,
            num_blocks: None,
        });
        t.add_subsystem(sc).expect("valid subsystem");
        let reactor = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor");
        let tcp = TcpTransport::new(t, vec![reactor.clone()]).expect("transport");
        let addr = tcp
            .listen("127.0.0.1:0".parse().expect("address"))
            .expect("listen");
        TestTarget { addr, reactor }
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.reactor.stop();
        let _ = self.reactor.join();
    }
}

fn opts(addr: SocketAddr) -> RemoteOptions {
    let mut o = RemoteOptions::new(addr, NQN, 1);
    o.queue_depth = 16;
    o
}

#[test]
fn a_remote_namespace_passes_the_backend_checks() {
    for bs in [512, 4096] {
        let t = TestTarget::start(64 * MIB, bs);
        let d = RemoteBdev::connect("remote", opts(t.addr)).expect("connect");
        assert_eq!(d.info().block_size, bs);
        assert_eq!(d.info().num_blocks, 64 * MIB / u64::from(bs));
        assert_eq!(d.kind(), "nvmf-tcp");
        check_round_trip(d.as_ref());
        check_out_of_range(d.as_ref());
        check_flush(d.as_ref());
        check_zeroes_and_deallocate(d.as_ref());
        // Ten times the queue's depth: the rest waits in the backlog.
        check_many_in_flight(d.as_ref(), 160);
        let ip = check_served_in_place(d.as_ref());
        assert!(
            !ip.reads && !ip.writes,
            "nothing of a remote device is here"
        );
    }
}

#[test]
fn channels_take_queue_ids_and_give_them_back() {
    let t = TestTarget::start(16 * MIB, 512);
    let mut o = opts(t.addr);
    o.max_queues = 2;
    let d = RemoteBdev::connect("remote", o).expect("connect");
    let a = d.open_channel().expect("first queue");
    let b = d.open_channel().expect("second queue");
    let Err(e) = d.open_channel() else {
        panic!("a third queue of two")
    };
    assert!(e.to_string().contains("all 2 I/O queues"), "{e}");
    drop(a);
    let mut c = d.open_channel().expect("a queue given back is used again");
    assert_eq!(
        write(c.as_mut(), 512, 9, &pattern(512, 9, 1, 4)),
        IoStatus::Success
    );
    drop(b);
}

#[test]
fn bad_requests_end_at_once_with_what_is_wrong() {
    let t = TestTarget::start(64 * MIB, 512);
    let d = RemoteBdev::connect("remote", opts(t.addr)).expect("connect");
    let mut ch = d.open_channel().expect("channel");
    // More blocks than one command carries: in pieces.
    let data = pattern(512, 69_990, 20, 5);
    assert_eq!(write(ch.as_mut(), 512, 69_990, &data), IoStatus::Success);
    let st = run1(
        ch.as_mut(),
        IoRequest::no_data(IoOp::WriteZeroes, 0, 70_000, 1),
    );
    assert_eq!(st, IoStatus::Success);
    let (st, b) = read(ch.as_mut(), 512, 69_990, 20);
    assert_eq!(st, IoStatus::Success);
    assert!(b.as_slice()[..10 * 512].iter().all(|&x| x == 0));
    assert_eq!(&b.as_slice()[10 * 512..], &data[10 * 512..]);
    // A read larger than the largest transfer: in pieces, into one buffer.
    let big = pattern(512, 4096, 2048, 6);
    assert_eq!(write(ch.as_mut(), 512, 4096, &big), IoStatus::Success);
    let (st, b) = read(ch.as_mut(), 512, 4096, 2048);
    assert_eq!(st, IoStatus::Success);
    assert!(b.as_slice() == big.as_slice(), "1 MiB read back in pieces");
    // Nothing to do.
    let st = run1(ch.as_mut(), IoRequest::no_data(IoOp::WriteZeroes, 5, 0, 2));
    assert_eq!(st, IoStatus::Success);
    // A namespace that is not there.
    let mut o = opts(t.addr);
    o.nsid = 7;
    let Err(e) = RemoteBdev::connect("remote", o) else {
        panic!("namespace 7 does not exist")
    };
    assert!(e.to_string().contains("namespace 7 does not exist"), "{e}");
    // Nobody listening.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = dead.local_addr().expect("addr");
    drop(dead);
    let Err(e) = RemoteBdev::connect("remote", opts(gone)) else {
        panic!("nothing listens")
    };
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

/// A TCP relay between the device and the target: forwards, cuts every connection
/// (as a target restart or a network reset would), or stops forwarding (a peer that
/// hangs).
struct Relay {
    addr: SocketAddr,
    /// 0 forward, 1 hang.
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, cs) = (mode.clone(), conns.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                let Ok(s) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = (c.set_nodelay(true), s.set_nodelay(true));
                for (a, b) in [(&c, &s), (&s, &c)] {
                    let (mut a, mut b) =
                        (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
                    let m = m.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            while m.load(SeqCst) == 1 {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            if b.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = (a.shutdown(Shutdown::Both), b.shutdown(Shutdown::Both));
                    });
                }
                cs.lock().expect("conns").extend([c, s]);
            }
        });
        Relay { addr, mode, conns }
    }

    fn cut(&self) {
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Writes `n` blocks from `lba` (one request each, all in flight) and waits.
fn write_many(ch: &mut dyn lightpool_bdev::IoChannel, lba: u64, n: u64, seed: u8) -> Vec<IoStatus> {
    let bufs: Vec<AlignedBuf> = (0..n)
        .map(|i| {
            let mut b = AlignedBuf::new(512);
            b.as_mut_slice()
                .copy_from_slice(&pattern(512, lba + i, 1, seed));
            b
        })
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        // SAFETY: `bufs` outlives the completions collected below.
        unsafe {
            ch.submit(IoRequest::rw(
                IoOp::Write,
                lba + i as u64,
                1,
                b.ptr(),
                512,
                i as u64,
            ))
        };
    }
    let got = poll_n(ch, n as usize);
    (0..n).map(|i| got[&i]).collect()
}

#[test]
fn cut_connections_are_made_again_and_no_request_is_lost() {
    let t = TestTarget::start(16 * MIB, 512);
    let relay = Relay::start(t.addr);
    let mut o = opts(relay.addr);
    o.keep_alive_timeout = Duration::from_millis(400);
    o.reconnect_delay = Duration::from_millis(20);
    let d = RemoteBdev::connect("remote", o).expect("connect");
    let mut ch = d.open_channel().expect("channel");
    assert!(write_many(ch.as_mut(), 0, 64, 1)
        .iter()
        .all(|s| *s == IoStatus::Success));
    // Cut with writes in flight: they are sent again on a new connection.
    let bufs: Vec<AlignedBuf> = (0..64u64)
        .map(|i| {
            let mut b = AlignedBuf::new(512);
            b.as_mut_slice()
                .copy_from_slice(&pattern(512, 1000 + i, 1, 2));
            b
        })
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        // SAFETY: `bufs` outlives the completions collected below.
        unsafe {
            ch.submit(IoRequest::rw(
                IoOp::Write,
                1000 + i as u64,
                1,
                b.ptr(),
                512,
                i as u64,
            ))
        };
    }
    let mut got = std::collections::HashMap::new();
    ch.poll(&mut |tag, st| {
        got.insert(tag, st);
    });
    relay.cut();
    got.extend(poll_n(ch.as_mut(), 64 - got.len()));
    assert_eq!(got.len(), 64);
    assert!(got.values().all(|s| *s == IoStatus::Success), "{got:?}");
    for i in 0..64u64 {
        let (st, b) = read(ch.as_mut(), 512, 1000 + i, 1);
        assert_eq!(st, IoStatus::Success);
        assert_eq!(
            b.as_slice(),
            pattern(512, 1000 + i, 1, 2).as_slice(),
            "block {i}"
        );
    }
    let (queues, _) = d.reconnects();
    assert!(queues >= 1, "the queue was connected again");
    // The admin queue was cut too: the keep-alive connects a new controller, and the
    // channel follows it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.reconnects().1 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the controller was not connected again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(write_many(ch.as_mut(), 2000, 16, 3)
        .iter()
        .all(|s| *s == IoStatus::Success));
}

#[test]
fn a_peer_that_stops_answering_times_requests_out() {
    let t = TestTarget::start(16 * MIB, 512);
    let relay = Relay::start(t.addr);
    let mut o = opts(relay.addr);
    o.io_timeout = Duration::from_millis(500);
    o.keep_alive_timeout = Duration::ZERO;
    let d = RemoteBdev::connect("remote", o).expect("connect");
    let mut ch = d.open_channel().expect("channel");
    relay.mode.store(1, SeqCst);
    let t0 = std::time::Instant::now();
    let got = write_many(ch.as_mut(), 0, 8, 1);
    assert!(
        got.iter().all(|s| *s == IoStatus::Io(libc::ETIMEDOUT)),
        "{got:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // The peer answers again: new requests go through.
    relay.mode.store(0, SeqCst);
    relay.cut();
    let got = write_many(ch.as_mut(), 0, 8, 2);
    assert!(got.iter().all(|s| *s == IoStatus::Success), "{got:?}");
}
