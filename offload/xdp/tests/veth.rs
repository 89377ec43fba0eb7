//! AF_XDP + smoltcp on a veth pair between two network namespaces (root): a kernel
//! TCP client in the peer namespace sends data through the XDP steering to the
//! userspace stack, which echoes it back; the XDP counters show the steering, and the
//! kernel still answers ping on the same interface. Generic and native XDP.
#![cfg(feature = "af_xdp")]

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_netstack::{Stack, StackConfig};
use lightpool_tcp_framing::Stream;
use lightpool_xdp::testing::VethPair;
use lightpool_xdp::{Mode, QueueConfig, Steering, XskQueue};

const PORT: u16 = 4420;
const LEN: usize = 16 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8)
        .collect()
}

/// The kernel client in the peer namespace: write `data` while reading the echo,
/// then check it.
fn client(ns: String, to: SocketAddr, data: Arc<Vec<u8>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        VethPair::enter(&ns).expect("enter the peer namespace");
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let d = data.clone();
        let writer = std::thread::spawn(move || {
            for chunk in d.chunks(100_000) {
                w.write_all(chunk).expect("write");
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(data.len());
        s.read_to_end(&mut got).expect("read the echo");
        writer.join().unwrap();
        assert_eq!(got.len(), data.len(), "echoed length");
        assert!(got == *data, "the echo differs from what was sent");
    })
}

fn echo_through_af_xdp(mode: Mode, tag: &str, net: u8) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test needs root (netns, XDP)");
    let pair = VethPair::new(tag, net).expect("veth pair");
    VethPair::enter(&pair.ns_a).expect("enter the target namespace");

    let mut steering = Steering::attach(&pair.a, mode).expect("attach XDP");
    steering.steer_port(PORT).unwrap();
    let q = XskQueue::open(&pair.a, 0, &QueueConfig::default()).expect("AF_XDP socket");
    steering.register(0, q.fd()).unwrap();
    let mut stack = Stack::new(q, StackConfig::new(pair.addr_a, 24)).unwrap();
    stack.listen(PORT).unwrap();

    let data = Arc::new(pattern(LEN));
    let done = Arc::new(AtomicBool::new(false));
    let c = client(
        pair.ns_b.clone(),
        SocketAddr::from((pair.addr_a, PORT)),
        data.clone(),
    );
    let pinger = {
        let (ns, addr, done) = (pair.ns_b.clone(), pair.addr_a, done.clone());
        std::thread::spawn(move || {
            // The kernel keeps the address: it answers ping while the stack serves.
            let out = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-c", "3", "-i", "0.2", "-W", "2",
                ])
                .arg(addr.to_string())
                .output()
                .expect("ping");
            done.store(true, Ordering::Relaxed);
            out
        })
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut echoed = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    let mut peer_closed = false;
    let mut last = Instant::now();
    while !(peer_closed && pending.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "echoed {echoed} of {LEN} bytes in 60 s"
        );
        stack.poll();
        if std::env::var_os("XDP_DEBUG").is_some() && last.elapsed() > Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "{:?} {:?} echoed {echoed} conn {:?}",
                steering.counters(),
                stack.counters(),
                conn.as_ref()
                    .map(|c: &lightpool_netstack::TcpConn| (c.state(), c.unacked()))
            );
        }
        if conn.is_none() {
            conn = stack.accept(PORT);
        }
        let Some(c) = conn.as_mut() else { continue };
        if pending.len() < (1 << 20) && !peer_closed {
            match c.read(&mut buf) {
                Ok(0) => peer_closed = true,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        if !pending.is_empty() {
            match c.writev(&[IoSlice::new(&pending)]) {
                Ok(n) => {
                    pending.drain(..n);
                    echoed += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
    }
    assert_eq!(echoed, LEN);
    drop(conn);
    // Let the close finish while the client checks what it got.
    let close_by = Instant::now() + Duration::from_secs(5);
    while !c.is_finished() && Instant::now() < close_by {
        stack.poll();
    }
    c.join()
        .expect("the kernel client saw its data echoed intact");
    let ping = pinger.join().unwrap();
    assert!(
        ping.status.success(),
        "ping to the AF_XDP interface: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let xdp = steering.counters().unwrap();
    let eng = stack.counters();
    eprintln!("{mode:?}: XDP {xdp:?}; engine {eng:?}");
    // Every segment of 16 MiB (at most 1448 bytes each) came through the steering...
    assert!(xdp.steered as usize >= LEN / 1448, "{xdp:?}");
    // (the last few, the close's, may still be on the ring)
    assert!(eng.rx_frames + 8 >= xdp.steered, "{eng:?}");
    assert!(eng.tx_frames as usize >= LEN / 1514, "{eng:?}");
    // ...and ICMP (and ARP) went to the kernel.
    assert!(xdp.passed >= 3, "{xdp:?}");
    assert_eq!(xdp.no_socket, 0, "{xdp:?}");
}

#[test]
fn af_xdp_generic_mode_echoes_a_kernel_client_and_passes_ping() {
    echo_through_af_xdp(Mode::Generic, "g", 71);
}

#[test]
fn af_xdp_native_mode_echoes_a_kernel_client_and_passes_ping() {
    echo_through_af_xdp(Mode::Native, "n", 72);
}
