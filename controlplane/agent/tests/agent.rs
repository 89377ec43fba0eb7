//! The agent over the embedded store and an in-memory dataplane (volumes, and
//! snapshots: found again after a crash, waiting for their volume, lost).

use lightpool_agent::*;
use lightpool_model::quantity::GIB;
use lightpool_model::volume::volume_nqn;
use lightpool_model::*;
use lightpool_store::{Deleted, EmbeddedStore, Store};

fn store() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (EmbeddedStore::open(dir.path().join("s.redb")).unwrap(), dir)
}

fn agent(s: &EmbeddedStore, dp: &MemoryDataplane) -> Agent<EmbeddedStore, MemoryDataplane> {
    Agent::new(
        s.clone(),
        dp.clone(),
        AgentConfig::new("node-a", "10.0.0.1", 4420),
    )
}

/// A volume as the controller leaves it once placed on node-a's pool.
async fn scheduled(s: &EmbeddedStore, name: &str, gib: u64) {
    let spec = VolumeSpec {
        size: Quantity::from_bytes(gib * GIB),
        provisioning: Provisioning::Thick,
        placement: PlacementHint::PreferLocal,
        consumer_node: Some("node-a".into()),
        affinity: VolumeAffinity::default(),
        spread: None,
        source_snapshot: None,
        source_volume: None,
        published: Vec::new(),
    };
    s.apply(&Volume::new(name, spec)).await.unwrap();
    let st = VolumeStatus {
        phase: VolumePhase::Scheduled,
        node: Some("node-a".into()),
        pool: Some("node-a".into()),
        size_bytes: Some(gib * GIB),
        local: Some(true),
        ..Default::default()
    };
    s.patch_status::<Volume>(name, &st, None).await.unwrap();
}

/// The pool's health follows its device's (a RAID1 under the pool losing a member,
/// or every member), and a failed pool is not offered to new volumes.
#[tokio::test]
async fn the_pool_reports_its_devices_health() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    let health = |s: &EmbeddedStore| {
        let s = s.clone();
        async move {
            let p: StoragePool = s.get("node-a").await.unwrap().unwrap();
            p.status.unwrap().health
        }
    };
    a.tick().await.unwrap();
    assert_eq!(health(&s).await, PoolHealth::Ready);
    for (degraded, failed, want) in [
        (true, false, PoolHealth::Degraded),
        (true, true, PoolHealth::Failed),
        (false, false, PoolHealth::Ready),
    ] {
        dp.set_pool_health(degraded, failed);
        a.tick().await.unwrap();
        assert_eq!(health(&s).await, want);
        assert_eq!(want.schedulable(), want != PoolHealth::Failed);
    }
}

#[tokio::test]
async fn publishes_its_pool_and_renews_its_heartbeat() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    let r = a.tick().await.unwrap();
    assert!(r.renewed);
    let p: StoragePool = s.get("node-a").await.unwrap().unwrap();
    assert_eq!(p.spec.node.address, "10.0.0.1");
    let st = p.status.unwrap();
    assert_eq!(st.health, PoolHealth::Ready);
    assert_eq!((st.capacity_bytes, st.free_bytes), (100 * GIB, 100 * GIB));
    let lease = s.get_lease(&node_lease("node-a")).await.unwrap().unwrap();
    assert_eq!(lease.holder.as_deref(), Some("node-a"));
    assert_eq!(lease.duration_seconds, 15);
    assert_eq!(dp.listeners(), [("10.0.0.1".to_string(), 4420)]);
    // Not due again within 5 s; nothing rewritten when nothing changed.
    let rv = p.metadata.resource_version;
    let r = a.tick().await.unwrap();
    assert!(!r.renewed);
    let p: StoragePool = s.get("node-a").await.unwrap().unwrap();
    assert_eq!(p.metadata.resource_version, rv);
    // A second agent for the same node is refused.
    let mut cfg = AgentConfig::new("node-a", "10.0.0.9", 4420);
    cfg.identity = "node-a-other".into();
    let mut twin = Agent::new(s.clone(), dp.clone(), cfg);
    assert!(matches!(
        twin.tick().await,
        Err(AgentError::DuplicateAgent { .. })
    ));
}

