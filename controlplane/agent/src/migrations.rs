//! This node's side of the live migrations that name it (see
//! `lightpool_model::migration`): the controller moves a VolumeMigration through
//! its phases, and each tick the agents of its two nodes make their dataplanes
//! match the phase, each step idempotent, and report the last phase whose work
//! they finished (`status.source.done`, `status.destination.done`) or the error.
//!
//! | phase          | destination                                  | source                               |
//! |----------------|----------------------------------------------|--------------------------------------|
//! | CreatingVolume | pool volume of the same size                 | reports its address and cntlid range |
//! | SetupPipe      | subsystem (same NQN, ANA group 1 inaccessible, the other cntlid half), namespace 1 (same UUID), the pipe subsystem | -- |
//! | Syncing        | checks its objects are still there            | StartMigration to the pipe; progress; done when synced |
//! | Switching      | ANA group 1 optimized                         | after the destination: inaccessible   |
//! | Cleaning       | the pipe goes                                 | StopMigration; once no host is connected (or after `HOST_PATH_WAIT`), subsystem and pool volume go |
//! | RollingBack    | subsystem, pipe, pool volume go               | StopMigration, ANA optimized          |
//!
//! A node that was away when its phase passed does the work when it returns, as
//! long as the VolumeMigration is there: a source dead at the switch deletes its
//! copy, a destination dead at a rollback what it made.

use lightpool_model::migration::{other_cntlid_half, pipe_nqn, CntlidRange, SOURCE_CLEANED};
use lightpool_model::volume::{volume_nqn, AnaState};
use lightpool_model::{
    set_condition, Condition, ConditionStatus, MigrationPhase, MigrationSide, Provisioning, Volume,
    VolumeMigration, VolumeMigrationStatus,
};
use lightpool_store::Store;

use crate::{Agent, AgentError, Dataplane, DataplaneError, MigrationStart};

/// The namespace that moves (the agent serves each volume as namespace 1).
const NSID: u32 = 1;
/// The volume's ANA group on every node.
const ANA_GROUP: u32 = 1;
/// How long the source waits in Cleaning (from the phase's start) for the hosts
/// connected to its path to drop it before deleting its subsystem anyway.
pub const HOST_PATH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Which side of a migration this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// What this node did for one migration in a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationOutcome {
    /// Finished this phase's work on this node.
    Done(MigrationPhase),
    /// Copying: the progress was reported.
    Copying(u64, u64),
    /// The work failed; reported in the side's `error`.
    Failed(String),
}

/// Whether `v` is held by an active migration (the agent leaves its objects and
/// its status to the migration).
pub fn migrating(migrations: &[VolumeMigration], volume: &str) -> bool {
    active(migrations, volume).is_some()
}

fn active<'a>(migrations: &'a [VolumeMigration], volume: &str) -> Option<&'a VolumeMigration> {
    migrations.iter().find(|m| {
        m.spec.volume == volume
            && m.status
                .as_ref()
                .is_some_and(|s| s.phase.is_active() && s.phase != MigrationPhase::Pending)
    })
}

/// The volumes an active migration brings to this node: their subsystems here
/// are the migration's, not garbage.
pub(crate) fn arriving<'a>(
    migrations: &'a [VolumeMigration],
    node: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    migrations
        .iter()
        .filter(move |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.phase.is_active() && s.target_node.as_deref() == Some(node))
        })
        .map(|m| m.spec.volume.as_str())
}

/// The volumes an active migration takes from this node: their objects here are the
/// migration's until its Cleaning removes them (once the hosts let go), not garbage
/// as soon as the Volume names the destination.
pub(crate) fn leaving<'a>(
    migrations: &'a [VolumeMigration],
    node: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    migrations
        .iter()
        .filter(move |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.phase.is_active() && s.source_node.as_deref() == Some(node))
        })
        .map(|m| m.spec.volume.as_str())
}

