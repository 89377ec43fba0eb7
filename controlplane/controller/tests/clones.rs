//! Volumes cloned from volumes, with the controller and agents over in-memory
//! dataplanes, on the embedded store and on the Kubernetes store against the fake
//! API server: a clone lands in its source's pool (whatever its consumer's node),
//! as a clone of an internal snapshot of the source; a larger clone is grown after
//! it is made; a smaller one, or one of a missing volume, is refused with what to
//! change; the internal snapshots go once the clone or the source has.

use lightpool_agent::clone_source;
use lightpool_model::quantity::GIB;
use lightpool_model::*;
use lightpool_store::Store;

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
            source_snapshot: None,
            source_volume: source.map(str::to_string),
            published: Vec::new(),
        };
        self.store.apply(&Volume::new(name, spec)).await.unwrap();
    }

    async fn status(&self, name: &str) -> Option<VolumeStatus> {
        let v: Option<Volume> = self.store.get(name).await.unwrap();
        v.map(|v| v.status.unwrap_or_default())
    }
}

async fn a_clone_is_made_in_its_sources_pool_and_its_snapshot_cleaned_up<S: Store>(s: S) {
    let mut c = cluster(s);
    c.seconds(1).await;
    c.volume("src", 10, "node-a", None).await;
    c.seconds(3).await;
    assert_eq!(c.status("src").await.unwrap().phase, VolumePhase::Ready);

    // Its consumer is on node-b, but a clone shares its source's data: node-a.
    c.volume("copy", 10, "node-b", Some("src")).await;
    c.seconds(3).await;
    let st = c.status("copy").await.unwrap();
    assert_eq!(st.phase, VolumePhase::Ready, "{st:?}");
    assert_eq!(
        (st.node.as_deref(), st.local, st.capacity_bytes),
        (Some("node-a"), Some(false), Some(10 * GIB))
    );
    let calls = c.dp(0).calls();
    let snap = clone_source("copy");
    assert!(
        calls.contains(&format!("create_snapshot src {snap}"))
            && calls.contains(&format!("clone_snapshot {snap} copy")),
        "{calls:?}"
    );
    assert_eq!(c.dp(0).snapshot_names(), std::slice::from_ref(&snap));
    assert!(c.dp(1).volume_names().is_empty());
    // Made once, however many ticks pass.
    c.seconds(3).await;
    let clones = c
        .dp(0)
        .calls()
        .iter()
        .filter(|x| x.starts_with("clone_snapshot"))
        .count();
    assert_eq!(clones, 1);

    // Larger than its source: cloned, then grown.
    c.volume("bigger", 15, "node-a", Some("src")).await;
    c.seconds(3).await;
    let st = c.status("bigger").await.unwrap();
    assert_eq!(
        (st.phase, st.size_bytes, st.capacity_bytes),
        (VolumePhase::Ready, Some(15 * GIB), Some(15 * GIB)),
        "{st:?}"
    );
    assert!(c
        .dp(0)
        .calls()
        .contains(&format!("grow_volume bigger {}", 15 * GIB)));

    // Refused with what to change, and nothing made.
    c.volume("smaller", 5, "node-a", Some("src")).await;
    c.volume("orphan", 10, "node-a", Some("nope")).await;
    c.seconds(2).await;
    let st = c.status("smaller").await.unwrap();
    assert_eq!(st.phase, VolumePhase::Rejected);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("at least its source's size")),
        "{st:?}"
    );
    let st = c.status("orphan").await.unwrap();
    assert_eq!(st.phase, VolumePhase::Rejected);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("volume nope not found") && m.contains("spec.sourceVolume")),
        "{st:?}"
    );
    for (_, dp) in &c.agents {
        assert!(
            dp.volume_names()
                .iter()
                .all(|n| ["src", "copy", "bigger"].contains(&n.as_str())),
            "{:?}",
            dp.volume_names()
        );
    }

    // The clone goes: so does its internal snapshot (its data now the source's).
    c.store.delete::<Volume>("copy", None).await.unwrap();
    c.seconds(3).await;
    assert!(c.status("copy").await.is_none());
    assert_eq!(c.dp(0).snapshot_names(), [clone_source("bigger")]);
    // The source goes first: the internal snapshot hands its data to the clone.
    c.store.delete::<Volume>("src", None).await.unwrap();
    c.seconds(3).await;
    assert!(c.status("src").await.is_none());
    assert!(
        c.dp(0).snapshot_names().is_empty(),
        "{:?}",
        c.dp(0).snapshot_names()
    );
    assert_eq!(c.dp(0).volume_names(), ["bigger"]);
    assert_eq!(c.status("bigger").await.unwrap().phase, VolumePhase::Ready);
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

on_both_stores!(a_clone_is_made_in_its_sources_pool_and_its_snapshot_cleaned_up);
