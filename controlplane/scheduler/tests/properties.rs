//! Property tests over random clusters and request streams, with an oracle
//! written apart from the plugins: every placement satisfies every hard rule,
//! every refusal is explained for every pool and is right (no pool could take
//! the volume), and the ledger always equals the sum of what was placed.
//! The concurrent test hammers one scheduler from several threads and checks that
//! no pool ever ends over its limits.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use lightpool_model::labels::ZONE_LABEL;
use lightpool_model::quantity::GIB;
use lightpool_model::{LabelSelector, PlacementHint, PoolHealth, Provisioning};
use lightpool_scheduler::{PoolState, ScheduleError, Scheduler, SchedulerConfig, VolumeRequest};
use proptest::prelude::*;

const ZONES: [&str; 3] = ["z0", "z1", "z2"];

fn arb_pool(i: usize) -> impl Strategy<Value = PoolState> {
    (
        1u64..200,
        prop_oneof![8 => Just(PoolHealth::Ready), 1 => Just(PoolHealth::Unknown), 1 => Just(PoolHealth::Degraded)],
        prop_oneof![Just(100u32), Just(150), Just(300)],
        proptest::option::of(0u32..5),
        0usize..4,
        any::<bool>(),
    )
        .prop_map(move |(gib, health, oc, max_remote, zone, fast)| {
            let mut node_labels = std::collections::BTreeMap::new();
            if zone < 3 {
                node_labels.insert(ZONE_LABEL.to_string(), ZONES[zone].to_string());
            }
            let mut pool_labels = std::collections::BTreeMap::new();
            if fast {
                pool_labels.insert("media".to_string(), "fast".to_string());
            }
            PoolState {
                name: format!("p{i}"),
                // Some nodes carry two pools.
                node: format!("n{}", i / 2 + i % 2 * (i % 3)),
                node_labels,
                pool_labels,
                health,
                unschedulable: i % 11 == 10,
                capacity: gib * GIB,
                over_commit_percent: oc,
                max_remote_volumes: max_remote,
            }
        })
}

fn arb_pools() -> impl Strategy<Value = Vec<PoolState>> {
    (0usize..12).prop_flat_map(|n| (0..n).map(arb_pool).collect::<Vec<_>>())
}

fn arb_request(i: usize) -> impl Strategy<Value = VolumeRequest> {
    (
        1u64..120,
        prop_oneof![
            Just(PlacementHint::MustLocal),
            Just(PlacementHint::PreferLocal),
            Just(PlacementHint::PreferRemote),
            Just(PlacementHint::MustRemote)
        ],
        proptest::option::of(0usize..8),
        any::<bool>(),
        proptest::option::of(0usize..3),
        0u8..6,
    )
        .prop_map(move |(gib, hint, consumer, thin, spread, aff)| {
            let mut r = VolumeRequest::new(format!("v{i}"), gib * GIB);
            r.placement = hint;
            r.consumer_node = consumer.map(|n| format!("n{n}"));
            if r.consumer_node.is_none() {
                r.placement = PlacementHint::PreferLocal;
            }
            if thin {
                r.provisioning = Provisioning::Thin;
            }
            if let Some(g) = spread {
                r.spread_group = Some(format!("g{g}"));
                if g == 2 {
                    r.spread_topology_key = Some(ZONE_LABEL.to_string());
                }
            }
            match aff {
                1 => {
                    r.affinity.node_selector =
                        Some(LabelSelector::with_labels([(ZONE_LABEL, "z1")]))
                }
                2 => {
                    r.affinity.pool_selector = Some(LabelSelector::with_labels([("media", "fast")]))
                }
                3 => r.affinity.nodes = vec!["n0".into(), "n2".into()],
                _ => {}
            }
            r
        })
}

fn arb_requests(n: usize) -> impl Strategy<Value = Vec<VolumeRequest>> {
    (0..n).map(arb_request).collect::<Vec<_>>()
}

/// The oracle's ledger: what was placed where, kept apart from the scheduler's.
#[derive(Default)]
struct Oracle {
    placed: HashMap<String, (usize, VolumeRequest)>,
}

impl Oracle {
    fn usage(&self, pool: usize) -> (u64, u64) {
        let mut thick = 0;
        let mut all = 0;
        for (p, r) in self.placed.values() {
            if *p == pool {
                all += r.size;
                if r.provisioning == Provisioning::Thick {
                    thick += r.size;
                }
            }
        }
        (thick, all)
    }

    fn remote_count(&self, pools: &[PoolState], pool: usize) -> u32 {
        self.placed
            .values()
            .filter(|(p, r)| *p == pool && r.is_remote_on(&pools[pool].node))
            .count() as u32
    }

