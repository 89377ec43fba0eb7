//! `lightpool csi`: the CSI plugin (Identity, and Controller and/or Node) on a Unix
//! socket, as the Kubernetes sidecars (external-provisioner, node-driver-registrar)
//! expect it. The controller drives the standalone instance's store on --data-dir.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lightpool_csi::controller::CsiController;
use lightpool_csi::identity::Identity;
use lightpool_csi::node::CsiNode;
use lightpool_csi::v1::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use lightpool_standalone::protocol::RemoteStore;

#[derive(Args, Debug)]
pub struct CsiArgs {
    /// Where to serve: unix:///PATH (the sidecars' --csi-address).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// Serve the Controller service (volumes through the control plane's store).
    #[arg(long)]
    pub controller: bool,
    /// Serve the Node service for this node (its name: the topology and node id).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Where the node keeps its staging records.
    #[arg(long, default_value = "/var/lib/lightpool/csi")]
    pub state_dir: PathBuf,
    /// Seconds CreateVolume and DeleteVolume wait for the control plane before
    /// answering DEADLINE_EXCEEDED (the CO calls again).
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    /// Seconds staging waits for the namespace to appear after connecting.
    #[arg(long, default_value_t = 15)]
    pub device_timeout: u64,
    /// The host NQN to connect with; default nvme-cli's (/etc/nvme/hostnqn).
    #[arg(long)]
    pub hostnqn: Option<String>,
}

pub async fn run(
    a: &CsiArgs,
    store: RemoteStore,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    if !a.controller && a.node.is_none() {
        return Err("lightpool csi serves nothing: give --controller, --node NODE, or both".into());
    }
    let path = lightpool_csi::endpoint_path(&a.endpoint).map_err(|e| e.to_string())?;
    let listener = lightpool_csi::bind(&path).map_err(|e| e.to_string())?;
    let mut router =
        tonic::transport::Server::builder().add_service(IdentityServer::new(Identity {
            controller: a.controller,
        }));
    if a.controller {
        router = router.add_service(ControllerServer::new(CsiController::new(
            store,
            Duration::from_secs(a.wait),
        )));
    }
    if let Some(node) = &a.node {
        router = router.add_service(NodeServer::new(CsiNode {
            node_id: node.clone(),
            state_dir: a.state_dir.clone(),
            device_timeout: Duration::from_secs(a.device_timeout),
            hostnqn: a.hostnqn.clone(),
        }));
    }
    eprintln!(
        "lightpool csi: {} on {}",
        match (a.controller, &a.node) {
            (true, Some(n)) => format!("controller and node {n}"),
            (true, None) => "controller".into(),
            (false, Some(n)) => format!("node {n}"),
            (false, None) => unreachable!("refused above"),
        },
        path.display()
    );
    let res = router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await;
    let _ = std::fs::remove_file(&path);
    res.map_err(|e| e.to_string())
}
