//! Volume placement, after the Kubernetes scheduler framework: every live pool
//! goes through the filter plugins (each yes or no); the pools that pass are rated
//! by the score plugins (0 to 100 each, weighted); the best wins. Plugins and
//! weights come from a profile ([`SchedulerConfig`], TOML); each plugin is one
//! file under `plugins/`.
//!
//! A decision reserves the volume's bytes in the ledger ([`cluster::Cluster`])
//! under the same lock that made it, so concurrent creates can never spend the
//! same capacity twice. The [`Reservation`] is committed once the volume exists, or
//! cancelled (also by being dropped) when creating it failed.
//!
//! When no pool fits, the error names each pool and why it refused, in words
//! ([`explain`]).

pub mod cluster;
pub mod config;
pub mod explain;
pub mod plugin;
pub mod plugins;
pub mod request;

use std::sync::{Arc, Mutex, MutexGuard};

use lightpool_model::volume::PoolRejection;
use lightpool_model::{StoragePool, Volume};

pub use cluster::{Cluster, PoolState, Usage};
pub use config::{ConfigError, Profile, SchedulerConfig};
pub use explain::Unschedulable;
pub use plugin::{Decision, FilterPlugin, PoolView, ScorePlugin};
pub use request::VolumeRequest;

use cluster::Entry;

/// Why a volume was not placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No pool passed every filter.
    #[error("{0}")]
    Unschedulable(Unschedulable),
    /// The volume is already in the ledger (a retried decision): it stays where it is.
    #[error("volume '{volume}' is already placed on pool '{pool}'")]
    AlreadyPlaced { volume: String, pool: String },
    /// A recorded volume names a pool the scheduler does not know.
    #[error("pool '{pool}' of volume '{volume}' is not known")]
    UnknownPool { volume: String, pool: String },
    /// The volume is not in the ledger (not placed).
    #[error("volume '{volume}' is not placed")]
    NotPlaced { volume: String },
    /// Its pool cannot promise the bytes a grow adds.
    #[error("pool '{pool}' has room for {room} more bytes, growing volume '{volume}' to {size} bytes needs {more}")]
    NoRoomToGrow {
        volume: String,
        pool: String,
        size: u64,
        more: u64,
        room: u64,
    },
}

/// Where a volume goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The pool.
    pub pool: String,
    /// Its node.
    pub node: String,
    /// Whether it is the consumer's node.
    pub local: bool,
    /// The weighted score that won.
    pub score: u64,
}

/// The scheduler: a profile and the cluster with its ledger. Cheap to clone
/// (shared state).
#[derive(Clone)]
pub struct Scheduler {
    profile: Arc<Profile>,
    cluster: Arc<Mutex<Cluster>>,
}

fn lock(c: &Mutex<Cluster>) -> MutexGuard<'_, Cluster> {
    // Every change to the cluster is complete before the lock is let go, so a
    // panic elsewhere while holding it leaves nothing half-done.
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// A placement decided and its capacity held. Dropping it without `commit`
/// gives the capacity back.
#[must_use = "a reservation dropped is a reservation cancelled"]
pub struct Reservation {
    cluster: Arc<Mutex<Cluster>>,
    volume: String,
    placement: Placement,
    done: bool,
}

impl Reservation {
    /// Where the volume goes.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The volume exists: its bytes stay accounted until `Scheduler::release`.
    pub fn commit(mut self) -> Placement {
        lock(&self.cluster).commit(&self.volume);
        self.done = true;
        self.placement.clone()
    }

    /// Creating it failed: give the capacity back.
    pub fn cancel(self) {}
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            let mut c = lock(&self.cluster);
            if c.entry(&self.volume).is_some_and(|e| e.reserved) {
                c.remove(&self.volume);
            }
        }
    }
}

impl Scheduler {
    /// A scheduler with the profile's plugins and no pools.
    pub fn new(config: &SchedulerConfig) -> Result<Self, ConfigError> {
        Ok(Scheduler {
            profile: Arc::new(config.build()?),
            cluster: Arc::new(Mutex::new(Cluster::default())),
        })
    }

    /// Adds or updates a pool.
    pub fn upsert_pool(&self, pool: PoolState) {
        lock(&self.cluster).upsert_pool(pool);
    }

    /// Adds or updates a pool from its object.
    pub fn sync_pool(&self, pool: &StoragePool) {
        if let Some(p) = PoolState::from_pool(pool) {
            self.upsert_pool(p);
        }
    }

    /// Takes a pool out of consideration.
    pub fn remove_pool(&self, name: &str) {
        lock(&self.cluster).remove_pool(name);
    }

    /// Records a volume that already lives on a pool (rebuilding the ledger after a
    /// restart). Recording the same volume again changes nothing.
    pub fn record(&self, req: &VolumeRequest, pool: &str) -> Result<(), ScheduleError> {
        let mut c = lock(&self.cluster);
        if c.entry(&req.name).is_some() {
            return Ok(());
        }
        let i = c.index(pool).ok_or_else(|| ScheduleError::UnknownPool {
            volume: req.name.clone(),
            pool: pool.to_string(),
        })?;
        let remote = req.is_remote_on(&c.pool(i).node);
        c.add(req.name.clone(), entry(req, i, remote, false));
        Ok(())
    }

