//! Changing a running target: the one code path of the management API and of the
//! configuration file (applied as a desired state at start, `apply`, and written back
//! by `config save`, `save`). Block devices by name (`registry`), subsystems,
//! namespaces, listeners and ANA states.
//!
//! Every change runs on the caller's thread (the API's, or the main thread at start),
//! never on a reactor; it reaches the reactors through the objects' own mechanisms
//! (namespace tables swapped and picked up by the queues, transports' mailboxes).
//! Changes are serialized by `Mgmt::changes`, which a hot upgrade's handover holds from
//! quiescing to its end; each change rewrites the boot blob in the state region (the
//! device registry and which device each namespace serves) and counts itself there, so
//! a successor that prepared from an older blob refuses and the old target serves on.

pub mod apply;
pub mod fault;
pub mod migrate;
pub mod raid;
pub mod registry;
pub mod save;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use lightpool_bdev::Bdev;
use lightpool_nvmf::subsystem::MAX_NAMESPACES;
use lightpool_nvmf::{
    ListenAddr, Namespace, NamespaceConfig, NvmfError, Subsystem, SubsystemConfig,
};

pub use fault::fault_device;
pub use registry::{parse_rules, DeviceSpec, Entry, Registry};

use crate::Running;

/// Why a change was refused; each kind is one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    /// The object is in use, or the target's state does not allow it now.
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    NoMemory(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl From<NvmfError> for ManageError {
    fn from(e: NvmfError) -> Self {
        match e {
            NvmfError::DuplicateSubsystem(n) => ManageError::Exists(format!(
                "subsystem {n} exists already: delete it first, or pick another NQN"
            )),
            NvmfError::NoSuchSubsystem(n) => {
                ManageError::NotFound(format!("no subsystem {n}: create it first"))
            }
            NvmfError::NoSuchNamespace { nqn, nsid } => {
                ManageError::NotFound(format!("subsystem {nqn} has no namespace {nsid}"))
            }
            NvmfError::DuplicateNamespace { nqn, nsid } => ManageError::Exists(format!(
                "subsystem {nqn} has a namespace {nsid} already: remove it first, or give another NSID (0 picks a free one)"
            )),
            e @ (NvmfError::InvalidSubsystem { .. } | NvmfError::Invalid(_)) => {
                ManageError::Invalid(e.to_string())
            }
        }
    }
}

/// Where an API-started hot upgrade stands: the old process answers the API call
/// before it exits.
#[derive(Default)]
pub struct UpgradeReply {
    /// (an upgrade through the API is under way, its answer was sent)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl UpgradeReply {
    pub fn begin(&self) -> bool {
        let mut s = self.state.lock().expect("upgrade reply lock poisoned");
        if s.0 {
            return false;
        }
        *s = (true, false);
        true
    }

    pub fn abandon(&self) {
        *self.state.lock().expect("upgrade reply lock poisoned") = (false, false);
    }

    /// The API server has sent the answer (and shut down): the handover may exit.
    pub fn sent(&self) {
        self.state.lock().expect("upgrade reply lock poisoned").1 = true;
        self.cv.notify_all();
    }

    /// Old process, handed over: wait (at most `timeout`) for the API's answer to go
    /// out when an upgrade came through the API.
    pub fn wait_sent(&self, timeout: std::time::Duration) {
        let s = self.state.lock().expect("upgrade reply lock poisoned");
        if !s.0 {
            return;
        }
        let _ = self
            .cv
            .wait_timeout_while(s, timeout, |s| !s.1)
            .expect("upgrade reply lock poisoned");
    }
}

/// What the management side of a running target keeps.
pub struct Mgmt {
    pub registry: Registry,
    /// Changes made so far (in the boot blob); held while one is made, and by a hot
    /// upgrade's handover.
    pub changes: Mutex<u64>,
    /// The state went to a successor: refuse changes.
    pub handed_over: AtomicBool,
    /// The API's Unix socket (bound by the target, handed over in a hot upgrade).
    pub api_path: String,
    pub api: std::os::unix::net::UnixListener,
    pub upgrade: UpgradeReply,
    /// Volumes served to this host's kernel as /dev/ublkbN.
    pub ublk: crate::ublk::Exports,
}

impl Mgmt {
    pub fn new(
        registry: Registry,
        changes: u64,
        api_path: String,
        api: std::os::unix::net::UnixListener,
    ) -> Mgmt {
        Mgmt {
            registry,
            changes: Mutex::new(changes),
            handed_over: AtomicBool::new(false),
            api_path,
            api,
            upgrade: UpgradeReply::default(),
            ublk: crate::ublk::Exports::default(),
        }
    }
}

impl Drop for Mgmt {
    fn drop(&mut self) {
        // The target stops (a handover exits without dropping this).
        let _ = std::fs::remove_file(&self.api_path);
    }
}

/// The device each namespace serves, named.
pub struct NsView {
    pub nqn: String,
    pub ns: Arc<Namespace>,
    pub device: String,
}

impl Running {
    /// Take the change lock; refused once the state went to a successor.
    fn change(&self) -> Result<MutexGuard<'_, u64>, ManageError> {
        let g = self.mgmt.changes.lock().expect("change lock poisoned");
        if self.mgmt.handed_over.load(Ordering::Acquire) {
            return Err(ManageError::Unavailable(
                "this target has handed over to a new binary: ask again (the new one answers on the same socket)".into(),
            ));
        }
        Ok(g)
    }

    /// Run one pass of every reactor now: a sleeping reactor (idle connections) would
    /// otherwise notice a change (a namespace table, a failed controller, an event to
    /// deliver) only at its next socket event.
    pub fn wake_reactors(&self) {
        for r in &self.reactors {
            let _ = r.send(|_| {});
        }
    }

    /// A change was made: count it, rewrite the boot blob, and let the reactors see it.
    fn changed(&self, mut g: MutexGuard<'_, u64>) {
        self.wake_reactors();
        *g += 1;
        if let Err(e) = crate::upgrade::write_boot_counted(self, *g) {
            tracing::error!(
                error = format!("{e:#}"),
                "boot blob not rewritten: a hot upgrade now would miss this change"
            );
        }
    }

    fn subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, ManageError> {
        self.target
            .find_subsystem(nqn)
            .filter(|s| s.kind == lightpool_nvmf::subsystem::SubsystemKind::Nvm)
            .ok_or_else(|| {
                ManageError::NotFound(format!(
                    "no subsystem {nqn}: list them with `lightpool subsystem list`"
                ))
            })
    }

    /// Create a block device.
    pub fn create_bdev(&self, name: &str, spec: DeviceSpec) -> Result<Entry, ManageError> {
        crate::config::check_device_name(name).map_err(ManageError::Invalid)?;
        let g = self.change()?;
        if self.mgmt.registry.get(name).is_some() {
            return Err(ManageError::Exists(format!(
                "a block device named {name:?} exists already: pick another name"
            )));
        }
        let bdev =
            registry::open_device(name, &spec, &self.mgmt.registry, self.state_dir.as_deref())?;
        if let Some(pool) = bdev.dma_pool() {
            self.target.use_buffer_pool(pool);
        }
        let e = Entry {
            name: name.to_string(),
            bdev,
            spec,
        };
        self.mgmt.registry.insert(e.clone())?;
        self.changed(g);
        tracing::info!(name, kind = e.bdev.kind(), "block device created");
        Ok(e)
    }

    /// Who uses a device: namespaces serving it, devices stacked on it.
    pub(crate) fn users_of(&self, d: &Arc<dyn Bdev>) -> Vec<String> {
        let mut out: Vec<String> = self
            .namespaces()
            .into_iter()
            .filter(|n| Arc::ptr_eq(&n.ns.bdev, d))
            .map(|n| format!("namespace {}/{}", n.nqn, n.ns.nsid))
            .collect();
        for e in self.mgmt.registry.all() {
            if e.bdev.children().iter().any(|c| Arc::ptr_eq(c, d)) {
                out.push(format!("device {}", e.name));
            }
        }
        out.extend(self.mgmt.ublk.uses(d));
        out
    }

    /// Forget the pools' volumes (`DeviceSpec::Volume`) that no namespace serves any
    /// more: a volume is a block device only while served, so that the pool can delete
    /// or rename it and close. Whether any went (the boot blob is then rewritten).
    fn drop_unserved_volumes(&self) -> bool {
        let mut any = false;
        for e in self.mgmt.registry.all() {
            if matches!(e.spec, DeviceSpec::Volume { .. }) && self.users_of(&e.bdev).is_empty() {
                self.mgmt.registry.remove(&e.name);
                tracing::debug!(name = e.name, "volume no namespace serves forgotten");
                any = true;
            }
        }
        any
    }

    /// [`Running::drop_unserved_volumes`] under the change lock (a namespace that
    /// failed to be added on a volume left its device behind).
    pub fn release_volumes(&self) -> Result<(), ManageError> {
        let g = self.change()?;
        if self.drop_unserved_volumes() {
            self.changed(g);
        }
        Ok(())
    }

    /// Delete a block device that nothing uses.
    pub fn delete_bdev(&self, name: &str) -> Result<(), ManageError> {
        let g = self.change()?;
        let e = self
            .mgmt
            .registry
            .get(name)
            .ok_or_else(|| ManageError::NotFound(format!("no block device named {name:?}")))?;
        let users = self.users_of(&e.bdev);
        if !users.is_empty() {
            return Err(ManageError::InUse(format!(
                "block device {name} is in use by {}: remove those first",
                users.join(", ")
            )));
        }
        self.mgmt.registry.remove(name);
        self.changed(g);
        tracing::info!(name, "block device deleted");
        Ok(())
    }

    /// Every namespace with the name of its device.
    pub fn namespaces(&self) -> Vec<NsView> {
        let mut out = Vec::new();
        for s in self.target.subsystems() {
            for ns in s.namespaces() {
                let device = self
                    .mgmt
                    .registry
                    .name_of(&ns.bdev)
                    .unwrap_or_else(|| ns.bdev.info().name.clone());
                out.push(NsView {
                    nqn: s.nqn.clone(),
                    ns,
                    device,
                });
            }
        }
        out
    }

    pub fn create_subsystem(&self, cfg: SubsystemConfig) -> Result<Arc<Subsystem>, ManageError> {
        let g = self.change()?;
        let s = self.target.add_subsystem(cfg)?;
        self.changed(g);
        tracing::info!(nqn = %s.nqn, "subsystem created");
        Ok(s)
    }

    /// Set (`Some`) or clear a host's DH-HMAC-CHAP keys. The next authentication
    /// transaction uses them; live connections stay. The secrets are never logged.
    /// Set (`Some`, in the interchange format) or remove the TLS PSK of `host` for
    /// subsystem `nqn`. Connections already in TLS keep the key they started with.
    pub fn set_tls_key(&self, nqn: &str, host: &str, key: Option<&str>) -> Result<(), ManageError> {
        let g = self.change()?;
        if self.target.find_subsystem(nqn).is_none() {
            return Err(ManageError::NotFound(format!("no subsystem {nqn}")));
        }
        lightpool_nvmf::nqn::check_nqn(host).map_err(ManageError::Invalid)?;
        let key = key
            .map(lightpool_nvmf::tls::ConfiguredPsk::parse)
            .transpose()
            .map_err(|e| ManageError::Invalid(format!("TLS key: {e}")))?;
        let set = key.is_some();
        let had = self
            .target
            .tls
            .set(host, nqn, key)
            .map_err(|e| ManageError::Invalid(format!("TLS key: {e}")))?;
        if !set && !had {
            return Err(ManageError::NotFound(format!(
                "{host} has no TLS key for {nqn}"
            )));
        }
        self.changed(g);
        tracing::info!(nqn, host, set, "TLS PSK changed");
        Ok(())
    }

    pub fn set_host_keys(
        &self,
        nqn: &str,
        host: &str,
        keys: Option<lightpool_nvmf::auth::HostKeys>,
    ) -> Result<(), ManageError> {
        let g = self.change()?;
        let s = self.subsystem(nqn)?;
        let set = keys.is_some();
        if !set && s.host_keys(host).is_none() {
            return Err(ManageError::NotFound(format!(
                "subsystem {nqn} holds no keys for host {host}"
            )));
        }
        s.set_host_keys(host, keys)?;
        self.changed(g);
        tracing::info!(
            nqn,
            host,
            action = if set { "set" } else { "cleared" },
            "host authentication keys changed"
        );
        Ok(())
    }

    /// Delete a subsystem: its controllers fail (connections close), its namespaces go.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), ManageError> {
        let g = self.change()?;
        self.subsystem(nqn)?;
        self.target
            .remove_subsystem(nqn, std::time::Duration::from_secs(5), || {
                self.wake_reactors()
            })?;
        self.drop_unserved_volumes();
        self.changed(g);
        tracing::info!(nqn, "subsystem deleted");
        Ok(())
    }

    /// Add a namespace serving device `device` (nsid 0: the lowest free).
    #[allow(clippy::too_many_arguments)]
    pub fn add_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        device: &str,
        nguid: Option<[u8; 16]>,
        uuid: Option<[u8; 16]>,
        ana_group: Option<u32>,
        size_bytes: Option<u64>,
    ) -> Result<Arc<Namespace>, ManageError> {
        let g = self.change()?;
        let s = self.subsystem(nqn)?;
        let e = self.mgmt.registry.get(device).ok_or_else(|| {
            ManageError::NotFound(format!(
                "no block device named {device:?}: create it first (`lightpool bdev create`)"
            ))
        })?;
        let nsid = if nsid == 0 {
            (1..=MAX_NAMESPACES)
                .find(|n| s.namespace(*n).is_none())
                .ok_or_else(|| {
                    ManageError::InUse(format!(
                        "subsystem {nqn} has {MAX_NAMESPACES} namespaces, the most it holds"
                    ))
                })?
        } else {
            nsid
        };
        let num_blocks = match size_bytes {
            None => None,
            Some(b) => Some(blocks_of(b, &e.bdev)?),
        };
        let mut cfg = NamespaceConfig::new(nsid, e.bdev.clone());
        cfg.nguid = nguid;
        cfg.uuid = uuid;
        cfg.anagrpid = ana_group;
        cfg.num_blocks = num_blocks;
        let ns = s.add_namespace(cfg)?;
        if let Some(pool) = e.bdev.dma_pool() {
            self.target.use_buffer_pool(pool);
        }
        self.changed(g);
        tracing::info!(nqn, nsid, device, "namespace added");
        Ok(ns)
    }

    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), ManageError> {
        let g = self.change()?;
        if migrate::active(nqn, nsid) {
            return Err(ManageError::InUse(format!(
                "namespace {nqn}/{nsid} is being migrated: stop the migration first (`lightpool target migrate stop`)"
            )));
        }
        self.subsystem(nqn)?.remove_namespace(nsid)?;
        self.drop_unserved_volumes();
        self.changed(g);
        tracing::info!(nqn, nsid, "namespace removed");
        Ok(())
    }

    /// Present `size_bytes` of the namespace's device (0: all of it).
    pub fn resize_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        size_bytes: u64,
    ) -> Result<Arc<Namespace>, ManageError> {
        let g = self.change()?;
        if migrate::active(nqn, nsid) {
            return Err(ManageError::InUse(format!(
                "namespace {nqn}/{nsid} is being migrated: resize it once the migration has ended"
            )));
        }
        let s = self.subsystem(nqn)?;
        let ns = s.namespace(nsid).ok_or(NvmfError::NoSuchNamespace {
            nqn: nqn.to_string(),
            nsid,
        })?;
        let blocks = match size_bytes {
            0 => None,
            b => Some(blocks_of(b, &ns.bdev)?),
        };
        let ns = s.resize_namespace(nsid, blocks)?;
        self.changed(g);
        tracing::info!(nqn, nsid, blocks = ns.num_blocks, "namespace resized");
        Ok(ns)
    }

    /// Pool volume `device` (its registry name) grew: when a namespace serves it,
    /// `regrown` gives the device of the new size, which takes the old one's place in
    /// the registry and in every namespace that served it; hosts are told (Namespace
    /// Attribute Changed) and see the new size. Returns the namespaces moved
    /// ("NQN/NSID").
    pub fn regrow_volume(
        &self,
        device: &str,
        regrown: impl FnOnce() -> Result<Option<Arc<dyn Bdev>>, ManageError>,
    ) -> Result<Vec<String>, ManageError> {
        let g = self.change()?;
        let Some(old) = self.mgmt.registry.get(device) else {
            return Ok(Vec::new());
        };
        if let Some(ns) = migrate::moving(&old.bdev) {
            return Err(ManageError::InUse(format!(
                "{device} is being migrated (namespace {ns}): grow it once the migration has ended"
            )));
        }
        let Some(new) = regrown()? else {
            return Ok(Vec::new());
        };
        self.mgmt.registry.replace_bdev(device, new.clone());
        let mut moved = Vec::new();
        for s in self.target.subsystems() {
            for ns in s.namespaces() {
                if Arc::ptr_eq(&ns.bdev, &old.bdev) {
                    let n = s.regrow_namespace(ns.nsid, new.clone())?;
                    tracing::info!(nqn = %s.nqn, nsid = n.nsid, blocks = n.num_blocks, device, "namespace grew with its volume");
                    moved.push(format!("{}/{}", s.nqn, n.nsid));
                }
            }
        }
        self.changed(g);
        Ok(moved)
    }

    /// Listen on `address` with transport `transport` (made on first use).
    pub fn add_listener(&self, transport: &str, address: &str) -> Result<ListenAddr, ManageError> {
        self.add_secure_listener(
            transport,
            address,
            lightpool_nvmf::tls::Secure::None,
            lightpool_nvmf::tls::Ktls::Auto,
        )
    }

    /// As [`Self::add_listener`], with NVMe/TCP TLS required, optional or off, and
    /// its record layer in the kernel where it can be (`ktls` auto) or in software.
    pub fn add_secure_listener(
        &self,
        transport: &str,
        address: &str,
        secure: lightpool_nvmf::tls::Secure,
        ktls: lightpool_nvmf::tls::Ktls,
    ) -> Result<ListenAddr, ManageError> {
        let addr =
            self.add_listener_by(transport, |t| t.add_tls_listener(address, secure, ktls))?;
        tracing::info!(transport, address = %addr.to_addr_string(), "listener added");
        Ok(addr)
    }

    /// As [`Self::add_listener`], through a kernel-bypass packet engine.
    pub fn add_engine_listener(
        &self,
        transport: &str,
        address: &str,
        engine: &lightpool_nvmf::EngineSpec,
    ) -> Result<ListenAddr, ManageError> {
        let addr = self.add_listener_by(transport, |t| t.add_engine_listener(address, engine))?;
        tracing::info!(transport, address = %addr.to_addr_string(), engine = %engine.engine, interface = %engine.interface, "listener added");
        Ok(addr)
    }

    /// Add a listener with `add` on transport `transport` (made on first use).
    fn add_listener_by(
        &self,
        transport: &str,
        add: impl FnOnce(
            &dyn lightpool_nvmf::Transport,
        ) -> Result<ListenAddr, lightpool_nvmf::TransportError>,
    ) -> Result<ListenAddr, ManageError> {
        let g = self.change()?;
        let t = self
            .transports
            .get_or_create(transport)
            .map_err(|e| ManageError::Invalid(anyhow_chain(&e)))?;
        let addr = add(t.as_ref()).map_err(|e| {
            let msg = error_chain(&e);
            if msg.contains("in use") {
                ManageError::Unavailable(format!("{msg}: another process listens there"))
            } else {
                ManageError::Invalid(msg)
            }
        })?;
        self.changed(g);
        Ok(addr)
    }

    pub fn remove_listener(&self, transport: &str, address: &str) -> Result<(), ManageError> {
        let g = self.change()?;
        let t = self
            .transports
            .all()
            .into_iter()
            .find(|t| t.name() == transport)
            .ok_or_else(|| {
                ManageError::NotFound(format!("no listener of transport {transport:?}"))
            })?;
        let listener = self
            .target
            .listeners()
            .into_iter()
            .find(|l| {
                l.addr.to_addr_string() == address
                    || address
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| ListenAddr::tcp(a) == l.addr)
            })
            .ok_or_else(|| {
                ManageError::NotFound(format!(
                    "nothing listens on {address}: list the listeners with `lightpool listener list`"
                ))
            })?;
        t.remove_listener(&listener.addr)
            .map_err(|e| ManageError::NotFound(error_chain(&e)))?;
        self.changed(g);
        tracing::info!(transport, address, "listener removed");
        Ok(())
    }

    pub fn set_ana(&self, nqn: &str, group: u32, state: u8) -> Result<(), ManageError> {
        let _g = self.change()?;
        self.subsystem(nqn)?.set_ana_state(group, state)?;
        self.wake_reactors();
        tracing::info!(nqn, group, state, "ANA state changed");
        Ok(())
    }
}

