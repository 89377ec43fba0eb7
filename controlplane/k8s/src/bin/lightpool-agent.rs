//! The node agent on Kubernetes: run it as a DaemonSet beside the node's
//! dataplane (`lightpool-target`), whose management API socket it reaches on
//! a hostPath; it publishes the node's StoragePool, renews the node's
//! heartbeat Lease and reconciles the Volumes placed on it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lightpool_agent::{Agent, AgentConfig, ApiDataplane};
use lightpool_model::quantity::parse_bytes;

#[derive(Parser)]
#[command(version, about = "The LightPool node agent on Kubernetes")]
struct Args {
    /// The node's name (default: $NODE_NAME, the downward API's spec.nodeName).
    #[arg(long, default_value_t = lightpool_k8s::env("NODE_NAME"))]
    node: String,
    /// The address hosts connect to over NVMe/TCP (default: $NODE_ADDRESS, status.hostIP).
    #[arg(long, default_value_t = lightpool_k8s::env("NODE_ADDRESS"))]
    address: String,
    /// The NVMe/TCP port of the dataplane's listener.
    #[arg(long, default_value_t = 4420)]
    port: u16,
    /// The dataplane's management API socket (on a hostPath).
    #[arg(long, default_value = "/var/lib/lightpool/target.api.sock")]
    api_socket: PathBuf,
    /// Where the pool's file is (on a hostPath), without --device.
    #[arg(long, default_value = "/var/lib/lightpool/pool")]
    pool_dir: PathBuf,
    /// The pool's size (e.g. 100Gi) for a pool in a file under --pool-dir.
    #[arg(long, default_value = "0")]
    pool_size: String,
    /// The node's pool on this device (e.g. /dev/nvme1n1) instead of a file: all of it.
    #[arg(long)]
    device: Option<PathBuf>,
    /// The namespace of the heartbeat Leases (default: $POD_NAMESPACE, else the client's).
    #[arg(long)]
    namespace: Option<String>,
    /// Seconds between resyncs (Volumes are watched and handled at once).
    #[arg(long, default_value_t = 30)]
    resync: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lightpool_k8s::logging();
    let a = Args::parse();
    lightpool_k8s::required(&a.node, "--node", "NODE_NAME")?;
    lightpool_k8s::required(&a.address, "--address", "NODE_ADDRESS")?;
    let size = parse_bytes(&a.pool_size)
        .map_err(|e| anyhow::anyhow!("--pool-size {}: {e}", a.pool_size))?;
    let store = lightpool_k8s::store(
        "lightpool-agent",
        a.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .as_deref(),
    )
    .await?;
    let channel = lightpool_api::connect(&a.api_socket)
        .await
        .with_context(|| {
            format!(
                "the dataplane's API socket {} (is lightpool-target running on this node, its state directory on the hostPath?)",
                a.api_socket.display()
            )
        })?;
    let mut dataplane = ApiDataplane::new(channel, &a.pool_dir, size)?;
    if let Some(d) = &a.device {
        dataplane = dataplane.on_device(d);
    } else if size == 0 {
        anyhow::bail!("--pool-size must be more than 0 for a pool in a file (or give --device)");
    }
    let mut cfg = AgentConfig::new(&a.node, &a.address, a.port);
    cfg.identity = format!("{}-{}", a.node, std::process::id());
    let agent = Agent::new(store, dataplane, cfg);
    tracing::info!(node = %a.node, address = %a.address, port = a.port, "agent started");
    agent
        .run(Duration::from_secs(a.resync), lightpool_k8s::stopped())
        .await;
    Ok(())
}
