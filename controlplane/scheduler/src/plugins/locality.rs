//! Score: PreferLocal rates the consumer's node 100, a node in the consumer's zone
//! 50, others 0; PreferRemote rates every other node 100 and the consumer's 0.
//! With no consumer node, or a hard hint (already enforced by the placement
//! filter), every pool gets 50.

use lightpool_model::PlacementHint;

use crate::plugin::{Decision, PoolView, ScorePlugin};

/// Locality (LiteIO's PositionAdvice).
pub struct Locality;

impl ScorePlugin for Locality {
    fn name(&self) -> &'static str {
        "locality"
    }

    fn score(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> u32 {
        if d.req.consumer_node.is_none() {
            return 50;
        }
        let local = pool.is_local(d.req);
        let same_zone = d.consumer_zone.is_some()
            && pool
                .pool
                .node_labels
                .get(lightpool_model::labels::ZONE_LABEL)
                .map(String::as_str)
                == d.consumer_zone;
        match d.req.placement {
            PlacementHint::PreferLocal if local => 100,
            PlacementHint::PreferLocal if same_zone => 50,
            PlacementHint::PreferLocal => 0,
            PlacementHint::PreferRemote if local => 0,
            PlacementHint::PreferRemote => 100,
            PlacementHint::MustLocal | PlacementHint::MustRemote => 50,
        }
    }
}
