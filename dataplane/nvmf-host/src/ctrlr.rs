//! The controller a host builds on its admin queue: Connect, enable through the
//! property registers, Identify, number of queues, keep-alive, I/O queue pairs,
//! discovery, and orderly shutdown. Written once for every fabric ([`Fabric`]):
//! NVMe/TCP's [`Controller`] is the default, NVMe/RDMA's is
//! `lightpool-nvmf-host-rdma`'s `RdmaController`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lightpool_spec::fabrics::{PropertyCommand, CNTLID_DYNAMIC, DISCOVERY_NQN};
use lightpool_spec::features::fid;
use lightpool_spec::identify::{
    ascii_trimmed, cns, ns_offset, ofcs, parse_ns_list, IdentifyCommand, IdentifyController,
    IDENTIFY_DATA_SIZE,
};
use lightpool_spec::log::{
    discovery_log_entry, lid, subtype, DiscoveryLogHeader, GetLogPage, DISCOVERY_LOG_ENTRY_SIZE,
    DISCOVERY_LOG_HEADER_SIZE,
};
use lightpool_spec::nvme::{admin_opcode, csts, reg, Cap, Sqe};

use super::fabric::{AdminCommand, AdminQueue, ConnectRequest, Fabric};
use super::qpair::Dir;
use super::InitiatorError;

/// Admin queue entries we ask for.
const ADMIN_ENTRIES: u16 = 32;
/// Admin commands carry at most this much data (Identify, one log page window).
const ADMIN_BUF: usize = 4096;
/// CC for enable: EN, NVM command set, 4 KiB pages, round robin, 64-byte SQEs,
/// 16-byte CQEs.
const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
/// CC.SHN = normal shutdown (bits 15:14).
const CC_SHN_NORMAL: u32 = 1 << 14;

/// How to reach and identify ourselves to a subsystem.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub hdgst: bool,
    pub ddgst: bool,
    /// Keep-alive timeout asked for at Connect, milliseconds (0: none).
    pub kato_ms: u32,
    /// Limit for connecting and for each admin command.
    pub timeout: Duration,
    /// NVMe/TCP in TLS 1.3 with this PSK (every queue); `None`: plain.
    pub tls: Option<crate::HostTls>,
    /// With `tls`: hand each queue's records to the kernel (kTLS) after the
    /// handshake where the kernel has it (`true`, "auto"), or keep them in software.
    pub ktls: bool,
}

/// What Identify Controller and the registers told us.
#[derive(Clone, Debug)]
pub struct ControllerInfo {
    pub cntlid: u16,
    pub subnqn: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
    /// NVMe version (VS register).
    pub version: u32,
    /// Largest transfer of one command in bytes; `None`: no limit.
    pub max_transfer: Option<u32>,
    /// Largest write carried in the capsule on I/O queues.
    pub in_capsule_max: u32,
    /// Most entries an I/O queue may have (CAP.MQES + 1).
    pub max_queue_entries: u32,
    /// The controller takes the Disconnect command.
    pub disconnect_supported: bool,
}

/// A namespace as Identify Namespace describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
}

/// One record of a discovery log page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredSubsystem {
    pub subnqn: String,
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub traddr: String,
    pub trsvcid: String,
    /// Transport requirements (TREQ): bits 1:0 say whether a secure channel is
    /// required (1), not required (2) or not specified (0).
    pub treq: u8,
    /// NVMe/TCP security type (TSAS SECTYPE): 0 none, 2 TLS 1.3.
    pub sectype: u8,
}

/// A live controller: its admin queue and what it told us. `O`: the fabric's connect
/// options (NVMe/TCP's by default).
pub struct Controller<O: Fabric = ConnectOptions> {
    admin: O::Queue,
    pub opts: O,
    pub info: ControllerInfo,
    cap: Cap,
    next_qid: u16,
    max_qid: u16,
    last_keep_alive: Instant,
}

