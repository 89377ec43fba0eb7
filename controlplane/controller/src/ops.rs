//! The Volume operations as persisted state machines, and the journal that
//! keeps their record in the Volume's status.

use lightpool_agent::AGENT_FINALIZER;
use lightpool_model::snapshot::SnapshotPhase;
use lightpool_model::validate::validate_volume_against;
use lightpool_model::{
    set_condition, Condition, ConditionStatus, OperationRecord, Snapshot, StoragePool, Volume,
    VolumePhase, VOLUME_FINALIZER,
};
use lightpool_operation::{phases, Journal, Machine, Step};
use lightpool_scheduler::{ScheduleError, Scheduler, VolumeRequest};
use lightpool_store::{add_finalizer, now_rfc3339, remove_finalizer, EventType, Store, StoreError};

use crate::record;

pub(crate) const CREATE: &str = "VolumeCreate";
pub(crate) const DELETE: &str = "VolumeDelete";

phases! {
    pub(crate) enum CreatePhase { Place, Publish }
}

phases! {
    pub(crate) enum DeletePhase { Unpublish, Release }
}

/// Writes the record into the Volume's status (read, set, write with the
/// version read; retried on conflict). Clearing the record of a Volume that
/// is gone is done.
pub(crate) struct VolumeJournal<'a, S> {
    store: &'a S,
    name: &'a str,
}

impl<'a, S> VolumeJournal<'a, S> {
    pub(crate) fn new(store: &'a S, name: &'a str) -> Self {
        VolumeJournal { store, name }
    }
}

impl<S: Store> Journal for VolumeJournal<'_, S> {
    type Error = StoreError;

    async fn save(&mut self, record: Option<&OperationRecord>) -> Result<(), StoreError> {
        for _ in 0..5 {
            let Some(v) = self.store.get::<Volume>(self.name).await? else {
                return match record {
                    None => Ok(()),
                    Some(_) => Err(StoreError::NotFound {
                        kind: "Volume".into(),
                        name: self.name.into(),
                    }),
                };
            };
            let mut st = v.status.clone().unwrap_or_default();
            if st.operation.as_ref() == record {
                return Ok(());
            }
            st.operation = record.cloned();
            match self
                .store
                .patch_status::<Volume>(self.name, &st, v.metadata.resource_version.as_deref())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) if e.is_not_found() && record.is_none() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            kind: "Volume".into(),
            name: self.name.into(),
        })
    }
}

pub(crate) fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: Some(now_rfc3339()),
    }
}

