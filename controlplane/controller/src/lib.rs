//! The controller: one acts at a time (leader election on the Lease
//! `lightpool-controller`); every [`Controller::tick`] (in [`Controller::run`]:
//! at once when a Volume or StoragePool changes, and at a resync interval) it
//! 1. renews or contends for leadership; a follower does nothing else and a
//!    leader that lost the lease forgets its ledger;
//! 2. judges each pool's health by its node's heartbeat Lease: Unknown within
//!    three heartbeat intervals (15 s by default) of the agent's last renewal,
//!    Ready again when renewals return; the scheduler places nothing on an
//!    Unknown pool. Between ticks the leader looks at the heartbeats every
//!    `heartbeat_check` ([`Controller::check_heartbeats`]) so the promise holds
//!    with a margin (see [`ControllerConfig::silence`]);
//! 3. rebuilds the scheduler's ledger from the Volumes' statuses when it became
//!    leader (a restart, a take-over);
//! 4. runs each Volume's operation, a persisted state machine
//!    (`lightpool-operation`) recorded in the Volume's status:
//!    - VolumeCreate: `Place` (validate against the pools, decide, reserve,
//!      finalizer, status Scheduled; or Rejected with every pool's reason) then
//!      `Publish` (wait for the node's agent to make it Ready);
//!    - VolumeDelete: `Unpublish` (wait for the agent's clean-up) then `Release`
//!      (capacity back to the ledger, the controller's finalizer removed);
//!    - an edit of a placed volume is judged once per generation (`judge_edit`):
//!      a larger spec.size is a grow (the ledger takes the added bytes or the edit
//!      is refused with the room there is; the agent grows the pool volume and
//!      reports `capacityBytes`), a smaller one is refused.
//!
//! 5. runs each VolumeMigration's operation (`migrations`: VolumeMigrate, a
//!    persisted state machine whose phase is the migration's `status.phase`).
//!
//! A controller killed anywhere resumes from the recorded phase; each phase's
//! work is idempotent, so nothing is reserved twice or left behind.

mod health;
mod migrations;
mod ops;
mod snapshots;

use std::time::Duration;

use lightpool_model::{StoragePool, Volume, VolumeMigration, VolumePhase};
use lightpool_operation::{run, OperationError, Progress};
use lightpool_scheduler::{ConfigError, Scheduler, SchedulerConfig};
use lightpool_store::{Claim, LeaseClaim, LeaseObserver, Store, StoreError};

pub use health::HEARTBEAT_CONDITION;

/// The reporter of the controller's events.
pub const REPORTER: &str = "lightpool-controller";

/// Records an event about `obj`; a store that cannot take it is logged, never
/// a reason to stop the operation.
pub(crate) async fn record<S: Store, K: lightpool_store::Object>(
    store: &S,
    obj: &K,
    type_: lightpool_store::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let e = lightpool_store::NewEvent::about(obj, type_, reason, action, note, REPORTER);
    if let Err(err) = store.record_event(&e).await {
        tracing::warn!(object = %e.name, reason, error = %err, "could not record an event");
    }
}

/// The leader-election Lease.
pub const CONTROLLER_LEASE: &str = "lightpool-controller";

/// What went wrong in a tick.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scheduler profile is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The heartbeat timings cannot keep the promise.
    #[error("controller timings: {0}")]
    Timing(String),
}

/// Timings and the scheduler profile.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The identity in the leader Lease (unique per process).
    pub identity: String,
    /// How long a leader that stops renewing keeps the lease.
    pub lease_duration: Duration,
    /// The agents' heartbeat interval.
    pub heartbeat: Duration,
    /// Missed heartbeats within which a silent node's pool is Unknown: the
    /// promise is `heartbeat × missed_heartbeats` from the agent's death.
    pub missed_heartbeats: u32,
    /// How often the leader looks at the heartbeat Leases (a lease's age is
    /// known to within this).
    pub heartbeat_check: Duration,
    /// Kept from the promise for the time a look and the status write take:
    /// a pool is Unknown after [`ControllerConfig::silence`] without renewal.
    pub heartbeat_margin: Duration,
    /// How long a placed volume may wait for its node's agent to publish it;
    /// then it is Failed (PublishTimedOut), and published when the agent does.
    pub publish_timeout: Duration,
    /// How long a delete waits for the agent of a node that is not Ready;
    /// then the controller lets go of the volume and the agent removes its
    /// copy when it returns (what no Volume claims is collected).
    pub delete_timeout: Duration,
    /// How long an error a node reports for a migration may last before the
    /// migration rolls back (a target asked to try again, a blip).
    pub migration_grace: Duration,
    /// Plugins and weights.
    pub scheduler: SchedulerConfig,
}

