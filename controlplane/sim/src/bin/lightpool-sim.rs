//! Replays a synthetic cluster and volume stream through the scheduler and prints
//! utilisation with pooling against local-only placement.
//!
//! lightpool-sim --seed 1 [--nodes 100 --demand-sigma 1.0 ...] [--json]

use clap::Parser;
use lightpool_model::quantity::human_bytes;
use lightpool_sim::{Outcome, TraceParams};

#[derive(Parser)]
#[command(
    about = "Storage utilisation with pooling against local-only placement, through the real scheduler"
)]
struct Cli {
    #[command(flatten)]
    trace: TraceParams,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn row(o: &Outcome) -> String {
    format!(
        "{:<11} {:>10.1}% {:>7} {:>7} {:>12} {:>12} {:>7}  {}",
        o.policy,
        o.utilisation * 100.0,
        o.placed,
        o.refused,
        human_bytes(o.placed_bytes),
        human_bytes(o.stranded_bytes),
        o.remote_volumes,
        o.remote_per_pool
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let r = lightpool_sim::run(&cli.trace)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let p = &r.params;
    println!(
        "trace: seed {}, {} nodes x {}-{} disks of {} TiB ({} in all, {} zones), demand sigma {}, load {}",
        p.seed,
        p.nodes,
        p.disks_min,
        p.disks_max,
        p.disk_tib,
        human_bytes(r.pooled.capacity_bytes),
        p.zones,
        p.demand_sigma,
        p.load
    );
    println!(
        "       {} volumes ({} requested), size log-normal median {} GiB sigma {} in [{}, {}] GiB; hints MustLocal {}% PreferLocal {}% PreferRemote {}% MustRemote {}%; max {} remote volumes per pool",
        r.requests,
        human_bytes(r.pooled.requested_bytes),
        p.size_median_gib,
        p.size_sigma,
        p.size_min_gib,
        p.size_max_gib,
        p.must_local,
        p.prefer_local,
        p.prefer_remote,
        p.must_remote,
        p.max_remote
    );
    println!(
        "{:<11} {:>11} {:>7} {:>7} {:>12} {:>12} {:>7}  remote volumes per pool (count:pools)",
        "policy", "utilisation", "placed", "refused", "placed", "stranded", "remote"
    );
    println!("{}", row(&r.local_only));
    println!("{}", row(&r.pooled));
    Ok(())
}
