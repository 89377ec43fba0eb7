//! Subsystems and namespaces: what a host sees, configured so that two nodes can present
//! the same subsystem (serial, model, NSIDs, NGUIDs, UUIDs, ANA group IDs, cntlid range).
//!
//! Namespaces change at run time (`namespaces` module): the subsystem keeps its table
//! of namespaces behind an atomically swapped pointer and a generation counter that is
//! bumped after every swap. A queue caches the table and compares the generation on
//! each command and poll (one atomic load); when it moved, it takes the new table (a
//! lock-free load) and lets go of the channels of namespaces that went away once their
//! requests have finished. Nothing on the I/O path takes a lock.

mod namespaces;
mod record;

pub(crate) use record::{record_subsystem, SubsysShm};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arc_swap::ArcSwap;
use lightpool_bdev::Bdev;
use lightpool_spec::log::ana_state;

use crate::auth::HostKeys;
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
    /// Blocks the namespace presents: at most the device's; defaults to all of them.
    pub num_blocks: Option<u64>,
}

impl NamespaceConfig {
    /// Namespace `nsid` over all of `bdev`, identifiers and ANA group by default.
    pub fn new(nsid: u32, bdev: Arc<dyn Bdev>) -> NamespaceConfig {
        NamespaceConfig {
            nsid,
            bdev,
            nguid: None,
            uuid: None,
            anagrpid: None,
            num_blocks: None,
        }
    }
}

/// How a subsystem is configured.
#[derive(Clone)]
pub struct SubsystemConfig {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// DH-HMAC-CHAP keys by host NQN: a host listed here must authenticate.
    pub host_keys: Vec<(String, crate::auth::HostKeys)>,
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
            host_keys: Vec::new(),
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
            namespaces: Vec::new(),
        }
    }
}

/// The most namespaces (and so ANA groups) one subsystem holds; also Identify's NN/MNAN.
pub const MAX_NAMESPACES: u32 = 32;

/// A namespace as the target serves it. Never changed once made: a resize swaps in a
/// new one over the same device.
#[derive(Clone)]
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

/// The namespaces of a subsystem at one moment: by NSID - 1, and in NSID order.
#[derive(Default)]
pub struct NsTable {
    pub(crate) by_idx: Vec<Option<Arc<Namespace>>>,
    pub(crate) list: Vec<Arc<Namespace>>,
}

