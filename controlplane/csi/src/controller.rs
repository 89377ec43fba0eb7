//! The Controller service: volumes as Volume objects in the control plane's store.
//!
//! CreateVolume writes the Volume (placement hint, provisioning and selectors from
//! the StorageClass, the consumer node from the topology the CO prefers) and answers
//! once the scheduler placed it and the agent of its node published it; a volume no
//! pool can take is refused with RESOURCE_EXHAUSTED and the scheduler's reasons, and
//! its object removed, so nothing is left half made. DeleteVolume deletes the object
//! (the controller takes the dataplane side down in order) and waits until it is
//! gone. Calls for a volume that already has one in flight get ABORTED.
//! Snapshots, and volumes restored from them: [`snapshots`]. Online expansion and
//! volumes cloned from volumes: [`expand`].

mod expand;
pub mod publish;
mod snapshots;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightpool_model::quantity::human_bytes;
use lightpool_model::validate::{validate_volume, validate_volume_against};
use lightpool_model::{PlacementHint, Quantity, StoragePool, Volume, VolumePhase, VolumeSpec};
use lightpool_store::{Deleted, Store, StoreError};
use tonic::{Request, Response, Status};

use crate::params::{self, VolumeParams};
use crate::v1 as csi;
use crate::v1::controller_service_capability::rpc::Type as Rpc;
use crate::v1::volume_capability::access_mode::Mode;
use crate::v1::volume_capability::AccessType;

/// A volume's size when the CO asks for none.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// Sizes are whole MiB (the pools' allocation unit divides it).
const ROUND: u64 = 1 << 20;

type Res<T> = Result<Response<T>, Status>;

/// The Controller service over a store.
#[derive(Clone)]
pub struct CsiController<S> {
    store: S,
    /// How long CreateVolume and DeleteVolume wait before DEADLINE_EXCEEDED (the CO
    /// calls again; the work goes on).
    wait: Duration,
    /// Volumes with a call in flight.
    busy: Arc<Mutex<BTreeSet<String>>>,
}

/// A name held for one call: released when dropped.
struct Busy<'a> {
    set: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.name);
        }
    }
}

/// The `[start, end)` of a page of `len` entries from a token this driver gave.
fn page(token: &str, max_entries: i32, len: usize) -> Result<(usize, usize), Status> {
    let start = if token.is_empty() {
        0
    } else {
        token
            .parse::<usize>()
            .ok()
            .filter(|s| *s <= len)
            .ok_or_else(|| {
                Status::aborted(format!(
                    "starting_token {token:?} is not one this driver gave: list from the start"
                ))
            })?
    };
    let n = if max_entries > 0 {
        max_entries as usize
    } else {
        usize::MAX
    };
    Ok((start, start.saturating_add(n).min(len)))
}

fn store_err(e: StoreError) -> Status {
    Status::unavailable(format!("the control plane's store: {e}"))
}

/// The modes and types this driver serves: one node at a time (an NVMe namespace
/// with a local file system), as a block device or ext4/xfs.
pub fn check_capabilities(caps: &[csi::VolumeCapability]) -> Result<(), String> {
    if caps.is_empty() {
        return Err("volume_capabilities is empty: give at least one".into());
    }
    for c in caps {
        let mode = c
            .access_mode
            .as_ref()
            .and_then(|m| Mode::try_from(m.mode).ok())
            .unwrap_or(Mode::Unknown);
        match mode {
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter => {}
            m => {
                return Err(format!(
                    "access mode {} is not served: a LightPool volume is used by one node at a time (ReadWriteOnce or ReadWriteOncePod)",
                    m.as_str_name()
                ))
            }
        }
        match &c.access_type {
            Some(AccessType::Block(_)) => {}
            Some(AccessType::Mount(m)) => match m.fs_type.as_str() {
                "" | "ext4" | "xfs" => {}
                other => {
                    return Err(format!(
                    "file system {other:?} is not served: use ext4 or xfs (or volumeMode: Block)"
                ))
                }
            },
            None => return Err("a volume capability has no access type (block or mount)".into()),
        }
    }
    Ok(())
}

