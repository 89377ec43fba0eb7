//! What the agent needs of its node's dataplane, as a trait: the management API
//! (gRPC over the target's Unix socket) implements it in the daemon wiring; an
//! in-memory one ([`MemoryDataplane`]) serves the tests and the simulator.
//!
//! Every call is idempotent where the agent relies on it: creating what exists
//! with the same shape succeeds, deleting what is gone succeeds. A create that
//! meets an object of a different shape fails ([`DataplaneError::Mismatch`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use lightpool_model::volume::AnaState;
use lightpool_model::MigrationProgress;

/// What went wrong in the dataplane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// The dataplane could not be reached.
    #[error("dataplane unavailable: {0}")]
    Unavailable(String),
    /// The pool has no room for the volume.
    #[error("pool has {free} bytes free, the volume needs {needed}")]
    NoSpace { needed: u64, free: u64 },
    /// An object exists with another shape than asked for.
    #[error("{0}")]
    Mismatch(String),
    /// The dataplane refused the request.
    #[error("dataplane refused: {0}")]
    Refused(String),
}

/// The pool's size and what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolInfo {
    /// Bytes the pool holds.
    pub capacity: u64,
    /// Bytes not yet given to volumes.
    pub free: u64,
    /// The pool's device lost its redundancy (a RAID1 member is missing or being
    /// recovered): it serves, but one more failure loses data.
    pub degraded: bool,
    /// No device holds the pool's data: every I/O fails.
    pub failed: bool,
}

/// A pool volume: a block device carved from the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVolume {
    /// The volume's name (the Volume object's).
    pub name: String,
    /// The block device to export.
    pub device: String,
    /// Its size.
    pub size: u64,
    /// Exported to this node's own kernel through ublk (a consumer on this node
    /// staged it locally).
    pub ublk: bool,
}

/// A pool snapshot: a read-only point-in-time copy of a pool volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The snapshot's name (the Snapshot object's).
    pub name: String,
    /// The volume's size when it was taken.
    pub size: u64,
    /// When it was taken, seconds since the epoch.
    pub created: u64,
}

/// An exported subsystem and its namespaces (nsid -> device).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Export {
    /// Namespaces by NSID: the block device each serves.
    pub namespaces: BTreeMap<u32, String>,
    /// The controller IDs it hands out (first, last).
    pub cntlid: (u32, u32),
    /// Controllers of hosts connected now.
    pub controllers: u32,
}

/// A live migration to start on the source: namespace `nsid` of `nqn` copied to
/// namespace `dest_nsid` of `dest_nqn` at `dest_address` (HOST:PORT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStart {
    /// The moving namespace's subsystem.
    pub nqn: String,
    /// Its NSID.
    pub nsid: u32,
    /// The destination's NVMe/TCP listener, HOST:PORT.
    pub dest_address: String,
    /// The destination's subsystem (the pipe).
    pub dest_nqn: String,
    /// Its namespace.
    pub dest_nsid: u32,
    /// Bytes per second the copy reads at most.
    pub rate_limit: Option<u64>,
}

/// A migration as the source's dataplane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMigration {
    /// Where the copy is.
    pub progress: MigrationProgress,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// The node's dataplane as the agent sees it.
