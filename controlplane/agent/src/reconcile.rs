//! Volumes placed on this node made real in the dataplane, and taken down when
//! deleted; objects no Volume claims collected.

use std::collections::{BTreeMap, BTreeSet};

use lightpool_model::quantity::human_bytes;
use lightpool_model::volume::{volume_nqn, AnaState, TargetPath, VolumeTarget};
use lightpool_model::{
    set_condition, Condition, ConditionStatus, Provisioning, Volume, VolumePhase, VolumeStatus,
};
use lightpool_store::{add_finalizer, remove_finalizer, EventType, NewEvent, Store};

use crate::{
    now_string, Agent, AgentError, Dataplane, DataplaneError, Export, PoolVolume, TickReport,
    AGENT_FINALIZER, AGENT_REPORTER,
};

/// NQNs the agent made start with this; others on the target are not its own.
const NQN_PREFIX: &str = "nqn.2024-01.io.lightpool:volume:";

/// What happened to one volume in a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOutcome {
    /// Created in the dataplane and marked Ready.
    Published,
    /// It was Ready but objects were missing: recreated (listed).
    Repaired(Vec<String>),
    /// Grown in the dataplane to this many bytes (its namespace with it).
    Grown(u64),
    /// The grow failed; the Volume's `Resized` condition says why.
    GrowFailed(String),
    /// Taken down and released.
    Removed,
    /// The dataplane refused or failed; the Volume's status says why.
    Failed(String),
}

fn assigned_here<S, D>(agent: &Agent<S, D>, v: &Volume) -> bool {
    v.status.as_ref().is_some_and(|s| {
        s.node.as_deref() == Some(agent.config.node.as_str())
            && s.pool.as_deref() == Some(agent.config.pool.as_str())
    })
}

pub(crate) async fn volumes<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    volumes: &[Volume],
    migrations: &[lightpool_model::VolumeMigration],
    report: &mut TickReport,
) -> Result<(), AgentError> {
    let dp = &agent.dataplane;
    let pool_volumes: BTreeMap<String, PoolVolume> = dp
        .volumes()
        .await?
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    let exports = dp.exports().await?;
    let mut claimed = BTreeSet::new();
    for v in volumes {
        let Some(name) = v.metadata.name.clone() else {
            continue;
        };
        if !assigned_here(agent, v) {
            continue;
        }
        claimed.insert(name.clone());
        let outcome = if v.metadata.deletion_timestamp.is_some() {
            take_down(agent, &name, v, volumes).await?
        } else if crate::migrations::migrating(migrations, &name) {
            // The migration owns its objects and its status until it ends.
            None
        } else {
            bring_up(agent, &name, v, &pool_volumes, &exports).await?
        };
        if let Some(o) = outcome {
            report.volumes.push((name, o));
        }
    }
    // A volume migrating here, or away from here, is the migration's.
    claimed.extend(crate::migrations::arriving(migrations, &agent.config.node).map(String::from));
    claimed.extend(crate::migrations::leaving(migrations, &agent.config.node).map(String::from));
    // Collect what no Volume placed here claims: a Volume deleted while the agent
    // was away, or a crash between a create and the status write.
    let placed_elsewhere: BTreeSet<&str> = volumes
        .iter()
        .filter(|v| !assigned_here(agent, v))
        .filter_map(|v| v.metadata.name.as_deref())
        .collect();
    for nqn in exports.keys() {
        let Some(name) = nqn.strip_prefix(NQN_PREFIX) else {
            continue;
        };
        if !claimed.contains(name) {
            dp.delete_subsystem(nqn).await?;
            report.collected.push(nqn.clone());
        }
    }
    for name in pool_volumes.keys() {
        if !claimed.contains(name) && !placed_elsewhere.contains(name.as_str()) {
            dp.delete_volume(name).await?;
            report.collected.push(format!("pool volume {name}"));
        }
    }
    Ok(())
}

