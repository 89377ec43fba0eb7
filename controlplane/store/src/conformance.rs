//! The semantics every [`Store`] keeps, as one suite of checks that panic on a
//! difference (compiled with the `conformance` feature, for tests). Each
//! function takes a fresh, empty store; [`conformance_tests!`] makes a test of
//! each. The lease case needs tokio's paused time (`test-util`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use kube::Resource;
use lightpool_model::*;
use std::time::Duration;

use crate::{
    add_finalizer, remove_finalizer, Claim, Deleted, Event, LeaseClaim, LeaseRecord, Store,
};

/// A pool of node `node`, no status.
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

/// A thick PreferLocal volume for node-a, no status.
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
            source_volume: None,
            published: Vec::new(),
        },
    )
}

fn rv<K: Resource>(o: &K) -> String {
    o.meta()
        .resource_version
        .clone()
        .expect("a resourceVersion")
}

pub async fn create_get_list<S: Store>(s: S) {
    let b = s.apply(&pool("pool-b", "node-b")).await.unwrap();
    let a = s.apply(&pool("pool-a", "node-a")).await.unwrap();
    assert_eq!(a.metadata.generation, Some(1));
    assert!(a.metadata.uid.is_some());
    assert_ne!(rv(&a), rv(&b));
    let got: StoragePool = s.get("pool-a").await.unwrap().unwrap();
    assert_eq!(got, a);
    let listed = s.list::<StoragePool>().await.unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["pool-a", "pool-b"]);
    assert!(s.list::<Volume>().await.unwrap().items.is_empty());
}

pub async fn apply_is_idempotent_and_counts_generations<S: Store>(s: S) {
    let first = s.apply(&volume("v1", "1Gi")).await.unwrap();
    let again = s.apply(&volume("v1", "1Gi")).await.unwrap();
    assert_eq!(rv(&again), rv(&first), "a no-op apply keeps the version");
    let mut labelled = volume("v1", "1Gi");
    labelled.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    let l = s.apply(&labelled).await.unwrap();
    assert_ne!(rv(&l), rv(&first));
    assert_eq!(l.metadata.generation, Some(1), "labels are not the spec");
    let bigger = s.apply(&volume("v1", "2Gi")).await.unwrap();
    assert_eq!(bigger.metadata.generation, Some(2));
    assert_eq!(bigger.spec.size.as_str(), "2Gi");
    assert_eq!(bigger.metadata.labels, None, "labels left out are removed");
}

pub async fn stale_versions_conflict_and_change_nothing<S: Store>(s: S) {
    let v1 = s.apply(&volume("v", "1Gi")).await.unwrap();
    let old = rv(&v1);
    let v2 = s.apply(&volume("v", "2Gi")).await.unwrap();
    let mut stale = volume("v", "3Gi");
    stale.metadata.resource_version = Some(old.clone());
    assert!(s.apply(&stale).await.unwrap_err().is_conflict());
    let status = VolumeStatus {
        phase: VolumePhase::Scheduled,
        ..Default::default()
    };
    assert!(s
        .patch_status::<Volume>("v", &status, Some(&old))
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .set_finalizers::<Volume>("v", &[VOLUME_FINALIZER.into()], Some(&old))
        .await
        .unwrap_err()
        .is_conflict());
    assert!(s
        .delete::<Volume>("v", Some(&old))
        .await
        .unwrap_err()
        .is_conflict());
    let now: Volume = s.get("v").await.unwrap().unwrap();
    assert_eq!(now, v2, "nothing changed");
    // With the current version each succeeds.
    let mut current = volume("v", "3Gi");
    current.metadata.resource_version = Some(rv(&v2));
    let v3 = s.apply(&current).await.unwrap();
    let v4 = s
        .patch_status::<Volume>("v", &status, Some(&rv(&v3)))
        .await
        .unwrap();
    assert_eq!(v4.status.unwrap().phase, VolumePhase::Scheduled);
}

pub async fn status_is_replaced_and_kept_apart<S: Store>(s: S) {
    s.apply(&volume("v", "1Gi")).await.unwrap();
    let mut st = VolumeStatus {
        phase: VolumePhase::Rejected,
        message: Some("1 pool: node-a full".into()),
        ..Default::default()
    };
    let with = s.patch_status::<Volume>("v", &st, None).await.unwrap();
    assert_eq!(with.metadata.generation, Some(1), "status is not the spec");
    st.phase = VolumePhase::Scheduled;
    st.message = None;
    st.node = Some("node-a".into());
    let replaced = s.patch_status::<Volume>("v", &st, None).await.unwrap();
    assert_eq!(
        replaced.status.as_ref(),
        Some(&st),
        "the old message is gone"
    );
    let same = s.patch_status::<Volume>("v", &st, None).await.unwrap();
    assert_eq!(
        rv(&same),
        rv(&replaced),
        "a no-op status patch keeps the version"
    );
    // Apply leaves status and finalizers alone.
    s.set_finalizers::<Volume>("v", &[VOLUME_FINALIZER.into()], None)
        .await
        .unwrap();
    let applied = s.apply(&volume("v", "2Gi")).await.unwrap();
    assert_eq!(applied.status.as_ref(), Some(&st));
    assert_eq!(
        applied.metadata.finalizers,
        Some(vec![VOLUME_FINALIZER.to_string()])
    );
}

