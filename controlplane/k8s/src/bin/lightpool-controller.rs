//! The controller on Kubernetes: run it as a Deployment of two or more; one
//! leads at a time (the Lease `lightpool-controller` in its namespace), the
//! others wait to take over.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lightpool_controller::{Controller, ControllerConfig};
use lightpool_scheduler::SchedulerConfig;

#[derive(Parser)]
#[command(
    version,
    about = "The LightPool controller on Kubernetes (leader-elected)"
)]
struct Args {
    /// This replica's identity in the leader Lease (default: $POD_NAME, the pod's name).
    #[arg(long, default_value_t = lightpool_k8s::env("POD_NAME"))]
    identity: String,
    /// The namespace of the Leases and Events (default: $POD_NAMESPACE, else the client's).
    #[arg(long)]
    namespace: Option<String>,
    /// The scheduler profile (TOML, as deploy/examples/scheduler.toml).
    #[arg(long)]
    scheduler_config: Option<std::path::PathBuf>,
    /// Seconds between resyncs (changes are watched and handled at once).
    #[arg(long, default_value_t = 30)]
    resync: u64,
    /// Seconds a placed volume waits for its node's agent to publish it.
    #[arg(long, default_value_t = 120)]
    publish_timeout: u64,
    /// Seconds a delete waits for the agent of a node that is not Ready.
    #[arg(long, default_value_t = 300)]
    delete_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lightpool_k8s::logging();
    let a = Args::parse();
    lightpool_k8s::required(&a.identity, "--identity", "POD_NAME")?;
    let store = lightpool_k8s::store(
        "lightpool-controller",
        a.namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .as_deref(),
    )
    .await?;
    let mut cfg = ControllerConfig::new(&a.identity);
    cfg.publish_timeout = Duration::from_secs(a.publish_timeout);
    cfg.delete_timeout = Duration::from_secs(a.delete_timeout);
    if let Some(p) = &a.scheduler_config {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading the scheduler profile {}", p.display()))?;
        cfg.scheduler = SchedulerConfig::from_toml(&text)
            .with_context(|| format!("the scheduler profile {}", p.display()))?;
    }
    let controller = Controller::new(store, cfg)?;
    tracing::info!(identity = %a.identity, "controller started; contending for the leader lease");
    controller
        .run(Duration::from_secs(a.resync), lightpool_k8s::stopped())
        .await;
    Ok(())
}
