//! Filter: a pool serves at most so many volumes to consumers on other nodes
//! (the pool's `maxRemoteVolumes`, else the config's `max_remote_volumes`;
//! LiteIO uses 3), so remote traffic cannot crowd out the node's own database.

use crate::plugin::{Decision, FilterPlugin, PoolView};

/// Maximum remote volumes per pool.
pub struct MaxRemote;

fn limit(d: &Decision<'_>, pool: &PoolView<'_>) -> u32 {
    pool.pool.max_remote_volumes.unwrap_or(d.max_remote_volumes)
}

impl FilterPlugin for MaxRemote {
    fn name(&self) -> &'static str {
        "max-remote"
    }

    fn filter(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> bool {
        !d.req.is_remote_on(&pool.pool.node) || pool.usage.remote_volumes < limit(d, pool)
    }

    fn reason(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> String {
        format!(
            "has {} remote volumes (at most {})",
            pool.usage.remote_volumes,
            limit(d, pool)
        )
    }
}
