//! The utilisation simulator: a synthetic cluster (nodes with disks, and a local
//! storage demand that differs from node to node because pods are placed by CPU
//! and memory, not by disk) and a stream of volume requests, replayed through the
//! real scheduler twice:
//!
//! - **local-only**: every volume must sit on its consumer's node (MustLocal), as
//!   with local PVs;
//! - **pooled**: each volume keeps the placement hint it was drawn with, and the
//!   scheduler's default profile places it (remote pools included, at most
//!   `max_remote` remote volumes per pool).
//!
//! The trace, drawn from `--seed`:
//! - node capacity: `disks` uniform in `[disks_min, disks_max]`, each `disk_tib` TiB;
//! - node demand weight: log-normal, median 1, sigma `demand_sigma`; a request's
//!   consumer node is drawn in proportion to these weights;
//! - volume size: log-normal, median `size_median_gib`, sigma `size_sigma`,
//!   clipped to `[size_min_gib, size_max_gib]`, rounded up to 1 GiB;
//! - placement hint: MustLocal / PreferLocal / PreferRemote / MustRemote with the
//!   given percentages;
//! - requests keep coming until their sizes add up to `load` times the cluster's
//!   capacity; none is deleted.
//!
//! Reported per policy: utilisation (placed bytes / capacity), volumes placed and
//! refused, stranded capacity (free bytes on pools with room for the smallest
//! refused volume: space that exists but the policy could not use), and remote
//! volumes per pool.

pub mod rng;

use clap::Args;
use lightpool_model::labels::ZONE_LABEL;
use lightpool_model::quantity::{GIB, TIB};
use lightpool_model::{PlacementHint, PoolHealth};
use lightpool_scheduler::{PoolState, Scheduler, SchedulerConfig, VolumeRequest};
use serde::Serialize;

use rng::Rng;

/// The trace's parameters.
#[derive(Args, Debug, Clone, Serialize)]
pub struct TraceParams {
    /// Seed of the random stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Storage nodes (one pool each).
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Fewest disks per node.
    #[arg(long, default_value_t = 2)]
    pub disks_min: u32,
    /// Most disks per node.
    #[arg(long, default_value_t = 4)]
    pub disks_max: u32,
    /// Disk size in TiB.
    #[arg(long, default_value_t = 3.5)]
    pub disk_tib: f64,
    /// Zones the nodes are spread over (round robin).
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Sigma of the log-normal per-node demand weight (0: every node alike).
    #[arg(long, default_value_t = 1.5)]
    pub demand_sigma: f64,
    /// Requested bytes as a multiple of the cluster's capacity.
    #[arg(long, default_value_t = 1.0)]
    pub load: f64,
    /// Median volume size in GiB.
    #[arg(long, default_value_t = 1000.0)]
    pub size_median_gib: f64,
    /// Sigma of the log-normal volume size.
    #[arg(long, default_value_t = 0.7)]
    pub size_sigma: f64,
    /// Smallest volume in GiB.
    #[arg(long, default_value_t = 10)]
    pub size_min_gib: u64,
    /// Largest volume in GiB.
    #[arg(long, default_value_t = 4096)]
    pub size_max_gib: u64,
    /// Percent of requests that are MustLocal.
    #[arg(long, default_value_t = 10)]
    pub must_local: u32,
    /// Percent PreferLocal.
    #[arg(long, default_value_t = 70)]
    pub prefer_local: u32,
    /// Percent PreferRemote.
    #[arg(long, default_value_t = 10)]
    pub prefer_remote: u32,
    /// Percent MustRemote.
    #[arg(long, default_value_t = 10)]
    pub must_remote: u32,
    /// Remote volumes a pool may serve (the scheduler's max_remote_volumes).
    #[arg(long, default_value_t = 3)]
    pub max_remote: u32,
}

/// What one policy achieved.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    /// "local-only" or "pooled".
    pub policy: &'static str,
    /// Sum of the pools' capacities.
    pub capacity_bytes: u64,
    /// Sum of the requested sizes.
    pub requested_bytes: u64,
    /// Sum of the placed sizes.
    pub placed_bytes: u64,
    /// placed / capacity.
    pub utilisation: f64,
    /// Volumes placed.
    pub placed: usize,
    /// Volumes refused.
    pub refused: usize,
    /// Free bytes on pools with room for the smallest refused volume.
    pub stranded_bytes: u64,
    /// Volumes placed on another node than their consumer's.
    pub remote_volumes: usize,
    /// `remote_per_pool[k]`: pools serving k remote volumes.
    pub remote_per_pool: Vec<usize>,
}

