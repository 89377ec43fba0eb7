//! The target: every subsystem and listener this process serves.

mod record;

pub use record::region_params;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use lightpool_dma::DmaPool;

use crate::buf::BufSource;
use crate::region::Region;

use crate::listener::ListenerInfo;
use crate::subsystem::{Subsystem, SubsystemConfig};
use crate::NvmfError;

/// Request slots a queue has before Connect says how deep it is (enough for the
/// Connect itself and a few commands behind it).
pub const PRECONNECT_SLOTS: usize = 4;

/// Limits and identity that apply to every controller.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// Entries per I/O queue a host may ask for (CAP.MQES + 1).
    pub max_queue_depth: u16,
    /// Entries of the admin queue a host may ask for.
    pub max_admin_queue_depth: u16,
    /// I/O queues per controller.
    pub max_io_queues: u16,
    /// Bytes of data a command capsule may carry (IOCCSZ - 64).
    pub in_capsule_data_size: u32,
    /// Largest data transfer of one command (MDTS), a power of two of at least 4 KiB.
    pub max_transfer_size: u32,
    /// What Identify Controller reports as the firmware revision.
    pub firmware_revision: String,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            max_queue_depth: 1024,
            max_admin_queue_depth: 32,
            max_io_queues: 64,
            in_capsule_data_size: 8192,
            max_transfer_size: 128 * 1024,
            firmware_revision: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

impl TargetOptions {
    pub fn validate(&self) -> Result<(), NvmfError> {
        let bad = |s: &str| Err(NvmfError::Invalid(s.to_string()));
        if !self.max_transfer_size.is_power_of_two()
            || !(4096..=(1 << 20)).contains(&self.max_transfer_size)
        {
            return bad("max_transfer_size must be a power of two between 4096 and 1048576");
        }
        if self.in_capsule_data_size < 4096
            || self.in_capsule_data_size > self.max_transfer_size
            || !self.in_capsule_data_size.is_multiple_of(16)
        {
            return bad(
                "in_capsule_data_size must be a multiple of 16 between 4096 and max_transfer_size",
            );
        }
        if self.max_queue_depth < 2
            || self.max_admin_queue_depth < 2
            || self.max_admin_queue_depth > 4096
        {
            return bad("queue depths must be at least 2 (admin at most 4096)");
        }
        if self.max_io_queues == 0 {
            return bad("max_io_queues must be at least 1");
        }
        if self.firmware_revision.is_empty()
            || self.firmware_revision.len() > 8
            || !self.firmware_revision.is_ascii()
        {
            return bad("firmware_revision must be 1 to 8 ASCII characters");
        }
        Ok(())
    }

    /// MDTS in units of the 4 KiB minimum page size, as a power of two.
    pub fn mdts(&self) -> u8 {
        (self.max_transfer_size / 4096).trailing_zeros() as u8
    }
}

/// Everything the process serves; shared by all reactors.
pub struct Target {
    pub opts: TargetOptions,
    discovery: Arc<Subsystem>,
    subsystems: RwLock<Vec<Arc<Subsystem>>>,
    /// Each listener with its record in the state region, if recorded.
    listeners: RwLock<Vec<(ListenerInfo, Option<u32>)>>,
    genctr: AtomicU64,
    /// The state region everything is recorded in, once attached.
    region: OnceLock<Arc<Region>>,
    /// Where new queues take their request buffers from; `None` until the first queue
    /// or a device's pool (see [`Target::buffers`]).
    buffers: Mutex<Option<Arc<BufSource>>>,
    /// The I/O counters the metrics endpoint reads (written by the reactors).
    pub metrics: crate::metrics::IoMetrics,
    /// NVMe/TCP TLS: the PSKs per (host, subsystem) and which listeners want TLS.
    pub tls: crate::tls::Keyring,
}

