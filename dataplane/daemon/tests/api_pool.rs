//! The Pools service over the API's Unix socket, against the lightpool-target binary:
//! every call, idempotent creates, each refusal with its gRPC code and a message that
//! says what to change; a volume created through the API served live by a namespace to
//! an NVMe/TCP host (snapshot and clone data checked through it); `config save` and a
//! restart bringing an API-created pool and its volumes back; an API-created pool
//! carried by a hot upgrade; the pools' metrics against the API's figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    block_devices_client::BlockDevicesClient, config_client::ConfigClient,
    namespaces_client::NamespacesClient, pools_client::PoolsClient, upgrade_client::UpgradeClient,
};
use lightpool_e2e::nvme_host::{pattern, HostController};
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::*;

const MIB: u64 = 1 << 20;

fn on_bdev(name: &str, bdev: &str) -> pb::CreatePoolRequest {
    pb::CreatePoolRequest {
        name: name.into(),
        device: Some(pb::create_pool_request::Device::Bdev(bdev.into())),
        ..Default::default()
    }
}

fn on_path(name: &str, path: &std::path::Path) -> pb::CreatePoolRequest {
    pb::CreatePoolRequest {
        name: name.into(),
        device: Some(pb::create_pool_request::Device::Path(
            path.display().to_string(),
        )),
        direct: Some(false),
        block_size: Some(512),
        ..Default::default()
    }
}

fn vol(pool: &str, name: &str, size: u64, thick: bool) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        pool: pool.into(),
        name: name.into(),
        size_bytes: size,
        thick,
    }
}

fn serve_volume(nsid: u32, volume: &str) -> pb::AddNamespaceRequest {
    pb::AddNamespaceRequest {
        nqn: NQN.into(),
        nsid,
        volume: volume.into(),
        ..Default::default()
    }
}

async fn get(p: &mut PoolsClient<Channel>, name: &str) -> pb::Pool {
    p.get_pool(pb::GetPoolRequest { name: name.into() })
        .await
        .expect("get pool")
        .into_inner()
}

async fn volume(p: &mut PoolsClient<Channel>, pool: &str, name: &str) -> pb::Volume {
    p.get_volume(pb::GetVolumeRequest {
        pool: pool.into(),
        name: name.into(),
    })
    .await
    .expect("get volume")
    .into_inner()
}

/// The volumes' block size (their pools' devices have 512-byte blocks).
const BS: u32 = 512;

/// Writes `(lba, gen)` blocks to namespace `nsid`, all acknowledged.
fn write(h: &mut HostController, nsid: u32, blocks: &[(u64, u64)]) {
    let ok = h.io[0].write_blocks(nsid, blocks, BS).expect("write");
    assert!(ok.iter().all(|x| *x), "every write acknowledged: {ok:?}");
}

