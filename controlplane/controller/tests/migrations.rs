//! Live migration orchestrated by the controller and the two nodes' agents over
//! in-memory dataplanes (each case on the embedded store and on the Kubernetes
//! store against the fake API server): a volume moves to the other node through
//! every phase and back; a controller restarted in Syncing resumes; a destination
//! that dies mid-copy rolls back and keeps nothing; a cancel rolls back; a source
//! that dies after the switch is not a failure (and deletes its copy when back);
//! each refusal says what to change; the source keeps its subsystem in Cleaning
//! until no host is connected to it; a volume staged through ublk (its agent reports
//! it) is refused at admission, and one exported after admission is refused by the
//! source's agent and rolled back. (The same flow against two real targets is in
//! `controlplane/cli/tests/migrate.rs`.)

use std::time::Duration;

use lightpool_agent::Dataplane;
use lightpool_controller::{Controller, ControllerConfig};
use lightpool_model::migration::{pipe_nqn, CNTLID_HIGH, CNTLID_LOW};
use lightpool_model::quantity::GIB;
use lightpool_model::volume::{volume_nqn, AnaState};
use lightpool_model::*;
use lightpool_store::Store;

mod common;
use common::*;

fn spec(gib: u64, provisioning: Provisioning) -> VolumeSpec {
    VolumeSpec {
        size: Quantity::from_bytes(gib * GIB),
        provisioning,
        placement: PlacementHint::PreferLocal,
        consumer_node: Some("node-a".into()),
        affinity: VolumeAffinity::default(),
        spread: None,
        source_snapshot: None,
        source_volume: None,
        published: Vec::new(),
    }
}

fn controller<S: Store>(store: &S) -> Controller<S> {
    let mut cfg = ControllerConfig::new("c1");
    // The errors the tests inject are for good.
    cfg.migration_grace = Duration::ZERO;
    Controller::new(store.clone(), cfg).unwrap()
}

impl<S: Store> Cluster<S> {
    async fn migrate(&self, name: &str, volume: &str, to: Option<&str>) {
        let m = VolumeMigration::new(
            name,
            VolumeMigrationSpec {
                volume: volume.into(),
                target_node: to.map(str::to_string),
                target_pool: None,
                rate_limit_bytes: None,
                cancel: false,
            },
        );
        self.store.apply(&m).await.unwrap();
    }

    async fn mstatus(&self, name: &str) -> VolumeMigrationStatus {
        let m: VolumeMigration = self.store.get(name).await.unwrap().unwrap();
        m.status.unwrap_or_default()
    }

    async fn vstatus(&self, name: &str) -> VolumeStatus {
        let v: Volume = self.store.get(name).await.unwrap().unwrap();
        v.status.unwrap_or_default()
    }

    /// One second: every agent ticks (a failing one is a node whose target is
    /// down: it goes on), then the controller.
    async fn second(&mut self) {
        for (a, _) in &mut self.agents {
            let _ = a.tick().await;
        }
        self.controller.tick().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }

    /// Seconds until migration `name` is in a final phase (at most 60); the
    /// phases it went through, in order.
    async fn until_final(&mut self, name: &str) -> Vec<MigrationPhase> {
        let mut seen = Vec::new();
        for _ in 0..60 {
            let p = self.mstatus(name).await.phase;
            if seen.last() != Some(&p) {
                seen.push(p);
            }
            if p.is_final() {
                return seen;
            }
            self.second().await;
        }
        panic!("migration {name} did not finish: {seen:?}");
    }

    async fn until_phase(&mut self, name: &str, phase: MigrationPhase) {
        for _ in 0..60 {
            if self.mstatus(name).await.phase == phase {
                return;
            }
            self.second().await;
        }
        panic!("migration {name} never reached {phase}");
    }

    fn usage(&self, pool: &str) -> u64 {
        self.controller
            .scheduler()
            .unwrap()
            .usage(pool)
            .unwrap()
            .provisioned_bytes
    }
}

