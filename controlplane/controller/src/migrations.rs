//! VolumeMigration as a persisted state machine (`VolumeMigrate`): the phase is
//! written before its work (the record in `status.operation`, the phase in
//! `status.phase`), so a controller restarted anywhere resumes it. The work of
//! each phase on the nodes is their agents' (`lightpool_agent` `migrations`);
//! the controller checks the request, places the destination, waits for the
//! agents' reports, keeps the Volume's paths in step, decides roll-back or
//! switch, and at `Cleaning` moves the Volume to its new node.
//!
//! - Pending: refused (phase Failed, condition `Accepted` False, a message that
//!   says what to change) when the volume is missing, not Ready, being deleted,
//!   already migrating, already on the asked node, a clone, or has snapshots or
//!   clones (the dataplane copies a volume's blocks, not the pool's sharing
//!   between a volume, its snapshots and its clones), or is staged through ublk
//!   on its node (`status.ublk`, its agent's report: the local export has no
//!   second path to follow); else the destination is
//!   placed by the scheduler's filters (only other nodes; the asked node and
//!   pool when given), its capacity reserved in the ledger as `VOLUME@migration`.
//! - CreatingVolume, SetupPipe, Syncing: wait for the agents. A cancel, an error
//!   a side reports for longer than `migration_grace`, or a node whose pool is
//!   not Ready rolls back.
//! - Switching: the destination's path optimized, then the source's
//!   inaccessible. Until the source flipped, a failing destination still rolls
//!   back; from then on the destination is authoritative.
//! - Cleaning: the Volume's status names the destination (node, pool, one path);
//!   the ledger moves the volume; then the source deletes its copy. A source that
//!   is down (its pool not Ready) does it when it returns: the migration is
//!   Succeeded without it, condition `SourceCleaned` False (`SourceAway`, also a
//!   Warning event) until the source's agent has deleted the copy.
//! - RollingBack: the Volume's paths back to the source alone; the destination's
//!   reservation released; then RolledBack (cancelled) or Failed.

use std::time::Duration;

use lightpool_model::migration::SOURCE_CLEANED;
use lightpool_model::volume::{AnaState, TargetPath, NODE_POOL};
use lightpool_model::{
    set_condition, ConditionStatus, MigrationPhase, MigrationSide, OperationRecord, PoolHealth,
    Snapshot, StoragePool, Volume, VolumeMigration, VolumeMigrationStatus, VolumePhase,
    MIGRATION_FINALIZER,
};
use lightpool_operation::{Journal, Machine, Step};
use lightpool_scheduler::{ScheduleError, Scheduler, VolumeRequest};
use lightpool_store::{add_finalizer, now_rfc3339, remove_finalizer, EventType, Store, StoreError};

use crate::ops::{condition, pool_health, since};
use crate::record;

pub(crate) const MIGRATE: &str = "VolumeMigrate";

/// The ledger's name of a migration's destination copy.
pub(crate) fn ledger_key(volume: &str) -> String {
    format!("{volume}@migration")
}

/// After a restart: each migration's destination copy held in the ledger again,
/// until the Volume itself moves there (Cleaning).
pub(crate) fn record_reservations(
    scheduler: &Scheduler,
    volumes: &[Volume],
    migrations: &[VolumeMigration],
) {
    for m in migrations {
        let Some(st) = m.status.as_ref() else {
            continue;
        };
        if !(MigrationPhase::CreatingVolume..=MigrationPhase::Switching).contains(&st.phase) {
            continue;
        }
        let (Some(pool), Some(size)) = (st.target_pool.as_deref(), st.size_bytes) else {
            continue;
        };
        let mut req = VolumeRequest::new(ledger_key(&m.spec.volume), size);
        if let Some(v) = volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(m.spec.volume.as_str()))
        {
            req.provisioning = v.spec.provisioning;
        }
        if let Err(e) = scheduler.record(&req, pool) {
            tracing::warn!(migration = ?m.metadata.name, error = %e, "destination not in the ledger");
        }
    }
}

/// Writes the record and the phase into the migration's status.
pub(crate) struct MigrationJournal<'a, S> {
    store: &'a S,
    name: &'a str,
}

