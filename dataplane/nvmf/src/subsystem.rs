//! Subsystems and namespaces: what a host sees, configured so that two nodes can present
//! the same subsystem (serial, model, NSIDs, NGUIDs, UUIDs, ANA group IDs, cntlid range).

mod record;

pub(crate) use record::{record_subsystem, SubsysShm};

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lightpool_bdev::Bdev;
use lightpool_spec::log::ana_state;

use crate::ctrlr::Controller;
use crate::NvmfError;

/// How a namespace is configured.
#[derive(Clone)]
pub struct NamespaceConfig {
    pub nsid: u32,
    pub bdev: Arc<dyn Bdev>,
    /// Defaults to a value derived from the subsystem NQN and NSID.
    pub nguid: Option<[u8; 16]>,
    /// Defaults to a value derived from the subsystem NQN and NSID.
    pub uuid: Option<[u8; 16]>,
    /// Defaults to the NSID: one ANA group per namespace.
    pub anagrpid: Option<u32>,
}

/// How a subsystem is configured.
#[derive(Clone)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// Controller IDs are handed out from this inclusive range (1..=0xFFEF at most), so
    /// two nodes serving the same subsystem never give a host the same ID twice.
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    pub namespaces: Vec<NamespaceConfig>,
}

impl SubsystemConfig {
    /// A subsystem with the project's defaults and no namespaces.
    pub fn new(nqn: &str) -> SubsystemConfig {
        SubsystemConfig {
            nqn: nqn.to_string(),
            serial: "LIGHTPOOL0000001".to_string(),
            model: "LightPool".to_string(),
            allow_any_host: true,
            hosts: Vec::new(),
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
            namespaces: Vec::new(),
        }
    }
}

/// The most namespaces (and so ANA groups) one subsystem holds; also Identify's NN/MNAN.
pub const MAX_NAMESPACES: u32 = 32;

/// A namespace as the target serves it.
pub struct Namespace {
    pub nsid: u32,
    pub bdev: Arc<dyn Bdev>,
    pub block_size: u32,
    /// log2(block_size).
    pub block_shift: u32,
    pub num_blocks: u64,
    pub read_only: bool,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub anagrpid: u32,
}

/// One ANA group: its state is what every namespace in it reports.
pub struct AnaGroup {
    pub id: u32,
    state: AtomicU8,
    chgcnt: AtomicU64,
}

impl AnaGroup {
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
    pub fn chgcnt(&self) -> u64 {
        self.chgcnt.load(Ordering::Acquire)
    }
}

/// Whether a subsystem serves I/O or is the discovery subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    Nvm,
    Discovery,
}

/// A subsystem: shared by every reactor; its I/O-path fields never change after creation
/// (ANA states are atomics).
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub kind: SubsystemKind,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    namespaces: Vec<Arc<Namespace>>,
    ana_groups: Vec<AnaGroup>,
    ana_chgcnt: AtomicU64,
    controllers: Mutex<Controllers>,
    /// Its records in the state region, if the target has one (locked while written).
    pub(crate) shm: Mutex<Option<SubsysShm>>,
}

struct Controllers {
    next: u16,
    live: Vec<Weak<Controller>>,
}

fn derive_id(nqn: &str, nsid: u32, salt: u8) -> [u8; 16] {
    // Two independent CRC32C lanes over the NQN give a stable identifier per (NQN, NSID)
    // so the same configuration on two nodes presents the same NGUID/UUID.
    let mut out = [0u8; 16];
    for (lane, chunk) in out.chunks_mut(4).enumerate() {
        let mut data = Vec::with_capacity(nqn.len() + 6);
        data.extend_from_slice(nqn.as_bytes());
        data.extend_from_slice(&nsid.to_le_bytes());
        data.push(salt);
        data.push(lane as u8);
        chunk.copy_from_slice(&lightpool_spec::tcp::crc32c(&data).to_be_bytes());
    }
    if salt == 1 {
        // RFC 4122 version 4 / variant bits so tools print it as a UUID.
        out[6] = (out[6] & 0x0F) | 0x40;
        out[8] = (out[8] & 0x3F) | 0x80;
    }
    out
}

fn check_ascii(nqn: &str, field: &str, v: &str, max: usize) -> Result<(), NvmfError> {
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Err(NvmfError::InvalidSubsystem {
            nqn: nqn.to_string(),
            reason: format!("{field} must be 1 to {max} printable ASCII characters, got {v:?}"),
        });
    }
    Ok(())
}

