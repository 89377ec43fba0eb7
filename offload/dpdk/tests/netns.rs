//! The DPDK engine against the kernel's TCP stack (needs root): a network namespace and
//! a veth pair made here, DPDK's net_af_packet on the host end, and a net_tap port
//! whose kernel side moves into the same namespace. On each port a smoltcp interface
//! with its own IP first connects out to a kernel listener (so ARP resolves from the
//! DPDK side), then serves a TCP echo on port 4420 to two kernel clients at once, each
//! moving a few MiB both ways with every byte checked. The kernel's neighbour table
//! holds the port's MAC, the port's counters equal the queue's and the kernel peer's,
//! and every mbuf is back in its pool at the end. Then a two-queue net_af_packet (on a
//! second veth pair) and a two-queue net_tap, a registered reactor thread per queue:
//! UDP from 32 kernel sockets spreads over both queues, each flow on one queue, the
//! port's RX count equal to the queues'. One test function: EAL starts once per
//! process.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_dpdk::{
    register_thread, Eal, EalConfig, Hugepages, Mempool, Port, PortConfig, Queue,
};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

const PORT: u16 = 4420;
const OUT_PORT: u16 = 4421;

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().expect("spawn");
    assert!(st.success(), "{cmd} {args:?}");
}

fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "in {ns}: {cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespace and the veth pair; removed on drop (the tap goes with the port).
struct Net {
    ns: String,
    host_if: String,
    peer_if: String,
    tap_if: String,
    /// The second pair, for the two-queue port, and the two-queue tap.
    host2_if: String,
    peer2_if: String,
    tap2_if: String,
}

impl Net {
    fn new() -> Net {
        let tag = std::process::id() % 100_000;
        let net = Net {
            ns: format!("lpdpdk{tag}"),
            host_if: format!("lpdh{tag}"),
            peer_if: format!("lpdn{tag}"),
            tap_if: format!("lpdt{tag}"),
            host2_if: format!("lpdi{tag}"),
            peer2_if: format!("lpdm{tag}"),
            tap2_if: format!("lpdu{tag}"),
        };
        let _ = Command::new("ip").args(["netns", "del", &net.ns]).status();
        run("ip", &["netns", "add", &net.ns]);
        in_ns(&net.ns, &["ip", "link", "set", "lo", "up"]);
        net.veth(&net.host_if, &net.peer_if, "10.77.1.1/24");
        net.veth(&net.host2_if, &net.peer2_if, "10.77.3.1/24");
        net
    }

    fn veth(&self, host_if: &str, peer_if: &str, cidr: &str) {
        let veth = [
            "link", "add", host_if, "type", "veth", "peer", "name", peer_if,
        ];
        run("ip", &veth);
        // The host end carries only DPDK's frames: no IPv6 of its own.
        std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"),
            "1",
        )
        .expect("disable IPv6 on the host end");
        run("ip", &["link", "set", host_if, "up"]);
        run("ip", &["link", "set", peer_if, "netns", &self.ns]);
        self.setup_peer(peer_if, cidr);
        // net_af_packet on veth: checksums the kernel would leave to offload must be
        // filled in, or the userspace stack drops the segments (platform notes).
        in_ns(&self.ns, &["ethtool", "-K", peer_if, "tx", "off"]);
    }

    fn setup_peer(&self, ifname: &str, cidr: &str) {
        in_ns(
            &self.ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{ifname}.disable_ipv6=1"),
            ],
        );
        in_ns(&self.ns, &["ip", "addr", "add", cidr, "dev", ifname]);
        in_ns(&self.ns, &["ip", "link", "set", ifname, "up"]);
    }

    /// rx_packets and tx_packets of an interface in the namespace.
    fn counters(&self, ifname: &str) -> (u64, u64) {
        let read = |what: &str| -> u64 {
            in_ns(
                &self.ns,
                &["cat", &format!("/sys/class/net/{ifname}/statistics/{what}")],
            )
            .trim()
            .parse()
            .expect("counter")
        };
        (read("rx_packets"), read("tx_packets"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting one end of a veth deletes both; the taps went with their ports (or
        // with the namespace they were moved into).
        let links = [&self.host_if, &self.host2_if].map(|l| vec!["link", "del", l.as_str()]);
        for args in links
            .iter()
            .chain([&vec!["netns", "del", self.ns.as_str()]])
        {
            let _ = Command::new("ip").args(args).status();
        }
    }
}

fn enter_ns(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on this thread only, with a valid namespace fd.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

fn pattern(seed: u64, off: u64) -> u8 {
    ((off.wrapping_mul(131) ^ (off >> 11)).wrapping_add(seed * 17)) as u8
}

/// A kernel client in the namespace: sends `total` bytes, reads them all back, checks
/// every byte.
fn client(ns: String, addr: SocketAddr, total: u64, seed: u64) -> u64 {
    enter_ns(&ns);
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while off < total {
            let n = (total - off).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(seed, off + i as u64);
            }
            w.write_all(&buf[..n]).expect("write");
            off += n as u64;
        }
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut r = s;
    let mut off = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // net_tap's PMD takes SIGIO for its queues: a blocking read may see EINTR.
        let n = match r.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => other.expect("read the echo"),
        };
        if n == 0 {
            break;
        }
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(
                b,
                pattern(seed, off + i as u64),
                "byte {} of stream {seed}",
                off + i as u64
            );
        }
        off += n as u64;
    }
    writer.join().expect("writer");
    assert_eq!(off, total, "stream {seed}: echoed bytes");
    off
}