pub async fn missing_objects_are_not_found<S: Store>(s: S) {
    assert_eq!(s.get::<Volume>("nope").await.unwrap(), None);
    let st = VolumeStatus::default();
    assert!(s
        .patch_status::<Volume>("nope", &st, None)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .set_finalizers::<Volume>("nope", &[], None)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .delete::<Volume>("nope", None)
        .await
        .unwrap_err()
        .is_not_found());
    assert_eq!(
        remove_finalizer::<S, Volume>(&s, "nope", VOLUME_FINALIZER)
            .await
            .unwrap(),
        None
    );
}

pub async fn finalizers_hold_deletion<S: Store>(s: S) {
    s.apply(&volume("v", "1Gi")).await.unwrap();
    let with: Volume = add_finalizer(&s, "v", VOLUME_FINALIZER).await.unwrap();
    let again: Volume = add_finalizer(&s, "v", VOLUME_FINALIZER).await.unwrap();
    assert_eq!(rv(&again), rv(&with), "adding twice changes nothing");
    let marked = match s.delete::<Volume>("v", None).await.unwrap() {
        Deleted::Pending(v) => v,
        Deleted::Gone => panic!("deleted despite its finalizer"),
    };
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(s.get::<Volume>("v").await.unwrap().is_some());
    assert!(matches!(
        s.delete::<Volume>("v", None).await.unwrap(),
        Deleted::Pending(_)
    ));
    assert_eq!(
        remove_finalizer::<S, Volume>(&s, "v", VOLUME_FINALIZER)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get::<Volume>("v").await.unwrap(), None);
    // Without finalizers a delete is immediate.
    s.apply(&volume("w", "1Gi")).await.unwrap();
    assert_eq!(s.delete::<Volume>("w", None).await.unwrap(), Deleted::Gone);
    assert_eq!(s.get::<Volume>("w").await.unwrap(), None);
}

async fn next<K: std::fmt::Debug>(w: &mut crate::EventStream<K>) -> Event<K> {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event within 10 s")
        .expect("the watch goes on")
        .expect("not an error")
}

pub async fn watch_sees_every_change_after_the_list<S: Store>(s: S) {
    s.apply(&volume("before", "1Gi")).await.unwrap();
    let listed = s.list::<Volume>().await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let mut w = s.watch::<Volume>(&listed.version).await.unwrap();
    s.apply(&pool("p", "n")).await.unwrap(); // another kind: not seen
    s.apply(&volume("v", "1Gi")).await.unwrap();
    match next(&mut w).await {
        Event::Applied(v) => assert_eq!(v.metadata.name.as_deref(), Some("v")),
        e => panic!("{e:?}"),
    }
    let st = VolumeStatus {
        phase: VolumePhase::Ready,
        ..Default::default()
    };
    s.patch_status::<Volume>("v", &st, None).await.unwrap();
    match next(&mut w).await {
        Event::Applied(v) => assert_eq!(v.status.unwrap().phase, VolumePhase::Ready),
        e => panic!("{e:?}"),
    }
    s.delete::<Volume>("before", None).await.unwrap();
    match next(&mut w).await {
        Event::Deleted(v) => assert_eq!(v.metadata.name.as_deref(), Some("before")),
        e => panic!("{e:?}"),
    }
}

pub async fn leases_create_replace_and_conflict<S: Store>(s: S) {
    assert_eq!(s.get_lease("node-a").await.unwrap(), None);
    let rec = LeaseRecord {
        name: "node-a".into(),
        holder: Some("node-a".into()),
        duration_seconds: 15,
        acquire_time: Some("2026-01-01T00:00:00.000001Z".into()),
        renew_time: Some("2026-01-01T00:00:00.000001Z".into()),
        transitions: 0,
        version: None,
    };
    let created = s.put_lease(&rec).await.unwrap();
    assert!(created.version.is_some());
    assert_eq!(created.holder.as_deref(), Some("node-a"));
    assert_eq!(
        s.get_lease("node-a").await.unwrap().as_ref(),
        Some(&created)
    );
    assert!(
        s.put_lease(&rec).await.unwrap_err().is_conflict(),
        "a second create conflicts"
    );
    let renewed = s
        .put_lease(&LeaseRecord {
            renew_time: Some("2026-01-01T00:00:05.000001Z".into()),
            ..created.clone()
        })
        .await
        .unwrap();
    assert_ne!(renewed.version, created.version);
    assert_eq!(
        renewed.renew_time.as_deref(),
        Some("2026-01-01T00:00:05.000001Z")
    );
    assert!(
        s.put_lease(&created).await.unwrap_err().is_conflict(),
        "a stale version conflicts"
    );
}

