//! Growing a placed volume, with the controller and agents over in-memory
//! dataplanes, on the embedded store and on the Kubernetes store against the fake
//! API server: a larger spec.size is taken by the pool's ledger, grown by the
//! node's agent and reported (status, `Resized` condition, events); a smaller one
//! is refused; a grow the pool cannot promise is refused with the room there is;
//! a grow the dataplane cannot make (an over-committed pool that is full) is
//! reported on the Volume and can be taken back.

use std::time::Duration;

use lightpool_agent::{Agent, AgentConfig, MemoryDataplane};
use lightpool_controller::{Controller, ControllerConfig};
use lightpool_model::quantity::GIB;
use lightpool_model::*;
use lightpool_store::fake_api::FakeApi;
use lightpool_store::{EmbeddedStore, EventType, KubeStore, Store};

struct Cluster<S> {
    store: S,
    agent: Agent<S, MemoryDataplane>,
    dp: MemoryDataplane,
    controller: Controller<S>,
}

fn embedded() -> EmbeddedStore {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
    // The open database keeps its file.
    std::mem::forget(dir);
    s
}

fn kube() -> KubeStore {
    KubeStore::new(FakeApi::default().client(), "lightpool-test")
}

/// One node whose pool holds `gib` GiB and promises `over_commit` percent of it.
fn cluster<S: Store>(store: S, gib: u64, over_commit: u32) -> Cluster<S> {
    let dp = MemoryDataplane::new(gib * GIB);
    let mut cfg = AgentConfig::new("node-a", "10.0.0.1", 4420);
    cfg.over_commit_percent = over_commit;
    let controller = Controller::new(store.clone(), ControllerConfig::new("c1")).unwrap();
    Cluster {
        agent: Agent::new(store.clone(), dp.clone(), cfg),
        dp,
        store,
        controller,
    }
}

impl<S: Store> Cluster<S> {
    async fn seconds(&mut self, n: usize) {
        for _ in 0..n {
            self.agent.tick().await.unwrap();
            self.controller.tick().await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    async fn create(&self, name: &str, gib: u64, provisioning: Provisioning) {
        let spec = VolumeSpec {
            size: Quantity::from_bytes(gib * GIB),
            provisioning,
            placement: PlacementHint::PreferLocal,
            consumer_node: Some("node-a".into()),
            affinity: VolumeAffinity::default(),
            spread: None,
            source_snapshot: None,
            source_volume: None,
            published: Vec::new(),
        };
        self.store.apply(&Volume::new(name, spec)).await.unwrap();
    }

    /// Sets the volume's spec.size (as `kubectl edit` or `lightpool volume resize`).
    async fn resize(&self, name: &str, gib: u64) {
        let v: Volume = self.store.get(name).await.unwrap().unwrap();
        let mut spec = v.spec.clone();
        spec.size = Quantity::from_bytes(gib * GIB);
        self.store.apply(&Volume::new(name, spec)).await.unwrap();
    }

    async fn status(&self, name: &str) -> VolumeStatus {
        let v: Volume = self.store.get(name).await.unwrap().unwrap();
        v.status.unwrap_or_default()
    }

    /// (type, reason, note) of each event about the volume, oldest first.
    async fn events(&self, name: &str) -> Vec<(EventType, String, String)> {
        self.store
            .events("Volume", name)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event.type_, e.event.reason, e.event.note))
            .collect()
    }

    fn grows(&self) -> Vec<String> {
        self.dp
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("grow_volume"))
            .collect()
    }
}

fn condition<'a>(st: &'a VolumeStatus, type_: &str) -> &'a Condition {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {st:?}"))
}