struct Served {
    queue: Queue,
    echoed: u64,
    outbound_ok: bool,
}

/// The smoltcp side: connect out to the kernel's OUT_PORT listener, then echo on PORT
/// to two clients; polls until `stop`, then drains the queue.
fn serve(
    eal: Eal,
    mut queue: Queue,
    mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
    stop: Arc<AtomicBool>,
) -> Served {
    let _reg = register_thread(&eal).expect("register the reactor thread");
    assert!(queue.on_registered_thread());
    let start = Instant::now();
    let now = || SmolInstant::from_micros(start.elapsed().as_micros() as i64);
    let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    let mut iface = Interface::new(cfg, &mut queue, now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), 24))
            .expect("address");
    });
    let mk = || {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        )
    };
    let mut sockets = SocketSet::new(vec![]);
    let mut out = mk();
    out.connect(
        iface.context(),
        (IpAddress::v4(peer[0], peer[1], peer[2], peer[3]), OUT_PORT),
        49152,
    )
    .expect("connect out");
    let out = sockets.add(out);
    let echo: Vec<_> = (0..2)
        .map(|_| {
            let mut s = mk();
            s.listen(PORT).expect("listen");
            sockets.add(s)
        })
        .collect();
    let mut echoed = 0u64;
    let mut outbound_ok = false;
    let mut sent_hello = false;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        iface.poll(now(), &mut queue, &mut sockets);
        queue.flush();
        let s = sockets.get_mut::<tcp::Socket>(out);
        if s.may_send() && !sent_hello {
            s.send_slice(b"hello").expect("send hello");
            sent_hello = true;
        }
        if s.can_recv() {
            let mut got = [0u8; 16];
            let n = s.recv_slice(&mut got).expect("recv");
            outbound_ok |= &got[..n] == b"world";
            s.close();
        }
        for &h in &echo {
            let s = sockets.get_mut::<tcp::Socket>(h);
            let room = s.send_capacity() - s.send_queue();
            if s.can_recv() && room > 0 {
                let n = s.recv_slice(&mut buf[..room.min(64 * 1024)]).expect("recv");
                let m = s.send_slice(&buf[..n]).expect("send");
                assert_eq!(m, n);
                echoed += n as u64;
            }
            if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 && s.send_queue() == 0 {
                s.close();
            }
        }
        if queue.tx_pending() == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    // Last frames (final ACKs) in, nothing left to send.
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(300) {
        iface.poll(now(), &mut queue, &mut sockets);
        queue.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(sockets);
    Served {
        queue,
        echoed,
        outbound_ok,
    }
}

struct Case<'a> {
    port: &'a str,
    kernel_if: &'a str,
    subnet: u8,
}

