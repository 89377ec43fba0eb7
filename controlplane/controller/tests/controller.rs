//! The controller with agents over in-memory dataplanes, in paused time, each
//! case twice: on the embedded store and on the Kubernetes store against the
//! fake API server (one set of reconcilers on either): placement, ordered
//! delete, refusals, heartbeat loss and return, leader election and a restart
//! mid-operation.

use std::time::Duration;

use lightpool_agent::{Agent, AgentConfig, MemoryDataplane, AGENT_FINALIZER};
use lightpool_controller::{Controller, ControllerConfig, CONTROLLER_LEASE};
use lightpool_model::quantity::GIB;
use lightpool_model::*;
use lightpool_store::fake_api::FakeApi;
use lightpool_store::{EmbeddedStore, EventType, KubeStore, Store};

struct Cluster<S> {
    store: S,
    agents: Vec<(Agent<S, MemoryDataplane>, MemoryDataplane)>,
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

fn cluster<S: Store>(store: S, nodes: &[&str], gib: u64) -> Cluster<S> {
    let agents = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dp = MemoryDataplane::new(gib * GIB);
            let cfg = AgentConfig::new(*n, format!("10.0.0.{}", i + 1), 4420);
            (Agent::new(store.clone(), dp.clone(), cfg), dp)
        })
        .collect();
    let controller = Controller::new(store.clone(), ControllerConfig::new("c1")).unwrap();
    Cluster {
        store,
        agents,
        controller,
    }
}

impl<S: Store> Cluster<S> {
    /// One second: every live agent ticks, then the controller.
    async fn second(&mut self, live: &[bool]) -> lightpool_controller::TickReport {
        for (i, (a, _)) in self.agents.iter_mut().enumerate() {
            if live.get(i).copied().unwrap_or(true) {
                a.tick().await.unwrap();
            }
        }
        let r = self.controller.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        r
    }

    async fn seconds(&mut self, n: usize) {
        for _ in 0..n {
            self.second(&[]).await;
        }
    }

    async fn create(&self, name: &str, gib: u64, hint: PlacementHint, consumer: &str) {
        let spec = VolumeSpec {
            size: Quantity::from_bytes(gib * GIB),
            provisioning: Provisioning::Thick,
            placement: hint,
            consumer_node: Some(consumer.into()),
            affinity: VolumeAffinity::default(),
            spread: None,
            source_snapshot: None,
            source_volume: None,
            published: Vec::new(),
        };
        self.store.apply(&Volume::new(name, spec)).await.unwrap();
    }

    async fn volume(&self, name: &str) -> Option<Volume> {
        self.store.get(name).await.unwrap()
    }

    /// (type, reason, count, note) of each event about the object, oldest first.
    async fn events(&self, kind: &str, name: &str) -> Vec<(EventType, String, u32, String)> {
        self.store
            .events(kind, name)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event.type_, e.event.reason, e.count, e.event.note))
            .collect()
    }

    async fn status(&self, name: &str) -> VolumeStatus {
        self.volume(name).await.unwrap().status.unwrap_or_default()
    }
}