    /// Whether `r` may go on pool `i` by the rules, written out plainly.
    fn allows(&self, pools: &[PoolState], i: usize, r: &VolumeRequest, max_remote: u32) -> bool {
        let p = &pools[i];
        if !matches!(p.health, PoolHealth::Ready | PoolHealth::Degraded) || p.unschedulable {
            return false;
        }
        let (thick, all) = self.usage(i);
        let limit = p.capacity * u64::from(p.over_commit_percent) / 100;
        if all + r.size > limit {
            return false;
        }
        if r.provisioning == Provisioning::Thick && thick + r.size > p.capacity {
            return false;
        }
        let local = r.consumer_node.as_deref() == Some(&p.node);
        let remote = r.consumer_node.is_some() && !local;
        match r.placement {
            PlacementHint::MustLocal if !local => return false,
            PlacementHint::MustRemote if !remote => return false,
            _ => {}
        }
        if let Some(s) = &r.affinity.node_selector {
            if !s.matches(&p.node_labels) {
                return false;
            }
        }
        if let Some(s) = &r.affinity.pool_selector {
            if !s.matches(&p.pool_labels) {
                return false;
            }
        }
        if !r.affinity.nodes.is_empty() && !r.affinity.nodes.contains(&p.node) {
            return false;
        }
        if remote && self.remote_count(pools, i) >= p.max_remote_volumes.unwrap_or(max_remote) {
            return false;
        }
        if let Some(g) = &r.spread_group {
            let domain = |q: &PoolState| match &r.spread_topology_key {
                None => Some(q.node.clone()),
                Some(k) => q.node_labels.get(k).cloned(),
            };
            let Some(mine) = domain(p) else { return false };
            let taken: HashSet<Option<String>> = self
                .placed
                .values()
                .filter(|(_, o)| o.spread_group.as_ref() == Some(g))
                .map(|(q, _)| domain(&pools[*q]))
                .collect();
            if taken.contains(&Some(mine)) {
                return false;
            }
        }
        true
    }
}

fn check_ledger(s: &Scheduler, pools: &[PoolState], oracle: &Oracle) -> Result<(), TestCaseError> {
    for (i, p) in pools.iter().enumerate() {
        let (thick, all) = oracle.usage(i);
        let u = s.usage(&p.name).unwrap();
        prop_assert_eq!(u.thick_bytes, thick, "thick bytes of {}", p.name);
        prop_assert_eq!(u.provisioned_bytes, all, "provisioned bytes of {}", p.name);
        prop_assert_eq!(u.remote_volumes, oracle.remote_count(pools, i));
        prop_assert!(thick <= p.capacity);
        prop_assert!(all <= p.capacity * u64::from(p.over_commit_percent) / 100);
        prop_assert!(oracle.remote_count(pools, i) <= p.max_remote_volumes.unwrap_or(3));
    }
    // Replicas of one spread group sit in distinct domains.
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (i, r) in oracle.placed.values() {
        if let Some(g) = &r.spread_group {
            let domain = match &r.spread_topology_key {
                None => Some(pools[*i].node.clone()),
                Some(k) => pools[*i].node_labels.get(k).cloned(),
            };
            let domain = domain.expect("placed in a domain");
            prop_assert!(
                seen.insert((g.clone(), domain)),
                "two replicas of {} in one domain",
                g
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn placements_obey_the_rules_and_refusals_are_right(
        pools in arb_pools(),
        reqs in arb_requests(40),
        cancel_every in 2usize..7,
    ) {
        let s = Scheduler::new(&SchedulerConfig::default()).unwrap();
        for p in &pools {
            s.upsert_pool(p.clone());
        }
        let mut oracle = Oracle::default();
        for (k, r) in reqs.iter().enumerate() {
            let feasible: Vec<usize> = (0..pools.len())
                .filter(|&i| oracle.allows(&pools, i, r, 3))
                .collect();
            match s.schedule(r) {
                Ok(res) => {
                    let i = pools.iter().position(|p| p.name == res.placement().pool).unwrap();
                    prop_assert!(feasible.contains(&i), "{} placed on {} against the rules", r.name, pools[i].name);
                    // PreferLocal: when the consumer's node could take it, it does.
                    if r.placement == PlacementHint::PreferLocal
                        && feasible.iter().any(|&j| Some(&pools[j].node) == r.consumer_node.as_ref())
                    {
                        prop_assert_eq!(Some(&pools[i].node), r.consumer_node.as_ref());
                    }
                    if k % cancel_every == 0 {
                        res.cancel();
                    } else {
                        res.commit();
                        oracle.placed.insert(r.name.clone(), (i, r.clone()));
                    }
                }
                Err(ScheduleError::Unschedulable(u)) => {
                    prop_assert!(feasible.is_empty(), "{} refused but {:?} could take it: {}", r.name, feasible, u.message);
                    prop_assert_eq!(u.pools, pools.len());
                    prop_assert_eq!(u.rejections.len(), pools.len());
                    for (rej, p) in u.rejections.iter().zip(&pools) {
                        prop_assert_eq!(&rej.pool, &p.name);
                        prop_assert!(!rej.reason.is_empty());
                        prop_assert!(u.message.contains(&rej.reason) || pools.len() > 10);
                    }
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
            check_ledger(&s, &pools, &oracle)?;
        }
        // Releasing everything brings every pool back to empty.
        for name in oracle.placed.keys() {
            prop_assert!(s.release(name));
        }
        for p in &pools {
            prop_assert_eq!(s.usage(&p.name).unwrap(), Default::default());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn concurrent_creates_never_over_commit(
        pools in (1usize..6).prop_flat_map(|n| (0..n).map(arb_pool).collect::<Vec<_>>()),
        reqs in arb_requests(160),
    ) {
        let s = Scheduler::new(&SchedulerConfig::default()).unwrap();
        for p in &pools {
            s.upsert_pool(p.clone());
        }
        let reqs = Arc::new(reqs);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    for (k, r) in reqs.iter().enumerate().filter(|(k, _)| k % 4 == t) {
                        if let Ok(res) = s.schedule(r) {
                            std::thread::yield_now();
                            if k % 5 == 0 {
                                drop(res);
                            } else {
                                kept.push((r.clone(), res.commit().pool));
                            }
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut oracle = Oracle::default();
        for t in threads {
            for (r, pool) in t.join().unwrap() {
                let i = pools.iter().position(|p| p.name == pool).unwrap();
                oracle.placed.insert(r.name.clone(), (i, r));
            }
        }
        check_ledger(&s, &pools, &oracle)?;
    }
}
