//! `lightpool target migrate ...`: live migration on ONE running lightpool-target, the
//! source (its Migrations service): start moving a served namespace to a namespace of
//! another target, watch it, stop it.

use std::time::Duration;

use clap::Subcommand;
use lightpool_api::v1 as pb;
use lightpool_api::v1::migrations_client::MigrationsClient;
use tonic::transport::Channel;

use crate::cmd::{emit, parse_size, refused, size};
use crate::table;

#[derive(Subcommand, Debug)]
pub enum MigrateCmd {
    /// Start moving namespace NQN/NSID to a namespace of another target; with
    /// --wait, show progress until it is synced (or fails).
    Start {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        nsid: u32,
        /// The destination target's NVMe/TCP address, HOST:PORT.
        #[arg(long)]
        to: String,
        /// The destination subsystem (default: the same NQN).
        #[arg(long)]
        to_nqn: Option<String>,
        /// The destination namespace (default: the same NSID).
        #[arg(long)]
        to_nsid: Option<u32>,
        /// Bytes per second the copy reads at most.
        #[arg(long, value_parser = parse_size)]
        rate: Option<u64>,
        /// Bytes per region of the dirty map (default 1MiB).
        #[arg(long, value_parser = parse_size)]
        region_size: Option<u64>,
        #[arg(long)]
        wait: bool,
    },
    /// One migration's progress.
    Status {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        nsid: u32,
    },
    List,
    /// End it: the namespace is served from its own device alone again.
    Stop {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        nsid: u32,
    },
}

fn line(m: &pb::Migration) -> String {
    let pct = if m.total_bytes == 0 {
        0.0
    } else {
        100.0 * m.copied_bytes.min(m.total_bytes) as f64 / m.total_bytes as f64
    };
    let mut s = format!(
        "{}/{} -> {} {}/{}: {} round {}, {} of {} copied ({pct:.0}%), {} dirty",
        m.nqn,
        m.nsid,
        m.dest_address,
        m.dest_nqn,
        m.dest_nsid,
        m.state,
        m.round,
        size(m.copied_bytes),
        size(m.total_bytes),
        size(m.dirty_bytes)
    );
    if let Some(e) = m.eta_ms {
        s.push_str(&format!(", about {:.1} s left", e as f64 / 1e3));
    }
    if m.throttled {
        s.push_str(", writes throttled");
    }
    if let Some(p) = m.pause_us {
        s.push_str(&format!(
            ", writes paused {:.2} ms at the switch",
            p as f64 / 1e3
        ));
    }
    if let Some(e) = &m.error {
        s.push_str(&format!(": {e}"));
    }
    s
}

pub async fn run(j: bool, ch: Channel, c: &MigrateCmd) -> Result<(), String> {
    let mut api = MigrationsClient::new(ch);
    let m = match c {
        MigrateCmd::Start {
            nqn,
            nsid,
            to,
            to_nqn,
            to_nsid,
            rate,
            region_size,
            wait,
        } => {
            let mut m = api
                .start_migration(pb::StartMigrationRequest {
                    nqn: nqn.clone(),
                    nsid: *nsid,
                    dest_address: to.clone(),
                    dest_nqn: to_nqn.clone().unwrap_or_else(|| nqn.clone()),
                    dest_nsid: to_nsid.unwrap_or(*nsid),
                    region_size_bytes: *region_size,
                    rate_limit_bytes: *rate,
                    ..Default::default()
                })
                .await
                .map_err(refused)?
                .into_inner();
            while *wait && (m.state == "copying" || m.state == "pausing") {
                if !j {
                    eprintln!("{}", line(&m));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                m = api
                    .get_migration(pb::GetMigrationRequest {
                        nqn: nqn.clone(),
                        nsid: *nsid,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
            }
            if m.state == "failed" {
                return Err(line(&m));
            }
            m
        }
        MigrateCmd::Status { nqn, nsid } => api
            .get_migration(pb::GetMigrationRequest {
                nqn: nqn.clone(),
                nsid: *nsid,
            })
            .await
            .map_err(refused)?
            .into_inner(),
        MigrateCmd::List => {
            let l = api
                .list_migrations(pb::ListMigrationsRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .migrations;
            return emit(j, &l, |l| {
                table::print(
                    &["NAMESPACE", "TO", "STATE", "ROUND", "COPIED", "DIRTY"],
                    &l.iter()
                        .map(|m| {
                            vec![
                                format!("{}/{}", m.nqn, m.nsid),
                                format!("{} {}/{}", m.dest_address, m.dest_nqn, m.dest_nsid),
                                m.state.clone(),
                                m.round.to_string(),
                                format!("{}/{}", size(m.copied_bytes), size(m.total_bytes)),
                                size(m.dirty_bytes),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            });
        }
        MigrateCmd::Stop { nqn, nsid } => api
            .stop_migration(pb::StopMigrationRequest {
                nqn: nqn.clone(),
                nsid: *nsid,
            })
            .await
            .map_err(refused)?
            .into_inner(),
    };
    emit(j, &m, |m| println!("{}", line(m)))
}