impl ControllerConfig {
    /// Defaults: 15 s leader lease, heartbeats every 5 s, Unknown within 3
    /// intervals (15 s) of the last renewal: after 14 s of silence, looked at
    /// every 250 ms.
    pub fn new(identity: impl Into<String>) -> Self {
        ControllerConfig {
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            missed_heartbeats: 3,
            heartbeat_check: Duration::from_millis(250),
            heartbeat_margin: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(120),
            delete_timeout: Duration::from_secs(300),
            migration_grace: Duration::from_secs(10),
            scheduler: SchedulerConfig::default(),
        }
    }

    /// The promise: a node whose agent dies is Unknown within this.
    pub fn unknown_within(&self) -> Duration {
        self.heartbeat * self.missed_heartbeats
    }

    /// The silence after which a pool is Unknown: the promise less the margin.
    /// A lease is dated to within `heartbeat_check` and looked at every
    /// `heartbeat_check`, so the pool is Unknown at most `silence +
    /// heartbeat_check` (plus one status write) after the last renewal.
    pub fn silence(&self) -> Duration {
        self.unknown_within().saturating_sub(self.heartbeat_margin)
    }

    fn check(&self) -> Result<(), ControllerError> {
        let floor = self.heartbeat * self.missed_heartbeats.saturating_sub(1);
        if self.silence() <= floor || self.heartbeat_check >= self.heartbeat_margin {
            return Err(ControllerError::Timing(format!(
                "a pool would be Unknown after {:?} of silence, looked at every {:?}: the silence must exceed {:?} ({} heartbeats of {:?} less one) so a live agent is never judged dead, and heartbeat_check must be below heartbeat_margin ({:?}) so the promise of {:?} holds",
                self.silence(),
                self.heartbeat_check,
                floor,
                self.missed_heartbeats,
                self.heartbeat,
                self.heartbeat_margin,
                self.unknown_within()
            )));
        }
        Ok(())
    }
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// This controller leads.
    pub leader: bool,
    /// Pools whose health the controller changed: (pool, new health).
    pub health_changes: Vec<(String, lightpool_model::PoolHealth)>,
    /// Operations that finished, moved on or wait: (volume, kind, outcome).
    pub operations: Vec<(String, String, String)>,
    /// Operations that failed this time (retried next tick).
    pub failures: Vec<String>,
    /// Snapshots marked Failed: their volume is missing or holds no data.
    pub failed_snapshots: Vec<String>,
}

/// The controller.
pub struct Controller<S> {
    store: S,
    config: ControllerConfig,
    claim: LeaseClaim,
    heartbeats: LeaseObserver,
    scheduler: Option<Scheduler>,
    /// Bumped when a pool's health or capacity changes: rejected volumes are
    /// tried again.
    pool_epoch: u64,
    pool_seen: std::collections::HashMap<String, (lightpool_model::PoolHealth, u64)>,
    /// Each pool's node and whether its heartbeat was judged missing, as of
    /// the last judgement (what [`Controller::check_heartbeats`] compares).
    pool_nodes: std::collections::HashMap<String, (String, bool)>,
    rejected_at: std::collections::HashMap<String, (u64, Option<i64>)>,
}

impl<S: Store> Controller<S> {
    /// A controller over `store`.
    pub fn new(store: S, config: ControllerConfig) -> Result<Self, ControllerError> {
        // Fails early on a bad profile or timings.
        Scheduler::new(&config.scheduler)?;
        config.check()?;
        Ok(Controller {
            claim: LeaseClaim::new(
                CONTROLLER_LEASE,
                config.identity.clone(),
                config.lease_duration,
            ),
            heartbeats: LeaseObserver::new(config.silence(), config.heartbeat_check),
            store,
            config,
            scheduler: None,
            pool_epoch: 0,
            pool_seen: Default::default(),
            pool_nodes: Default::default(),
            rejected_at: Default::default(),
        })
    }

    /// The scheduler, while leading.
    pub fn scheduler(&self) -> Option<&Scheduler> {
        self.scheduler.as_ref()
    }