pub trait Dataplane: Send + Sync + 'static {
    /// The pool's capacity and free space (creates the pool on first use).
    fn pool(&self) -> impl Future<Output = Result<PoolInfo, DataplaneError>> + Send;

    /// Creates the pool volume (or finds it, of this size).
    fn create_volume(
        &self,
        name: &str,
        size: u64,
        thin: bool,
    ) -> impl Future<Output = Result<PoolVolume, DataplaneError>> + Send;

    /// Grows the pool volume to `size` bytes (fine if it has them already); a
    /// served volume's namespace grows with it and hosts are told.
    /// [`DataplaneError::NoSpace`] when the pool cannot give the added bytes.
    fn grow_volume(
        &self,
        name: &str,
        size: u64,
    ) -> impl Future<Output = Result<PoolVolume, DataplaneError>> + Send;

    /// Deletes the pool volume; fine if it is not there.
    fn delete_volume(&self, name: &str) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Takes snapshot `name` of pool volume `volume` (or finds the snapshot of
    /// that name already taken).
    fn create_snapshot(
        &self,
        volume: &str,
        name: &str,
    ) -> impl Future<Output = Result<PoolSnapshot, DataplaneError>> + Send;

    /// Deletes the snapshot; fine if it is not there. [`DataplaneError::Refused`]
    /// while more than one volume depends on it (the pool hands a snapshot's data
    /// to its one clone, never to two).
    fn delete_snapshot(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// The pool's snapshots.
    fn snapshots(&self) -> impl Future<Output = Result<Vec<PoolSnapshot>, DataplaneError>> + Send;

    /// Creates pool volume `name` as a writable clone of snapshot `snapshot` (or
    /// finds the clone of that name).
    fn clone_snapshot(
        &self,
        snapshot: &str,
        name: &str,
    ) -> impl Future<Output = Result<PoolVolume, DataplaneError>> + Send;

    /// The pool volumes there are.
    fn volumes(&self) -> impl Future<Output = Result<Vec<PoolVolume>, DataplaneError>> + Send;

    /// The subsystems there are, by NQN.
    fn exports(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, Export>, DataplaneError>> + Send;

    /// Creates the subsystem (any host may connect); fine if it exists.
    fn create_subsystem(
        &self,
        nqn: &str,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Deletes the subsystem with its namespaces; fine if it is not there.
    fn delete_subsystem(
        &self,
        nqn: &str,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Adds namespace `nsid` serving `device` to the subsystem, with `uuid` as its
    /// namespace UUID when given (hosts find the volume by it).
    fn add_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        device: &str,
        uuid: Option<&str>,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Makes sure the target listens on TCP `address:port`.
    fn ensure_listener(
        &self,
        address: &str,
        port: u16,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Creates the subsystem handing out controller IDs `cntlid` (first, last);
    /// fine if it exists with that range, [`DataplaneError::Mismatch`] with another.
    fn create_subsystem_with(
        &self,
        nqn: &str,
        cntlid: (u32, u32),
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Sets ANA group `group` of the subsystem to `state` (its hosts are told).
    fn set_ana_state(
        &self,
        nqn: &str,
        group: u32,
        state: AnaState,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;

    /// Starts migrating a served namespace (or finds it migrating to the same
    /// place: then its state is the answer).
    fn start_migration(
        &self,
        m: &MigrationStart,
    ) -> impl Future<Output = Result<SourceMigration, DataplaneError>> + Send;

    /// The migration of namespace `nsid` of `nqn`, if one runs or ended unstopped.
    fn migration(
        &self,
        nqn: &str,
        nsid: u32,
    ) -> impl Future<Output = Result<Option<SourceMigration>, DataplaneError>> + Send;

    /// Ends the migration (cancels the copy if it runs); fine if there is none.
    fn stop_migration(
        &self,
        nqn: &str,
        nsid: u32,
    ) -> impl Future<Output = Result<(), DataplaneError>> + Send;
}

#[derive(Debug, Default)]
struct Memory {
    capacity: u64,
    volumes: BTreeMap<String, PoolVolume>,
    snapshots: BTreeMap<String, MemorySnapshot>,
    exports: BTreeMap<String, Export>,
    ana: BTreeMap<(String, u32), AnaState>,
    migrations: BTreeMap<(String, u32), MemoryMigration>,
    listeners: BTreeSet<(String, u16)>,
    down: bool,
    degraded: bool,
    failed: bool,
    calls: Vec<String>,
}

/// A migration the in-memory source "copies": a third of the volume per look.
#[derive(Debug, Clone)]
struct MemoryMigration {
    start: MigrationStart,
    progress: MigrationProgress,
    error: Option<String>,
}

/// As in the pool: a snapshot takes the volume's record, and the volume carries
/// on as its clone; so a snapshot's clones are volumes or later snapshots, and
/// deleting a snapshot with one clone hands its place in the chain to that clone.
#[derive(Debug)]
struct MemorySnapshot {
    snapshot: PoolSnapshot,
    /// What depends on it directly: the volume it was taken of (until that is
    /// snapshotted again), the clones made of it, later snapshots of them.
    clones: BTreeSet<String>,
}

/// An in-memory dataplane: a pool of `capacity` bytes, and switches to make it
/// unreachable or to lose objects behind the agent's back (drift).
#[derive(Debug, Clone, Default)]
pub struct MemoryDataplane {
    inner: Arc<Mutex<Memory>>,
}

impl MemoryDataplane {
    /// A dataplane whose pool holds `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        let m = MemoryDataplane::default();
        m.lock().capacity = capacity;
        m
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // Each method finishes its change before it could panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mutating call, logged.
    fn call(&self, what: String) -> Result<MutexGuard<'_, Memory>, DataplaneError> {
        let mut m = self.read()?;
        m.calls.push(what);
        Ok(m)
    }

    /// A reading call.
    fn read(&self) -> Result<MutexGuard<'_, Memory>, DataplaneError> {
        let m = self.lock();
        if m.down {
            return Err(DataplaneError::Unavailable("connection refused".into()));
        }
        Ok(m)
    }

    /// Makes every call fail (the target stopped) or work again.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// The mutating calls made so far ("create_volume v1", ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The subsystems' NQNs.
    pub fn nqns(&self) -> Vec<String> {
        self.lock().exports.keys().cloned().collect()
    }

    /// The pool volumes' names.
    pub fn volume_names(&self) -> Vec<String> {
        self.lock().volumes.keys().cloned().collect()
    }

    /// The snapshots' names.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.lock().snapshots.keys().cloned().collect()
    }

    /// The listeners.
    pub fn listeners(&self) -> Vec<(String, u16)> {
        self.lock().listeners.iter().cloned().collect()
    }

    /// What the pool's device reports: lost redundancy, or no copy of the data.
    pub fn set_pool_health(&self, degraded: bool, failed: bool) {
        let mut m = self.lock();
        m.degraded = degraded;
        m.failed = failed;
    }

    /// The ANA state of a subsystem's group, as last set (None: never set, which
    /// a target serves as optimized).
    pub fn ana_state(&self, nqn: &str, group: u32) -> Option<AnaState> {
        self.lock().ana.get(&(nqn.to_string(), group)).copied()
    }

    /// The migrations there are (NQN of the moving namespace, its destination).
    pub fn migrations(&self) -> Vec<(String, MigrationStart)> {
        self.lock()
            .migrations
            .iter()
            .map(|((n, _), m)| (n.clone(), m.start.clone()))
            .collect()
    }

    /// Makes every running migration fail (the destination died, the network
    /// between the targets was cut).
    pub fn fail_migrations(&self, why: &str) {
        for m in self.lock().migrations.values_mut() {
            if m.progress.state != "synced" {
                m.progress.state = "failed".into();
                m.error = Some(why.into());
            }
        }
    }

    /// Sets how many hosts' controllers are connected to subsystem `nqn`.
    pub fn set_controllers(&self, nqn: &str, n: u32) {
        if let Some(e) = self.lock().exports.get_mut(nqn) {
            e.controllers = n;
        }
    }

    /// Marks pool volume `name` as exported to this node's kernel through ublk.
    pub fn set_ublk(&self, name: &str, on: bool) {
        if let Some(v) = self.lock().volumes.get_mut(name) {
            v.ublk = on;
        }
    }

    /// Removes a subsystem behind the agent's back (as an operator's mistake or
    /// a restarted target without saved state would).
    pub fn lose_subsystem(&self, nqn: &str) {
        self.lock().exports.remove(nqn);
    }
}

impl Dataplane for MemoryDataplane {
    async fn pool(&self) -> Result<PoolInfo, DataplaneError> {
        let m = self.read()?;
        let used: u64 = m.volumes.values().map(|v| v.size).sum();
        Ok(PoolInfo {
            capacity: m.capacity,
            free: m.capacity.saturating_sub(used),
            degraded: m.degraded,
            failed: m.failed,
        })
    }

    async fn create_volume(
        &self,
        name: &str,
        size: u64,
        _thin: bool,
    ) -> Result<PoolVolume, DataplaneError> {
        let mut m = self.call(format!("create_volume {name}"))?;
        if let Some(v) = m.volumes.get(name) {
            return if v.size == size {
                Ok(v.clone())
            } else {
                Err(DataplaneError::Mismatch(format!(
                    "pool volume {name} exists with {} bytes, not {size}",
                    v.size
                )))
            };
        }
        let used: u64 = m.volumes.values().map(|v| v.size).sum();
        let free = m.capacity.saturating_sub(used);
        if size > free {
            return Err(DataplaneError::NoSpace { needed: size, free });
        }
        let v = PoolVolume {
            name: name.into(),
            device: format!("lpv-{name}"),
            size,
            ublk: false,
        };
        m.volumes.insert(name.into(), v.clone());
        Ok(v)
    }

    async fn grow_volume(&self, name: &str, size: u64) -> Result<PoolVolume, DataplaneError> {
        let mut m = self.call(format!("grow_volume {name} {size}"))?;
        let used: u64 = m.volumes.values().map(|v| v.size).sum();
        let free = m.capacity.saturating_sub(used);
        let v = m
            .volumes
            .get_mut(name)
            .ok_or_else(|| DataplaneError::Refused(format!("no pool volume {name}")))?;
        if size < v.size {
            return Err(DataplaneError::Refused(format!(
                "pool volume {name} has {} bytes: it can only grow",
                v.size
            )));
        }
        if size - v.size > free {
            return Err(DataplaneError::NoSpace {
                needed: size - v.size,
                free,
            });
        }
        v.size = size;
        Ok(v.clone())
    }

    async fn delete_volume(&self, name: &str) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("delete_volume {name}"))?;
        let device = format!("lpv-{name}");
        if m.exports
            .values()
            .any(|e| e.namespaces.values().any(|d| *d == device))
        {
            return Err(DataplaneError::Refused(format!(
                "{device} is still exported: remove its namespace first"
            )));
        }
        if m.volumes.contains_key(name)
            && m.migrations.values().any(|x| {
                m.exports
                    .get(&x.start.nqn)
                    .is_some_and(|e| e.namespaces.values().any(|d| *d == device))
            })
        {
            return Err(DataplaneError::Refused(format!("{device} is migrating")));
        }
        m.volumes.remove(name);
        for s in m.snapshots.values_mut() {
            s.clones.remove(name);
        }
        Ok(())
    }

    async fn create_snapshot(
        &self,
        volume: &str,
        name: &str,
    ) -> Result<PoolSnapshot, DataplaneError> {
        let mut m = self.call(format!("create_snapshot {volume} {name}"))?;
        if let Some(s) = m.snapshots.get(name) {
            return Ok(s.snapshot.clone());
        }
        if m.volumes.contains_key(name) {
            return Err(DataplaneError::Mismatch(format!(
                "{name} exists already and is a volume, not a snapshot: pick another name"
            )));
        }
        let size = m
            .volumes
            .get(volume)
            .map(|v| v.size)
            .ok_or_else(|| DataplaneError::Refused(format!("no pool volume {volume}")))?;
        // The volume's record becomes the snapshot: what depended on it
        // depends on the snapshot now.
        for s in m.snapshots.values_mut() {
            if s.clones.remove(volume) {
                s.clones.insert(name.to_string());
            }
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let snapshot = PoolSnapshot {
            name: name.into(),
            size,
            created,
        };
        m.snapshots.insert(
            name.into(),
            MemorySnapshot {
                snapshot: snapshot.clone(),
                clones: BTreeSet::from([volume.to_string()]),
            },
        );
        Ok(snapshot)
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("delete_snapshot {name}"))?;
        if let Some(s) = m.snapshots.get(name) {
            if s.clones.len() > 1 {
                return Err(DataplaneError::Refused(format!(
                    "snapshot {name} has {} clones ({}): delete or inflate all but one",
                    s.clones.len(),
                    s.clones.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if let Some(gone) = m.snapshots.remove(name) {
            // Its one clone takes its place in the chain.
            for s in m.snapshots.values_mut() {
                if s.clones.remove(name) {
                    s.clones.extend(gone.clones.iter().cloned());
                }
            }
        }
        Ok(())
    }

    async fn snapshots(&self) -> Result<Vec<PoolSnapshot>, DataplaneError> {
        let m = self.read()?;
        Ok(m.snapshots.values().map(|s| s.snapshot.clone()).collect())
    }

    async fn clone_snapshot(
        &self,
        snapshot: &str,
        name: &str,
    ) -> Result<PoolVolume, DataplaneError> {
        let mut m = self.call(format!("clone_snapshot {snapshot} {name}"))?;
        let size = m
            .snapshots
            .get(snapshot)
            .map(|s| s.snapshot.size)
            .ok_or_else(|| DataplaneError::Refused(format!("no snapshot {snapshot}")))?;
        if let Some(v) = m.volumes.get(name) {
            let is_clone = m
                .snapshots
                .get(snapshot)
                .is_some_and(|s| s.clones.contains(name));
            return if is_clone {
                Ok(v.clone())
            } else {
                Err(DataplaneError::Mismatch(format!(
                    "pool volume {name} exists and is not a clone of {snapshot}"
                )))
            };
        }
        let v = PoolVolume {
            name: name.into(),
            device: format!("lpv-{name}"),
            size,
            ublk: false,
        };
        m.volumes.insert(name.into(), v.clone());
        if let Some(s) = m.snapshots.get_mut(snapshot) {
            s.clones.insert(name.into());
        }
        Ok(v)
    }

    async fn volumes(&self) -> Result<Vec<PoolVolume>, DataplaneError> {
        let m = self.read()?;
        Ok(m.volumes.values().cloned().collect())
    }

    async fn exports(&self) -> Result<BTreeMap<String, Export>, DataplaneError> {
        let m = self.read()?;
        Ok(m.exports.clone())
    }

    async fn create_subsystem(&self, nqn: &str) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("create_subsystem {nqn}"))?;
        // One made before with another range (it came by migration) stays.
        m.exports.entry(nqn.into()).or_insert_with(|| Export {
            namespaces: BTreeMap::new(),
            cntlid: lightpool_model::migration::CNTLID_LOW,
            controllers: 0,
        });
        Ok(())
    }

    async fn delete_subsystem(&self, nqn: &str) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("delete_subsystem {nqn}"))?;
        m.exports.remove(nqn);
        m.ana.retain(|(n, _), _| n != nqn);
        if m.migrations.keys().any(|(n, _)| n == nqn) {
            // As the target: a migrating namespace's subsystem goes with its copy.
            m.migrations.retain(|(n, _), _| n != nqn);
        }
        Ok(())
    }

    async fn add_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        device: &str,
        _uuid: Option<&str>,
    ) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("add_namespace {nqn} {nsid}"))?;
        if !m.volumes.values().any(|v| v.device == device) {
            return Err(DataplaneError::Refused(format!("no block device {device}")));
        }
        let e = m
            .exports
            .get_mut(nqn)
            .ok_or_else(|| DataplaneError::Refused(format!("no subsystem {nqn}")))?;
        match e.namespaces.get(&nsid) {
            Some(d) if d == device => Ok(()),
            Some(d) => Err(DataplaneError::Mismatch(format!(
                "namespace {nsid} of {nqn} serves {d}, not {device}"
            ))),
            None => {
                e.namespaces.insert(nsid, device.into());
                Ok(())
            }
        }
    }

    async fn ensure_listener(&self, address: &str, port: u16) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("ensure_listener {address}:{port}"))?;
        m.listeners.insert((address.into(), port));
        Ok(())
    }

    async fn create_subsystem_with(
        &self,
        nqn: &str,
        cntlid: (u32, u32),
    ) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("create_subsystem {nqn}"))?;
        let e = m.exports.entry(nqn.into()).or_insert_with(|| Export {
            namespaces: BTreeMap::new(),
            cntlid,
            controllers: 0,
        });
        if e.cntlid != cntlid {
            return Err(DataplaneError::Mismatch(format!(
                "subsystem {nqn} hands out controller IDs {}-{}, not {}-{}",
                e.cntlid.0, e.cntlid.1, cntlid.0, cntlid.1
            )));
        }
        Ok(())
    }

    async fn set_ana_state(
        &self,
        nqn: &str,
        group: u32,
        state: AnaState,
    ) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("set_ana_state {nqn} {group} {state:?}"))?;
        if !m.exports.contains_key(nqn) {
            return Err(DataplaneError::Refused(format!("no subsystem {nqn}")));
        }
        m.ana.insert((nqn.into(), group), state);
        Ok(())
    }

    async fn start_migration(&self, s: &MigrationStart) -> Result<SourceMigration, DataplaneError> {
        let mut m = self.call(format!("start_migration {} {}", s.nqn, s.dest_address))?;
        let key = (s.nqn.clone(), s.nsid);
        if let Some(x) = m.migrations.get(&key) {
            return if x.start == *s {
                Ok(SourceMigration {
                    progress: x.progress.clone(),
                    error: x.error.clone(),
                })
            } else {
                Err(DataplaneError::Mismatch(format!(
                    "namespace {} of {} is migrating to {} already",
                    s.nsid, s.nqn, x.start.dest_address
                )))
            };
        }
        let device = m
            .exports
            .get(&s.nqn)
            .and_then(|e| e.namespaces.get(&s.nsid))
            .cloned()
            .ok_or_else(|| {
                DataplaneError::Refused(format!("no namespace {} of {}", s.nsid, s.nqn))
            })?;
        let total = m
            .volumes
            .values()
            .find(|v| v.device == device)
            .map_or(0, |v| v.size);
        let x = MemoryMigration {
            start: s.clone(),
            progress: MigrationProgress {
                state: "copying".into(),
                round: 1,
                total_bytes: total,
                ..MigrationProgress::default()
            },
            error: None,
        };
        m.migrations.insert(key, x.clone());
        Ok(SourceMigration {
            progress: x.progress,
            error: None,
        })
    }

    async fn migration(
        &self,
        nqn: &str,
        nsid: u32,
    ) -> Result<Option<SourceMigration>, DataplaneError> {
        let mut m = self.read()?;
        let Some(x) = m.migrations.get_mut(&(nqn.to_string(), nsid)) else {
            return Ok(None);
        };
        let p = &mut x.progress;
        if p.state == "copying" {
            p.copied_bytes = (p.copied_bytes + p.total_bytes.div_ceil(3)).min(p.total_bytes);
            p.elapsed_ms += 1000;
            if p.copied_bytes == p.total_bytes {
                p.state = "synced".into();
                p.eta_ms = Some(0);
            } else {
                p.dirty_bytes = p.total_bytes - p.copied_bytes;
                p.eta_ms = Some(1000);
            }
        }
        Ok(Some(SourceMigration {
            progress: x.progress.clone(),
            error: x.error.clone(),
        }))
    }

    async fn stop_migration(&self, nqn: &str, nsid: u32) -> Result<(), DataplaneError> {
        let mut m = self.call(format!("stop_migration {nqn} {nsid}"))?;
        m.migrations.remove(&(nqn.to_string(), nsid));
        Ok(())
    }
}