impl<O: Fabric> Controller<O> {
    /// Connects the admin queue, enables the controller and identifies it.
    pub fn connect(opts: O) -> Result<Controller<O>, InitiatorError> {
        let t = opts.target();
        let req = ConnectRequest {
            qid: 0,
            entries: ADMIN_ENTRIES,
            kato_ms: t.kato_ms,
            cntlid: CNTLID_DYNAMIC,
            subnqn: t.subnqn,
            hostnqn: t.hostnqn,
            hostid: t.hostid,
        };
        let (admin, cntlid) = opts.connect_queue(&req, O::admin_config(ADMIN_BUF))?;
        let subnqn = t.subnqn.to_string();
        let mut c = Controller {
            admin,
            info: ControllerInfo {
                cntlid,
                subnqn,
                model: String::new(),
                serial: String::new(),
                firmware: String::new(),
                version: 0,
                max_transfer: None,
                in_capsule_max: 0,
                max_queue_entries: 2,
                disconnect_supported: false,
            },
            opts,
            cap: Cap::default(),
            next_qid: 1,
            max_qid: u16::MAX,
            last_keep_alive: Instant::now(),
        };
        c.cap = Cap::from_u64(c.prop_get(reg::CAP, true, "Property Get CAP")?);
        c.info.version = c.prop_get(reg::VS, false, "Property Get VS")? as u32;
        c.prop_set(reg::CC, u64::from(CC_ENABLE), "Property Set CC (enable)")?;
        let ready_within = Duration::from_millis(500 * u64::from(c.cap.to).max(2));
        c.wait_csts(ready_within, "the controller to become ready", |v| {
            v & csts::RDY != 0
        })?;
        let id = c.identify_controller()?;
        let page = 1u64 << (12 + u32::from(c.cap.mpsmin));
        c.info.model = ascii_trimmed(&id.mn).to_string();
        c.info.serial = ascii_trimmed(&id.sn).to_string();
        c.info.firmware = ascii_trimmed(&id.fr).to_string();
        c.info.max_transfer =
            (id.mdts != 0).then(|| u32::try_from(page << id.mdts).unwrap_or(u32::MAX));
        c.info.in_capsule_max = if id.icdoff == 0 {
            (id.ioccsz * 16).saturating_sub(64)
        } else {
            0
        };
        let mut entries = u32::from(c.cap.mqes) + 1;
        if id.maxcmd != 0 {
            entries = entries.min(u32::from(id.maxcmd));
        }
        c.info.max_queue_entries = entries;
        c.info.disconnect_supported = id.ofcs & ofcs::DISCONNECT != 0;
        if !id.subnqn.iter().all(|&b| b == 0) {
            c.info.subnqn = lightpool_spec::fabrics::ConnectData {
                subnqn: id.subnqn,
                ..Default::default()
            }
            .subnqn_str()
            .to_string();
        }
        Ok(c)
    }

    pub fn addr(&self) -> SocketAddr {
        self.opts.target().addr
    }

    fn timeout(&self) -> Duration {
        self.opts.target().timeout
    }

    fn prop_get(&mut self, offset: u32, size8: bool, what: &str) -> Result<u64, InitiatorError> {
        let sqe = PropertyCommand {
            size8,
            offset,
            value: 0,
        }
        .to_get_sqe(0);
        let c = self.admin_cmd(sqe, Dir::None, 0, what)?;
        Ok(u64::from(c.dw0) | (u64::from(c.dw1) << 32))
    }

    fn prop_set(&mut self, offset: u32, value: u64, what: &str) -> Result<(), InitiatorError> {
        let sqe = PropertyCommand {
            size8: false,
            offset,
            value,
        }
        .to_set_sqe(0);
        self.admin_cmd(sqe, Dir::None, 0, what).map(|_| ())
    }

