//! Test support: the shared store suite, objects, and a fake API server.
#![allow(dead_code)]

pub mod apiserver;
pub mod conformance;

use lightpool_model::*;

pub fn pool(name: &str, node: &str) -> StoragePool {
    StoragePool::new(
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
            over_commit_percent: 100,
            max_remote_volumes: None,
            unschedulable: false,
        },
    )
}

pub fn volume(name: &str, size: &str) -> Volume {
    Volume::new(
        name,
        VolumeSpec {
            size: Quantity::raw(size),
            provisioning: Provisioning::Thick,
            placement: PlacementHint::PreferLocal,
            consumer_node: Some("node-a".into()),
            affinity: VolumeAffinity::default(),
            spread: None,
            source_snapshot: None,
        },
    )
}
