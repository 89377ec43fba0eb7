//! A small CSI client for the guest tests (in the spirit of `csc`): one Node call per
//! run against a plugin's Unix socket. Prints `OK ...` and exits 0, or prints
//! `ERR <gRPC code> <message>` and exits 1.
//!
//! ```text
//! csi-client SOCKET info
//! csi-client SOCKET stage VOLUME STAGING block|ext4|xfs [KEY=VALUE...] [pub:KEY=VALUE...|pub:-]
//! csi-client SOCKET unstage VOLUME STAGING
//! csi-client SOCKET publish VOLUME STAGING TARGET block|ext4|xfs [ro]
//! csi-client SOCKET unpublish VOLUME TARGET
//! csi-client SOCKET stats VOLUME PATH
//! csi-client SOCKET expand VOLUME PATH block|ext4|xfs BYTES
//! ```

use std::collections::HashMap;

use hyper_util::rt::TokioIo;
use lightpool_csi::v1 as csi;
use lightpool_csi::v1::node_client::NodeClient;
use lightpool_csi::v1::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume,
};
use tonic::transport::{Endpoint, Uri};

fn cap(kind: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(if kind == "block" {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: kind.to_string(),
                ..Default::default()
            })
        }),
    }
}

fn usage() -> ! {
    eprintln!(
        "use: csi-client SOCKET info|stage|unstage|publish|unpublish|stats|expand ARGS (see the source)"
    );
    std::process::exit(2)
}

async fn call(sock: String, args: Vec<String>) -> Result<String, tonic::Status> {
    let ch = Endpoint::from_static("http://csi.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot reach the plugin: {e}")))?;
    let mut n = NodeClient::new(ch);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(match a.as_slice() {
        ["info"] => {
            let r = n
                .node_get_info(csi::NodeGetInfoRequest {})
                .await?
                .into_inner();
            format!(
                "node_id={} topology={:?}",
                r.node_id,
                r.accessible_topology.map(|t| t.segments)
            )
        }
        ["stage", vol, staging, kind, ctx @ ..] => {
            let volume_context: HashMap<String, String> = ctx
                .iter()
                .filter(|kv| !kv.starts_with("pub:"))
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            // What ControllerPublishVolume gave: `pub:KEY=VALUE` words, `pub:-` for
            // none; by default the attachment to the plugin's own node, as the CO
            // passes it after attaching the volume there.
            let words: Vec<&str> = ctx
                .iter()
                .filter_map(|kv| kv.strip_prefix("pub:"))
                .collect();
            let publish_context: HashMap<String, String> = if words.is_empty() {
                let me = n
                    .node_get_info(csi::NodeGetInfoRequest {})
                    .await?
                    .into_inner()
                    .node_id;
                HashMap::from([("publishedNode".to_string(), me)])
            } else {
                words
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            n.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: vol.to_string(),
                staging_target_path: staging.to_string(),
                volume_capability: Some(cap(kind)),
                volume_context,
                publish_context,
                ..Default::default()
            })
            .await?;
            "staged".into()
        }
        ["unstage", vol, staging] => {
            n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: vol.to_string(),
                staging_target_path: staging.to_string(),
            })
            .await?;
            "unstaged".into()
        }
        ["publish", vol, staging, target, kind, rest @ ..] => {
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: vol.to_string(),
                staging_target_path: staging.to_string(),
                target_path: target.to_string(),
                volume_capability: Some(cap(kind)),
                readonly: rest.first() == Some(&"ro"),
                ..Default::default()
            })
            .await?;
            "published".into()
        }
        ["unpublish", vol, target] => {
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: vol.to_string(),
                target_path: target.to_string(),
            })
            .await?;
            "unpublished".into()
        }
        ["stats", vol, path] => {
            let r = n
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: vol.to_string(),
                    volume_path: path.to_string(),
                    staging_target_path: String::new(),
                })
                .await?
                .into_inner();
            r.usage
                .iter()
                .map(|u| {
                    format!(
                        "unit={} total={} used={} available={}",
                        u.unit, u.total, u.used, u.available
                    )
                })
                .collect::<Vec<_>>()
                .join(" ; ")
        }
        ["expand", vol, path, kind, bytes] => {
            let required_bytes = bytes.parse::<i64>().unwrap_or_else(|_| usage());
            let r = n
                .node_expand_volume(csi::NodeExpandVolumeRequest {
                    volume_id: vol.to_string(),
                    volume_path: path.to_string(),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes,
                        limit_bytes: 0,
                    }),
                    volume_capability: Some(cap(kind)),
                    ..Default::default()
                })
                .await?
                .into_inner();
            format!("capacity_bytes={}", r.capacity_bytes)
        }
        _ => usage(),
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(sock) = args.next() else { usage() };
    let rest: Vec<String> = args.collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(call(sock, rest)) {
        Ok(s) => println!("OK {s}"),
        Err(s) => {
            println!("ERR {:?} {}", s.code(), s.message());
            std::process::exit(1);
        }
    }
}
