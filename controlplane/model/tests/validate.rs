//! Bad input is refused with a message that names the field and says what to change.

use lightpool_model::labels::{LabelExpression, LabelOperator};
use lightpool_model::quantity::GIB;
use lightpool_model::validate::{validate_volume, validate_volume_against};
use lightpool_model::*;

fn spec(size: &str) -> VolumeSpec {
    VolumeSpec {
        size: Quantity::raw(size),
        provisioning: Provisioning::Thick,
        placement: PlacementHint::PreferLocal,
        consumer_node: None,
        affinity: VolumeAffinity::default(),
        spread: None,
        source_snapshot: None,
        source_volume: None,
        published: Vec::new(),
    }
}

fn pool(name: &str, node: &str, capacity: u64, over_commit: u32) -> StoragePool {
    let mut p = StoragePool::new(
        name,
        StoragePoolSpec {
            node: NodeInfo {
                name: node.into(),
                address: "10.0.0.1".into(),
                port: 4420,
                labels: Default::default(),
            },
            devices: vec![],
            layout: PoolLayout::Linear,
            over_commit_percent: over_commit,
            max_remote_volumes: None,
            unschedulable: false,
        },
    );
    p.status = Some(StoragePoolStatus {
        health: PoolHealth::Ready,
        capacity_bytes: capacity,
        free_bytes: capacity,
        ..Default::default()
    });
    p
}

fn message(r: Result<u64, validate::Invalid>) -> String {
    r.expect_err("must be refused").to_string()
}

#[test]
fn good_spec_passes_with_its_size() {
    assert_eq!(validate_volume(&spec("10Gi")), Ok(10 * GIB));
}

#[test]
fn zero_size_says_to_write_a_size() {
    let m = message(validate_volume(&spec("0")));
    assert!(m.starts_with("spec.size: is 0"), "{m}");
    assert!(m.contains("e.g. 10Gi"), "{m}");
}

#[test]
fn bad_size_syntax_and_alignment() {
    let m = message(validate_volume(&spec("10 gigs")));
    assert!(m.contains("spec.size: '10 gigs' is not a size"), "{m}");
    let m = message(validate_volume(&spec("1048577")));
    assert!(m.contains("round it up to 1052672"), "{m}");
    let m = message(validate_volume(&spec("4Ki")));
    assert!(m.contains("below the minimum of 1 MiB"), "{m}");
}

#[test]
fn hints_that_need_a_consumer_node() {
    let mut s = spec("1Gi");
    s.placement = PlacementHint::MustLocal;
    let m = message(validate_volume(&s));
    assert!(
        m.contains("MustLocal needs spec.consumerNode") && m.contains("use PreferLocal"),
        "{m}"
    );
    s.placement = PlacementHint::MustRemote;
    assert!(message(validate_volume(&s)).contains("use PreferRemote"));
}

#[test]
fn conflicting_hints_and_affinity() {
    let mut s = spec("1Gi");
    s.placement = PlacementHint::MustLocal;
    s.consumer_node = Some("node-a".into());
    s.affinity.nodes = vec!["node-b".into()];
    let m = message(validate_volume(&s));
    assert!(
        m.contains("add 'node-a' to the list or use PreferLocal"),
        "{m}"
    );

    s.placement = PlacementHint::MustRemote;
    s.affinity.nodes = vec!["node-a".into()];
    let m = message(validate_volume(&s));
    assert!(
        m.contains("MustRemote keeps the volume off node 'node-a'"),
        "{m}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut s = spec("0");
    s.placement = PlacementHint::MustLocal;
    s.affinity.node_selector = Some(LabelSelector::with_labels([("bad key", "x")]));
    let e = validate_volume(&s).unwrap_err();
    let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        fields,
        ["spec.size", "spec.placement", "spec.affinity.nodeSelector"]
    );
}

#[test]
fn unknown_label_syntax() {
    let mut s = spec("1Gi");
    s.affinity.pool_selector = Some(LabelSelector {
        match_labels: Default::default(),
        match_expressions: vec![LabelExpression {
            key: "Zone.Example/x".into(),
            operator: LabelOperator::Exists,
            values: vec![],
        }],
    });
    let m = message(validate_volume(&s));
    assert!(
        m.starts_with("spec.affinity.poolSelector: label key 'Zone.Example/x'"),
        "{m}"
    );
    assert!(m.contains("DNS subdomain"), "{m}");
}

