//! Runs against NVMe/TCP targets: transport IDs, discovery, controllers and
//! namespaces, one queue pair per (core, queue, namespace), keep-alive from the main
//! thread, orderly shutdown. Everything after discovery is written once over the
//! fabric ([`RunFabric`]): NVMe/RDMA (`crate::rdma`) runs it too.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use lightpool_spec::log::trtype;
use lightpool_spec::nvme::{io_opcode, Sqe};

use crate::engine::{Device, Done, IoQueue, Job, PerfError, QueueSetup, RunOutcome, WorkerSpec};
use crate::initiator::{
    discover, Completion, ConnectOptions, Controller, Dir, DiscoveredSubsystem, Fabric, HostTls,
    InitiatorError, NamespaceInfo, Qpair, QpairConfig,
};
use crate::stats::ErrorKind;
use crate::workload::{split_region, Op, Region};
use lightpool_nvmf::tls::{ConfiguredPsk, Derivation, IdentityVersion, PskHash};

/// A transport ID in spdk_nvme_perf's form:
/// `trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN [ns:N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    pub traddr: String,
    pub trsvcid: u16,
    pub ipv6: bool,
    /// None: ask the discovery controller at this address.
    pub subnqn: Option<String>,
    /// None: every active namespace.
    pub nsid: Option<u32>,
    /// The port is the discovery port because none was given (discovery may then try
    /// the I/O port too).
    pub default_port: bool,
    /// `trtype:rdma` (NVMe/RDMA, in a build with the `rdma` feature).
    pub rdma: bool,
}

impl FromStr for TransportId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut t = TransportId {
            traddr: String::new(),
            trsvcid: lightpool_spec::tcp::DEFAULT_PORT,
            ipv6: false,
            subnqn: None,
            nsid: None,
            default_port: false,
            rdma: false,
        };
        let mut have_svc = false;
        for part in s.split_whitespace() {
            let (k, v) = part
                .split_once(':')
                .ok_or_else(|| format!("transport ID field {part:?} is not KEY:VALUE"))?;
            match k.to_ascii_lowercase().as_str() {
                "trtype" => {
                    t.rdma = v.eq_ignore_ascii_case("rdma");
                    if t.rdma && cfg!(not(feature = "rdma")) {
                        return Err(
                            "trtype:rdma needs a lightpool-perf built with the rdma feature".into(),
                        );
                    }
                    if !t.rdma && !v.eq_ignore_ascii_case("tcp") {
                        return Err(format!(
                            "trtype {v:?} is not supported; use trtype:tcp or trtype:rdma"
                        ));
                    }
                }
                "adrfam" => {
                    t.ipv6 = match v.to_ascii_lowercase().as_str() {
                        "ipv4" => false,
                        "ipv6" => true,
                        _ => return Err(format!("adrfam {v:?}: use ipv4 or ipv6")),
                    }
                }
                "traddr" => t.traddr = v.to_string(),
                "trsvcid" => {
                    t.trsvcid = v
                        .parse()
                        .map_err(|_| format!("trsvcid {v:?} is not a TCP port number"))?;
                    have_svc = true;
                }
                "subnqn" => t.subnqn = Some(v.to_string()),
                "ns" | "nsid" => {
                    t.nsid = Some(
                        v.parse()
                            .ok()
                            .filter(|&n: &u32| n != 0 && n != u32::MAX)
                            .ok_or_else(|| format!("ns {v:?} is not a namespace ID"))?,
                    )
                }
                "hostnqn" => {
                    return Err("give the host NQN with --hostnqn, not in the transport ID".into())
                }
                other => {
                    return Err(format!(
                        "unknown transport ID key {other:?} (known: trtype adrfam traddr trsvcid subnqn ns)"
                    ))
                }
            }
        }
        if t.traddr.is_empty() {
            return Err(format!("transport ID {s:?} has no traddr"));
        }
        if t.subnqn.is_none() && !have_svc {
            t.trsvcid = lightpool_spec::tcp::DISCOVERY_PORT;
            t.default_port = true;
        }
        Ok(t)
    }
}

impl TransportId {
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.traddr.parse::<IpAddr>() {
            if ip.is_ipv6() != self.ipv6 {
                return Err(format!(
                    "traddr {} does not match adrfam:{}",
                    self.traddr,
                    if self.ipv6 { "ipv6" } else { "ipv4" }
                ));
            }
            return Ok(SocketAddr::new(ip, self.trsvcid));
        }
        (self.traddr.as_str(), self.trsvcid)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", self.traddr))?
            .find(|a| a.is_ipv6() == self.ipv6)
            .ok_or_else(|| format!("{} has no address of the asked family", self.traddr))
    }
}

