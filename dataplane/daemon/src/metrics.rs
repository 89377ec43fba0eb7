//! The daemon's side of the metrics endpoint (`[target] metrics_address`): bound at
//! start (so a bad or busy address stops the target with a clear message), served
//! once the target serves, handed to a successor in a hot upgrade with the rest.

use std::net::TcpListener;

use anyhow::{Context, Result};

use crate::Running;

/// Bind the endpoint's address (`target.metrics_address`).
pub fn bind(addr: &str) -> Result<TcpListener> {
    lightpool_metrics::http::bind(addr).context("target.metrics_address")
}

/// Serve the metrics of `run` (if it has an endpoint) on a thread of their own.
pub fn serve(run: &Running) -> Result<()> {
    let Some(l) = &run.metrics else {
        return Ok(());
    };
    let exporter = lightpool_metrics::Exporter::new(run.target.clone(), run.reactors.clone());
    let addr = lightpool_metrics::http::serve(
        exporter,
        l.try_clone().context("duplicating the metrics socket")?,
    )
    .context("starting the metrics thread")?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}