/// Two claimants on one lease: the first holds it, the second waits until it
/// went unrenewed for its whole duration, then takes it over. Needs paused time.
pub async fn lease_claims_take_over_only_after_expiry<S: Store>(s: S) {
    let d = Duration::from_secs(15);
    let mut a = LeaseClaim::new("leader", "a", d);
    let mut b = LeaseClaim::new("leader", "b", d);
    assert_eq!(a.tick(&s).await.unwrap(), Claim::Held);
    assert_eq!(b.tick(&s).await.unwrap(), Claim::HeldBy("a".into()));
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.tick(&s).await.unwrap(), Claim::Held, "a renews");
        assert_eq!(b.tick(&s).await.unwrap(), Claim::HeldBy("a".into()));
    }
    // a stops renewing: b waits out the duration from when it last saw a change.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.tick(&s).await.unwrap(), Claim::HeldBy("a".into()));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(b.tick(&s).await.unwrap(), Claim::Held, "b takes over");
    let l = s.get_lease("leader").await.unwrap().unwrap();
    assert_eq!(l.holder.as_deref(), Some("b"));
    assert_eq!(l.transitions, 1);
    assert_eq!(a.tick(&s).await.unwrap(), Claim::HeldBy("b".into()));
    // A released lease is taken at once.
    b.release(&s).await.unwrap();
    assert_eq!(a.tick(&s).await.unwrap(), Claim::Held);
}

/// Runs every case, each on a store from `fresh`.
/// Events: kept per object, a repeat counted into the series, another note
/// or another object its own event.
pub async fn events_are_kept_per_object_and_repeats_counted<S: Store>(s: S) {
    use crate::{EventType, NewEvent};
    let v = s.apply(&volume("v1", "1Gi")).await.unwrap();
    let w = s.apply(&volume("v2", "1Gi")).await.unwrap();
    let refused = NewEvent::about(
        &v,
        EventType::Warning,
        "NoPoolFits",
        "Schedule",
        "1 pool: node-a full",
        "lightpool-controller",
    );
    let first = s.record_event(&refused).await.unwrap();
    assert_eq!(first.count, 1);
    let again = s.record_event(&refused).await.unwrap();
    assert_eq!((again.name.as_str(), again.count), (first.name.as_str(), 2));
    let third = s.record_event(&refused).await.unwrap();
    assert_eq!(third.count, 3);
    let other = NewEvent {
        note: "1 pool: node-a unhealthy".into(),
        ..refused.clone()
    };
    let o = s.record_event(&other).await.unwrap();
    assert_ne!(o.name, first.name, "another explanation is another event");
    let placed = NewEvent::about(
        &w,
        EventType::Normal,
        "Placed",
        "Schedule",
        "on node-a",
        "lightpool-controller",
    );
    s.record_event(&placed).await.unwrap();
    let got = s.events("Volume", "v1").await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].event, refused);
    assert_eq!(got[0].count, 3);
    assert_eq!(got[1].event, other);
    assert_eq!(got[1].count, 1);
    let got = s.events("Volume", "v2").await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.reason, "Placed");
    assert_eq!(got[0].event.type_, EventType::Normal);
    assert!(s.events("StoragePool", "v1").await.unwrap().is_empty());
}

#[macro_export]
macro_rules! conformance_tests {
    ($fresh:expr) => {
        #[tokio::test]
        async fn events_are_kept_per_object_and_repeats_counted() {
            $crate::conformance::events_are_kept_per_object_and_repeats_counted($fresh).await
        }
        #[tokio::test]
        async fn create_get_list() {
            $crate::conformance::create_get_list($fresh).await
        }
        #[tokio::test]
        async fn apply_is_idempotent_and_counts_generations() {
            $crate::conformance::apply_is_idempotent_and_counts_generations($fresh).await
        }
        #[tokio::test]
        async fn stale_versions_conflict_and_change_nothing() {
            $crate::conformance::stale_versions_conflict_and_change_nothing($fresh).await
        }
        #[tokio::test]
        async fn status_is_replaced_and_kept_apart() {
            $crate::conformance::status_is_replaced_and_kept_apart($fresh).await
        }
        #[tokio::test]
        async fn missing_objects_are_not_found() {
            $crate::conformance::missing_objects_are_not_found($fresh).await
        }
        #[tokio::test]
        async fn finalizers_hold_deletion() {
            $crate::conformance::finalizers_hold_deletion($fresh).await
        }
        #[tokio::test]
        async fn leases_create_replace_and_conflict() {
            $crate::conformance::leases_create_replace_and_conflict($fresh).await
        }
        #[tokio::test(start_paused = true)]
        async fn lease_claims_take_over_only_after_expiry() {
            $crate::conformance::lease_claims_take_over_only_after_expiry($fresh).await
        }
        #[tokio::test]
        async fn watch_sees_every_change_after_the_list() {
            $crate::conformance::watch_sees_every_change_after_the_list($fresh).await
        }
    };
}
