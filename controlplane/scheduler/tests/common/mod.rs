//! Helpers shared by the scheduler's tests.
#![allow(dead_code)]

use lightpool_model::labels::ZONE_LABEL;
use lightpool_model::quantity::GIB;
use lightpool_model::PoolHealth;
use lightpool_scheduler::{PoolState, Scheduler, SchedulerConfig};

pub fn pool(name: &str, gib: u64) -> PoolState {
    PoolState {
        name: name.into(),
        node: name.into(),
        node_labels: Default::default(),
        pool_labels: Default::default(),
        health: PoolHealth::Ready,
        unschedulable: false,
        capacity: gib * GIB,
        over_commit_percent: 100,
        max_remote_volumes: None,
    }
}

pub fn in_zone(mut p: PoolState, zone: &str) -> PoolState {
    p.node_labels.insert(ZONE_LABEL.into(), zone.into());
    p
}

pub fn scheduler(pools: impl IntoIterator<Item = PoolState>) -> Scheduler {
    let s = Scheduler::new(&SchedulerConfig::default()).unwrap();
    for p in pools {
        s.upsert_pool(p);
    }
    s
}