/// Two nodes, this file's controller, and volume db (`spec`) Ready on node-a.
async fn with_db<S: Store>(s: S, spec: VolumeSpec) -> Cluster<S> {
    let mut c = cluster(s);
    c.controller = controller(&c.store);
    c.seconds(1).await;
    c.store.apply(&Volume::new("db", spec)).await.unwrap();
    c.seconds(2).await;
    c
}

/// Nothing of `volume` on dataplane `dp`.
async fn nothing_of(dp: &lightpool_agent::MemoryDataplane, volume: &str) {
    assert!(
        !dp.volume_names().contains(&volume.to_string()),
        "{:?}",
        dp.volume_names()
    );
    let nqns = dp.nqns();
    assert!(!nqns.contains(&volume_nqn(volume)), "{nqns:?}");
    assert!(!nqns.contains(&pipe_nqn(volume)), "{nqns:?}");
    assert!(dp.migrations().is_empty());
}

async fn a_volume_moves_to_the_other_node_and_back<S: Store>(s: S) {
    let mut c = with_db(s, spec(10, Provisioning::Thick)).await;
    let v = c.vstatus("db").await;
    assert_eq!(
        (v.phase, v.node.as_deref()),
        (VolumePhase::Ready, Some("node-a"))
    );
    assert_eq!(
        c.dp(0).exports().await.unwrap()[&volume_nqn("db")].cntlid,
        CNTLID_LOW
    );

    c.migrate("m1", "db", Some("node-b")).await;
    // Watch the Volume's paths while it moves.
    let mut paths_seen = Vec::new();
    let mut phases = Vec::new();
    for _ in 0..60 {
        let st = c.mstatus("m1").await;
        if phases.last() != Some(&st.phase) {
            phases.push(st.phase);
        }
        let paths: Vec<(String, AnaState)> = c
            .vstatus("db")
            .await
            .target
            .unwrap()
            .paths
            .into_iter()
            .map(|p| (p.node, p.ana_state))
            .collect();
        if paths_seen.last() != Some(&paths) {
            paths_seen.push(paths);
        }
        if st.phase == MigrationPhase::Syncing {
            // The destination's copy is reserved beside the source's.
            assert_eq!(c.usage("node-b"), 10 * GIB);
            assert_eq!(c.usage("node-a"), 10 * GIB);
        }
        if st.phase.is_final() {
            break;
        }
        c.second().await;
    }
    use MigrationPhase as P;
    assert_eq!(
        phases,
        [
            P::Pending,
            P::CreatingVolume,
            P::SetupPipe,
            P::Syncing,
            P::Switching,
            P::Cleaning,
            P::Succeeded
        ]
    );
    let a = |n: &str, s| (n.to_string(), s);
    // The destination's path stands by, then serves beside the source's; the
    // source's turns inaccessible (perhaps within one look) and goes.
    let both = |x, y| vec![a("node-a", x), a("node-b", y)];
    assert_eq!(
        paths_seen[..3],
        [
            vec![a("node-a", AnaState::Optimized)],
            both(AnaState::Optimized, AnaState::Inaccessible),
            both(AnaState::Optimized, AnaState::Optimized),
        ]
    );
    assert_eq!(
        paths_seen.last(),
        Some(&vec![a("node-b", AnaState::Optimized)])
    );
    assert!(
        paths_seen.len() == 4 || paths_seen[3] == both(AnaState::Inaccessible, AnaState::Optimized),
        "{paths_seen:?}"
    );
    let st = c.mstatus("m1").await;
    let p = st.progress.clone().unwrap();
    assert_eq!(
        (p.state.as_str(), p.copied_bytes, p.total_bytes),
        ("synced", 10 * GIB, 10 * GIB)
    );
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .contains("lives on node node-b"),
        "{st:?}"
    );
    // The volume lives on node-b: its status, the ledger, the dataplanes.
    let v = c.vstatus("db").await;
    assert_eq!(
        (v.phase, v.node.as_deref(), v.pool.as_deref()),
        (VolumePhase::Ready, Some("node-b"), Some("node-b"))
    );
    assert_eq!(v.local, Some(false));
    assert_eq!((c.usage("node-a"), c.usage("node-b")), (0, 10 * GIB));
    nothing_of(c.dp(0), "db").await;
    let b = c.dp(1).clone();
    assert!(b.volume_names().contains(&"db".to_string()));
    let e = &b.exports().await.unwrap()[&volume_nqn("db")];
    assert_eq!(e.cntlid, CNTLID_HIGH, "the other half of the source's IDs");
    assert_eq!(b.ana_state(&volume_nqn("db"), 1), Some(AnaState::Optimized));
    assert!(!b.nqns().contains(&pipe_nqn("db")), "the pipe is gone");
    // The destination's agent keeps it as its own and changes nothing.
    let changes = |b: &lightpool_agent::MemoryDataplane| -> Vec<String> {
        b.calls()
            .into_iter()
            .filter(|c| !c.starts_with("ensure_listener"))
            .collect()
    };
    let calls = changes(&b).len();
    c.seconds(3).await;
    assert_eq!(changes(&b).len(), calls, "{:?}", &changes(&b)[calls..]);
    assert_eq!(c.vstatus("db").await, v);

    // And back: node-a takes the low half again.
    c.migrate("m2", "db", Some("node-a")).await;
    assert_eq!(c.until_final("m2").await.last(), Some(&P::Succeeded));
    assert_eq!(c.vstatus("db").await.node.as_deref(), Some("node-a"));
    assert_eq!(
        c.dp(0).exports().await.unwrap()[&volume_nqn("db")].cntlid,
        CNTLID_LOW
    );
    nothing_of(c.dp(1), "db").await;
    assert_eq!((c.usage("node-a"), c.usage("node-b")), (10 * GIB, 0));
}

