//! smoltcp's TCP over one packet-engine queue: an interface with the listener's
//! address, a socket set, listeners that keep a backlog of listening sockets, and the
//! connections they accept.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::rc::Rc;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpEndpoint, Ipv4Cidr};

use crate::conn::TcpConn;
use crate::learn::Learn;
use crate::{EngineCounters, PacketEngine};

/// How a stack is set up. The buffer sizes are smoltcp's windows: its receive window
/// is what is free in the receive buffer (window scaling is offered when the buffer
/// is larger than 64 KiB), and it keeps at most the send buffer unacknowledged, so
/// the defaults are far above smoltcp's usual few KiB (NVMe/TCP moves 128 KiB
/// commands; a small window costs a round trip per window).
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The interface's IPv4 address (the kernel keeps the same one) and prefix.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Per-connection receive and send buffers, in bytes.
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    /// Listening sockets kept armed per port: how many handshakes can be in flight.
    pub backlog: usize,
    /// A connection whose peer acknowledges nothing for this long is aborted; a
    /// handshake that does not finish in it frees its listening socket.
    pub timeout: std::time::Duration,
}

impl StackConfig {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        StackConfig {
            addr,
            prefix_len,
            gateway: None,
            rx_buffer: 1 << 20,
            tx_buffer: 1 << 20,
            backlog: 16,
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// What a connection needs from the stack it lives in, without its device type.
pub(crate) trait Shared {
    fn sockets(&mut self) -> &mut SocketSet<'static>;
    /// Send what the sockets hold (after a write).
    fn poll(&mut self) -> bool;
    /// A connection is dropped: close it and free its socket once closed.
    fn release(&mut self, handle: SocketHandle);
}

/// Extra egress passes per poll (each sends at most one segment per socket).
const EGRESS_ROUNDS: usize = 128;

/// Handshakes in progress kept per listener at most (each holds a socket whose
/// buffers are allocated but untouched until data moves).
const MAX_HALF_OPEN: usize = 256;

struct Listener {
    port: u16,
    /// Listening sockets, and those in a handshake.
    armed: Vec<SocketHandle>,
    /// Established, not yet taken by `accept`.
    ready: VecDeque<SocketHandle>,
}

struct Inner<D: PacketEngine> {
    dev: Learn<D>,
    iface: Interface,
    sockets: SocketSet<'static>,
    closing: Vec<SocketHandle>,
}

impl<D: PacketEngine> Shared for Inner<D> {
    fn sockets(&mut self) -> &mut SocketSet<'static> {
        &mut self.sockets
    }

    fn poll(&mut self) -> bool {
        let now = Instant::now();
        let mut r = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // smoltcp's egress sends at most one segment per socket per call: a 128 KiB
        // response is ~90 segments, so one call per reactor loop paced a connection
        // at one segment per loop. Go on while something is sent (bounded: the TX
        // ring and other reactors' work).
        for _ in 0..EGRESS_ROUNDS {
            if self
                .iface
                .poll_egress(now, &mut self.dev, &mut self.sockets)
                == PollResult::None
            {
                break;
            }
            r = PollResult::SocketStateChanged;
        }
        self.dev.flush();
        let sockets = &mut self.sockets;
        self.closing.retain(|&h| {
            let closed = sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed;
            if closed {
                sockets.remove(h);
            }
            !closed
        });
        r != PollResult::None
    }

    fn release(&mut self, handle: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(handle).close();
        self.closing.push(handle);
    }
}

/// A userspace TCP stack over one queue, owned by the reactor that polls the queue.
pub struct Stack<D: PacketEngine + 'static> {
    inner: Rc<RefCell<Inner<D>>>,
    listeners: Vec<Listener>,
    cfg: StackConfig,
}

