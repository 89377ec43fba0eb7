//! Filter: the volume's node and pool lists and label selectors.

use crate::plugin::{Decision, FilterPlugin, PoolView};

/// Node and pool affinity.
pub struct Affinity;

impl FilterPlugin for Affinity {
    fn name(&self) -> &'static str {
        "affinity"
    }

    fn filter(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> bool {
        let a = &d.req.affinity;
        (a.nodes.is_empty() || a.nodes.contains(&pool.pool.node))
            && (a.pools.is_empty() || a.pools.contains(&pool.pool.name))
            && a.node_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pool.pool.node_labels))
            && a.pool_selector
                .as_ref()
                .is_none_or(|s| s.matches(&pool.pool.pool_labels))
    }

    fn reason(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> String {
        let a = &d.req.affinity;
        if !a.nodes.is_empty() && !a.nodes.contains(&pool.pool.node) {
            return "not in spec.affinity.nodes".to_string();
        }
        if !a.pools.is_empty() && !a.pools.contains(&pool.pool.name) {
            return "not in spec.affinity.pools".to_string();
        }
        if let Some(s) = a
            .node_selector
            .as_ref()
            .filter(|s| !s.matches(&pool.pool.node_labels))
        {
            return format!("node labels do not match nodeSelector '{s}'");
        }
        match a.pool_selector.as_ref() {
            Some(s) => format!("pool labels do not match poolSelector '{s}'"),
            None => "excluded by affinity".to_string(),
        }
    }
}