async fn a_controller_restarted_in_syncing_resumes<S: Store>(s: S) {
    let mut c = with_db(s, spec(30, Provisioning::Thick)).await;
    // The scheduler picks the destination: the only other node.
    c.migrate("m1", "db", None).await;
    c.until_phase("m1", MigrationPhase::Syncing).await;
    // A new process: its ledger is rebuilt with the destination's reservation.
    c.controller = controller(&c.store);
    c.controller.tick().await.unwrap();
    assert_eq!((c.usage("node-a"), c.usage("node-b")), (30 * GIB, 30 * GIB));
    let phases = c.until_final("m1").await;
    assert_eq!(
        phases.first().copied(),
        Some(MigrationPhase::Syncing),
        "resumed where it was: {phases:?}"
    );
    assert_eq!(phases.last(), Some(&MigrationPhase::Succeeded));
    assert_eq!(c.vstatus("db").await.node.as_deref(), Some("node-b"));
    assert_eq!((c.usage("node-a"), c.usage("node-b")), (0, 30 * GIB));
    nothing_of(c.dp(0), "db").await;
}

async fn a_destination_that_dies_mid_copy_rolls_back_and_keeps_nothing<S: Store>(s: S) {
    let mut c = with_db(s, spec(10, Provisioning::Thin)).await;
    c.migrate("m1", "db", Some("node-b")).await;
    c.until_phase("m1", MigrationPhase::Syncing).await;
    c.second().await;
    assert!(c.mstatus("m1").await.progress.is_some(), "copying");
    // The destination target dies: the source's copy fails, the destination's
    // agent cannot reach its target.
    c.dp(1).set_down(true);
    c.dp(0)
        .fail_migrations("connection refused by 10.0.0.2:4420");
    let phases = c.until_final("m1").await;
    assert!(phases.contains(&MigrationPhase::RollingBack), "{phases:?}");
    let st = c.mstatus("m1").await;
    assert_eq!(st.phase, MigrationPhase::Failed);
    let msg = st.message.unwrap();
    assert!(
        msg.contains("rolled back: volume db stays on node node-a"),
        "{msg}"
    );
    // The source serves alone, as before.
    let v = c.vstatus("db").await;
    assert_eq!(v.node.as_deref(), Some("node-a"));
    let paths = v.target.unwrap().paths;
    assert_eq!(paths.len(), 1);
    assert_eq!(
        (paths[0].node.as_str(), paths[0].ana_state),
        ("node-a", AnaState::Optimized)
    );
    assert!(c.dp(0).migrations().is_empty(), "the copy was stopped");
    assert_eq!(
        c.dp(0).ana_state(&volume_nqn("db"), 1),
        Some(AnaState::Optimized)
    );
    assert_eq!((c.usage("node-a"), c.usage("node-b")), (10 * GIB, 0));
    // The destination's target returns: its agent removes what it had made.
    c.dp(1).set_down(false);
    c.seconds(2).await;
    nothing_of(c.dp(1), "db").await;
    assert_eq!(
        c.mstatus("m1").await.destination.done,
        Some(MigrationPhase::RollingBack)
    );
}