fn size_of(v: &Volume) -> Option<u64> {
    v.status
        .as_ref()
        .and_then(|s| s.size_bytes)
        .or_else(|| v.spec.size.bytes().ok())
}

async fn bring_up<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    v: &Volume,
    pool_volumes: &BTreeMap<String, PoolVolume>,
    exports: &BTreeMap<String, Export>,
) -> Result<Option<VolumeOutcome>, AgentError> {
    let status = v.status.clone().unwrap_or_default();
    // Failed: its publish timed out while this node was away; finished now.
    if !matches!(
        status.phase,
        VolumePhase::Scheduled | VolumePhase::Ready | VolumePhase::Failed
    ) {
        return Ok(None);
    }
    let nqn = volume_nqn(name);
    let mut missing = Vec::new();
    if !pool_volumes.contains_key(name) {
        missing.push(format!("pool volume {name}"));
    }
    match exports.get(&nqn) {
        None => missing.push(format!("subsystem {nqn}")),
        Some(e) if !e.namespaces.contains_key(&1) => missing.push(format!("namespace 1 of {nqn}")),
        Some(_) => {}
    }
    let target = target(agent, &nqn, v);
    let have = pool_volumes.get(name).map(|p| p.size);
    let want = size_of(v);
    let grow = matches!((have, want), (Some(h), Some(w)) if h < w);
    // Exported to this node's kernel through ublk (the CSI node plugin does that
    // through the dataplane's API): the controller refuses to migrate it.
    let ublk = pool_volumes.get(name).is_some_and(|p| p.ublk);
    if missing.is_empty()
        && status.phase == VolumePhase::Ready
        && status.target == Some(target.clone())
        && !grow
        && status.capacity_bytes == have
    {
        if status.ublk != ublk {
            report_ublk(agent, name, v, ublk).await?;
        }
        return Ok(None);
    }
    // The finalizer first: from here on a delete waits for our clean-up.
    if !v
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == AGENT_FINALIZER))
    {
        add_finalizer::<S, Volume>(&agent.store, name, AGENT_FINALIZER).await?;
    }
    let made = make(agent, name, v, &nqn, pool_volumes.get(name)).await;
    // A grow after the namespace exists: the dataplane moves a served namespace to
    // the new size and tells its hosts.
    let grown = match (&made, want) {
        (Ok(pv), Some(w)) if pv.size < w => Some(agent.dataplane.grow_volume(name, w).await),
        _ => None,
    };
    let fresh: Volume = match agent.store.get(name).await? {
        Some(f) => f,
        None => return Ok(None),
    };
    let mut st = fresh.status.clone().unwrap_or_default();
    let mut event = None;
    let outcome = match made {
        Ok(pv) => {
            st.capacity_bytes = Some(pv.size);
            let resized = match grown {
                None => None,
                Some(Ok(g)) => {
                    st.capacity_bytes = Some(g.size);
                    let note = format!(
                        "grown from {} to {} by node {} (hosts connected to it are told)",
                        human_bytes(pv.size),
                        human_bytes(g.size),
                        agent.config.node
                    );
                    resized(&mut st, ConditionStatus::True, "Grown", note.clone());
                    event = Some((EventType::Normal, "Resized", note));
                    Some(VolumeOutcome::Grown(g.size))
                }
                Some(Err(e)) => {
                    let note = format!(
                        "node {} could not grow the volume to {}, it stays at {}: {e}; free space on pool {} (delete volumes or snapshots) or set spec.size back to {}",
                        agent.config.node,
                        human_bytes(want.unwrap_or_default()),
                        human_bytes(pv.size),
                        agent.config.pool,
                        human_bytes(pv.size)
                    );
                    let again = st.conditions.iter().any(|c| {
                        c.type_ == "Resized" && c.reason == "GrowFailed" && c.message == note
                    });
                    resized(&mut st, ConditionStatus::False, "GrowFailed", note.clone());
                    st.message = Some(note.clone());
                    if !again {
                        event = Some((EventType::Warning, "GrowFailed", note.clone()));
                    }
                    Some(VolumeOutcome::GrowFailed(note))
                }
            };
            let repaired = status.phase == VolumePhase::Ready && !missing.is_empty();
            st.phase = VolumePhase::Ready;
            st.target = Some(target);
            st.ublk = ublk;
            if !matches!(resized, Some(VolumeOutcome::GrowFailed(_))) {
                st.message = None;
            }
            ready(
                &mut st,
                ConditionStatus::True,
                "Published",
                format!(
                    "served by {} at {}:{}",
                    agent.config.node, agent.config.address, agent.config.port
                ),
            );
            if repaired {
                drift(&mut st, &missing);
                Some(VolumeOutcome::Repaired(missing))
            } else if resized.is_some() {
                resized
            } else if status.phase == VolumePhase::Ready && missing.is_empty() {
                // Only the served size was recorded.
                None
            } else {
                Some(VolumeOutcome::Published)
            }
        }
        Err(e) => {
            let msg = format!(
                "node {} could not create the volume: {e}",
                agent.config.node
            );
            st.message = Some(msg.clone());
            ready(
                &mut st,
                ConditionStatus::False,
                "DataplaneFailed",
                msg.clone(),
            );
            Some(VolumeOutcome::Failed(msg))
        }
    };
    match agent
        .store
        .patch_status::<Volume>(name, &st, fresh.metadata.resource_version.as_deref())
        .await
    {
        Ok(v2) => {
            if let Some((type_, reason, note)) = event {
                let e = NewEvent::about(&v2, type_, reason, "Resize", note, AGENT_REPORTER);
                if let Err(err) = agent.store.record_event(&e).await {
                    tracing::warn!(volume = %name, reason, error = %err, "could not record an event");
                }
            }
            Ok(outcome)
        }
        // Someone wrote in between: the next tick looks again.
        Err(e) if e.is_conflict() || e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes whether volume `name` is exported through ublk into its status (a
/// conflict leaves it to the next tick).
async fn report_ublk<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    v: &Volume,
    ublk: bool,
) -> Result<(), AgentError> {
    let mut st = v.status.clone().unwrap_or_default();
    st.ublk = ublk;
    crate::patch_status_or_next_tick::<S, Volume>(
        &agent.store,
        name,
        &st,
        v.metadata.resource_version.as_deref(),
    )
    .await
}

/// Each step idempotent: pool volume, subsystem, namespace 1. Returns the pool
/// volume.
async fn make<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    v: &Volume,
    nqn: &str,
    existing: Option<&PoolVolume>,
) -> Result<PoolVolume, DataplaneError> {
    let size =
        size_of(v).ok_or_else(|| DataplaneError::Refused("the volume has no valid size".into()))?;
    let dp = &agent.dataplane;
    // A volume from a snapshot is a clone of the pool snapshot (the scheduler
    // placed it on the snapshot's pool); it shares the snapshot's clusters.
    // A clone made before is kept as it is: once snapshotted itself, its parent
    // is its own snapshot, and the pool would not call it a clone of the source.
    // A volume cloned from another is a clone of an internal snapshot of the source,
    // taken now (see `clone_source`).
    let pv = match (&v.spec.source_snapshot, &v.spec.source_volume, existing) {
        // Made before (perhaps smaller: a grow follows).
        (_, _, Some(pv)) => pv.clone(),
        (Some(snap), _, None) => dp.clone_snapshot(snap, name).await?,
        (None, Some(src), None) => {
            let snap = clone_source(name);
            dp.create_snapshot(src, &snap).await?;
            dp.clone_snapshot(&snap, name).await?
        }
        (None, None, None) => {
            dp.create_volume(name, size, v.spec.provisioning == Provisioning::Thin)
                .await?
        }
    };
    dp.create_subsystem(nqn).await?;
    // The namespace carries the Volume's uid as its UUID: the status says so, and
    // the CSI node finds the device by it.
    dp.add_namespace(nqn, 1, &pv.device, v.metadata.uid.as_deref())
        .await?;
    let (la, lp) = agent.config.listen_at();
    dp.ensure_listener(la, lp).await?;
    Ok(pv)
}

