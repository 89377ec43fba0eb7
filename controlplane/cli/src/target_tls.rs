//! `lightpool target tls-key ...`: the NVMe/TCP TLS pre-shared keys ONE running
//! lightpool-target holds per host and subsystem (the Subsystems service): set or
//! replace, clear, list. New handshakes use a changed key; connections already in TLS
//! stay. Keys go to the target only; they are never printed.

use clap::Subcommand;
use lightpool_api::v1 as pb;
use lightpool_api::v1::subsystems_client::SubsystemsClient;
use tonic::transport::Channel;

use crate::cmd::{done, emit, refused};
use crate::table;

#[derive(Subcommand, Debug)]
pub enum TlsKeyCmd {
    /// Set or replace a host's configured PSK (the NVMeTLSkey-1:... string
    /// `nvme gen-tls-key` prints).
    Set {
        #[arg(long)]
        nqn: String,
        /// The host NQN.
        #[arg(long)]
        host: String,
        #[arg(long)]
        key: String,
    },
    /// Remove a host's key: it can no longer connect in TLS.
    Clear {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        host: String,
    },
    /// The hosts with a TLS key, per subsystem, with the identity they offer (never
    /// the keys).
    List {
        #[arg(long)]
        nqn: Option<String>,
    },
}

pub async fn run(j: bool, ch: Channel, c: &TlsKeyCmd) -> Result<(), String> {
    let mut api = SubsystemsClient::new(ch);
    match c {
        TlsKeyCmd::Set { nqn, host, key } => {
            let k = api
                .set_tls_key(pb::SetTlsKeyRequest {
                    nqn: nqn.clone(),
                    host: host.clone(),
                    key: key.clone(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            done(
                j,
                &format!(
                    "TLS key of {host} on {nqn} set ({}, identity {})",
                    k.hash, k.identity
                ),
            );
            Ok(())
        }
        TlsKeyCmd::Clear { nqn, host } => {
            api.clear_tls_key(pb::ClearTlsKeyRequest {
                nqn: nqn.clone(),
                host: host.clone(),
            })
            .await
            .map_err(refused)?;
            done(j, &format!("TLS key of {host} on {nqn} cleared"));
            Ok(())
        }
        TlsKeyCmd::List { nqn } => {
            let subs = api
                .list_subsystems(pb::ListSubsystemsRequest {
                    nqn: nqn.clone().unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner()
                .subsystems;
            let rows: Vec<(String, pb::TlsKey)> = subs
                .into_iter()
                .flat_map(|s| {
                    let nqn = s.nqn;
                    s.tls_keys.into_iter().map(move |k| (nqn.clone(), k))
                })
                .collect();
            let keys: Vec<&pb::TlsKey> = rows.iter().map(|(_, k)| k).collect();
            emit(j, &keys, |_| {
                table::print(
                    &["SUBSYSTEM", "HOST", "HASH", "TRANSFORM", "IDENTITY"],
                    &rows
                        .iter()
                        .map(|(n, k)| {
                            vec![
                                n.clone(),
                                k.host.clone(),
                                k.hash.clone(),
                                k.transform.clone(),
                                k.identity.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )
            })
        }
    }
}