async fn a_cancel_before_the_switch_rolls_back<S: Store>(s: S) {
    let mut c = with_db(s, spec(10, Provisioning::Thick)).await;
    c.migrate("m1", "db", Some("node-b")).await;
    c.until_phase("m1", MigrationPhase::Syncing).await;
    let mut m: VolumeMigration = c.store.get("m1").await.unwrap().unwrap();
    m.spec.cancel = true;
    c.store.apply(&m).await.unwrap();
    assert_eq!(
        c.until_final("m1").await.last(),
        Some(&MigrationPhase::RolledBack)
    );
    nothing_of(c.dp(1), "db").await;
    assert_eq!(c.vstatus("db").await.node.as_deref(), Some("node-a"));
    assert!(c.dp(0).volume_names().contains(&"db".to_string()));
    assert_eq!((c.usage("node-a"), c.usage("node-b")), (10 * GIB, 0));
    // A finished migration is deleted at once.
    c.store.delete::<VolumeMigration>("m1", None).await.unwrap();
    c.seconds(1).await;
    assert!(c
        .store
        .get::<VolumeMigration>("m1")
        .await
        .unwrap()
        .is_none());
}

async fn a_source_that_dies_after_the_switch_is_not_a_failure<S: Store>(s: S) {
    let mut c = with_db(s, spec(10, Provisioning::Thick)).await;
    c.migrate("m1", "db", Some("node-b")).await;
    c.until_phase("m1", MigrationPhase::Switching).await;
    // The destination takes over (its agent alone ticks), then the source's
    // target dies before it could flip.
    c.agents[1].0.tick().await.unwrap();
    assert_eq!(
        c.dp(1).ana_state(&volume_nqn("db"), 1),
        Some(AnaState::Optimized)
    );
    c.dp(0).set_down(true);
    let phases = c.until_final("m1").await;
    assert_eq!(
        phases.last(),
        Some(&MigrationPhase::Succeeded),
        "{phases:?}"
    );
    assert!(!phases.contains(&MigrationPhase::RollingBack), "{phases:?}");
    let st = c.mstatus("m1").await;
    assert!(
        st.message
            .as_deref()
            .unwrap()
            .contains("node node-a does not answer"),
        "{st:?}"
    );
    let cleaned = |st: &VolumeMigrationStatus| {
        st.conditions
            .iter()
            .find(|c| c.type_ == migration::SOURCE_CLEANED)
            .map(|c| (c.status, c.reason.clone()))
    };
    assert_eq!(
        cleaned(&st),
        Some((ConditionStatus::False, "SourceAway".into())),
        "{st:?}"
    );
    let v = c.vstatus("db").await;
    assert_eq!(v.node.as_deref(), Some("node-b"));
    let paths = v.target.unwrap().paths;
    assert_eq!(paths.len(), 1);
    assert_eq!(
        (paths[0].node.as_str(), paths[0].ana_state),
        ("node-b", AnaState::Optimized)
    );
    // The source's target returns: its agent deletes its copy.
    c.dp(0).set_down(false);
    c.seconds(2).await;
    nothing_of(c.dp(0), "db").await;
    let st = c.mstatus("m1").await;
    assert_eq!(st.source.done, Some(MigrationPhase::Cleaning));
    assert_eq!(
        cleaned(&st),
        Some((ConditionStatus::True, "Cleaned".into())),
        "{st:?}"
    );
}

