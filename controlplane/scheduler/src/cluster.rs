//! The scheduler's picture of the cluster: each pool's static facts, and the
//! ledger of what is placed on it (committed volumes and reservations made by
//! decisions not yet carried out). Usage is counted here, never read back from
//! pool status, so two decisions can never both spend the same bytes.

use std::collections::HashMap;

use lightpool_model::labels::Labels;
use lightpool_model::{PoolHealth, Provisioning, StoragePool};

/// What the scheduler needs to know of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    /// The pool's name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// The node's labels (zone, rack...).
    pub node_labels: Labels,
    /// The pool's own labels.
    pub pool_labels: Labels,
    /// Health from heartbeats and the agent.
    pub health: PoolHealth,
    /// Cordoned: no new volumes.
    pub unschedulable: bool,
    /// Usable bytes.
    pub capacity: u64,
    /// Provisioning limit in percent of the capacity (100: none).
    pub over_commit_percent: u32,
    /// The pool's own limit on remote volumes, if any.
    pub max_remote_volumes: Option<u32>,
}

impl PoolState {
    /// From a StoragePool object; `None` when it has no name. A pool without
    /// status has no capacity and Unknown health, so nothing is placed on it.
    pub fn from_pool(pool: &StoragePool) -> Option<Self> {
        let status = pool.status.clone().unwrap_or_default();
        Some(PoolState {
            name: pool.metadata.name.clone()?,
            node: pool.spec.node.name.clone(),
            node_labels: pool.spec.node.labels.clone(),
            pool_labels: pool.metadata.labels.clone().unwrap_or_default(),
            health: status.health,
            unschedulable: pool.spec.unschedulable,
            capacity: status.capacity_bytes,
            over_commit_percent: pool.spec.over_commit_percent,
            max_remote_volumes: pool.spec.max_remote_volumes,
        })
    }

    /// The most that may be provisioned on the pool (thin and thick together).
    pub fn provision_limit(&self) -> u64 {
        let oc = self.over_commit_percent.max(100);
        if oc == 100 {
            return self.capacity;
        }
        match self.capacity.checked_mul(u64::from(oc)) {
            Some(x) => x / 100,
            None => {
                u64::try_from(u128::from(self.capacity) * u128::from(oc) / 100).unwrap_or(u64::MAX)
            }
        }
    }

    /// A label of the node, or the node's name for the hostname key.
    pub fn domain(&self, topology_key: Option<&str>) -> Option<&str> {
        match topology_key {
            None | Some(lightpool_model::labels::HOSTNAME_LABEL) => Some(&self.node),
            Some(k) => self.node_labels.get(k).map(String::as_str),
        }
    }
}

/// What is placed on one pool (committed and reserved together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of thick volumes: they must fit in the capacity itself.
    pub thick_bytes: u64,
    /// Bytes of all volumes: they must fit in the provisioning limit.
    pub provisioned_bytes: u64,
    /// Volumes.
    pub volumes: u32,
    /// Volumes whose consumer is on another node.
    pub remote_volumes: u32,
}

/// Room left on a pool for a volume of this provisioning.
pub fn room(pool: &PoolState, usage: &Usage, provisioning: Provisioning) -> u64 {
    let by_limit = pool
        .provision_limit()
        .saturating_sub(usage.provisioned_bytes);
    match provisioning {
        Provisioning::Thin => by_limit,
        Provisioning::Thick => by_limit.min(pool.capacity.saturating_sub(usage.thick_bytes)),
    }
}

/// One placed (or reserved) volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index of its pool.
    pub pool: usize,
    /// Its size.
    pub size: u64,
    /// Thick or thin.
    pub provisioning: Provisioning,
    /// Whether its consumer is on another node.
    pub remote: bool,
    /// Its spread group.
    pub spread_group: Option<String>,
    /// Reserved by a decision not yet carried out (false once committed).
    pub reserved: bool,
}

/// The pools and the ledger of placements.
#[derive(Debug, Default)]
pub struct Cluster {
    pools: Vec<PoolState>,
    live: Vec<bool>,
    usage: Vec<Usage>,
    by_name: HashMap<String, usize>,
    entries: HashMap<String, Entry>,
    /// Spread group -> pool index -> replicas there.
    groups: HashMap<String, HashMap<usize, u32>>,
}

impl Cluster {
    /// Adds or updates a pool; usage stays with the pool across updates.
    pub fn upsert_pool(&mut self, pool: PoolState) {
        match self.by_name.get(&pool.name) {
            Some(&i) => {
                self.pools[i] = pool;
                self.live[i] = true;
            }
            None => {
                self.by_name.insert(pool.name.clone(), self.pools.len());
                self.pools.push(pool);
                self.live.push(true);
                self.usage.push(Usage::default());
            }
        }
    }

    /// Takes a pool out of consideration (its volumes stay in the ledger).
    pub fn remove_pool(&mut self, name: &str) {
        if let Some(&i) = self.by_name.get(name) {
            self.live[i] = false;
        }
    }

    /// Live pools with their index.
    pub fn pools(&self) -> impl Iterator<Item = (usize, &PoolState, &Usage)> {
        self.pools
            .iter()
            .zip(&self.usage)
            .enumerate()
            .filter(|(i, _)| self.live[*i])
            .map(|(i, (p, u))| (i, p, u))
    }

    /// A pool by index.
    pub fn pool(&self, i: usize) -> &PoolState {
        &self.pools[i]
    }

    /// A pool's index by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// A pool's usage by index.
    pub fn usage(&self, i: usize) -> &Usage {
        &self.usage[i]
    }

    /// The ledger entry of a volume.
    pub fn entry(&self, volume: &str) -> Option<&Entry> {
        self.entries.get(volume)
    }

    /// Every ledger entry.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Pools holding replicas of a spread group.
    pub fn group(&self, group: &str) -> Option<&HashMap<usize, u32>> {
        self.groups.get(group)
    }

    /// Adds a volume to the ledger. The caller checked that the name is new.
    pub fn add(&mut self, volume: String, entry: Entry) {
        let u = &mut self.usage[entry.pool];
        if entry.provisioning == Provisioning::Thick {
            u.thick_bytes += entry.size;
        }
        u.provisioned_bytes += entry.size;
        u.volumes += 1;
        u.remote_volumes += u32::from(entry.remote);
        if let Some(g) = &entry.spread_group {
            *self
                .groups
                .entry(g.clone())
                .or_default()
                .entry(entry.pool)
                .or_default() += 1;
        }
        self.entries.insert(volume, entry);
    }

    /// Removes a volume from the ledger, returning its entry.
    pub fn remove(&mut self, volume: &str) -> Option<Entry> {
        let entry = self.entries.remove(volume)?;
        let u = &mut self.usage[entry.pool];
        if entry.provisioning == Provisioning::Thick {
            u.thick_bytes -= entry.size;
        }
        u.provisioned_bytes -= entry.size;
        u.volumes -= 1;
        u.remote_volumes -= u32::from(entry.remote);
        if let Some(g) = &entry.spread_group {
            if let Some(pools) = self.groups.get_mut(g) {
                if let Some(n) = pools.get_mut(&entry.pool) {
                    *n -= 1;
                    if *n == 0 {
                        pools.remove(&entry.pool);
                    }
                }
                if pools.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
        Some(entry)
    }

    /// Marks a reservation as carried out.
    pub fn commit(&mut self, volume: &str) -> bool {
        match self.entries.get_mut(volume) {
            Some(e) => {
                e.reserved = false;
                true
            }
            None => false,
        }
    }
}
