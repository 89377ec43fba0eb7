//! The userspace stack over smoltcp's loopback device, and over an in-memory wire
//! where (as with AF_XDP beside the kernel) ARP goes to "the kernel", not the stack.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::net::Ipv4Addr;
use std::rc::Rc;

use lightpool_netstack::{EngineCounters, PacketEngine, Stack, StackConfig, TcpConn};
use lightpool_tcp_framing::Stream;
use smoltcp::phy::{self, Device, DeviceCapabilities, Loopback, Medium};
use smoltcp::time::Instant;

const PORT: u16 = 4420;
const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect()
}

/// Write `data` to `w` and read as much from `r`, polling `poll` between steps.
fn pump(poll: &mut dyn FnMut(), w: &mut TcpConn, r: &mut TcpConn, data: &[u8]) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 70_000];
    let mut last = std::time::Instant::now();
    while got.len() < data.len() {
        let mut moved = false;
        if sent < data.len() {
            let end = data.len().min(sent + 100_000);
            // Two slices, to go through the vectored path.
            let mid = sent + (end - sent) / 3;
            match w.writev(&[
                IoSlice::new(&data[sent..mid]),
                IoSlice::new(&data[mid..end]),
            ]) {
                Ok(n) => {
                    sent += n;
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        match r.read(&mut buf) {
            Ok(0) => panic!("end of stream after {} bytes", got.len()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                moved = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
        poll();
        if moved {
            last = std::time::Instant::now();
        }
        // Lost segments wait for a retransmission timer (a second at first).
        assert!(
            last.elapsed() < std::time::Duration::from_secs(10),
            "stalled at {} of {} bytes",
            got.len(),
            data.len()
        );
    }
    got
}

fn loopback_stack(backlog: usize) -> Stack<Loopback> {
    let mut cfg = StackConfig::new(IP, 24);
    cfg.backlog = backlog;
    let mut s = Stack::new(Loopback::new(Medium::Ethernet), cfg).unwrap();
    s.listen(PORT).unwrap();
    s
}

fn connect(s: &mut Stack<Loopback>, local_port: u16) -> (TcpConn, TcpConn) {
    let client = s.connect((IP, PORT), local_port).unwrap();
    for _ in 0..1000 {
        s.poll();
        if let Some(server) = s.accept(PORT) {
            return (client, server);
        }
    }
    panic!("no connection accepted");
}

#[test]
fn moves_data_both_ways_and_rearms_its_backlog() {
    let mut s = loopback_stack(1);
    let armed = s.socket_count();
    for round in 0..3u8 {
        let (mut c, mut srv) = connect(&mut s, 50_000 + round as u16);
        assert_eq!(srv.peer_addr(), c.local_addr());
        let up = pattern(round, 3 << 20);
        let st = std::cell::RefCell::new(&mut s);
        let mut poll = || {
            st.borrow_mut().poll();
        };
        assert!(
            pump(&mut poll, &mut c, &mut srv, &up) == up,
            "host to target"
        );
        let down = pattern(round + 7, 2 << 20);
        assert!(
            pump(&mut poll, &mut srv, &mut c, &down) == down,
            "target to host"
        );
        // The host closes: the target reads the end, then closes too.
        c.shutdown_write();
        let mut end = None;
        for _ in 0..1000 {
            poll();
            match srv.read(&mut [0u8; 16]) {
                Ok(n) => {
                    end = Some(n);
                    break;
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
            }
        }
        assert_eq!(end, Some(0), "the target sees the host's FIN");
        drop(srv);
        drop(c);
        for _ in 0..100 {
            poll();
        }
    }
    // Every accepted socket was replaced by a listening one; closed ones are freed
    // (the host side ends in TIME-WAIT and is freed when that expires).
    assert!(s.socket_count() >= armed);
    assert!(
        s.socket_count() <= armed + 3,
        "{} sockets",
        s.socket_count()
    );
}

#[test]
fn a_backlog_serves_several_handshakes_at_once() {
    let mut s = loopback_stack(4);
    let clients: Vec<_> = (0..4)
        .map(|i| s.connect((IP, PORT), 40_000 + i).unwrap())
        .collect();
    let mut servers = Vec::new();
    for _ in 0..1000 {
        s.poll();
        while let Some(c) = s.accept(PORT) {
            servers.push(c);
        }
        if servers.len() == 4 {
            break;
        }
    }
    assert_eq!(servers.len(), 4);
    let mut ports: Vec<_> = servers
        .iter()
        .map(|c| c.peer_addr().unwrap().port())
        .collect();
    ports.sort();
    assert_eq!(ports, vec![40_000, 40_001, 40_002, 40_003]);
    drop(clients);
}

#[test]
fn a_reset_ends_the_other_side_and_a_closed_port_refuses() {
    let mut s = loopback_stack(1);
    let (c, mut srv) = connect(&mut s, 41_000);
    c.abort();
    let mut got = None;
    for _ in 0..100 {
        s.poll();
        match srv.read(&mut [0u8; 8]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            r => {
                got = Some(r.map_err(|e| e.kind()));
                break;
            }
        }
    }
    assert_eq!(got, Some(Ok(0)), "a reset reads as the end");
    let e = srv.writev(&[IoSlice::new(b"x")]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);

    let refused = s.connect((IP, PORT + 1), 41_001).unwrap();
    for _ in 0..100 {
        s.poll();
    }
    assert_eq!(refused.state(), smoltcp::socket::tcp::State::Closed);
}

#[test]
fn busy_while_data_is_unacknowledged() {
    let mut s = loopback_stack(1);
    let (mut c, mut srv) = connect(&mut s, 42_000);
    for _ in 0..10 {
        s.poll();
    }
    assert!(!s.busy(), "nothing in flight");
    c.writev(&[IoSlice::new(&[7u8; 1000])]).unwrap();
    // Written but not yet carried and acknowledged: the reactor must not sleep.
    assert!(c.unacked() > 0 || srv.readable());
    let mut buf = [0u8; 2000];
    let mut got = 0;
    for _ in 0..100 {
        s.poll();
        if let Ok(n) = srv.read(&mut buf) {
            got += n;
        }
    }
    assert_eq!(got, 1000);
    assert!(!s.busy());
}

// ---- two stacks on a wire whose ARP goes elsewhere ----

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of a wire. Frames to the target end that are ARP go to "the kernel",
/// which answers requests for the target's address with the target's MAC (the
/// kernel and the stack share it) and swallows replies.
struct End {
    mac: [u8; 6],
    rx: Queue,
    tx: Queue,
    /// This end is the host's; the far end is the target, fronted by a kernel.
    kernel_ahead: Option<[u8; 6]>,
    /// Lose or reorder what this end sends: every `lose`-th frame is dropped, every
    /// `swap`-th goes out behind the next one (0: never).
    lose: u32,
    swap: u32,
    sent: std::cell::Cell<u32>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a End);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        let end = self.0;
        match end.kernel_ahead {
            Some(target_mac) if frame[12..14] == [8, 6] => {
                if frame[20..22] == [0, 1] {
                    // The kernel answers a request for its (and the stack's) address.
                    let mut reply = frame.clone();
                    reply[0..6].copy_from_slice(&frame[6..12]);
                    reply[6..12].copy_from_slice(&target_mac);
                    reply[21] = 2;
                    reply[22..28].copy_from_slice(&target_mac);
                    reply[28..32].copy_from_slice(&frame[38..42]);
                    reply[32..42].copy_from_slice(&frame[22..32]);
                    end.rx.borrow_mut().push_back(reply);
                }
            }
            _ => {
                let n = end.sent.get() + 1;
                end.sent.set(n);
                let mut q = end.tx.borrow_mut();
                if end.lose > 0 && n.is_multiple_of(end.lose) {
                    // lost
                } else if end.swap > 0 && n.is_multiple_of(end.swap) && !q.is_empty() {
                    let at = q.len() - 1;
                    q.insert(at, frame);
                } else {
                    q.push_back(frame);
                }
            }
        }
        r
    }
}

impl Device for End {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.borrow_mut().pop_front()?;
        Some((Rx(f), Tx(self)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

impl PacketEngine for End {
    fn name(&self) -> &str {
        "wire"
    }
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }
}

/// Two stacks on a wire, the target's ARP answered by "the kernel"; `lose` and
/// `swap` apply to both directions. Moves 1 MiB each way and checks it.
fn over_the_wire(lose: u32, swap: u32) {
    let (a, b): (Queue, Queue) = Default::default();
    let target_mac = [2, 0, 0, 0, 0, 1];
    let host_ip = Ipv4Addr::new(10, 0, 0, 2);
    let host = End {
        mac: [2, 0, 0, 0, 0, 2],
        rx: a.clone(),
        tx: b.clone(),
        kernel_ahead: Some(target_mac),
        lose,
        swap,
        sent: Default::default(),
    };
    let target = End {
        mac: target_mac,
        rx: b,
        tx: a,
        kernel_ahead: None,
        lose,
        swap,
        sent: Default::default(),
    };
    let mut t = Stack::new(target, StackConfig::new(IP, 24)).unwrap();
    t.listen(PORT).unwrap();
    let mut h = Stack::new(host, StackConfig::new(host_ip, 24)).unwrap();
    let mut c = h.connect((IP, PORT), 43_000).unwrap();
    let mut srv = None;
    for _ in 0..100_000 {
        h.poll();
        t.poll();
        if let Some(s) = t.accept(PORT) {
            srv = Some(s);
            break;
        }
    }
    let mut srv = srv.expect("the target accepted without ever seeing ARP");
    assert_eq!(t.neighbour(host_ip), Some([2, 0, 0, 0, 0, 2]));
    let data = pattern(3, 1 << 20);
    let (hc, tc) = (RefCell::new(&mut h), RefCell::new(&mut t));
    let mut poll = || {
        hc.borrow_mut().poll();
        tc.borrow_mut().poll();
    };
    assert!(pump(&mut poll, &mut srv, &mut c, &data) == data);
    assert!(pump(&mut poll, &mut c, &mut srv, &data) == data);
}

#[test]
fn replies_reach_a_peer_whose_arp_the_kernel_answers() {
    over_the_wire(0, 0);
}

/// Lost and reordered segments (what `tc netem` would do on a veth, which this
/// kernel lacks): retransmission and reassembly bring every byte, in order.
#[test]
fn lost_and_reordered_segments_still_deliver_every_byte() {
    over_the_wire(37, 11);
}

/// smoltcp sends one segment per socket per egress pass: a write of many segments
/// must leave in the write's own poll, not one segment per reactor loop.
#[test]
fn a_write_goes_out_in_one_poll_not_a_segment_per_poll() {
    let (a, b): (Queue, Queue) = Default::default();
    let target_mac = [2, 0, 0, 0, 0, 1];
    let end = |mac, rx: &Queue, tx: &Queue, kernel_ahead| End {
        mac,
        rx: rx.clone(),
        tx: tx.clone(),
        kernel_ahead,
        lose: 0,
        swap: 0,
        sent: Default::default(),
    };
    let mut t = Stack::new(end(target_mac, &b, &a, None), StackConfig::new(IP, 24)).unwrap();
    t.listen(PORT).unwrap();
    let host = end([2, 0, 0, 0, 0, 2], &a, &b, Some(target_mac));
    let mut h = Stack::new(host, StackConfig::new(Ipv4Addr::new(10, 0, 0, 2), 24)).unwrap();
    let _c = h.connect((IP, PORT), 44_000).unwrap();
    let mut srv = None;
    for _ in 0..10_000 {
        h.poll();
        t.poll();
        srv = srv.or_else(|| t.accept(PORT));
        if srv.is_some() && a.borrow().is_empty() && b.borrow().is_empty() {
            break;
        }
    }
    let mut srv = srv.expect("accepted");
    // 48 KiB is some 34 segments of 1460 bytes (within the peer's first window).
    let data = pattern(9, 48 << 10);
    assert_eq!(srv.writev(&[IoSlice::new(&data)]).unwrap(), data.len());
    let frames = a.borrow().len();
    assert!(frames >= 34, "the write's poll sent {frames} frames");
}