pub(crate) async fn reconcile<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    volumes: &[Volume],
    migrations: &[VolumeMigration],
) -> Result<Vec<(String, MigrationOutcome)>, AgentError> {
    let mut out = Vec::new();
    let c = &agent.config;
    for m in migrations {
        let (Some(name), Some(st)) = (m.metadata.name.as_deref(), m.status.as_ref()) else {
            continue;
        };
        let is = |node: &Option<String>, pool: &Option<String>| {
            node.as_deref() == Some(c.node.as_str()) && pool.as_deref() == Some(c.pool.as_str())
        };
        let side = if is(&st.source_node, &st.source_pool) {
            Side::Source
        } else if is(&st.target_node, &st.target_pool) {
            Side::Destination
        } else {
            continue;
        };
        let Some(work) = work_of(side, st) else {
            continue;
        };
        let volume = volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(m.spec.volume.as_str()));
        // The pool opened first (a restarted target opens it on first use): a
        // delete of a volume in a pool not open yet would find nothing to delete.
        let result = match agent.dataplane.pool().await {
            Err(e) => Err(e),
            Ok(_) => match side {
                Side::Source => source(agent, m, st, work).await,
                Side::Destination => destination(agent, m, st, work, volume).await,
            },
        };
        let (report, outcome) = match result {
            Ok(Some(Report::Done)) => (Patch::Done(work), MigrationOutcome::Done(work)),
            Ok(Some(Report::Progress(p, synced))) => {
                let o = MigrationOutcome::Copying(p.copied_bytes, p.total_bytes);
                (Patch::Progress(p, synced), o)
            }
            Ok(None) => continue,
            Err(e) => {
                let msg = format!("node {}: {e}", c.node);
                (Patch::Error(msg.clone()), MigrationOutcome::Failed(msg))
            }
        };
        write(agent, name, side, report).await?;
        out.push((name.to_string(), outcome));
    }
    Ok(out)
}

/// The phase whose work this side owes, if any: the current phase, or for a
/// finished migration the clean-up it missed while away.
fn work_of(side: Side, st: &VolumeMigrationStatus) -> Option<MigrationPhase> {
    use MigrationPhase as P;
    let mine = match side {
        Side::Source => &st.source,
        Side::Destination => &st.destination,
    };
    let want = match (st.phase, side) {
        (P::Pending, _) => return None,
        // Progress is reported on every tick until synced.
        (P::Syncing, Side::Source) => P::Syncing,
        (P::Succeeded, Side::Source) => P::Cleaning,
        (P::Succeeded, Side::Destination) => return None,
        // Refused ones made nothing; failed ones rolled back (or owe it).
        (P::Failed | P::RolledBack, _) if mine.done.is_none() => return None,
        (P::Failed | P::RolledBack, _) => P::RollingBack,
        (p, _) => p,
    };
    if mine.done == Some(want) {
        return None;
    }
    // The source flips after the destination did.
    if want == P::Switching && side == Side::Source && st.destination.done != Some(P::Switching) {
        return None;
    }
    Some(want)
}

enum Report {
    Done,
    Progress(lightpool_model::MigrationProgress, bool),
}

enum Patch {
    Done(MigrationPhase),
    Progress(lightpool_model::MigrationProgress, bool),
    Error(String),
}

