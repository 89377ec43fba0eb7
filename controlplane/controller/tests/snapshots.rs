//! Snapshots with the controller and agents over in-memory dataplanes, each
//! case on the embedded store and on the Kubernetes store against the fake API
//! server: a snapshot taken in its volume's pool, a volume restored from it as a
//! clone in that pool, a delete the pool refuses while two volumes depend on the
//! snapshot, and a snapshot that outlives its volume.

use lightpool_model::quantity::GIB;
use lightpool_model::snapshot::SnapshotPhase;
use lightpool_model::*;
use lightpool_store::{EventType, Store};

mod common;
use common::*;

impl<S: Store> Cluster<S> {
    async fn volume(&self, name: &str, gib: u64, consumer: &str, source: Option<&str>) {
        let spec = VolumeSpec {
            size: Quantity::from_bytes(gib * GIB),
            provisioning: Provisioning::Thin,
            placement: PlacementHint::PreferLocal,
            consumer_node: Some(consumer.into()),
            affinity: VolumeAffinity::default(),
            spread: None,
            source_snapshot: source.map(str::to_string),
            source_volume: None,
            published: Vec::new(),
        };
        self.store.apply(&Volume::new(name, spec)).await.unwrap();
    }

    async fn snapshot(&self, name: &str, volume: &str) {
        let s = Snapshot::new(
            name,
            SnapshotSpec {
                volume: volume.into(),
            },
        );
        self.store.apply(&s).await.unwrap();
    }

    async fn vstatus(&self, name: &str) -> VolumeStatus {
        let v: Volume = self.store.get(name).await.unwrap().unwrap();
        v.status.unwrap_or_default()
    }

    async fn sstatus(&self, name: &str) -> Option<SnapshotStatus> {
        let s: Option<Snapshot> = self.store.get(name).await.unwrap();
        s.map(|s| s.status.unwrap_or_default())
    }

    /// (type, reason, note) of each event about the snapshot, oldest first.
    async fn events(&self, name: &str) -> Vec<(EventType, String, String)> {
        self.store
            .events("Snapshot", name)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event.type_, e.event.reason, e.event.note))
            .collect()
    }
}

async fn a_snapshot_is_taken_restored_as_a_clone_in_its_pool_and_deleted_after_its_clones<
    S: Store,
>(
    s: S,
) {
    let mut c = cluster(s);
    c.seconds(1).await;
    c.volume("db", 10, "node-a", None).await;
    // Asked for before its volume is Ready: it waits, and says for what.
    c.snapshot("s1", "db").await;
    c.seconds(1).await;
    c.seconds(2).await;
    assert_eq!(c.vstatus("db").await.phase, VolumePhase::Ready);
    let st = c.sstatus("s1").await.unwrap();
    assert_eq!(st.phase, SnapshotPhase::Ready, "{st:?}");
    assert_eq!(st.pool.as_deref(), Some("node-a"));
    assert_eq!(st.size_bytes, Some(10 * GIB));
    let taken = st.taken_at.clone().expect("the time the pool took it");
    assert!(lightpool_store::age_of(&taken).is_some(), "{taken}");
    assert_eq!(st.message, None);
    assert_eq!(c.dp(0).snapshot_names(), ["s1"]);
    assert!(c.dp(1).snapshot_names().is_empty());
    // Taken once, however many ticks pass.
    c.seconds(3).await;
    let takes = c
        .dp(0)
        .calls()
        .iter()
        .filter(|x| x.starts_with("create_snapshot"))
        .count();
    assert_eq!(takes, 1);
    let ev = c.events("s1").await;
    assert!(
        ev.iter()
            .any(|(t, r, n)| *t == EventType::Normal && r == "Taken" && n.contains("volume db")),
        "{ev:?}"
    );

    // Restored for a consumer on node-b: placed in the snapshot's pool anyway, a
    // clone of the pool snapshot.
    c.volume("r1", 10, "node-b", Some("s1")).await;
    c.seconds(3).await;
    let r1 = c.vstatus("r1").await;
    assert_eq!(r1.phase, VolumePhase::Ready, "{r1:?}");
    assert_eq!(
        (r1.node.as_deref(), r1.pool.as_deref()),
        (Some("node-a"), Some("node-a"))
    );
    assert!(c
        .dp(0)
        .calls()
        .contains(&"clone_snapshot s1 r1".to_string()));
    assert_eq!(c.dp(0).volume_names(), ["db", "r1"]);

    // Two volumes depend on it (db carries on as its clone, and r1): the pool
    // refuses, and the status and a Warning name them.
    c.store.delete::<Snapshot>("s1", None).await.unwrap();
    c.seconds(2).await;
    let st = c.sstatus("s1").await.expect("kept while the pool refuses");
    assert_eq!(st.phase, SnapshotPhase::Deleting);
    let msg = st.message.unwrap();
    assert!(msg.contains("refused") && msg.contains("r1"), "{msg}");
    assert_eq!(c.dp(0).snapshot_names(), ["s1"]);
    let ev = c.events("s1").await;
    assert!(
        ev.iter()
            .any(|(t, r, _)| *t == EventType::Warning && r == "DeleteRefused"),
        "{ev:?}"
    );

    // r1 goes: the snapshot has one clone left, and goes too.
    c.store.delete::<Volume>("r1", None).await.unwrap();
    c.seconds(4).await;
    assert!(c.store.get::<Volume>("r1").await.unwrap().is_none());
    assert!(c.sstatus("s1").await.is_none(), "the snapshot is gone");
    assert!(c.dp(0).snapshot_names().is_empty());
    assert_eq!(c.dp(0).volume_names(), ["db"]);
    // The embedded store drops an object's events with it; Kubernetes keeps them.
    let ev = c.events("s1").await;
    if std::any::type_name::<S>().ends_with("KubeStore") {
        assert!(
            ev.iter()
                .any(|(t, r, _)| *t == EventType::Normal && r == "Deleted"),
            "{ev:?}"
        );
    } else {
        assert!(ev.is_empty(), "{ev:?}");
    }
}

