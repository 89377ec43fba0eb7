//! The Controller and Identity services over their Unix socket, against the real
//! controller and agents (in-memory dataplanes) on the embedded store: every call
//! and the CSI spec's edge cases: idempotent repeats, a name reused with other
//! parameters, typos in StorageClass parameters, sizes beyond any pool, missing
//! volumes, capabilities not served, pagination, and nothing left half made;
//! snapshots taken, listed, restored from and deleted, with their codes.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

use lightpool_csi::v1 as csi;
use lightpool_csi::v1::volume_capability::access_mode::Mode;
use lightpool_model::{Volume, VolumePhase};
use lightpool_store::Store;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_names_the_driver_and_its_services() {
    let mut d = driver().await;
    let info =
        d.id.get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .expect("info")
            .into_inner();
    assert_eq!(info.name, "csi.lightpool.io");
    assert!(!info.vendor_version.is_empty());
    let caps =
        d.id.get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await
            .expect("caps")
            .into_inner()
            .capabilities;
    assert_eq!(caps.len(), 3, "{caps:?}");
    use csi::plugin_capability::{volume_expansion, Type};
    assert!(
        caps.iter().any(|c| matches!(
            &c.r#type,
            Some(Type::VolumeExpansion(e)) if e.r#type == volume_expansion::Type::Online as i32
        )),
        "online expansion offered: {caps:?}"
    );
    assert_eq!(
        d.id.probe(csi::ProbeRequest {})
            .await
            .expect("probe")
            .into_inner()
            .ready,
        Some(true)
    );
    let caps = d
        .ctl
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("controller caps")
        .into_inner()
        .capabilities;
    use csi::controller_service_capability::rpc::Type as Rpc;
    let rpcs: Vec<i32> = caps
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    assert_eq!(rpcs.len(), 10, "{caps:?}");
    for want in [
        Rpc::PublishUnpublishVolume,
        Rpc::ListVolumesPublishedNodes,
        Rpc::CreateDeleteSnapshot,
        Rpc::ListSnapshots,
        Rpc::CloneVolume,
        Rpc::ExpandVolume,
    ] {
        assert!(rpcs.contains(&(want as i32)), "{want:?} not in {caps:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_a_reused_name_with_other_parameters_is_refused() {
    let mut d = driver().await;
    let v = d
        .ctl
        .create_volume(create(
            "pvc-1",
            10,
            &[("placement", "MustLocal")],
            Some("node-b"),
        ))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!((v.volume_id.as_str(), v.capacity_bytes), ("pvc-1", 10 * GB));
    assert_eq!(
        v.volume_context.get("node").map(String::as_str),
        Some("node-b")
    );
    assert!(v.volume_context["nqn"].ends_with(":volume:pvc-1"), "{v:?}");
    assert_eq!(v.volume_context["paths"], "tcp ipv4 10.0.0.2 4420", "{v:?}");
    // The local path's key: the volume on its node's dataplane.
    assert_eq!(v.volume_context["pool_volume"], "node/pvc-1", "{v:?}");
    assert_eq!(
        v.accessible_topology[0].segments[lightpool_csi::TOPOLOGY_NODE],
        "node-b",
        "a MustLocal volume is reachable only from its node"
    );
    // The same call again: the same volume, nothing new.
    let again = d
        .ctl
        .create_volume(create(
            "pvc-1",
            10,
            &[("placement", "MustLocal")],
            Some("node-b"),
        ))
        .await
        .expect("repeat")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(again, v);
    assert_eq!(d.store.list::<Volume>().await.expect("list").items.len(), 1);
    // The name with another size, or another StorageClass.
    refused(
        d.ctl
            .create_volume(create(
                "pvc-1",
                20,
                &[("placement", "MustLocal")],
                Some("node-b"),
            ))
            .await,
        Code::AlreadyExists,
        &["pvc-1", "size 10Gi", "another name"],
    );
    refused(
        d.ctl
            .create_volume(create("pvc-1", 10, &[("thin", "false")], Some("node-b")))
            .await,
        Code::AlreadyExists,
        &["provisioning", "placement MustLocal"],
    );
    // A remote-capable volume is reachable from every node.
    let r = d
        .ctl
        .create_volume(create(
            "pvc-2",
            1,
            &[("placement", "MustRemote")],
            Some("node-a"),
        ))
        .await
        .expect("remote")
        .into_inner()
        .volume
        .expect("volume");
    assert_eq!(
        r.volume_context.get("node").map(String::as_str),
        Some("node-b")
    );
    assert!(r.accessible_topology.is_empty());
    // Delete, twice; then it is gone.
    for _ in 0..2 {
        d.ctl
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: "pvc-1".into(),
                ..Default::default()
            })
            .await
            .expect("delete is idempotent");
    }
    assert!(d.store.get::<Volume>("pvc-1").await.expect("get").is_none());
    refused(
        d.ctl
            .delete_volume(csi::DeleteVolumeRequest::default())
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_what_to_change_and_nothing_is_made() {
    let mut d = driver().await;
    // Let the pools appear first: a size check needs them.
    for _ in 0..100 {
        if d.store
            .list::<lightpool_model::StoragePool>()
            .await
            .expect("pools")
            .items
            .len()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused(
        d.ctl
            .create_volume(create("typo", 1, &[("plcement", "MustLocal")], None))
            .await,
        Code::InvalidArgument,
        &["\"plcement\"", "did you mean \"placement\""],
    );
    refused(
        d.ctl
            .create_volume(create("huge", 500, &[], Some("node-a")))
            .await,
        Code::ResourceExhausted,
        &["larger than any pool", "ask for at most"],
    );
    refused(
        d.ctl
            .create_volume(create("local", 1, &[("placement", "MustLocal")], None))
            .await,
        Code::InvalidArgument,
        &["WaitForFirstConsumer"],
    );
    refused(
        d.ctl.create_volume(create("", 1, &[], None)).await,
        Code::InvalidArgument,
        &["name is required"],
    );
    let mut multi = create("rwx", 1, &[], None);
    multi.volume_capabilities = vec![cap(Mode::MultiNodeMultiWriter, false, "ext4")];
    refused(
        d.ctl.create_volume(multi).await,
        Code::InvalidArgument,
        &["MULTI_NODE_MULTI_WRITER", "one node at a time"],
    );
    let mut btrfs = create("btrfs", 1, &[], None);
    btrfs.volume_capabilities = vec![cap(Mode::SingleNodeWriter, false, "btrfs")];
    refused(
        d.ctl.create_volume(btrfs).await,
        Code::InvalidArgument,
        &["\"btrfs\"", "ext4 or xfs"],
    );
    let mut range = create("range", 1, &[], None);
    range.capacity_range = Some(csi::CapacityRange {
        required_bytes: GB + 1,
        limit_bytes: GB + 2,
    });
    refused(
        d.ctl.create_volume(range).await,
        Code::OutOfRange,
        &["widen the range"],
    );
    // A node whose pools are all full by MustLocal volumes: the scheduler's reasons.
    d.ctl
        .create_volume(create(
            "fill",
            95,
            &[("placement", "MustLocal"), ("thin", "false")],
            Some("node-a"),
        ))
        .await
        .expect("fill node-a");
    refused(
        d.ctl
            .create_volume(create(
                "more",
                10,
                &[("placement", "MustLocal"), ("thin", "false")],
                Some("node-a"),
            ))
            .await,
        Code::ResourceExhausted,
        &["more", "node-a"],
    );
    let names: Vec<String> = d
        .store
        .list::<Volume>()
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|v| v.metadata.name)
        .collect();
    assert_eq!(names, ["fill"], "nothing half made");
    // Validate: missing volume, served and refused capabilities.
    refused(
        d.ctl
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: "nope".into(),
                volume_capabilities: vec![cap(Mode::SingleNodeWriter, true, "")],
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &["nope"],
    );
    let ok = d
        .ctl
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "fill".into(),
            volume_capabilities: vec![cap(Mode::SingleNodeWriter, true, "")],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let no = d
        .ctl
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: "fill".into(),
            volume_capabilities: vec![cap(Mode::MultiNodeReaderOnly, false, "xfs")],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(
        no.confirmed.is_none() && no.message.contains("MULTI_NODE_READER_ONLY"),
        "{no:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_pages_of_volumes() {
    let mut d = driver().await;
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        d.ctl
            .create_volume(create(
                &format!("v-{n}"),
                i as i64 + 1,
                &[("thin", "false")],
                Some("node-a"),
            ))
            .await
            .expect("create");
    }
    // The pools report what their volumes took at the agents' next heartbeat.
    let mut cap = csi::GetCapacityResponse::default();
    for _ in 0..100 {
        cap = d
            .ctl
            .get_capacity(csi::GetCapacityRequest::default())
            .await
            .expect("capacity")
            .into_inner();
        if cap.available_capacity == 194 * GB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cap.available_capacity, 194 * GB, "{cap:?}");
    assert!(cap.maximum_volume_size.expect("max") >= 97 * GB, "{cap:?}");
    // MustLocal on node-b counts only node-b's pool.
    let local = d
        .ctl
        .get_capacity(csi::GetCapacityRequest {
            parameters: HashMap::from([("placement".into(), "MustLocal".into())]),
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(lightpool_csi::TOPOLOGY_NODE.into(), "node-b".into())]),
            }),
            ..Default::default()
        })
        .await
        .expect("capacity")
        .into_inner();
    assert_eq!(
        local.available_capacity,
        100 * GB,
        "node-b holds none: {local:?}"
    );
    refused(
        d.ctl
            .get_capacity(csi::GetCapacityRequest {
                parameters: HashMap::from([("placment".into(), "MustLocal".into())]),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["did you mean"],
    );
    // Two pages, then the end.
    let p1 = d
        .ctl
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 2,
            starting_token: String::new(),
        })
        .await
        .expect("page 1")
        .into_inner();
    let ids = |r: &csi::ListVolumesResponse| -> Vec<String> {
        r.entries
            .iter()
            .filter_map(|e| e.volume.as_ref())
            .map(|v| v.volume_id.clone())
            .collect()
    };
    assert_eq!(ids(&p1), ["v-a", "v-b"]);
    let p2 = d
        .ctl
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 2,
            starting_token: p1.next_token.clone(),
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(ids(&p2), ["v-c"]);
    assert!(p2.next_token.is_empty());
    refused(
        d.ctl
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: "99".into(),
            })
            .await,
        Code::Aborted,
        &["starting_token"],
    );
    let v = d
        .store
        .get::<Volume>("v-b")
        .await
        .expect("get")
        .expect("v-b");
    assert_eq!(v.status.expect("status").phase, VolumePhase::Ready);
}