/// A placed volume whose spec was edited (its generation moved past the
/// status's): an invalid edit is refused with what to change (condition
/// `Valid` False, the message, a Warning event) and the volume stays as it was
/// placed. A larger spec.size is a grow: the pool's ledger takes the added bytes
/// (refused, with the room there is, when the pool cannot promise them), the
/// status's size moves to it and the node's agent grows the pool volume (condition
/// `Resized`); a smaller one is refused (volumes only grow). Judged once per
/// generation.
pub(crate) async fn judge_edit<S: Store>(
    store: &S,
    scheduler: &Scheduler,
    pools: &[StoragePool],
    v: &Volume,
) -> Result<(), StoreError> {
    let Some(name) = v.metadata.name.as_deref() else {
        return Ok(());
    };
    let mut st = v.status.clone().unwrap_or_default();
    st.observed_generation = v.metadata.generation;
    let human = lightpool_model::quantity::human_bytes;
    let kept = st
        .size_bytes
        .map_or_else(String::new, |b| format!(" ({})", human(b)));
    let mut grown = None;
    let refusal = match validate_volume_against(&v.spec, pools) {
        Err(invalid) => Some((
            "InvalidEdit",
            format!("this edit is refused, the volume stays as placed{kept}: {invalid}"),
        )),
        Ok(size) => match st.size_bytes {
            // A grow the dataplane has not made (it failed: the pool is full) is
            // taken back, down to what the dataplane serves.
            Some(b) if size < b && st.capacity_bytes.is_some_and(|c| size >= c) => {
                scheduler.shrink_record(name, size);
                grown = Some((b, size));
                None
            }
            Some(b) if size < b => Some((
                "ShrinkNotSupported",
                format!(
                    "spec.size now asks for {}, less than the {} the volume has: a volume only grows (a file system on it cannot shrink under its users); set spec.size back to {} or more",
                    human(size),
                    human(b),
                    human(b)
                ),
            )),
            Some(b) if size > b => match scheduler.grow(name, size) {
                Ok(()) => {
                    grown = Some((b, size));
                    None
                }
                Err(ScheduleError::NoRoomToGrow {
                    pool, more, room, ..
                }) => Some((
                    "NoRoomToGrow",
                    format!(
                        "spec.size asks for {} but pool {pool} of node {} can promise {} more and the grow needs {}: free space there (delete volumes or snapshots, or raise its over-commit) and edit spec.size again, or set it back to {}; the volume stays at {}",
                        human(size),
                        st.node.as_deref().unwrap_or("?"),
                        human(room),
                        human(more),
                        human(b),
                        human(b)
                    ),
                )),
                Err(e) => return Err(StoreError::Invalid(e.to_string())),
            },
            _ => None,
        },
    };
    let cond = match &refusal {
        Some((reason, note)) => condition("Valid", ConditionStatus::False, reason, note.clone()),
        None => condition(
            "Valid",
            ConditionStatus::True,
            "Valid",
            "the spec is valid".into(),
        ),
    };
    let was_refused = st
        .conditions
        .iter()
        .any(|c| c.type_ == "Valid" && c.status == ConditionStatus::False);
    set_condition(&mut st.conditions, cond);
    match &refusal {
        Some((_, note)) => st.message = Some(note.clone()),
        None if was_refused => st.message = None,
        None => {}
    }
    let growing = grown.map(|(from, to)| {
        st.size_bytes = Some(to);
        let (status, reason, note) = if to > from {
            (
                ConditionStatus::False,
                "Growing",
                format!(
                    "growing from {} to {}: node {}'s agent grows it in the dataplane",
                    human(from),
                    human(to),
                    st.node.as_deref().unwrap_or("?")
                ),
            )
        } else {
            st.message = None;
            (
                ConditionStatus::True,
                "GrowTakenBack",
                format!(
                    "the grow to {} is taken back: the volume stays at {}",
                    human(from),
                    human(to)
                ),
            )
        };
        set_condition(
            &mut st.conditions,
            condition("Resized", status, reason, note.clone()),
        );
        note
    });
    let v2 = match store
        .patch_status::<Volume>(name, &st, v.metadata.resource_version.as_deref())
        .await
    {
        Ok(v2) => v2,
        Err(e) => {
            // The ledger goes back with the status: judged again next tick.
            match grown {
                Some((from, to)) if to > from => {
                    scheduler.shrink_record(name, from);
                }
                Some((from, _)) => {
                    let _ = scheduler.grow(name, from);
                }
                None => {}
            }
            return Err(e);
        }
    };
    if let Some((reason, note)) = refusal {
        record(store, &v2, EventType::Warning, reason, "Validate", note).await;
    }
    if let Some(note) = growing {
        record(store, &v2, EventType::Normal, "Resizing", "Resize", note).await;
    }
    Ok(())
}

/// Place, then wait for the agent to publish.
pub(crate) struct CreateVolume<'a, S> {
    store: &'a S,
    scheduler: &'a Scheduler,
    pools: &'a [StoragePool],
    name: &'a str,
    timeout: std::time::Duration,
    /// The run ended with the volume Rejected.
    pub(crate) rejected: bool,
}

/// How long ago `time` (RFC 3339) was; zero when it is absent, unreadable or
/// ahead of this clock.
pub(crate) fn since(time: Option<&str>) -> std::time::Duration {
    time.and_then(lightpool_store::age_of).unwrap_or_default()
}