    /// Runs until `stop`: a tick at once when a Volume, StoragePool or Snapshot changes
    /// (watched), and every `interval` as a resync; the heartbeats looked at
    /// every `heartbeat_check`. Errors are logged and retried.
    pub async fn run(mut self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let watches = [
            lightpool_store::wake_on_change::<S, Volume>(self.store.clone(), wake.clone()),
            lightpool_store::wake_on_change::<S, StoragePool>(self.store.clone(), wake.clone()),
            // A restore waits for its snapshot to be taken.
            lightpool_store::wake_on_change::<S, lightpool_model::Snapshot>(
                self.store.clone(),
                wake.clone(),
            ),
            lightpool_store::wake_on_change::<S, VolumeMigration>(self.store.clone(), wake.clone()),
        ];
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = tokio::time::interval(self.config.heartbeat_check);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = beats.tick() => if let Err(e) = self.check_heartbeats().await {
                    tracing::warn!(error = %e, "heartbeat check failed");
                },
                _ = wake.notified() => self.logged_tick().await,
                _ = every.tick() => self.logged_tick().await,
            }
        }
        for w in watches {
            w.abort();
        }
        if let Err(e) = self.claim.release(&self.store).await {
            tracing::warn!(error = %e, "could not release the leader lease");
        }
    }

    async fn logged_tick(&mut self) {
        match self.tick().await {
            Ok(r) => {
                for f in &r.failures {
                    tracing::warn!(failure = %f, "operation failed; retrying");
                }
            }
            Err(e) => tracing::warn!(error = %e, "controller tick failed"),
        }
    }

    /// Between ticks, while leading: reads the heartbeat Lease of each known
    /// pool's node and, when one's liveness no longer matches the pool's
    /// health, judges the pools at once. Returns the health changes made.
    pub async fn check_heartbeats(
        &mut self,
    ) -> Result<Vec<(String, lightpool_model::PoolHealth)>, ControllerError> {
        if self.scheduler.is_none() {
            return Ok(Vec::new());
        }
        let now = tokio::time::Instant::now();
        let mut stale = false;
        let nodes: Vec<(String, bool)> = self.pool_nodes.values().cloned().collect();
        for (node, silent) in nodes {
            let live = match self
                .store
                .get_lease(&lightpool_agent::node_lease(&node))
                .await?
            {
                Some(lease) => self.heartbeats.observe(&lease, now),
                None => false,
            };
            stale |= live == silent;
        }
        if !stale {
            return Ok(Vec::new());
        }
        let mut report = TickReport::default();
        health::judge(self, &mut report).await?;
        Ok(report.health_changes)
    }

    /// One round.
    pub async fn tick(&mut self) -> Result<TickReport, ControllerError> {
        let mut report = TickReport::default();
        if let Claim::HeldBy(holder) = self.claim.tick(&self.store).await? {
            if self.scheduler.take().is_some() {
                tracing::info!(%holder, "lost leadership");
            }
            return Ok(report);
        }
        report.leader = true;
        let pools = health::judge(self, &mut report).await?;
        let scheduler = match &self.scheduler {
            Some(s) => s.clone(),
            None => Scheduler::new(&self.config.scheduler)?,
        };
        for p in &pools {
            scheduler.sync_pool(p);
        }
        let names: std::collections::HashSet<&str> = pools
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        let gone: Vec<String> = scheduler.with_cluster(|c| {
            c.pools()
                .filter(|(_, p, _)| !names.contains(p.name.as_str()))
                .map(|(_, p, _)| p.name.clone())
                .collect()
        });
        for g in gone {
            scheduler.remove_pool(&g);
        }
        let volumes = self.store.list::<Volume>().await?.items;
        let migrations = self.store.list::<VolumeMigration>().await?.items;
        if self.scheduler.is_none() {
            for v in &volumes {
                if let Err(e) = scheduler.record_volume(v) {
                    tracing::warn!(error = %e, "volume not in the ledger");
                }
            }
            migrations::record_reservations(&scheduler, &volumes, &migrations);
            tracing::info!(
                volumes = volumes.len(),
                pools = pools.len(),
                "leading: ledger rebuilt"
            );
            self.scheduler = Some(scheduler.clone());
        }
        for v in &volumes {
            self.volume(&scheduler, &pools, v, &mut report).await;
        }
        for m in &migrations {
            self.migration(&scheduler, &pools, m, &mut report).await;
        }
        report.failed_snapshots = snapshots::judge(&self.store, &volumes).await?;
        Ok(report)
    }

    async fn migration(
        &mut self,
        scheduler: &Scheduler,
        pools: &[StoragePool],
        m: &VolumeMigration,
        report: &mut TickReport,
    ) {
        let Some(name) = m.metadata.name.clone() else {
            return;
        };
        let status = m.status.clone().unwrap_or_default();
        if status.phase.is_final() {
            // Finished: a delete lets go of it at once.
            if m.metadata.deletion_timestamp.is_some() {
                if let Err(e) = lightpool_store::remove_finalizer::<S, VolumeMigration>(
                    &self.store,
                    &name,
                    lightpool_model::MIGRATION_FINALIZER,
                )
                .await
                {
                    report
                        .failures
                        .push(format!("releasing migration {name}: {e}"));
                }
            }
            return;
        }
        let mut mach = migrations::MigrateVolume::new(
            &self.store,
            scheduler,
            pools,
            &name,
            self.config.migration_grace,
        );
        let mut j = migrations::MigrationJournal::new(&self.store, &name);
        let r = run(&mut mach, &mut j, status.operation.clone()).await;
        Self::outcome(report, name, migrations::MIGRATE, r);
    }

    fn outcome(
        report: &mut TickReport,
        name: String,
        kind: &str,
        r: Result<Progress, OperationError>,
    ) {
        match r {
            Ok(Progress::Done) => report.operations.push((name, kind.into(), "Done".into())),
            Ok(Progress::Waiting(p)) => {
                report
                    .operations
                    .push((name, kind.into(), format!("Waiting in {p}")))
            }
            Err(OperationError::Step {
                message,
                kind,
                phase,
                ..
            }) => report
                .failures
                .push(format!("{kind} of {name} in {phase}: {message}")),
            Err(e) => report.failures.push(format!("{name}: {e}")),
        }
    }

    async fn volume(
        &mut self,
        scheduler: &Scheduler,
        pools: &[StoragePool],
        v: &Volume,
        report: &mut TickReport,
    ) {
        let Some(name) = v.metadata.name.clone() else {
            return;
        };
        let status = v.status.clone().unwrap_or_default();
        let record = status.operation.clone();
        let deleting = v.metadata.deletion_timestamp.is_some();
        let outcome = if deleting {
            // A create in flight is superseded: the delete handles any state.
            let record = record.filter(|r| r.kind == ops::DELETE);
            let mut m = ops::DeleteVolume::new(&self.store, scheduler, pools, &name)
                .timeout(self.config.delete_timeout);
            let mut j = ops::VolumeJournal::new(&self.store, &name);
            Some((ops::DELETE, run(&mut m, &mut j, record).await))
        } else if status.pool.is_some()
            && record.is_none()
            && matches!(status.phase, VolumePhase::Ready | VolumePhase::Failed)
            && v.metadata.generation != status.observed_generation
        {
            match ops::judge_edit(&self.store, scheduler, pools, v).await {
                Ok(()) => None,
                Err(e) => {
                    report
                        .failures
                        .push(format!("judging the edit of {name}: {e}"));
                    None
                }
            }
        } else {
            let idle = record.is_none();
            let settled = match status.phase {
                VolumePhase::Ready => true,
                VolumePhase::Scheduled => status.pool.is_some() && idle,
                // Its publish timed out: the agent finishes it when it can.
                VolumePhase::Failed => status.pool.is_some() && idle,
                VolumePhase::Rejected => {
                    // Tried again when the pools or the spec change.
                    let key = (self.pool_epoch, v.metadata.generation);
                    self.rejected_at.get(&name) == Some(&key)
                }
                _ => false,
            };
            if settled && idle {
                None
            } else {
                let mut m = ops::CreateVolume::new(&self.store, scheduler, pools, &name)
                    .timeout(self.config.publish_timeout);
                let mut j = ops::VolumeJournal::new(&self.store, &name);
                let r = run(&mut m, &mut j, record).await;
                if m.rejected {
                    self.rejected_at
                        .insert(name.clone(), (self.pool_epoch, v.metadata.generation));
                }
                Some((ops::CREATE, r))
            }
        };
        match outcome {
            None => {}
            Some((kind, Ok(Progress::Done))) => {
                report.operations.push((name, kind.into(), "Done".into()))
            }
            Some((kind, Ok(Progress::Waiting(p)))) => {
                report
                    .operations
                    .push((name, kind.into(), format!("Waiting in {p}")))
            }
            Some((
                _,
                Err(OperationError::Step {
                    message,
                    kind,
                    phase,
                    ..
                }),
            )) => report
                .failures
                .push(format!("{kind} of {name} in {phase}: {message}")),
            Some((_, Err(e))) => report.failures.push(format!("{name}: {e}")),
        }
    }
}