#[test]
fn size_beyond_any_pool_names_the_largest() {
    let pools = [
        pool("pool-a", "node-a", 100 * GIB, 100),
        pool("pool-b", "node-b", 200 * GIB, 150),
    ];
    let m = message(validate_volume_against(&spec("300Gi"), &pools));
    assert!(
        m.contains("the largest, pool-b on node node-b, holds 200 GiB")
            && m.contains("ask for at most 200 GiB"),
        "{m}"
    );
    // Thin volumes may use the over-commit limit.
    let mut thin = spec("300Gi");
    thin.provisioning = Provisioning::Thin;
    assert_eq!(validate_volume_against(&thin, &pools), Ok(300 * GIB));
}

#[test]
fn a_pool_not_yet_reported_does_not_refuse_a_size() {
    // The agent writes the pool, then its status: in between its capacity is unknown,
    // not 0 B, and a volume created then must wait, not be refused.
    let mut new = pool("pool-a", "node-a", 100 * GIB, 100);
    new.status = None;
    assert_eq!(
        validate_volume_against(&spec("32Mi"), std::slice::from_ref(&new)),
        Ok(32 << 20)
    );
    // Beside a reported pool, only the reported one decides.
    let pools = [new, pool("pool-b", "node-b", 10 * GIB, 100)];
    assert_eq!(validate_volume_against(&spec("8Gi"), &pools), Ok(8 * GIB));
    let m = message(validate_volume_against(&spec("20Gi"), &pools));
    assert!(
        m.contains("the largest, pool-b on node node-b, holds 10 GiB"),
        "{m}"
    );
}

#[test]
fn unknown_nodes_and_pools_in_affinity() {
    let pools = [pool("pool-a", "node-a", 100 * GIB, 100)];
    let mut s = spec("1Gi");
    s.affinity.nodes = vec!["node-z".into()];
    s.affinity.pools = vec!["pool-q".into()];
    let m = message(validate_volume_against(&s, &pools));
    assert!(
        m.contains(
            "spec.affinity.nodes[0]: node 'node-z' has no storage pool; nodes with pools: node-a"
        ),
        "{m}"
    );
    assert!(
        m.contains("spec.affinity.pools[0]: pool 'pool-q' does not exist; pools: pool-a"),
        "{m}"
    );
}

#[test]
fn must_local_on_a_node_without_pool() {
    let pools = [pool("pool-a", "node-a", 100 * GIB, 100)];
    let mut s = spec("1Gi");
    s.placement = PlacementHint::MustLocal;
    s.consumer_node = Some("node-x".into());
    let m = message(validate_volume_against(&s, &pools));
    assert!(m.contains("'node-x', which has none"), "{m}");
}

#[test]
fn hand_edited_nonsense_still_decodes_and_is_refused() {
    let v: Volume = serde_json::from_value(serde_json::json!({
        "apiVersion": "lightpool.io/v1alpha1",
        "kind": "Volume",
        "metadata": { "name": "v1" },
        "spec": { "size": "lots", "placement": "MustLocal" }
    }))
    .unwrap();
    let m = message(validate_volume(&v.spec));
    assert!(
        m.contains("'lots' is not a size") && m.contains("MustLocal needs"),
        "{m}"
    );
}

#[test]
fn connect_commands_list_optimized_paths_first() {
    use lightpool_model::volume::{AnaState, TargetPath, VolumeTarget};
    let path = |node: &str, addr: &str, state| TargetPath {
        node: node.into(),
        transport: "tcp".into(),
        adrfam: "ipv4".into(),
        traddr: addr.into(),
        trsvcid: 4420,
        ana_group: 1,
        ana_state: state,
    };
    let t = VolumeTarget {
        nqn: volume::volume_nqn("v1"),
        nsid: 1,
        uuid: None,
        paths: vec![
            path("a", "10.0.0.1", AnaState::Inaccessible),
            path("b", "10.0.0.2", AnaState::NonOptimized),
            path("c", "10.0.0.3", AnaState::Optimized),
        ],
    };
    assert_eq!(
        t.connect_commands(),
        [
            "nvme connect -t tcp -a 10.0.0.3 -s 4420 -n nqn.2024-01.io.lightpool:volume:v1",
            "nvme connect -t tcp -a 10.0.0.2 -s 4420 -n nqn.2024-01.io.lightpool:volume:v1",
        ]
    );
}

#[test]
fn status_serialises_absent_fields_as_null() {
    // A merge patch of the whole status must clear what is gone.
    let v = serde_json::to_value(VolumeStatus::default()).unwrap();
    assert!(v.get("node").is_some_and(|n| n.is_null()), "{v}");
    assert!(v.get("target").is_some_and(|n| n.is_null()), "{v}");
    let v = serde_json::to_value(StoragePoolStatus::default()).unwrap();
    assert!(v.get("message").is_some_and(|n| n.is_null()), "{v}");
}
