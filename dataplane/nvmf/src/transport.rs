//! The transport seam. Transports depend on this crate, never the reverse (as SPDK's
//! nvmf_transport.h): they frame capsules, this crate executes them through
//! [`crate::NvmfQueue`]. A transport implements [`Transport`] (listen, list
//! connections, hand over) and a [`TransportKind`] makes and adopts it; the daemon wires
//! the kinds it links by the name configuration gives.

pub use crate::listener::{ListenAddr, ListenerInfo};

/// Errors of a transport's control operations (never the I/O path).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport {0:?} is not built into this binary (known: {1})")]
    Unknown(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl TransportError {
    /// Wraps a transport's own error.
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Other(Box::new(e))
    }
}

/// One connection (one queue pair) as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    /// The transport's name ("tcp").
    pub transport: String,
    /// The host's address as the transport shows it.
    pub peer: String,
    /// The target's address the connection came in on.
    pub local: String,
    /// The reactor that owns the connection.
    pub reactor: usize,
    /// Queue ID once connected (0: admin).
    pub qid: u16,
    /// Controller, host and subsystem once the queue is connected.
    pub cntlid: Option<u16>,
    pub hostnqn: Option<String>,
    pub subnqn: Option<String>,
    /// Who carries the TLS records: "off" (plain NVMe/TCP, or a transport without
    /// TLS), "kernel" (kTLS) or "software" (OpenSSL on the reactor).
    #[serde(default)]
    pub tls: String,
    /// The host authenticated in-band (DH-HMAC-CHAP) on this queue.
    #[serde(default)]
    pub authenticated: bool,
    /// The packet engine that carries it: "kernel" (kernel sockets), "af_xdp" or
    /// "dpdk"; empty for a transport without packet engines (RDMA).
    #[serde(default)]
    pub engine: String,
}

impl ConnectionInfo {
    /// A connection of `transport` whose queue is `q`, on `reactor`: what the queue
    /// knows (QID, controller, host, subsystem, authentication) filled in; TLS "off"
    /// and no engine, for the caller to change where they differ.
    pub fn of_queue<T: Default>(
        transport: &str,
        q: &crate::NvmfQueue<T>,
        reactor: usize,
        peer: String,
        local: String,
    ) -> ConnectionInfo {
        let c = q.controller();
        ConnectionInfo {
            transport: transport.to_string(),
            peer,
            local,
            reactor,
            qid: q.qid(),
            cntlid: c.map(|c| c.cntlid),
            hostnqn: c.map(|c| c.hostnqn.clone()),
            subnqn: c.map(|c| c.subsys.nqn.clone()),
            tls: "off".to_string(),
            authenticated: q.is_authenticated(),
            engine: String::new(),
        }
    }
}

/// What a transport hands to a successor in a hot upgrade: its state, encoded by
/// itself, and its descriptors (listeners, connections), which its state indexes from
/// the `fd_base` it was given.
#[derive(Debug)]
pub struct TransportExport {
    pub state: Vec<u8>,
    pub fds: Vec<std::os::fd::OwnedFd>,
    /// Listeners and connections exported, and commands that travel held or half
    /// received: for the operator's report.
    pub listeners: usize,
    pub connections: usize,
    pub commands: usize,
}

/// What a successor took over from a transport's export.
#[derive(Debug, Default, Clone)]
pub struct Adopted {
    pub listeners: usize,
    pub connections: usize,
    pub commands: usize,
    /// The state-region queue records its connections now own (the rest are swept).
    pub queue_records: Vec<u32>,
}

/// A transport as the target's control side drives it: listening, listing connections
/// and hot upgrade. The I/O path is not here: a transport registers its own pollers on
/// the reactors it runs on, and each connection drives its [`crate::NvmfQueue`]
/// (capsules in, responses and data out) on the reactor that owns it; the core never
/// calls a transport while serving. So a socket transport, RDMA completion queues or a
/// DPDK port each poll in their own way, and each connection stays on one reactor for
/// its whole life.
/// A listener's kernel-bypass packet engine, as configuration names it: `engine`
/// (e.g. "af_xdp"), the network interface it takes over, and the engine's mode
/// (for AF_XDP the XDP attach mode, "native" or "generic").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSpec {
    pub engine: String,
    pub interface: String,
    pub mode: String,
}

