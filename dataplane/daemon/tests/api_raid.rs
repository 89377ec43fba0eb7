//! The Raids service over the API's Unix socket, against the lightpool-target binary:
//! a RAID1 array made on two files, a pool on it and a volume served to an NVMe/TCP
//! host; a member failed (the array and the pool report "degraded", the host's data
//! stays readable and writable), re-added (a bitmap resync, not a full copy: the pool
//! is "online" again), removed and replaced by a new file (a rebuild); `config save`
//! lists the members the array has now; a hot upgrade carries the array and the new
//! process manages it; refusals with their codes and messages.

use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    block_devices_client::BlockDevicesClient, config_client::ConfigClient,
    namespaces_client::NamespacesClient, pools_client::PoolsClient, raids_client::RaidsClient,
    upgrade_client::UpgradeClient,
};
use lightpool_e2e::nvme_host::{pattern, HostController};
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::*;

const MIB: u64 = 1 << 20;
const BS: u32 = 512;

fn path_member(p: &std::path::Path) -> pb::RaidMember {
    pb::RaidMember {
        device: Some(pb::raid_member::Device::Path(p.display().to_string())),
    }
}

fn ram_member(bytes: u64) -> pb::RaidMember {
    pb::RaidMember {
        device: Some(pb::raid_member::Device::RamBytes(bytes)),
    }
}

fn raid1(name: &str, members: Vec<pb::RaidMember>) -> pb::CreateRaidRequest {
    pb::CreateRaidRequest {
        name: name.into(),
        level: "raid1".into(),
        members,
        region_size_bytes: Some(MIB),
        block_size: Some(512),
        direct: Some(false),
        ..Default::default()
    }
}

async fn raid(r: &mut RaidsClient<Channel>, name: &str) -> pb::Raid {
    r.get_raid(pb::GetRaidRequest { name: name.into() })
        .await
        .expect("get raid")
        .into_inner()
}

async fn health(p: &mut PoolsClient<Channel>, name: &str) -> String {
    p.get_pool(pb::GetPoolRequest { name: name.into() })
        .await
        .expect("get pool")
        .into_inner()
        .health
}

async fn until_optimal(r: &mut RaidsClient<Channel>, name: &str) -> pb::Raid {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = raid(r, name).await;
        if a.state == "optimal" {
            return a;
        }
        assert!(Instant::now() < deadline, "never optimal: {a:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn states(a: &pb::Raid) -> Vec<&str> {
    a.members.iter().map(|m| m.state.as_str()).collect()
}

/// Writes round `gen` at `lbas` of namespace 1 and reads it back, on a blocking
/// thread (the host is synchronous).
async fn write_and_check(listen: std::net::SocketAddr, lbas: Vec<u64>, gen: u64) {
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        let blocks: Vec<(u64, u64)> = lbas.iter().map(|&l| (l, gen)).collect();
        let ok = h.io[0].write_blocks(1, &blocks, BS).expect("write");
        assert!(ok.iter().all(|x| *x), "every write acknowledged: {ok:?}");
        holds(&mut h, &lbas, gen);
    })
    .await
    .expect("join");
}

fn holds(h: &mut HostController, lbas: &[u64], gen: u64) {
    let got = h.io[0].read_blocks(1, lbas, BS).expect("read");
    for (lba, data) in lbas.iter().zip(got) {
        assert!(
            data == pattern(*lba, gen, BS as usize),
            "LBA {lba}: not round {gen}'s data"
        );
    }
}