/// The size to create for `range`: at least `required_bytes`, at most `limit_bytes`,
/// rounded up to a MiB.
pub fn size_for(range: Option<&csi::CapacityRange>) -> Result<u64, Status> {
    let (req, lim) = range.map_or((0, 0), |r| (r.required_bytes, r.limit_bytes));
    if req < 0 || lim < 0 {
        return Err(Status::out_of_range("capacity_range holds a negative size"));
    }
    let (req, lim) = (req as u64, lim as u64);
    let want = if req == 0 {
        if lim != 0 && lim < DEFAULT_SIZE {
            lim
        } else {
            DEFAULT_SIZE
        }
    } else {
        req
    };
    let size = want.div_ceil(ROUND).saturating_mul(ROUND);
    if lim != 0 && size > lim {
        return Err(Status::out_of_range(format!(
            "no size in whole MiB lies between required_bytes {req} and limit_bytes {lim}: widen the range"
        )));
    }
    Ok(size)
}

/// The node the CO wants the volume used from (WaitForFirstConsumer: the pod's).
fn consumer(t: Option<&csi::TopologyRequirement>) -> Option<String> {
    let t = t?;
    t.preferred
        .iter()
        .chain(t.requisite.iter())
        .find_map(|s| s.segments.get(crate::TOPOLOGY_NODE).cloned())
}

fn same_request(have: &VolumeSpec, want: &VolumeSpec) -> Result<(), String> {
    let mut diffs = Vec::new();
    let (h, w) = (have.size.bytes().ok(), want.size.bytes().ok());
    if h != w {
        diffs.push(format!(
            "size {} (asked {})",
            have.size.as_str(),
            want.size.as_str()
        ));
    }
    if have.provisioning != want.provisioning {
        diffs.push(format!("provisioning {:?}", have.provisioning));
    }
    if have.placement != want.placement {
        diffs.push(format!("placement {}", have.placement.as_str()));
    }
    if have.source_snapshot != want.source_snapshot {
        diffs.push(format!(
            "source snapshot {}",
            have.source_snapshot.as_deref().unwrap_or("none")
        ));
    }
    if have.source_volume != want.source_volume {
        diffs.push(format!(
            "source volume {}",
            have.source_volume.as_deref().unwrap_or("none")
        ));
    }
    if have.affinity != want.affinity || have.spread != want.spread {
        diffs.push("other selectors or spread group".into());
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join(", "))
    }
}

/// The CSI view of a ready volume.
fn csi_volume(v: &Volume) -> csi::Volume {
    let st = v.status.clone().unwrap_or_default();
    let mut ctx = HashMap::new();
    if let Some(t) = &st.target {
        ctx.insert("nqn".to_string(), t.nqn.clone());
        ctx.insert("nsid".to_string(), t.nsid.to_string());
        if let Some(u) = &t.uuid {
            ctx.insert("uuid".to_string(), u.clone());
        }
        // Every path the node connects to: "TRANSPORT ADRFAM ADDRESS PORT", comma
        // separated (see `crate::node`).
        let paths: Vec<String> = t
            .paths
            .iter()
            .map(|p| format!("{} {} {} {}", p.transport, p.adrfam, p.traddr, p.trsvcid))
            .collect();
        ctx.insert("paths".to_string(), paths.join(","));
    }
    if let Some(n) = &st.node {
        ctx.insert("node".to_string(), n.clone());
        // The volume on its node's dataplane, which the node plugin there exports
        // through ublk (the local path, see `crate::node`).
        ctx.insert(
            crate::node::local::CONTEXT_POOL_VOLUME.to_string(),
            format!(
                "{}/{}",
                lightpool_model::volume::NODE_POOL,
                v.metadata.name.as_deref().unwrap_or_default()
            ),
        );
    }
    // The node plugin refuses to stage a MustLocal volume on any other node.
    ctx.insert(
        "placement".to_string(),
        v.spec.placement.as_str().to_string(),
    );
    let accessible_topology = match (&st.node, v.spec.placement) {
        // Reached over NVMe/TCP from anywhere, except a MustLocal volume.
        (Some(n), PlacementHint::MustLocal) => vec![csi::Topology {
            segments: HashMap::from([(crate::TOPOLOGY_NODE.to_string(), n.clone())]),
        }],
        _ => Vec::new(),
    };
    csi::Volume {
        capacity_bytes: st
            .size_bytes
            .or_else(|| v.spec.size.bytes().ok())
            .unwrap_or(0) as i64,
        volume_id: v.metadata.name.clone().unwrap_or_default(),
        volume_context: ctx,
        content_source: match (&v.spec.source_snapshot, &v.spec.source_volume) {
            (Some(id), _) => Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: id.clone(),
                    },
                )),
            }),
            (None, Some(id)) => Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource {
                        volume_id: id.clone(),
                    },
                )),
            }),
            (None, None) => None,
        },
        accessible_topology,
    }
}