async fn volumes_are_placed_by_their_hints_published_and_deleted_in_order<S: Store>(s: S) {
    let mut c = cluster(s, &["node-a", "node-b", "node-c"], 100);
    c.seconds(1).await;
    c.create("local", 10, PlacementHint::MustLocal, "node-a")
        .await;
    c.create("remote", 10, PlacementHint::MustRemote, "node-a")
        .await;
    c.create("prefer", 10, PlacementHint::PreferLocal, "node-b")
        .await;
    c.seconds(3).await;
    for (v, want) in [("local", Some("node-a")), ("prefer", Some("node-b"))] {
        assert_eq!(c.status(v).await.node.as_deref(), want, "{v}");
    }
    let remote = c.status("remote").await;
    assert_ne!(remote.node.as_deref(), Some("node-a"));
    for v in ["local", "remote", "prefer"] {
        let st = c.status(v).await;
        assert_eq!(st.phase, VolumePhase::Ready, "{v}: {st:?}");
        assert_eq!(st.operation, None, "{v}: the operation finished");
        assert_eq!(st.target.unwrap().paths.len(), 1);
    }
    let sched = c.controller.scheduler().unwrap().clone();
    assert_eq!(sched.usage("node-a").unwrap().thick_bytes, 10 * GIB);
    // Each decision is an event: placed, then published with its address.
    let ev = c.events("Volume", "local").await;
    let reasons: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(reasons, ["Placed", "Published"], "{ev:?}");
    assert_eq!(ev[0].0, EventType::Normal);
    assert!(
        ev[0].3.contains("node-a") && ev[0].3.contains("local"),
        "{ev:?}"
    );
    assert!(ev[1].3.contains("10.0.0.1:4420"), "{ev:?}");

    // Delete: the agent takes it down, then the controller gives the space back.
    c.store.delete::<Volume>("local", None).await.unwrap();
    let r = c.controller.tick().await.unwrap();
    assert_eq!(
        r.operations,
        [(
            "local".into(),
            "VolumeDelete".into(),
            "Waiting in Unpublish".into()
        )]
    );
    assert_eq!(c.status("local").await.phase, VolumePhase::Deleting);
    let ev = c.events("Volume", "local").await;
    assert_eq!(ev.last().unwrap().1, "Deleting", "{ev:?}");
    assert!(ev.last().unwrap().3.contains("node-a"), "{ev:?}");
    assert_eq!(
        c.agents[0].1.volume_names(),
        ["local"],
        "still there until the agent acts"
    );
    c.seconds(2).await;
    assert!(c.volume("local").await.is_none());
    assert!(c.agents[0].1.volume_names().is_empty());
    assert_eq!(sched.usage("node-a").unwrap().thick_bytes, 0);
}

