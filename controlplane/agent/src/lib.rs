//! The node agent: one per storage node, beside its dataplane.
//!
//! Each [`Agent::tick`] ([`Agent::run`]: at once when a Volume changes, and at
//! a resync interval; the heartbeat on a timer of its own):
//! 1. renews the node's heartbeat Lease (`lightpool-node-<node>`) when due
//!    (every 5 s by default); the controller marks the pool Unknown after three
//!    missed renewals;
//! 2. publishes the node's StoragePool: its spec (node, address, devices) by
//!    apply, its capacity, free space and health by status patch;
//! 3. reconciles the Volumes placed on its pool into dataplane objects, each
//!    step idempotent: pool volume, subsystem (the volume's NQN), namespace 1,
//!    the node's listener; then the Volume's status gets the connect parameters
//!    and phase Ready. What was missing for a Ready volume is reported as drift
//!    (condition `Drift`) and recreated. A volume whose granted size
//!    (`status.sizeBytes`) is above its pool volume's is grown (GrowVolume: a
//!    served namespace grows with it and its hosts are told); the served size is
//!    reported as `status.capacityBytes`, a failed grow on the `Resized` condition;
//! 4. tears down the volumes being deleted (subsystem, then pool volume) and then
//!    lets go of its finalizer, and deletes dataplane objects no Volume claims
//!    (what a crash between two steps left behind);
//! 5. does this node's side of the live migrations that name it (see
//!    `migrations`): a volume migrating is left to its migration;
//! 6. takes and deletes the pool snapshots of its Snapshots (see `snapshots`).
//!    A volume's snapshots outlive it: deleting a volume leaves them Ready, to
//!    restore from (CSI's contract: a VolumeSnapshot does not depend on its PVC).
//!
//! The agent adds its finalizer before it creates anything for a volume, so a
//! Volume is never gone while dataplane objects for it remain.

mod dataplane;
mod grpc;
mod migrations;
mod reconcile;
mod snapshots;

use std::time::Duration;

use lightpool_model::pool::PoolDevice;
use lightpool_model::{
    set_condition, Condition, ConditionStatus, Labels, NodeInfo, PoolHealth, PoolLayout,
    StoragePool, StoragePoolSpec, StoragePoolStatus, Volume,
};
use lightpool_store::{Claim, LeaseClaim, Store, StoreError};
use tokio::time::Instant;

pub use dataplane::{
    Dataplane, DataplaneError, Export, MemoryDataplane, MigrationStart, PoolInfo, PoolSnapshot,
    PoolVolume, SourceMigration,
};
pub use grpc::ApiDataplane;
pub use migrations::{migrating, MigrationOutcome};
pub use reconcile::{clone_source, VolumeOutcome};
pub use snapshots::{SnapshotOutcome, AGENT_REPORTER};

/// The agent's finalizer on the Volumes it made dataplane objects for.
pub const AGENT_FINALIZER: &str = "lightpool.io/agent-cleanup";

/// The heartbeat Lease of `node`.
pub fn node_lease(node: &str) -> String {
    format!("lightpool-node-{node}")
}

/// What went wrong in a tick.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dataplane failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// Another agent renews this node's heartbeat.
    #[error(
        "the heartbeat of node '{node}' is held by '{holder}': is a second agent running for it?"
    )]
    DuplicateAgent { node: String, holder: String },
}

/// What the agent serves and how.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node's name.
    pub node: String,
    /// The StoragePool's name.
    pub pool: String,
    /// The address hosts connect to (NVMe/TCP).
    pub address: String,
    /// Its port.
    pub port: u16,
    /// The node's labels (zone, rack).
    pub node_labels: Labels,
    /// The devices the pool is made of.
    pub devices: Vec<PoolDevice>,
    /// How they are combined.
    pub layout: PoolLayout,
    /// How much may be provisioned, in percent of capacity.
    pub over_commit_percent: u32,
    /// How often the heartbeat is renewed.
    pub heartbeat: Duration,
    /// The identity written into the heartbeat Lease (unique per process).
    pub identity: String,
    /// Where the target listens, when that is not `address:port` (which hosts and
    /// other nodes are told: a NAT or a proxy in between).
    pub listen: Option<(String, u16)>,
}