fn target<S, D>(agent: &Agent<S, D>, nqn: &str, v: &Volume) -> VolumeTarget {
    let c = &agent.config;
    VolumeTarget {
        nqn: nqn.to_string(),
        nsid: 1,
        uuid: v.metadata.uid.clone(),
        paths: vec![TargetPath {
            node: c.node.clone(),
            transport: "tcp".into(),
            adrfam: if c.address.contains(':') {
                "ipv6"
            } else {
                "ipv4"
            }
            .into(),
            traddr: c.address.clone(),
            trsvcid: c.port,
            ana_group: 1,
            ana_state: AnaState::Optimized,
        }],
    }
}

fn ready(st: &mut VolumeStatus, status: ConditionStatus, reason: &str, message: String) {
    set_condition(
        &mut st.conditions,
        Condition {
            type_: "Ready".into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: Some(now_string()),
        },
    );
}

fn resized(st: &mut VolumeStatus, status: ConditionStatus, reason: &str, message: String) {
    set_condition(
        &mut st.conditions,
        Condition {
            type_: "Resized".into(),
            status,
            reason: reason.into(),
            message,
            last_transition_time: Some(now_string()),
        },
    );
}

fn drift(st: &mut VolumeStatus, missing: &[String]) {
    set_condition(
        &mut st.conditions,
        Condition {
            type_: "Drift".into(),
            status: ConditionStatus::True,
            reason: "Recreated".into(),
            message: format!(
                "missing from the dataplane and recreated: {}",
                missing.join(", ")
            ),
            last_transition_time: Some(now_string()),
        },
    );
}