async fn bad_input_is_refused_with_what_to_change_and_nothing_made<S: Store>(s: S) {
    let mut c = cluster(s, &["node-a", "node-b"], 100);
    c.seconds(1).await;
    c.create("zero", 0, PlacementHint::PreferLocal, "node-a")
        .await;
    c.create("huge", 1000, PlacementHint::PreferLocal, "node-a")
        .await;
    c.create("nowhere", 10, PlacementHint::MustLocal, "node-z")
        .await;
    c.create("fits", 60, PlacementHint::MustLocal, "node-a")
        .await;
    c.create("full", 60, PlacementHint::MustLocal, "node-a")
        .await;
    c.seconds(2).await;
    let cases = [
        ("zero", "spec.size"),
        ("huge", "larger than any pool"),
        ("nowhere", "node-z"),
        ("full", "node-a"),
    ];
    for (v, needle) in cases {
        let st = c.status(v).await;
        assert_eq!(st.phase, VolumePhase::Rejected, "{v}: {st:?}");
        let msg = st.message.unwrap();
        assert!(msg.contains(needle), "{v}: {msg}");
        assert_eq!(st.pool, None);
        let vol = c.volume(v).await.unwrap();
        assert_eq!(vol.metadata.finalizers, None, "{v}: nothing held");
    }
    // Each refusal is a Warning event with the same explanation.
    for (v, needle) in cases {
        let ev = c.events("Volume", v).await;
        assert_eq!(ev.len(), 1, "{v}: {ev:?}");
        assert_eq!(ev[0].0, EventType::Warning, "{v}");
        assert!(ev[0].3.contains(needle), "{v}: {ev:?}");
    }
    assert_eq!(c.events("Volume", "zero").await[0].1, "Invalid");
    assert_eq!(c.events("Volume", "full").await[0].1, "NoPoolFits");
    let full = c.status("full").await;
    assert!(
        full.rejections.iter().any(|r| r.node == "node-b"),
        "each pool's reason: {:?}",
        full.rejections
    );
    assert_eq!(c.status("fits").await.phase, VolumePhase::Ready);
    for (_, dp) in &c.agents {
        assert!(dp.volume_names().iter().all(|n| n == "fits"));
    }
    // Rejected volumes are not written again while nothing changes.
    let rv = c.volume("huge").await.unwrap().metadata.resource_version;
    c.seconds(2).await;
    assert_eq!(
        c.volume("huge").await.unwrap().metadata.resource_version,
        rv
    );
    // Fixing the spec places it.
    c.create("huge", 10, PlacementHint::PreferLocal, "node-a")
        .await;
    c.seconds(3).await;
    assert_eq!(c.status("huge").await.phase, VolumePhase::Ready);

    // Affinities naming what does not exist, and hints that contradict them,
    // written straight into the store (a CRD edited by hand).
    let with = |hint, nodes: &[&str], pools: &[&str]| VolumeSpec {
        size: Quantity::from_bytes(GIB),
        provisioning: Provisioning::Thick,
        placement: hint,
        consumer_node: Some("node-a".into()),
        affinity: VolumeAffinity {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            pools: pools.iter().map(|n| n.to_string()).collect(),
            ..VolumeAffinity::default()
        },
        spread: None,
        source_snapshot: None,
        source_volume: None,
        published: Vec::new(),
    };
    let bad = [
        (
            "badpool",
            with(PlacementHint::PreferLocal, &[], &["nope"]),
            "spec.affinity.pools[0]: pool 'nope' does not exist; pools: node-a, node-b",
        ),
        (
            "badnode",
            with(PlacementHint::PreferLocal, &["node-q"], &[]),
            "spec.affinity.nodes[0]: node 'node-q' has no storage pool",
        ),
        (
            "conflict",
            with(PlacementHint::MustLocal, &["node-b"], &[]),
            "add 'node-a' to the list or use PreferLocal",
        ),
        (
            "conflict2",
            with(PlacementHint::MustRemote, &["node-a"], &[]),
            "add other nodes or use PreferRemote",
        ),
    ];
    for (name, spec, _) in &bad {
        c.store
            .apply(&Volume::new(name, spec.clone()))
            .await
            .unwrap();
    }
    c.seconds(2).await;
    for (name, _, needle) in &bad {
        let st = c.status(name).await;
        assert_eq!(st.phase, VolumePhase::Rejected, "{name}: {st:?}");
        let msg = st.message.unwrap();
        assert!(msg.contains(needle), "{name}: {msg}");
        assert_eq!((st.pool, st.node), (None, None), "{name}");
        let vol = c.volume(name).await.unwrap();
        assert_eq!(vol.metadata.finalizers, None, "{name}: nothing held");
        let ev = c.events("Volume", name).await;
        assert_eq!(
            (ev.len(), ev[0].1.as_str()),
            (1, "Invalid"),
            "{name}: {ev:?}"
        );
    }
    for (_, dp) in &c.agents {
        assert!(
            dp.volume_names().iter().all(|n| n == "fits" || n == "huge"),
            "{:?}",
            dp.volume_names()
        );
    }

    // A placed, Ready volume edited by hand into an invalid state: refused, and
    // it stays as placed; set back, it is valid again.
    let fits = c.volume("fits").await.unwrap();
    let mut edited = fits.spec.clone();
    edited.size = Quantity::from_bytes(0);
    c.store.apply(&Volume::new("fits", edited)).await.unwrap();
    c.seconds(2).await;
    let st = c.status("fits").await;
    assert_eq!(st.phase, VolumePhase::Ready, "still served: {st:?}");
    assert_eq!(st.size_bytes, Some(60 * GIB));
    let msg = st.message.clone().unwrap();
    assert!(
        msg.contains("this edit is refused, the volume stays as placed (60 GiB)")
            && msg.contains("spec.size"),
        "{msg}"
    );
    assert!(st
        .conditions
        .iter()
        .any(|c| c.type_ == "Valid" && c.status == ConditionStatus::False));
    let ev = c.events("Volume", "fits").await;
    assert_eq!(ev.last().unwrap().1, "InvalidEdit", "{ev:?}");
    assert!(c.agents[0].1.volume_names().contains(&"fits".to_string()));
    let rv = c.volume("fits").await.unwrap().metadata.resource_version;
    c.seconds(1).await;
    assert_eq!(
        c.volume("fits").await.unwrap().metadata.resource_version,
        rv,
        "judged once"
    );
    c.store
        .apply(&Volume::new("fits", fits.spec))
        .await
        .unwrap();
    c.seconds(1).await;
    let st = c.status("fits").await;
    assert_eq!((st.phase, st.message), (VolumePhase::Ready, None));
}

async fn a_silent_node_is_unknown_within_15_s_gets_nothing_and_is_ready_when_it_returns<
    S: Store,