/// Both policies on one trace.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The trace.
    pub params: TraceParams,
    /// Volumes in the trace.
    pub requests: usize,
    /// Every volume on its consumer's node.
    pub local_only: Outcome,
    /// The scheduler's placement with the drawn hints.
    pub pooled: Outcome,
}

/// Why the parameters make no trace.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Parameters that describe no cluster or no stream.
    #[error("{0}")]
    Params(String),
    /// The scheduler's profile did not build.
    #[error(transparent)]
    Config(#[from] lightpool_scheduler::ConfigError),
}

impl TraceParams {
    /// Checks the parameters, saying which to change.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Params(m.to_string()));
        if self.nodes == 0 {
            return bad("--nodes must be at least 1");
        }
        if self.disks_min == 0 || self.disks_min > self.disks_max {
            return bad("--disks-min must be at least 1 and at most --disks-max");
        }
        if self.disk_tib <= 0.0 || self.load <= 0.0 || self.size_median_gib <= 0.0 {
            return bad("--disk-tib, --load and --size-median-gib must be positive");
        }
        if self.size_min_gib == 0 || self.size_min_gib > self.size_max_gib {
            return bad("--size-min-gib must be at least 1 and at most --size-max-gib");
        }
        if self.must_local + self.prefer_local + self.prefer_remote + self.must_remote != 100 {
            return bad("--must-local, --prefer-local, --prefer-remote and --must-remote must add up to 100");
        }
        Ok(())
    }
}

/// The cluster of a trace.
pub fn pools(p: &TraceParams, rng: &mut Rng) -> Vec<PoolState> {
    (0..p.nodes)
        .map(|i| {
            let span = p.disks_max.saturating_sub(p.disks_min) as usize + 1;
            let disks = u64::from(p.disks_min) + rng.below(span) as u64;
            let name = format!("node-{i:04}");
            PoolState {
                name: name.clone(),
                node: name,
                node_labels: [(
                    ZONE_LABEL.to_string(),
                    format!("zone-{}", i % p.zones.max(1)),
                )]
                .into(),
                pool_labels: Default::default(),
                health: PoolHealth::Ready,
                unschedulable: false,
                capacity: disks * (p.disk_tib * TIB as f64) as u64,
                over_commit_percent: 100,
                max_remote_volumes: None,
            }
        })
        .collect()
}