fn snap(name: &str, source: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        name: name.into(),
        source_volume_id: source.into(),
        ..Default::default()
    }
}

fn from_snapshot(name: &str, gib: i64, snapshot: &str) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: snapshot.into(),
                },
            )),
        }),
        ..create(name, gib, &[], Some("node-b"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_listed_restored_from_and_deleted_with_the_specs_codes() {
    let mut d = driver().await;
    d.ctl
        .create_volume(create("db", 2, &[], Some("node-a")))
        .await
        .expect("db");
    d.ctl
        .create_volume(create("other", 1, &[], Some("node-a")))
        .await
        .expect("other");
    let s = d
        .ctl
        .create_snapshot(snap("s1", "db"))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    assert!(s.ready_to_use, "{s:?}");
    assert_eq!(
        (s.snapshot_id.as_str(), s.source_volume_id.as_str()),
        ("s1", "db")
    );
    assert_eq!(s.size_bytes, 2 * GB);
    assert!(s.creation_time.is_some_and(|t| t.seconds > 0), "{s:?}");
    // Idempotent: the same answer again, nothing taken twice.
    let again = d
        .ctl
        .create_snapshot(snap("s1", "db"))
        .await
        .expect("again")
        .into_inner()
        .snapshot;
    assert_eq!(again.as_ref(), Some(&s));
    // The name reused on another volume; a missing source; no name.
    refused(
        d.ctl.create_snapshot(snap("s1", "other")).await,
        Code::AlreadyExists,
        &["s1", "of volume db"],
    );
    refused(
        d.ctl.create_snapshot(snap("s2", "nope")).await,
        Code::NotFound,
        &["nope"],
    );
    refused(
        d.ctl.create_snapshot(snap("", "db")).await,
        Code::InvalidArgument,
        &["name"],
    );
    d.ctl
        .create_snapshot(snap("s3", "other"))
        .await
        .expect("s3");

    // Listed, filtered and paged.
    let lister = d.ctl.clone();
    let list = move |r: csi::ListSnapshotsRequest| {
        let mut c = lister.clone();
        async move { c.list_snapshots(r).await.expect("list").into_inner() }
    };
    let all = list(Default::default()).await;
    let ids: Vec<&str> = all
        .entries
        .iter()
        .filter_map(|e| e.snapshot.as_ref().map(|s| s.snapshot_id.as_str()))
        .collect();
    assert_eq!(ids, ["s1", "s3"]);
    let of_db = list(csi::ListSnapshotsRequest {
        source_volume_id: "db".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(of_db.entries.len(), 1);
    let by_id = list(csi::ListSnapshotsRequest {
        snapshot_id: "s3".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        by_id.entries[0]
            .snapshot
            .as_ref()
            .map(|s| s.source_volume_id.as_str()),
        Some("other")
    );
    let first = list(csi::ListSnapshotsRequest {
        max_entries: 1,
        ..Default::default()
    })
    .await;
    assert_eq!((first.entries.len(), first.next_token.as_str()), (1, "1"));

    // Restored: a volume from s1, placed in its pool (node-a) though the CO
    // prefers node-b, its content source named.
    let v = d
        .ctl
        .create_volume(from_snapshot("restored", 2, "s1"))
        .await
        .expect("restored")
        .into_inner()
        .volume
        .expect("a volume");
    assert_eq!(v.capacity_bytes, 2 * GB);
    assert_eq!(
        v.volume_context.get("node").map(String::as_str),
        Some("node-a")
    );
    assert!(
        matches!(
            v.content_source.as_ref().and_then(|c| c.r#type.as_ref()),
            Some(csi::volume_content_source::Type::Snapshot(s)) if s.snapshot_id == "s1"
        ),
        "{v:?}"
    );
    refused(
        d.ctl.create_volume(from_snapshot("r2", 1, "missing")).await,
        Code::NotFound,
        &["missing"],
    );
    refused(
        d.ctl.create_volume(from_snapshot("r3", 4, "s1")).await,
        Code::OutOfRange,
        &["at most"],
    );
    // Another source for an existing name.
    refused(
        d.ctl.create_volume(from_snapshot("db", 2, "s1")).await,
        Code::AlreadyExists,
        &["source snapshot none"],
    );

    // db and the restored volume depend on s1: FAILED_PRECONDITION naming the
    // clone; once it is gone, s1 goes.
    refused(
        d.ctl
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: "s1".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["restored"],
    );
    d.ctl
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "restored".into(),
            ..Default::default()
        })
        .await
        .expect("delete restored");
    for id in ["s1", "s1", "s3", "never-was"] {
        d.ctl
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }
    assert!(list(Default::default()).await.entries.is_empty());
    let left: Vec<Volume> = d.store.list().await.expect("volumes").items;
    assert_eq!(left.len(), 2, "db and other only");
}