    fn wait_csts(
        &mut self,
        within: Duration,
        what: &str,
        done: impl Fn(u32) -> bool,
    ) -> Result<(), InitiatorError> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.prop_get(reg::CSTS, false, "Property Get CSTS")? as u32;
            if v & csts::CFS != 0 {
                return Err(InitiatorError::Unsupported(format!(
                    "{}: the controller reports a fatal status (CSTS {v:#x})",
                    self.addr()
                )));
            }
            if done(v) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(InitiatorError::Timeout {
                    addr: self.addr(),
                    what: what.to_string(),
                    timeout: within,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One admin command, waited for; fails on a non-success status.
    fn admin_cmd(
        &mut self,
        sqe: Sqe,
        dir: Dir,
        len: u32,
        what: &str,
    ) -> Result<super::Completion, InitiatorError> {
        let c = self.admin.exec(AdminCommand {
            sqe,
            dir,
            len,
            timeout: self.timeout(),
            what,
        })?;
        if !c.status.is_success() {
            return Err(InitiatorError::Command {
                addr: self.addr(),
                what: what.to_string(),
                status: c.status,
            });
        }
        Ok(c)
    }

    /// Identify (4096 bytes) with `cmd`; returns the data.
    fn identify(
        &mut self,
        cmd: IdentifyCommand,
        what: &str,
    ) -> Result<[u8; IDENTIFY_DATA_SIZE], InitiatorError> {
        let c = self.admin_cmd(cmd.to_sqe(0), Dir::Read, IDENTIFY_DATA_SIZE as u32, what)?;
        let mut b = [0u8; IDENTIFY_DATA_SIZE];
        b.copy_from_slice(&self.admin.data(c.cid)[..IDENTIFY_DATA_SIZE]);
        Ok(b)
    }

    fn identify_controller(&mut self) -> Result<IdentifyController, InitiatorError> {
        let b = self.identify(
            IdentifyCommand {
                cns: cns::CONTROLLER,
                ..Default::default()
            },
            "Identify Controller",
        )?;
        Ok(IdentifyController::parse(&b))
    }

    /// Identify Namespace for `nsid`, block size from the format FLBAS selects.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<NamespaceInfo, InitiatorError> {
        let b = self.identify(
            IdentifyCommand {
                nsid,
                cns: cns::NAMESPACE,
                ..Default::default()
            },
            &format!("Identify Namespace {nsid}"),
        )?;
        let nsze = u64::from_le_bytes(
            b[ns_offset::NSZE..ns_offset::NSZE + 8]
                .try_into()
                .expect("8 bytes"),
        );
        let nlbaf = b[ns_offset::NLBAF];
        let flbas = b[ns_offset::FLBAS];
        let mut idx = usize::from(flbas & 0xF);
        if nlbaf >= 16 {
            idx |= usize::from((flbas >> 5) & 0x3) << 4;
        }
        // Each LBA format is 4 bytes; LBADS is its third byte.
        let lbads = b[ns_offset::LBAF0 + 4 * idx + 2];
        if nsze == 0 {
            // Identify Namespace of an inactive NSID returns zeroes: no such namespace.
            return Err(InitiatorError::NoNamespace {
                addr: self.addr(),
                subnqn: self.opts.target().subnqn.to_string(),
                nsid,
                active: self.active_nsids().unwrap_or_default(),
            });
        }
        if !(9..=16).contains(&lbads) {
            return Err(InitiatorError::Unsupported(format!(
                "{}: namespace {nsid} is not usable (size {nsze} blocks, block size 2^{lbads})",
                self.addr()
            )));
        }
        Ok(NamespaceInfo {
            nsid,
            block_size: 1 << lbads,
            num_blocks: nsze,
        })
    }

    /// Every active namespace.
    pub fn namespaces(&mut self) -> Result<Vec<NamespaceInfo>, InitiatorError> {
        self.active_nsids()?
            .into_iter()
            .map(|nsid| self.identify_namespace(nsid))
            .collect()
    }

    /// The active namespace IDs (Identify Active Namespace List).
    fn active_nsids(&mut self) -> Result<Vec<u32>, InitiatorError> {
        let b = self.identify(
            IdentifyCommand {
                nsid: 0,
                cns: cns::ACTIVE_NS_LIST,
                ..Default::default()
            },
            "Identify Active Namespace List",
        )?;
        Ok(parse_ns_list(&b).collect())
    }

    /// Asks for `n` I/O queues (Set Features Number of Queues); returns how many the
    /// controller grants. Controllers that do not implement the feature get `n`.
    pub fn request_io_queues(&mut self, n: u16) -> Result<u16, InitiatorError> {
        let want = u32::from(n.max(1) - 1);
        let sqe = Sqe {
            opcode: admin_opcode::SET_FEATURES,
            cdw10: u32::from(fid::NUMBER_OF_QUEUES),
            cdw11: want | (want << 16),
            ..Sqe::default()
        };
        let c = self.admin.exec(AdminCommand {
            sqe,
            dir: Dir::None,
            len: 0,
            timeout: self.timeout(),
            what: "Set Features (queues)",
        })?;
        let granted = if c.status.is_success() {
            let nsqa = (c.dw0 & 0xFFFF) as u16;
            let ncqa = (c.dw0 >> 16) as u16;
            nsqa.min(ncqa).saturating_add(1).min(n)
        } else {
            n
        };
        self.max_qid = granted;
        Ok(granted)
    }

    /// Connects the next I/O queue with `entries` entries (one more than the commands
    /// it will carry at once) and data buffers as `cfg` says.
    pub fn connect_io_queue(
        &mut self,
        entries: u16,
        cfg: O::QueueConfig,
    ) -> Result<O::Queue, InitiatorError> {
        let qid = self.next_qid;
        let q = self.connect_io_queue_at(qid, entries, cfg)?;
        self.next_qid += 1;
        Ok(q)
    }

    /// Connects I/O queue `qid` (one the caller knows to be free: never connected, or
    /// its connection closed) with `entries` entries, buffers as `cfg` says.
    pub fn connect_io_queue_at(
        &mut self,
        qid: u16,
        entries: u16,
        cfg: O::QueueConfig,
    ) -> Result<O::Queue, InitiatorError> {
        let t = self.opts.target();
        if qid == 0 || qid > self.max_qid {
            return Err(InitiatorError::Unsupported(format!(
                "{}: the controller grants only {} I/O queues",
                t.addr, self.max_qid
            )));
        }
        let req = ConnectRequest {
            qid,
            entries,
            kato_ms: 0,
            cntlid: self.info.cntlid,
            subnqn: t.subnqn,
            hostnqn: t.hostnqn,
            hostid: t.hostid,
        };
        let cfg = O::io_config(cfg, self.info.in_capsule_max);
        Ok(self.opts.connect_queue(&req, cfg)?.0)
    }

    /// How often to send Keep Alive (half the timeout), if at all.
    pub fn keep_alive_interval(&self) -> Option<Duration> {
        let kato_ms = self.opts.target().kato_ms;
        (kato_ms > 0).then(|| Duration::from_millis(u64::from(kato_ms) / 2))
    }

    /// Sends Keep Alive when half the timeout has passed since the last one.
    pub fn keep_alive_if_due(&mut self) -> Result<(), InitiatorError> {
        if let Some(every) = self.keep_alive_interval() {
            if self.last_keep_alive.elapsed() >= every {
                self.keep_alive()?;
            }
        }
        Ok(())
    }

    pub fn keep_alive(&mut self) -> Result<(), InitiatorError> {
        let sqe = Sqe {
            opcode: admin_opcode::KEEP_ALIVE,
            ..Sqe::default()
        };
        self.admin_cmd(sqe, Dir::None, 0, "Keep Alive")?;
        self.last_keep_alive = Instant::now();
        Ok(())
    }

    /// Normal shutdown (CC.SHN), waited for, then the admin connection closes.
    pub fn shutdown(mut self) -> Result<(), InitiatorError> {
        self.prop_set(
            reg::CC,
            u64::from(CC_ENABLE | CC_SHN_NORMAL),
            "Property Set CC (shutdown)",
        )?;
        let within = self.timeout();
        self.wait_csts(within, "the controller to shut down", |v| {
            v & csts::SHST_MASK == csts::SHST_COMPLETE
        })?;
        self.admin.close(false, within)
    }
}

impl<O: Fabric> Controller<O> {
    /// Reads the whole discovery log page (retrying while its generation changes).
    pub fn discovery_log(&mut self) -> Result<Vec<DiscoveredSubsystem>, InitiatorError> {
        for _ in 0..3 {
            let first = self.log_window(0)?;
            let hdr = DiscoveryLogHeader::parse(&first).map_err(|e| {
                InitiatorError::Unsupported(format!("{}: discovery log: {e}", self.addr()))
            })?;
            let n = usize::try_from(hdr.numrec).unwrap_or(usize::MAX).min(1024);
            let total = DISCOVERY_LOG_HEADER_SIZE + n * DISCOVERY_LOG_ENTRY_SIZE;
            let mut page = first;
            while page.len() < total {
                let more = self.log_window(page.len() as u64)?;
                page.extend_from_slice(&more);
            }
            let again = DiscoveryLogHeader::parse(&self.log_window(0)?).map_err(|e| {
                InitiatorError::Unsupported(format!("{}: discovery log: {e}", self.addr()))
            })?;
            if again.genctr != hdr.genctr {
                continue;
            }
            return Ok((0..n)
                .filter_map(|i| discovery_log_entry(&page, i))
                .map(|e| DiscoveredSubsystem {
                    subnqn: e.subnqn_str().to_string(),
                    trtype: e.trtype,
                    adrfam: e.adrfam,
                    subtype: e.subtype,
                    traddr: e.traddr_str().to_string(),
                    treq: e.treq,
                    sectype: e.tsas[0],
                    trsvcid: e.trsvcid_str().to_string(),
                })
                .collect());
        }
        Err(InitiatorError::Unsupported(format!(
            "{}: the discovery log kept changing while it was read",
            self.addr()
        )))
    }

