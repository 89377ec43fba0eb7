//! Score: prefer the pool with the most room left after placing the volume
//! (spreads load; LiteIO's LeastResource).

use super::free_after_percent;
use crate::plugin::{Decision, PoolView, ScorePlugin};

/// Least used first.
pub struct LeastUsed;

impl ScorePlugin for LeastUsed {
    fn name(&self) -> &'static str {
        "least-used"
    }

    fn score(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> u32 {
        free_after_percent(d, pool)
    }
}
