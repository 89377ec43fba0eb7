//! NVMe/TCP through the DPDK engine (cargo feature `dpdk`): a listener with
//! `engine = "dpdk"` takes over one EAL device, a virtual one given as its `--vdev`
//! (`net_af_packet0,iface=veth0`, `net_tap0`) or a PCI address (`0000:3b:00.0`, bound
//! to vfio-pci). The port gets one queue pair per reactor (at most what the device
//! has); reactor N owns queue N and serves it through the packet-engine poller
//! (`engine.rs`). A DPDK queue has no descriptor to sleep on: each reactor holding one
//! polls it without pause, so DPDK spends those cores whether traffic comes or not
//! (AF_XDP sleeps on its socket instead).
//!
//! EAL starts once per process, with the first such listener, on the reactors' cores
//! (each reactor thread registers with it so the mempool's per-lcore caches serve it):
//! one DPDK listener per process. The port has no IP of its own: the listener's
//! address gives it (an on-link peer is learned from its frames); the MAC is the
//! port's.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use lightpool_dpdk::{
    current_affinity, register_thread, DpdkError, Eal, EalConfig, Hugepages, Mempool, Port,
    PortConfig, Queue,
};
use lightpool_netstack::StackConfig;
use lightpool_nvmf::{EngineSpec, ListenAddr, ListenerInfo};
use lightpool_reactor::Ctx;

use lightpool_tcp_framing::offload::{SteeredFrames, SteeringEngine};

use crate::engine::{listen_err, start_queue, EngineListener, QueueMeta, NEXT_ENGINE_LISTENER};
use crate::{TcpError, TcpTransport, NEXT_PORTID};

/// A DPDK listener: the port stays started while this lives.
pub(crate) type DpdkListener = EngineListener<Port>;

/// The port's RSS spreads flows over one receive queue per reactor (no per-flow rules
/// yet); its queues count what they received.
impl SteeringEngine for DpdkListener {
    const NAME: &'static str = "dpdk";
    fn frames(&self) -> Option<SteeredFrames> {
        None
    }
}

/// EAL of this process and the device it was started for.
static EAL: Mutex<Option<(Eal, String)>> = Mutex::new(None);

/// mbufs per queue: its RX ring, what sits in the TX ring and backlog, the cache.
const MBUFS_PER_QUEUE: u32 = 4096;

/// The EAL device string as EAL's arguments and the port's name: a PCI address is
/// allowed (`-a`) with PCI probing on; anything else is a `--vdev`, named by what
/// precedes its first comma.
pub(crate) fn eal_device(device: &str) -> (EalConfig, String) {
    let is_pci = device.contains(':')
        && !device.contains(',')
        && device
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    let mut cfg = EalConfig {
        hugepages: Hugepages::Auto,
        ..EalConfig::default()
    };
    if is_pci {
        cfg.pci = true;
        cfg.extra = vec!["-a".into(), device.into()];
        (cfg, device.to_string())
    } else {
        cfg.vdevs = vec![device.to_string()];
        let name = device.split(',').next().unwrap_or(device).to_string();
        (cfg, name)
    }
}

impl TcpTransport {
    /// The cores the reactors run on (each reactor's affinity, together).
    fn reactor_cores(&self) -> Result<Vec<usize>, TcpError> {
        let mut cores = Vec::new();
        for (i, r) in self.reactors.iter().enumerate() {
            let (tx, rx) = crossbeam::channel::bounded(1);
            r.send(move |_ctx: &mut Ctx| {
                let _ = tx.send(current_affinity());
            })?;
            cores.extend(
                rx.recv_timeout(crate::ASK_TIMEOUT)
                    .map_err(|_| TcpError::Timeout(i))?,
            );
        }
        cores.sort_unstable();
        cores.dedup();
        Ok(cores)
    }