#[tokio::test]
async fn a_volume_placed_here_is_published_once_with_its_connect_line() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 10).await;
    let r = a.tick().await.unwrap();
    assert_eq!(r.volumes, [("v1".to_string(), VolumeOutcome::Published)]);
    let nqn = volume_nqn("v1");
    assert_eq!(dp.nqns(), std::slice::from_ref(&nqn));
    assert_eq!(dp.volume_names(), ["v1"]);
    let v: Volume = s.get("v1").await.unwrap().unwrap();
    assert!(v
        .metadata
        .finalizers
        .unwrap()
        .contains(&AGENT_FINALIZER.to_string()));
    let st = v.status.unwrap();
    assert_eq!(st.phase, VolumePhase::Ready);
    assert_eq!(
        st.target.unwrap().connect_commands(),
        [format!("nvme connect -t tcp -a 10.0.0.1 -s 4420 -n {nqn}")]
    );
    let p: StoragePool = s.get("node-a").await.unwrap().unwrap();
    // The pool status is published before the volume's objects in a tick: the
    // next one shows the space taken.
    let calls = dp.calls().len();
    let r = a.tick().await.unwrap();
    assert!(r.volumes.is_empty(), "{r:?}");
    assert_eq!(
        dp.calls().len(),
        calls + 1,
        "only the listener check: {:?}",
        dp.calls()
    );
    let p2: StoragePool = s.get("node-a").await.unwrap().unwrap();
    assert_eq!(p2.status.unwrap().free_bytes, 90 * GIB);
    assert_eq!(p.status.unwrap().volumes, 1);
}

#[tokio::test]
async fn missing_objects_are_recreated_and_reported_as_drift() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 1).await;
    a.tick().await.unwrap();
    dp.lose_subsystem(&volume_nqn("v1"));
    let r = a.tick().await.unwrap();
    assert_eq!(
        r.volumes,
        [(
            "v1".to_string(),
            VolumeOutcome::Repaired(vec![format!("subsystem {}", volume_nqn("v1"))])
        )]
    );
    assert_eq!(dp.nqns(), [volume_nqn("v1")]);
    let v: Volume = s.get("v1").await.unwrap().unwrap();
    let c = v.status.unwrap().conditions;
    let d = c.iter().find(|c| c.type_ == "Drift").unwrap();
    assert!(d.message.contains("recreated"), "{}", d.message);
}

#[tokio::test]
async fn a_deleted_volume_is_taken_down_in_order_then_let_go() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 1).await;
    a.tick().await.unwrap();
    assert!(matches!(
        s.delete::<Volume>("v1", None).await.unwrap(),
        Deleted::Pending(_)
    ));
    let before = dp.calls().len();
    let r = a.tick().await.unwrap();
    assert_eq!(r.volumes, [("v1".to_string(), VolumeOutcome::Removed)]);
    let calls = dp.calls()[before..].to_vec();
    let sub = calls
        .iter()
        .position(|c| c.starts_with("delete_subsystem"))
        .unwrap();
    let vol = calls
        .iter()
        .position(|c| c.starts_with("delete_volume"))
        .unwrap();
    assert!(sub < vol, "hosts cut off before the data goes: {calls:?}");
    assert!(dp.nqns().is_empty() && dp.volume_names().is_empty());
    assert_eq!(
        s.get::<Volume>("v1").await.unwrap(),
        None,
        "its only finalizer gone"
    );
}

#[tokio::test]
async fn objects_no_volume_claims_are_collected_and_failures_reported() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(5 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 1).await;
    a.tick().await.unwrap();
    // v1 vanishes from the store without the agent's clean-up (forced by hand).
    s.set_finalizers::<Volume>("v1", &[], None).await.unwrap();
    s.delete::<Volume>("v1", None).await.unwrap();
    let r = a.tick().await.unwrap();
    assert_eq!(
        r.collected,
        [volume_nqn("v1"), "pool volume v1".to_string()]
    );
    assert!(dp.nqns().is_empty() && dp.volume_names().is_empty());
    // A volume the pool cannot hold: its status says so.
    scheduled(&s, "big", 10).await;
    let r = a.tick().await.unwrap();
    assert!(
        matches!(&r.volumes[0].1, VolumeOutcome::Failed(m) if m.contains("bytes free")),
        "{r:?}"
    );
    let v: Volume = s.get("big").await.unwrap().unwrap();
    assert!(v
        .status
        .unwrap()
        .message
        .unwrap()
        .contains("could not create"));
    // The dataplane gone: the tick fails and says so.
    dp.set_down(true);
    let e = a.tick().await.unwrap_err();
    assert!(e.to_string().contains("unavailable"), "{e}");
}

fn snapshot_of(name: &str, volume: &str) -> Snapshot {
    Snapshot::new(
        name,
        SnapshotSpec {
            volume: volume.into(),
        },
    )
}

