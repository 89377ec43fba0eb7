//! The Migrations service against two lightpool-target processes: a pool volume served
//! by target A moves to a RAM namespace of target B while an NVMe/TCP host writes to A
//! (before, during and after the copy); at the end B holds every block the host last
//! wrote. While it runs, the namespace cannot be removed and a hot upgrade is refused;
//! stopping it puts the volume back alone. A destination that dies mid-copy fails the
//! migration while A serves on; bad requests are refused with what to change.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    block_devices_client::BlockDevicesClient, migrations_client::MigrationsClient,
    namespaces_client::NamespacesClient, pools_client::PoolsClient, upgrade_client::UpgradeClient,
};
use lightpool_e2e::nvme_host::{pattern, HostController};
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::*;

const MIB: u64 = 1 << 20;
const BS: u32 = 512;

/// Target A: a 16 MiB thin volume of a pool on RAM, served as namespace 1.
async fn source(name: &str) -> (Target, Channel) {
    let t = start(name);
    let c = ch(&t).await;
    BlockDevicesClient::new(c.clone())
        .create_block_device(ram("disk", 64 * MIB))
        .await
        .expect("ram");
    let mut p = PoolsClient::new(c.clone());
    p.create_pool(pb::CreatePoolRequest {
        name: "p".into(),
        device: Some(pb::create_pool_request::Device::Bdev("disk".into())),
        cluster_size: Some(64 << 10),
        ..Default::default()
    })
    .await
    .expect("pool");
    p.create_volume(pb::CreateVolumeRequest {
        pool: "p".into(),
        name: "v".into(),
        size_bytes: 16 * MIB,
        thick: false,
    })
    .await
    .expect("volume");
    NamespacesClient::new(c.clone())
        .add_namespace(pb::AddNamespaceRequest {
            nqn: NQN.into(),
            nsid: 1,
            volume: "p/v".into(),
            ..Default::default()
        })
        .await
        .expect("served");
    (t, c)
}

/// Target B: a RAM namespace of `bytes`.
async fn destination(name: &str, bytes: u64) -> (Target, Channel) {
    let t = start(name);
    let c = ch(&t).await;
    BlockDevicesClient::new(c.clone())
        .create_block_device(ram("landing", bytes))
        .await
        .expect("ram");
    NamespacesClient::new(c.clone())
        .add_namespace(add_ns(NQN, 1, "landing"))
        .await
        .expect("served");
    (t, c)
}

fn start_req(to: SocketAddr) -> pb::StartMigrationRequest {
    pb::StartMigrationRequest {
        nqn: NQN.into(),
        nsid: 1,
        dest_address: to.to_string(),
        dest_nqn: NQN.into(),
        dest_nsid: 1,
        region_size_bytes: Some(256 << 10),
        ..Default::default()
    }
}

async fn get(m: &mut MigrationsClient<Channel>) -> pb::Migration {
    m.get_migration(pb::GetMigrationRequest {
        nqn: NQN.into(),
        nsid: 1,
    })
    .await
    .expect("get migration")
    .into_inner()
}

/// Round `gen` written at `lbas` through a host connected to `at`.
async fn write(at: SocketAddr, lbas: Vec<u64>, gen: u64) {
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(at, NQN, 1).expect("connect");
        let blocks: Vec<(u64, u64)> = lbas.iter().map(|&l| (l, gen)).collect();
        let ok = h.io[0].write_blocks(1, &blocks, BS).expect("write");
        assert!(ok.iter().all(|x| *x), "every write acknowledged: {ok:?}");
    })
    .await
    .expect("join");
}

/// The target at `at` holds round `gen` at each of `lbas`.
async fn holds(at: SocketAddr, lbas: Vec<u64>, gen: u64) {
    tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(at, NQN, 1).expect("connect");
        let got = h.io[0].read_blocks(1, &lbas, BS).expect("read");
        for (lba, data) in lbas.iter().zip(got) {
            assert!(
                data == pattern(*lba, gen, BS as usize),
                "{at}: LBA {lba} is not round {gen}'s"
            );
        }
    })
    .await
    .expect("join");
}