impl NsTable {
    fn from_list(mut list: Vec<Arc<Namespace>>) -> NsTable {
        list.sort_by_key(|n| n.nsid);
        let mut by_idx = vec![None; MAX_NAMESPACES as usize];
        for n in &list {
            by_idx[n.nsid as usize - 1] = Some(n.clone());
        }
        NsTable { by_idx, list }
    }
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

/// A subsystem: shared by every reactor. Its identity never changes after creation;
/// its namespaces change through an atomically swapped table (see the module
/// documentation) and ANA states are atomics.
pub struct Subsystem {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub kind: SubsystemKind,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    /// DH-HMAC-CHAP keys by host NQN (control path: Connect and each authentication
    /// transaction read them; the management API replaces them).
    host_keys: RwLock<HashMap<String, Arc<HostKeys>>>,
    ns: ArcSwap<NsTable>,
    /// Bumped after every swap of `ns`.
    ns_gen: AtomicU64,
    /// Keeps writers of `ns` (the control path) apart.
    ns_writer: Mutex<()>,
    /// Every group a namespace may name (IDs 1..=MAX_NAMESPACES), by ID - 1.
    ana_groups: Box<[AnaGroup]>,
    ana_chgcnt: AtomicU64,
    controllers: Mutex<Controllers>,
    /// Set once the subsystem is deleted: Connect refuses it.
    removed: std::sync::atomic::AtomicBool,
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

fn ana_groups(n: u32) -> Box<[AnaGroup]> {
    (1..=n)
        .map(|id| AnaGroup {
            id,
            state: AtomicU8::new(ana_state::OPTIMIZED),
            chgcnt: AtomicU64::new(0),
        })
        .collect()
}

impl Subsystem {
    /// Validate a configuration and build the subsystem.
    pub fn new(cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmfError> {
        let nqn = cfg.nqn.clone();
        let bad = |reason: String| NvmfError::InvalidSubsystem {
            nqn: nqn.clone(),
            reason,
        };
        if nqn == lightpool_spec::fabrics::DISCOVERY_NQN {
            return Err(bad(
                "the discovery NQN is reserved for the discovery subsystem".into(),
            ));
        }
        crate::nqn::check_nqn(&nqn).map_err(&bad)?;
        for h in &cfg.hosts {
            crate::nqn::check_nqn(h).map_err(|e| bad(format!("host {e}")))?;
        }
        for (h, _) in &cfg.host_keys {
            crate::nqn::check_nqn(h).map_err(|e| bad(format!("keyed host {e}")))?;
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
        let mut namespaces: Vec<Arc<Namespace>> = Vec::new();
        for ns in &cfg.namespaces {
            if namespaces.iter().any(|n| n.nsid == ns.nsid) {
                return Err(bad(format!("nsid {} is configured twice", ns.nsid)));
            }
            namespaces.push(make_namespace(&nqn, ns).map_err(bad)?);
        }
        Ok(Arc::new(Subsystem {
            nqn: cfg.nqn,
            serial: cfg.serial,
            model: cfg.model,
            kind: SubsystemKind::Nvm,
            allow_any_host: cfg.allow_any_host,
            hosts: cfg.hosts,
            min_cntlid: cfg.min_cntlid,
            max_cntlid: cfg.max_cntlid,
            host_keys: RwLock::new(
                cfg.host_keys
                    .into_iter()
                    .map(|(h, k)| (h, Arc::new(k)))
                    .collect(),
            ),
            ns: ArcSwap::from_pointee(NsTable::from_list(namespaces)),
            ns_gen: AtomicU64::new(1),
            ns_writer: Mutex::new(()),
            ana_groups: ana_groups(MAX_NAMESPACES),
            ana_chgcnt: AtomicU64::new(0),
            controllers: Mutex::new(Controllers {
                next: cfg.min_cntlid,
                live: Vec::new(),
            }),
            removed: Default::default(),
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
            host_keys: RwLock::new(HashMap::new()),
            ns: ArcSwap::from_pointee(NsTable::from_list(Vec::new())),
            ns_gen: AtomicU64::new(1),
            ns_writer: Mutex::new(()),
            ana_groups: ana_groups(0),
            ana_chgcnt: AtomicU64::new(0),
            controllers: Mutex::new(Controllers {
                next: 1,
                live: Vec::new(),
            }),
            removed: Default::default(),
            shm: Mutex::new(None),
        })
    }

    /// The namespaces now, in NSID order (control path).
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.ns.load().list.clone()
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let idx = (nsid as usize).checked_sub(1)?;
        self.ns.load().by_idx.get(idx).cloned().flatten()
    }

    /// The generation of the namespace table: a queue that cached another takes the
    /// table again ([`Subsystem::ns_table`]). One atomic load: the I/O path's check.
    #[inline(always)]
    pub fn ns_generation(&self) -> u64 {
        self.ns_gen.load(Ordering::Acquire)
    }

    /// The namespace table and its generation (the generation read first, so a table
    /// swapped meanwhile is newer than it says and is taken again on the next check).
    /// Lock-free.
    pub(crate) fn ns_table(&self) -> (u64, Arc<NsTable>) {
        let g = self.ns_generation();
        (g, self.ns.load_full())
    }

    /// The ANA groups that hold a namespace now, or whose state was ever changed.
    pub fn ana_groups(&self) -> Vec<&AnaGroup> {
        let t = self.ns.load();
        self.ana_groups
            .iter()
            .filter(|g| g.chgcnt() > 0 || t.list.iter().any(|n| n.anagrpid == g.id))
            .collect()
    }

    /// Any group a namespace may name (1..=MAX_NAMESPACES).
    #[inline]
    pub fn ana_group(&self, id: u32) -> Option<&AnaGroup> {
        self.ana_groups.get((id as usize).wrapping_sub(1))
    }

    pub fn ana_chgcnt(&self) -> u64 {
        self.ana_chgcnt.load(Ordering::Acquire)
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }

    /// The DH-HMAC-CHAP keys the subsystem holds for `hostnqn` now (control path).
    pub fn host_keys(&self, hostnqn: &str) -> Option<Arc<HostKeys>> {
        self.host_keys
            .read()
            .expect("host keys lock poisoned")
            .get(hostnqn)
            .cloned()
    }

    /// Every host's keys, by host NQN in order (for saving and the API).
    pub fn all_host_keys(&self) -> Vec<(String, Arc<HostKeys>)> {
        let mut v: Vec<_> = self
            .host_keys
            .read()
            .expect("host keys lock poisoned")
            .iter()
            .map(|(h, k)| (h.clone(), k.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Set (or with `None` clear) a host's keys. The next authentication transaction
    /// uses them; connections already authenticated stay up. The discovery subsystem
    /// takes none.
    pub fn set_host_keys(&self, hostnqn: &str, keys: Option<HostKeys>) -> Result<(), NvmfError> {
        if self.kind == SubsystemKind::Discovery {
            return Err(NvmfError::Invalid(
                "the discovery subsystem does not authenticate hosts".into(),
            ));
        }
        crate::nqn::check_nqn(hostnqn).map_err(|e| NvmfError::InvalidSubsystem {
            nqn: self.nqn.clone(),
            reason: format!("host {e}"),
        })?;
        let mut m = self.host_keys.write().expect("host keys lock poisoned");
        match keys {
            Some(k) => {
                m.insert(hostnqn.to_string(), Arc::new(k));
            }
            None => {
                m.remove(hostnqn);
            }
        }
        Ok(())
    }

    /// Whether the subsystem was deleted (Connect refuses it; its controllers failed).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
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
        let group = self
            .ana_group(grpid)
            .filter(|_| self.kind == SubsystemKind::Nvm)
            .ok_or_else(|| {
                NvmfError::Invalid(format!(
                    "subsystem {} has no ANA group {grpid} (groups are 1 to {MAX_NAMESPACES})",
                    self.nqn
                ))
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

/// Check a namespace's configuration and make it.
pub(crate) fn make_namespace(nqn: &str, ns: &NamespaceConfig) -> Result<Arc<Namespace>, String> {
    if ns.nsid == 0 || ns.nsid > MAX_NAMESPACES {
        return Err(format!(
            "nsid {} must lie within 1..={MAX_NAMESPACES}",
            ns.nsid
        ));
    }
    let info = ns.bdev.info();
    if info.block_size != 512 && info.block_size != 4096 {
        return Err(format!(
            "nsid {}: block size {} is neither 512 nor 4096",
            ns.nsid, info.block_size
        ));
    }
    let anagrpid = ns.anagrpid.unwrap_or(ns.nsid);
    if anagrpid == 0 || anagrpid > MAX_NAMESPACES {
        return Err(format!(
            "nsid {}: ana group {anagrpid} must lie within 1..={MAX_NAMESPACES}",
            ns.nsid
        ));
    }
    let num_blocks = ns.num_blocks.unwrap_or(info.num_blocks);
    if num_blocks == 0 || num_blocks > info.num_blocks {
        return Err(format!(
            "nsid {}: {num_blocks} blocks of {} bytes do not fit its device {} ({} blocks): give 1 to {} blocks",
            ns.nsid, info.block_size, info.name, info.num_blocks, info.num_blocks
        ));
    }
    Ok(Arc::new(Namespace {
        nsid: ns.nsid,
        bdev: ns.bdev.clone(),
        block_size: info.block_size,
        block_shift: info.block_size.trailing_zeros(),
        num_blocks,
        read_only: info.read_only,
        nguid: ns.nguid.unwrap_or_else(|| derive_id(nqn, ns.nsid, 0)),
        uuid: ns.uuid.unwrap_or_else(|| derive_id(nqn, ns.nsid, 1)),
        anagrpid,
    }))
}