impl fmt::Display for TransportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.traddr, self.trsvcid)?;
        if let Some(n) = &self.subnqn {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

/// How to reach the targets.
#[derive(Clone, Debug)]
pub struct NvmeOptions {
    pub trids: Vec<TransportId>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub hdgst: bool,
    pub ddgst: bool,
    pub kato_ms: u32,
    pub timeout: Duration,
    pub force_r2t: bool,
    pub cores: Vec<Option<usize>>,
    pub qpairs: usize,
    /// LBAs to use (None: the whole namespace).
    pub range: Option<(u64, u64)>,
    pub seed: u64,
    /// NVMe/TCP in TLS 1.3 with the TLS PSK derived from this configured PSK for the
    /// host NQN and each subsystem's NQN (identity version as given).
    pub tls: Option<(ConfiguredPsk, IdentityVersion)>,
    /// With `tls`: kTLS where the kernel has it (`--ktls auto`).
    pub ktls: bool,
}

/// The [`IoQueue`] methods that a queue of NVMe I/O (fields `qp`: its queue pair,
/// `nsid`, `disconnect`: send Disconnect at the end, `timeout`) takes from its queue
/// pair alike on every fabric; `poll` and `describe` are each fabric's.
macro_rules! qpair_io_queue {
    () => {
        fn depth(&self) -> u16 {
            self.qp.depth()
        }

        fn alloc(&mut self) -> Option<u16> {
            self.qp.alloc()
        }

        fn buf(&self, tag: u16) -> &[u8] {
            self.qp.buf(tag)
        }

        fn buf_mut(&mut self, tag: u16) -> &mut [u8] {
            self.qp.buf_mut(tag)
        }

        #[inline]
        fn submit(
            &mut self,
            tag: u16,
            op: $crate::workload::Op,
            lba: u64,
            blocks: u32,
            bytes: u32,
        ) -> Result<(), $crate::engine::PerfError> {
            let (sqe, dir) = $crate::nvme::io_command(op, self.nsid, lba, blocks);
            Ok(self.qp.submit(tag, sqe, dir, bytes)?)
        }

        #[inline]
        fn flush(&mut self) -> Result<(), $crate::engine::PerfError> {
            Ok(self.qp.flush()?)
        }

        fn in_flight(&self) -> usize {
            self.qp.in_flight()
        }

        fn close(self) -> Result<(), $crate::engine::PerfError> {
            Ok(self.qp.disconnect(self.disconnect, self.timeout)?)
        }
    };
}
#[cfg(feature = "rdma")]
pub(crate) use qpair_io_queue;

/// The command of `op` on `blocks` blocks at `lba` of namespace `ns`, and which way
/// its data moves.
#[inline]
pub(crate) fn io_command(op: Op, ns: u32, lba: u64, blocks: u32) -> (Sqe, Dir) {
    let (opcode, dir) = match op {
        Op::Read => (io_opcode::READ, Dir::Read),
        Op::Write => (io_opcode::WRITE, Dir::Write),
    };
    let sqe = Sqe {
        opcode,
        nsid: ns,
        cdw10: lba as u32,
        cdw11: (lba >> 32) as u32,
        cdw12: blocks - 1,
        ..Sqe::default()
    };
    (sqe, dir)
}

/// A queue pair and the namespace its I/O goes to.
pub struct NvmeQueue {
    qp: Qpair,
    nsid: u32,
    comps: Vec<Completion>,
    disconnect: bool,
    timeout: Duration,
}

impl NvmeQueue {
    /// I/O to `nsid` on `qp` (connected, non-blocking); `disconnect`: send the
    /// Disconnect command at the end.
    pub fn new(qp: Qpair, nsid: u32, disconnect: bool, timeout: Duration) -> NvmeQueue {
        NvmeQueue {
            comps: Vec::with_capacity(usize::from(qp.depth())),
            qp,
            nsid,
            disconnect,
            timeout,
        }
    }
}

impl IoQueue for NvmeQueue {
    qpair_io_queue!();

    #[inline]
    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError> {
        self.comps.clear();
        self.qp.poll(&mut self.comps)?;
        out.extend(self.comps.iter().map(|c| Done {
            tag: c.cid,
            error: if c.digest_error {
                Some(ErrorKind::DataDigest)
            } else if c.status.is_success() {
                None
            } else {
                Some(ErrorKind::from_status(c.status))
            },
        }));
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} queue {}", self.qp.peer(), self.qp.qid())
    }

    fn fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.qp.raw_fd())
    }

    fn has_ready(&self) -> bool {
        self.qp.has_ready()
    }
}

