//! ControllerPublishVolume / ControllerUnpublishVolume over the CSI socket, against
//! the real controller and agents on the embedded store: a volume is attached to one
//! node at a time, repeats are idempotent, a second node is refused with the node
//! that holds it named, a read-only flip is ALREADY_EXISTS, detaching what is not
//! there is OK, an attached volume is not deleted, and ListVolumes names the node.

mod common;
use common::*;

use lightpool_csi::v1 as csi;
use lightpool_csi::v1::volume_capability::access_mode::Mode;
use lightpool_model::Volume;
use lightpool_store::Store;
use tonic::Code;

fn publish(volume: &str, node: &str, readonly: bool) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        volume_capability: Some(cap(Mode::SingleNodeWriter, false, "ext4")),
        readonly,
        ..Default::default()
    }
}

fn unpublish(volume: &str, node: &str) -> csi::ControllerUnpublishVolumeRequest {
    csi::ControllerUnpublishVolumeRequest {
        volume_id: volume.into(),
        node_id: node.into(),
        ..Default::default()
    }
}

async fn published(d: &Driver, volume: &str) -> Vec<String> {
    let v: Volume = d.store.get(volume).await.expect("get").expect("volume");
    v.spec.published.iter().map(|p| p.node.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_attached_to_one_node_at_a_time() {
    let mut d = driver().await;
    d.ctl
        .create_volume(create("pvc-p", 1, &[], Some("node-a")))
        .await
        .expect("create");
    // Attached to a compute node (one with no pool): the context names it.
    let ctx = d
        .ctl
        .controller_publish_volume(publish("pvc-p", "compute-1", false))
        .await
        .expect("publish")
        .into_inner()
        .publish_context;
    assert_eq!(
        ctx.get("publishedNode").map(String::as_str),
        Some("compute-1")
    );
    assert_eq!(published(&d, "pvc-p").await, ["compute-1"]);
    // The same call again: the same answer, nothing added.
    let again = d
        .ctl
        .controller_publish_volume(publish("pvc-p", "compute-1", false))
        .await
        .expect("repeat")
        .into_inner()
        .publish_context;
    assert_eq!(again, ctx);
    assert_eq!(published(&d, "pvc-p").await, ["compute-1"]);
    // The same node read-only: incompatible with the attachment it has.
    refused(
        d.ctl
            .controller_publish_volume(publish("pvc-p", "compute-1", true))
            .await,
        Code::AlreadyExists,
        &["attached to node compute-1 read-write", "detach it first"],
    );
    // Another node: refused, naming the node that holds it.
    refused(
        d.ctl
            .controller_publish_volume(publish("pvc-p", "compute-2", false))
            .await,
        Code::FailedPrecondition,
        &[
            "attached to node compute-1",
            "one node at a time",
            "compute-2",
        ],
    );
    assert_eq!(published(&d, "pvc-p").await, ["compute-1"]);
    // ListVolumes says where it is attached.
    let list = d
        .ctl
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let status = list.entries[0].status.clone().expect("status");
    assert_eq!(status.published_node_ids, ["compute-1"]);
    // An attached volume is not deleted.
    refused(
        d.ctl
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: "pvc-p".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        &["attached to node compute-1", "detach it"],
    );
    assert!(d.store.get::<Volume>("pvc-p").await.expect("get").is_some());
    // Detached from a node that does not hold it: OK, nothing changes.
    d.ctl
        .controller_unpublish_volume(unpublish("pvc-p", "compute-2"))
        .await
        .expect("unpublish elsewhere");
    assert_eq!(published(&d, "pvc-p").await, ["compute-1"]);
    // Detached; twice; then the other node may have it.
    for _ in 0..2 {
        d.ctl
            .controller_unpublish_volume(unpublish("pvc-p", "compute-1"))
            .await
            .expect("unpublish is idempotent");
    }
    assert!(published(&d, "pvc-p").await.is_empty());
    d.ctl
        .controller_publish_volume(publish("pvc-p", "compute-2", true))
        .await
        .expect("the other node, read-only");
    // An empty node_id detaches it from every node; then it can be deleted.
    d.ctl
        .controller_unpublish_volume(unpublish("pvc-p", ""))
        .await
        .expect("unpublish everywhere");
    assert!(published(&d, "pvc-p").await.is_empty());
    d.ctl
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "pvc-p".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    // A volume that is gone: detaching is OK, attaching NOT_FOUND.
    d.ctl
        .controller_unpublish_volume(unpublish("pvc-p", "compute-2"))
        .await
        .expect("unpublish a missing volume");
    refused(
        d.ctl
            .controller_publish_volume(publish("pvc-p", "compute-2", false))
            .await,
        Code::NotFound,
        &["pvc-p"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_attach_requests_are_refused_with_what_to_change() {
    let mut d = driver().await;
    d.ctl
        .create_volume(create(
            "pvc-l",
            1,
            &[("placement", "MustLocal")],
            Some("node-b"),
        ))
        .await
        .expect("create");
    refused(
        d.ctl
            .controller_publish_volume(publish("", "node-b", false))
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    refused(
        d.ctl
            .controller_publish_volume(publish("pvc-l", "", false))
            .await,
        Code::InvalidArgument,
        &["node_id"],
    );
    let mut no_cap = publish("pvc-l", "node-b", false);
    no_cap.volume_capability = None;
    refused(
        d.ctl.controller_publish_volume(no_cap).await,
        Code::InvalidArgument,
        &["volume_capability"],
    );
    let mut multi = publish("pvc-l", "node-b", false);
    multi.volume_capability = Some(cap(Mode::MultiNodeMultiWriter, true, ""));
    refused(
        d.ctl.controller_publish_volume(multi).await,
        Code::InvalidArgument,
        &["one node at a time"],
    );
    // A MustLocal volume only on its own node.
    refused(
        d.ctl
            .controller_publish_volume(publish("pvc-l", "node-a", false))
            .await,
        Code::FailedPrecondition,
        &["MustLocal on node node-b", "run the pod on node node-b"],
    );
    d.ctl
        .controller_publish_volume(publish("pvc-l", "node-b", false))
        .await
        .expect("its own node");
    refused(
        d.ctl
            .controller_unpublish_volume(unpublish("", "node-b"))
            .await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    assert_eq!(published(&d, "pvc-l").await, ["node-b"]);
}
