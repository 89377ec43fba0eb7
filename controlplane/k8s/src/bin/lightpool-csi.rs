//! The CSI plugin on Kubernetes: `--controller` in the controller Deployment beside
//! the external-provisioner (Volumes through the cluster's API), `--node NODE` in
//! the node DaemonSet beside the node-driver-registrar (the kernel's NVMe/TCP
//! initiator, mkfs and mount on the host).

use clap::Parser;
use lightpool_csi::plugin::{self, PluginArgs};

#[derive(Parser)]
#[command(
    version,
    about = "The LightPool CSI plugin (csi.lightpool.io) on Kubernetes"
)]
struct Args {
    #[command(flatten)]
    plugin: PluginArgs,
    /// The namespace of Events (default: $POD_NAMESPACE, else the client's).
    #[arg(long)]
    namespace: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lightpool_k8s::logging();
    let a = Args::parse();
    if !a.plugin.controller && a.plugin.node.is_none() {
        return Err(lightpool_csi::ServeError::Nothing.into());
    }
    if let Some(n) = &a.plugin.node {
        // `--node=$(NODE_NAME)` with the downward API unset reads as empty.
        lightpool_k8s::required(n, "--node", "NODE_NAME")?;
    }
    let store = lightpool_k8s::store(
        "lightpool-csi",
        a.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .as_deref(),
    )
    .await?;
    plugin::run(&a.plugin, store, lightpool_k8s::stopped()).await?;
    Ok(())
}