impl Subsystem {
    /// Validate a configuration and build the subsystem.
    pub fn new(cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmfError> {
        let nqn = cfg.nqn.clone();
        let bad = |reason: String| NvmfError::InvalidSubsystem {
            nqn: nqn.clone(),
            reason,
        };
        if nqn.is_empty() || nqn.len() > 223 || !nqn.is_ascii() {
            return Err(bad("an NQN must be 1 to 223 ASCII characters".into()));
        }
        if nqn == lightpool_spec::fabrics::DISCOVERY_NQN {
            return Err(bad(
                "the discovery NQN is reserved for the discovery subsystem".into(),
            ));
        }
        check_ascii(&nqn, "serial", &cfg.serial, 20)?;
        check_ascii(&nqn, "model", &cfg.model, 40)?;
        if cfg.min_cntlid == 0 || cfg.max_cntlid > 0xFFEF || cfg.min_cntlid > cfg.max_cntlid {
            return Err(bad(format!(
                "cntlid range {}..={} must lie within 1..=65519 with min <= max",
                cfg.min_cntlid, cfg.max_cntlid
            )));
        }
        if cfg.namespaces.len() > MAX_NAMESPACES as usize {
            return Err(bad(format!(
                "at most {MAX_NAMESPACES} namespaces per subsystem"
            )));
        }
        let mut namespaces = Vec::new();
        for ns in &cfg.namespaces {
            if ns.nsid == 0 || ns.nsid > MAX_NAMESPACES {
                return Err(bad(format!(
                    "nsid {} must lie within 1..={MAX_NAMESPACES}",
                    ns.nsid
                )));
            }
            if namespaces
                .iter()
                .any(|n: &Arc<Namespace>| n.nsid == ns.nsid)
            {
                return Err(bad(format!("nsid {} is configured twice", ns.nsid)));
            }
            let info = ns.bdev.info();
            if info.block_size != 512 && info.block_size != 4096 {
                return Err(bad(format!(
                    "nsid {}: block size {} is neither 512 nor 4096",
                    ns.nsid, info.block_size
                )));
            }
            let anagrpid = ns.anagrpid.unwrap_or(ns.nsid);
            if anagrpid == 0 || anagrpid > MAX_NAMESPACES {
                return Err(bad(format!(
                    "nsid {}: ana group {anagrpid} must lie within 1..={MAX_NAMESPACES}",
                    ns.nsid
                )));
            }
            namespaces.push(Arc::new(Namespace {
                nsid: ns.nsid,
                bdev: ns.bdev.clone(),
                block_size: info.block_size,
                block_shift: info.block_size.trailing_zeros(),
                num_blocks: info.num_blocks,
                read_only: info.read_only,
                nguid: ns.nguid.unwrap_or_else(|| derive_id(&nqn, ns.nsid, 0)),
                uuid: ns.uuid.unwrap_or_else(|| derive_id(&nqn, ns.nsid, 1)),
                anagrpid,
            }));
        }
        namespaces.sort_by_key(|n| n.nsid);
        let mut group_ids: Vec<u32> = namespaces.iter().map(|n| n.anagrpid).collect();
        group_ids.sort_unstable();
        group_ids.dedup();
        let ana_groups = group_ids
            .into_iter()
            .map(|id| AnaGroup {
                id,
                state: AtomicU8::new(ana_state::OPTIMIZED),
                chgcnt: AtomicU64::new(0),
            })
            .collect();
        Ok(Arc::new(Subsystem {
            nqn: cfg.nqn,
            serial: cfg.serial,
            model: cfg.model,
            kind: SubsystemKind::Nvm,
            allow_any_host: cfg.allow_any_host,
            hosts: cfg.hosts,
            min_cntlid: cfg.min_cntlid,
            max_cntlid: cfg.max_cntlid,
            namespaces,
            ana_groups,
            ana_chgcnt: AtomicU64::new(0),
            controllers: Mutex::new(Controllers {
                next: cfg.min_cntlid,
                live: Vec::new(),
            }),
            shm: Mutex::new(None),
        }))
    }

    /// The discovery subsystem (nqn.2014-08.org.nvmexpress.discovery).
    pub fn discovery() -> Arc<Subsystem> {
        Arc::new(Subsystem {
            nqn: lightpool_spec::fabrics::DISCOVERY_NQN.to_string(),
            serial: "LIGHTPOOLDISCOVERY".to_string(),
            model: "LightPool discovery".to_string(),
            kind: SubsystemKind::Discovery,
            allow_any_host: true,
            hosts: Vec::new(),
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
            namespaces: Vec::new(),
            ana_groups: Vec::new(),
            ana_chgcnt: AtomicU64::new(0),
            controllers: Mutex::new(Controllers {
                next: 1,
                live: Vec::new(),
            }),
            shm: Mutex::new(None),
        })
    }

    pub fn namespaces(&self) -> &[Arc<Namespace>] {
        &self.namespaces
    }

    pub fn namespace(&self, nsid: u32) -> Option<&Arc<Namespace>> {
        self.namespaces
            .binary_search_by_key(&nsid, |n| n.nsid)
            .ok()
            .map(|i| &self.namespaces[i])
    }

    pub fn ana_groups(&self) -> &[AnaGroup] {
        &self.ana_groups
    }

    pub fn ana_group(&self, id: u32) -> Option<&AnaGroup> {
        self.ana_groups.iter().find(|g| g.id == id)
    }

    pub fn ana_chgcnt(&self) -> u64 {
        self.ana_chgcnt.load(Ordering::Acquire)
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    /// Change an ANA group's state and tell every controller (ANA change async event).
    pub fn set_ana_state(&self, grpid: u32, state: u8) -> Result<(), NvmfError> {
        let valid = matches!(
            state,
            ana_state::OPTIMIZED
                | ana_state::NON_OPTIMIZED
                | ana_state::INACCESSIBLE
                | ana_state::PERSISTENT_LOSS
                | ana_state::CHANGE
        );
        if !valid {
            return Err(NvmfError::Invalid(format!(
                "ANA state {state:#x} is not one the specification defines"
            )));
        }
        let group = self.ana_group(grpid).ok_or_else(|| {
            NvmfError::Invalid(format!("subsystem {} has no ANA group {grpid}", self.nqn))
        })?;
        let cnt = self.ana_chgcnt.fetch_add(1, Ordering::AcqRel) + 1;
        group.chgcnt.store(cnt, Ordering::Release);
        group.state.store(state, Ordering::Release);
        self.publish(true);
        for c in self.controllers() {
            c.notify_ana_change();
        }
        Ok(())
    }

    /// Hand out a controller ID from the configured range, skipping IDs in use.
    pub(crate) fn register_controller(
        &self,
        make: impl FnOnce(u16) -> Arc<Controller>,
    ) -> Option<Arc<Controller>> {
        let mut t = self
            .controllers
            .lock()
            .expect("controller table lock poisoned");
        t.live.retain(|w| w.strong_count() > 0);
        let span = u32::from(self.max_cntlid - self.min_cntlid) + 1;
        for _ in 0..span {
            let id = t.next;
            t.next = if id >= self.max_cntlid {
                self.min_cntlid
            } else {
                id + 1
            };
            let used = t
                .live
                .iter()
                .any(|w| w.upgrade().is_some_and(|c| c.cntlid == id));
            if !used {
                let c = make(id);
                t.live.push(Arc::downgrade(&c));
                drop(t);
                self.publish(false);
                return Some(c);
            }
        }
        None
    }

    pub(crate) fn next_cntlid(&self) -> u16 {
        self.controllers
            .lock()
            .expect("controller table lock poisoned")
            .next
    }

    pub(crate) fn set_next_cntlid(&self, next: u16) {
        let mut t = self
            .controllers
            .lock()
            .expect("controller table lock poisoned");
        t.next = next.clamp(self.min_cntlid, self.max_cntlid);
    }

    /// Put a restored controller in the table; false if its ID is taken.
    pub(crate) fn adopt_controller(&self, c: &Arc<Controller>) -> bool {
        let mut t = self
            .controllers
            .lock()
            .expect("controller table lock poisoned");
        if t.live
            .iter()
            .any(|w| w.upgrade().is_some_and(|x| x.cntlid == c.cntlid))
        {
            return false;
        }
        t.live.push(Arc::downgrade(c));
        true
    }

    pub(crate) fn restore_ana(&self, groups: &[(u32, u8, u64)], chgcnt: u64) {
        for &(id, state, cnt) in groups {
            if let Some(g) = self.ana_group(id) {
                g.state.store(state, Ordering::Release);
                g.chgcnt.store(cnt, Ordering::Release);
            }
        }
        self.ana_chgcnt.store(chgcnt, Ordering::Release);
    }

    pub(crate) fn unregister_controller(&self, cntlid: u16) {
        let mut t = self
            .controllers
            .lock()
            .expect("controller table lock poisoned");
        t.live
            .retain(|w| w.upgrade().is_some_and(|c| c.cntlid != cntlid));
    }

    /// Live controllers of this subsystem.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        let t = self
            .controllers
            .lock()
            .expect("controller table lock poisoned");
        t.live.iter().filter_map(Weak::upgrade).collect()
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers().into_iter().find(|c| c.cntlid == cntlid)
    }
}