/// The pool snapshot a clone of volume `clone`'s source was made from. The pool
/// keeps a snapshot's data for its clones; this one has two (the source, which
/// carries on as a clone of it, and `clone`) and the pool deletes a snapshot only
/// when one is left, handing it the data: so it goes when the clone or the source
/// is deleted, whichever is first. Its name ('_' is not in Kubernetes names)
/// never meets a Snapshot object's.
pub fn clone_source(clone: &str) -> String {
    format!("{clone}_src")
}

/// Deletes the internal snapshot of clone `clone` once it has one volume left;
/// while the pool refuses (both still there) it stays.
async fn release_clone_source<D: Dataplane>(dp: &D, clone: &str) -> Result<(), AgentError> {
    match dp.delete_snapshot(&clone_source(clone)).await {
        Ok(()) | Err(DataplaneError::Refused(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Subsystem (and with it the namespace) first, so hosts are cut off before
/// the data goes; then the pool volume; then the internal snapshots it shared with
/// clones; then the finalizer.
async fn take_down<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    v: &Volume,
    volumes: &[Volume],
) -> Result<Option<VolumeOutcome>, AgentError> {
    if !v
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == AGENT_FINALIZER))
    {
        return Ok(None);
    }
    let dp = &agent.dataplane;
    dp.delete_subsystem(&volume_nqn(name)).await?;
    dp.delete_volume(name).await?;
    if v.spec.source_volume.is_some() {
        release_clone_source(dp, name).await?;
    }
    for c in volumes {
        if c.spec.source_volume.as_deref() == Some(name) {
            if let Some(clone) = c.metadata.name.as_deref() {
                release_clone_source(dp, clone).await?;
            }
        }
    }
    remove_finalizer::<S, Volume>(&agent.store, name, AGENT_FINALIZER).await?;
    Ok(Some(VolumeOutcome::Removed))
}
