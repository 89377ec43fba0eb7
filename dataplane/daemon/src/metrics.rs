//! The daemon's side of the metrics endpoint (`[target] metrics_address`): bound at
//! start (so a bad or busy address stops the target with a clear message), served
//! once the target serves, handed to a successor in a hot upgrade with the rest.

use std::net::TcpListener;
use std::sync::{Arc, Weak};

use anyhow::{Context, Result};
use lightpool_metrics::{OffloadSource, PoolSource, PoolUsage};
use lightpool_pool::PoolOps;

use crate::Running;

/// Bind the endpoint's address (`target.metrics_address`).
pub fn bind(addr: &str) -> Result<TcpListener> {
    lightpool_metrics::http::bind(addr).context("target.metrics_address")
}

/// The target's pools, as the metrics report them: read at each scrape on the
/// metrics thread (each pool's counts under its operation lock, never on a reactor),
/// so pools created or closed at run time come and go.
struct Pools(Weak<Running>);

impl PoolSource for Pools {
    fn pools(&self) -> Vec<PoolUsage> {
        let Some(run) = self.0.upgrade() else {
            return Vec::new();
        };
        crate::pools::all(&run)
            .iter()
            .map(|p| {
                let i = p.pool_info();
                let cs = u64::from(i.cluster_size);
                PoolUsage {
                    name: i.name,
                    capacity_bytes: i.data_clusters * cs,
                    used_bytes: i.data_clusters.saturating_sub(i.free_clusters) * cs,
                    free_bytes: i.free_clusters * cs,
                    promised_bytes: i.promised,
                    promise_limit_bytes: i.promise_limit,
                    volumes: i.volumes as u64,
                }
            })
            .collect()
    }
}

/// The transports' offload counts (digests, placement, steering) and packet-engine
/// queues, read at each scrape from what their reactors published.
struct Offload(Weak<Running>);

impl OffloadSource for Offload {
    fn offload(&self) -> lightpool_nvmf::OffloadReport {
        let mut r = lightpool_nvmf::OffloadReport::default();
        if let Some(run) = self.0.upgrade() {
            for t in run.transports.all() {
                r.extend(t.offload());
            }
        }
        r
    }
}

/// Serve the metrics of `run` (if it has an endpoint) on a thread of their own.
pub fn serve(run: &Arc<Running>) -> Result<()> {
    let Some(l) = &run.metrics else {
        return Ok(());
    };
    let exporter = lightpool_metrics::Exporter::new(run.target.clone(), run.reactors.clone());
    exporter.add_pool_source(Box::new(Pools(Arc::downgrade(run))));
    exporter.add_offload_source(Box::new(Offload(Arc::downgrade(run))));
    let addr = lightpool_metrics::http::serve(
        exporter,
        l.try_clone().context("duplicating the metrics socket")?,
    )
    .context("starting the metrics thread")?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    Ok(())
}
