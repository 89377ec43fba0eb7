//! Filter: replicas of one database cluster (volumes with the same spread group)
//! go to different failure domains: nodes, or the values of a node label such as
//! `topology.kubernetes.io/zone`. A node without that label is no domain at all.

use crate::plugin::{Decision, FilterPlugin, PoolView};

/// Spread of a database cluster's replicas.
pub struct Spread;

impl FilterPlugin for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn filter(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> bool {
        if d.req.spread_group.is_none() {
            return true;
        }
        match pool.pool.domain(d.req.spread_topology_key.as_deref()) {
            Some(domain) => !d.spread_taken.contains(domain),
            None => false,
        }
    }

    fn reason(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> String {
        let group = d.req.spread_group.as_deref().unwrap_or_default();
        let key = d.req.spread_topology_key.as_deref();
        match pool.pool.domain(key) {
            Some(domain) => match key {
                Some(k) => format!("{k}={domain} already holds a replica of '{group}'"),
                None => format!("node already holds a replica of '{group}'"),
            },
            None => format!(
                "node has no label '{}' to spread '{group}' by",
                key.unwrap_or_default()
            ),
        }
    }
}