async fn refusals_say_what_to_change<S: Store>(s: S) {
    let mut c = cluster(s);
    c.controller = controller(&c.store);
    c.seconds(1).await;
    c.store
        .apply(&Volume::new("db", spec(10, Provisioning::Thick)))
        .await
        .unwrap();
    // 95 GiB on node-b: no room there for db's 10.
    let mut big = spec(95, Provisioning::Thick);
    big.consumer_node = Some("node-b".into());
    c.store.apply(&Volume::new("big", big)).await.unwrap();
    let mut clone = spec(10, Provisioning::Thick);
    clone.source_volume = Some("db".into());
    c.seconds(3).await;
    async fn refused<S: Store>(
        c: &mut Cluster<S>,
        name: &str,
        volume: &str,
        to: Option<&str>,
        want: &str,
    ) {
        c.migrate(name, volume, to).await;
        c.seconds(1).await;
        let st = c.mstatus(name).await;
        assert_eq!(st.phase, MigrationPhase::Failed, "{name}: {st:?}");
        let msg = st.message.unwrap_or_default();
        assert!(msg.contains(want), "{name}: {msg}");
        // Nothing was started for it (r8's volume has its own migration).
        if name != "r8" {
            for dp in [c.dp(0), c.dp(1)] {
                assert!(!dp.nqns().contains(&pipe_nqn(volume)), "{name}");
                assert!(dp.migrations().is_empty(), "{name}");
            }
        }
    }
    refused(
        &mut c,
        "r1",
        "nope",
        Some("node-b"),
        "there is no volume nope",
    )
    .await;
    refused(
        &mut c,
        "r2",
        "db",
        Some("node-a"),
        "lives on node node-a already: name another node",
    )
    .await;
    refused(
        &mut c,
        "r3",
        "db",
        Some("node-z"),
        "there is no node node-z with a pool: name one of node-b",
    )
    .await;
    refused(
        &mut c,
        "r4",
        "db",
        Some("node-b"),
        "no node can take volume db",
    )
    .await;
    // Snapshots and clones: the copy carries blocks, not the pool's sharing.
    let snap = Snapshot::new(
        "s1",
        SnapshotSpec {
            volume: "big".into(),
        },
    );
    c.store.apply(&snap).await.unwrap();
    c.seconds(1).await;
    refused(
        &mut c,
        "r5",
        "big",
        Some("node-a"),
        "volume big has snapshots (s1)",
    )
    .await;
    c.store.apply(&Volume::new("copy", clone)).await.unwrap();
    c.seconds(2).await;
    refused(
        &mut c,
        "r6",
        "copy",
        Some("node-b"),
        "volume copy is a clone of db",
    )
    .await;
    refused(&mut c, "r7", "db", None, "volume db has clones (copy)").await;
    // One at a time per volume.
    c.store.delete::<Volume>("copy", None).await.unwrap();
    c.store.delete::<Snapshot>("s1", None).await.unwrap();
    c.store.delete::<Volume>("big", None).await.unwrap();
    c.seconds(3).await;
    c.migrate("m1", "db", Some("node-b")).await;
    c.seconds(2).await;
    assert!(c.mstatus("m1").await.phase.is_active());
    refused(
        &mut c,
        "r8",
        "db",
        Some("node-b"),
        "volume db is already migrating (m1",
    )
    .await;
    assert_eq!(
        c.until_final("m1").await.last(),
        Some(&MigrationPhase::Succeeded)
    );
}

async fn the_source_keeps_its_path_until_the_hosts_dropped_it<S: Store>(s: S) {
    let mut c = with_db(s, spec(30, Provisioning::Thick)).await;
    c.migrate("m1", "db", Some("node-b")).await;
    c.until_phase("m1", MigrationPhase::Syncing).await;
    // A host is connected to node-a's path.
    let nqn = volume_nqn("db");
    c.dp(0).set_controllers(&nqn, 1);
    assert!(c.dp(0).nqns().contains(&nqn), "{:?}", c.dp(0).nqns());
    c.until_phase("m1", MigrationPhase::Cleaning).await;
    // The Volume lists node-b alone (the host's follower drops node-a's path on
    // that); until it has, node-a keeps its subsystem and the phase waits.
    assert_eq!(c.vstatus("db").await.node.as_deref(), Some("node-b"));
    c.seconds(5).await;
    let st = c.mstatus("m1").await;
    assert_eq!(st.phase, MigrationPhase::Cleaning, "{st:?}");
    assert!(c.dp(0).nqns().contains(&nqn), "{:?}", c.dp(0).nqns());
    c.dp(0).set_controllers(&nqn, 0);
    assert_eq!(
        c.until_final("m1").await.last(),
        Some(&MigrationPhase::Succeeded)
    );
    nothing_of(c.dp(0), "db").await;
}