fn exercise(eal: &Eal, net: &Net, case: Case<'_>, move_tap: bool) {
    let pool = Mempool::new(eal, &format!("pool_{}", case.port), 8191, 256, 2048).expect("pool");
    let (port, mut queues) =
        Port::open(eal, case.port, &PortConfig::default(), pool.clone()).expect("open port");
    eprintln!(
        "{}: driver {}, mac {:02x?}, mtu {}, link {:?}",
        case.port,
        port.driver(),
        port.mac(),
        port.mtu(),
        port.link()
    );
    if move_tap {
        run("ip", &["link", "set", case.kernel_if, "netns", &net.ns]);
        net.setup_peer(case.kernel_if, &format!("10.77.{}.1/24", case.subnet));
    } else {
        assert!(port.link().expect("link").up, "{}: link up", case.port);
    }
    let queue = queues.pop().expect("one queue");
    let avail_started = pool.available();
    std::thread::sleep(Duration::from_millis(200));
    // Baselines: whatever moved while the namespace came up is not the test's.
    let mut drain = Vec::new();
    let mut queue = queue;
    queue.rx_burst(&mut drain, 1024);
    drop(drain);
    port.reset_stats().expect("reset stats");
    let q0 = queue.stats();
    let (peer_rx0, peer_tx0) = net.counters(case.kernel_if);

    let ip = [10, 77, case.subnet, 2];
    let peer = [10, 77, case.subnet, 1];
    // The kernel's listener the smoltcp side connects out to.
    let ns = net.ns.clone();
    let listener = std::thread::spawn(move || {
        enter_ns(&ns);
        let l = TcpListener::bind(SocketAddr::from((peer, OUT_PORT))).expect("bind");
        let (mut s, from) = l.accept().expect("accept");
        let mut got = [0u8; 5];
        s.read_exact(&mut got).expect("hello");
        assert_eq!(&got, b"hello");
        s.write_all(b"world").expect("world");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        from
    });
    std::thread::sleep(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let (e, st, mac) = (eal.clone(), stop.clone(), port.mac());
    let server = std::thread::spawn(move || serve(e, queue, mac, ip, peer, st));
    let from = listener.join().expect("kernel listener");
    assert_eq!(
        from.ip(),
        std::net::IpAddr::from(ip),
        "smoltcp connected out"
    );

    let addr = SocketAddr::from((ip, PORT));
    let sizes = [4u64 << 20, 3u64 << 20];
    let clients: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let ns = net.ns.clone();
            std::thread::spawn(move || client(ns, addr, n, i as u64 + 1))
        })
        .collect();
    let moved: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    assert_eq!(moved, sizes.iter().sum::<u64>());
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let served = server.join().expect("server");
    assert!(served.outbound_ok, "{}: the outbound exchange", case.port);
    assert_eq!(served.echoed, moved, "{}: bytes echoed", case.port);

    // ARP resolved the other way too: the kernel holds the port's MAC.
    let neigh = in_ns(
        &net.ns,
        &["ip", "neigh", "show", &format!("10.77.{}.2", case.subnet)],
    );
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        neigh.contains(&mac_s),
        "{}: kernel neighbour {neigh:?} has {mac_s}",
        case.port
    );

    // Counters: the port's equal the queue's, and the kernel peer's mirror them.
    let mut queue = served.queue;
    queue.flush();
    let qs = queue.stats();
    let ps = port.stats().expect("stats");
    let (peer_rx, peer_tx) = net.counters(case.kernel_if);
    eprintln!(
        "{}: port {ps:?}\n  queue {qs:?}\n  kernel peer rx {} tx {}",
        case.port,
        peer_rx - peer_rx0,
        peer_tx - peer_tx0
    );
    assert_eq!(
        ps.tx_packets,
        qs.tx_packets - q0.tx_packets,
        "port vs queue TX"
    );
    assert_eq!(
        ps.rx_packets,
        qs.rx_packets - q0.rx_packets,
        "port vs queue RX"
    );
    assert_eq!(
        ps.tx_bytes,
        qs.tx_bytes - q0.tx_bytes,
        "port vs queue TX bytes"
    );
    assert!(ps.tx_bytes > moved, "the echo went out");
    assert!(ps.rx_bytes > moved, "the data came in");
    assert_eq!(
        peer_rx - peer_rx0,
        ps.tx_packets,
        "kernel received what DPDK sent"
    );
    assert_eq!(
        peer_tx - peer_tx0,
        ps.rx_packets,
        "DPDK received what the kernel sent"
    );
    assert_eq!(qs.tx_no_mbuf, 0);

    // No mbuf leaked: all back once the queue is gone, all back once the port closes.
    drop(queue);
    assert_eq!(
        pool.available(),
        avail_started,
        "{}: mbufs leaked",
        case.port
    );
    port.stop().expect("stop");
    drop(port);
    assert_eq!(
        pool.available(),
        pool.size(),
        "{}: mbufs held after close",
        case.port
    );
}

#[test]
fn dpdk_ports_against_the_kernel() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "needs root (network namespaces)");
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "net_tap needs /dev/net/tun"
    );
    let net = Net::new();
    let cfg = EalConfig {
        vdevs: vec![
            format!("net_af_packet0,iface={},qpairs=1", net.host_if),
            format!("net_tap0,iface={}", net.tap_if),
            format!("net_af_packet1,iface={},qpairs=2", net.host2_if),
            format!("net_tap1,iface={}", net.tap2_if),
        ],
        // No hugepages: tests beside this one may need the machine's few.
        hugepages: Hugepages::NoHuge,
        memory_mb: 256,
        log_level: Some("notice".into()),
        ..EalConfig::default()
    };
    let eal = Eal::init(&cfg).expect("EAL init");
    eprintln!("EAL up in {:?}: {:?}", eal.init_time(), eal.args());
    // The tap exists once EAL probed it: no IPv6 of its own before it comes up.
    for tap in [&net.tap_if, &net.tap2_if] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1")
            .expect("disable IPv6 on the tap");
    }
    exercise(
        &eal,
        &net,
        Case {
            port: "net_af_packet0",
            kernel_if: &net.peer_if,
            subnet: 1,
        },
        false,
    );
    exercise(
        &eal,
        &net,
        Case {
            port: "net_tap0",
            kernel_if: &net.tap_if,
            subnet: 2,
        },
        true,
    );
    spread(&eal, &net, "net_af_packet1", &net.peer2_if, 3, false);
    spread(&eal, &net, "net_tap1", &net.tap2_if, 4, true);
}

