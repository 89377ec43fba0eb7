//! `lightpool target host-key ...`: the DH-HMAC-CHAP keys ONE running lightpool-target
//! holds per host and subsystem (the Subsystems service): set or rotate, clear, list.
//! A rotated key applies to the host's next authentication; live connections stay.
//! Secrets go to the target only; they are never printed.

use clap::Subcommand;
use lightpool_api::v1 as pb;
use lightpool_api::v1::subsystems_client::SubsystemsClient;
use tonic::transport::Channel;

use crate::cmd::{clear_host_key, done, list_host_keys, refused, Column};

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
            let clear = async |nqn, host| {
                api.clear_host_key(pb::ClearHostKeyRequest { nqn, host })
                    .await
            };
            clear_host_key(j, nqn, host, "keys", clear).await
        }
        HostKeyCmd::List { nqn } => {
            let columns: [Column<pb::HostKey>; 4] = [
                ("HOST", |k| k.host.clone()),
                ("HASH", |k| k.hash.clone()),
                ("DHGROUP", |k| k.dhgroup.clone()),
                ("DIRECTION", |k| {
                    if k.bidirectional { "both" } else { "host" }.to_string()
                }),
            ];
            list_host_keys(j, &mut api, nqn, |s| (s.nqn, s.host_keys), &columns).await
        }
    }
}
