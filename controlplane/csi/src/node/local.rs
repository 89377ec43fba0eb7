//! The local path of the Node service: a volume on this node staged through the local
//! dataplane's ublk export (`ExportVolumeUblk` on its management API) instead of
//! NVMe/TCP. See the parent module.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lightpool_api::v1 as pb;
use lightpool_api::v1::pools_client::PoolsClient;
use tonic::{Code, Status};

use super::{format_and_mount, CsiNode};
use crate::v1 as csi;

/// The volume context's key naming the volume on its node's dataplane ("POOL/VOLUME").
pub const CONTEXT_POOL_VOLUME: &str = "pool_volume";
/// The volume context's key naming the node the volume lives on.
pub const CONTEXT_NODE: &str = "node";
/// How a staging record of the local path starts (then the pool volume).
pub const RECORD_PREFIX: &str = "ublk:";

/// The pool volume ("POOL/VOLUME") to stage locally, when the volume lives on this
/// node and the plugin knows the local dataplane; `None`: the NVMe/TCP path.
pub fn local_volume(node: &CsiNode, ctx: &HashMap<String, String>) -> Option<String> {
    let here = ctx.get(CONTEXT_NODE).is_some_and(|n| *n == node.node_id);
    let pv = ctx.get(CONTEXT_POOL_VOLUME).filter(|v| v.contains('/'))?;
    if !here {
        return None;
    }
    if node.dataplane_api.is_none() {
        tracing::info!(
            volume = %pv,
            "the volume is on this node, but the plugin has no --dataplane-api: staging it over NVMe/TCP"
        );
        return None;
    }
    Some(pv.clone())
}

fn split(pv: &str) -> (String, String) {
    let (p, v) = pv.split_once('/').unwrap_or((pv, ""));
    (p.to_string(), v.to_string())
}

/// The dataplane's refusal as this call's, with what was asked.
fn relay(pv: &str, what: &str, s: Status) -> Status {
    let m = format!(
        "local volume {pv}: {what} on this node's dataplane: {}",
        s.message()
    );
    match s.code() {
        Code::NotFound => Status::not_found(m),
        Code::FailedPrecondition => Status::failed_precondition(m),
        Code::InvalidArgument => Status::invalid_argument(m),
        Code::Unavailable => Status::unavailable(m),
        _ => Status::internal(m),
    }
}

/// Runs `f` with a client of the local dataplane's Pools service (blocking: the node
/// service calls it from a blocking thread of its runtime).
fn with_pools<T>(
    api: &Path,
    pv: &str,
    f: impl AsyncFnOnce(&mut PoolsClient<tonic::transport::Channel>) -> Result<T, Status>,
) -> Result<T, Status> {
    tokio::runtime::Handle::current().block_on(async {
        let ch = lightpool_api::connect(api.to_path_buf())
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "local volume {pv}: this node's dataplane API {} does not answer: {e}",
                    api.display()
                ))
            })?;
        f(&mut PoolsClient::new(ch)).await
    })
}

/// Exports `pv` as ublk; its /dev/ublkbN.
fn export(api: &Path, pv: &str) -> Result<PathBuf, Status> {
    let (pool, name) = split(pv);
    let v = with_pools(api, pv, async |c| {
        c.export_volume_ublk(pb::ExportVolumeUblkRequest {
            pool,
            name,
            queue_depth: 0,
        })
        .await
        .map_err(|s| relay(pv, "export through ublk", s))
    })?
    .into_inner();
    v.ublk_device.map(PathBuf::from).ok_or_else(|| {
        Status::internal(format!(
            "local volume {pv}: the dataplane exported it but named no device"
        ))
    })
}