/// A two-queue port, a reactor thread per queue: UDP from many kernel sockets spreads
/// over both queues (RSS, or the device's own hash: net_af_packet's fanout, the tun
/// queue selection), each flow staying on one queue, nothing lost or counted twice.
fn spread(eal: &Eal, net: &Net, port_name: &str, kernel_if: &str, subnet: u8, move_tap: bool) {
    const FLOWS: u16 = 32;
    const PER_FLOW: u64 = 20;
    let pool = Mempool::new(eal, &format!("pool_{port_name}"), 4095, 128, 2048).expect("pool");
    let cfg = PortConfig {
        queues: 2,
        ..PortConfig::default()
    };
    let (port, queues) = Port::open(eal, port_name, &cfg, pool.clone()).expect("open 2 queues");
    eprintln!("{port_name}: driver {}, rss {}", port.driver(), port.rss());
    if move_tap {
        run("ip", &["link", "set", kernel_if, "netns", &net.ns]);
        net.setup_peer(kernel_if, &format!("10.77.{subnet}.1/24"));
    }
    let mac = port
        .mac()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let dst = format!("10.77.{subnet}.2");
    let neigh = [
        "ip",
        "neigh",
        "replace",
        &dst,
        "lladdr",
        &mac,
        "dev",
        kernel_if,
        "nud",
        "permanent",
    ];
    in_ns(&net.ns, &neigh);
    std::thread::sleep(Duration::from_millis(200));
    let avail_started = pool.available();
    let stop = Arc::new(AtomicBool::new(false));
    let reactors: Vec<_> = queues
        .into_iter()
        .map(|mut q| {
            let (e, st) = (eal.clone(), stop.clone());
            std::thread::spawn(move || {
                let _reg = register_thread(&e).expect("register");
                // UDP source ports of the test's datagrams, and other frames.
                let mut flows = std::collections::BTreeMap::<u16, u64>::new();
                let mut other = 0u64;
                let mut v = Vec::new();
                while !st.load(Ordering::Relaxed) {
                    if q.rx_burst(&mut v, 32) == 0 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    for m in v.drain(..) {
                        let d = m.data();
                        let udp = d.len() >= 42
                            && d[12..14] == [0x08, 0x00]
                            && d[23] == 17
                            && u16::from_be_bytes([d[36], d[37]]) == PORT;
                        if udp {
                            *flows.entry(u16::from_be_bytes([d[34], d[35]])).or_default() += 1;
                        } else {
                            other += 1;
                        }
                    }
                }
                (q.id(), flows, other, q.stats(), q)
            })
        })
        .collect();
    port.reset_stats().expect("reset");
    let ns = net.ns.clone();
    let target: SocketAddr = format!("{dst}:{PORT}").parse().expect("addr");
    std::thread::spawn(move || {
        enter_ns(&ns);
        let socks: Vec<_> = (0..FLOWS)
            .map(|_| std::net::UdpSocket::bind("0.0.0.0:0").expect("udp"))
            .collect();
        for i in 0..PER_FLOW {
            for s in &socks {
                s.send_to(&[i as u8; 100], target).expect("send");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .join()
    .expect("kernel sender");
    let want = u64::from(FLOWS) * PER_FLOW;
    let t0 = Instant::now();
    while port.stats().expect("stats").rx_packets < want && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = reactors
        .into_iter()
        .map(|r| r.join().expect("reactor"))
        .collect();
    let ps = port.stats().expect("stats");
    let mut total = 0u64;
    let mut owner = std::collections::BTreeMap::new();
    for (qid, flows, other, qs, _) in &results {
        let n: u64 = flows.values().sum();
        eprintln!(
            "{port_name} queue {qid}: {} flows, {n} datagrams, {other} other, {qs:?}",
            flows.len()
        );
        assert!(
            n > 0,
            "{port_name}: queue {qid} got none of the {FLOWS} flows"
        );
        for (&src, &count) in flows {
            assert_eq!(count, PER_FLOW, "{port_name}: flow {src} split or lost");
            assert!(
                owner.insert(src, *qid).is_none(),
                "{port_name}: flow {src} on both queues"
            );
        }
        total += n + other;
    }
    assert_eq!(
        owner.len(),
        usize::from(FLOWS),
        "{port_name}: every flow arrived"
    );
    assert_eq!(ps.rx_packets, total, "{port_name}: port RX vs the queues'");
    drop(results);
    assert_eq!(pool.available(), avail_started, "{port_name}: mbufs leaked");
}