fn phase(v: &Volume) -> VolumePhase {
    v.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

impl<S: Store> CsiController<S> {
    /// The service over `store`; calls wait up to `wait` for the control plane.
    pub fn new(store: S, wait: Duration) -> Self {
        CsiController {
            store,
            wait,
            busy: Arc::default(),
        }
    }

    fn hold(&self, name: &str) -> Result<Busy<'_>, Status> {
        let mut s = self
            .busy
            .lock()
            .map_err(|_| Status::internal("the in-flight set is poisoned"))?;
        if !s.insert(name.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on volume {name} is in progress: retry once it ends"
            )));
        }
        Ok(Busy {
            set: &self.busy,
            name: name.to_string(),
        })
    }

    async fn pools(&self) -> Result<Vec<StoragePool>, Status> {
        Ok(self
            .store
            .list::<StoragePool>()
            .await
            .map_err(store_err)?
            .items)
    }

    /// Waits until `name` is ready, refused or failed.
    async fn settle(&self, name: &str) -> Result<Volume, Status> {
        let deadline = Instant::now() + self.wait;
        loop {
            let v = self
                .store
                .get::<Volume>(name)
                .await
                .map_err(store_err)?
                .ok_or_else(|| {
                    Status::aborted(format!("volume {name} was deleted while being created"))
                })?;
            match phase(&v) {
                VolumePhase::Ready => return Ok(v),
                VolumePhase::Rejected | VolumePhase::Failed => {
                    let st = v.status.clone().unwrap_or_default();
                    let why = st.message.unwrap_or_else(|| format!("{:?}", st.phase));
                    // Nothing half made: the next CreateVolume starts afresh.
                    let _ = self.store.delete::<Volume>(name, None).await;
                    return Err(if phase(&v) == VolumePhase::Rejected {
                        Status::resource_exhausted(format!(
                            "no pool can take volume {name}: {why}"
                        ))
                    } else {
                        Status::internal(format!("volume {name} failed: {why}"))
                    });
                }
                p if Instant::now() >= deadline => {
                    return Err(Status::deadline_exceeded(format!(
                        "volume {name} is not ready after {} s (phase {p:?}); it is still being made: call again",
                        self.wait.as_secs()
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[tonic::async_trait]
impl<S: Store> csi::controller_server::Controller for CsiController<S> {
    async fn create_volume(
        &self,
        r: Request<csi::CreateVolumeRequest>,
    ) -> Res<csi::CreateVolumeResponse> {
        let r = r.into_inner();
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        check_capabilities(&r.volume_capabilities).map_err(Status::invalid_argument)?;
        use csi::volume_content_source::Type as Source;
        let (source, source_volume) = match r
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => (None, None),
            Some(Source::Snapshot(s)) => (Some(s.snapshot_id.clone()), None),
            Some(Source::Volume(v)) if v.volume_id.is_empty() => {
                return Err(Status::invalid_argument(
                    "volume_content_source names no volume_id",
                ))
            }
            Some(Source::Volume(v)) => (None, Some(v.volume_id.clone())),
        };
        let p: VolumeParams = params::parse(&r.parameters).map_err(Status::invalid_argument)?;
        let consumer_node = consumer(r.accessibility_requirements.as_ref());
        let size = match (&source, &source_volume) {
            (Some(id), _) => self.restore_source(id, r.capacity_range.as_ref()).await?,
            (None, Some(id)) => {
                let (size, node) = self.clone_source(id, r.capacity_range.as_ref()).await?;
                // A clone shares its source's data: it lives on the source's node.
                if p.placement == PlacementHint::MustLocal
                    && consumer_node.is_some()
                    && node != consumer_node
                {
                    return Err(Status::resource_exhausted(format!(
                        "a clone of volume {id} is made on its node {}, and placement MustLocal asks for node {}: use the source's node, or placement PreferLocal (the clone is reached over NVMe/TCP)",
                        node.as_deref().unwrap_or("?"),
                        consumer_node.as_deref().unwrap_or("?")
                    )));
                }
                size
            }
            (None, None) => size_for(r.capacity_range.as_ref())?,
        };
        let spec = VolumeSpec {
            size: Quantity::from_bytes(size),
            provisioning: p.provisioning,
            placement: p.placement,
            consumer_node,
            affinity: p.affinity,
            spread: p.spread,
            source_snapshot: source,
            source_volume,
            published: Vec::new(),
        };
        if spec.placement == PlacementHint::MustLocal && spec.consumer_node.is_none() {
            return Err(Status::invalid_argument(format!(
                "placement MustLocal needs the pod's node: set volumeBindingMode: WaitForFirstConsumer on the StorageClass (no {} in accessibility_requirements)",
                crate::TOPOLOGY_NODE
            )));
        }
        validate_volume(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let _held = self.hold(&r.name)?;
        match self.store.get::<Volume>(&r.name).await.map_err(store_err)? {
            Some(v) => {
                same_request(&v.spec, &spec).map_err(|d| {
                    Status::already_exists(format!(
                        "volume {} exists with other parameters ({d}): use another name, or the same size and StorageClass",
                        r.name
                    ))
                })?;
                if v.metadata.deletion_timestamp.is_some() {
                    return Err(Status::aborted(format!(
                        "volume {} is being deleted: call again once it is gone",
                        r.name
                    )));
                }
            }
            None => {
                let pools = self.pools().await?;
                if let Err(e) = validate_volume_against(&spec, &pools) {
                    let sized = e.errors.iter().all(|f| f.field == "spec.size");
                    let msg = format!("volume {}: {e}", r.name);
                    return Err(if sized {
                        Status::resource_exhausted(msg)
                    } else {
                        Status::invalid_argument(msg)
                    });
                }
                self.store
                    .apply(&Volume::new(&r.name, spec))
                    .await
                    .map_err(store_err)?;
                tracing::info!(volume = %r.name, size = %human_bytes(size), "volume requested");
            }
        }
        let v = self.settle(&r.name).await?;
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(csi_volume(&v)),
        }))
    }

    async fn delete_volume(
        &self,
        r: Request<csi::DeleteVolumeRequest>,
    ) -> Res<csi::DeleteVolumeResponse> {
        let id = r.into_inner().volume_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let _held = self.hold(&id)?;
        if let Some(v) = self.store.get::<Volume>(&id).await.map_err(store_err)? {
            let nodes = publish::published_nodes(&v);
            if !nodes.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "volume {id} is attached to node {}: detach it (ControllerUnpublishVolume; Kubernetes does once no pod uses it) before deleting it",
                    nodes.join(", ")
                )));
            }
        }
        let deadline = Instant::now() + self.wait;
        match self.store.delete::<Volume>(&id, None).await {
            Ok(Deleted::Gone) => {}
            Ok(Deleted::Pending(_)) => loop {
                if self
                    .store
                    .get::<Volume>(&id)
                    .await
                    .map_err(store_err)?
                    .is_none()
                {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(format!(
                        "volume {id} is being taken down (its node has not confirmed after {} s): call again",
                        self.wait.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(store_err(e)),
        }
        tracing::info!(volume = %id, "volume deleted");
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        r: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Res<csi::ControllerPublishVolumeResponse> {
        self.publish_(r.into_inner()).await.map(Response::new)
    }

    async fn controller_unpublish_volume(
        &self,
        r: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Res<csi::ControllerUnpublishVolumeResponse> {
        self.unpublish_(r.into_inner()).await.map(Response::new)
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Res<csi::ValidateVolumeCapabilitiesResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        if r.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is empty"));
        }
        if self
            .store
            .get::<Volume>(&r.volume_id)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(Status::not_found(format!("no volume {}", r.volume_id)));
        }
        let refusal = check_capabilities(&r.volume_capabilities)
            .err()
            .or_else(|| params::parse(&r.parameters).err());
        Ok(Response::new(match refusal {
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: HashMap::new(),
                }),
                message: String::new(),
            },
            Some(m) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: m,
            },
        }))
    }

    async fn list_volumes(
        &self,
        r: Request<csi::ListVolumesRequest>,
    ) -> Res<csi::ListVolumesResponse> {
        let r = r.into_inner();
        let mut vs = self.store.list::<Volume>().await.map_err(store_err)?.items;
        vs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let (start, end) = page(&r.starting_token, r.max_entries, vs.len())?;
        let entries = vs[start..end]
            .iter()
            .map(|v| csi::list_volumes_response::Entry {
                volume: Some(csi_volume(v)),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: publish::published_nodes(v),
                    volume_condition: None,
                }),
            })
            .collect();
        Ok(Response::new(csi::ListVolumesResponse {
            entries,
            next_token: if end < vs.len() {
                end.to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn get_capacity(
        &self,
        r: Request<csi::GetCapacityRequest>,
    ) -> Res<csi::GetCapacityResponse> {
        let r = r.into_inner();
        check_capabilities(&r.volume_capabilities)
            .or_else(|e| {
                if r.volume_capabilities.is_empty() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(Status::invalid_argument)?;
        let p = params::parse(&r.parameters).map_err(Status::invalid_argument)?;
        let node = r
            .accessible_topology
            .as_ref()
            .and_then(|t| t.segments.get(crate::TOPOLOGY_NODE).cloned());
        let pools = self.pools().await?;
        let usable = pools.iter().filter(|pool| {
            let st = pool.status.clone().unwrap_or_default();
            st.health.schedulable()
                && !pool.spec.unschedulable
                // Only a MustLocal volume is bound to the node's own pools.
                && (p.placement != PlacementHint::MustLocal
                    || node.as_deref().is_none_or(|n| n == pool.spec.node.name))
        });
        let free: Vec<u64> = usable
            .map(|pool| pool.status.clone().unwrap_or_default().free_bytes)
            .collect();
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: free.iter().sum::<u64>() as i64,
            maximum_volume_size: Some(free.iter().copied().max().unwrap_or(0) as i64),
            minimum_volume_size: Some(ROUND as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _r: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Res<csi::ControllerGetCapabilitiesResponse> {
        let cap = |t: Rpc| csi::ControllerServiceCapability {
            r#type: Some(csi::controller_service_capability::Type::Rpc(
                csi::controller_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                cap(Rpc::CreateDeleteVolume),
                cap(Rpc::GetCapacity),
                cap(Rpc::ListVolumes),
                cap(Rpc::PublishUnpublishVolume),
                cap(Rpc::ListVolumesPublishedNodes),
                cap(Rpc::SingleNodeMultiWriter),
                cap(Rpc::CreateDeleteSnapshot),
                cap(Rpc::ListSnapshots),
                cap(Rpc::CloneVolume),
                cap(Rpc::ExpandVolume),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        r: Request<csi::CreateSnapshotRequest>,
    ) -> Res<csi::CreateSnapshotResponse> {
        let s = self.create_snapshot_(r.into_inner()).await?;
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(s),
        }))
    }

    async fn delete_snapshot(
        &self,
        r: Request<csi::DeleteSnapshotRequest>,
    ) -> Res<csi::DeleteSnapshotResponse> {
        self.delete_snapshot_(&r.into_inner().snapshot_id).await?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        r: Request<csi::ListSnapshotsRequest>,
    ) -> Res<csi::ListSnapshotsResponse> {
        Ok(Response::new(self.list_snapshots_(r.into_inner()).await?))
    }

    async fn get_snapshot(
        &self,
        _r: Request<csi::GetSnapshotRequest>,
    ) -> Res<csi::GetSnapshotResponse> {
        Err(Status::unimplemented(
            "GetSnapshot is not offered (no GET_SNAPSHOT capability): ListSnapshots with snapshot_id",
        ))
    }

    async fn controller_expand_volume(
        &self,
        r: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Res<csi::ControllerExpandVolumeResponse> {
        Ok(Response::new(self.expand_(r.into_inner()).await?))
    }

    async fn controller_get_volume(
        &self,
        _r: Request<csi::ControllerGetVolumeRequest>,
    ) -> Res<csi::ControllerGetVolumeResponse> {
        Err(Status::unimplemented("GET_VOLUME is not offered"))
    }

    async fn controller_modify_volume(
        &self,
        _r: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Res<csi::ControllerModifyVolumeResponse> {
        Err(Status::unimplemented("MODIFY_VOLUME is not offered"))
    }
}
