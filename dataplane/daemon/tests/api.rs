//! The management API over its Unix socket, against the lightpool-target binary: every
//! call, what it changes (seen through the API and by an NVMe/TCP host), and its
//! refusals with their gRPC codes and messages that say what to change.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    ana_client::AnaClient, block_devices_client::BlockDevicesClient, config_client::ConfigClient,
    controllers_client::ControllersClient, listeners_client::ListenersClient,
    logging_client::LoggingClient, namespaces_client::NamespacesClient,
    statistics_client::StatisticsClient, subsystems_client::SubsystemsClient,
    upgrade_client::UpgradeClient,
};
use lightpool_e2e::nvme_host::HostController;
use tonic::Code;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_subsystems_namespaces_and_their_refusals() {
    let t = start("objects");
    let c = ch(&t).await;
    let mut dev = BlockDevicesClient::new(c.clone());
    let mut sub = SubsystemsClient::new(c.clone());
    let mut ns = NamespacesClient::new(c.clone());

    // Block devices.
    let d = dev
        .create_block_device(ram("r1", 8 << 20))
        .await
        .expect("ram")
        .into_inner();
    assert_eq!(
        (d.kind.as_str(), d.num_blocks, d.block_size),
        ("ram", 16384, 512)
    );
    refused(
        dev.create_block_device(ram("r1", 8 << 20)).await,
        Code::AlreadyExists,
        &["r1", "another name"],
    );
    refused(
        dev.create_block_device(ram("a b", 8 << 20)).await,
        Code::InvalidArgument,
        &["device name"],
    );
    refused(
        dev.create_block_device(ram("r9", 1000)).await,
        Code::InvalidArgument,
        &["512-byte blocks"],
    );
    refused(
        dev.create_block_device(ram("huge", 1 << 50)).await,
        Code::ResourceExhausted,
        &["does not fit", "smaller size"],
    );
    let mut bs = ram("r8", 8 << 20);
    if let Some(pb::create_block_device_request::Kind::Ram(r)) = &mut bs.kind {
        r.block_size = 1000;
    }
    refused(
        dev.create_block_device(bs).await,
        Code::InvalidArgument,
        &["1000", "512 nor 4096"],
    );
    refused(
        dev.create_block_device(pb::CreateBlockDeviceRequest {
            name: "x".into(),
            kind: None,
        })
        .await,
        Code::InvalidArgument,
        &["ram, file, vfio, passthru or fault"],
    );
    let passthru = |name: &str, base: &str| pb::CreateBlockDeviceRequest {
        name: name.into(),
        kind: Some(pb::create_block_device_request::Kind::Passthru(
            pb::PassthruDevice { base: base.into() },
        )),
    };
    refused(
        dev.create_block_device(passthru("p0", "nope")).await,
        Code::NotFound,
        &["\"nope\""],
    );
    refused(
        dev.create_block_device(pb::CreateBlockDeviceRequest {
            name: "f".into(),
            kind: Some(pb::create_block_device_request::Kind::File(
                pb::FileDevice {
                    path: "/nonexistent/img".into(),
                    ..Default::default()
                },
            )),
        })
        .await,
        Code::InvalidArgument,
        &["/nonexistent/img"],
    );
    dev.create_block_device(passthru("p1", "r1"))
        .await
        .expect("stacked");

    // Subsystems.
    refused(
        sub.create_subsystem(pb::CreateSubsystemRequest {
            nqn: "db1".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["not an NVMe Qualified Name", "nqn.2024-01.com.example:db1"],
    );
    refused(
        sub.create_subsystem(pb::CreateSubsystemRequest {
            nqn: NQN.into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        &[NQN, "delete it first"],
    );
    refused(
        sub.create_subsystem(pb::CreateSubsystemRequest {
            nqn: "nqn.2024-01.io.lightpool:b".into(),
            hosts: vec!["host1".into()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["host", "\"host1\""],
    );
    refused(
        sub.create_subsystem(pb::CreateSubsystemRequest {
            nqn: "nqn.2024-01.io.lightpool:b".into(),
            min_cntlid: Some(10),
            max_cntlid: Some(5),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["cntlid range 10..=5"],
    );
    let b = "nqn.2024-01.io.lightpool:b";
    let s = sub
        .create_subsystem(pb::CreateSubsystemRequest {
            nqn: b.into(),
            serial: Some("SN-B".into()),
            hosts: vec![
                "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555".into(),
            ],
            min_cntlid: Some(100),
            max_cntlid: Some(200),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert!(!s.allow_any_host, "hosts given: only they");
    assert_eq!(
        (s.serial.as_str(), s.min_cntlid, s.max_cntlid),
        ("SN-B", 100, 200)
    );

    // Namespaces.
    refused(
        ns.add_namespace(add_ns("nqn.2024-01.io.lightpool:none", 0, "r1"))
            .await,
        Code::NotFound,
        &["no subsystem"],
    );
    refused(
        ns.add_namespace(add_ns(b, 0, "nodev")).await,
        Code::NotFound,
        &["\"nodev\"", "create it first"],
    );
    refused(
        ns.add_namespace(add_ns(b, 33, "r1")).await,
        Code::InvalidArgument,
        &["nsid 33", "1..=32"],
    );
    let mut odd = add_ns(b, 0, "r1");
    odd.size_bytes = Some(1000);
    refused(
        ns.add_namespace(odd).await,
        Code::InvalidArgument,
        &["1000 bytes", "512-byte blocks"],
    );
    let mut big = add_ns(b, 0, "r1");
    big.size_bytes = Some(16 << 20);
    refused(
        ns.add_namespace(big).await,
        Code::InvalidArgument,
        &["8388608 bytes"],
    );
    let mut bad = add_ns(b, 0, "r1");
    bad.nguid = Some("xyz".into());
    refused(
        ns.add_namespace(bad).await,
        Code::InvalidArgument,
        &["nguid", "32 hex digits"],
    );
    let mut half = add_ns(b, 0, "p1");
    half.size_bytes = Some(4 << 20);
    let n = ns.add_namespace(half).await.expect("add").into_inner();
    assert_eq!((n.nsid, n.num_blocks, n.device.as_str()), (1, 8192, "p1"));
    refused(
        ns.add_namespace(add_ns(b, 1, "r1")).await,
        Code::AlreadyExists,
        &["namespace 1", "another NSID"],
    );
    let n2 = ns
        .add_namespace(add_ns(b, 5, "r1"))
        .await
        .expect("same device twice")
        .into_inner();
    assert_eq!((n2.nsid, n2.ana_group), (5, 5));
    let listed = ns
        .list_namespaces(pb::ListNamespacesRequest { nqn: b.into() })
        .await
        .expect("list")
        .into_inner()
        .namespaces;
    assert_eq!(
        listed.iter().map(|n| n.nsid).collect::<Vec<_>>(),
        vec![1, 5]
    );
    refused(
        ns.list_namespaces(pb::ListNamespacesRequest {
            nqn: "nqn.2024-01.io.x:none".into(),
        })
        .await,
        Code::NotFound,
        &["no subsystem"],
    );

    // Resize.
    let r = ns
        .resize_namespace(pb::ResizeNamespaceRequest {
            nqn: b.into(),
            nsid: 1,
            size_bytes: 0,
        })
        .await
        .expect("all of it")
        .into_inner();
    assert_eq!(r.num_blocks, 16384);
    refused(
        ns.resize_namespace(pb::ResizeNamespaceRequest {
            nqn: b.into(),
            nsid: 1,
            size_bytes: 32 << 20,
        })
        .await,
        Code::InvalidArgument,
        &["33554432 bytes"],
    );
    refused(
        ns.resize_namespace(pb::ResizeNamespaceRequest {
            nqn: b.into(),
            nsid: 2,
            size_bytes: 0,
        })
        .await,
        Code::NotFound,
        &["no namespace 2"],
    );

    // The device graph.
    let devs = dev
        .list_block_devices(pb::ListBlockDevicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .devices;
    let find = |n: &str| devs.iter().find(|d| d.name == n).expect("listed").clone();
    assert_eq!(find("p1").children, vec!["r1".to_string()]);
    assert_eq!(find("r1").parents, vec!["p1".to_string()]);
    assert_eq!(find("r1").namespaces, vec![format!("{b}/5")]);
    assert_eq!(find("p1").namespaces, vec![format!("{b}/1")]);
    assert!(find("p1").io.is_some(), "a pass-through counts");

    // In use: refused, naming the users.
    refused(
        dev.delete_block_device(pb::DeleteBlockDeviceRequest { name: "r1".into() })
            .await,
        Code::FailedPrecondition,
        &["in use", &format!("namespace {b}/5"), "device p1"],
    );
    refused(
        dev.delete_block_device(pb::DeleteBlockDeviceRequest {
            name: "gone".into(),
        })
        .await,
        Code::NotFound,
        &["\"gone\""],
    );
    ns.remove_namespace(pb::RemoveNamespaceRequest {
        nqn: b.into(),
        nsid: 1,
    })
    .await
    .expect("remove");
    refused(
        ns.remove_namespace(pb::RemoveNamespaceRequest {
            nqn: b.into(),
            nsid: 1,
        })
        .await,
        Code::NotFound,
        &["no namespace 1"],
    );
    dev.delete_block_device(pb::DeleteBlockDeviceRequest { name: "p1".into() })
        .await
        .expect("p1 unused now");

    // Subsystem delete: its namespaces go, the device stays and is then free.
    sub.delete_subsystem(pb::DeleteSubsystemRequest { nqn: b.into() })
        .await
        .expect("delete");
    refused(
        sub.delete_subsystem(pb::DeleteSubsystemRequest { nqn: b.into() })
            .await,
        Code::NotFound,
        &[b],
    );
    refused(
        sub.list_subsystems(pb::ListSubsystemsRequest { nqn: b.into() })
            .await,
        Code::NotFound,
        &[b],
    );
    let all = sub
        .list_subsystems(pb::ListSubsystemsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        all.subsystems
            .iter()
            .map(|s| s.nqn.as_str())
            .collect::<Vec<_>>(),
        vec![NQN]
    );
    dev.delete_block_device(pb::DeleteBlockDeviceRequest { name: "r1".into() })
        .await
        .expect("r1 unused now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_ana_controllers_connections_and_statistics() {
    let t = start("live");
    let c = ch(&t).await;
    let mut lis = ListenersClient::new(c.clone());
    let mut ana = AnaClient::new(c.clone());
    let mut ctl = ControllersClient::new(c.clone());
    BlockDevicesClient::new(c.clone())
        .create_block_device(ram("r1", 8 << 20))
        .await
        .expect("dev");
    NamespacesClient::new(c.clone())
        .add_namespace(add_ns(NQN, 1, "r1"))
        .await
        .expect("ns");

    // Listeners.
    let l = lis
        .add_listener(pb::AddListenerRequest {
            transport: String::new(),
            address: "127.0.0.1:0".into(),
        })
        .await
        .expect("listen")
        .into_inner();
    assert_eq!(l.transport, "tcp");
    let second: SocketAddr = l.address.parse().expect("bound address");
    assert_ne!(second.port(), 0);
    refused(
        lis.add_listener(pb::AddListenerRequest {
            transport: "tcp".into(),
            address: "nowhere".into(),
        })
        .await,
        Code::InvalidArgument,
        &["IP:PORT"],
    );
    refused(
        lis.add_listener(pb::AddListenerRequest {
            // A transport no build links (rdma is one with the rdma feature): the
            // refusal names it and the transports this binary has.
            transport: "fc".into(),
            address: "127.0.0.1:0".into(),
        })
        .await,
        Code::InvalidArgument,
        &["fc", "tcp"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let r = lis
        .add_listener(pb::AddListenerRequest {
            transport: "tcp".into(),
            address: taken.local_addr().expect("addr").to_string(),
        })
        .await;
    refused(r, Code::Unavailable, &["in use"]);
    let ls = lis
        .list_listeners(pb::ListListenersRequest {})
        .await
        .expect("list")
        .into_inner()
        .listeners;
    assert_eq!(ls.len(), 2, "{ls:?}");

    // A host on each listener; connections and controllers list them.
    let host = tokio::task::spawn_blocking(move || {
        HostController::connect(second, NQN, 2).expect("connect through the new listener")
    })
    .await
    .expect("join");
    let listen = t.listen;
    let mut other = tokio::task::spawn_blocking(move || {
        let mut h = HostController::connect(listen, NQN, 1).expect("connect");
        h.io[0]
            .write_verify_batch(&[0, 8, 16], 4096, 1)
            .expect("I/O");
        h
    })
    .await
    .expect("join");
    let conns = ctl
        .list_connections(pb::ListConnectionsRequest {})
        .await
        .expect("list")
        .into_inner()
        .connections;
    assert_eq!(conns.len(), 5, "{conns:?}");
    let via_second: Vec<&pb::Connection> = conns
        .iter()
        .filter(|c| c.local == second.to_string())
        .collect();
    assert_eq!(via_second.len(), 3);
    assert!(conns.iter().all(|c| c.nqn.as_deref() == Some(NQN)));
    assert!(conns
        .iter()
        .all(|c| c.host_nqn.as_deref() == Some(lightpool_e2e::nvme_host::HOSTNQN)));
    let ctrls = ctl
        .list_controllers(pb::ListControllersRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner()
        .controllers;
    assert_eq!(ctrls.len(), 2);
    let io_ctrl = ctrls
        .iter()
        .find(|c| c.cntlid == u32::from(other.cntlid))
        .expect("listed");
    assert_eq!(
        (
            io_ctrl.io_queues,
            io_ctrl.write_commands,
            io_ctrl.read_commands
        ),
        (1, 3, 3)
    );

    // Statistics count what the host did.
    let st = StatisticsClient::new(c.clone())
        .get_statistics(pb::GetStatisticsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let s = st.subsystems.iter().find(|s| s.nqn == NQN).expect("listed");
    assert_eq!(
        (s.write_commands, s.read_commands, s.blocks_written_512),
        (3, 3, 24)
    );

    // Disconnect one connection: the host's queue sees its connection end.
    refused(
        ctl.disconnect_connection(pb::DisconnectConnectionRequest {
            transport: "tcp".into(),
            reactor: 0,
            peer: "1.2.3.4:5".into(),
        })
        .await,
        Code::NotFound,
        &["1.2.3.4:5", "connection list"],
    );
    let io_conn = conns
        .iter()
        .find(|c| c.cntlid == Some(u32::from(other.cntlid)) && c.qid == 1)
        .expect("the I/O queue");
    ctl.disconnect_connection(pb::DisconnectConnectionRequest {
        transport: "tcp".into(),
        reactor: io_conn.reactor,
        peer: io_conn.peer.clone(),
    })
    .await
    .expect("disconnect");
    let mut other = tokio::task::spawn_blocking(move || {
        assert!(
            other.io[0].write_verify_batch(&[0], 4096, 2).is_err(),
            "its connection was closed"
        );
        other
    })
    .await
    .expect("join");

    // Remove the second listener: the connections that came through it close.
    refused(
        lis.remove_listener(pb::RemoveListenerRequest {
            transport: "tcp".into(),
            address: "127.0.0.1:1".into(),
        })
        .await,
        Code::NotFound,
        &["nothing listens on 127.0.0.1:1"],
    );
    lis.remove_listener(pb::RemoveListenerRequest {
        transport: "tcp".into(),
        address: second.to_string(),
    })
    .await
    .expect("remove");
    // Kept connected for the controller steps below.
    let _other = tokio::task::spawn_blocking(move || {
        let mut host = host;
        assert!(
            host.io[0].write_verify_batch(&[64], 4096, 3).is_err(),
            "closed with its listener"
        );
        assert!(
            std::net::TcpStream::connect(second).is_err(),
            "nobody listens there"
        );
        assert!(
            other.keep_alive().is_ok(),
            "the first listener's controller lives"
        );
        other
    })
    .await
    .expect("join");

    // ANA.
    refused(
        ana.set_ana_state(pb::SetAnaStateRequest {
            nqn: "nqn.2024-01.io.x:none".into(),
            group: 1,
            state: pb::AnaState::Inaccessible as i32,
        })
        .await,
        Code::NotFound,
        &["no subsystem"],
    );
    refused(
        ana.set_ana_state(pb::SetAnaStateRequest {
            nqn: NQN.into(),
            group: 0,
            state: pb::AnaState::Inaccessible as i32,
        })
        .await,
        Code::InvalidArgument,
        &["no ANA group 0", "1 to 32"],
    );
    refused(
        ana.set_ana_state(pb::SetAnaStateRequest {
            nqn: NQN.into(),
            group: 1,
            state: 0,
        })
        .await,
        Code::InvalidArgument,
        &["give a state"],
    );
    let g = ana
        .set_ana_state(pb::SetAnaStateRequest {
            nqn: NQN.into(),
            group: 1,
            state: pb::AnaState::Inaccessible as i32,
        })
        .await
        .expect("set")
        .into_inner();
    assert_eq!(
        (g.state, g.nsids.clone(), g.change_count),
        (pb::AnaState::Inaccessible as i32, vec![1], 1)
    );
    let gs = ana
        .list_ana_groups(pb::ListAnaGroupsRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner()
        .groups;
    assert_eq!(gs.len(), 1);
    assert_eq!(gs[0].state, pb::AnaState::Inaccessible as i32);

    // Disconnect a controller.
    refused(
        ctl.disconnect_controller(pb::DisconnectControllerRequest {
            nqn: NQN.into(),
            cntlid: 999,
        })
        .await,
        Code::NotFound,
        &["no controller 999"],
    );
    let cntlid = ctl
        .list_controllers(pb::ListControllersRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner()
        .controllers[0]
        .cntlid;
    ctl.disconnect_controller(pb::DisconnectControllerRequest {
        nqn: NQN.into(),
        cntlid,
    })
    .await
    .expect("disconnect");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ctl
        .list_controllers(pb::ListControllersRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner()
        .controllers
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the failed controller went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_status_and_configuration() {
    let t = start("misc");
    let c = ch(&t).await;
    let mut log = LoggingClient::new(c.clone());
    refused(
        log.set_log_level(pb::SetLogLevelRequest {
            filter: "info,=bogus[".into(),
        })
        .await,
        Code::InvalidArgument,
        &["not a log filter"],
    );
    // The check --log has: a misspelt level is refused, not read as a module to trace.
    refused(
        log.set_log_level(pb::SetLogLevelRequest {
            filter: "debgu".into(),
        })
        .await,
        Code::InvalidArgument,
        &["not a log filter", "\"debgu\" is not a log level"],
    );
    log.set_log_level(pb::SetLogLevelRequest {
        filter: "debug".into(),
    })
    .await
    .expect("set");
    assert_eq!(
        log.get_log_level(pb::GetLogLevelRequest {})
            .await
            .expect("get")
            .into_inner()
            .filter,
        "debug"
    );
    let s = UpgradeClient::new(c.clone())
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.pid, t.child.id());
    assert_eq!(s.api_socket, t.api.display().to_string());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&t.api).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only its owner reaches the API");
    let text = ConfigClient::new(c)
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(text.contains(&format!("nqn = \"{NQN}\"")), "{text}");
}