impl<'a, S> MigrationJournal<'a, S> {
    pub(crate) fn new(store: &'a S, name: &'a str) -> Self {
        MigrationJournal { store, name }
    }
}

impl<S: Store> Journal for MigrationJournal<'_, S> {
    type Error = StoreError;

    async fn save(&mut self, record: Option<&OperationRecord>) -> Result<(), StoreError> {
        for _ in 0..5 {
            let Some(m) = self.store.get::<VolumeMigration>(self.name).await? else {
                return match record {
                    None => Ok(()),
                    Some(_) => Err(StoreError::NotFound {
                        kind: "VolumeMigration".into(),
                        name: self.name.into(),
                    }),
                };
            };
            let mut st = m.status.clone().unwrap_or_default();
            st.operation = record.cloned();
            if let Some(p) = record.and_then(|r| r.phase.parse::<MigrationPhase>().ok()) {
                if p != st.phase {
                    st.phase = p;
                    st.phase_since = Some(now_rfc3339());
                }
            }
            if Some(&st) == m.status.as_ref() {
                return Ok(());
            }
            match self
                .store
                .patch_status::<VolumeMigration>(
                    self.name,
                    &st,
                    m.metadata.resource_version.as_deref(),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() && record.is_none() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            kind: "VolumeMigration".into(),
            name: self.name.into(),
        })
    }
}

/// One migration's machine.
pub(crate) struct MigrateVolume<'a, S> {
    store: &'a S,
    scheduler: &'a Scheduler,
    pools: &'a [StoragePool],
    name: &'a str,
    grace: Duration,
}

impl<'a, S> MigrateVolume<'a, S> {
    pub(crate) fn new(
        store: &'a S,
        scheduler: &'a Scheduler,
        pools: &'a [StoragePool],
        name: &'a str,
        grace: Duration,
    ) -> Self {
        MigrateVolume {
            store,
            scheduler,
            pools,
            name,
            grace,
        }
    }
}

/// `m` with its [`SOURCE_CLEANED`] condition set.
fn source_cleaned(
    mut m: VolumeMigration,
    status: ConditionStatus,
    reason: &str,
    message: String,
) -> VolumeMigration {
    let st = m.status.get_or_insert_with(Default::default);
    set_condition(
        &mut st.conditions,
        condition(SOURCE_CLEANED, status, reason, message),
    );
    m
}

fn healthy(pools: &[StoragePool], pool: Option<&str>) -> bool {
    pool_health(pools, pool).is_some_and(|h| matches!(h, PoolHealth::Ready | PoolHealth::Degraded))
}

fn node_path(pools: &[StoragePool], pool: Option<&str>, state: AnaState) -> Option<TargetPath> {
    let p = pools.iter().find(|p| p.metadata.name.as_deref() == pool)?;
    let n = &p.spec.node;
    Some(TargetPath {
        node: n.name.clone(),
        transport: "tcp".into(),
        adrfam: if n.address.contains(':') {
            "ipv6"
        } else {
            "ipv4"
        }
        .into(),
        traddr: n.address.clone(),
        trsvcid: n.port,
        ana_group: 1,
        ana_state: state,
    })
}