    /// Records a Volume object whose status names its pool; false when it has none
    /// (not placed yet) or its spec is invalid.
    pub fn record_volume(&self, v: &Volume) -> Result<bool, ScheduleError> {
        let (Some(name), Some(pool)) = (
            v.metadata.name.as_deref(),
            v.status.as_ref().and_then(|s| s.pool.as_deref()),
        ) else {
            return Ok(false);
        };
        let Ok(mut req) = VolumeRequest::from_spec(name, &v.spec) else {
            return Ok(false);
        };
        if let Some(size) = v.status.as_ref().and_then(|s| s.size_bytes) {
            req.size = size;
        }
        self.record(&req, pool).map(|()| true)
    }

    /// Grows a placed volume's share of its pool to `size` bytes, when the pool can
    /// promise the difference (its provisioning limit, and for a thick volume its
    /// free capacity); a size not above the recorded one changes nothing.
    pub fn grow(&self, volume: &str, size: u64) -> Result<(), ScheduleError> {
        let mut c = lock(&self.cluster);
        let e = c
            .entry(volume)
            .cloned()
            .ok_or_else(|| ScheduleError::NotPlaced {
                volume: volume.to_string(),
            })?;
        if size <= e.size {
            return Ok(());
        }
        let more = size - e.size;
        let room = cluster::room(c.pool(e.pool), c.usage(e.pool), e.provisioning);
        if more > room {
            return Err(ScheduleError::NoRoomToGrow {
                volume: volume.to_string(),
                pool: c.pool(e.pool).name.clone(),
                size,
                more,
                room,
            });
        }
        c.remove(volume);
        c.add(volume.to_string(), Entry { size, ..e });
        Ok(())
    }

    /// Takes a grow back: the volume's share of its pool returns to `size` bytes
    /// when it is above; true when it changed.
    pub fn shrink_record(&self, volume: &str, size: u64) -> bool {
        let mut c = lock(&self.cluster);
        match c.entry(volume).cloned() {
            Some(e) if e.size > size => {
                c.remove(volume);
                c.add(volume.to_string(), Entry { size, ..e });
                true
            }
            _ => false,
        }
    }

    /// Forgets a volume (deleted); true when it was known.
    pub fn release(&self, volume: &str) -> bool {
        lock(&self.cluster).remove(volume).is_some()
    }

    /// A pool's usage, reservations included.
    pub fn usage(&self, pool: &str) -> Option<Usage> {
        let c = lock(&self.cluster);
        c.index(pool).map(|i| *c.usage(i))
    }

    /// Reads the cluster under the lock.
    pub fn with_cluster<R>(&self, f: impl FnOnce(&Cluster) -> R) -> R {
        f(&lock(&self.cluster))
    }

    /// Places a volume and reserves its capacity, or says why no pool fits.
    pub fn schedule(&self, req: &VolumeRequest) -> Result<Reservation, ScheduleError> {
        let mut c = lock(&self.cluster);
        if let Some(e) = c.entry(&req.name) {
            return Err(ScheduleError::AlreadyPlaced {
                volume: req.name.clone(),
                pool: c.pool(e.pool).name.clone(),
            });
        }
        let (i, score) = decide(&self.profile, &c, req).map_err(ScheduleError::Unschedulable)?;
        let pool = c.pool(i);
        let placement = Placement {
            pool: pool.name.clone(),
            node: pool.node.clone(),
            local: req.consumer_node.as_deref() == Some(pool.node.as_str()),
            score,
        };
        let remote = req.is_remote_on(&pool.node);
        c.add(req.name.clone(), entry(req, i, remote, true));
        drop(c);
        Ok(Reservation {
            cluster: self.cluster.clone(),
            volume: req.name.clone(),
            placement,
            done: false,
        })
    }
}

fn entry(req: &VolumeRequest, pool: usize, remote: bool, reserved: bool) -> Entry {
    Entry {
        pool,
        size: req.size,
        provisioning: req.provisioning,
        remote,
        spread_group: req.spread_group.clone(),
        reserved,
    }
}

/// One decision over a cluster: the index of the winning pool and its score, or
/// each pool's reason to refuse. Ties go to the pool listed first.
pub fn decide(
    profile: &Profile,
    cluster: &Cluster,
    req: &VolumeRequest,
) -> Result<(usize, u64), Unschedulable> {
    let d = Decision::new(req, cluster, profile.max_remote_volumes);
    let mut best: Option<(usize, u64)> = None;
    for (i, pool, usage) in cluster.pools() {
        let view = PoolView { pool, usage };
        if !profile.filters.iter().all(|f| f.filter(&d, &view)) {
            continue;
        }
        let score: u64 = profile
            .scores
            .iter()
            .map(|(s, w)| u64::from(s.score(&d, &view).min(100)) * u64::from(*w))
            .sum();
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.ok_or_else(|| explain_all(profile, cluster, &d))
}

fn explain_all(profile: &Profile, cluster: &Cluster, d: &Decision<'_>) -> Unschedulable {
    let mut all = Vec::new();
    for (_, pool, usage) in cluster.pools() {
        let view = PoolView { pool, usage };
        if let Some(f) = profile.filters.iter().find(|f| !f.filter(d, &view)) {
            all.push(PoolRejection {
                pool: pool.name.clone(),
                node: pool.node.clone(),
                plugin: f.name().to_string(),
                reason: f.reason(d, &view),
            });
        }
    }
    explain::unschedulable(all)
}