    /// 4096 bytes of the discovery log from `offset`.
    fn log_window(&mut self, offset: u64) -> Result<Vec<u8>, InitiatorError> {
        let sqe = GetLogPage {
            lid: lid::DISCOVERY,
            numd: (ADMIN_BUF / 4) as u32,
            lpo: offset,
            ..Default::default()
        }
        .to_sqe(0, 0);
        let c = self.admin_cmd(sqe, Dir::Read, ADMIN_BUF as u32, "Get Log Page (discovery)")?;
        Ok(self.admin.data(c.cid)[..ADMIN_BUF].to_vec())
    }
}

/// Lists the NVM subsystems a discovery controller knows. Entries that name an
/// unspecified address (0.0.0.0, ::) are given the discovery controller's.
pub fn discover(mut opts: ConnectOptions) -> Result<Vec<DiscoveredSubsystem>, InitiatorError> {
    opts.subnqn = DISCOVERY_NQN.to_string();
    opts.kato_ms = 0;
    discover_with(opts)
}

/// [`discover`] over any fabric: `opts` name the discovery subsystem
/// ([`DISCOVERY_NQN`]), without keep-alive.
pub fn discover_with<O: Fabric>(opts: O) -> Result<Vec<DiscoveredSubsystem>, InitiatorError> {
    let mut c = Controller::connect(opts)?;
    let addr = c.addr();
    let mut entries = c.discovery_log()?;
    c.shutdown()?;
    for e in &mut entries {
        if e.traddr
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
        {
            e.traddr = addr.ip().to_string();
        }
    }
    entries.retain(|e| e.subtype == subtype::NVME_SUBSYSTEM);
    Ok(entries)
}
