//! Placement decisions and their explanations, one scenario each.

mod common;

use common::{in_zone, pool, scheduler};
use lightpool_model::labels::ZONE_LABEL;
use lightpool_model::quantity::GIB;
use lightpool_model::{LabelSelector, PlacementHint, PoolHealth, Provisioning};
use lightpool_scheduler::{ScheduleError, Scheduler, SchedulerConfig, VolumeRequest};

fn req(name: &str, gib: u64, hint: PlacementHint, consumer: Option<&str>) -> VolumeRequest {
    let mut r = VolumeRequest::new(name, gib * GIB);
    r.placement = hint;
    r.consumer_node = consumer.map(Into::into);
    r
}

fn place(s: &Scheduler, r: &VolumeRequest) -> String {
    s.schedule(r)
        .unwrap_or_else(|e| panic!("{}: {e}", r.name))
        .commit()
        .pool
}

fn rejection(s: &Scheduler, r: &VolumeRequest) -> String {
    match s.schedule(r) {
        Err(ScheduleError::Unschedulable(u)) => u.message,
        Err(e) => panic!("{e}"),
        Ok(res) => panic!("placed on {}", res.placement().pool),
    }
}

#[test]
fn the_issue_example_word_for_word() {
    let mut b = pool("node-b", 500);
    b.health = PoolHealth::Unknown;
    let s = scheduler([pool("node-a", 120), b, pool("node-c", 500)]);
    place(
        &s,
        &req("filler", 100, PlacementHint::MustLocal, Some("node-a")),
    );
    let m = rejection(&s, &req("v", 100, PlacementHint::MustLocal, Some("node-a")));
    assert_eq!(
        m,
        "3 pools: node-a full (needs 100 GiB, has 20 GiB), node-b unhealthy (Unknown), node-c excluded by MustLocal"
    );
}

#[test]
fn rejections_list_every_pool_with_its_plugin() {
    let s = scheduler([pool("a", 10), pool("b", 10)]);
    match s.schedule(&VolumeRequest::new("big", 20 * GIB)) {
        Err(ScheduleError::Unschedulable(u)) => {
            assert_eq!(u.pools, 2);
            let plugins: Vec<&str> = u.rejections.iter().map(|r| r.plugin.as_str()).collect();
            assert_eq!(plugins, ["capacity", "capacity"]);
            assert_eq!(u.rejections[1].pool, "b");
        }
        other => panic!("{:?}", other.map(|r| r.placement().clone())),
    }
}

#[test]
fn no_pools_says_so() {
    let s = scheduler([]);
    assert_eq!(
        rejection(&s, &VolumeRequest::new("v", GIB)),
        "no storage pools: wait for a node's agent to publish one"
    );
}

#[test]
fn long_lists_name_ten_and_count_the_rest() {
    let mut pools: Vec<_> = (0..25).map(|i| pool(&format!("n{i:02}"), 1)).collect();
    for p in &mut pools[20..] {
        p.health = PoolHealth::Failed;
    }
    let s = scheduler(pools);
    let m = rejection(&s, &VolumeRequest::new("v", 2 * GIB));
    assert!(
        m.starts_with("25 pools: n00 full (needs 2 GiB, has 1 GiB), "),
        "{m}"
    );
    assert!(
        m.ends_with("and 15 more refused (10 by capacity, 5 by health)"),
        "{m}"
    );
}

#[test]
fn prefer_local_goes_local_then_remote_when_full() {
    let s = scheduler([pool("a", 100), pool("b", 1000)]);
    assert_eq!(
        place(&s, &req("v1", 60, PlacementHint::PreferLocal, Some("a"))),
        "a"
    );
    assert_eq!(
        place(&s, &req("v2", 60, PlacementHint::PreferLocal, Some("a"))),
        "b"
    );
}

#[test]
fn prefer_remote_and_must_remote_avoid_the_consumer() {
    let s = scheduler([pool("a", 1000), pool("b", 100)]);
    assert_eq!(
        place(&s, &req("v1", 10, PlacementHint::PreferRemote, Some("a"))),
        "b"
    );
    assert_eq!(
        place(&s, &req("v2", 95, PlacementHint::PreferRemote, Some("a"))),
        "a"
    );
    let m = rejection(&s, &req("v3", 95, PlacementHint::MustRemote, Some("a")));
    assert_eq!(
        m,
        "2 pools: a excluded by MustRemote, b full (needs 95 GiB, has 90 GiB)"
    );
}

