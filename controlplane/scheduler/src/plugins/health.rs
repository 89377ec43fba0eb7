//! Filter: only pools that are Ready (or Degraded) and not cordoned.

use crate::plugin::{Decision, FilterPlugin, PoolView};

/// Pool health.
pub struct Health;

impl FilterPlugin for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    fn filter(&self, _: &Decision<'_>, pool: &PoolView<'_>) -> bool {
        pool.pool.health.schedulable() && !pool.pool.unschedulable
    }

    fn reason(&self, _: &Decision<'_>, pool: &PoolView<'_>) -> String {
        if pool.pool.health.schedulable() {
            "cordoned (unschedulable)".to_string()
        } else {
            format!("unhealthy ({:?})", pool.pool.health)
        }
    }
}
