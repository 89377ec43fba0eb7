//! Opt-in: `KubeStore` against the cluster in `$KUBECONFIG` (a disposable one,
//! e.g. `kind create cluster`), with the CRDs installed
//! (`kubectl apply -f deploy/crds/`) and the namespace `default` for leases:
//!
//! ```text
//! cargo test -p lightpool-store --features real-cluster --test real_cluster
//! ```
//!
//! Names carry a random suffix so runs do not collide; each test removes the
//! volume it made (leases named `lp-lease-*` and the events stay: the trait
//! deletes neither; Kubernetes lets events expire after an hour).
#![cfg(feature = "real-cluster")]

mod common;

use std::time::Duration;

use lightpool_model::*;
use lightpool_store::{
    add_finalizer, remove_finalizer, Claim, Deleted, KubeStore, LeaseClaim, Store,
};

async fn store() -> KubeStore {
    let client = kube::Client::try_default()
        .await
        .expect("a cluster in $KUBECONFIG");
    KubeStore::new(client, "lightpool-test").with_namespace("default")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().to_string()[..8])
}

#[tokio::test]
async fn volume_round_trip_on_a_real_api_server() {
    let s = store().await;
    let name = unique("lp-test");
    let v = s.apply(&common::volume(&name, "1Gi")).await.unwrap();
    assert_eq!(v.metadata.generation, Some(1));
    let again = s.apply(&common::volume(&name, "1Gi")).await.unwrap();
    assert_eq!(again.metadata.resource_version, v.metadata.resource_version);
    let st = VolumeStatus {
        phase: VolumePhase::Scheduled,
        ..Default::default()
    };
    assert!(s
        .patch_status::<Volume>(&name, &st, Some("1"))
        .await
        .unwrap_err()
        .is_conflict());
    let with = s.patch_status::<Volume>(&name, &st, None).await.unwrap();
    assert_eq!(with.status.unwrap().phase, VolumePhase::Scheduled);
    add_finalizer::<_, Volume>(&s, &name, VOLUME_FINALIZER)
        .await
        .unwrap();
    assert!(matches!(
        s.delete::<Volume>(&name, None).await.unwrap(),
        Deleted::Pending(_)
    ));
    assert_eq!(
        remove_finalizer::<_, Volume>(&s, &name, VOLUME_FINALIZER)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get::<Volume>(&name).await.unwrap(), None);
}

#[tokio::test]
async fn lease_claims_on_a_real_api_server() {
    let s = store().await;
    let name = unique("lp-lease");
    let mut a = LeaseClaim::new(&name, "a", Duration::from_secs(15));
    let mut b = LeaseClaim::new(&name, "b", Duration::from_secs(15));
    assert_eq!(a.tick(&s).await.unwrap(), Claim::Held);
    assert_eq!(a.tick(&s).await.unwrap(), Claim::Held);
    assert_eq!(b.tick(&s).await.unwrap(), Claim::HeldBy("a".into()));
    a.release(&s).await.unwrap();
    assert_eq!(b.tick(&s).await.unwrap(), Claim::Held);
}

#[tokio::test]
async fn events_on_a_real_api_server() {
    use lightpool_store::{EventType, NewEvent};
    let s = store().await;
    let name = unique("lp-test");
    let v = s.apply(&common::volume(&name, "1Gi")).await.unwrap();
    let e = NewEvent::about(
        &v,
        EventType::Warning,
        "NoPoolFits",
        "Schedule",
        "a test event",
        "lightpool-test",
    );
    let first = s.record_event(&e).await.unwrap();
    let second = s.record_event(&e).await.unwrap();
    assert_eq!(
        (second.name.as_str(), second.count),
        (first.name.as_str(), 2)
    );
    // The API server selects events.k8s.io Events by their `regarding`.
    let listed = s.events("Volume", &name).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].count, 2);
    assert_eq!(listed[0].event.note, "a test event");
    s.delete::<Volume>(&name, None).await.unwrap();
}