    /// EAL for `device`, started here on the reactors' cores if it is not yet.
    fn eal_for(&self, bound: SocketAddr, device: &str) -> Result<(Eal, String), TcpError> {
        let mut eal = EAL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, dev)) = eal.as_ref() {
            return Err(listen_err(
                bound,
                format!("EAL runs already, for {dev:?}: one DPDK listener per process, a removed one included (its port was closed with it, and DPDK cannot open it again in this process): restart the target to listen through DPDK again"),
            ));
        }
        let (mut cfg, name) = eal_device(device);
        cfg.cores = self.reactor_cores()?;
        // EAL pins the thread that starts it (its main lcore) to those cores: a thread
        // of its own, parked for the process's life, so the caller's stays as it is.
        let (tx, rx) = crossbeam::channel::bounded(1);
        std::thread::Builder::new()
            .name("dpdk-eal".into())
            .spawn(move || {
                let _ = tx.send(Eal::init(&cfg));
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| listen_err(bound, e))?;
        let started = rx
            .recv()
            .map_err(|e| listen_err(bound, e))?
            .map_err(|e| listen_err(bound, e))?;
        tracing::info!(args = ?started.args(), took = ?started.init_time(), "DPDK EAL started");
        *eal = Some((started.clone(), device.to_string()));
        Ok((started, name))
    }

    /// Serve NVMe/TCP on `addr` through DPDK on the EAL device `device` (a `--vdev`
    /// such as `net_af_packet0,iface=veth0`, or a PCI address). The address's IPv4 is
    /// the port's (the kernel must not hold it on that link), and its port must be
    /// given.
    pub fn listen_dpdk(&self, addr: SocketAddr, device: &str) -> Result<SocketAddr, TcpError> {
        if addr.port() == 0 {
            return Err(listen_err(addr, "a DPDK listener needs its port given"));
        }
        let ip =
            match addr.ip() {
                IpAddr::V4(ip) if !ip.is_unspecified() => ip,
                _ => return Err(listen_err(
                    addr,
                    "a DPDK listener needs its own IPv4 address (the port has none): give IP:PORT",
                )),
            };
        let (eal, name) = self.eal_for(addr, device)?;
        let (port, queues) =
            open_port(&eal, &name, self.reactors.len()).map_err(|e| listen_err(addr, e))?;
        if port.driver() == "net_af_packet" && queues.len() > 1 {
            // Its queues are packet sockets in a fanout group that rolls frames over to
            // another socket when one's ring is full: a segment then reaches a stack
            // that does not know its connection, which resets it (seen in
            // tests/dpdk.rs with qpairs=2 under 128 KiB I/O).
            return Err(listen_err(
                addr,
                format!("{device}: net_af_packet with more than one queue pair rolls frames over between queues, which resets connections; give qpairs=1"),
            ));
        }
        let link = port.link().map(|l| l.up).unwrap_or(false);
        let n = queues.len();
        let id = NEXT_ENGINE_LISTENER.fetch_add(1, Ordering::Relaxed);
        let start = || -> Result<(), TcpError> {
            for (q, queue) in queues.into_iter().enumerate() {
                let target = self.target.clone();
                // Peers are on-link and learned from their frames (lightpool-netstack's
                // Learn): every address is taken as on-link.
                let cfg = StackConfig::new(ip, 0);
                let port_no = addr.port();
                let eal = eal.clone();
                let meta = QueueMeta {
                    engine: "dpdk",
                    steering: <DpdkListener as SteeringEngine>::NAME,
                    interface: device.to_string(),
                    offload: self.offload.clone(),
                    listener: id,
                };
                let (tx, rx) = crossbeam::channel::bounded(1);
                self.reactors[q].send(move |ctx: &mut Ctx| {
                    let r = register_on_reactor(&eal).and_then(|()| {
                        start_queue::<Queue>(ctx, queue, cfg, port_no, target, meta)
                    });
                    let _ = tx.send(r);
                })?;
                rx.recv_timeout(crate::ASK_TIMEOUT)
                    .map_err(|_| TcpError::Timeout(q))?
                    .map_err(|e| listen_err(addr, e))?;
            }
            Ok(())
        };
        if let Err(e) = start() {
            // The queues that started go again (the port with `port`).
            let _ = self.end_engine_queues(id, crate::ASK_TIMEOUT);
            return Err(e);
        }
        let la = ListenAddr::tcp(addr);
        self.target.add_listener(ListenerInfo {
            addr: la.clone(),
            portid: NEXT_PORTID.fetch_add(1, Ordering::Relaxed),
        });
        tracing::info!(%addr, device, port = port.name(), driver = port.driver(),
            mac = ?port.mac(), queues = n, link_up = link,
            "NVMe/TCP listening through DPDK (its reactors busy-poll)");
        self.dpdk
            .lock()
            .expect("dpdk listeners")
            .push(DpdkListener {
                id,
                addr: la,
                spec: EngineSpec {
                    engine: "dpdk".into(),
                    interface: device.into(),
                    mode: String::new(),
                },
                keep: port,
            });
        Ok(addr)
    }

    /// The DPDK port's counters per DPDK listener.
    pub fn dpdk_counters(&self) -> Vec<(ListenAddr, lightpool_dpdk::PortStats)> {
        let l = self.dpdk.lock().expect("dpdk listeners");
        l.iter()
            .filter_map(|l| Some((l.addr.clone(), l.keep.stats().ok()?)))
            .collect()
    }

    /// The engine of a DPDK listener.
    pub(crate) fn dpdk_engine(&self, addr: &ListenAddr) -> Option<EngineSpec> {
        let l = self.dpdk.lock().expect("dpdk listeners");
        l.iter().find(|l| &l.addr == addr).map(|l| l.spec.clone())
    }
}

/// The port named `name` with one queue pair per reactor, or as many as it has.
fn open_port(eal: &Eal, name: &str, reactors: usize) -> Result<(Port, Vec<Queue>), DpdkError> {
    let mut want = u16::try_from(reactors).unwrap_or(u16::MAX).max(1);
    loop {
        let pool = Mempool::new(
            eal,
            &format!("lp_tcp_{want}"),
            MBUFS_PER_QUEUE * u32::from(want) - 1,
            256,
            2048,
        )?;
        let cfg = PortConfig {
            queues: want,
            ..PortConfig::default()
        };
        match Port::open(eal, name, &cfg, pool) {
            Err(DpdkError::TooManyQueues { max, .. }) if max > 0 && max < want => want = max,
            r => return r,
        }
    }
}

/// The reactor thread as an EAL thread for the process's life (mbufs then go through
/// the mempool's per-lcore cache).
fn register_on_reactor(eal: &Eal) -> std::io::Result<()> {
    let reg = register_thread(eal).map_err(std::io::Error::other)?;
    // The reactor thread lives as long as the process serves this listener.
    std::mem::forget(reg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::eal_device;

    #[test]
    fn devices() {
        let (c, name) = eal_device("net_af_packet0,iface=veth0");
        assert_eq!(name, "net_af_packet0");
        assert_eq!(c.vdevs, ["net_af_packet0,iface=veth0"]);
        assert!(!c.pci);
        let (c, name) = eal_device("0000:3b:00.0");
        assert_eq!(name, "0000:3b:00.0");
        assert!(c.pci && c.vdevs.is_empty());
        assert_eq!(c.extra, ["-a", "0000:3b:00.0"]);
        let (_, name) = eal_device("net_tap0");
        assert_eq!(name, "net_tap0");
    }
}