impl AgentConfig {
    /// A node serving on `address:port`, its pool named after it, heartbeats every 5 s.
    pub fn new(node: impl Into<String>, address: impl Into<String>, port: u16) -> Self {
        let node = node.into();
        AgentConfig {
            pool: node.clone(),
            identity: node.clone(),
            node,
            address: address.into(),
            port,
            node_labels: Labels::default(),
            devices: Vec::new(),
            layout: PoolLayout::Linear,
            over_commit_percent: 100,
            heartbeat: Duration::from_secs(5),
            listen: None,
        }
    }

    /// The target's own listener.
    pub fn listen_at(&self) -> (&str, u16) {
        match &self.listen {
            Some((a, p)) => (a.as_str(), *p),
            None => (self.address.as_str(), self.port),
        }
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// The heartbeat was renewed.
    pub renewed: bool,
    /// What happened to each volume of this node that needed work.
    pub volumes: Vec<(String, VolumeOutcome)>,
    /// Dataplane objects no Volume claims, removed.
    pub collected: Vec<String>,
    /// What happened to each snapshot of this node that needed work.
    pub snapshots: Vec<(String, SnapshotOutcome)>,
    /// What this node did for the migrations that name it.
    pub migrations: Vec<(String, MigrationOutcome)>,
}

/// The agent of one node.
pub struct Agent<S, D> {
    store: S,
    dataplane: D,
    config: AgentConfig,
    claim: LeaseClaim,
    last_beat: Option<Instant>,
}

impl<S: Store, D: Dataplane> Agent<S, D> {
    /// An agent over `store` driving `dataplane`.
    pub fn new(store: S, dataplane: D, config: AgentConfig) -> Self {
        let claim = LeaseClaim::new(
            node_lease(&config.node),
            config.identity.clone(),
            config.heartbeat * 3,
        );
        Agent {
            store,
            dataplane,
            config,
            claim,
            last_beat: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Runs until `stop` resolves: the heartbeat renewed every `heartbeat`, a
    /// tick at once when a Volume changes (watched) and every `interval` (a
    /// resync); errors are logged and the next tick tries again.
    pub async fn run(mut self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let watch = lightpool_store::wake_on_change::<S, Volume>(self.store.clone(), wake.clone());
        let watch_snapshots = lightpool_store::wake_on_change::<S, lightpool_model::Snapshot>(
            self.store.clone(),
            wake.clone(),
        );
        let watch_migrations = lightpool_store::wake_on_change::<S, lightpool_model::VolumeMigration>(
            self.store.clone(),
            wake.clone(),
        );
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = tokio::time::interval(self.config.heartbeat);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = beats.tick() => if let Err(e) = self.beat().await {
                    tracing::warn!(node = %self.config.node, error = %e, "heartbeat failed");
                },
                _ = async { tokio::select! { _ = every.tick() => {}, _ = wake.notified() => {} } } => {
                    if let Err(e) = self.tick().await {
                        tracing::warn!(node = %self.config.node, error = %e, "agent tick failed");
                    }
                }
            }
        }
        watch.abort();
        watch_snapshots.abort();
        watch_migrations.abort();
        if let Err(e) = self.claim.release(&self.store).await {
            tracing::warn!(error = %e, "could not release the heartbeat lease");
        }
    }

    /// Renews the node's heartbeat Lease now.
    pub async fn beat(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        match self.claim.tick(&self.store).await? {
            Claim::Held => {
                self.last_beat = Some(now);
                Ok(())
            }
            Claim::HeldBy(holder) => Err(AgentError::DuplicateAgent {
                node: self.config.node.clone(),
                holder,
            }),
        }
    }

