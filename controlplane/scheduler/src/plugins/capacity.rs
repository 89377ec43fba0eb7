//! Filter: the volume fits in what is left of the pool. Thick volumes must fit in
//! the capacity itself; every volume must fit in the provisioning limit (the
//! capacity times the pool's over-commit percent). Reservations count as used.

use lightpool_model::quantity::human_bytes;

use crate::plugin::{Decision, FilterPlugin, PoolView};

/// Free capacity within the over-commit limit.
pub struct Capacity;

impl FilterPlugin for Capacity {
    fn name(&self) -> &'static str {
        "capacity"
    }

    fn filter(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> bool {
        pool.room(d.req) >= d.req.size
    }

    fn reason(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> String {
        format!(
            "full (needs {}, has {})",
            human_bytes(d.req.size),
            human_bytes(pool.room(d.req))
        )
    }
}