async fn source<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    m: &VolumeMigration,
    st: &VolumeMigrationStatus,
    work: MigrationPhase,
) -> Result<Option<Report>, DataplaneError> {
    use MigrationPhase as P;
    let dp = &agent.dataplane;
    let nqn = volume_nqn(&m.spec.volume);
    match work {
        P::CreatingVolume => {
            // A consumer on this node reads and writes the volume through this
            // target's ublk export: no path of a host's multipath to move.
            let name = m.spec.volume.as_str();
            if dp.volumes().await?.iter().any(|v| v.name == name && v.ublk) {
                return Err(DataplaneError::Refused(format!(
                    "volume {name} is staged through ublk on node {} (its consumer runs there and reads the pool directly): a local export cannot follow a migration. Stop the consumer (the volume is unstaged), or stage it over NVMe/TCP (a CSI node plugin without --dataplane-api), then migrate again",
                    agent.config.node
                )));
            }
            Ok(Some(Report::Done))
        }
        P::SetupPipe => Ok(Some(Report::Done)),
        P::Syncing => {
            let (Some(addr), Some(port)) = (&st.destination.address, st.destination.port) else {
                return Ok(None);
            };
            let dest_address = if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            };
            let x = match dp.migration(&nqn, NSID).await? {
                Some(x) => x,
                None => {
                    dp.start_migration(&MigrationStart {
                        nqn: nqn.clone(),
                        nsid: NSID,
                        dest_address,
                        dest_nqn: pipe_nqn(&m.spec.volume),
                        dest_nsid: NSID,
                        rate_limit: m.spec.rate_limit_bytes,
                    })
                    .await?
                }
            };
            match x.progress.state.as_str() {
                "failed" | "cancelled" => Err(DataplaneError::Refused(format!(
                    "the copy to {addr}:{port} {}: {}",
                    x.progress.state,
                    x.error.unwrap_or_else(|| "no reason given".into())
                ))),
                s => {
                    let synced = s == "synced";
                    Ok(Some(Report::Progress(x.progress, synced)))
                }
            }
        }
        P::Switching => {
            dp.set_ana_state(&nqn, ANA_GROUP, AnaState::Inaccessible)
                .await?;
            Ok(Some(Report::Done))
        }
        P::Cleaning => {
            // The destination serves; the mirror ends, then the source's copy goes,
            // once the consumers' hosts have dropped their path to it (the CSI
            // follower does when the Volume lists the destination alone): a path
            // deleted under a host fails there and is retried until dropped.
            dp.stop_migration(&nqn, NSID).await?;
            let connected = dp.exports().await?.get(&nqn).map_or(0, |e| e.controllers);
            if connected > 0 {
                let waited = st
                    .phase_since
                    .as_deref()
                    .and_then(lightpool_store::age_of)
                    .unwrap_or_default();
                if waited < HOST_PATH_WAIT {
                    return Ok(None);
                }
                tracing::warn!(
                    volume = %m.spec.volume,
                    connected,
                    "hosts kept their path to the source {}s after the switch: deleting it anyway (their I/O runs on the destination)",
                    HOST_PATH_WAIT.as_secs()
                );
            }
            dp.delete_subsystem(&nqn).await?;
            dp.delete_volume(&m.spec.volume).await?;
            Ok(Some(Report::Done))
        }
        P::RollingBack => {
            dp.stop_migration(&nqn, NSID).await?;
            if dp.exports().await?.contains_key(&nqn) {
                dp.set_ana_state(&nqn, ANA_GROUP, AnaState::Optimized)
                    .await?;
            }
            Ok(Some(Report::Done))
        }
        P::Pending | P::Succeeded | P::Failed | P::RolledBack => Ok(None),
    }
}