async fn a_volume_staged_through_ublk_is_refused<S: Store>(s: S) {
    let mut c = with_db(s, spec(30, Provisioning::Thick)).await;
    // The CSI node plugin exported it to node-a's kernel: node-a's agent reports it.
    c.dp(0).set_ublk("db", true);
    c.seconds(1).await;
    assert!(c.vstatus("db").await.ublk);
    c.migrate("m1", "db", Some("node-b")).await;
    // Refused at admission: no phase of the copy was entered.
    let phases = c.until_final("m1").await;
    assert_eq!(
        phases,
        [MigrationPhase::Pending, MigrationPhase::Failed],
        "{phases:?}"
    );
    let st = c.mstatus("m1").await;
    let msg = st.message.clone().unwrap_or_default();
    assert!(
        msg.contains("staged through ublk on node node-a")
            && msg.contains("move the pod off node node-a")
            && msg.contains("lightpool target volume ublk stop node/db"),
        "{msg}"
    );
    let accepted = st.conditions.iter().find(|c| c.type_ == "Accepted");
    assert!(
        accepted.is_some_and(|a| a.status == ConditionStatus::False && a.message == msg),
        "{st:?}"
    );
    assert_eq!(
        (st.source.done, st.destination.done),
        (None, None),
        "{st:?}"
    );
    assert_eq!(st.target_node, None, "nothing placed: {st:?}");
    assert_eq!(c.usage("node-b"), 0, "nothing reserved on node-b");
    // Nothing made on either node: node-b has nothing of db, node-a no copy and
    // its own subsystem as it was.
    c.seconds(3).await;
    nothing_of(c.dp(1), "db").await;
    assert!(c.dp(0).migrations().is_empty());
    assert!(c.dp(0).nqns().contains(&volume_nqn("db")));
    assert_eq!(c.vstatus("db").await.node.as_deref(), Some("node-a"));
    // Unexported, it moves.
    c.dp(0).set_ublk("db", false);
    c.seconds(1).await;
    assert!(!c.vstatus("db").await.ublk);
    c.migrate("m2", "db", Some("node-b")).await;
    assert_eq!(
        c.until_final("m2").await.last(),
        Some(&MigrationPhase::Succeeded)
    );
}

/// An export made after the controller admitted the migration: the source's agent
/// refuses it at CreatingVolume, and the migration rolls back.
async fn a_ublk_export_made_after_admission_rolls_back<S: Store>(s: S) {
    let mut c = with_db(s, spec(30, Provisioning::Thick)).await;
    c.migrate("m1", "db", Some("node-b")).await;
    c.controller.tick().await.unwrap();
    assert_eq!(c.mstatus("m1").await.phase, MigrationPhase::CreatingVolume);
    c.dp(0).set_ublk("db", true);
    let phases = c.until_final("m1").await;
    assert_eq!(phases.last(), Some(&MigrationPhase::Failed), "{phases:?}");
    let msg = c.mstatus("m1").await.message.unwrap_or_default();
    assert!(
        msg.contains("staged through ublk on node node-a")
            && msg.contains("stage it over NVMe/TCP"),
        "{msg}"
    );
    assert_eq!(c.vstatus("db").await.node.as_deref(), Some("node-a"));
    nothing_of(c.dp(1), "db").await;
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
    a_volume_moves_to_the_other_node_and_back,
    a_controller_restarted_in_syncing_resumes,
    a_destination_that_dies_mid_copy_rolls_back_and_keeps_nothing,
    a_cancel_before_the_switch_rolls_back,
    a_source_that_dies_after_the_switch_is_not_a_failure,
    refusals_say_what_to_change,
    the_source_keeps_its_path_until_the_hosts_dropped_it,
    a_volume_staged_through_ublk_is_refused,
    a_ublk_export_made_after_admission_rolls_back
);