async fn a_larger_size_is_grown_a_smaller_refused_and_a_full_pool_says_so<S: Store>(s: S) {
    let mut c = cluster(s, 100, 100);
    c.seconds(1).await;
    c.create("db", 10, Provisioning::Thick).await;
    c.seconds(3).await;
    let st = c.status("db").await;
    assert_eq!(st.phase, VolumePhase::Ready, "{st:?}");
    assert_eq!(
        (st.size_bytes, st.capacity_bytes),
        (Some(10 * GIB), Some(10 * GIB)),
        "the served size is reported"
    );

    // Grown: the ledger first, then the agent; reported when the dataplane has it.
    c.resize("db", 20).await;
    c.seconds(2).await;
    let st = c.status("db").await;
    assert_eq!(st.phase, VolumePhase::Ready, "served throughout: {st:?}");
    assert_eq!(
        (st.size_bytes, st.capacity_bytes),
        (Some(20 * GIB), Some(20 * GIB))
    );
    let resized = condition(&st, "Resized");
    assert_eq!(
        (resized.status, resized.reason.as_str()),
        (ConditionStatus::True, "Grown"),
        "{resized:?}"
    );
    assert!(resized.message.contains("to 20 GiB"), "{resized:?}");
    assert_eq!(c.grows(), [format!("grow_volume db {}", 20 * GIB)]);
    let sched = c.controller.scheduler().unwrap().clone();
    assert_eq!(sched.usage("node-a").unwrap().thick_bytes, 20 * GIB);
    let ev = c.events("db").await;
    let reasons: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        reasons,
        ["Placed", "Published", "Resizing", "Resized"],
        "{ev:?}"
    );
    assert!(ev[2].2.contains("from 10 GiB to 20 GiB"), "{ev:?}");
    let pool: StoragePool = c.store.get("node-a").await.unwrap().unwrap();
    assert_eq!(
        pool.status.unwrap().provisioned_bytes,
        20 * GIB,
        "the pool counts the grown size"
    );

    // The same size again changes nothing; a smaller one is refused.
    c.resize("db", 20).await;
    c.seconds(2).await;
    assert_eq!(c.grows().len(), 1);
    c.resize("db", 15).await;
    c.seconds(2).await;
    let st = c.status("db").await;
    assert_eq!(
        (st.phase, st.size_bytes, st.capacity_bytes),
        (VolumePhase::Ready, Some(20 * GIB), Some(20 * GIB))
    );
    let msg = st.message.clone().unwrap();
    assert!(
        msg.contains("only grows") && msg.contains("set spec.size back to 20 GiB or more"),
        "{msg}"
    );
    assert_eq!(condition(&st, "Valid").reason, "ShrinkNotSupported");
    assert_eq!(c.events("db").await.last().unwrap().1, "ShrinkNotSupported");
    assert_eq!(c.grows().len(), 1, "nothing asked of the dataplane");

    // Beyond what the pool can promise: refused with the room there is.
    c.create("other", 70, Provisioning::Thick).await;
    c.seconds(3).await;
    c.resize("db", 40).await;
    c.seconds(2).await;
    let st = c.status("db").await;
    assert_eq!(st.size_bytes, Some(20 * GIB), "{st:?}");
    let msg = st.message.clone().unwrap();
    assert!(
        msg.contains("pool node-a of node node-a can promise 10 GiB more")
            && msg.contains("needs 20 GiB")
            && msg.contains("free space there"),
        "{msg}"
    );
    assert_eq!(condition(&st, "Valid").reason, "NoRoomToGrow");
    assert_eq!(sched.usage("node-a").unwrap().thick_bytes, 90 * GIB);
    // Within the room: grown.
    c.resize("db", 30).await;
    c.seconds(2).await;
    let st = c.status("db").await;
    assert_eq!(
        (st.size_bytes, st.capacity_bytes, st.message.clone()),
        (Some(30 * GIB), Some(30 * GIB), None)
    );
    assert_eq!(condition(&st, "Valid").status, ConditionStatus::True);
}

async fn a_grow_the_dataplane_cannot_make_is_reported_and_can_be_taken_back<S: Store>(s: S) {
    // An over-committed pool: its ledger promises more than the dataplane holds.
    let mut c = cluster(s, 10, 300);
    c.seconds(1).await;
    c.create("thin", 8, Provisioning::Thin).await;
    c.seconds(3).await;
    c.resize("thin", 15).await;
    c.seconds(3).await;
    let st = c.status("thin").await;
    assert_eq!(st.phase, VolumePhase::Ready, "still served: {st:?}");
    assert_eq!(
        (st.size_bytes, st.capacity_bytes),
        (Some(15 * GIB), Some(8 * GIB)),
        "granted, not served"
    );
    let resized = condition(&st, "Resized");
    assert_eq!(
        (resized.status, resized.reason.as_str()),
        (ConditionStatus::False, "GrowFailed")
    );
    let msg = st.message.clone().unwrap();
    assert!(
        msg.contains("could not grow the volume to 15 GiB, it stays at 8 GiB")
            && msg.contains("free space on pool node-a")
            && msg.contains("set spec.size back to 8 GiB"),
        "{msg}"
    );
    let warnings: Vec<_> = c
        .events("thin")
        .await
        .into_iter()
        .filter(|e| e.1 == "GrowFailed")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, not one per retry: {warnings:?}"
    );
    assert_eq!(warnings[0].0, EventType::Warning);

    // Taken back to the served size: the ledger and the status follow.
    c.resize("thin", 8).await;
    c.seconds(2).await;
    let st = c.status("thin").await;
    assert_eq!(
        (st.size_bytes, st.capacity_bytes, st.message.clone()),
        (Some(8 * GIB), Some(8 * GIB), None),
        "{st:?}"
    );
    assert_eq!(condition(&st, "Resized").reason, "GrowTakenBack");
    let sched = c.controller.scheduler().unwrap().clone();
    assert_eq!(sched.usage("node-a").unwrap().provisioned_bytes, 8 * GIB);
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
    a_larger_size_is_grown_a_smaller_refused_and_a_full_pool_says_so,
    a_grow_the_dataplane_cannot_make_is_reported_and_can_be_taken_back
);