impl Target {
    pub fn new(opts: TargetOptions) -> Result<Arc<Target>, NvmfError> {
        opts.validate()?;
        Ok(Arc::new(Target {
            opts,
            discovery: Subsystem::discovery(),
            subsystems: RwLock::new(Vec::new()),
            listeners: RwLock::new(Vec::new()),
            genctr: AtomicU64::new(1),
            region: OnceLock::new(),
            buffers: Mutex::new(None),
            metrics: Default::default(),
            tls: Default::default(),
        }))
    }

    /// Take request buffers from `pool` (a device's DMA pool, which the device then
    /// reads and writes without a bounce copy) in every queue made from now on; queues
    /// that exist keep the buffers they have. Control path only.
    pub fn use_buffer_pool(&self, pool: Arc<DmaPool>) {
        let mut b = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        if b.as_ref().is_some_and(|s| s.is_pool(&pool)) {
            return;
        }
        tracing::info!(?pool, "request buffers come from a device's DMA pool");
        *b = Some(BufSource::new(pool));
    }

    /// Where a new queue takes its request buffers from: the pool given to
    /// [`Target::use_buffer_pool`], else the target's own pool of page-aligned buffers,
    /// made on the first call. Queue creation only, never the I/O path.
    pub fn buffers(&self) -> Arc<BufSource> {
        let mut b = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        b.get_or_insert_with(|| BufSource::page_aligned(self.opts.max_transfer_size as usize))
            .clone()
    }

    pub fn add_subsystem(&self, cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmfError> {
        if self.find_subsystem(&cfg.nqn).is_some() {
            return Err(NvmfError::DuplicateSubsystem(cfg.nqn));
        }
        let s = Subsystem::new(cfg)?;
        self.take_device_pools(&s);
        let mut subs = self.subsystems.write().expect("subsystem lock poisoned");
        if subs.iter().any(|x| x.nqn == s.nqn) {
            return Err(NvmfError::DuplicateSubsystem(s.nqn.clone()));
        }
        subs.push(s.clone());
        drop(subs);
        if let Some(r) = self.region() {
            crate::subsystem::record_subsystem(r, &s)?;
        }
        self.discovery_changed();
        Ok(s)
    }

    /// Add a subsystem without announcing a discovery change (state import).
    pub(crate) fn add_subsystem_quiet(
        &self,
        cfg: SubsystemConfig,
    ) -> Result<Arc<Subsystem>, NvmfError> {
        let s = Subsystem::new(cfg)?;
        self.take_device_pools(&s);
        let mut subs = self.subsystems.write().expect("subsystem lock poisoned");
        if subs.iter().any(|x| x.nqn == s.nqn) {
            return Err(NvmfError::DuplicateSubsystem(s.nqn.clone()));
        }
        subs.push(s.clone());
        Ok(s)
    }

    /// Request buffers from a namespace's device's DMA pool, when one offers it (see
    /// [`Target::use_buffer_pool`]).
    fn take_device_pools(&self, s: &Subsystem) {
        if let Some(pool) = s.namespaces().iter().find_map(|n| n.bdev.dma_pool()) {
            self.use_buffer_pool(pool);
        }
    }

    pub(crate) fn add_listener_quiet(&self, l: ListenerInfo) {
        self.listeners
            .write()
            .expect("listener lock poisoned")
            .push((l, None));
    }

    /// Adoption: the records the listeners came from, in their order.
    pub(crate) fn bind_listener_records(&self, recs: &[u32]) {
        let mut ls = self.listeners.write().expect("listener lock poisoned");
        for ((_, rec), &r) in ls.iter_mut().zip(recs) {
            *rec = Some(r);
        }
    }

    pub(crate) fn set_discovery_genctr(&self, g: u64) {
        self.genctr.store(g, Ordering::Release);
    }

    pub fn discovery_subsystem(&self) -> Arc<Subsystem> {
        self.discovery.clone()
    }

    /// The subsystem a Connect names, the discovery subsystem included.
    pub fn find_subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == self.discovery.nqn {
            return Some(self.discovery.clone());
        }
        self.subsystems
            .read()
            .expect("subsystem lock poisoned")
            .iter()
            .find(|s| s.nqn == nqn)
            .cloned()
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems
            .read()
            .expect("subsystem lock poisoned")
            .clone()
    }