>(
    s: S,
) {
    let mut c = cluster(s, &["node-a", "node-b"], 100);
    c.seconds(2).await;
    let pool = |c: &Cluster<S>, n: &'static str| {
        let s = c.store.clone();
        async move {
            s.get::<StoragePool>(n)
                .await
                .unwrap()
                .unwrap()
                .status
                .unwrap()
                .health
        }
    };
    assert_eq!(pool(&c, "node-b").await, PoolHealth::Ready);
    // node-b's agent is killed right after a renewal (the worst case: the
    // longest silence before the kill counts for nothing). Time goes in steps
    // of 250 ms: agents and the controller's tick each second, the heartbeat
    // check in between, as `Controller::run` does.
    let step = Duration::from_millis(250);
    loop {
        c.agents[0].0.tick().await.unwrap();
        let renewed = c.agents[1].0.tick().await.unwrap().renewed;
        c.controller.tick().await.unwrap();
        if renewed {
            break;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let killed = tokio::time::Instant::now();
    let mut n = 0u32;
    let took = loop {
        tokio::time::advance(step).await;
        n += 1;
        let changes = if n.is_multiple_of(4) {
            c.agents[0].0.tick().await.unwrap();
            c.controller.tick().await.unwrap().health_changes
        } else {
            c.controller.check_heartbeats().await.unwrap()
        };
        let took = killed.elapsed();
        if changes.contains(&("node-b".into(), PoolHealth::Unknown)) {
            break took;
        }
        assert!(
            took <= Duration::from_secs(15),
            "not Unknown after {took:?}"
        );
    };
    // 14 s of silence, looked at every 250 ms: within 15 s with a margin.
    assert!(
        took <= Duration::from_millis(14_250),
        "Unknown after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(10),
        "Unknown too early, after {took:?}"
    );
    assert_eq!(pool(&c, "node-a").await, PoolHealth::Ready);
    let st: StoragePool = c.store.get("node-b").await.unwrap().unwrap();
    let hb = st.status.unwrap().conditions;
    assert!(hb
        .iter()
        .any(|c| c.type_ == "Heartbeat" && c.message.contains("14.0 s")));
    // No new volume lands there.
    c.create("v", 10, PlacementHint::PreferLocal, "node-b")
        .await;
    c.create("must", 10, PlacementHint::MustLocal, "node-b")
        .await;
    c.second(&[true, false]).await;
    c.second(&[true, false]).await;
    assert_eq!(c.status("v").await.node.as_deref(), Some("node-a"));
    let must = c.status("must").await;
    assert_eq!(must.phase, VolumePhase::Rejected);
    assert!(must.message.unwrap().contains("node-b"));
    // The agent returns: Ready again, and the waiting volume is placed.
    let mut back = 0;
    loop {
        let r = c.second(&[true, true]).await;
        back += 1;
        if r.health_changes
            .contains(&("node-b".into(), PoolHealth::Ready))
            || pool(&c, "node-b").await == PoolHealth::Ready
        {
            break;
        }
        assert!(back <= 2, "not Ready {back} s after the agent returned");
    }
    c.seconds(3).await;
    assert_eq!(c.status("must").await.phase, VolumePhase::Ready);
    let ev = c.events("StoragePool", "node-b").await;
    let reasons: Vec<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(reasons, ["HeartbeatMissed", "HeartbeatBack"], "{ev:?}");
    assert_eq!(ev[0].0, EventType::Warning);
    assert!(ev[0].3.contains("Unknown"), "{ev:?}");
    assert!(c.events("StoragePool", "node-a").await.is_empty());
}

async fn only_the_lease_holder_acts_and_a_restart_mid_operation_resumes_cleanly<S: Store>(s: S) {
    let mut c = cluster(s, &["node-a"], 100);
    c.seconds(1).await;
    let mut other = Controller::new(c.store.clone(), ControllerConfig::new("c2")).unwrap();
    assert!(!other.tick().await.unwrap().leader, "c1 leads");
    // A volume placed, then the leader killed before the agent published it.
    c.create("v", 10, PlacementHint::PreferLocal, "node-a")
        .await;
    let r = c.controller.tick().await.unwrap();
    assert_eq!(
        r.operations,
        [(
            "v".into(),
            "VolumeCreate".into(),
            "Waiting in Publish".into()
        )]
    );
    let st = c.status("v").await;
    assert_eq!(st.phase, VolumePhase::Scheduled);
    assert_eq!(st.operation.as_ref().unwrap().phase, "Publish");
    let Cluster {
        store,
        mut agents,
        controller,
    } = c;
    drop(controller); // killed: the lease is not released
                      // c2 waits out the lease, then leads and rebuilds the ledger.
    let mut waited = 0;
    let report = loop {
        for (a, _) in agents.iter_mut() {
            a.tick().await.unwrap();
        }
        let r = other.tick().await.unwrap();
        if r.leader {
            break r;
        }
        waited += 1;
        assert!(waited <= 16, "no take-over after {waited} s");
        tokio::time::advance(Duration::from_secs(1)).await;
    };
    assert!(
        waited >= 14,
        "took over after {waited} s, before the lease ran out"
    );
    let lease = store.get_lease(CONTROLLER_LEASE).await.unwrap().unwrap();
    assert_eq!(lease.holder.as_deref(), Some("c2"));
    // The agent published meanwhile; c2 finished the operation, once.
    assert_eq!(
        report.operations,
        [("v".into(), "VolumeCreate".into(), "Done".into())]
    );
    let sched = other.scheduler().unwrap();
    let usage = sched.usage("node-a").unwrap();
    assert_eq!(
        (usage.thick_bytes, usage.volumes),
        (10 * GIB, 1),
        "counted once"
    );
    let v: Volume = store.get("v").await.unwrap().unwrap();
    let st = v.status.unwrap();
    assert_eq!((st.phase, st.operation), (VolumePhase::Ready, None));
    let f = v.metadata.finalizers.unwrap();
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f.contains(&AGENT_FINALIZER.to_string()));
    assert_eq!(agents[0].1.volume_names(), ["v"], "made once");
    // A second volume fills the rest exactly: nothing was reserved twice.
    let spec = VolumeSpec {
        size: Quantity::from_bytes(90 * GIB),
        provisioning: Provisioning::Thick,
        placement: PlacementHint::PreferLocal,
        consumer_node: Some("node-a".into()),
        affinity: VolumeAffinity::default(),
        spread: None,
        source_snapshot: None,
        source_volume: None,
        published: Vec::new(),
    };
    store.apply(&Volume::new("w", spec)).await.unwrap();
    for _ in 0..2 {
        agents[0].0.tick().await.unwrap();
        other.tick().await.unwrap();
    }
    let w: Volume = store.get("w").await.unwrap().unwrap();
    assert_eq!(w.status.unwrap().pool.as_deref(), Some("node-a"));
}

