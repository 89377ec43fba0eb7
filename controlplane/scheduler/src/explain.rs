//! Rejections in words: "3 pools: node-a full (needs 100 GiB, has 20 GiB),
//! node-b unhealthy (Unknown), node-c excluded by MustLocal". Long lists name the
//! first pools and count the rest by plugin.

use std::collections::BTreeMap;
use std::fmt;

use lightpool_model::volume::PoolRejection;

/// Pools named one by one in the message before the rest are counted.
pub const NAMED_IN_MESSAGE: usize = 10;
/// Pools listed in `rejections` (the status carries at most this many).
pub const LISTED: usize = 100;

/// No pool took the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// One sentence for the Volume's status and event.
    pub message: String,
    /// Each refusing pool (at most [`LISTED`]), for the status.
    pub rejections: Vec<PoolRejection>,
    /// Pools considered.
    pub pools: usize,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a pool is named in a message: by its node when the pool carries the node's
/// name (the agent's default), else "pool on node".
pub fn pool_label(pool: &str, node: &str) -> String {
    if pool == node {
        node.to_string()
    } else {
        format!("{pool} on {node}")
    }
}

/// Builds the rejection from each pool's (pool, node, plugin, reason).
pub fn unschedulable(all: Vec<PoolRejection>) -> Unschedulable {
    let pools = all.len();
    if pools == 0 {
        return Unschedulable {
            message: "no storage pools: wait for a node's agent to publish one".to_string(),
            rejections: Vec::new(),
            pools,
        };
    }
    let mut parts: Vec<String> = all
        .iter()
        .take(NAMED_IN_MESSAGE)
        .map(|r| format!("{} {}", pool_label(&r.pool, &r.node), r.reason))
        .collect();
    if pools > NAMED_IN_MESSAGE {
        let mut by_plugin: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &all[NAMED_IN_MESSAGE..] {
            *by_plugin.entry(r.plugin.as_str()).or_default() += 1;
        }
        let counts: Vec<String> = by_plugin
            .iter()
            .map(|(p, n)| format!("{n} by {p}"))
            .collect();
        parts.push(format!(
            "and {} more refused ({})",
            pools - NAMED_IN_MESSAGE,
            counts.join(", ")
        ));
    }
    let noun = if pools == 1 { "pool" } else { "pools" };
    let mut rejections = all;
    rejections.truncate(LISTED);
    Unschedulable {
        message: format!("{pools} {noun}: {}", parts.join(", ")),
        rejections,
        pools,
    }
}