pub(crate) fn pool_health(
    pools: &[StoragePool],
    pool: Option<&str>,
) -> Option<lightpool_model::PoolHealth> {
    pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == pool)
        .and_then(|p| p.status.as_ref())
        .map(|s| s.health)
}

impl<'a, S> CreateVolume<'a, S> {
    pub(crate) fn new(
        store: &'a S,
        scheduler: &'a Scheduler,
        pools: &'a [StoragePool],
        name: &'a str,
    ) -> Self {
        CreateVolume {
            store,
            scheduler,
            pools,
            name,
            timeout: std::time::Duration::MAX,
            rejected: false,
        }
    }

    /// Gives up waiting for the publish after `t`.
    pub(crate) fn timeout(mut self, t: std::time::Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// What a volume's source snapshot makes of its placement.
enum Source {
    /// The request is bound to the snapshot's pool.
    Placed,
    /// The snapshot is not taken yet.
    Wait,
    /// The volume cannot be made from it: (reason, what to change).
    Refused(&'static str, String),
}

/// A volume restored from snapshot `snap` is a clone in the snapshot's pool: the
/// request is bound to that pool (the scheduler's pool-affinity filter then
/// explains a refusal as any other), and takes the snapshot's size.
async fn from_snapshot<S: Store>(
    store: &S,
    snap: &str,
    size: u64,
    req: &mut VolumeRequest,
) -> Result<Source, StoreError> {
    let Some(s) = store.get::<Snapshot>(snap).await? else {
        return Ok(Source::Refused(
            "SnapshotNotFound",
            format!("snapshot {snap} not found: name an existing Snapshot in spec.sourceSnapshot"),
        ));
    };
    if s.metadata.deletion_timestamp.is_some() {
        return Ok(Source::Refused(
            "SnapshotDeleting",
            format!("snapshot {snap} is being deleted: restore from another"),
        ));
    }
    let st = s.status.unwrap_or_default();
    match (st.phase, st.pool, st.size_bytes) {
        (SnapshotPhase::Ready, Some(pool), Some(bytes)) => {
            if bytes != size {
                return Ok(Source::Refused(
                    "Invalid",
                    format!(
                        "spec.size is {size} bytes but snapshot {snap} holds {bytes}: \
                         a volume restored from a snapshot has the snapshot's size"
                    ),
                ));
            }
            if !req.affinity.pools.is_empty() && !req.affinity.pools.contains(&pool) {
                return Ok(Source::Refused(
                    "Invalid",
                    format!(
                        "snapshot {snap} lives in pool {pool}, which spec.affinity.pools \
                         excludes: add it or drop the pool affinity"
                    ),
                ));
            }
            req.affinity.pools = vec![pool];
            Ok(Source::Placed)
        }
        (SnapshotPhase::Failed, ..) => Ok(Source::Refused(
            "SnapshotFailed",
            format!(
                "snapshot {snap} failed ({}): restore from another",
                st.message.unwrap_or_default()
            ),
        )),
        _ => Ok(Source::Wait),
    }
}

/// A volume cloned from volume `src` is made in the source's pool (an internal
/// snapshot of the source and a clone of it, which the agent makes): the request is
/// bound to that pool, and is at least the source's size (a larger one is grown
/// after the clone is made).
async fn from_volume<S: Store>(
    store: &S,
    src: &str,
    size: u64,
    req: &mut VolumeRequest,
) -> Result<Source, StoreError> {
    let Some(v) = store.get::<Volume>(src).await? else {
        return Ok(Source::Refused(
            "SourceNotFound",
            format!("volume {src} not found: name an existing Volume in spec.sourceVolume"),
        ));
    };
    if v.metadata.deletion_timestamp.is_some() {
        return Ok(Source::Refused(
            "SourceDeleting",
            format!("volume {src} is being deleted: clone another"),
        ));
    }
    let st = v.status.unwrap_or_default();
    match (st.phase, st.pool, st.size_bytes) {
        (VolumePhase::Ready, Some(pool), Some(bytes)) => {
            if size < bytes {
                return Ok(Source::Refused(
                    "Invalid",
                    format!(
                        "spec.size is {size} bytes but volume {src} holds {bytes}: a clone \
                         has at least its source's size"
                    ),
                ));
            }
            if !req.affinity.pools.is_empty() && !req.affinity.pools.contains(&pool) {
                return Ok(Source::Refused(
                    "Invalid",
                    format!(
                        "volume {src} lives in pool {pool}, which spec.affinity.pools \
                         excludes: add it or drop the pool affinity"
                    ),
                ));
            }
            req.affinity.pools = vec![pool];
            Ok(Source::Placed)
        }
        (VolumePhase::Rejected | VolumePhase::Failed, ..) => Ok(Source::Refused(
            "SourceFailed",
            format!(
                "volume {src} is {:?} ({}): clone another",
                st.phase,
                st.message.unwrap_or_default()
            ),
        )),
        _ => Ok(Source::Wait),
    }
}

impl<S: Store> CreateVolume<'_, S> {
    async fn reject(
        &mut self,
        v: &Volume,
        reason: &str,
        message: String,
        rejections: Vec<lightpool_model::volume::PoolRejection>,
    ) -> Result<Step<CreatePhase>, StoreError> {
        let mut st = v.status.clone().unwrap_or_default();
        st.phase = VolumePhase::Rejected;
        st.observed_generation = v.metadata.generation;
        st.message = Some(message.clone());
        st.rejections = rejections;
        set_condition(
            &mut st.conditions,
            condition("Scheduled", ConditionStatus::False, reason, message.clone()),
        );
        self.store
            .patch_status::<Volume>(self.name, &st, v.metadata.resource_version.as_deref())
            .await?;
        record(
            self.store,
            v,
            EventType::Warning,
            reason,
            "Schedule",
            message,
        )
        .await;
        self.rejected = true;
        Ok(Step::Done)
    }
}

impl<S: Store> Machine for CreateVolume<'_, S> {
    type Phase = CreatePhase;
    type Error = StoreError;

    fn kind(&self) -> &'static str {
        CREATE
    }