/// A publish the agent never answers, and a delete waiting for a node that does
/// not return, end after their (here 1 s) timeouts in a clear status and an
/// event; when the node returns, it finishes the publish, and removes the copy
/// of the volume deleted while it was away.
async fn a_publish_or_delete_stuck_on_an_absent_node_ends_after_its_timeout<S: Store>(s: S) {
    let mut c = cluster(s, &["node-a", "node-b"], 100);
    let mut cfg = ControllerConfig::new("c1");
    cfg.publish_timeout = Duration::from_secs(1);
    cfg.delete_timeout = Duration::from_secs(1);
    c.controller = Controller::new(c.store.clone(), cfg).unwrap();
    c.seconds(2).await;
    // node-b's agent stops answering before it publishes.
    c.create("stuck", 10, PlacementHint::MustLocal, "node-b")
        .await;
    c.second(&[true, false]).await;
    let st = c.status("stuck").await;
    assert_eq!(
        (st.phase, st.node.as_deref()),
        (VolumePhase::Scheduled, Some("node-b"))
    );
    // The timeouts are on the stored times (wall clock): 1 s of it passes.
    std::thread::sleep(Duration::from_millis(1100));
    c.second(&[true, false]).await;
    let st = c.status("stuck").await;
    assert_eq!(st.phase, VolumePhase::Failed, "{st:?}");
    let msg = st.message.unwrap();
    assert!(
        msg.contains("node node-b's agent did not publish the volume within 1 s"),
        "{msg}"
    );
    assert!(msg.contains("lightpool volume delete stuck"), "{msg}");
    let ev = c.events("Volume", "stuck").await;
    assert_eq!(ev.last().unwrap().1, "PublishTimedOut", "{ev:?}");
    assert_eq!(ev.last().unwrap().0, EventType::Warning);
    // Settled: not written again.
    let rv = c.volume("stuck").await.unwrap().metadata.resource_version;
    c.second(&[true, false]).await;
    assert_eq!(
        c.volume("stuck").await.unwrap().metadata.resource_version,
        rv
    );
    // node-b returns and finishes it.
    c.second(&[true, true]).await;
    c.second(&[true, true]).await;
    assert_eq!(c.status("stuck").await.phase, VolumePhase::Ready);
    assert_eq!(c.agents[1].1.volume_names(), ["stuck"]);

    // node-b goes away again, and the volume is deleted.
    c.store.delete::<Volume>("stuck", None).await.unwrap();
    c.second(&[true, false]).await;
    assert_eq!(c.status("stuck").await.phase, VolumePhase::Deleting);
    std::thread::sleep(Duration::from_millis(1100));
    c.second(&[true, false]).await;
    assert_eq!(
        c.status("stuck").await.phase,
        VolumePhase::Deleting,
        "its pool still Ready: the delete waits for the agent"
    );
    let mut n = 0;
    while c.volume("stuck").await.is_some() {
        c.second(&[true, false]).await;
        n += 1;
        assert!(n <= 16, "the delete still waits after node-b is Unknown");
    }
    let pool: StoragePool = c.store.get("node-b").await.unwrap().unwrap();
    assert_eq!(pool.status.unwrap().health, PoolHealth::Unknown);
    assert_eq!(
        c.controller
            .scheduler()
            .unwrap()
            .usage("node-b")
            .unwrap()
            .thick_bytes,
        0
    );
    assert_eq!(
        c.agents[1].1.volume_names(),
        ["stuck"],
        "its copy, while away"
    );
    // node-b returns: what no Volume claims is collected.
    c.second(&[true, true]).await;
    assert!(c.agents[1].1.volume_names().is_empty());
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
    volumes_are_placed_by_their_hints_published_and_deleted_in_order,
    bad_input_is_refused_with_what_to_change_and_nothing_made,
    a_silent_node_is_unknown_within_15_s_gets_nothing_and_is_ready_when_it_returns,
    only_the_lease_holder_acts_and_a_restart_mid_operation_resumes_cleanly,
    a_publish_or_delete_stuck_on_an_absent_node_ends_after_its_timeout
);

