//! NVMe/TCP through the AF_XDP engine (cargo feature `af_xdp`): a listener with
//! `engine = "af_xdp"` takes over one interface. The XDP program steers its port to an
//! AF_XDP socket per receive queue; reactor N owns queue N and serves it through the
//! packet-engine poller (`engine.rs`), sleeping on the AF_XDP socket when idle.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use lightpool_netstack::StackConfig;
use lightpool_nvmf::{EngineSpec, ListenAddr, ListenerInfo};
use lightpool_reactor::Ctx;
use lightpool_xdp::{Mode, QueueConfig, Steering, XskQueue};

use lightpool_tcp_framing::offload::{SteeredFrames, SteeringEngine};

use crate::engine::{listen_err, start_queue, EngineListener, QueueMeta, NEXT_ENGINE_LISTENER};
use crate::{TcpError, TcpTransport, NEXT_PORTID};

/// An AF_XDP listener: the XDP program stays attached while this lives.
pub(crate) type XdpListener = EngineListener<Steering>;

/// The XDP program steers: its per-CPU counters, read from its BPF map.
impl SteeringEngine for XdpListener {
    const NAME: &'static str = "xdp";
    fn frames(&self) -> Option<SteeredFrames> {
        let c = self.keep.counters().ok()?;
        Some(SteeredFrames {
            steered: c.steered,
            passed: c.passed,
            no_socket: c.no_socket,
        })
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
        let id = NEXT_ENGINE_LISTENER.fetch_add(1, Ordering::Relaxed);
        let mut start = || -> Result<(), TcpError> {
            for q in 0..queues {
                let queue = XskQueue::open(interface, q, &QueueConfig::default())
                    .map_err(|e| listen_err(bound, e))?;
                steering
                    .register(q, queue.fd())
                    .map_err(|e| listen_err(bound, e))?;
                let target = self.target.clone();
                let cfg = StackConfig::new(ip, prefix);
                let port = addr.port();
                let meta = QueueMeta {
                    engine: "af_xdp",
                    steering: <XdpListener as SteeringEngine>::NAME,
                    interface: interface.to_string(),
                    offload: self.offload.clone(),
                    listener: id,
                };
                let (tx, rx) = crossbeam::channel::bounded(1);
                self.reactors[q as usize].send(move |ctx: &mut Ctx| {
                    let _ = tx.send(start_queue(ctx, queue, cfg, port, target, meta));
                })?;
                rx.recv_timeout(crate::ASK_TIMEOUT)
                    .map_err(|_| TcpError::Timeout(q as usize))?
                    .map_err(|e| listen_err(bound, e))?;
            }
            Ok(())
        };
        if let Err(e) = start() {
            // The queues that started go again (the XDP program with `steering`).
            let _ = self.end_engine_queues(id, crate::ASK_TIMEOUT);
            return Err(e);
        }
        let la = ListenAddr::tcp(bound);
        self.target.add_listener(ListenerInfo {
            addr: la.clone(),
            portid: NEXT_PORTID.fetch_add(1, Ordering::Relaxed),
        });
        tracing::info!(%bound, interface, xdp_mode = mode, queues, "NVMe/TCP listening through AF_XDP");
        self.xdp.lock().expect("xdp listeners").push(XdpListener {
            id,
            addr: la,
            spec: EngineSpec {
                engine: "af_xdp".into(),
                interface: interface.into(),
                mode: mode.into(),
            },
            keep: steering,
        });
        Ok(bound)
    }

    /// The engine of an AF_XDP listener.
    pub(crate) fn xdp_engine(&self, addr: &ListenAddr) -> Option<EngineSpec> {
        let l = self.xdp.lock().expect("xdp listeners");
        l.iter().find(|l| &l.addr == addr).map(|l| l.spec.clone())
    }

    /// The XDP program's counters per AF_XDP listener (steered, passed, no socket),
    /// with its interface.
    pub fn xdp_counters(&self) -> Vec<(ListenAddr, String, SteeredFrames)> {
        let l = self.xdp.lock().expect("xdp listeners");
        l.iter()
            .filter_map(|l| Some((l.addr.clone(), l.spec.interface.clone(), l.frames()?)))
            .collect()
    }
}
