//! ControllerPublishVolume / ControllerUnpublishVolume: the attach step. The CO
//! (Kubernetes' external-attacher, for a CSIDriver with `attachRequired: true`)
//! attaches a volume to the node whose pod uses it before that node stages it, and
//! detaches it after the pod is gone. The attachment is kept in the Volume's
//! `spec.published`, so every controller replica and a restarted one see it.
//!
//! A LightPool volume is used by one node at a time, so a volume attached to one
//! node is refused to another with FAILED_PRECONDITION, naming the node that holds
//! it (the CSI code for "published to another node"). The publish context names the
//! node, and the node plugin stages only a volume whose context names its own node
//! ([`PUBLISHED_NODE`]): a node asked to stage a volume another node holds refuses
//! before it connects anything.
//!
//! Codes: INVALID_ARGUMENT for a missing field or a capability this driver does not
//! serve, NOT_FOUND for a missing volume, ALREADY_EXISTS for a second attach to the
//! same node with another read-only flag, FAILED_PRECONDITION for a volume attached
//! elsewhere, being deleted, or not ready, ABORTED while another call on the volume
//! is in flight or the volume changed meanwhile. Unpublishing a volume or node that
//! is not there is answered OK (the spec's idempotence).

use std::collections::HashMap;

use lightpool_model::{PlacementHint, Publication, Volume, VolumePhase};
use lightpool_store::Store;
use tonic::Status;

use super::{check_capabilities, store_err, CsiController};
use crate::v1 as csi;
use crate::v1::volume_capability::access_mode::Mode;

/// The publish-context key naming the node a volume is attached to.
pub const PUBLISHED_NODE: &str = "publishedNode";

/// Tries at deciding on a volume the control plane keeps changing (its status).
const RETRIES: usize = 20;

fn busy(id: &str) -> Status {
    Status::aborted(format!(
        "volume {id} kept changing while being attached or detached: call again"
    ))
}

fn context(node: &str) -> HashMap<String, String> {
    HashMap::from([(PUBLISHED_NODE.to_string(), node.to_string())])
}

/// The nodes a volume is attached to, for ListVolumes.
pub(super) fn published_nodes(v: &Volume) -> Vec<String> {
    v.spec.published.iter().map(|p| p.node.clone()).collect()
}

impl<S: Store> CsiController<S> {
    /// Writes the volume's attachments, on the version that was read: `false` when
    /// the volume changed meanwhile (its status moves as the control plane works),
    /// and the caller decides again on what it is now.
    async fn set_published(&self, v: &Volume, published: Vec<Publication>) -> Result<bool, Status> {
        let name = v.metadata.name.clone().unwrap_or_default();
        let mut spec = v.spec.clone();
        spec.published = published;
        let mut next = Volume::new(&name, spec);
        next.metadata.resource_version = v.metadata.resource_version.clone();
        next.metadata.labels = v.metadata.labels.clone();
        next.metadata.annotations = v.metadata.annotations.clone();
        match self.store.apply(&next).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    pub(super) async fn publish_(
        &self,
        r: csi::ControllerPublishVolumeRequest,
    ) -> Result<csi::ControllerPublishVolumeResponse, Status> {
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        if r.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id is required"));
        }
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        check_capabilities(std::slice::from_ref(cap)).map_err(Status::invalid_argument)?;
        let readonly = r.readonly
            || cap.access_mode.as_ref().map(|m| m.mode) == Some(Mode::SingleNodeReaderOnly as i32);
        let _held = self.hold(&r.volume_id)?;
        for _ in 0..RETRIES {
            if let Some(answer) = self
                .publish_once(&r.volume_id, &r.node_id, readonly)
                .await?
            {
                return Ok(answer);
            }
        }
        Err(busy(&r.volume_id))
    }

    /// One decision on the volume as it is now; `None` when it changed under the
    /// write.
    async fn publish_once(
        &self,
        id: &str,
        node: &str,
        readonly: bool,
    ) -> Result<Option<csi::ControllerPublishVolumeResponse>, Status> {
        let v = self.existing(id).await?;
        if v.metadata.deletion_timestamp.is_some() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is being deleted: it cannot be attached to node {node}"
            )));
        }
        if let Some(p) = v.spec.published.iter().find(|p| p.node == node) {
            if p.readonly != readonly {
                return Err(Status::already_exists(format!(
                    "volume {id} is attached to node {node} {}: detach it first to attach it {}",
                    if p.readonly {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if readonly { "read-only" } else { "read-write" }
                )));
            }
            return Ok(Some(csi::ControllerPublishVolumeResponse {
                publish_context: context(node),
            }));
        }
        if let Some(other) = v.spec.published.first() {
            return Err(Status::failed_precondition(format!(
                "volume {id} is attached to node {}: a LightPool volume is used by one node at a time; stop the pod using it on {} (Kubernetes then detaches it) before using it on node {node}",
                other.node, other.node
            )));
        }
        let st = v.status.clone().unwrap_or_default();
        if st.phase != VolumePhase::Ready {
            return Err(Status::failed_precondition(format!(
                "volume {id} is {:?}, not Ready: attach it once it is",
                st.phase
            )));
        }
        if v.spec.placement == PlacementHint::MustLocal {
            if let Some(home) = st.node.as_deref().filter(|h| *h != node) {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is MustLocal on node {home}: it can be attached only there (run the pod on node {home}, or use placement PreferLocal)"
                )));
            }
        }
        let mut published = v.spec.published.clone();
        published.push(Publication {
            node: node.to_string(),
            readonly,
        });
        if !self.set_published(&v, published).await? {
            return Ok(None);
        }
        tracing::info!(volume = %id, node, readonly, "volume attached");
        Ok(Some(csi::ControllerPublishVolumeResponse {
            publish_context: context(node),
        }))
    }

    pub(super) async fn unpublish_(
        &self,
        r: csi::ControllerUnpublishVolumeRequest,
    ) -> Result<csi::ControllerUnpublishVolumeResponse, Status> {
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let id = r.volume_id.as_str();
        let _held = self.hold(id)?;
        for _ in 0..RETRIES {
            let Some(v) = self.store.get::<Volume>(id).await.map_err(store_err)? else {
                return Ok(csi::ControllerUnpublishVolumeResponse {});
            };
            // An empty node_id detaches the volume from every node.
            let keep: Vec<Publication> = v
                .spec
                .published
                .iter()
                .filter(|p| !r.node_id.is_empty() && p.node != r.node_id)
                .cloned()
                .collect();
            if keep.len() == v.spec.published.len() {
                return Ok(csi::ControllerUnpublishVolumeResponse {});
            }
            if self.set_published(&v, keep).await? {
                tracing::info!(volume = %id, node = %r.node_id, "volume detached");
                return Ok(csi::ControllerUnpublishVolumeResponse {});
            }
        }
        Err(busy(id))
    }
}
