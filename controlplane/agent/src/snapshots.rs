//! Snapshots of the volumes on this node taken in the pool, and deleted from it.
//!
//! A Snapshot is this agent's while its volume sits on this node's pool (and,
//! once taken, while its status names this pool: a snapshot outlives its
//! volume, as CSI expects, and a volume may be restored from it later). Each
//! step is idempotent and recorded as an event:
//! - Pending, the volume Ready here: the finalizer first, then the pool snapshot
//!   named after the Snapshot object, then status Ready with size, pool and the
//!   time the pool took it (`Taken`). A refusal is phase Failed with the pool's
//!   reason (`TakeFailed`); the volume not Ready yet leaves it Pending with a
//!   message that says what it waits for.
//! - Deleted: the pool snapshot goes, then the finalizer. While the pool refuses
//!   (more than one volume depends on it) the phase is Deleting and the message
//!   and a Warning event (`DeleteRefused`) name the clones to delete first.
//! - Ready but gone from the pool (removed behind the agent's back): Failed
//!   (`Lost`); a snapshot cannot be taken again of a past state.

use std::collections::BTreeMap;

use lightpool_model::snapshot::{SnapshotPhase, SnapshotStatus};
use lightpool_model::{Snapshot, Volume, VolumePhase};
use lightpool_store::{add_finalizer, remove_finalizer, EventType, NewEvent, Store};

use crate::{Agent, AgentError, Dataplane, DataplaneError, PoolSnapshot, AGENT_FINALIZER};

/// The reporter of the agent's events.
pub const AGENT_REPORTER: &str = "lightpool-agent";

/// What happened to one snapshot in a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Taken in the pool and marked Ready.
    Taken,
    /// Waiting for its volume (the message says what for).
    Waiting,
    /// Refused by the pool; the status says why.
    Failed(String),
    /// Gone from the pool and released.
    Deleted,
    /// The pool refused to delete it; the status says why.
    DeleteRefused(String),
    /// Ready but missing from the pool.
    Lost,
}

fn has_finalizer(s: &Snapshot) -> bool {
    s.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == AGENT_FINALIZER))
}

pub(crate) async fn reconcile<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    volumes: &[Volume],
) -> Result<Vec<(String, SnapshotOutcome)>, AgentError> {
    let snapshots = agent.store.list::<Snapshot>().await?.items;
    let mut out = Vec::new();
    if snapshots.is_empty() {
        return Ok(out);
    }
    let pool = agent.config.pool.as_str();
    let here: BTreeMap<&str, &Volume> = volumes
        .iter()
        .filter(|v| {
            v.status.as_ref().is_some_and(|s| {
                s.pool.as_deref() == Some(pool)
                    && s.node.as_deref() == Some(agent.config.node.as_str())
            })
        })
        .filter_map(|v| Some((v.metadata.name.as_deref()?, v)))
        .collect();
    let in_pool: BTreeMap<String, PoolSnapshot> = agent
        .dataplane
        .snapshots()
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    for s in &snapshots {
        let Some(name) = s.metadata.name.clone() else {
            continue;
        };
        let status = s.status.clone().unwrap_or_default();
        let mine = match status.pool.as_deref() {
            Some(p) => p == pool,
            None => here.contains_key(s.spec.volume.as_str()),
        };
        if !mine {
            continue;
        }
        let outcome = if s.metadata.deletion_timestamp.is_some() {
            delete(agent, &name, s, status).await?
        } else {
            match status.phase {
                SnapshotPhase::Pending => {
                    take(agent, &name, s, status, here.get(s.spec.volume.as_str())).await?
                }
                SnapshotPhase::Ready if !in_pool.contains_key(&name) => {
                    lost(agent, &name, s, status).await?
                }
                _ => None,
            }
        };
        if let Some(o) = outcome {
            out.push((name, o));
        }
    }
    Ok(out)
}

async fn event<S: Store>(
    store: &S,
    s: &Snapshot,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let e = NewEvent::about(s, type_, reason, action, note, AGENT_REPORTER);
    if let Err(err) = store.record_event(&e).await {
        tracing::warn!(snapshot = %e.name, reason, error = %err, "could not record an event");
    }
}