/// The controller and an agent running as in a deployment, their resync an
/// hour: a new Volume is placed and published because they watch, not poll.
#[tokio::test]
async fn a_new_volume_is_handled_at_once_through_the_watches() {
    let store = embedded();
    let dp = MemoryDataplane::new(100 * GIB);
    let agent = Agent::new(
        store.clone(),
        dp.clone(),
        AgentConfig::new("node-a", "10.0.0.1", 4420),
    );
    let controller = Controller::new(store.clone(), ControllerConfig::new("c1")).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let hour = Duration::from_secs(3600);
    let a = tokio::spawn(agent.run(hour, stopped(rx.clone())));
    let c = tokio::spawn(controller.run(hour, stopped(rx)));
    let ready = |name: &'static str| {
        let s = store.clone();
        async move {
            let start = tokio::time::Instant::now();
            loop {
                let v: Option<Volume> = s.get(name).await.unwrap();
                if v.and_then(|v| v.status)
                    .is_some_and(|s| s.phase == VolumePhase::Ready)
                {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{name} never Ready"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // The pool appears (the agent's first round) before the volume is asked for.
    let start = tokio::time::Instant::now();
    while store.get::<StoragePool>("node-a").await.unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for name in ["w1", "w2"] {
        let spec = VolumeSpec {
            size: Quantity::from_bytes(GIB),
            provisioning: Provisioning::Thick,
            placement: PlacementHint::PreferLocal,
            consumer_node: Some("node-a".into()),
            affinity: VolumeAffinity::default(),
            spread: None,
            source_snapshot: None,
            source_volume: None,
            published: Vec::new(),
        };
        store.apply(&Volume::new(name, spec)).await.unwrap();
        let took = ready(name).await;
        // An hour's resync: only the watches can have done it this soon.
        assert!(
            took < Duration::from_secs(10),
            "{name} Ready after {took:?}"
        );
    }
    assert_eq!(dp.volume_names(), ["w1", "w2"]);
    tx.send(true).unwrap();
    a.await.unwrap();
    c.await.unwrap();
}
