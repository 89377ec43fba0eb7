//! `lightpool target host-key ...`: the DH-HMAC-CHAP keys ONE running lightpool-target
//! holds per host and subsystem (the Subsystems service): set or rotate, clear, list.
//! A rotated key applies to the host's next authentication; live connections stay.
//! Secrets go to the target only; they are never printed.

use clap::Subcommand;
use lightpool_api::v1 as pb;
use lightpool_api::v1::subsystems_client::SubsystemsClient;
use tonic::transport::Channel;

use crate::cmd::{done, emit, refused};
use crate::table;

#[derive(Subcommand, Debug)]
pub enum HostKeyCmd {
    /// Set or rotate a host's keys (DHHC-1 secrets, as `nvme gen-dhchap-key`
    /// prints them).
    Set {
        #[arg(long)]
        nqn: String,
        /// The host NQN.
        #[arg(long)]
        host: String,
        /// The host's secret.
        #[arg(long)]
        key: String,
        /// The controller's secret, for bidirectional authentication.
        #[arg(long)]
        ctrl_key: Option<String>,
        /// sha256 (default), sha384 or sha512.
        #[arg(long)]
        hash: Option<String>,
        /// null (default), ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192.
        #[arg(long)]
        dhgroup: Option<String>,
    },
    /// Clear a host's keys: it connects without authenticating from then on.
    Clear {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        host: String,
    },
    /// The hosts that must authenticate, per subsystem (never the secrets).
    List {
        #[arg(long)]
        nqn: Option<String>,
    },
}

pub async fn run(j: bool, ch: Channel, c: &HostKeyCmd) -> Result<(), String> {
    let mut api = SubsystemsClient::new(ch);
    match c {
        HostKeyCmd::Set {
            nqn,
            host,
            key,
            ctrl_key,
            hash,
            dhgroup,
        } => {
            let k = api
                .set_host_key(pb::SetHostKeyRequest {
                    nqn: nqn.clone(),
                    host: host.clone(),
                    key: key.clone(),
                    ctrl_key: ctrl_key.clone().unwrap_or_default(),
                    hash: hash.clone().unwrap_or_default(),
                    dhgroup: dhgroup.clone().unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            done(
                j,
                &format!(
                    "keys of {host} on {nqn} set ({}, {}, {})",
                    k.hash,
                    k.dhgroup,
                    if k.bidirectional {
                        "bidirectional"
                    } else {
                        "unidirectional"
                    }
                ),
            );
            Ok(())
        }
        HostKeyCmd::Clear { nqn, host } => {
            api.clear_host_key(pb::ClearHostKeyRequest {
                nqn: nqn.clone(),
                host: host.clone(),
            })
            .await
            .map_err(refused)?;
            done(j, &format!("keys of {host} on {nqn} cleared"));
            Ok(())
        }
        HostKeyCmd::List { nqn } => {
            let subs = api
                .list_subsystems(pb::ListSubsystemsRequest {
                    nqn: nqn.clone().unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner()
                .subsystems;
            let rows: Vec<(String, pb::HostKey)> = subs
                .into_iter()
                .flat_map(|s| {
                    let nqn = s.nqn;
                    s.host_keys.into_iter().map(move |k| (nqn.clone(), k))
                })
                .collect();
            let keys: Vec<&pb::HostKey> = rows.iter().map(|(_, k)| k).collect();
            emit(j, &keys, |_| {
                table::print(
                    &["SUBSYSTEM", "HOST", "HASH", "DHGROUP", "DIRECTION"],
                    &rows
                        .iter()
                        .map(|(n, k)| {
                            vec![
                                n.clone(),
                                k.host.clone(),
                                k.hash.clone(),
                                k.dhgroup.clone(),
                                if k.bidirectional { "both" } else { "host" }.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            })
        }
    }
}