/// `bytes` of device `d` as a block count: whole blocks, at most the device's.
fn blocks_of(bytes: u64, d: &Arc<dyn Bdev>) -> Result<u64, ManageError> {
    let info = d.info();
    let bs = u64::from(info.block_size);
    let have = info.num_blocks * bs;
    if bytes == 0 || !bytes.is_multiple_of(bs) || bytes > have {
        return Err(ManageError::Invalid(format!(
            "{bytes} bytes: a namespace of device {} presents a whole number of its {bs}-byte blocks, from {bs} to {have} bytes",
            info.name
        )));
    }
    Ok(bytes / bs)
}

/// An error and its causes as one line, `a: b: c`, each cause once: an error whose
/// message already ends with its source's is not repeated ("cannot listen on ...:
/// Address already in use" printed twice).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    chain_of(std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string()))
}

/// As [`error_chain`], for anyhow's errors.
pub fn anyhow_chain(e: &anyhow::Error) -> String {
    chain_of(e.chain().map(|e| e.to_string()))
}

fn chain_of(parts: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for p in parts {
        if p.is_empty() || out.ends_with(&p) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&p);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:1: {0}")]
        struct Listen(#[source] std::io::Error);
        let e = anyhow::Error::new(Listen(io)).context("listener[0]");
        let s = super::anyhow_chain(&e);
        assert_eq!(s.matches("in use").count(), 1, "{s}");
        assert!(
            s.starts_with("listener[0]: cannot listen on 127.0.0.1:1: "),
            "{s}"
        );
    }
}