impl<D: PacketEngine + 'static> Stack<D> {
    pub fn new(dev: D, cfg: StackConfig) -> io::Result<Self> {
        let mut dev = Learn::new(dev);
        let mac = EthernetAddress(dev.mac());
        if !mac.is_unicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: MAC {mac} is not unicast", dev.name()),
            ));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, Instant::now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(cfg.addr, cfg.prefix_len)));
        });
        if let Some(gw) = cfg.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| io::Error::other("route table full"))?;
        }
        Ok(Stack {
            inner: Rc::new(RefCell::new(Inner {
                dev,
                iface,
                sockets: SocketSet::new(Vec::new()),
                closing: Vec::new(),
            })),
            listeners: Vec::new(),
            cfg,
        })
    }

    fn socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.cfg.rx_buffer]),
            tcp::SocketBuffer::new(vec![0; self.cfg.tx_buffer]),
        );
        // NVMe/TCP sends whole PDUs and waits for answers: Nagle would hold the last
        // segment of each for an ACK, and a delayed ACK would hold the peer's.
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_timeout(Some(Duration::from_millis(
            self.cfg.timeout.as_millis() as u64
        )));
        s
    }

    fn arm(&self, port: u16) -> io::Result<SocketHandle> {
        let mut s = self.socket();
        s.listen(port).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("listen {port}: {e}"))
        })?;
        Ok(self.inner.borrow_mut().sockets.add(s))
    }

    /// Accept connections to `port` on the stack's address.
    pub fn listen(&mut self, port: u16) -> io::Result<()> {
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("port {port} already listened on"),
            ));
        }
        let armed = (0..self.cfg.backlog.max(1))
            .map(|_| self.arm(port))
            .collect::<io::Result<_>>()?;
        self.listeners.push(Listener {
            port,
            armed,
            ready: VecDeque::new(),
        });
        Ok(())
    }

    /// Open a connection (tests, and a host over the userspace stack).
    pub fn connect(&mut self, remote: (Ipv4Addr, u16), local_port: u16) -> io::Result<TcpConn> {
        let s = self.socket();
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let h = inner.sockets.add(s);
        let r = inner.sockets.get_mut::<tcp::Socket>(h).connect(
            inner.iface.context(),
            IpEndpoint::new(remote.0.into(), remote.1),
            local_port,
        );
        if let Err(e) = r {
            inner.sockets.remove(h);
            return Err(io::Error::other(format!("connect: {e}")));
        }
        Ok(TcpConn::new(self.inner.clone(), h))
    }

    /// Move frames both ways, run the timers, and move established connections to
    /// their listener's accept queue. True when something happened.
    pub fn poll(&mut self) -> bool {
        let progress = self.inner.borrow_mut().poll();
        // Sockets change state only when frames arrive or timers fire, which the
        // interface's poll reports: the listeners are looked at only then.
        if progress {
            for i in 0..self.listeners.len() {
                self.tend(i);
            }
        }
        progress
    }

    /// Move listener `i`'s established connections to its accept queue, free the
    /// handshakes that failed, and keep `backlog` sockets listening. A handshake in
    /// progress does not take a listening place (so a flood of SYNs that are never
    /// completed does not lock everyone out) but at most `MAX_HALF_OPEN` are kept:
    /// past that the oldest is dropped, as the kernel drops from its SYN queue.
    fn tend(&mut self, i: usize) {
        let (listening, mut half_open) = {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            let l = &mut self.listeners[i];
            let (mut listening, mut half_open) = (0, 0);
            l.armed
                .retain(|&h| match inner.sockets.get::<tcp::Socket>(h).state() {
                    tcp::State::Listen => {
                        listening += 1;
                        true
                    }
                    tcp::State::SynReceived => {
                        half_open += 1;
                        true
                    }
                    tcp::State::Established | tcp::State::CloseWait => {
                        l.ready.push_back(h);
                        false
                    }
                    _ => {
                        // Reset or timed out in its handshake: free it.
                        inner.sockets.remove(h);
                        false
                    }
                });
            (listening, half_open)
        };
        let port = self.listeners[i].port;
        for _ in listening..self.cfg.backlog.max(1) {
            if half_open >= MAX_HALF_OPEN {
                let mut inner = self.inner.borrow_mut();
                let l = &mut self.listeners[i];
                let oldest = l.armed.iter().position(|&h| {
                    inner.sockets.get::<tcp::Socket>(h).state() == tcp::State::SynReceived
                });
                if let Some(at) = oldest {
                    let h = l.armed.remove(at);
                    inner.sockets.remove(h);
                    half_open -= 1;
                }
            }
            match self.arm(port) {
                Ok(h) => self.listeners[i].armed.push(h),
                Err(e) => tracing::warn!(port, error = %e, "re-arming a listening socket"),
            }
        }
    }

    /// The next connection established on `port`.
    pub fn accept(&mut self, port: u16) -> Option<TcpConn> {
        let l = self.listeners.iter_mut().find(|l| l.port == port)?;
        let h = l.ready.pop_front()?;
        Some(TcpConn::new(self.inner.clone(), h))
    }

    /// Whether the reactor must poll again without sleeping: a socket holds data not
    /// yet acknowledged (or not yet sent), or a timer is due within a millisecond.
    /// A reactor sleeping on the queue's descriptor is woken only by frames, so it
    /// may sleep only when this is false.
    pub fn busy(&self) -> bool {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if inner
            .sockets
            .iter()
            .any(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(t) if t.send_queue() > 0))
        {
            return true;
        }
        matches!(
            inner.iface.poll_delay(Instant::now(), &inner.sockets),
            Some(d) if d < Duration::from_millis(1)
        )
    }

    /// When the stack next needs a poll with no frame arriving (retransmissions,
    /// handshake and TIME-WAIT timers), if ever.
    pub fn poll_delay(&self) -> Option<std::time::Duration> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        inner
            .iface
            .poll_delay(Instant::now(), &inner.sockets)
            .map(|d| std::time::Duration::from_micros(d.total_micros()))
    }

    /// Sockets in the set (listening, connected and closing): for tests and metrics.
    pub fn socket_count(&self) -> usize {
        self.inner.borrow().sockets.iter().count()
    }

    pub fn counters(&self) -> EngineCounters {
        self.inner.borrow().dev.counters()
    }

    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.borrow().dev.wake_fd()
    }

    pub fn name(&self) -> String {
        self.inner.borrow().dev.name().to_string()
    }

    /// The MAC learned for a peer (from its frames), if any.
    pub fn neighbour(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.inner.borrow().dev.neighbour(ip.octets())
    }

    /// The queue itself (its counters and settings).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(self.inner.borrow_mut().dev.inner_mut())
    }
}
