//! ControllerExpandVolume and volumes cloned from volumes over the CSI socket,
//! against the real controller and agents (in-memory dataplanes) on the embedded
//! store: online growth with idempotent repeats, a smaller size answered with the
//! volume's, block volumes needing no node step, a missing volume, bad ranges,
//! sizes beyond any pool and a pool with no room now (taken back, so a later call
//! grows it); clones of volumes in their source's pool, repeated, a reused name
//! with another source, a missing source, a larger clone and a MustLocal clone
//! asked for another node.

mod common;
use common::*;

use lightpool_csi::v1 as csi;
use lightpool_csi::v1::volume_capability::access_mode::Mode;
use lightpool_model::Volume;
use lightpool_store::Store;
use tonic::Code;

fn expand(name: &str, gib: i64, block: bool) -> csi::ControllerExpandVolumeRequest {
    csi::ControllerExpandVolumeRequest {
        volume_id: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: gib * GB,
            limit_bytes: 0,
        }),
        volume_capability: Some(cap(Mode::SingleNodeWriter, block, "ext4")),
        ..Default::default()
    }
}

fn clone_of(name: &str, gib: i64, source: &str) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        volume_content_source: Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Volume(
                csi::volume_content_source::VolumeSource {
                    volume_id: source.into(),
                },
            )),
        }),
        ..create(name, gib, &[], Some("node-a"))
    }
}

async fn spec_size(d: &Driver, name: &str) -> u64 {
    let v: Volume = d.store.get(name).await.unwrap().unwrap();
    v.spec.size.bytes().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_grows_online_idempotently_with_the_specs_codes() {
    let mut d = driver().await;
    let v = d
        .ctl
        .create_volume(create("db", 10, &[], Some("node-a")))
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        v.volume_context.get("node").map(String::as_str),
        Some("node-a")
    );

    let r = d
        .ctl
        .controller_expand_volume(expand("db", 20, false))
        .await
        .expect("expand")
        .into_inner();
    assert_eq!(
        (r.capacity_bytes, r.node_expansion_required),
        (20 * GB, true),
        "a file system volume needs the node step"
    );
    let v: Volume = d.store.get("db").await.unwrap().unwrap();
    assert_eq!(
        v.status.unwrap().capacity_bytes,
        Some(20 * GIB_U),
        "the dataplane serves it when the call answers"
    );
    // Repeated, asked for less, or as a block volume: the size it has, at once.
    for (gib, block, node) in [(20, false, true), (15, false, true), (20, true, false)] {
        let r = d
            .ctl
            .controller_expand_volume(expand("db", gib, block))
            .await
            .expect("idempotent")
            .into_inner();
        assert_eq!(
            (r.capacity_bytes, r.node_expansion_required),
            (20 * GB, node),
            "{gib} GiB, block {block}"
        );
    }

    refused(
        d.ctl
            .controller_expand_volume(expand("nope", 20, false))
            .await,
        Code::NotFound,
        &["volume nope does not exist"],
    );
    refused(
        d.ctl.controller_expand_volume(expand("", 20, false)).await,
        Code::InvalidArgument,
        &["volume_id"],
    );
    let mut no_range = expand("db", 20, false);
    no_range.capacity_range = None;
    refused(
        d.ctl.controller_expand_volume(no_range).await,
        Code::InvalidArgument,
        &["capacity_range"],
    );
    let mut bad_range = expand("db", 30, false);
    bad_range.capacity_range.as_mut().unwrap().limit_bytes = 25 * GB;
    refused(
        d.ctl.controller_expand_volume(bad_range).await,
        Code::OutOfRange,
        &["widen the range"],
    );
    refused(
        d.ctl
            .controller_expand_volume(expand("db", 200, false))
            .await,
        Code::OutOfRange,
        &["larger than any pool"],
    );
    assert_eq!(spec_size(&d, "db").await, 20 * GIB_U, "nothing applied");

    // The pool has no room now: RESOURCE_EXHAUSTED with the room there is, and
    // the request taken back; once room is made, the same call grows it.
    d.ctl
        .create_volume(create(
            "fill",
            75,
            &[("placement", "MustLocal")],
            Some("node-a"),
        ))
        .await
        .expect("fill node-a");
    refused(
        d.ctl
            .controller_expand_volume(expand("db", 30, false))
            .await,
        Code::ResourceExhausted,
        &[
            "cannot grow to 30 GiB",
            "can promise 5 GiB more",
            "free space",
        ],
    );
    assert_eq!(spec_size(&d, "db").await, 20 * GIB_U, "taken back");
    d.ctl
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "fill".into(),
            ..Default::default()
        })
        .await
        .expect("delete fill");
    let r = d
        .ctl
        .controller_expand_volume(expand("db", 30, false))
        .await
        .expect("grown once there is room")
        .into_inner();
    assert_eq!(r.capacity_bytes, 30 * GB);
}