/// A connected run, ready to start: NVMe/TCP's by default, `O` another fabric's.
pub struct Prepared<Q = NvmeQueue, O: Fabric = ConnectOptions> {
    pub ctrls: Vec<Controller<O>>,
    pub devices: Vec<Device>,
    pub workers: Vec<WorkerSpec<Q>>,
    pub target: String,
    /// The controllers are paths of one subsystem (`--multipath`): one that stops
    /// answering keep-alive is left, as long as another does.
    pub multipath: bool,
}

/// What a run over a fabric needs beyond its controller ([`Fabric`]): NVMe/TCP's here,
/// NVMe/RDMA's in `crate::rdma`.
pub(crate) trait RunFabric: Fabric<QueueConfig: Copy> + Sized {
    /// The engine's queue over one of the fabric's queue pairs.
    type IoQueue: IoQueue + Send + 'static;

    /// The connect options for subsystem `subnqn` at `addr`.
    fn options(o: &NvmeOptions, addr: SocketAddr, subnqn: String) -> Result<Self, PerfError>;

    /// How each I/O queue pair is sized.
    fn queue_config(job: &Job, o: &NvmeOptions) -> Self::QueueConfig;

    /// The engine's queue over `qp` (connected), I/O to `nsid`; `disconnect`: send the
    /// Disconnect command at the end.
    fn io_queue(
        qp: Self::Queue,
        nsid: u32,
        disconnect: bool,
        timeout: Duration,
    ) -> Result<Self::IoQueue, PerfError>;

    /// Namespace `nsid` of `nqn` at `addr`, as the report names it.
    fn device_name(nqn: &str, nsid: u32, addr: SocketAddr) -> String;

    /// Subsystem `nqn` at `addr`, as the report names it.
    fn target_name(nqn: &str, addr: SocketAddr) -> String;

    /// The discovery log entries of this transport type are the ones to connect to.
    const TRTYPE: u8;

    /// The NVM subsystems the discovery controller at `addr` lists, over this fabric.
    fn discover(o: &NvmeOptions, addr: SocketAddr) -> Result<Vec<DiscoveredSubsystem>, PerfError>;

    /// Whether `e`, from [`RunFabric::discover`], says that nothing listens there.
    fn nothing_listens(e: &PerfError) -> bool;
}

impl RunFabric for ConnectOptions {
    type IoQueue = NvmeQueue;

    fn options(o: &NvmeOptions, addr: SocketAddr, subnqn: String) -> Result<Self, PerfError> {
        conn_opts(o, addr, subnqn)
    }

    fn queue_config(job: &Job, o: &NvmeOptions) -> QpairConfig {
        QpairConfig {
            depth: job.depth,
            buf_len: job.io_size as usize,
            in_capsule_max: 0,
            force_r2t: o.force_r2t,
        }
    }

    fn io_queue(
        mut qp: Qpair,
        nsid: u32,
        disconnect: bool,
        timeout: Duration,
    ) -> Result<NvmeQueue, PerfError> {
        qp.set_nonblocking()?;
        Ok(NvmeQueue::new(qp, nsid, disconnect, timeout))
    }

    fn device_name(nqn: &str, nsid: u32, addr: SocketAddr) -> String {
        format!("{nqn} ns {nsid} ({addr})")
    }

    fn target_name(nqn: &str, addr: SocketAddr) -> String {
        format!("{nqn} at {addr}")
    }

    const TRTYPE: u8 = trtype::TCP;

    fn discover(o: &NvmeOptions, addr: SocketAddr) -> Result<Vec<DiscoveredSubsystem>, PerfError> {
        Ok(discover(conn_opts(o, addr, String::new())?)?)
    }