    fn first(&self) -> CreatePhase {
        CreatePhase::Place
    }

    async fn step(
        &mut self,
        phase: CreatePhase,
        _data: &mut Option<String>,
    ) -> Result<Step<CreatePhase>, StoreError> {
        let Some(v) = self.store.get::<Volume>(self.name).await? else {
            return Ok(Step::Done);
        };
        let st = v.status.clone().unwrap_or_default();
        match phase {
            CreatePhase::Place if st.pool.is_some() => Ok(Step::Next(CreatePhase::Publish)),
            CreatePhase::Place => {
                let size = match validate_volume_against(&v.spec, self.pools) {
                    Ok(size) => size,
                    Err(invalid) => {
                        return self
                            .reject(&v, "Invalid", invalid.to_string(), vec![])
                            .await
                    }
                };
                let mut req = match VolumeRequest::from_spec(self.name, &v.spec) {
                    Ok(r) => r,
                    Err(invalid) => {
                        return self
                            .reject(&v, "Invalid", invalid.to_string(), vec![])
                            .await
                    }
                };
                req.size = size;
                let source = match (&v.spec.source_snapshot, &v.spec.source_volume) {
                    (Some(_), Some(_)) => Source::Refused(
                        "Invalid",
                        "spec.sourceSnapshot and spec.sourceVolume are both set: a volume has one source, keep one".into(),
                    ),
                    (Some(snap), None) => from_snapshot(self.store, snap, size, &mut req).await?,
                    (None, Some(src)) => from_volume(self.store, src, size, &mut req).await?,
                    (None, None) => Source::Placed,
                };
                match source {
                    Source::Placed => {}
                    Source::Wait => return Ok(Step::Wait),
                    Source::Refused(reason, msg) => {
                        return self.reject(&v, reason, msg, vec![]).await
                    }
                }
                let reservation = match self.scheduler.schedule(&req) {
                    Ok(r) => r,
                    Err(ScheduleError::Unschedulable(u)) => {
                        return self.reject(&v, "NoPoolFits", u.message, u.rejections).await
                    }
                    Err(e) => {
                        return Err(StoreError::Invalid(e.to_string()));
                    }
                };
                // The finalizer before the status: a volume holding capacity is
                // never deleted without the controller giving it back.
                let v: Volume = add_finalizer(self.store, self.name, VOLUME_FINALIZER).await?;
                let p = reservation.placement().clone();
                let mut st = v.status.clone().unwrap_or_default();
                st.phase = VolumePhase::Scheduled;
                st.observed_generation = v.metadata.generation;
                st.node = Some(p.node.clone());
                st.pool = Some(p.pool.clone());
                st.size_bytes = Some(size);
                st.local = Some(p.local);
                st.message = None;
                st.rejections = vec![];
                let note = format!(
                    "placed on pool {} of node {} ({})",
                    p.pool,
                    p.node,
                    if p.local { "local" } else { "remote" }
                );
                set_condition(
                    &mut st.conditions,
                    condition("Scheduled", ConditionStatus::True, "Placed", note.clone()),
                );
                // On failure the reservation is dropped: the capacity goes back.
                let v = self
                    .store
                    .patch_status::<Volume>(self.name, &st, v.metadata.resource_version.as_deref())
                    .await?;
                reservation.commit();
                record(
                    self.store,
                    &v,
                    EventType::Normal,
                    "Placed",
                    "Schedule",
                    note,
                )
                .await;
                Ok(Step::Next(CreatePhase::Publish))
            }
            CreatePhase::Publish if st.phase == VolumePhase::Ready => {
                let paths = st.target.as_ref().map_or_else(String::new, |t| {
                    let p: Vec<String> = t
                        .paths
                        .iter()
                        .map(|p| format!("{}:{}", p.traddr, p.trsvcid))
                        .collect();
                    format!("{} at {}", t.nqn, p.join(", "))
                });
                let note = format!(
                    "published by node {}'s agent: {paths}",
                    st.node.as_deref().unwrap_or("?")
                );
                record(
                    self.store,
                    &v,
                    EventType::Normal,
                    "Published",
                    "Publish",
                    note,
                )
                .await;
                Ok(Step::Done)
            }
            CreatePhase::Publish => {
                let placed_at = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Scheduled")
                    .and_then(|c| c.last_transition_time.clone());
                let waited = since(placed_at.as_deref());
                if waited <= self.timeout {
                    return Ok(Step::Wait);
                }
                let node = st.node.clone().unwrap_or_default();
                let health = pool_health(self.pools, st.pool.as_deref())
                    .map_or_else(|| "gone".into(), |h| format!("{h:?}"));
                let note = format!(
                    "node {node}'s agent did not publish the volume within {} s (its pool is {health}): it is published when that agent does; or delete the volume (lightpool volume delete {}) and create it again",
                    self.timeout.as_secs(),
                    self.name
                );
                let mut st = st;
                st.phase = VolumePhase::Failed;
                st.message = Some(note.clone());
                set_condition(
                    &mut st.conditions,
                    condition(
                        "Ready",
                        ConditionStatus::False,
                        "PublishTimedOut",
                        note.clone(),
                    ),
                );
                let v = self
                    .store
                    .patch_status::<Volume>(self.name, &st, v.metadata.resource_version.as_deref())
                    .await?;
                record(
                    self.store,
                    &v,
                    EventType::Warning,
                    "PublishTimedOut",
                    "Publish",
                    note,
                )
                .await;
                Ok(Step::Done)
            }
        }
    }
}