const GIB_U: u64 = GB as u64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_of_a_volume_lives_beside_its_source_with_the_specs_codes() {
    let mut d = driver().await;
    d.ctl
        .create_volume(create("src", 10, &[], Some("node-a")))
        .await
        .expect("source");
    d.ctl
        .create_volume(create("src2", 10, &[], Some("node-b")))
        .await
        .expect("another source");

    let v = d
        .ctl
        .create_volume(clone_of("copy", 0, "src"))
        .await
        .expect("clone")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.capacity_bytes, 10 * GB, "the source's size");
    assert_eq!(
        v.volume_context.get("node").map(String::as_str),
        Some("node-a")
    );
    assert!(
        matches!(
            v.content_source.as_ref().and_then(|c| c.r#type.as_ref()),
            Some(csi::volume_content_source::Type::Volume(s)) if s.volume_id == "src"
        ),
        "{v:?}"
    );
    // Asked again: the same volume.
    let again = d
        .ctl
        .create_volume(clone_of("copy", 0, "src"))
        .await
        .expect("idempotent")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_context, v.volume_context);
    refused(
        d.ctl.create_volume(clone_of("copy", 0, "src2")).await,
        Code::AlreadyExists,
        &["volume copy exists", "source volume src"],
    );
    refused(
        d.ctl.create_volume(clone_of("orphan", 0, "nope")).await,
        Code::NotFound,
        &["source volume nope does not exist"],
    );
    let mut limited = clone_of("small", 0, "src");
    limited.capacity_range = Some(csi::CapacityRange {
        required_bytes: 0,
        limit_bytes: 5 * GB,
    });
    refused(
        d.ctl.create_volume(limited).await,
        Code::OutOfRange,
        &["holds 10737418240 bytes", "at least that"],
    );
    let mut far = clone_of("far", 0, "src");
    far.parameters = [("placement".to_string(), "MustLocal".to_string())].into();
    far.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![],
        preferred: vec![csi::Topology {
            segments: [(
                lightpool_csi::TOPOLOGY_NODE.to_string(),
                "node-b".to_string(),
            )]
            .into(),
        }],
    });
    refused(
        d.ctl.create_volume(far).await,
        Code::ResourceExhausted,
        &["made on its node node-a", "asks for node node-b"],
    );
    for gone in ["orphan", "small", "far"] {
        assert!(
            d.store.get::<Volume>(gone).await.unwrap().is_none(),
            "{gone}: nothing made"
        );
    }

    // Larger than its source: cloned, then grown.
    let big = d
        .ctl
        .create_volume(clone_of("big", 15, "src"))
        .await
        .expect("a larger clone")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(big.capacity_bytes, 15 * GB);
    let v: Volume = d.store.get("big").await.unwrap().unwrap();
    let st = v.status.unwrap();
    assert_eq!(
        (st.node.as_deref(), st.capacity_bytes),
        (Some("node-a"), Some(15 * GIB_U))
    );
}