/// Namespace `nsid` holds what round `gen` wrote at each of `lbas`.
fn holds(h: &mut HostController, nsid: u32, lbas: &[u64], gen: u64) {
    let got = h.io[0].read_blocks(nsid, lbas, BS).expect("read");
    for (lba, data) in lbas.iter().zip(got) {
        assert!(
            data == pattern(*lba, gen, BS as usize),
            "namespace {nsid} LBA {lba}: not round {gen}'s data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_volumes_snapshots_clones_and_their_refusals() {
    let t = start("pools");
    let c = ch(&t).await;
    let mut dev = BlockDevicesClient::new(c.clone());
    let mut p = PoolsClient::new(c.clone());
    let mut ns = NamespacesClient::new(c.clone());
    dev.create_block_device(ram("disk", 64 * MIB))
        .await
        .expect("ram");

    // Pools: made, asked again (the same), refused.
    let mut req = on_bdev("p0", "disk");
    req.overcommit = Some(200);
    let made = p.create_pool(req.clone()).await.expect("pool").into_inner();
    assert_eq!(
        (
            made.name.as_str(),
            made.device.as_str(),
            made.cluster_size,
            made.overcommit,
            made.volumes,
            made.allocated_bytes,
            made.opened.as_str(),
            made.health.as_str()
        ),
        ("p0", "disk", MIB, 200, 0, 0, "created", "online")
    );
    assert!(made.capacity_bytes > 56 * MIB && made.capacity_bytes < 64 * MIB);
    assert_eq!(made.free_bytes, made.capacity_bytes);
    assert!(
        made.promise_limit_bytes.abs_diff(2 * made.capacity_bytes) < MIB,
        "200% of the data space: {made:?}"
    );
    assert_eq!(
        p.create_pool(req.clone())
            .await
            .expect("again")
            .into_inner(),
        made
    );
    req.overcommit = Some(100);
    refused(
        p.create_pool(req).await,
        Code::AlreadyExists,
        &["pool \"p0\" exists already", "other options"],
    );
    refused(
        p.create_pool(on_bdev("disk", "disk")).await,
        Code::AlreadyExists,
        &["\"disk\"", "another name"],
    );
    refused(
        p.create_pool(on_bdev("p1", "nope")).await,
        Code::NotFound,
        &["\"nope\"", "lightpool bdev list"],
    );
    refused(
        p.create_pool(on_bdev("p1", "disk")).await,
        Code::FailedPrecondition,
        &["disk is in use by device p0", "only user"],
    );
    refused(
        p.create_pool(on_bdev("a b", "disk")).await,
        Code::InvalidArgument,
        &["device name"],
    );
    refused(
        p.create_pool(pb::CreatePoolRequest {
            name: "p1".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["which device"],
    );
    dev.create_block_device(ram("disk2", 16 * MIB))
        .await
        .expect("ram");
    let mut bad = on_bdev("p1", "disk2");
    bad.cluster_size = Some(3000);
    refused(
        p.create_pool(bad).await,
        Code::InvalidArgument,
        &["cluster size 3000", "power of two"],
    );
    let junk = t.dir.join("junk.img");
    std::fs::write(&junk, vec![0x5a; 1 << 20]).expect("junk");
    refused(
        p.create_pool(on_path("p1", &junk)).await,
        Code::FailedPrecondition,
        &["holds no LightPool pool", "refusing to format over"],
    );
    assert_eq!(
        std::fs::read(&junk).expect("junk"),
        vec![0x5a; 1 << 20],
        "nothing written"
    );
    let pools = p
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("list")
        .into_inner()
        .pools;
    assert_eq!(pools, vec![made.clone()]);
    refused(
        p.get_pool(pb::GetPoolRequest { name: "p9".into() }).await,
        Code::NotFound,
        &["no pool \"p9\"", "pools: p0"],
    );

    // Volumes.
    let v1 = p
        .create_volume(vol("p0", "v1", 16 * MIB, false))
        .await
        .expect("thin")
        .into_inner();
    assert_eq!(
        (v1.size_bytes, v1.used_bytes, v1.thin, v1.snapshot),
        (16 * MIB, 0, true, false)
    );
    let again = p
        .create_volume(vol("p0", "v1", 16 * MIB, false))
        .await
        .expect("again")
        .into_inner();
    assert_eq!(again.id, v1.id, "the same volume");
    refused(
        p.create_volume(vol("p0", "v1", 32 * MIB, false)).await,
        Code::AlreadyExists,
        &["\"v1\" exists already", "thin volume of 16777216 bytes"],
    );
    let v2 = p
        .create_volume(vol("p0", "v2", 8 * MIB, true))
        .await
        .expect("thick")
        .into_inner();
    assert_eq!((v2.thin, v2.used_bytes), (false, 8 * MIB));
    assert_eq!(get(&mut p, "p0").await.allocated_bytes, 8 * MIB);
    refused(
        p.create_volume(vol("p0", "a/b", MIB, false)).await,
        Code::InvalidArgument,
        &["volume name \"a/b\""],
    );
    refused(
        p.create_volume(vol("p0", "odd", 1000, false)).await,
        Code::InvalidArgument,
        &["size 1000", "multiple of the 512-byte block size"],
    );
    refused(
        p.create_volume(vol("p0", "big", 60 * MIB, true)).await,
        Code::ResourceExhausted,
        &["free clusters are needed", "delete volumes"],
    );
    refused(
        p.create_volume(vol("p0", "big", 512 * MIB, false)).await,
        Code::ResourceExhausted,
        &["over-commit limit", "raise the pool's overcommit"],
    );
    refused(
        p.create_volume(vol("p9", "v", MIB, false)).await,
        Code::NotFound,
        &["no pool \"p9\""],
    );
    let grown = p
        .grow_volume(pb::GrowVolumeRequest {
            pool: "p0".into(),
            name: "v1".into(),
            size_bytes: 32 * MIB,
        })
        .await
        .expect("grow")
        .into_inner();
    assert_eq!(grown.size_bytes, 32 * MIB);
    refused(
        p.grow_volume(pb::GrowVolumeRequest {
            pool: "p0".into(),
            name: "v1".into(),
            size_bytes: 8 * MIB,
        })
        .await,
        Code::FailedPrecondition,
        &["can only grow"],
    );
    let renamed = p
        .rename_volume(pb::RenameVolumeRequest {
            pool: "p0".into(),
            name: "v2".into(),
            new_name: "v3".into(),
        })
        .await
        .expect("rename")
        .into_inner();
    assert_eq!((renamed.name.as_str(), renamed.id), ("v3", v2.id));
    refused(
        p.get_volume(pb::GetVolumeRequest {
            pool: "p0".into(),
            name: "v2".into(),
        })
        .await,
        Code::NotFound,
        &["no volume \"v2\""],
    );
    refused(
        p.rename_volume(pb::RenameVolumeRequest {
            pool: "p0".into(),
            name: "v3".into(),
            new_name: "v1".into(),
        })
        .await,
        Code::AlreadyExists,
        &["\"v1\" exists already"],
    );

    // A volume served live, written by a host; refusals while it is served.
    refused(
        ns.add_namespace(serve_volume(1, "p0/nope")).await,
        Code::NotFound,
        &["no volume \"nope\""],
    );
    refused(
        ns.add_namespace(serve_volume(1, "p9/v1")).await,
        Code::NotFound,
        &["no pool \"p9\""],
    );
    let n1 = ns
        .add_namespace(serve_volume(1, "p0/v1"))
        .await
        .expect("serve v1")
        .into_inner();
    assert_eq!((n1.device.as_str(), n1.num_blocks), ("p0:v1", 65536));
    let listen = t.listen;
    let mut h = tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        write(&mut h, 1, &[(0, 1), (8, 1), (2048, 1)]);
        h
    })
    .await
    .expect("join");
    assert_eq!(
        volume(&mut p, "p0", "v1").await.namespaces,
        vec![format!("{NQN}/1")]
    );
    refused(
        p.delete_volume(pb::DeleteVolumeRequest {
            pool: "p0".into(),
            name: "v1".into(),
        })
        .await,
        Code::FailedPrecondition,
        &[
            &format!("served by namespace {NQN}/1"),
            "remove the namespace",
        ],
    );
    refused(
        p.rename_volume(pb::RenameVolumeRequest {
            pool: "p0".into(),
            name: "v1".into(),
            new_name: "v9".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["served by namespace"],
    );
    refused(
        p.delete_pool(pb::DeletePoolRequest { name: "p0".into() })
            .await,
        Code::FailedPrecondition,
        &[
            &format!("v1 by namespace {NQN}/1"),
            "remove those namespaces",
        ],
    );

    // Grown while served: the namespace presents the new size at once (the host is
    // told by a Namespace Attribute Changed event), the new blocks take writes and
    // the old data stays.
    let grown = p
        .grow_volume(pb::GrowVolumeRequest {
            pool: "p0".into(),
            name: "v1".into(),
            size_bytes: 33 * MIB,
        })
        .await
        .expect("grow a served volume")
        .into_inner();
    assert_eq!(grown.size_bytes, 33 * MIB);
    let listed = ns
        .list_namespaces(pb::ListNamespacesRequest { nqn: NQN.into() })
        .await
        .expect("namespaces")
        .into_inner()
        .namespaces;
    assert_eq!(
        listed
            .iter()
            .map(|n| (n.nsid, n.device.as_str(), n.num_blocks))
            .collect::<Vec<_>>(),
        vec![(1, "p0:v1", 67584)],
        "the namespace grew with its volume"
    );
    h = tokio::task::spawn_blocking(move || {
        write(&mut h, 1, &[(67583, 1)]);
        holds(&mut h, 1, &[0, 8, 2048, 67583], 1);
        h
    })
    .await
    .expect("join");

    // Snapshots and clones: the snapshot taken while served; clones hold its data.
    let snap = pb::CreateSnapshotRequest {
        pool: "p0".into(),
        volume: "v1".into(),
        name: "s1".into(),
    };
    let s1 = p
        .create_snapshot(snap.clone())
        .await
        .expect("snapshot")
        .into_inner();
    assert!(s1.snapshot && s1.clones == vec!["v1".to_string()], "{s1:?}");
    assert!(
        s1.snapshot_pause_us.is_some_and(|us| us < 5_000_000),
        "a served volume's pause is reported: {s1:?}"
    );
    assert_eq!(
        p.create_snapshot(snap)
            .await
            .expect("again")
            .into_inner()
            .id,
        s1.id
    );
    let h = tokio::task::spawn_blocking(move || {
        // The volume carries on past the snapshot.
        write(&mut h, 1, &[(8, 2)]);
        holds(&mut h, 1, &[0, 2048], 1);
        holds(&mut h, 1, &[8], 2);
        h
    })
    .await
    .expect("join");
    let snaps = p
        .list_snapshots(pb::ListSnapshotsRequest { pool: "p0".into() })
        .await
        .expect("snapshots")
        .into_inner()
        .volumes;
    assert_eq!(
        snaps.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );
    let vols = p
        .list_volumes(pb::ListVolumesRequest {
            pool: "p0".into(),
            all: false,
        })
        .await
        .expect("volumes")
        .into_inner()
        .volumes;
    assert_eq!(
        vols.iter()
            .map(|v| (v.name.as_str(), v.parent.as_deref()))
            .collect::<Vec<_>>(),
        [("v1", Some("s1")), ("v3", None)]
    );
    let clone = |name: &str, snapshot: &str| pb::CloneSnapshotRequest {
        pool: "p0".into(),
        snapshot: snapshot.into(),
        name: name.into(),
    };
    let c1 = p
        .clone_snapshot(clone("c1", "s1"))
        .await
        .expect("clone")
        .into_inner();
    assert_eq!(c1.parent.as_deref(), Some("s1"));
    assert_eq!(
        p.clone_snapshot(clone("c1", "s1"))
            .await
            .expect("again")
            .into_inner()
            .id,
        c1.id
    );
    p.clone_snapshot(clone("c2", "s1")).await.expect("clone 2");
    refused(
        p.clone_snapshot(clone("c3", "v3")).await,
        Code::FailedPrecondition,
        &["not a snapshot"],
    );
    refused(
        p.clone_snapshot(clone("v3", "s1")).await,
        Code::AlreadyExists,
        &["\"v3\" exists already"],
    );
    refused(
        p.delete_snapshot(pb::DeleteSnapshotRequest {
            pool: "p0".into(),
            name: "s1".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["has 3 clones", "delete or inflate all but one"],
    );
    refused(
        p.delete_volume(pb::DeleteVolumeRequest {
            pool: "p0".into(),
            name: "s1".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["is a snapshot", "DeleteSnapshot"],
    );
    refused(
        p.delete_snapshot(pb::DeleteSnapshotRequest {
            pool: "p0".into(),
            name: "v3".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["not a snapshot", "DeleteVolume"],
    );
    refused(
        p.grow_volume(pb::GrowVolumeRequest {
            pool: "p0".into(),
            name: "s1".into(),
            size_bytes: 64 * MIB,
        })
        .await,
        Code::FailedPrecondition,
        &["snapshot", "read-only"],
    );
    refused(
        p.inflate_volume(pb::InflateVolumeRequest {
            pool: "p0".into(),
            name: "v3".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["not a clone"],
    );
    let c2 = p
        .inflate_volume(pb::InflateVolumeRequest {
            pool: "p0".into(),
            name: "c2".into(),
        })
        .await
        .expect("inflate")
        .into_inner();
    assert_eq!(c2.parent, None);
    assert!(c2.used_bytes >= 2 * MIB, "its own copies: {c2:?}");
    // The clones serve the snapshot's data, not what the volume wrote after it.
    ns.add_namespace(serve_volume(2, "p0/c1"))
        .await
        .expect("serve c1");
    ns.add_namespace(serve_volume(3, "p0/c2"))
        .await
        .expect("serve c2");
    let h = tokio::task::spawn_blocking(move || {
        let mut h = h;
        holds(&mut h, 2, &[0, 8, 2048], 1);
        holds(&mut h, 3, &[0, 8, 2048], 1);
        write(&mut h, 2, &[(0, 3)]);
        holds(&mut h, 2, &[0], 3);
        holds(&mut h, 1, &[0], 1);
        h
    })
    .await
    .expect("join");
    drop(h);
    let check = p
        .check_pool(pb::CheckPoolRequest { name: "p0".into() })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(check.volumes, 5, "v1 v3 s1 c1 c2");
    refused(
        p.check_pool(pb::CheckPoolRequest { name: "p9".into() })
            .await,
        Code::NotFound,
        &["no pool"],
    );

    // Unserved, everything can go; the pool closes and its device can be imported.
    for nsid in [1, 2, 3] {
        ns.remove_namespace(pb::RemoveNamespaceRequest {
            nqn: NQN.into(),
            nsid,
        })
        .await
        .expect("remove");
    }
    let devs: Vec<String> = dev
        .list_block_devices(pb::ListBlockDevicesRequest {})
        .await
        .expect("devs")
        .into_inner()
        .devices
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        devs,
        ["disk", "p0", "disk2"],
        "volumes are devices only while served"
    );
    for name in ["v1", "c1"] {
        p.delete_volume(pb::DeleteVolumeRequest {
            pool: "p0".into(),
            name: name.into(),
        })
        .await
        .expect("delete");
    }
    p.delete_snapshot(pb::DeleteSnapshotRequest {
        pool: "p0".into(),
        name: "s1".into(),
    })
    .await
    .expect("a snapshot without clones");
    refused(
        p.delete_volume(pb::DeleteVolumeRequest {
            pool: "p0".into(),
            name: "v1".into(),
        })
        .await,
        Code::NotFound,
        &["no volume \"v1\""],
    );
    let left = get(&mut p, "p0").await;
    assert_eq!(left.volumes, 2, "v3 and c2");
    assert_eq!(
        left.allocated_bytes,
        8 * MIB + volume(&mut p, "p0", "c2").await.used_bytes
    );
    p.delete_pool(pb::DeletePoolRequest { name: "p0".into() })
        .await
        .expect("close");
    refused(
        p.delete_pool(pb::DeletePoolRequest { name: "p0".into() })
            .await,
        Code::NotFound,
        &["no pool \"p0\""],
    );
    let back = p
        .create_pool(on_bdev("p0", "disk"))
        .await
        .expect("import")
        .into_inner();
    assert_eq!((back.opened.as_str(), back.volumes), ("clean", 2));
    assert_eq!(back.allocated_bytes, left.allocated_bytes);
}

/// An API-made pool on a file with volumes, one served and written: `config save`,
/// the target killed, started from the saved file: the pool (replayed), its volumes
/// and the namespace are back with the data; a hot upgrade through the API carries
/// the pool, and volumes are made and served in the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_pool_survives_save_restart_and_upgrade() {
    let t = start("poolstate");
    let c = ch(&t).await;
    let mut p = PoolsClient::new(c.clone());
    let img = t.dir.join("pool.img");
    sparse(&img, 64 * MIB);
    let mut req = on_path("tank", &img);
    req.cluster_size = Some(256 << 10);
    p.create_pool(req).await.expect("pool");
    p.create_volume(vol("tank", "data", 8 * MIB, false))
        .await
        .expect("volume");
    p.create_volume(vol("tank", "spare", 4 * MIB, true))
        .await
        .expect("volume");
    NamespacesClient::new(c.clone())
        .add_namespace(serve_volume(1, "tank/data"))
        .await
        .expect("serve");
    let listen = t.listen;
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        write(&mut h, 1, &[(0, 1), (100, 1), (2000, 1)]);
    })
    .await
    .expect("join");
    let saved = ConfigClient::new(c.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(
        saved.contains("[[pool]]")
            && saved.contains("name = \"tank\"")
            && saved.contains("volume = \"tank/data\""),
        "{saved}"
    );
    let before = get(&mut p, "tank").await;

    let dir2 = t.dir.join("second");
    std::fs::create_dir_all(&dir2).expect("dir");
    let cfg = dir2.join("saved.toml");
    std::fs::write(&cfg, &saved).expect("write");
    let mut t = t;
    let _ = t.child.kill();
    let _ = t.child.wait();
    let t2 = start_in(&dir2, &["--config", cfg.to_str().expect("utf-8")]);
    let c2 = ch(&t2).await;
    let mut p2 = PoolsClient::new(c2.clone());
    let after = get(&mut p2, "tank").await;
    assert_eq!(after.opened, "recovered", "killed, so replayed");
    assert_eq!(
        (after.volumes, after.allocated_bytes, after.uuid.clone()),
        (before.volumes, before.allocated_bytes, before.uuid.clone())
    );
    let vols = p2
        .list_volumes(pb::ListVolumesRequest {
            pool: "tank".into(),
            all: true,
        })
        .await
        .expect("volumes")
        .into_inner()
        .volumes;
    assert_eq!(
        vols.iter()
            .map(|v| (v.name.as_str(), v.size_bytes, v.thin, v.namespaces.len()))
            .collect::<Vec<_>>(),
        [("data", 8 * MIB, true, 1), ("spare", 4 * MIB, false, 0)]
    );
    let listen = t2.listen;
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        holds(&mut h, 1, &[0, 100, 2000], 1);
    })
    .await
    .expect("join");
    let again = ConfigClient::new(c2.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&again), strip(&saved));

    // A pool made at run time in this process, carried by a hot upgrade.
    let img2 = dir2.join("second.img");
    sparse(&img2, 32 * MIB);
    p2.create_pool(on_path("late", &img2)).await.expect("pool");
    p2.create_volume(vol("late", "lv", 4 * MIB, false))
        .await
        .expect("volume");
    NamespacesClient::new(c2.clone())
        .add_namespace(serve_volume(2, "late/lv"))
        .await
        .expect("serve");
    let mut h = tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        write(&mut h, 2, &[(7, 5)]);
        h
    })
    .await
    .expect("join");
    let r = UpgradeClient::new(c2.clone())
        .start_upgrade(pb::StartUpgradeRequest {
            binary: env!("CARGO_BIN_EXE_lightpool-target").into(),
            log: "info".into(),
        })
        .await
        .expect("upgrade")
        .into_inner();
    let c3 = ch(&t2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = UpgradeClient::new(c3.clone())
            .get_status(pb::GetStatusRequest {})
            .await
        {
            if s.get_ref().pid == r.new_pid {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the new process answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut p3 = PoolsClient::new(c3.clone());
    let names: Vec<(String, String)> = p3
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("pools")
        .into_inner()
        .pools
        .into_iter()
        .map(|p| (p.name, p.opened))
        .collect();
    assert_eq!(
        names,
        [
            ("tank".to_string(), "adopted".to_string()),
            ("late".to_string(), "adopted".to_string())
        ]
    );
    p3.create_volume(vol("late", "after", 4 * MIB, false))
        .await
        .expect("a volume in the new process");
    NamespacesClient::new(c3.clone())
        .add_namespace(serve_volume(3, "late/after"))
        .await
        .expect("served in the new process");
    tokio::task::spawn_blocking(move || {
        // The same connection: the data from before, and new writes.
        holds(&mut h, 2, &[7], 5);
        holds(&mut h, 1, &[0, 100, 2000], 1);
        write(&mut h, 3, &[(1, 6)]);
        holds(&mut h, 3, &[1], 6);
    })
    .await
    .expect("join");
    let saved3 = ConfigClient::new(c3)
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(
        saved3.contains("name = \"late\"") && saved3.contains("volume = \"late/after\""),
        "{saved3}"
    );
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("read");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    page
}

/// The value of `name{pool="POOL"}`.
fn pool_value(page: &str, name: &str, pool: &str) -> u64 {
    let key = format!("{name}{{pool=\"{pool}\"}} ");
    let found: Vec<u64> = page
        .lines()
        .filter_map(|l| l.strip_prefix(key.as_str())?.trim().parse().ok())
        .collect();
    assert_eq!(found.len(), 1, "{key}: {found:?} in\n{page}");
    found[0]
}

/// The pools' gauges equal what the API reports, and follow volumes made and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_metrics_follow_the_pools() {
    let d = dir("poolmetrics");
    let maddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[target]\nmetrics_address = \"{maddr}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n"
        ),
    )
    .expect("config");
    let t = start_in(&d, &["--config", cfg.to_str().expect("utf-8")]);
    let c = ch(&t).await;
    let page = scrape(maddr);
    assert!(
        !page.contains("lightpool_pool_capacity_bytes{"),
        "no pool yet: {page}"
    );
    BlockDevicesClient::new(c.clone())
        .create_block_device(ram("m", 32 * MIB))
        .await
        .expect("ram");
    let mut p = PoolsClient::new(c.clone());
    p.create_pool(on_bdev("mp", "m")).await.expect("pool");
    p.create_volume(vol("mp", "a", 8 * MIB, true))
        .await
        .expect("thick");
    p.create_volume(vol("mp", "b", 8 * MIB, false))
        .await
        .expect("thin");
    NamespacesClient::new(c.clone())
        .add_namespace(serve_volume(1, "mp/b"))
        .await
        .expect("serve");
    let listen = t.listen;
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        // Three clusters touched (1 MiB: 2048 blocks of 512 bytes each).
        write(&mut h, 1, &[(0, 1), (8, 1), (2048, 1), (4096, 1)]);
    })
    .await
    .expect("join");
    let api = get(&mut p, "mp").await;
    assert_eq!(api.allocated_bytes, 11 * MIB, "8 thick + 3 written");
    let page = scrape(maddr);
    let m = |n: &str| pool_value(&page, n, "mp");
    assert_eq!(m("lightpool_pool_capacity_bytes"), api.capacity_bytes);
    assert_eq!(m("lightpool_pool_used_bytes"), 11 * MIB);
    assert_eq!(
        m("lightpool_pool_free_bytes"),
        api.capacity_bytes - 11 * MIB
    );
    assert_eq!(m("lightpool_pool_promised_bytes"), 16 * MIB);
    assert_eq!(
        m("lightpool_pool_promise_limit_bytes"),
        api.promise_limit_bytes
    );
    assert_eq!(m("lightpool_pool_volumes"), 2);
    // A pool closed leaves the page.
    NamespacesClient::new(c.clone())
        .remove_namespace(pb::RemoveNamespaceRequest {
            nqn: NQN.into(),
            nsid: 1,
        })
        .await
        .expect("remove");
    p.delete_pool(pb::DeletePoolRequest { name: "mp".into() })
        .await
        .expect("close");
    let page = scrape(maddr);
    assert!(!page.contains("pool=\"mp\""), "{page}");
}