async fn check(listen: std::net::SocketAddr, lbas: Vec<u64>, gen: u64) {
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        holds(&mut h, &lbas, gen);
    })
    .await
    .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raid1_made_through_the_api_loses_and_regains_a_member_under_a_pool() {
    let t = start("raid1");
    let c = ch(&t).await;
    let mut r = RaidsClient::new(c.clone());
    let mut p = PoolsClient::new(c.clone());
    let (a, b, spare) = (
        t.dir.join("a.img"),
        t.dir.join("b.img"),
        t.dir.join("c.img"),
    );
    for f in [&a, &b, &spare] {
        sparse(f, 32 * MIB);
    }
    let made = r
        .create_raid(raid1("md1", vec![path_member(&a), path_member(&b)]))
        .await
        .expect("array")
        .into_inner();
    assert_eq!(
        (made.level.as_str(), made.state.as_str()),
        ("raid1", "optimal")
    );
    assert_eq!(states(&made), ["active", "active"]);
    let md = until_optimal(&mut r, "md1").await;
    // The array is a block device of the target: a pool goes on it by name.
    p.create_pool(pb::CreatePoolRequest {
        name: "tank".into(),
        device: Some(pb::create_pool_request::Device::Bdev("md1".into())),
        cluster_size: Some(256 << 10),
        ..Default::default()
    })
    .await
    .expect("pool on the array");
    p.create_volume(pb::CreateVolumeRequest {
        pool: "tank".into(),
        name: "data".into(),
        size_bytes: 8 * MIB,
        thick: false,
    })
    .await
    .expect("volume");
    NamespacesClient::new(c.clone())
        .add_namespace(pb::AddNamespaceRequest {
            nqn: NQN.into(),
            nsid: 1,
            volume: "tank/data".into(),
            ..Default::default()
        })
        .await
        .expect("served");
    assert_eq!(health(&mut p, "tank").await, "online");
    let users = raid(&mut r, "md1").await.users;
    assert_eq!(users, ["device tank"]);
    write_and_check(t.listen, vec![0, 4096, 12000], 1).await;

    // The bitmap clears once regions have been idle for 5 s (the pool's format wrote
    // them all): a resync after this copies only what is written from now on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while raid(&mut r, "md1").await.dirty_regions != 0 {
        assert!(Instant::now() < deadline, "the bitmap never cleared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A member failed: both report it, the host carries on.
    let b_name = b.display().to_string();
    let failed = r
        .fail_raid_member(pb::RaidMemberRequest {
            name: "md1".into(),
            member: b_name.clone(),
        })
        .await
        .expect("fail")
        .into_inner();
    assert_eq!(failed.state, "degraded");
    assert_eq!(states(&failed), ["active", "faulty"]);
    assert_eq!(health(&mut p, "tank").await, "degraded");
    // The last member in sync cannot be failed by hand.
    refused(
        r.fail_raid_member(pb::RaidMemberRequest {
            name: "md1".into(),
            member: "#0".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["last member in sync"],
    );
    write_and_check(t.listen, vec![0, 8000], 2).await;

    // Re-added: only the bitmap's dirty regions are copied.
    r.readd_raid_member(pb::RaidMemberRequest {
        name: "md1".into(),
        member: "#1".into(),
    })
    .await
    .expect("readd");
    let back = until_optimal(&mut r, "md1").await;
    assert_eq!(back.recoveries, md.recoveries + 1);
    let copied = back.copied_bytes_total - md.copied_bytes_total;
    assert!(
        copied > 0 && copied <= 4 * MIB,
        "a resync copies the regions written while degraded, not 32 MiB: {copied}"
    );
    assert_eq!(health(&mut p, "tank").await, "online");
    check(t.listen, vec![0, 8000], 2).await;
    check(t.listen, vec![4096, 12000], 1).await;

    // Failed, removed, replaced by a blank file: rebuilt in full while serving.
    for (what, m) in [("fail", "#1"), ("remove", "#1")] {
        let req = pb::RaidMemberRequest {
            name: "md1".into(),
            member: m.into(),
        };
        match what {
            "fail" => r.fail_raid_member(req).await.expect("fail"),
            _ => r.remove_raid_member(req).await.expect("remove"),
        };
    }
    let gone = raid(&mut r, "md1").await;
    assert_eq!(states(&gone), ["active", "empty"]);
    let cfg = ConfigClient::new(c.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(
        cfg.contains("[[raid]]") && cfg.contains("name = \"md1\"") && !cfg.contains(&b_name),
        "the removed member is not listed any more:\n{cfg}"
    );
    r.add_raid_member(pb::AddRaidMemberRequest {
        name: "md1".into(),
        path: spare.display().to_string(),
    })
    .await
    .expect("add");
    let rebuilt = until_optimal(&mut r, "md1").await;
    assert_eq!(
        rebuilt.members[1].device,
        spare.display().to_string(),
        "{rebuilt:?}"
    );
    let cfg = ConfigClient::new(c.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(
        cfg.contains(&spare.display().to_string()),
        "the added member is listed:\n{cfg}"
    );
    check(t.listen, vec![0, 8000], 2).await;

    // In use: the array cannot go while the pool is on it.
    refused(
        BlockDevicesClient::new(c.clone())
            .delete_block_device(pb::DeleteBlockDeviceRequest { name: "md1".into() })
            .await,
        Code::FailedPrecondition,
        &["device tank"],
    );

    // A hot upgrade carries the array made here, with the member added here, and the
    // new process manages it.
    let before = raid(&mut r, "md1").await;
    let up = UpgradeClient::new(c.clone())
        .start_upgrade(pb::StartUpgradeRequest {
            binary: env!("CARGO_BIN_EXE_lightpool-target").into(),
            log: "info".into(),
        })
        .await
        .expect("upgrade")
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    let c2 = loop {
        if let Ok(c2) = lightpool_api::connect(t.api.clone()).await {
            if let Ok(s) = UpgradeClient::new(c2.clone())
                .get_status(pb::GetStatusRequest {})
                .await
            {
                if s.get_ref().pid == up.new_pid {
                    break c2;
                }
            }
        }
        assert!(Instant::now() < deadline, "the new process answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut r2 = RaidsClient::new(c2.clone());
    let after = raid(&mut r2, "md1").await;
    assert_eq!(
        (&after.uuid, &after.state, states(&after), &after.users),
        (&before.uuid, &before.state, states(&before), &before.users)
    );
    assert_eq!(after.members[1].device, spare.display().to_string());
    check(t.listen, vec![0, 8000], 2).await;
    let failed = r2
        .fail_raid_member(pb::RaidMemberRequest {
            name: "md1".into(),
            member: "#0".into(),
        })
        .await
        .expect("managed by the new process")
        .into_inner();
    assert_eq!(states(&failed), ["faulty", "active"]);
    assert_eq!(health(&mut PoolsClient::new(c2), "tank").await, "degraded");
    check(t.listen, vec![0, 8000], 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_raid_requests_are_refused_with_what_to_change() {
    let t = start("raidbad");
    let c = ch(&t).await;
    let mut r = RaidsClient::new(c.clone());
    let mut bad = raid1("r5", vec![ram_member(8 * MIB), ram_member(8 * MIB)]);
    bad.level = "raid5".into();
    refused(
        r.create_raid(bad).await,
        Code::InvalidArgument,
        &["level", "raid5", "concat, raid0 or raid1"],
    );
    refused(
        r.create_raid(raid1("one", vec![ram_member(8 * MIB)])).await,
        Code::InvalidArgument,
        &["members", "at least 2"],
    );
    let mut strip = raid1("strip", vec![ram_member(8 * MIB), ram_member(8 * MIB)]);
    strip.strip_size_bytes = Some(65536);
    refused(
        r.create_raid(strip).await,
        Code::InvalidArgument,
        &["strip_size", "raid0"],
    );
    refused(
        r.create_raid(raid1(
            "nofile",
            vec![path_member(&t.dir.join("missing.img")), ram_member(8 * MIB)],
        ))
        .await,
        Code::FailedPrecondition,
        &["missing.img"],
    );
    refused(
        r.create_raid(raid1("empty", vec![pb::RaidMember { device: None }]))
            .await,
        Code::InvalidArgument,
        &["members[0]"],
    );
    // A RAID0 of RAM members works, and has no members to fail.
    let r0 = r
        .create_raid(pb::CreateRaidRequest {
            name: "r0".into(),
            level: "raid0".into(),
            members: vec![ram_member(8 * MIB), ram_member(8 * MIB)],
            strip_size_bytes: Some(64 << 10),
            ..Default::default()
        })
        .await
        .expect("raid0")
        .into_inner();
    assert_eq!((r0.level.as_str(), r0.state.as_str()), ("raid0", "optimal"));
    // Each member keeps its first MiB for the array's superblocks.
    assert_eq!(r0.num_blocks * u64::from(r0.block_size), 14 * MIB);
    refused(
        r.create_raid(pb::CreateRaidRequest {
            name: "r0".into(),
            level: "raid0".into(),
            members: vec![ram_member(8 * MIB), ram_member(8 * MIB)],
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        &["r0"],
    );
    refused(
        r.fail_raid_member(pb::RaidMemberRequest {
            name: "r0".into(),
            member: "#1".into(),
        })
        .await,
        Code::FailedPrecondition,
        &["no redundancy"],
    );
    refused(
        r.fail_raid_member(pb::RaidMemberRequest {
            name: "r0".into(),
            member: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["member"],
    );
    refused(
        r.get_raid(pb::GetRaidRequest { name: "md9".into() }).await,
        Code::NotFound,
        &["md9", "r0", "lightpool target raid create"],
    );
    let names: Vec<String> = r
        .list_raids(pb::ListRaidsRequest {})
        .await
        .expect("list")
        .into_inner()
        .raids
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["r0"]);
    // Nothing uses it: it goes, and its name is free again.
    BlockDevicesClient::new(c.clone())
        .delete_block_device(pb::DeleteBlockDeviceRequest { name: "r0".into() })
        .await
        .expect("delete");
    refused(
        r.get_raid(pb::GetRaidRequest { name: "r0".into() }).await,
        Code::NotFound,
        &["r0"],
    );
}
