//! Filter: MustLocal keeps the volume on the consumer's node, MustRemote off it.
//! (PreferLocal and PreferRemote are the locality score's business.)

use lightpool_model::PlacementHint;

use crate::plugin::{Decision, FilterPlugin, PoolView};

/// The hard placement hints.
pub struct Placement;

impl FilterPlugin for Placement {
    fn name(&self) -> &'static str {
        "placement"
    }

    fn filter(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> bool {
        match d.req.placement {
            PlacementHint::MustLocal => pool.is_local(d.req),
            PlacementHint::MustRemote => d.req.is_remote_on(&pool.pool.node),
            PlacementHint::PreferLocal | PlacementHint::PreferRemote => true,
        }
    }

    fn reason(&self, d: &Decision<'_>, _: &PoolView<'_>) -> String {
        format!("excluded by {}", d.req.placement.as_str())
    }
}