#[tokio::test]
async fn a_snapshot_taken_before_a_crash_is_found_not_taken_twice_and_a_lost_one_is_failed() {
    use lightpool_model::snapshot::SnapshotPhase;
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 4).await;
    a.tick().await.unwrap();
    // The pool took it, then the agent died before the status was written.
    let taken = dp.create_snapshot("v1", "s1").await.unwrap();
    s.apply(&snapshot_of("s1", "v1")).await.unwrap();
    let r = a.tick().await.unwrap();
    assert_eq!(r.snapshots, [("s1".to_string(), SnapshotOutcome::Taken)]);
    let snap: Snapshot = s.get("s1").await.unwrap().unwrap();
    let st = snap.status.clone().unwrap();
    assert_eq!(st.phase, SnapshotPhase::Ready);
    assert_eq!(st.size_bytes, Some(4 * GIB));
    assert_eq!(
        st.taken_at,
        lightpool_store::rfc3339_of_unix(taken.created),
        "the pool's time, not the agent's"
    );
    assert_eq!(
        snap.metadata.finalizers.as_deref(),
        Some(&[AGENT_FINALIZER.to_string()][..])
    );
    assert_eq!(dp.snapshot_names(), ["s1"]);
    // Nothing more to do.
    assert!(a.tick().await.unwrap().snapshots.is_empty());
    // Removed behind the agent's back: Failed, never taken again of a later state.
    dp.delete_snapshot("s1").await.unwrap();
    let r = a.tick().await.unwrap();
    assert_eq!(r.snapshots, [("s1".to_string(), SnapshotOutcome::Lost)]);
    let st = s
        .get::<Snapshot>("s1")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase, SnapshotPhase::Failed);
    assert!(st.message.unwrap().contains("removed outside LightPool"));
    assert!(dp.snapshot_names().is_empty());
    // Deleted: released at once (nothing left in the pool).
    s.delete::<Snapshot>("s1", None).await.unwrap();
    let r = a.tick().await.unwrap();
    assert_eq!(r.snapshots, [("s1".to_string(), SnapshotOutcome::Deleted)]);
    assert!(s.get::<Snapshot>("s1").await.unwrap().is_none());
}

#[tokio::test]
async fn a_snapshot_waits_for_its_volume_to_be_ready_and_says_so() {
    use lightpool_model::snapshot::SnapshotPhase;
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 1).await;
    s.apply(&snapshot_of("s1", "v1")).await.unwrap();
    // The dataplane down: nothing taken, nothing written.
    dp.set_down(true);
    assert!(a.tick().await.is_err());
    let st = s.get::<Snapshot>("s1").await.unwrap().unwrap().status;
    assert_eq!(st, None);
    dp.set_down(false);
    // The volume was still Scheduled when this tick read it: the snapshot waits.
    let r = a.tick().await.unwrap();
    assert_eq!(r.snapshots, [("s1".to_string(), SnapshotOutcome::Waiting)]);
    let st = s
        .get::<Snapshot>("s1")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase, SnapshotPhase::Pending);
    assert_eq!(
        st.message.as_deref(),
        Some("waiting for volume v1 to be Ready (it is Scheduled)")
    );
    assert!(dp.snapshot_names().is_empty());
    let r = a.tick().await.unwrap();
    assert_eq!(r.snapshots, [("s1".to_string(), SnapshotOutcome::Taken)]);
    let st = s
        .get::<Snapshot>("s1")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.phase, SnapshotPhase::Ready, "{st:?}");
    assert_eq!((st.pool.as_deref(), st.message), (Some("node-a"), None));
}

#[tokio::test]
async fn a_restored_volume_snapshotted_itself_is_repaired_not_cloned_again() {
    let (s, _d) = store();
    let dp = MemoryDataplane::new(100 * GIB);
    let mut a = agent(&s, &dp);
    scheduled(&s, "v1", 1).await;
    a.tick().await.unwrap();
    dp.create_snapshot("v1", "s1").await.unwrap();
    s.apply(&snapshot_of("s1", "v1")).await.unwrap();
    a.tick().await.unwrap();
    // c1 restored from s1 (as the controller places it), then snapshotted: its
    // parent in the pool is its own snapshot now, no longer s1.
    scheduled(&s, "c1", 1).await;
    let mut c1: Volume = s.get("c1").await.unwrap().unwrap();
    c1.spec.source_snapshot = Some("s1".into());
    c1.metadata.resource_version = None;
    s.apply(&c1).await.unwrap();
    a.tick().await.unwrap();
    assert!(dp.calls().contains(&"clone_snapshot s1 c1".to_string()));
    dp.create_snapshot("c1", "c1-snap").await.unwrap();
    assert!(matches!(
        dp.clone_snapshot("s1", "c1").await,
        Err(DataplaneError::Mismatch(_))
    ));
    // Its subsystem lost: repaired with the pool volume it has.
    dp.lose_subsystem(&volume_nqn("c1"));
    let r = a.tick().await.unwrap();
    assert!(
        r.volumes
            .iter()
            .any(|(n, o)| n == "c1" && matches!(o, VolumeOutcome::Repaired(_))),
        "{r:?}"
    );
    assert!(dp.nqns().contains(&volume_nqn("c1")));
}