/// Wait for the agent's clean-up, then give the capacity back and let go.
pub(crate) struct DeleteVolume<'a, S> {
    store: &'a S,
    scheduler: &'a Scheduler,
    pools: &'a [StoragePool],
    name: &'a str,
    timeout: std::time::Duration,
}

impl<'a, S> DeleteVolume<'a, S> {
    pub(crate) fn new(
        store: &'a S,
        scheduler: &'a Scheduler,
        pools: &'a [StoragePool],
        name: &'a str,
    ) -> Self {
        DeleteVolume {
            store,
            scheduler,
            pools,
            name,
            timeout: std::time::Duration::MAX,
        }
    }

    /// Stops waiting for an agent whose pool is not Ready after `t`.
    pub(crate) fn timeout(mut self, t: std::time::Duration) -> Self {
        self.timeout = t;
        self
    }
}

impl<S: Store> Machine for DeleteVolume<'_, S> {
    type Phase = DeletePhase;
    type Error = StoreError;

    fn kind(&self) -> &'static str {
        DELETE
    }

    fn first(&self) -> DeletePhase {
        DeletePhase::Unpublish
    }

    async fn step(
        &mut self,
        phase: DeletePhase,
        _data: &mut Option<String>,
    ) -> Result<Step<DeletePhase>, StoreError> {
        let Some(v) = self.store.get::<Volume>(self.name).await? else {
            self.scheduler.release(self.name);
            return Ok(Step::Done);
        };
        match phase {
            DeletePhase::Unpublish => {
                let agent_holds = v
                    .metadata
                    .finalizers
                    .as_ref()
                    .is_some_and(|f| f.iter().any(|x| x == AGENT_FINALIZER));
                if agent_holds {
                    // The agent of the volume's node takes it down first; a
                    // node that is down keeps it (and its data) until it returns.
                    let mut st = v.status.clone().unwrap_or_default();
                    if st.phase != VolumePhase::Deleting {
                        st.phase = VolumePhase::Deleting;
                        let note = format!(
                            "waiting for node {}'s agent to remove the volume",
                            st.node.as_deref().unwrap_or("?")
                        );
                        st.message = Some(note.clone());
                        let v = self
                            .store
                            .patch_status::<Volume>(
                                self.name,
                                &st,
                                v.metadata.resource_version.as_deref(),
                            )
                            .await?;
                        record(
                            self.store,
                            &v,
                            EventType::Normal,
                            "Deleting",
                            "Delete",
                            note,
                        )
                        .await;
                        return Ok(Step::Wait);
                    }
                    let deleted_at = v
                        .metadata
                        .deletion_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string());
                    let waited = since(deleted_at.as_deref());
                    let health = pool_health(self.pools, st.pool.as_deref());
                    if waited <= self.timeout || health == Some(lightpool_model::PoolHealth::Ready)
                    {
                        return Ok(Step::Wait);
                    }
                    // The node is away for longer than a delete waits: let go.
                    // Its agent, when it returns, removes what no Volume claims.
                    let node = st.node.as_deref().unwrap_or("?");
                    let note = format!(
                        "node {node} did not remove the volume within {} s (its pool is {}): deleted here; node {node}'s agent removes its copy when it returns",
                        self.timeout.as_secs(),
                        health.map_or_else(|| "gone".into(), |h| format!("{h:?}"))
                    );
                    tracing::warn!(volume = %self.name, "{note}");
                    record(
                        self.store,
                        &v,
                        EventType::Warning,
                        "DeleteTimedOut",
                        "Delete",
                        note,
                    )
                    .await;
                    remove_finalizer::<S, Volume>(self.store, self.name, AGENT_FINALIZER).await?;
                }
                Ok(Step::Next(DeletePhase::Release))
            }
            DeletePhase::Release => {
                let st = v.status.clone().unwrap_or_default();
                let note = match &st.pool {
                    Some(p) => format!("deleted: its capacity on pool {p} given back"),
                    None => "deleted (it held no capacity)".into(),
                };
                record(self.store, &v, EventType::Normal, "Deleted", "Delete", note).await;
                self.scheduler.release(self.name);
                remove_finalizer::<S, Volume>(self.store, self.name, VOLUME_FINALIZER).await?;
                Ok(Step::Done)
            }
        }
    }
}
