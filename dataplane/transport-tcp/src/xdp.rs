//! NVMe/TCP through the AF_XDP engine (cargo feature `af_xdp`): a listener with
//! `engine = "af_xdp"` takes over one interface. The XDP program steers its port to an
//! AF_XDP socket per receive queue; reactor N owns queue N, polls it, runs the
//! userspace TCP stack (lightpool-netstack) over it, and serves the connections that
//! arrive there with the same connection code as kernel sockets (`Conn`, over the
//! stack's `TcpConn` streams). Readiness comes from the stack, not epoll: a connection
//! is read when its socket holds bytes. The reactor sleeps on the AF_XDP socket only
//! when the stack has nothing unsent and no timer due, since nothing else wakes it.
//!
//! Not here: TLS on such a listener, handing its connections over in a hot upgrade
//! (they close with the process and the host reconnects), removing the listener.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use lightpool_netstack::{Stack, StackConfig, TcpConn};
use lightpool_nvmf::{EngineSpec, ListenAddr, ListenerInfo, Target};
use lightpool_reactor::{Ctx, Interest, PollStatus, Poller};
use lightpool_xdp::{Mode, QueueConfig, Steering, XskQueue};

use crate::conn::Conn;
use crate::{TcpError, TcpTransport, NEXT_PORTID};

/// An AF_XDP listener: the XDP program stays attached while this lives.
pub(crate) struct XdpListener {
    pub(crate) addr: ListenAddr,
    pub(crate) spec: EngineSpec,
    steering: Steering,
}

/// One reactor's queue: its stack and the connections that came through it.
struct QueueLocal {
    stack: Stack<XskQueue>,
    port: u16,
    target: Arc<Target>,
    conns: Vec<Conn<TcpConn>>,
}

thread_local! {
    static QUEUES: RefCell<Vec<QueueLocal>> = const { RefCell::new(Vec::new()) };
}

fn listen_err(addr: SocketAddr, e: impl std::fmt::Display) -> TcpError {
    TcpError::Listen {
        addr,
        source: std::io::Error::other(e.to_string()),
    }
}

impl TcpTransport {
    /// Serve NVMe/TCP on `addr` through AF_XDP on `interface` (the address's IP is the
    /// interface's; `0.0.0.0` takes it from the interface). The port must be given.
    pub fn listen_af_xdp(
        &self,
        addr: SocketAddr,
        interface: &str,
        mode: &str,
    ) -> Result<SocketAddr, TcpError> {
        let xdp_mode: Mode = mode.parse().map_err(|e| listen_err(addr, e))?;
        if addr.port() == 0 {
            return Err(listen_err(addr, "an AF_XDP listener needs its port given"));
        }
        let (if_ip, prefix) =
            lightpool_xdp::interface_ipv4(interface).map_err(|e| listen_err(addr, e))?;
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => if_ip,
            IpAddr::V4(ip) if ip == if_ip => ip,
            other => {
                return Err(listen_err(
                    addr,
                    format!("{interface} has {if_ip}, not {other}: an AF_XDP listener uses the interface's IPv4 address"),
                ))
            }
        };
        let bound = SocketAddr::from((ip, addr.port()));
        let mut steering =
            Steering::attach(interface, xdp_mode).map_err(|e| listen_err(bound, e))?;
        steering
            .steer_port(addr.port())
            .map_err(|e| listen_err(bound, e))?;
        let queues = lightpool_xdp::rx_queues(interface).min(self.reactors.len() as u32);
        for q in 0..queues {
            let queue = XskQueue::open(interface, q, &QueueConfig::default())
                .map_err(|e| listen_err(bound, e))?;
            steering
                .register(q, queue.fd())
                .map_err(|e| listen_err(bound, e))?;
            let target = self.target.clone();
            let cfg = StackConfig::new(ip, prefix);
            let port = addr.port();
            let (tx, rx) = crossbeam::channel::bounded(1);
            self.reactors[q as usize].send(move |ctx: &mut Ctx| {
                let _ = tx.send(start_queue(ctx, queue, cfg, port, target));
            })?;
            rx.recv_timeout(crate::ASK_TIMEOUT)
                .map_err(|_| TcpError::Timeout(q as usize))?
                .map_err(|e| listen_err(bound, e))?;
        }
        let la = ListenAddr::tcp(bound);
        self.target.add_listener(ListenerInfo {
            addr: la.clone(),
            portid: NEXT_PORTID.fetch_add(1, Ordering::Relaxed),
        });
        tracing::info!(%bound, interface, xdp_mode = mode, queues, "NVMe/TCP listening through AF_XDP");
        self.xdp.lock().expect("xdp listeners").push(XdpListener {
            addr: la,
            spec: EngineSpec {
                engine: "af_xdp".into(),
                interface: interface.into(),
                mode: mode.into(),
            },
            steering,
        });
        Ok(bound)
    }

    /// The engine of an AF_XDP listener.
    pub(crate) fn xdp_engine(&self, addr: &ListenAddr) -> Option<EngineSpec> {
        let l = self.xdp.lock().expect("xdp listeners");
        l.iter().find(|l| &l.addr == addr).map(|l| l.spec.clone())
    }

    /// The XDP program's counters per AF_XDP listener (steered, passed, no socket).
    pub fn xdp_counters(&self) -> Vec<(ListenAddr, lightpool_xdp::SteeringCounters)> {
        let l = self.xdp.lock().expect("xdp listeners");
        l.iter()
            .filter_map(|l| Some((l.addr.clone(), l.steering.counters().ok()?)))
            .collect()
    }
}

/// On the reactor that owns `queue`: its stack, listening, watched for frames.
fn start_queue(
    ctx: &mut Ctx,
    queue: XskQueue,
    cfg: StackConfig,
    port: u16,
    target: Arc<Target>,
) -> std::io::Result<()> {
    let fd = queue.fd();
    let mut stack = Stack::new(queue, cfg)?;
    stack.listen(port)?;
    ctx.register_fd(fd, Interest::READABLE)?;
    let first = QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        q.push(QueueLocal {
            stack,
            port,
            target,
            conns: Vec::new(),
        });
        q.len() == 1
    });
    if first {
        ctx.add_poller(Box::new(XdpPoller));
    }
    Ok(())
}

/// Polls this reactor's AF_XDP queues, their stacks and connections.
struct XdpPoller;

impl Poller for XdpPoller {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        let now = ctx.now();
        let busy = QUEUES.with(|q| {
            let mut busy = false;
            for q in q.borrow_mut().iter_mut() {
                busy |= q.stack.poll();
                while let Some(s) = q.stack.accept(q.port) {
                    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::debug!(%peer, reactor = ctx.id(), "AF_XDP connection accepted");
                    q.conns.push(Conn::new(s, q.target.clone(), peer, ctx.id()));
                    busy = true;
                }
                let mut i = 0;
                while i < q.conns.len() {
                    let c = &mut q.conns[i];
                    let readable = c.stream().readable();
                    let work = c.poll_ready(now, readable);
                    if c.is_closed() {
                        tracing::debug!(peer = %c.peer(), "AF_XDP connection closed");
                        q.conns.swap_remove(i);
                        busy = true;
                        continue;
                    }
                    busy |= work > 0 || c.has_pending_work();
                    i += 1;
                }
                // What the connections wrote went out with their writes; a sleeping
                // reactor is woken only by frames, so stay up while the stack still
                // holds data or a timer is close.
                busy |= q.stack.busy();
            }
            busy
        });
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}