    pub fn add_listener(&self, l: ListenerInfo) {
        let rec = self
            .region()
            .and_then(|r| match record::record_listener(r, &l) {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::error!(error = %e, "listener not recorded in the state region");
                    None
                }
            });
        self.listeners
            .write()
            .expect("listener lock poisoned")
            .push((l, rec));
        self.discovery_changed();
    }

    /// Take a listener out of the discovery log and the state region (its transport
    /// has stopped listening). `None` if there is no such listener.
    pub fn remove_listener(&self, addr: &crate::listener::ListenAddr) -> Option<ListenerInfo> {
        let mut ls = self.listeners.write().expect("listener lock poisoned");
        let at = ls.iter().position(|(l, _)| &l.addr == addr)?;
        let (l, rec) = ls.remove(at);
        drop(ls);
        if let (Some(r), Some(i)) = (self.region(), rec) {
            r.free(crate::region::Kind::Listener, i);
            r.bump_config_gen();
        }
        self.discovery_changed();
        Some(l)
    }

    /// Delete a subsystem: Connect no longer finds it, its controllers fail (their
    /// connections close), its namespaces leave every queue (their devices are let go
    /// when their requests have finished). Waits up to `wait` for its controllers to
    /// go, then frees its records in the state region. `wake` is called once the
    /// controllers are failed, for the caller to make the reactors look at them.
    pub fn remove_subsystem(
        &self,
        nqn: &str,
        wait: std::time::Duration,
        wake: impl Fn(),
    ) -> Result<Arc<Subsystem>, NvmfError> {
        let mut subs = self.subsystems.write().expect("subsystem lock poisoned");
        let at = subs
            .iter()
            .position(|s| s.nqn == nqn)
            .ok_or_else(|| NvmfError::NoSuchSubsystem(nqn.to_string()))?;
        let s = subs.remove(at);
        drop(subs);
        s.mark_removed();
        self.discovery_changed();
        wake();
        let deadline = std::time::Instant::now() + wait;
        while !s.controllers().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if !s.controllers().is_empty() {
            tracing::warn!(
                nqn,
                "controllers of the deleted subsystem are still closing"
            );
        }
        s.unrecord();
        Ok(s)
    }

    /// The state region, if one is attached.
    pub fn region(&self) -> Option<&Arc<Region>> {
        self.region.get()
    }

    /// Record this target in a fresh region (owned by this process): every listener
    /// and subsystem it has; what is created from now on is recorded as it is created.
    pub fn attach_region(&self, region: Arc<Region>) -> Result<(), NvmfError> {
        record::check_options(&region, &self.opts)?;
        for (l, rec) in self
            .listeners
            .write()
            .expect("listener lock poisoned")
            .iter_mut()
        {
            *rec = Some(record::record_listener(&region, l)?);
        }
        for s in self.subsystems() {
            crate::subsystem::record_subsystem(&region, &s)?;
        }
        region.set_discovery_genctr(self.discovery_genctr());
        self.region
            .set(region)
            .map_err(|_| NvmfError::Invalid("a state region is already attached".into()))
    }

    /// Adoption: use the records of `region` this target was rebuilt from (see
    /// `restore::bind`), without writing anything.
    pub(crate) fn set_region(&self, region: Arc<Region>) -> Result<(), NvmfError> {
        self.region
            .set(region)
            .map_err(|_| NvmfError::Invalid("a state region is already attached".into()))
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners
            .read()
            .expect("listener lock poisoned")
            .iter()
            .map(|(l, _)| l.clone())
            .collect()
    }

    /// Generation counter of the discovery log.
    pub fn discovery_genctr(&self) -> u64 {
        self.genctr.load(Ordering::Acquire)
    }

    fn discovery_changed(&self) {
        let g = self.genctr.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(r) = self.region() {
            r.set_discovery_genctr(g);
            r.bump_config_gen();
        }
        for c in self.discovery.controllers() {
            c.notify_discovery_change();
        }
    }
}