#[test]
fn remote_volumes_per_pool_are_limited() {
    let s = scheduler([pool("a", 1000), pool("b", 1000)]);
    for i in 0..3 {
        place(
            &s,
            &req(&format!("r{i}"), 1, PlacementHint::MustRemote, Some("b")),
        );
    }
    let m = rejection(&s, &req("r3", 1, PlacementHint::MustRemote, Some("b")));
    assert_eq!(
        m,
        "2 pools: a has 3 remote volumes (at most 3), b excluded by MustRemote"
    );
    // A local volume is not remote: still welcome.
    assert_eq!(
        place(&s, &req("l", 1, PlacementHint::MustLocal, Some("a"))),
        "a"
    );
    // The pool's own limit wins over the default.
    let mut c = pool("c", 1000);
    c.max_remote_volumes = Some(5);
    s.upsert_pool(c);
    assert_eq!(
        place(&s, &req("r3", 1, PlacementHint::MustRemote, Some("b"))),
        "c"
    );
}

#[test]
fn replicas_spread_across_nodes_then_zones() {
    let s = scheduler([pool("a", 100), pool("b", 100), pool("c", 100)]);
    let mut placed = Vec::new();
    for i in 0..3 {
        let mut r = VolumeRequest::new(format!("pg-{i}"), GIB);
        r.spread_group = Some("pg".into());
        placed.push(place(&s, &r));
    }
    placed.sort();
    assert_eq!(placed, ["a", "b", "c"]);
    let mut r = VolumeRequest::new("pg-3", GIB);
    r.spread_group = Some("pg".into());
    assert_eq!(
        rejection(&s, &r),
        "3 pools: a node already holds a replica of 'pg', b node already holds a replica of 'pg', c node already holds a replica of 'pg'"
    );

    let s = scheduler([
        in_zone(pool("a", 100), "z1"),
        in_zone(pool("b", 100), "z1"),
        in_zone(pool("c", 100), "z2"),
        pool("d", 100),
    ]);
    let zreq = |n: &str| {
        let mut r = VolumeRequest::new(n, GIB);
        r.spread_group = Some("db".into());
        r.spread_topology_key = Some(ZONE_LABEL.into());
        r
    };
    let first = place(&s, &zreq("db-0"));
    let second = place(&s, &zreq("db-1"));
    let zone = |p: &str| if p == "c" { "z2" } else { "z1" };
    assert_ne!(zone(&first), zone(&second));
    let m = rejection(&s, &zreq("db-2"));
    assert!(
        m.contains("d node has no label 'topology.kubernetes.io/zone' to spread 'db' by"),
        "{m}"
    );
    assert!(
        m.contains("topology.kubernetes.io/zone=z1 already holds a replica of 'db'"),
        "{m}"
    );
}

#[test]
fn affinity_lists_and_selectors() {
    let mut a = in_zone(pool("a", 100), "z1");
    a.pool_labels.insert("media".into(), "nvme".into());
    let b = in_zone(pool("b", 100), "z2");
    let s = scheduler([a, b]);
    let mut r = VolumeRequest::new("v", GIB);
    r.affinity.node_selector = Some(LabelSelector::with_labels([(ZONE_LABEL, "z2")]));
    assert_eq!(place(&s, &r), "b");
    let mut r = VolumeRequest::new("w", GIB);
    r.affinity.pool_selector = Some(LabelSelector::with_labels([("media", "nvme")]));
    assert_eq!(place(&s, &r), "a");
    let mut r = VolumeRequest::new("x", GIB);
    r.affinity.pools = vec!["b".into()];
    r.affinity.node_selector = Some(LabelSelector::with_labels([(ZONE_LABEL, "z1")]));
    assert_eq!(
        rejection(&s, &r),
        "2 pools: a not in spec.affinity.pools, b node labels do not match nodeSelector 'topology.kubernetes.io/zone=z1'"
    );
}

#[test]
fn thin_volumes_over_commit_within_the_limit_thick_never() {
    let mut p = pool("a", 100);
    p.over_commit_percent = 200;
    let s = scheduler([p]);
    let mut thin = VolumeRequest::new("t1", 150 * GIB);
    thin.provisioning = Provisioning::Thin;
    place(&s, &thin);
    // 150 GiB promised of a 200 GiB limit; a thick 60 GiB fits the capacity but not the limit.
    assert_eq!(
        rejection(&s, &VolumeRequest::new("k", 60 * GIB)),
        "1 pool: a full (needs 60 GiB, has 50 GiB)"
    );
    place(&s, &VolumeRequest::new("k", 50 * GIB));
    let u = s.usage("a").unwrap();
    assert_eq!((u.thick_bytes, u.provisioned_bytes), (50 * GIB, 200 * GIB));
}

