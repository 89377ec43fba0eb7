//! Score: prefer the pool with the least room left after placing the volume
//! (bin packing: keeps whole pools free for large volumes).

use super::free_after_percent;
use crate::plugin::{Decision, PoolView, ScorePlugin};

/// Most used first.
pub struct MostUsed;

impl ScorePlugin for MostUsed {
    fn name(&self) -> &'static str {
        "most-used"
    }

    fn score(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> u32 {
        100 - free_after_percent(d, pool)
    }
}