/// The request stream of a trace.
pub fn requests(p: &TraceParams, capacity: u64, rng: &mut Rng) -> Vec<VolumeRequest> {
    let mut cumulative = Vec::with_capacity(p.nodes);
    let mut sum = 0.0;
    for _ in 0..p.nodes {
        sum += rng.log_normal(1.0, p.demand_sigma);
        cumulative.push(sum);
    }
    let hints = [
        (p.must_local, PlacementHint::MustLocal),
        (p.prefer_local, PlacementHint::PreferLocal),
        (p.prefer_remote, PlacementHint::PreferRemote),
        (p.must_remote, PlacementHint::MustRemote),
    ];
    let hint_total: u32 = hints.iter().map(|(w, _)| w).sum::<u32>().max(1);
    let target = (capacity as f64 * p.load) as u64;
    let mut total = 0u64;
    let mut out = Vec::new();
    while total < target {
        let gib = rng
            .log_normal(p.size_median_gib, p.size_sigma)
            .ceil()
            .clamp(p.size_min_gib as f64, p.size_max_gib as f64) as u64;
        let mut r = VolumeRequest::new(format!("vol-{:06}", out.len()), gib * GIB);
        r.consumer_node = Some(format!("node-{:04}", rng.weighted(&cumulative)));
        let mut x = (rng.unit() * f64::from(hint_total)) as u32;
        r.placement = hints
            .iter()
            .find(|(w, _)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map_or(PlacementHint::PreferLocal, |(_, h)| *h);
        total += r.size;
        out.push(r);
    }
    out
}

/// Replays `reqs` onto `pools` through a scheduler with `config`.
pub fn replay(
    policy: &'static str,
    pools: &[PoolState],
    reqs: &[VolumeRequest],
    config: &SchedulerConfig,
) -> Result<Outcome, lightpool_scheduler::ConfigError> {
    let s = Scheduler::new(config)?;
    for p in pools {
        s.upsert_pool(p.clone());
    }
    let mut placed = 0;
    let mut placed_bytes = 0;
    let mut smallest_refused: Option<u64> = None;
    let mut remote_volumes = 0;
    for r in reqs {
        match s.schedule(r) {
            Ok(res) => {
                let p = res.commit();
                placed += 1;
                placed_bytes += r.size;
                remote_volumes += usize::from(!p.local);
            }
            Err(_) => {
                smallest_refused = Some(smallest_refused.map_or(r.size, |s: u64| s.min(r.size)));
            }
        }
    }
    let mut remote_per_pool = Vec::new();
    let mut stranded_bytes = 0;
    for p in pools {
        let u = s.usage(&p.name).unwrap_or_default();
        let k = u.remote_volumes as usize;
        if remote_per_pool.len() <= k {
            remote_per_pool.resize(k + 1, 0);
        }
        remote_per_pool[k] += 1;
        let free = p.capacity.saturating_sub(u.provisioned_bytes);
        if smallest_refused.is_some_and(|s| free >= s) {
            stranded_bytes += free;
        }
    }
    let capacity_bytes: u64 = pools.iter().map(|p| p.capacity).sum();
    Ok(Outcome {
        policy,
        capacity_bytes,
        requested_bytes: reqs.iter().map(|r| r.size).sum(),
        placed_bytes,
        utilisation: placed_bytes as f64 / capacity_bytes.max(1) as f64,
        placed,
        refused: reqs.len() - placed,
        stranded_bytes,
        remote_volumes,
        remote_per_pool,
    })
}

/// Draws the trace and replays it under both policies.
pub fn run(p: &TraceParams) -> Result<Report, SimError> {
    p.validate()?;
    let mut rng = Rng::new(p.seed);
    let pools = pools(p, &mut rng);
    let capacity = pools.iter().map(|p| p.capacity).sum();
    let reqs = requests(p, capacity, &mut rng);
    let local_reqs: Vec<VolumeRequest> = reqs
        .iter()
        .map(|r| VolumeRequest {
            placement: PlacementHint::MustLocal,
            ..r.clone()
        })
        .collect();
    let config = SchedulerConfig {
        max_remote_volumes: p.max_remote,
        ..SchedulerConfig::default()
    };
    Ok(Report {
        params: p.clone(),
        requests: reqs.len(),
        local_only: replay("local-only", &pools, &local_reqs, &config)?,
        pooled: replay("pooled", &pools, &reqs, &config)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        t: TraceParams,
    }

    fn params(args: &[&str]) -> TraceParams {
        P::parse_from(std::iter::once("sim").chain(args.iter().copied())).t
    }

    #[test]
    fn same_seed_same_report() {
        let a = run(&params(&["--seed", "7", "--nodes", "20"])).unwrap();
        let b = run(&params(&["--seed", "7", "--nodes", "20"])).unwrap();
        assert_eq!(a.pooled, b.pooled);
        assert_eq!(a.local_only, b.local_only);
        let c = run(&params(&["--seed", "8", "--nodes", "20"])).unwrap();
        assert_ne!(a.pooled, c.pooled);
    }

    #[test]
    fn local_only_is_never_remote_and_nothing_over_fills() {
        let r = run(&params(&["--nodes", "30"])).unwrap();
        assert_eq!(r.local_only.remote_volumes, 0);
        assert_eq!(r.local_only.remote_per_pool, vec![30]);
        for o in [&r.local_only, &r.pooled] {
            assert!(o.placed_bytes <= o.capacity_bytes);
            assert!(o.stranded_bytes <= o.capacity_bytes - o.placed_bytes);
            assert_eq!(o.placed + o.refused, r.requests);
            assert!(
                o.remote_per_pool.len() <= 4,
                "at most 3 remote volumes per pool"
            );
        }
        assert!(r.pooled.utilisation > r.local_only.utilisation);
    }

    #[test]
    fn without_remote_volumes_pooling_is_local_only() {
        let r = run(&params(&[
            "--nodes",
            "25",
            "--max-remote",
            "0",
            "--must-local",
            "0",
            "--prefer-local",
            "100",
            "--prefer-remote",
            "0",
            "--must-remote",
            "0",
        ]))
        .unwrap();
        assert_eq!(r.pooled.placed_bytes, r.local_only.placed_bytes);
        assert_eq!(r.pooled.remote_volumes, 0);
    }

    #[test]
    fn bad_parameters_name_the_option() {
        let e = run(&params(&["--must-local", "50"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("add up to 100"), "{e}");
        let e = run(&params(&["--nodes", "0"])).unwrap_err().to_string();
        assert!(e.contains("--nodes"), "{e}");
    }
}
