//! The management API over its Unix socket, against the lightpool-target binary: every
//! call, what it changes (seen through the API and by an NVMe/TCP host), and its
//! refusals with their gRPC codes and messages that say what to change. Also the
//! configuration round trip (save, restart from it, save again: the same target) and
//! an upgrade started through the API carrying objects created at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
use tonic::transport::Channel;
use tonic::Code;

const NQN: &str = "nqn.2024-01.io.lightpool:api";

/// A lightpool-target started for one test, killed when dropped.
struct Target {
    child: Child,
    dir: PathBuf,
    api: PathBuf,
    listen: SocketAddr,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A successor of an upgrade runs in its own process group: stop it too (asked
        // on a thread of its own: this may run inside a test's runtime).
        let api = self.api.clone();
        let pid = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().ok()?;
            rt.block_on(async move {
                let ch = lightpool_api::connect(api).await.ok()?;
                let s = UpgradeClient::new(ch)
                    .get_status(pb::GetStatusRequest {})
                    .await
                    .ok()?;
                Some(s.into_inner().pid)
            })
        })
        .join()
        .ok()
        .flatten();
        if let Some(pid) = pid {
            // SAFETY: kill(2) on a pid the target just reported for itself.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lp-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Start the target with `args` in `dir`; wait for its API socket and first listener.
fn start_in(dir: &Path, args: &[&str]) -> Target {
    let control = dir.join("t.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
        .args(args)
        .arg("--control-socket")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out.log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("err.log")).expect("log"))
        .spawn()
        .expect("start lightpool-target");
    let api = dir.join("t.api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let listen = loop {
        let out = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
        if let Some(a) = out
            .lines()
            .find_map(|l| l.strip_prefix("lightpool-target: listening on "))
            .and_then(|l| l.split_whitespace().next())
        {
            if api.exists() && out.contains("management API on") {
                break a.parse().expect("address");
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "lightpool-target exited ({st}): {}",
                std::fs::read_to_string(dir.join("err.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the target did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    Target {
        child,
        dir: dir.to_path_buf(),
        api,
        listen,
    }
}

fn start(name: &str) -> Target {
    let d = dir(name);
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n"),
    )
    .expect("config");
    start_in(&d, &["--config", cfg.to_str().expect("utf-8")])
}

async fn ch(t: &Target) -> Channel {
    lightpool_api::connect(t.api.clone())
        .await
        .expect("the API answers")
}

/// The call must fail with `code` and a message holding every `want`.
fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    want: &[&str],
) {
    let s = r.expect_err("the call must be refused");
    assert_eq!(s.code(), code, "{}", s.message());
    for w in want {
        assert!(
            s.message().contains(w),
            "{w:?} missing from {:?}",
            s.message()
        );
    }
}

fn ram(name: &str, size: u64) -> pb::CreateBlockDeviceRequest {
    pb::CreateBlockDeviceRequest {
        name: name.into(),
        kind: Some(pb::create_block_device_request::Kind::Ram(pb::RamDevice {
            size_bytes: size,
            block_size: 512,
            hugepages: false,
        })),
    }
}

fn add_ns(nqn: &str, nsid: u32, device: &str) -> pb::AddNamespaceRequest {
    pb::AddNamespaceRequest {
        nqn: nqn.into(),
        nsid,
        device: device.into(),
        ..Default::default()
    }
}

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
        &["ram, file, vfio or passthru"],
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
            transport: "rdma".into(),
            address: "127.0.0.1:0".into(),
        })
        .await,
        Code::InvalidArgument,
        &["rdma", "tcp"],
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