async fn destination<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    m: &VolumeMigration,
    st: &VolumeMigrationStatus,
    work: MigrationPhase,
    volume: Option<&Volume>,
) -> Result<Option<Report>, DataplaneError> {
    use MigrationPhase as P;
    let dp = &agent.dataplane;
    let name = m.spec.volume.as_str();
    let nqn = volume_nqn(name);
    let pipe = pipe_nqn(name);
    match work {
        P::CreatingVolume => {
            let size = st
                .size_bytes
                .ok_or_else(|| DataplaneError::Refused("the migration has no size yet".into()))?;
            if !dp.volumes().await?.iter().any(|v| v.name == name) {
                let thin = volume.is_some_and(|v| v.spec.provisioning == Provisioning::Thin);
                dp.create_volume(name, size, thin).await?;
            }
            Ok(Some(Report::Done))
        }
        P::SetupPipe => {
            let Some(source) = st.source.cntlid else {
                return Ok(None);
            };
            let source = (source.first, source.last);
            let device = dp
                .volumes()
                .await?
                .into_iter()
                .find(|v| v.name == name)
                .map(|v| v.device)
                .ok_or_else(|| DataplaneError::Refused(format!("pool volume {name} is gone")))?;
            // Inaccessible before the namespace is there: no host ever sees this
            // path serve before the switch.
            dp.create_subsystem_with(&nqn, other_cntlid_half(source))
                .await?;
            dp.set_ana_state(&nqn, ANA_GROUP, AnaState::Inaccessible)
                .await?;
            let uuid = volume.and_then(|v| v.metadata.uid.as_deref());
            dp.add_namespace(&nqn, NSID, &device, uuid).await?;
            dp.create_subsystem(&pipe).await?;
            dp.add_namespace(&pipe, NSID, &device, None).await?;
            let (la, lp) = agent.config.listen_at();
            dp.ensure_listener(la, lp).await?;
            Ok(Some(Report::Done))
        }
        P::Syncing => {
            let exports = dp.exports().await?;
            for n in [&nqn, &pipe] {
                if !exports
                    .get(n)
                    .is_some_and(|e| e.namespaces.contains_key(&NSID))
                {
                    return Err(DataplaneError::Refused(format!(
                        "subsystem {n} lost its namespace (the target restarted?)"
                    )));
                }
            }
            Ok(Some(Report::Done))
        }
        P::Switching => {
            dp.set_ana_state(&nqn, ANA_GROUP, AnaState::Optimized)
                .await?;
            Ok(Some(Report::Done))
        }
        P::Cleaning => {
            dp.delete_subsystem(&pipe).await?;
            Ok(Some(Report::Done))
        }
        P::RollingBack => {
            dp.delete_subsystem(&pipe).await?;
            dp.delete_subsystem(&nqn).await?;
            dp.delete_volume(name).await?;
            Ok(Some(Report::Done))
        }
        P::Pending | P::Succeeded | P::Failed | P::RolledBack => Ok(None),
    }
}

/// Writes this side's report (read, change, write with the version read); a
/// conflict leaves it to the next tick.
async fn write<S: Store, D: Dataplane>(
    agent: &Agent<S, D>,
    name: &str,
    side: Side,
    patch: Patch,
) -> Result<(), AgentError> {
    let Some(m) = agent.store.get::<VolumeMigration>(name).await? else {
        return Ok(());
    };
    let mut st = m.status.clone().unwrap_or_default();
    let c = &agent.config;
    // Best effort: a report that the target does not answer must still go out.
    let cntlid = match side {
        Side::Source => agent
            .dataplane
            .exports()
            .await
            .ok()
            .and_then(|e| e.get(&volume_nqn(&m.spec.volume)).cloned())
            .map(|e| CntlidRange {
                first: e.cntlid.0,
                last: e.cntlid.1,
            }),
        Side::Destination => None,
    };
    let mine: &mut MigrationSide = match side {
        Side::Source => &mut st.source,
        Side::Destination => &mut st.destination,
    };
    mine.address = Some(c.address.clone());
    mine.port = Some(c.port);
    if cntlid.is_some() {
        mine.cntlid = cntlid;
    }
    match patch {
        Patch::Done(p) => {
            mine.done = Some(p);
            mine.error = None;
            mine.error_since = None;
            // A source that was down at Cleaning (the migration succeeded without
            // it) has deleted its stale copy now.
            if side == Side::Source
                && p == MigrationPhase::Cleaning
                && st.phase == MigrationPhase::Succeeded
            {
                set_condition(
                    &mut st.conditions,
                    Condition {
                        type_: SOURCE_CLEANED.into(),
                        status: ConditionStatus::True,
                        reason: "Cleaned".into(),
                        message: format!(
                            "node {} deleted its copy of volume {} when it returned",
                            c.node, m.spec.volume
                        ),
                        last_transition_time: Some(crate::now_string()),
                    },
                );
            }
        }
        Patch::Progress(p, synced) => {
            if synced {
                mine.done = Some(MigrationPhase::Syncing);
            }
            mine.error = None;
            mine.error_since = None;
            st.progress = Some(p);
        }
        Patch::Error(e) => {
            if mine.error_since.is_none() {
                mine.error_since = Some(crate::now_string());
            }
            mine.error = Some(e);
        }
    }
    if Some(&st) == m.status.as_ref() {
        return Ok(());
    }
    crate::patch_status_or_next_tick::<S, VolumeMigration>(
        &agent.store,
        name,
        &st,
        m.metadata.resource_version.as_deref(),
    )
    .await
}
