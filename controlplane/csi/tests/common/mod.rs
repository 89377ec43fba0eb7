//! The driver under test: the Controller and Identity services on a Unix socket,
//! over the real controller and agents (in-memory dataplanes) on the embedded
//! store; and the requests and checks the tests share.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use lightpool_agent::{Agent, AgentConfig, MemoryDataplane};
use lightpool_controller::{Controller, ControllerConfig};
use lightpool_csi::controller::CsiController;
use lightpool_csi::identity::Identity;
use lightpool_csi::v1 as csi;
use lightpool_csi::v1::controller_client::ControllerClient;
use lightpool_csi::v1::identity_client::IdentityClient;
use lightpool_csi::v1::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use lightpool_model::quantity::GIB;

use lightpool_store::{EmbeddedStore, Store};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

pub const GB: i64 = GIB as i64;

pub struct Driver {
    pub store: EmbeddedStore,
    pub ctl: ControllerClient<Channel>,
    pub id: IdentityClient<Channel>,
    _dir: tempfile::TempDir,
}

async fn channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://csi.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("the CSI socket answers")
}

/// Two nodes with 100 GiB pools each; the controller and agents tick every 20 ms.
pub async fn driver() -> Driver {
    let dir = tempfile::tempdir().expect("dir");
    let store = EmbeddedStore::open(dir.path().join("s.redb")).expect("store");
    let mut agents: Vec<_> = ["node-a", "node-b"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let cfg = AgentConfig::new(*n, format!("10.0.0.{}", i + 1), 4420);
            Agent::new(store.clone(), MemoryDataplane::new(100 * GIB), cfg)
        })
        .collect();
    let mut controller =
        Controller::new(store.clone(), ControllerConfig::new("c1")).expect("controller");
    tokio::spawn(async move {
        loop {
            for a in &mut agents {
                let _ = a.tick().await;
            }
            let _ = controller.tick().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Both agents have reported their pools' capacity: a create before that would be
    // judged against pools that hold nothing yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pools = store
            .list::<lightpool_model::StoragePool>()
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let reported = pools
            .iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.capacity_bytes > 0))
            .count();
        if reported == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agents never reported their pools"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sock = dir.path().join("csi.sock");
    serve(&sock, store.clone());
    let ch = channel(sock).await;
    Driver {
        store,
        ctl: ControllerClient::new(ch.clone()),
        id: IdentityClient::new(ch),
        _dir: dir,
    }
}

fn serve(sock: &Path, store: EmbeddedStore) {
    let l = lightpool_csi::bind(sock).expect("bind");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(Identity {
                controller: true,
            }))
            .add_service(csi::controller_server::ControllerServer::new(
                // Generous: on a loaded 2-core machine the agents and the controller tick
                // slowly, and a create waits for them.
                CsiController::new(store, Duration::from_secs(30)),
            ))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)),
    );
}

pub fn cap(mode: Mode, block: bool, fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            })
        }),
    }
}

pub fn create(
    name: &str,
    gib: i64,
    params: &[(&str, &str)],
    node: Option<&str>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: gib * GB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap(Mode::SingleNodeWriter, false, "ext4")],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        accessibility_requirements: node.map(|n| csi::TopologyRequirement {
            requisite: vec![],
            preferred: vec![csi::Topology {
                segments: HashMap::from([(
                    lightpool_csi::TOPOLOGY_NODE.to_string(),
                    n.to_string(),
                )]),
            }],
        }),
        ..Default::default()
    }
}

pub fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    want: &[&str],
) {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "{}", s.message());
    for w in want {
        assert!(
            s.message().contains(w),
            "{w:?} missing from {:?}",
            s.message()
        );
    }
}