impl<S: Store> MigrateVolume<'_, S> {
    /// Writes `st` over the migration's status (the version read with it).
    async fn put(&self, m: &VolumeMigration, st: VolumeMigrationStatus) -> Result<(), StoreError> {
        if Some(&st) != m.status.as_ref() {
            self.store
                .patch_status::<VolumeMigration>(
                    self.name,
                    &st,
                    m.metadata.resource_version.as_deref(),
                )
                .await?;
        }
        Ok(())
    }

    /// Refused: phase Failed with what to change; nothing was made.
    async fn refuse(
        &self,
        m: &VolumeMigration,
        reason: &str,
        message: String,
    ) -> Result<Step<MigrationPhase>, StoreError> {
        let mut st = m.status.clone().unwrap_or_default();
        st.phase = MigrationPhase::Failed;
        st.phase_since = Some(now_rfc3339());
        st.message = Some(message.clone());
        set_condition(
            &mut st.conditions,
            condition("Accepted", ConditionStatus::False, reason, message.clone()),
        );
        self.put(m, st).await?;
        record(
            self.store,
            m,
            EventType::Warning,
            reason,
            "Migrate",
            message,
        )
        .await;
        Ok(Step::Done)
    }

    /// A side that cannot do its part now: its node's pool is not Ready, or it has
    /// reported an error for longer than the grace.
    fn stuck(&self, side: &MigrationSide, pool: &Option<String>) -> bool {
        !healthy(self.pools, pool.as_deref())
            || (side.error.is_some() && since(side.error_since.as_deref()) >= self.grace)
    }

    /// Why the migration cannot go on before the switch, if it cannot.
    fn trouble(&self, st: &VolumeMigrationStatus) -> Option<String> {
        let node = |n: &Option<String>| n.clone().unwrap_or_else(|| "?".into());
        for (side, n, pool, s) in [
            (
                "destination",
                &st.target_node,
                &st.target_pool,
                &st.destination,
            ),
            ("source", &st.source_node, &st.source_pool, &st.source),
        ] {
            if !healthy(self.pools, pool.as_deref()) {
                let h = pool_health(self.pools, pool.as_deref())
                    .map_or_else(|| "gone".into(), |h| format!("{h:?}"));
                return Some(format!("the {side} node {}'s pool is {h}", node(n)));
            }
            if let Some(e) = &s.error {
                if since(s.error_since.as_deref()) >= self.grace {
                    return Some(format!("the {side} failed: {e}"));
                }
            }
        }
        None
    }

    /// The Volume's paths: the source's and the destination's in these states.
    async fn paths(
        &self,
        vol: &str,
        st: &VolumeMigrationStatus,
        src: Option<AnaState>,
        dst: Option<AnaState>,
    ) -> Result<(), StoreError> {
        let Some(v) = self.store.get::<Volume>(vol).await? else {
            return Ok(());
        };
        let mut vs = v.status.clone().unwrap_or_default();
        let Some(mut target) = vs.target.clone() else {
            return Ok(());
        };
        target.paths = [
            src.and_then(|s| node_path(self.pools, st.source_pool.as_deref(), s)),
            dst.and_then(|s| node_path(self.pools, st.target_pool.as_deref(), s)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if vs.target.as_ref() == Some(&target) {
            return Ok(());
        }
        vs.target = Some(target);
        self.store
            .patch_status::<Volume>(vol, &vs, v.metadata.resource_version.as_deref())
            .await?;
        Ok(())
    }

    async fn pending(&self, m: &VolumeMigration) -> Result<Step<MigrationPhase>, StoreError> {
        let vol = &m.spec.volume;
        if m.spec.cancel || m.metadata.deletion_timestamp.is_some() {
            let mut st = m.status.clone().unwrap_or_default();
            st.phase = MigrationPhase::RolledBack;
            st.message = Some("cancelled before it started".into());
            self.put(m, st).await?;
            return Ok(Step::Done);
        }
        let Some(v) = self.store.get::<Volume>(vol).await? else {
            return self
                .refuse(
                    m,
                    "NoVolume",
                    format!(
                        "there is no volume {vol}: name an existing one (lightpool volume list)"
                    ),
                )
                .await;
        };
        let vst = v.status.clone().unwrap_or_default();
        let (Some(src_node), Some(src_pool), Some(size)) =
            (vst.node.clone(), vst.pool.clone(), vst.size_bytes)
        else {
            return self
                .refuse(
                    m,
                    "NotReady",
                    format!(
                        "volume {vol} is not placed yet ({:?}): migrate it once it is Ready",
                        vst.phase
                    ),
                )
                .await;
        };
        if v.metadata.deletion_timestamp.is_some() || vst.phase != VolumePhase::Ready {
            return self
                .refuse(
                    m,
                    "NotReady",
                    format!(
                        "volume {vol} is {:?}, not Ready: migrate it once it is Ready",
                        vst.phase
                    ),
                )
                .await;
        }
        let others = self.store.list::<VolumeMigration>().await?.items;
        if let Some(o) = others.iter().find(|o| {
            o.metadata.name.as_deref() != Some(self.name)
                && o.spec.volume == *vol
                && o.status
                    .as_ref()
                    .is_some_and(|s| s.phase.is_active() && s.phase != MigrationPhase::Pending)
        }) {
            let on = o.metadata.name.clone().unwrap_or_default();
            let phase = o.status.as_ref().map(|s| s.phase).unwrap_or_default();
            return self
                .refuse(m, "AlreadyMigrating", format!("volume {vol} is already migrating ({on}, {phase}): wait for it, or cancel it (lightpool volume migrate cancel {vol})"))
                .await;
        }
        if m.spec.target_node.as_deref() == Some(src_node.as_str()) {
            return self
                .refuse(m, "SameNode", format!("volume {vol} lives on node {src_node} already: name another node (--to), or none to let the scheduler choose"))
                .await;
        }
        if let Some(why) = self.unmovable(&v).await? {
            return self.refuse(m, "Unsupported", why).await;
        }
        let nodes: Vec<String> = self
            .pools
            .iter()
            .map(|p| p.spec.node.name.clone())
            .filter(|n| *n != src_node)
            .collect();
        if let Some(t) = &m.spec.target_node {
            if !nodes.contains(t) {
                return self
                    .refuse(
                        m,
                        "NoNode",
                        format!(
                            "there is no node {t} with a pool: name one of {}",
                            if nodes.is_empty() {
                                "(none: add a node)".into()
                            } else {
                                nodes.join(", ")
                            }
                        ),
                    )
                    .await;
            }
        }
        let Ok(mut req) = VolumeRequest::from_spec(&ledger_key(vol), &v.spec) else {
            return self
                .refuse(
                    m,
                    "Invalid",
                    format!("volume {vol}'s spec is invalid: fix it first"),
                )
                .await;
        };
        req.size = size;
        req.affinity.nodes = match &m.spec.target_node {
            Some(t) => vec![t.clone()],
            None => nodes,
        };
        if let Some(p) = &m.spec.target_pool {
            req.affinity.pools = vec![p.clone()];
        } else {
            req.affinity.pools.clear();
        }
        let reservation = match self.scheduler.schedule(&req) {
            Ok(r) => r,
            Err(ScheduleError::Unschedulable(u)) => {
                return self
                    .refuse(
                        m,
                        "NoPoolFits",
                        format!(
                            "no node can take volume {vol} ({size} bytes): {}",
                            u.message
                        ),
                    )
                    .await
            }
            // Reserved before a restart of this step: the ledger holds it.
            Err(ScheduleError::AlreadyPlaced { .. }) => {
                self.scheduler.release(&req.name);
                return Err(StoreError::Invalid(format!(
                    "{} was in the ledger: placed again next tick",
                    req.name
                )));
            }
            Err(e) => return Err(StoreError::Invalid(e.to_string())),
        };
        let m: VolumeMigration = add_finalizer(self.store, self.name, MIGRATION_FINALIZER).await?;
        let p = reservation.placement().clone();
        let mut st = m.status.clone().unwrap_or_default();
        st.source_node = Some(src_node.clone());
        st.source_pool = Some(src_pool);
        st.target_node = Some(p.node.clone());
        st.target_pool = Some(p.pool.clone());
        st.size_bytes = Some(size);
        st.message = None;
        let note = format!(
            "moving volume {vol} from node {src_node} to pool {} of node {}",
            p.pool, p.node
        );
        set_condition(
            &mut st.conditions,
            condition("Accepted", ConditionStatus::True, "Placed", note.clone()),
        );
        self.put(&m, st).await?;
        reservation.commit();
        record(self.store, &m, EventType::Normal, "Placed", "Migrate", note).await;
        Ok(Step::Next(MigrationPhase::CreatingVolume))
    }

    /// Why the dataplane cannot carry the volume, if it cannot.
    async fn unmovable(&self, v: &Volume) -> Result<Option<String>, StoreError> {
        let vol = v.metadata.name.clone().unwrap_or_default();
        if let Some(node) = v
            .status
            .as_ref()
            .filter(|s| s.ublk)
            .and_then(|s| s.node.as_deref())
        {
            // Its agent reports the export; the agent's own check at
            // CreatingVolume stays for an export made since.
            return Ok(Some(format!(
                "volume {vol} is staged through ublk on node {node} (its consumer runs there and reads it through that node's dataplane, not over NVMe/TCP): a local export cannot follow a migration. Unstage it (stop the consumer, or move the pod off node {node}), or stop its ublk export (lightpool target volume ublk stop {NODE_POOL}/{vol} on node {node}) and stage it over NVMe/TCP, then migrate again"
            )));
        }
        if let Some(src) = v
            .spec
            .source_volume
            .as_ref()
            .or(v.spec.source_snapshot.as_ref())
        {
            return Ok(Some(format!(
                "volume {vol} is a clone of {src} and shares its blocks in its pool; a migration copies a volume's blocks but not that sharing: migrate a volume that is not a clone"
            )));
        }
        let snaps: Vec<String> = self
            .store
            .list::<Snapshot>()
            .await?
            .items
            .into_iter()
            .filter(|s| s.spec.volume == vol && s.metadata.deletion_timestamp.is_none())
            .filter_map(|s| s.metadata.name)
            .collect();
        if !snaps.is_empty() {
            return Ok(Some(format!(
                "volume {vol} has snapshots ({}), which live in its pool on its node; a migration copies the volume's blocks, not its snapshots: delete them first (lightpool snapshot delete NAME)",
                snaps.join(", ")
            )));
        }
        let clones: Vec<String> = self
            .store
            .list::<Volume>()
            .await?
            .items
            .into_iter()
            .filter(|c| c.spec.source_volume.as_deref() == Some(vol.as_str()))
            .filter_map(|c| c.metadata.name)
            .collect();
        if !clones.is_empty() {
            return Ok(Some(format!(
                "volume {vol} has clones ({}) sharing its blocks in its pool: delete them first",
                clones.join(", ")
            )));
        }
        Ok(None)
    }

    /// Before the switch: a cancel or trouble rolls back.
    async fn roll_back_if(
        &self,
        m: &VolumeMigration,
        st: &VolumeMigrationStatus,
    ) -> Result<Option<Step<MigrationPhase>>, StoreError> {
        let why = if m.spec.cancel || m.metadata.deletion_timestamp.is_some() {
            Some("cancelled".to_string())
        } else {
            self.trouble(st)
        };
        let Some(why) = why else {
            return Ok(None);
        };
        let mut st = st.clone();
        st.message = Some(format!("rolling back: {why}"));
        self.put(m, st).await?;
        record(
            self.store,
            m,
            EventType::Warning,
            "RollingBack",
            "Migrate",
            format!("rolling back: {why}"),
        )
        .await;
        Ok(Some(Step::Next(MigrationPhase::RollingBack)))
    }

    /// The Volume now lives on the destination: its status says so and the ledger
    /// counts it there.
    async fn move_volume(&self, vol: &str, st: &VolumeMigrationStatus) -> Result<(), StoreError> {
        let vol = vol.to_string();
        let Some(v) = self.store.get::<Volume>(&vol).await? else {
            self.scheduler.release(&ledger_key(&vol));
            return Ok(());
        };
        let mut vs = v.status.clone().unwrap_or_default();
        if vs.node != st.target_node || vs.pool != st.target_pool {
            vs.node = st.target_node.clone();
            vs.pool = st.target_pool.clone();
            vs.capacity_bytes = st.size_bytes;
            vs.local =
                Some(v.spec.consumer_node.is_some() && v.spec.consumer_node == st.target_node);
            if let Some(t) = vs.target.as_mut() {
                t.paths = node_path(self.pools, st.target_pool.as_deref(), AnaState::Optimized)
                    .into_iter()
                    .collect();
            }
            let note = format!(
                "moved from node {} to node {} by migration {}",
                st.source_node.as_deref().unwrap_or("?"),
                st.target_node.as_deref().unwrap_or("?"),
                self.name
            );
            set_condition(
                &mut vs.conditions,
                condition("Migrated", ConditionStatus::True, "Switched", note.clone()),
            );
            let v = self
                .store
                .patch_status::<Volume>(&vol, &vs, v.metadata.resource_version.as_deref())
                .await?;
            record(
                self.store,
                &v,
                EventType::Normal,
                "Migrated",
                "Migrate",
                note,
            )
            .await;
        }
        // The ledger: the volume leaves the source's pool, its reservation on the
        // destination becomes the volume.
        self.scheduler.release(&vol);
        self.scheduler.release(&ledger_key(&vol));
        if let Some(v) = self.store.get::<Volume>(&vol).await? {
            if let Err(e) = self.scheduler.record_volume(&v) {
                tracing::warn!(volume = %vol, error = %e, "migrated volume not in the ledger");
            }
        }
        Ok(())
    }

    async fn finish(
        &self,
        m: &VolumeMigration,
        phase: MigrationPhase,
        message: Option<String>,
        reason: &str,
    ) -> Result<Step<MigrationPhase>, StoreError> {
        let mut st = m.status.clone().unwrap_or_default();
        st.phase = phase;
        st.phase_since = Some(now_rfc3339());
        if message.is_some() {
            st.message = message.clone();
        }
        let ok = phase == MigrationPhase::Succeeded;
        set_condition(
            &mut st.conditions,
            condition(
                "Finished",
                if ok {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                reason,
                st.message.clone().unwrap_or_else(|| phase.to_string()),
            ),
        );
        self.put(m, st.clone()).await?;
        record(
            self.store,
            m,
            if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason,
            "Migrate",
            st.message.unwrap_or_else(|| phase.to_string()),
        )
        .await;
        if m.metadata.deletion_timestamp.is_some() {
            remove_finalizer::<S, VolumeMigration>(self.store, self.name, MIGRATION_FINALIZER)
                .await?;
        }
        Ok(Step::Done)
    }
}

impl<S: Store> Machine for MigrateVolume<'_, S> {
    type Phase = MigrationPhase;
    type Error = StoreError;

    fn kind(&self) -> &'static str {
        MIGRATE
    }

    fn first(&self) -> MigrationPhase {
        MigrationPhase::Pending
    }

    async fn step(
        &mut self,
        phase: MigrationPhase,
        _data: &mut Option<String>,
    ) -> Result<Step<MigrationPhase>, StoreError> {
        use MigrationPhase as P;
        let Some(m) = self.store.get::<VolumeMigration>(self.name).await? else {
            return Ok(Step::Done);
        };
        let st = m.status.clone().unwrap_or_default();
        let vol = m.spec.volume.clone();
        let both = |p: P| st.source.done == Some(p) && st.destination.done == Some(p);
        match phase {
            P::Pending => self.pending(&m).await,
            P::CreatingVolume | P::SetupPipe | P::Syncing => {
                if let Some(s) = self.roll_back_if(&m, &st).await? {
                    return Ok(s);
                }
                if !both(phase) {
                    return Ok(Step::Wait);
                }
                Ok(Step::Next(match phase {
                    P::CreatingVolume => P::SetupPipe,
                    P::SetupPipe => {
                        self.paths(
                            &vol,
                            &st,
                            Some(AnaState::Optimized),
                            Some(AnaState::Inaccessible),
                        )
                        .await?;
                        P::Syncing
                    }
                    _ => P::Switching,
                }))
            }
            P::Switching => {
                let src_flipped = st.source.done == Some(P::Switching);
                let dst_flipped = st.destination.done == Some(P::Switching);
                if !src_flipped {
                    // The source still serves: a cancel is too late (the
                    // destination may serve already), a failing destination not.
                    let dest_down = self.stuck(&st.destination, &st.target_pool);
                    if dest_down {
                        return self
                            .roll_back_if(&m, &st)
                            .await
                            .map(|s| s.unwrap_or(Step::Wait));
                    }
                    if dst_flipped && self.stuck(&st.source, &st.source_pool) {
                        // The source died (or its target did) after the destination
                        // took over: the destination is authoritative; the source's
                        // agent cleans up when it can.
                        self.paths(&vol, &st, None, Some(AnaState::Optimized))
                            .await?;
                        return Ok(Step::Next(P::Cleaning));
                    }
                }
                self.paths(
                    &vol,
                    &st,
                    Some(if src_flipped {
                        AnaState::Inaccessible
                    } else {
                        AnaState::Optimized
                    }),
                    Some(if dst_flipped {
                        AnaState::Optimized
                    } else {
                        AnaState::Inaccessible
                    }),
                )
                .await?;
                if both(P::Switching) {
                    Ok(Step::Next(P::Cleaning))
                } else {
                    Ok(Step::Wait)
                }
            }
            P::Cleaning => {
                self.move_volume(&vol, &st).await?;
                let source_gone = self.stuck(&st.source, &st.source_pool);
                let source = st.source_node.as_deref().unwrap_or("?");
                if both(P::Cleaning) {
                    let note = format!(
                        "volume {vol} lives on node {} now; node {source}'s copy is deleted",
                        st.target_node.as_deref().unwrap_or("?"),
                    );
                    let m = source_cleaned(
                        m.clone(),
                        ConditionStatus::True,
                        "Cleaned",
                        format!("node {source} deleted its copy of volume {vol}"),
                    );
                    self.finish(&m, P::Succeeded, Some(note), "Migrated").await
                } else if source_gone && st.destination.done == Some(P::Cleaning) {
                    // The destination serves and owes nothing more: the migration
                    // does not wait for a source that is down (its target restarts
                    // with no subsystem, so its stale copy is never served); its
                    // agent deletes the copy when it returns.
                    let note = format!(
                        "volume {vol} lives on node {} now; node {source} does not answer and deletes its copy when it does",
                        st.target_node.as_deref().unwrap_or("?"),
                    );
                    let away = format!(
                        "node {source} did not answer in Cleaning (its pool is {}): its stale copy of volume {vol} is deleted by its agent when it returns",
                        pool_health(self.pools, st.source_pool.as_deref())
                            .map_or_else(|| "gone".into(), |h| format!("{h:?}"))
                    );
                    record(
                        self.store,
                        &m,
                        EventType::Warning,
                        "SourceAway",
                        "Migrate",
                        away.clone(),
                    )
                    .await;
                    let m = source_cleaned(m.clone(), ConditionStatus::False, "SourceAway", away);
                    self.finish(&m, P::Succeeded, Some(note), "Migrated").await
                } else {
                    Ok(Step::Wait)
                }
            }
            P::RollingBack => {
                self.paths(&vol, &st, Some(AnaState::Optimized), None)
                    .await?;
                self.scheduler.release(&ledger_key(&vol));
                // A node that cannot do its part (down, or its target does not
                // answer) does it when it returns.
                let stuck = |s, p| self.stuck(s, p);
                let dest_done = st.destination.done.is_none()
                    || st.destination.done == Some(P::RollingBack)
                    || stuck(&st.destination, &st.target_pool);
                let source_done = st.source.done.is_none_or(|d| d < P::Syncing)
                    || st.source.done == Some(P::RollingBack)
                    || stuck(&st.source, &st.source_pool);
                if !(dest_done && source_done) {
                    return Ok(Step::Wait);
                }
                let cancelled = m.spec.cancel || m.metadata.deletion_timestamp.is_some();
                let why = st.message.clone().unwrap_or_default();
                let leftovers = if st.destination.done.is_some()
                    && st.destination.done != Some(P::RollingBack)
                {
                    format!(
                        "; node {} removes what it made when it returns",
                        st.target_node.as_deref().unwrap_or("?")
                    )
                } else {
                    String::new()
                };
                if cancelled {
                    self.finish(
                        &m,
                        P::RolledBack,
                        Some(format!(
                            "cancelled and rolled back: volume {vol} stays on node {}{leftovers}",
                            st.source_node.as_deref().unwrap_or("?")
                        )),
                        "RolledBack",
                    )
                    .await
                } else {
                    self.finish(
                        &m,
                        P::Failed,
                        Some(format!(
                            "{why}; rolled back: volume {vol} stays on node {}{leftovers}",
                            st.source_node.as_deref().unwrap_or("?")
                        )),
                        "Failed",
                    )
                    .await
                }
            }
            P::Succeeded | P::RolledBack | P::Failed => Ok(Step::Done),
        }
    }
}