#[test]
fn thick_volumes_fit_in_capacity_even_when_over_committed() {
    let mut p = pool("a", 100);
    p.over_commit_percent = 300;
    let s = scheduler([p]);
    place(&s, &VolumeRequest::new("k1", 80 * GIB));
    assert_eq!(
        rejection(&s, &VolumeRequest::new("k2", 30 * GIB)),
        "1 pool: a full (needs 30 GiB, has 20 GiB)"
    );
}

#[test]
fn reservations_hold_until_committed_or_dropped() {
    let s = scheduler([pool("a", 100)]);
    let r1 = s.schedule(&VolumeRequest::new("v1", 60 * GIB)).unwrap();
    // Held: a second 60 GiB does not fit while the first is in flight.
    assert!(s.schedule(&VolumeRequest::new("v2", 60 * GIB)).is_err());
    drop(r1);
    assert_eq!(s.usage("a").unwrap().provisioned_bytes, 0);
    let r2 = s.schedule(&VolumeRequest::new("v2", 60 * GIB)).unwrap();
    r2.commit();
    assert_eq!(s.usage("a").unwrap().provisioned_bytes, 60 * GIB);
    assert!(s.release("v2"));
    assert!(!s.release("v2"));
    assert_eq!(s.usage("a").unwrap().volumes, 0);
}

#[test]
fn a_retried_decision_is_refused_not_doubled() {
    let s = scheduler([pool("a", 100)]);
    s.schedule(&VolumeRequest::new("v", GIB)).unwrap().commit();
    match s.schedule(&VolumeRequest::new("v", GIB)) {
        Err(ScheduleError::AlreadyPlaced { pool, .. }) => assert_eq!(pool, "a"),
        _ => panic!("a second decision for the same volume"),
    }
    assert_eq!(s.usage("a").unwrap().volumes, 1);
}

#[test]
fn cordoned_and_removed_pools_take_nothing() {
    let mut a = pool("a", 100);
    a.unschedulable = true;
    let s = scheduler([a, pool("b", 100)]);
    s.remove_pool("b");
    assert_eq!(
        rejection(&s, &VolumeRequest::new("v", GIB)),
        "1 pool: a cordoned (unschedulable)"
    );
}

#[test]
fn ledger_rebuilt_from_volumes_after_restart() {
    let s = scheduler([pool("a", 100), pool("b", 100)]);
    let mut r = req("v", 70, PlacementHint::PreferLocal, Some("b"));
    r.spread_group = Some("g".into());
    s.record(&r, "a").unwrap();
    s.record(&r, "a").unwrap();
    let u = s.usage("a").unwrap();
    assert_eq!(
        (u.provisioned_bytes, u.volumes, u.remote_volumes),
        (70 * GIB, 1, 1)
    );
    let mut r2 = VolumeRequest::new("w", GIB);
    r2.spread_group = Some("g".into());
    assert_eq!(place(&s, &r2), "b");
    assert!(matches!(
        s.record(&VolumeRequest::new("x", GIB), "nope"),
        Err(ScheduleError::UnknownPool { .. })
    ));
}

#[test]
fn most_used_packs_least_used_spreads() {
    let packing = SchedulerConfig::from_toml(
        r#"
        filters = ["health", "capacity"]
        [[scores]]
        plugin = "most-used"
        weight = 1
        "#,
    )
    .unwrap();
    let s = Scheduler::new(&packing).unwrap();
    s.upsert_pool(pool("a", 100));
    s.upsert_pool(pool("b", 100));
    let first = place(&s, &VolumeRequest::new("v1", 10 * GIB));
    assert_eq!(place(&s, &VolumeRequest::new("v2", 10 * GIB)), first);

    let s = scheduler([pool("a", 100), pool("b", 100)]);
    let first = place(&s, &VolumeRequest::new("v1", 10 * GIB));
    assert_ne!(place(&s, &VolumeRequest::new("v2", 10 * GIB)), first);
}

#[test]
fn config_errors_say_what_is_known() {
    let e = SchedulerConfig::from_toml(r#"filters = ["health", "capcity"]"#)
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "scheduler config: unknown filter 'capcity'; filters: health, capacity, placement, affinity, max-remote, spread"
    );
    let e = SchedulerConfig::from_toml("[[scores]]\nplugin = \"locality\"\nweight = 0\n")
        .unwrap()
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("weight 0; use 1 to 1000"), "{e}");
    assert!(SchedulerConfig::from_toml("filter = []").is_err());
}

#[test]
fn the_example_profile_is_the_default() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/examples/scheduler.toml"),
    )
    .unwrap();
    assert_eq!(
        SchedulerConfig::from_toml(&text).unwrap(),
        SchedulerConfig::default()
    );
}
