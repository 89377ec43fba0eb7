//! The built-in plugins, one file each, and the names the config file uses.

mod affinity;
mod capacity;
mod health;
mod least_used;
mod locality;
mod max_remote;
mod most_used;
mod placement;
mod spread;

pub use affinity::Affinity;
pub use capacity::Capacity;
pub use health::Health;
pub use least_used::LeastUsed;
pub use locality::Locality;
pub use max_remote::MaxRemote;
pub use most_used::MostUsed;
pub use placement::Placement;
pub use spread::Spread;

use crate::plugin::{FilterPlugin, ScorePlugin};

/// Names of the built-in filters, in the default order (cheap tests first).
pub const FILTERS: [&str; 6] = [
    "health",
    "capacity",
    "placement",
    "affinity",
    "max-remote",
    "spread",
];

/// Names of the built-in scores.
pub const SCORES: [&str; 3] = ["least-used", "most-used", "locality"];

/// A built-in filter by name.
pub fn filter(name: &str) -> Option<Box<dyn FilterPlugin>> {
    Some(match name {
        "health" => Box::new(Health),
        "capacity" => Box::new(Capacity),
        "placement" => Box::new(Placement),
        "affinity" => Box::new(Affinity),
        "max-remote" => Box::new(MaxRemote),
        "spread" => Box::new(Spread),
        _ => return None,
    })
}

/// A built-in score by name.
pub fn score(name: &str) -> Option<Box<dyn ScorePlugin>> {
    Some(match name {
        "least-used" => Box::new(LeastUsed),
        "most-used" => Box::new(MostUsed),
        "locality" => Box::new(Locality),
        _ => return None,
    })
}

/// Share of the pool's provisioning limit still free after placing the volume,
/// 0 to 100 (used by least-used and most-used).
pub(crate) fn free_after_percent(
    d: &crate::plugin::Decision<'_>,
    pool: &crate::plugin::PoolView<'_>,
) -> u32 {
    let limit = pool.pool.provision_limit();
    if limit == 0 {
        return 0;
    }
    let used = pool.usage.provisioned_bytes.saturating_add(d.req.size);
    let free = limit.saturating_sub(used);
    u32::try_from(u128::from(free) * 100 / u128::from(limit)).unwrap_or(100)
}