    fn nothing_listens(e: &PerfError) -> bool {
        matches!(e, PerfError::Initiator(InitiatorError::Connect { source, .. })
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// Resolves discovery, connects every controller and every queue pair.
pub fn prepare(job: &Job, o: &NvmeOptions) -> Result<Prepared, PerfError> {
    let mut targets = Vec::new();
    for t in &o.trids {
        targets_of::<ConnectOptions>(o, t, &mut targets)?;
    }
    prepare_targets(job, o, &targets)
}

/// Adds the targets (address, subsystem, nsid filter) transport ID `t` names to
/// `targets`: its subsystem, or each NVM subsystem the discovery controller at its
/// address lists for fabric `O`.
pub(crate) fn targets_of<O: RunFabric>(
    o: &NvmeOptions,
    t: &TransportId,
    targets: &mut Vec<(SocketAddr, String, Option<u32>)>,
) -> Result<(), PerfError> {
    let addr = t.socket_addr().map_err(PerfError::Setup)?;
    if let Some(n) = &t.subnqn {
        targets.push((addr, n.clone(), t.nsid));
        return Ok(());
    }
    let found = discover_at::<O>(o, addr, t.default_port)?;
    if found.is_empty() {
        return Err(PerfError::Setup(format!(
            "the discovery controller at {addr} lists no NVM subsystem"
        )));
    }
    for e in found {
        eprintln!(
            "lightpool-perf: discovered {} at {}:{}",
            e.subnqn, e.traddr, e.trsvcid
        );
        if e.trtype != O::TRTYPE {
            continue;
        }
        let a = TransportId {
            traddr: e.traddr.clone(),
            trsvcid: e.trsvcid.parse().map_err(|_| {
                PerfError::Setup(format!("discovery entry port {:?} is invalid", e.trsvcid))
            })?,
            ipv6: e.adrfam == lightpool_spec::log::adrfam::IPV6,
            subnqn: Some(e.subnqn.clone()),
            nsid: t.nsid,
            default_port: false,
            rdma: t.rdma,
        };
        targets.push((a.socket_addr().map_err(PerfError::Setup)?, e.subnqn, t.nsid));
    }
    Ok(())
}

/// Connects a controller of fabric `O` to each target (address, subsystem, nsid
/// filter), checks the job against each namespace, and connects every queue pair.
pub(crate) fn prepare_targets<O: RunFabric>(
    job: &Job,
    o: &NvmeOptions,
    targets: &[(SocketAddr, String, Option<u32>)],
) -> Result<Prepared<O::IoQueue, O>, PerfError> {
    let mut ctrls = Vec::new();
    let mut devices = Vec::new();
    // Per device: which controller.
    let mut dev_ctrl = Vec::new();
    for (addr, nqn, nsid) in targets {
        let mut c = Controller::connect(O::options(o, *addr, nqn.clone())?)?;
        let nss = match nsid {
            Some(n) => vec![c.identify_namespace(*n).map_err(|e| match e {
                e @ InitiatorError::NoNamespace { .. } => PerfError::Invalid(e.to_string()),
                e => e.into(),
            })?],
            None => c.namespaces()?,
        };
        if nss.is_empty() {
            return Err(PerfError::Setup(format!(
                "{addr}: subsystem {nqn} has no active namespace"
            )));
        }
        for ns in nss {
            let range = check_device(job, o, &c, ns)?;
            devices.push(Device {
                name: O::device_name(nqn, ns.nsid, *addr),
                block_size: ns.block_size,
                range,
            });
            dev_ctrl.push((ctrls.len(), ns.nsid));
        }
        ctrls.push(c);
    }

    let nq = o.cores.len() * o.qpairs;
    for (i, c) in ctrls.iter_mut().enumerate() {
        let per_ctrl = dev_ctrl.iter().filter(|(ci, _)| *ci == i).count();
        let want = u16::try_from(nq * per_ctrl).map_err(|_| {
            PerfError::Invalid(format!("{nq} queue pairs per namespace is too many"))
        })?;
        let got = c.request_io_queues(want)?;
        if got < want {
            return Err(PerfError::Invalid(format!(
                "{}: the controller grants {got} I/O queues but {want} are needed ({} core(s) x {} queue pair(s) x {per_ctrl} namespace(s))",
                c.addr(), o.cores.len(), o.qpairs
            )));
        }
    }

    let regions = regions_for(job, &devices, nq)?;

    let cfg = O::queue_config(job, o);
    let mut workers = Vec::new();
    for (ci, core) in o.cores.iter().enumerate() {
        let mut setups = Vec::new();
        for qi in 0..o.qpairs {
            let g = ci * o.qpairs + qi;
            for (di, (cidx, nsid)) in dev_ctrl.iter().enumerate() {
                let c = &mut ctrls[*cidx];
                let qp = c.connect_io_queue(job.depth + 1, cfg)?;
                let disconnect = c.info.disconnect_supported;
                setups.push(QueueSetup {
                    queue: O::io_queue(qp, *nsid, disconnect, o.timeout)?,
                    device: di,
                    region: regions[di][g],
                    seed: o.seed ^ ((di as u64) << 40) ^ (g as u64).wrapping_mul(0x9E37_79B9),
                });
            }
        }
        workers.push(WorkerSpec {
            core: *core,
            build: Box::new(move || Ok(setups)),
        });
    }
    let target = targets
        .iter()
        .map(|(a, n, _)| O::target_name(n, *a))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Prepared {
        ctrls,
        devices,
        workers,
        target,
        multipath: false,
    })
}

/// Per device, each queue's region: verify and sequential runs give each queue its
/// own share.
pub(crate) fn regions_for(
    job: &Job,
    devices: &[Device],
    nq: usize,
) -> Result<Vec<Vec<Region>>, PerfError> {
    let random = job.workload.random();
    let mut regions: Vec<Vec<Region>> = Vec::new();
    for d in devices {
        let io_blocks = job.io_size / d.block_size;
        regions.push(if job.verify || !random {
            split_region(d.range, io_blocks, nq).ok_or_else(|| {
                PerfError::Invalid(format!(
                    "{}: the range of {} blocks holds fewer {}-byte I/Os than the {nq} queue(s) that share it",
                    d.name, d.range.blocks, job.io_size
                ))
            })?
        } else {
            vec![d.range; nq]
        });
    }
    Ok(regions)
}

pub(crate) fn conn_opts(
    o: &NvmeOptions,
    addr: SocketAddr,
    subnqn: String,
) -> Result<ConnectOptions, PerfError> {
    let tls = match &o.tls {
        None => None,
        Some((key, v)) => {
            // Discovery (no subsystem named) is the discovery subsystem's.
            let nqn = if subnqn.is_empty() {
                lightpool_spec::fabrics::DISCOVERY_NQN
            } else {
                subnqn.as_str()
            };
            let p = key
                .tls_psk(&o.hostnqn, nqn, *v, Derivation::Standard)
                .map_err(|e| PerfError::Invalid(format!("--tls-key: {e}")))?;
            Some(HostTls {
                identity: p.identity.clone(),
                key: p.key.to_vec(),
                sha384: p.hash == PskHash::Sha384,
            })
        }
    };
    Ok(ConnectOptions {
        addr,
        subnqn,
        hostnqn: o.hostnqn.clone(),
        hostid: o.hostid,
        hdgst: o.hdgst,
        ddgst: o.ddgst,
        kato_ms: o.kato_ms,
        timeout: o.timeout,
        tls,
        ktls: o.ktls,
    })
}

/// Checks the job against the controller's limits and the namespace; returns the
/// LBA range to use.
pub(crate) fn check_device<O: Fabric>(
    job: &Job,
    o: &NvmeOptions,
    c: &Controller<O>,
    ns: NamespaceInfo,
) -> Result<Region, PerfError> {
    let bad = |m: String| {
        Err(PerfError::Invalid(format!(
            "{}: namespace {}: {m}",
            c.addr(),
            ns.nsid
        )))
    };
    if !job.io_size.is_multiple_of(ns.block_size) {
        return bad(format!(
            "the I/O size {} is not a multiple of the {}-byte block size",
            job.io_size, ns.block_size
        ));
    }
    if job.io_size / ns.block_size > 65536 {
        return bad(format!(
            "the I/O size {} is more than 65536 blocks",
            job.io_size
        ));
    }
    if let Some(m) = c.info.max_transfer {
        if job.io_size > m {
            return bad(format!(
                "the I/O size {} exceeds the controller's maximum transfer of {m} bytes (MDTS)",
                job.io_size
            ));
        }
    }
    let entries = u32::from(job.depth) + 1;
    if entries > c.info.max_queue_entries {
        return bad(format!(
            "queue depth {} needs {entries} queue entries but the controller allows {} (use -q {} or less)",
            job.depth,
            c.info.max_queue_entries,
            c.info.max_queue_entries - 1
        ));
    }
    let (start, end) = o.range.unwrap_or((0, ns.num_blocks));
    if start >= end || end > ns.num_blocks {
        return bad(format!(
            "--range {start}:{end} does not fit the namespace's {} blocks",
            ns.num_blocks
        ));
    }
    if end - start < u64::from(job.io_size / ns.block_size) {
        return bad(format!(
            "--range {start}:{end} is smaller than one {}-byte I/O",
            job.io_size
        ));
    }
    Ok(Region {
        start_lba: start,
        blocks: end - start,
    })
}

/// The discovery log at `addr`, over fabric `O`. Nothing listening there, on the
/// discovery port taken because none was given: try the I/O port (4420) of the same
/// address, where lightpool-target (and Linux nvmet) serve discovery as well, and say
/// so.
fn discover_at<O: RunFabric>(
    o: &NvmeOptions,
    addr: SocketAddr,
    default_port: bool,
) -> Result<Vec<DiscoveredSubsystem>, PerfError> {
    match O::discover(o, addr) {
        Err(e) if default_port && O::nothing_listens(&e) => {
            let io = SocketAddr::new(addr.ip(), lightpool_spec::tcp::DEFAULT_PORT);
            eprintln!(
                "lightpool-perf: nothing listens on {addr} (the discovery port, taken because the transport ID gives no trsvcid); asking {io}, the I/O port, where lightpool-target serves discovery too"
            );
            O::discover(o, io).map_err(|e| {
                PerfError::Setup(format!(
                    "no discovery controller at {addr} (nothing listens there) nor at {io} ({e}): give the target's port with trsvcid:PORT"
                ))
            })
        }
        r => r,
    }
}

/// Runs a prepared job: keep-alive on every controller while it runs, then an orderly
/// shutdown.
pub fn run<Q: IoQueue + 'static, O: Fabric>(
    job: &Job,
    p: Prepared<Q, O>,
) -> Result<(RunOutcome, Vec<Device>), PerfError> {
    let Prepared {
        mut ctrls,
        devices,
        workers,
        multipath,
        ..
    } = p;
    // Multipath: the controllers that stopped answering (a path gone).
    let mut gone = vec![false; ctrls.len()];
    let mut ka = || -> Result<(), PerfError> {
        for (i, c) in ctrls.iter_mut().enumerate() {
            match c.keep_alive_if_due() {
                Ok(()) => {}
                Err(e) if multipath && !gone[i] && gone.iter().filter(|g| !**g).count() > 1 => {
                    eprintln!("lightpool-perf: the path at {} is gone: {e}", c.addr());
                    gone[i] = true;
                }
                Err(_) if gone[i] => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    };
    let mut out = crate::engine::run(job, &devices, workers, &mut ka)?;
    for (c, gone) in ctrls.into_iter().zip(gone) {
        let addr = c.addr();
        if let Err(e) = c.shutdown() {
            if out.error.is_none() && !gone && !matches!(e, InitiatorError::Closed { .. }) {
                out.error = Some(format!("shutting down the controller at {addr}: {e}"));
            }
        }
    }
    Ok((out, devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_style_transport_ids() {
        let t: TransportId =
            "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.x:y ns:2"
                .parse()
                .expect("valid");
        assert_eq!(t.subnqn.as_deref(), Some("nqn.x:y"));
        assert_eq!(t.nsid, Some(2));
        assert_eq!(t.socket_addr(), Ok("127.0.0.1:4420".parse().expect("addr")));
        let d: TransportId = "trtype:TCP traddr:10.0.0.1".parse().expect("valid");
        assert_eq!(d.trsvcid, 8009, "discovery defaults to the discovery port");
        assert!(d.default_port);
        assert!(!t.default_port);
        let rdma = "trtype:rdma traddr:1.2.3.4 subnqn:a".parse::<TransportId>();
        assert_eq!(rdma.is_ok(), cfg!(feature = "rdma"), "{rdma:?}");
        assert!(rdma.is_err() || rdma.is_ok_and(|t| t.rdma && t.trsvcid == 4420));
        assert!("trtype:fc traddr:1.2.3.4".parse::<TransportId>().is_err());
        assert!("traddr:1.2.3.4 bogus:1".parse::<TransportId>().is_err());
        assert!("trtype:tcp".parse::<TransportId>().is_err());
        assert!("traddr 1.2.3.4".parse::<TransportId>().is_err());
        let six: TransportId = "adrfam:ipv6 traddr:::1 trsvcid:4420 subnqn:a"
            .parse()
            .expect("valid");
        assert_eq!(six.socket_addr(), Ok("[::1]:4420".parse().expect("addr")));
    }
}
