//! Running the plugin: its command-line options (shared by `lightpool csi`, on a
//! standalone instance's store, and `lightpool-csi`, on Kubernetes) and the server.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lightpool_store::Store;

use crate::controller::CsiController;
use crate::identity::Identity;
use crate::node::CsiNode;
use crate::v1::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use crate::ServeError;

/// What the plugin serves, and where.
#[derive(Args, Debug, Clone)]
pub struct PluginArgs {
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
    /// The management API socket of this node's dataplane (lightpool-target's
    /// .api.sock): a volume on this node is then staged through ublk (/dev/ublkbN,
    /// no network) instead of NVMe/TCP.
    #[arg(long, env = "LIGHTPOOL_DATAPLANE_API", value_name = "SOCKET")]
    pub dataplane_api: Option<PathBuf>,
}

/// Serves the plugin until `stop`; the controller (if asked for) over `store`.
pub async fn run<S: Store>(
    a: &PluginArgs,
    store: S,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if !a.controller && a.node.is_none() {
        return Err(ServeError::Nothing);
    }
    let path = crate::endpoint_path(&a.endpoint)?;
    let listener = crate::bind(&path)?;
    let mut router =
        tonic::transport::Server::builder().add_service(IdentityServer::new(Identity {
            controller: a.controller,
        }));
    // The node follows its staged volumes' paths (live migration's host side).
    let follower = a.node.as_ref().map(|_| {
        tokio::spawn(crate::node::paths::follow(
            store.clone(),
            a.state_dir.clone(),
            a.hostnqn.clone(),
            Duration::from_secs(5),
            std::future::pending::<()>(),
        ))
    });
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
            dataplane_api: a.dataplane_api.clone(),
        }));
    }
    let what = match (a.controller, &a.node) {
        (true, Some(n)) => format!("controller and node {n}"),
        (true, None) => "controller".to_string(),
        (_, Some(n)) => format!("node {n}"),
        (false, None) => String::new(),
    };
    tracing::info!(serves = %what, endpoint = %path.display(), "CSI plugin {}", crate::DRIVER_NAME);
    eprintln!("lightpool csi: {what} on {}", path.display());
    let res = router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await;
    if let Some(f) = follower {
        f.abort();
    }
    let _ = std::fs::remove_file(&path);
    Ok(res?)
}
