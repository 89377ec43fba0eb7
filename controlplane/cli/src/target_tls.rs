//! `lightpool target tls-key ...`: the NVMe/TCP TLS pre-shared keys ONE running
//! lightpool-target holds per host and subsystem (the Subsystems service): set or
//! replace, clear, list. New handshakes use a changed key; connections already in TLS
//! stay. Keys go to the target only; they are never printed.

use clap::Subcommand;
use lightpool_api::v1 as pb;
use lightpool_api::v1::subsystems_client::SubsystemsClient;
use tonic::transport::Channel;

use crate::cmd::{clear_host_key, done, list_host_keys, refused, Column};

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
            let clear = async |nqn, host| {
                api.clear_tls_key(pb::ClearTlsKeyRequest { nqn, host })
                    .await
            };
            clear_host_key(j, nqn, host, "TLS key", clear).await
        }
        TlsKeyCmd::List { nqn } => {
            let columns: [Column<pb::TlsKey>; 4] = [
                ("HOST", |k| k.host.clone()),
                ("HASH", |k| k.hash.clone()),
                ("TRANSFORM", |k| k.transform.clone()),
                ("IDENTITY", |k| k.identity.clone()),
            ];
            list_host_keys(j, &mut api, nqn, |s| (s.nqn, s.tls_keys), &columns).await
        }
    }
}