fn spread(seed: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| (seed * 7919 + i * 104_729) % 32_768)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_volume_moves_to_another_target_under_writes() {
    let (a, ca) = source("migsrc").await;
    let (b, _cb) = destination("migdst", 16 * MIB).await;
    let before = spread(1, 64);
    write(a.listen, before.clone(), 1).await;
    let mut m = MigrationsClient::new(ca.clone());
    let mut req = start_req(b.listen);
    // About a second of copying: the host writes while it runs.
    req.rate_limit_bytes = Some(16 * MIB);
    let first = m
        .start_migration(req.clone())
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        (first.state.as_str(), first.total_bytes),
        ("copying", 16 * MIB)
    );
    refused(
        m.start_migration(req).await,
        Code::AlreadyExists,
        &["being migrated already"],
    );
    refused(
        NamespacesClient::new(ca.clone())
            .remove_namespace(pb::RemoveNamespaceRequest {
                nqn: NQN.into(),
                nsid: 1,
            })
            .await,
        Code::FailedPrecondition,
        &["being migrated", "stop the migration first"],
    );
    refused(
        PoolsClient::new(ca.clone())
            .grow_volume(pb::GrowVolumeRequest {
                pool: "p".into(),
                name: "v".into(),
                size_bytes: 32 * MIB,
            })
            .await,
        Code::FailedPrecondition,
        &["being migrated"],
    );
    let during = spread(2, 64);
    let mut round = 2;
    let mut seen_copying = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let synced = loop {
        write(a.listen, during.clone(), round).await;
        let p = get(&mut m).await;
        if p.state == "copying" && p.dirty_bytes > 0 && p.copied_bytes > 0 {
            seen_copying = true;
        }
        if p.state == "synced" {
            break p;
        }
        assert!(p.state == "copying" || p.state == "pausing", "{p:?}");
        assert!(Instant::now() < deadline, "never synced: {p:?}");
        round += 1;
    };
    assert!(seen_copying, "progress was seen mid-copy");
    assert!(synced.copied_bytes >= 16 * MIB, "{synced:?}");
    assert!(synced.pause_us.is_some(), "{synced:?}");
    // After the sync the mirror keeps B current.
    let after = spread(3, 64);
    write(a.listen, after.clone(), 100).await;
    // A hot upgrade is refused while a migration runs.
    let up = UpgradeClient::new(ca.clone())
        .start_upgrade(pb::StartUpgradeRequest {
            binary: env!("CARGO_BIN_EXE_lightpool-target").into(),
            log: "info".into(),
        })
        .await;
    let e = up.expect_err("an upgrade during a migration");
    assert!(
        e.message().contains("without taking over"),
        "{}",
        e.message()
    );
    let log = std::fs::read_to_string(a.dir.join("err.log")).unwrap_or_default()
        + &std::fs::read_to_string(a.dir.join("out.log")).unwrap_or_default();
    assert!(log.contains("a live migration runs here"), "{log}");
    // B holds the last round written at every block.
    holds(b.listen, before.clone(), 1).await;
    holds(b.listen, during.clone(), round).await;
    holds(b.listen, after.clone(), 100).await;
    // Stopped: A serves its volume alone again (B no longer follows).
    let stopped = m
        .stop_migration(pb::StopMigrationRequest {
            nqn: NQN.into(),
            nsid: 1,
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.state, "synced");
    refused(
        m.get_migration(pb::GetMigrationRequest {
            nqn: NQN.into(),
            nsid: 1,
        })
        .await,
        Code::NotFound,
        &["not being migrated"],
    );
    write(a.listen, after.clone(), 101).await;
    holds(a.listen, after.clone(), 101).await;
    holds(b.listen, after, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_dies_fails_the_migration_and_the_source_serves_on() {
    let (a, ca) = source("migsrc2").await;
    let (b, _cb) = destination("migdst2", 16 * MIB).await;
    let mut m = MigrationsClient::new(ca.clone());
    let mut req = start_req(b.listen);
    req.rate_limit_bytes = Some(4 * MIB);
    m.start_migration(req).await.expect("start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(b);
    let lbas = spread(4, 32);
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let at = a.listen;
        let l2 = lbas.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let mut h = HostController::connect(at, NQN, 1).expect("connect");
            let blocks: Vec<(u64, u64)> = l2.iter().map(|&l| (l, 7)).collect();
            h.io[0].write_blocks(1, &blocks, BS).expect("write")
        })
        .await
        .expect("join");
        if !ok.iter().all(|x| *x) {
            let log = std::fs::read_to_string(a.dir.join("err.log")).unwrap_or_default();
            panic!("a host write failed: {ok:?}\n{log}");
        }
        let p = get(&mut m).await;
        if p.state == "failed" {
            break p;
        }
        assert!(Instant::now() < deadline, "never failed: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("destination"),
        "{failed:?}"
    );
    holds(a.listen, lbas.clone(), 7).await;
    m.stop_migration(pb::StopMigrationRequest {
        nqn: NQN.into(),
        nsid: 1,
    })
    .await
    .expect("stop");
    write(a.listen, lbas.clone(), 8).await;
    holds(a.listen, lbas, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_migration_requests_are_refused_with_what_to_change() {
    let (_a, ca) = source("migsrc3").await;
    let (small, _cs) = destination("migsmall", 8 * MIB).await;
    let mut m = MigrationsClient::new(ca.clone());
    let mut r = start_req(small.listen);
    r.dest_address = "somewhere".into();
    refused(
        m.start_migration(r).await,
        Code::InvalidArgument,
        &["HOST:PORT"],
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = dead.local_addr().expect("addr");
    drop(dead);
    refused(
        m.start_migration(start_req(gone)).await,
        Code::FailedPrecondition,
        &["cannot be used", "cannot connect"],
    );
    refused(
        m.start_migration(start_req(small.listen)).await,
        Code::InvalidArgument,
        &["cannot take the source's"],
    );
    let mut r = start_req(small.listen);
    r.nsid = 9;
    refused(
        m.start_migration(r).await,
        Code::NotFound,
        &["no namespace 9"],
    );
    assert!(m
        .list_migrations(pb::ListMigrationsRequest {})
        .await
        .expect("list")
        .into_inner()
        .migrations
        .is_empty());
}