    /// One round: heartbeat when due, pool published, volumes reconciled.
    pub async fn tick(&mut self) -> Result<TickReport, AgentError> {
        let mut report = TickReport::default();
        let now = Instant::now();
        if self
            .last_beat
            .is_none_or(|t| now.duration_since(t) >= self.config.heartbeat)
        {
            self.beat().await?;
            report.renewed = true;
        }
        let volumes = self.store.list::<Volume>().await?.items;
        let migrations = self
            .store
            .list::<lightpool_model::VolumeMigration>()
            .await?
            .items;
        // Before the pool: a target that does not answer is reported to the
        // migrations it serves (they roll back) even though nothing else works.
        report.migrations = migrations::reconcile(self, &volumes, &migrations).await?;
        self.publish_pool(&volumes).await?;
        reconcile::volumes(self, &volumes, &migrations, &mut report).await?;
        report.snapshots = snapshots::reconcile(self, &volumes).await?;
        Ok(report)
    }

    async fn publish_pool(&self, volumes: &[Volume]) -> Result<(), AgentError> {
        let c = &self.config;
        let info = self.dataplane.pool().await?;
        let (la, lp) = c.listen_at();
        self.dataplane.ensure_listener(la, lp).await?;
        let existing = self.store.get::<StoragePool>(&c.pool).await?;
        let want = StoragePool::new(
            &c.pool,
            StoragePoolSpec {
                node: NodeInfo {
                    name: c.node.clone(),
                    address: c.address.clone(),
                    port: c.port,
                    labels: c.node_labels.clone(),
                },
                devices: c.devices.clone(),
                layout: c.layout,
                over_commit_percent: c.over_commit_percent,
                max_remote_volumes: None,
                // Cordoned by people (`lightpool node drain`, `node cordon`): kept.
                unschedulable: existing.as_ref().is_some_and(|p| p.spec.unschedulable),
            },
        );
        let current = match existing {
            Some(p) if p.spec == want.spec => p,
            _ => self.store.apply(&want).await?,
        };
        let mine: Vec<&Volume> = volumes
            .iter()
            .filter(|v| {
                v.status
                    .as_ref()
                    .is_some_and(|s| s.pool.as_deref() == Some(c.pool.as_str()))
            })
            .collect();
        let old = current.status.clone().unwrap_or_default();
        let mut status = StoragePoolStatus {
            health: if info.failed {
                PoolHealth::Failed
            } else if info.degraded {
                PoolHealth::Degraded
            } else {
                PoolHealth::Ready
            },
            capacity_bytes: info.capacity,
            free_bytes: info.free,
            provisioned_bytes: mine
                .iter()
                .filter_map(|v| v.status.as_ref().and_then(|s| s.size_bytes))
                .sum(),
            volumes: u32::try_from(mine.len()).unwrap_or(u32::MAX),
            remote_volumes: u32::try_from(
                mine.iter()
                    .filter(|v| v.status.as_ref().and_then(|s| s.local) == Some(false))
                    .count(),
            )
            .unwrap_or(u32::MAX),
            conditions: old.conditions.clone(),
            message: None,
        };
        set_condition(
            &mut status.conditions,
            Condition {
                type_: "DataplaneReachable".into(),
                status: ConditionStatus::True,
                reason: "Answered".into(),
                message: format!("the agent of {} reached its dataplane", c.node),
                last_transition_time: Some(now_string()),
            },
        );
        if status != old {
            match self
                .store
                .patch_status::<StoragePool>(
                    &c.pool,
                    &status,
                    current.metadata.resource_version.as_deref(),
                )
                .await
            {
                Ok(_) => {}
                // The controller wrote in between: the next tick publishes again.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Writes `status` over object `name`'s (read at `version`); a conflict, or an
/// object gone meanwhile, leaves it to the next tick.
pub(crate) async fn patch_status_or_next_tick<S: Store, K: lightpool_store::Object>(
    store: &S,
    name: &str,
    status: &K::Status,
    version: Option<&str>,
) -> Result<(), AgentError> {
    match store.patch_status::<K>(name, status, version).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() || e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn now_string() -> String {
    lightpool_store::now_rfc3339()
}