pub trait Transport: Send + Sync {
    /// The name configuration uses (`transport = "tcp"`).
    fn name(&self) -> &'static str;
    /// Listen on `addr` (the transport's address syntax, e.g. `IP:PORT`) and add the
    /// listener to the discovery log; returns the address bound.
    fn add_listener(&self, addr: &str) -> Result<ListenAddr, TransportError>;
    /// As [`Transport::add_listener`], with NVMe/TCP TLS required, optional or off
    /// ([`crate::tls::Secure`]). A transport without TLS refuses anything but off.
    fn add_secure_listener(
        &self,
        addr: &str,
        secure: crate::tls::Secure,
    ) -> Result<ListenAddr, TransportError> {
        if secure != crate::tls::Secure::None {
            return Err(TransportError::Invalid(format!(
                "transport {} has no TLS in this build: secure = \"{}\" cannot be served",
                self.name(),
                secure.name()
            )));
        }
        self.add_listener(addr)
    }
    /// As [`Transport::add_secure_listener`], with where the TLS connections keep
    /// their record layer ([`crate::tls::Ktls`]). A transport whose records are not
    /// in a kernel ignores it.
    fn add_tls_listener(
        &self,
        addr: &str,
        secure: crate::tls::Secure,
        ktls: crate::tls::Ktls,
    ) -> Result<ListenAddr, TransportError> {
        let _ = ktls;
        self.add_secure_listener(addr, secure)
    }
    /// Listen on `addr` through a kernel-bypass packet engine instead of the kernel's
    /// sockets ([`EngineSpec`]). A transport without one refuses.
    fn add_engine_listener(
        &self,
        addr: &str,
        engine: &EngineSpec,
    ) -> Result<ListenAddr, TransportError> {
        let _ = addr;
        Err(TransportError::Invalid(format!(
            "transport {} cannot serve through engine {:?}",
            self.name(),
            engine.engine
        )))
    }
    /// The packet engine a listener serves through, where it is not the kernel's
    /// sockets (so that a saved configuration keeps it).
    fn listener_engine(&self, addr: &ListenAddr) -> Option<EngineSpec> {
        let _ = addr;
        None
    }
    /// Stop listening on `addr` (as [`Transport::add_listener`] returned it): the
    /// listener leaves the discovery log and the state region, and the connections
    /// that came in through it close.
    fn remove_listener(&self, addr: &ListenAddr) -> Result<(), TransportError>;
    /// Every connection, asked of the reactors that own them.
    fn connections(&self) -> Result<Vec<ConnectionInfo>, TransportError>;
    /// Who did the offloadable per-PDU work (digests, placement, steering) and what the
    /// packet engines moved, from counters the reactors publish (no reactor is asked:
    /// the metrics thread calls this at each scrape). Nothing by default.
    fn offload(&self) -> crate::OffloadReport {
        crate::OffloadReport::default()
    }
    /// Close one connection, named as [`Transport::connections`] lists it (its reactor
    /// and peer); its controller fails if it was the admin queue. `false` when there is
    /// no such connection.
    fn disconnect(&self, reactor: usize, peer: &str) -> Result<bool, TransportError>;
    /// Hot upgrade, old process: stop accepting connections and starting commands, and
    /// as soon as everything running has finished, freeze and export. `None` when
    /// something did not drain within `timeout` (then it serves on as before).
    fn quiesce_and_export(
        &self,
        fd_base: usize,
        timeout: std::time::Duration,
    ) -> Result<Option<TransportExport>, TransportError>;
    /// The handover failed (old process), or the predecessor let go (new process):
    /// serve (again).
    fn resume(&self) -> Result<(), TransportError>;
}

/// Everything a transport is built over.
#[derive(Clone)]
pub struct TransportContext {
    pub target: std::sync::Arc<crate::Target>,
    /// The reactors it may run connections on (and the first runs its listeners).
    pub reactors: Vec<lightpool_reactor::ReactorHandle>,
}

/// How the daemon makes transports of one kind, and rebuilds them in a successor: one
/// per transport the binary links, chosen by the name configuration gives.
pub trait TransportKind: Send + Sync {
    fn name(&self) -> &'static str;
    /// The discovery log's transport type of its listeners (recovery finds a listener's
    /// transport by it).
    fn trtype(&self) -> u8;
    fn create(
        &self,
        ctx: TransportContext,
    ) -> Result<std::sync::Arc<dyn Transport>, TransportError>;
    /// Hot upgrade, new process: rebuild a transport from what its predecessor's
    /// [`Transport::quiesce_and_export`] produced, connections attached to their queue
    /// records in `region`; it stays frozen until [`Transport::resume`]. `fds` is the
    /// descriptor list that came with the state (taken as used).
    fn adopt(
        &self,
        ctx: TransportContext,
        region: std::sync::Arc<crate::region::Region>,
        image: std::sync::Arc<crate::restore::RegionImage>,
        state: &[u8],
        fds: &mut [Option<std::os::fd::OwnedFd>],
    ) -> Result<(std::sync::Arc<dyn Transport>, Adopted), TransportError>;
}

/// The transport kinds a binary links, by name.
#[derive(Default)]
pub struct TransportKinds {
    kinds: Vec<Box<dyn TransportKind>>,
}

impl TransportKinds {
    pub fn new() -> TransportKinds {
        TransportKinds::default()
    }

    pub fn register(&mut self, k: Box<dyn TransportKind>) -> &mut Self {
        self.kinds.push(k);
        self
    }

    /// The kind whose listeners have transport type `trtype`.
    pub fn by_trtype(&self, trtype: u8) -> Option<&dyn TransportKind> {
        self.kinds
            .iter()
            .find(|k| k.trtype() == trtype)
            .map(|k| k.as_ref())
    }

    pub fn get(&self, name: &str) -> Result<&dyn TransportKind, TransportError> {
        self.kinds
            .iter()
            .find(|k| k.name() == name)
            .map(|k| k.as_ref())
            .ok_or_else(|| {
                TransportError::Unknown(
                    name.to_string(),
                    self.kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })
    }
}
