//! Pool health from the node heartbeats: a pool whose node's Lease has not been
//! renewed for [`crate::ControllerConfig::silence`] (judged on this controller's
//! clock) is Unknown and gets no new volumes; when renewals return it is Ready
//! again.

use lightpool_agent::node_lease;
use lightpool_model::{set_condition, Condition, ConditionStatus, PoolHealth, StoragePool};
use lightpool_store::{now_rfc3339, EventType, Store};
use tokio::time::Instant;

use crate::{Controller, ControllerError, TickReport};

/// The pool condition the controller keeps.
pub const HEARTBEAT_CONDITION: &str = "Heartbeat";

/// Lists the pools, corrects their health, and returns them as now stored.
pub(crate) async fn judge<S: Store>(
    c: &mut Controller<S>,
    report: &mut TickReport,
) -> Result<Vec<StoragePool>, ControllerError> {
    let now = Instant::now();
    let mut pools = c.store.list::<StoragePool>().await?.items;
    let deadline = c.config.silence();
    for pool in &mut pools {
        let Some(name) = pool.metadata.name.clone() else {
            continue;
        };
        let node = pool.spec.node.name.clone();
        let live = match c.store.get_lease(&node_lease(&node)).await? {
            Some(lease) => c.heartbeats.observe(&lease, now),
            None => false,
        };
        let mut st = pool.status.clone().unwrap_or_default();
        let was_silent = st
            .conditions
            .iter()
            .any(|c| c.type_ == HEARTBEAT_CONDITION && c.status == ConditionStatus::False);
        let (health, cond) = if live {
            let back = st.health == PoolHealth::Unknown && was_silent;
            let health = if back { PoolHealth::Ready } else { st.health };
            (
                health,
                Condition {
                    type_: HEARTBEAT_CONDITION.into(),
                    status: ConditionStatus::True,
                    reason: "Renewed".into(),
                    message: format!("node {node}'s agent renews its heartbeat"),
                    last_transition_time: Some(now_rfc3339()),
                },
            )
        } else {
            (
                PoolHealth::Unknown,
                Condition {
                    type_: HEARTBEAT_CONDITION.into(),
                    status: ConditionStatus::False,
                    reason: "Missed".into(),
                    message: format!(
                        "node {node}'s agent has not renewed its heartbeat for {:.1} s (due every {} s): no new volumes go there",
                        deadline.as_secs_f64(),
                        c.config.heartbeat.as_secs()
                    ),
                    last_transition_time: Some(now_rfc3339()),
                },
            )
        };
        let changed_health = health != st.health;
        st.health = health;
        let changed = set_condition(&mut st.conditions, cond) || changed_health;
        if changed {
            let written = match c
                .store
                .patch_status::<StoragePool>(&name, &st, pool.metadata.resource_version.as_deref())
                .await
            {
                Ok(p) => {
                    *pool = p;
                    true
                }
                // The agent published in between; judged again at the next look.
                Err(e) if e.is_conflict() || e.is_not_found() => false,
                Err(e) => return Err(e.into()),
            };
            if changed_health && written {
                tracing::info!(pool = %name, ?health, "pool health changed");
                report.health_changes.push((name.clone(), health));
            }
            // The heartbeat's transitions are events (the agent may have set
            // the pool's health back itself when it returned).
            if written && live == was_silent {
                let (type_, reason) = if live {
                    (EventType::Normal, "HeartbeatBack")
                } else {
                    (EventType::Warning, "HeartbeatMissed")
                };
                let note = st
                    .conditions
                    .iter()
                    .find(|c| c.type_ == HEARTBEAT_CONDITION)
                    .map(|c| format!("pool {name} is {health:?}: {}", c.message))
                    .unwrap_or_default();
                crate::record(&c.store, &*pool, type_, reason, "Heartbeat", note).await;
            }
        }
        let silent = pool.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == HEARTBEAT_CONDITION && c.status == ConditionStatus::False)
        });
        c.pool_nodes.insert(name.clone(), (node, silent));
        let seen = pool
            .status
            .as_ref()
            .map_or((PoolHealth::Unknown, 0), |s| (s.health, s.capacity_bytes));
        if c.pool_seen.insert(name, seen) != Some(seen) {
            c.pool_epoch += 1;
        }
    }
    c.pool_nodes
        .retain(|n, _| pools.iter().any(|p| p.metadata.name.as_deref() == Some(n)));
    Ok(pools)
}
