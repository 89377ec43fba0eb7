//! The management API and the target's state: the configuration round trip (save,
//! restart from it, save again: the same target) and an upgrade started through the
//! API carrying objects created at run time.

use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    ana_client::AnaClient, block_devices_client::BlockDevicesClient, config_client::ConfigClient,
    listeners_client::ListenersClient, namespaces_client::NamespacesClient,
    subsystems_client::SubsystemsClient, upgrade_client::UpgradeClient,
};
use lightpool_e2e::nvme_host::HostController;
use tonic::transport::Channel;
use tonic::Code;

mod common;
use common::*;

/// Build a target through the API (devices stacked and not, namespaces with sizes and
/// identifiers, a non-optimized ANA group, hosts, listeners), save it, start a new
/// target from the saved file, and save again: the same text, the same objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_restart_load_gives_the_same_target() {
    let t = start("roundtrip");
    let c = ch(&t).await;
    let mut dev = BlockDevicesClient::new(c.clone());
    dev.create_block_device(ram("base", 16 << 20))
        .await
        .expect("ram");
    dev.create_block_device(pb::CreateBlockDeviceRequest {
        name: "counted".into(),
        kind: Some(pb::create_block_device_request::Kind::Passthru(
            pb::PassthruDevice {
                base: "base".into(),
            },
        )),
    })
    .await
    .expect("passthru");
    let img = t.dir.join("file.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .expect("file");
    dev.create_block_device(pb::CreateBlockDeviceRequest {
        name: "disk".into(),
        kind: Some(pb::create_block_device_request::Kind::File(
            pb::FileDevice {
                path: img.display().to_string(),
                block_size: 4096,
                read_only: false,
                direct: Some(false),
            },
        )),
    })
    .await
    .expect("file");
    dev.create_block_device(ram("spare", 4 << 20))
        .await
        .expect("unused device");
    let b = "nqn.2024-01.io.lightpool:round";
    SubsystemsClient::new(c.clone())
        .create_subsystem(pb::CreateSubsystemRequest {
            nqn: b.into(),
            model: Some("Round trip".into()),
            hosts: vec![
                "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555".into(),
            ],
            min_cntlid: Some(10),
            max_cntlid: Some(20),
            ..Default::default()
        })
        .await
        .expect("subsystem");
    let mut ns = NamespacesClient::new(c.clone());
    let mut a = add_ns(b, 3, "counted");
    a.size_bytes = Some(8 << 20);
    a.ana_group = Some(2);
    a.nguid = Some("000102030405060708090a0b0c0d0e0f".into());
    ns.add_namespace(a).await.expect("ns 3");
    ns.add_namespace(add_ns(b, 7, "disk")).await.expect("ns 7");
    ns.add_namespace(add_ns(NQN, 1, "base"))
        .await
        .expect("ns 1");
    AnaClient::new(c.clone())
        .set_ana_state(pb::SetAnaStateRequest {
            nqn: b.into(),
            group: 2,
            state: pb::AnaState::NonOptimized as i32,
        })
        .await
        .expect("ana");
    ListenersClient::new(c.clone())
        .add_listener(pb::AddListenerRequest {
            transport: "tcp".into(),
            address: "127.0.0.1:0".into(),
        })
        .await
        .expect("listener");

    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let saved = ConfigClient::new(c.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    let list = |c: Channel| async move {
        let n = NamespacesClient::new(c.clone())
            .list_namespaces(pb::ListNamespacesRequest::default())
            .await
            .expect("ns")
            .into_inner();
        let d = BlockDevicesClient::new(c.clone())
            .list_block_devices(pb::ListBlockDevicesRequest {})
            .await
            .expect("devs")
            .into_inner();
        let a = AnaClient::new(c.clone())
            .list_ana_groups(pb::ListAnaGroupsRequest::default())
            .await
            .expect("ana")
            .into_inner();
        let s = SubsystemsClient::new(c)
            .list_subsystems(pb::ListSubsystemsRequest::default())
            .await
            .expect("subs")
            .into_inner();
        let devs: Vec<_> = d
            .devices
            .iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.kind.clone(),
                    d.num_blocks,
                    d.block_size,
                    d.children.clone(),
                    d.namespaces.clone(),
                )
            })
            .collect();
        let subs: Vec<_> = s
            .subsystems
            .iter()
            .map(|s| {
                (
                    s.nqn.clone(),
                    s.model.clone(),
                    s.hosts.clone(),
                    s.allow_any_host,
                    s.min_cntlid,
                    s.max_cntlid,
                )
            })
            .collect();
        let groups: Vec<_> = a
            .groups
            .iter()
            .map(|g| (g.nqn.clone(), g.group, g.state, g.nsids.clone()))
            .collect();
        format!("{:?}\n{devs:?}\n{subs:?}\n{groups:?}", n.namespaces)
    };
    let before = list(c).await;
    let dir2 = t.dir.join("second");
    std::fs::create_dir_all(&dir2).expect("dir");
    let cfg = dir2.join("saved.toml");
    std::fs::write(&cfg, &saved).expect("write");
    // The first target goes; the second starts from what it saved (its listeners'
    // ports included, now free).
    let mut t = t;
    let _ = t.child.kill();
    let _ = t.child.wait();
    let t2 = start_in(&dir2, &["--config", cfg.to_str().expect("utf-8")]);
    let c2 = ch(&t2).await;
    let again = ConfigClient::new(c2.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert_eq!(
        strip(&again),
        strip(&saved),
        "saved:\n{saved}\nagain:\n{again}"
    );
    assert_eq!(list(c2).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_through_the_api_keeps_objects_made_at_run_time() {
    let t = start("upgrade");
    let c = ch(&t).await;
    BlockDevicesClient::new(c.clone())
        .create_block_device(ram("later", 8 << 20))
        .await
        .expect("dev");
    BlockDevicesClient::new(c.clone())
        .create_block_device(ram("unused", 4 << 20))
        .await
        .expect("dev");
    NamespacesClient::new(c.clone())
        .add_namespace(add_ns(NQN, 1, "later"))
        .await
        .expect("ns");
    let listen = t.listen;
    let mut h = tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        h.io[0]
            .write_verify_batch(&[0, 64], 4096, 9)
            .expect("I/O before");
        h
    })
    .await
    .expect("join");
    let mut up = UpgradeClient::new(c.clone());
    refused(
        up.start_upgrade(pb::StartUpgradeRequest {
            binary: "/nonexistent/bin".into(),
            log: String::new(),
        })
        .await,
        Code::InvalidArgument,
        &["/nonexistent/bin"],
    );
    refused(
        up.start_upgrade(pb::StartUpgradeRequest {
            binary: "/bin/false".into(),
            log: String::new(),
        })
        .await,
        Code::FailedPrecondition,
        &["without taking over", "serves on"],
    );
    let old = up
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("still serving")
        .into_inner();
    let r = up
        .start_upgrade(pb::StartUpgradeRequest {
            binary: env!("CARGO_BIN_EXE_lightpool-target").into(),
            log: "info".into(),
        })
        .await
        .expect("upgrade")
        .into_inner();
    assert_eq!(r.old_pid, old.pid);
    assert_ne!(r.new_pid, old.pid);
    assert!(r.pause_ms > 0.0 && r.report.contains("took over"), "{r:?}");
    // The old process exits once it answered; the new one serves on the same socket.
    let c2 = ch(&t).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let now = loop {
        if let Ok(s) = UpgradeClient::new(c2.clone())
            .get_status(pb::GetStatusRequest {})
            .await
        {
            if s.get_ref().pid == r.new_pid {
                break s.into_inner();
            }
        }
        assert!(Instant::now() < deadline, "the new process answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(now.pid, r.new_pid);
    let devs = BlockDevicesClient::new(c2.clone())
        .list_block_devices(pb::ListBlockDevicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .devices;
    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["later", "unused"],
        "devices made at run time, served or not"
    );
    tokio::task::spawn_blocking(move || {
        h.io[0]
            .read_verify_batch(&[0, 64], 4096, 9)
            .expect("same connection, same data");
        h.io[0]
            .write_verify_batch(&[128], 4096, 10)
            .expect("I/O after");
    })
    .await
    .expect("join");
    // Changes go on in the new process.
    NamespacesClient::new(c2.clone())
        .add_namespace(add_ns(NQN, 2, "unused"))
        .await
        .expect("ns 2 after the upgrade");
}