/// Stops the ublk export of `pv` (idempotent).
pub fn stop(node: &CsiNode, pv: &str) -> Result<(), Status> {
    let Some(api) = &node.dataplane_api else {
        return Err(Status::failed_precondition(format!(
            "volume {pv} was staged through ublk, but this node plugin has no --dataplane-api to stop it"
        )));
    };
    let (pool, name) = split(pv);
    match with_pools(api, pv, async |c| {
        c.stop_volume_ublk(pb::StopVolumeUblkRequest { pool, name })
            .await
            .map_err(|s| relay(pv, "stop the ublk export", s))
    }) {
        Ok(_) => Ok(()),
        // The volume is gone already: nothing is exported.
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s),
    }
}

impl CsiNode {
    /// Stages pool volume `pv` of this node through ublk; undone on failure.
    pub(super) fn stage_local(
        &self,
        r: &csi::NodeStageVolumeRequest,
        cap: &csi::VolumeCapability,
        pv: &str,
    ) -> Result<(), Status> {
        let staging = Path::new(&r.staging_target_path);
        let tag = format!("{RECORD_PREFIX}{pv}");
        if let Some((first, _, at)) = self.staged(&r.volume_id) {
            if at != r.staging_target_path {
                return Err(Status::failed_precondition(format!(
                    "volume {} is staged at {at} on this node: unstage it there first",
                    r.volume_id
                )));
            }
            if first == tag && (super::fs_of(cap).is_none() || super::host::is_mounted(staging)) {
                return Ok(());
            }
        }
        let api = self
            .dataplane_api
            .as_deref()
            .ok_or_else(|| Status::internal("the local path was chosen without a dataplane API"))?;
        std::fs::create_dir_all(&self.state_dir).map_err(|e| {
            Status::internal(format!("state directory {}: {e}", self.state_dir.display()))
        })?;
        let dev = export(api, pv)?;
        let res = format_and_mount(&r.volume_id, cap, &dev, staging).and_then(|()| {
            std::fs::write(
                self.record(&r.volume_id),
                format!("{tag}\n{}\n{}\n", dev.display(), r.staging_target_path),
            )
            .map_err(|e| Status::internal(format!("staging record: {e}")))
        });
        if let Err(e) = res {
            if let Err(u) = stop(self, pv) {
                tracing::warn!(volume = %r.volume_id, error = %u, "the ublk export was not undone");
            }
            return Err(e);
        }
        tracing::info!(volume = %r.volume_id, device = %dev.display(), "staged locally through ublk");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(api: Option<&str>) -> CsiNode {
        CsiNode {
            node_id: "n1".into(),
            state_dir: PathBuf::from("/nonexistent"),
            device_timeout: std::time::Duration::from_secs(1),
            hostnqn: None,
            dataplane_api: api.map(PathBuf::from),
        }
    }

    fn ctx(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_a_volume_on_this_node_with_a_dataplane_api_goes_local() {
        let here = ctx(&[("node", "n1"), ("pool_volume", "node/v1")]);
        assert_eq!(
            local_volume(&node(Some("/run/api.sock")), &here).as_deref(),
            Some("node/v1")
        );
        // No API to ask: NVMe/TCP.
        assert_eq!(local_volume(&node(None), &here), None);
        // Another node's volume: NVMe/TCP.
        let there = ctx(&[("node", "n2"), ("pool_volume", "node/v1")]);
        assert_eq!(local_volume(&node(Some("/run/api.sock")), &there), None);
        // A context without the pool volume (an older controller's): NVMe/TCP.
        assert_eq!(
            local_volume(&node(Some("/run/api.sock")), &ctx(&[("node", "n1")])),
            None
        );
    }

    #[test]
    fn the_dataplanes_refusal_keeps_its_code_and_says_what_was_asked() {
        let s = relay(
            "node/v1",
            "export through ublk",
            Status::failed_precondition("run `modprobe ublk_drv`"),
        );
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("node/v1") && s.message().contains("modprobe ublk_drv"));
        assert_eq!(
            relay("p/v", "x", Status::not_found("no")).code(),
            Code::NotFound
        );
        assert_eq!(split("node/v1"), ("node".to_string(), "v1".to_string()));
    }
}