/// Writes `status` over the snapshot's; `false` when someone wrote in between
/// or it is gone (the next tick looks again).
async fn write<S: Store>(
    store: &S,
    name: &str,
    status: &SnapshotStatus,
    version: Option<&str>,
) -> Result<bool, AgentError> {
    match store.patch_status::<Snapshot>(name, status, version).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_conflict() || e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn take<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    s: &Snapshot,
    mut status: SnapshotStatus,
    volume: Option<&&Volume>,
) -> Result<Option<SnapshotOutcome>, AgentError> {
    let Some(volume) = volume else {
        return Ok(None);
    };
    let vname = &s.spec.volume;
    if volume.metadata.deletion_timestamp.is_some() {
        let msg = format!("volume {vname} is being deleted: snapshot another volume");
        status.phase = SnapshotPhase::Failed;
        status.message = Some(msg.clone());
        if write(
            &agent.store,
            name,
            &status,
            s.metadata.resource_version.as_deref(),
        )
        .await?
        {
            event(
                &agent.store,
                s,
                EventType::Warning,
                "TakeFailed",
                "Snapshot",
                msg.clone(),
            )
            .await;
        }
        return Ok(Some(SnapshotOutcome::Failed(msg)));
    }
    let vphase = volume.status.as_ref().map(|v| v.phase).unwrap_or_default();
    if vphase != VolumePhase::Ready {
        let msg = format!("waiting for volume {vname} to be Ready (it is {vphase:?})");
        if status.message.as_deref() != Some(msg.as_str()) {
            status.message = Some(msg);
            write(
                &agent.store,
                name,
                &status,
                s.metadata.resource_version.as_deref(),
            )
            .await?;
        }
        return Ok(Some(SnapshotOutcome::Waiting));
    }
    // The finalizer first: from here on a delete waits for the pool snapshot to go.
    let s = if has_finalizer(s) {
        s.clone()
    } else {
        add_finalizer::<S, Snapshot>(&agent.store, name, AGENT_FINALIZER).await?
    };
    let node = &agent.config.node;
    let (outcome, reason, type_, note) = match agent.dataplane.create_snapshot(vname, name).await {
        Ok(p) => {
            status.phase = SnapshotPhase::Ready;
            status.size_bytes = Some(p.size);
            status.pool = Some(agent.config.pool.clone());
            status.taken_at = lightpool_store::rfc3339_of_unix(p.created);
            status.message = None;
            let note = format!(
                "took {} bytes of volume {vname} in pool {} on {node}",
                p.size, agent.config.pool
            );
            (SnapshotOutcome::Taken, "Taken", EventType::Normal, note)
        }
        Err(e @ DataplaneError::Unavailable(_)) => return Err(e.into()),
        Err(e) => {
            let msg = format!("node {node} could not snapshot volume {vname}: {e}");
            status.phase = SnapshotPhase::Failed;
            status.message = Some(msg.clone());
            (
                SnapshotOutcome::Failed(msg.clone()),
                "TakeFailed",
                EventType::Warning,
                msg,
            )
        }
    };
    if !write(
        &agent.store,
        name,
        &status,
        s.metadata.resource_version.as_deref(),
    )
    .await?
    {
        return Ok(None);
    }
    event(&agent.store, &s, type_, reason, "Snapshot", note).await;
    Ok(Some(outcome))
}

async fn delete<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    s: &Snapshot,
    mut status: SnapshotStatus,
) -> Result<Option<SnapshotOutcome>, AgentError> {
    if !has_finalizer(s) {
        return Ok(None);
    }
    match agent.dataplane.delete_snapshot(name).await {
        Ok(()) => {
            event(
                &agent.store,
                s,
                EventType::Normal,
                "Deleted",
                "Delete",
                format!(
                    "deleted from pool {} on {}",
                    agent.config.pool, agent.config.node
                ),
            )
            .await;
            remove_finalizer::<S, Snapshot>(&agent.store, name, AGENT_FINALIZER).await?;
            Ok(Some(SnapshotOutcome::Deleted))
        }
        Err(DataplaneError::Refused(why)) => {
            let msg = format!(
                "pool {} refused to delete it: {why}; it stays until then",
                agent.config.pool
            );
            if status.phase != SnapshotPhase::Deleting || status.message.as_deref() != Some(&msg) {
                status.phase = SnapshotPhase::Deleting;
                status.message = Some(msg.clone());
                write(
                    &agent.store,
                    name,
                    &status,
                    s.metadata.resource_version.as_deref(),
                )
                .await?;
            }
            event(
                &agent.store,
                s,
                EventType::Warning,
                "DeleteRefused",
                "Delete",
                msg.clone(),
            )
            .await;
            Ok(Some(SnapshotOutcome::DeleteRefused(msg)))
        }
        Err(e) => Err(e.into()),
    }
}

async fn lost<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    s: &Snapshot,
    mut status: SnapshotStatus,
) -> Result<Option<SnapshotOutcome>, AgentError> {
    let msg = format!(
        "missing from pool {} on {}: removed outside LightPool; delete this Snapshot",
        agent.config.pool, agent.config.node
    );
    status.phase = SnapshotPhase::Failed;
    status.message = Some(msg.clone());
    if write(
        &agent.store,
        name,
        &status,
        s.metadata.resource_version.as_deref(),
    )
    .await?
    {
        event(&agent.store, s, EventType::Warning, "Lost", "Snapshot", msg).await;
    }
    Ok(Some(SnapshotOutcome::Lost))
}