async fn a_snapshot_outlives_its_volume_and_bad_restores_are_refused<S: Store>(s: S) {
    let mut c = cluster(s);
    c.seconds(1).await;
    c.volume("db", 4, "node-b", None).await;
    c.seconds(3).await;
    c.snapshot("keep", "db").await;
    c.seconds(2).await;
    assert_eq!(c.sstatus("keep").await.unwrap().phase, SnapshotPhase::Ready);
    // The volume goes; its snapshot stays, to restore from.
    c.store.delete::<Volume>("db", None).await.unwrap();
    c.seconds(4).await;
    assert!(c.store.get::<Volume>("db").await.unwrap().is_none());
    assert!(c.dp(1).volume_names().is_empty());
    let st = c.sstatus("keep").await.unwrap();
    assert_eq!(st.phase, SnapshotPhase::Ready);
    assert_eq!(c.dp(1).snapshot_names(), ["keep"]);
    c.volume("back", 4, "node-a", Some("keep")).await;
    c.seconds(3).await;
    let back = c.vstatus("back").await;
    assert_eq!(back.phase, VolumePhase::Ready, "{back:?}");
    assert_eq!(back.node.as_deref(), Some("node-b"));

    // A snapshot that does not exist, and a size other than the snapshot's.
    c.volume("nosrc", 4, "node-a", Some("missing")).await;
    c.volume("bigger", 8, "node-a", Some("keep")).await;
    c.seconds(2).await;
    let st = c.vstatus("nosrc").await;
    assert_eq!(st.phase, VolumePhase::Rejected);
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .contains("snapshot missing not found"),
        "{st:?}"
    );
    let st = c.vstatus("bigger").await;
    assert_eq!(st.phase, VolumePhase::Rejected);
    assert!(
        st.message.as_deref().unwrap().contains("snapshot's size"),
        "{st:?}"
    );
    // A snapshot of a volume that is not there: Failed, saying so, nothing taken.
    c.snapshot("orphan", "nothere").await;
    c.seconds(2).await;
    let st = c.sstatus("orphan").await.unwrap();
    assert_eq!(st.phase, SnapshotPhase::Failed);
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .contains("volume nothere does not exist"),
        "{st:?}"
    );
    let ev = c.events("orphan").await;
    assert!(
        ev.iter()
            .any(|(t, r, _)| *t == EventType::Warning && r == "NoVolume"),
        "{ev:?}"
    );
    assert_eq!(
        c.dp(0).snapshot_names().len() + c.dp(1).snapshot_names().len(),
        1
    );
}

macro_rules! on_both_stores {
    ($($case:ident),*) => {
        mod on_embedded {
            $(#[tokio::test(start_paused = true)]
            async fn $case() {
                super::$case(super::embedded()).await
            })*
        }
        mod on_kube {
            $(#[tokio::test(start_paused = true)]
            async fn $case() {
                super::$case(super::kube()).await
            })*
        }
    };
}

on_both_stores!(
    a_snapshot_is_taken_restored_as_a_clone_in_its_pool_and_deleted_after_its_clones,
    a_snapshot_outlives_its_volume_and_bad_restores_are_refused
);
