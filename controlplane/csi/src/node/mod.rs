//! The Node service: stage a volume by connecting the kernel's NVMe/TCP initiator to
//! every path the volume is published on (the kernel's native multipath makes one
//! device of them, honouring ANA), find its namespace by subsystem NQN, NSID and
//! UUID (never by enumeration order), and, for a file-system volume, make a file
//! system only where the device holds none and mount it at the staging path.
//! Publish bind-mounts the staged volume (or the device, in block mode) into the
//! pod. Every step is undone when a later one fails, and unstaging disconnects only
//! this volume's subsystem (each volume has its own NQN).
//!
//! The local path: when the volume lives on this node (its context's `node` is this
//! node's id) and the plugin knows the local dataplane's management API
//! (`--dataplane-api`), staging asks that dataplane to serve the volume
//! (`pool_volume` of the context) to this kernel as /dev/ublkbN (ublk) and uses that
//! device instead of NVMe/TCP: no network, no TCP stack on the I/O path. Unstaging
//! stops it. A volume on another node, or a node plugin without the API, takes the
//! NVMe/TCP path as before.
//!
//! NodeExpandVolume waits (bounded) for the kernel's device to show the size the
//! volume grew to (the target tells connected hosts; a rescan is asked for while
//! it does not), then grows ext4 with resize2fs or xfs with xfs_growfs; a block
//! volume gets only the size check. A MustLocal volume held by another node is
//! refused before anything is connected.
//!
//! What staging learned is kept in `STATE_DIR/VOLUME.stage` (the NQN, or `ublk:` and
//! the pool volume, and the device), so that unstaging, which the CO calls with only
//! the volume's id and path, undoes exactly that.

pub mod host;
pub mod local;
pub mod paths;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::controller::check_capabilities;
use crate::v1 as csi;
use crate::v1::node_service_capability::rpc::Type as Rpc;
use crate::v1::volume_capability::AccessType;
use host::{HostError, Path4};

type Res<T> = Result<Response<T>, Status>;

/// The Node service of one node.
#[derive(Debug, Clone)]
pub struct CsiNode {
    /// This node's name (the topology segment, the node id).
    pub node_id: String,
    /// Where staging records are kept.
    pub state_dir: PathBuf,
    /// How long staging waits for the namespace to appear.
    pub device_timeout: Duration,
    /// The host NQN to connect with (default: nvme-cli's /etc/nvme/hostnqn).
    pub hostnqn: Option<String>,
    /// The local dataplane's management API socket: volumes on this node are staged
    /// through ublk. `None`: every volume over NVMe/TCP.
    pub dataplane_api: Option<PathBuf>,
}

/// What NodeStageVolume needs from the volume's context (CreateVolume's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub nqn: String,
    pub nsid: u32,
    pub uuid: Option<String>,
    pub paths: Vec<Path4>,
}

/// Reads the context CreateVolume gave (see `controller::csi_volume`).
pub fn target_of(ctx: &std::collections::HashMap<String, String>) -> Result<Target, String> {
    let need = |k: &str| {
        ctx.get(k).filter(|v| !v.is_empty()).cloned().ok_or_else(|| {
            format!("volume_context has no {k:?}: was the volume made by csi.lightpool.io? (its PersistentVolume must carry the context CreateVolume returned)")
        })
    };
    let nqn = need("nqn")?;
    let nsid = need("nsid")?
        .parse::<u32>()
        .map_err(|_| "volume_context nsid is not a number".to_string())?;
    let paths = need("paths")?
        .split(',')
        .map(|p| {
            let f: Vec<&str> = p.split_whitespace().collect();
            match f.as_slice() {
                [t, _fam, a, s] => Ok(Path4 {
                    transport: t.to_string(),
                    traddr: a.to_string(),
                    trsvcid: s.to_string(),
                }),
                _ => Err(format!(
                    "volume_context path {p:?} is not \"TRANSPORT ADRFAM ADDRESS PORT\""
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Target {
        nqn,
        nsid,
        uuid: ctx.get("uuid").filter(|u| !u.is_empty()).cloned(),
        paths,
    })
}

fn internal(e: HostError) -> Status {
    Status::internal(e.to_string())
}

/// For a file-system volume: a file system made only where the device holds none, and
/// mounted at the staging path. Nothing for a block volume.
fn format_and_mount(
    volume: &str,
    cap: &csi::VolumeCapability,
    dev: &Path,
    staging: &Path,
) -> Result<(), Status> {
    let Some(fs) = fs_of(cap) else {
        return Ok(());
    };
    let have = host::fs_type(dev).map_err(internal)?;
    if have.is_empty() {
        tracing::info!(volume, device = %dev.display(), fs, "making a file system");
        host::mkfs(dev, &fs).map_err(internal)?;
    } else if have != fs {
        return Err(Status::failed_precondition(format!(
            "volume {volume} holds a {have} file system, not {fs}: ask for fsType {have}, or wipe the volume"
        )));
    }
    std::fs::create_dir_all(staging)
        .map_err(|e| Status::internal(format!("staging path {}: {e}", staging.display())))?;
    if !host::is_mounted(staging) {
        host::mount(dev, staging, Some(&fs), false).map_err(internal)?;
    }
    Ok(())
}

fn fs_of(cap: &csi::VolumeCapability) -> Option<String> {
    match &cap.access_type {
        Some(AccessType::Mount(m)) => Some(if m.fs_type.is_empty() {
            "ext4".to_string()
        } else {
            m.fs_type.clone()
        }),
        _ => None,
    }
}

impl CsiNode {
    fn record(&self, volume: &str) -> PathBuf {
        self.state_dir.join(format!("{volume}.stage"))
    }

    /// The staging record: NQN, device and staging path.
    fn staged(&self, volume: &str) -> Option<(String, PathBuf, String)> {
        let text = std::fs::read_to_string(self.record(volume)).ok()?;
        let mut it = text.lines();
        Some((
            it.next()?.to_string(),
            PathBuf::from(it.next()?),
            it.next().unwrap_or_default().to_string(),
        ))
    }

    /// Connect, find, format and mount; undone on failure.
    fn stage(&self, r: &csi::NodeStageVolumeRequest) -> Result<(), Status> {
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        check_capabilities(std::slice::from_ref(cap)).map_err(Status::invalid_argument)?;
        // Refused before anything is connected.
        self.check_published(&r.volume_id, &r.publish_context)?;
        self.check_owner(&r.volume_id, &r.volume_context)?;
        let staging = Path::new(&r.staging_target_path);
        if let Some(pv) = local::local_volume(self, &r.volume_context) {
            return self.stage_local(r, cap, &pv);
        }
        let t = target_of(&r.volume_context).map_err(Status::invalid_argument)?;
        if let Some((nqn, _, at)) = self.staged(&r.volume_id) {
            if at != r.staging_target_path {
                return Err(Status::failed_precondition(format!(
                    "volume {} is staged at {at} on this node: unstage it there first",
                    r.volume_id
                )));
            }
            if nqn == t.nqn && (fs_of(cap).is_none() || host::is_mounted(staging)) {
                return Ok(());
            }
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|e| {
            Status::internal(format!("state directory {}: {e}", self.state_dir.display()))
        })?;
        let mut made = Vec::new();
        let mut last = None;
        for p in &t.paths {
            match host::connect(&t.nqn, p, self.hostnqn.as_deref()) {
                Ok(true) => made.push(p.clone()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(volume = %r.volume_id, path = ?p, error = %e, "a path did not connect");
                    last = Some(e);
                }
            }
        }
        let undo = |made: &[Path4]| {
            for p in made {
                host::disconnect_path(&t.nqn, p);
            }
        };
        let connected = t
            .paths
            .iter()
            .any(|p| !host::controllers_on(&t.nqn, p).is_empty());
        if !connected {
            undo(&made);
            return Err(Status::unavailable(format!(
                "no path to volume {} connected: {}",
                r.volume_id,
                last.map_or("no paths".into(), |e| e.to_string())
            )));
        }
        let dev = match host::wait_device(&t.nqn, t.nsid, t.uuid.as_deref(), self.device_timeout) {
            Ok(d) => d,
            Err(e) => {
                undo(&made);
                return Err(Status::deadline_exceeded(e.to_string()));
            }
        };
        if let Err(e) = format_and_mount(&r.volume_id, cap, &dev, staging) {
            undo(&made);
            return Err(e);
        }
        std::fs::write(
            self.record(&r.volume_id),
            format!("{}\n{}\n{}\n", t.nqn, dev.display(), r.staging_target_path),
        )
        .map_err(|e| Status::internal(format!("staging record: {e}")))?;
        tracing::info!(volume = %r.volume_id, device = %dev.display(), "staged");
        Ok(())
    }

    /// A volume is staged only on the node it is attached to: the publish context
    /// ControllerPublishVolume gave names that node. A volume attached to another
    /// node, or never attached, is refused with FAILED_PRECONDITION before anything
    /// is connected.
    fn check_published(
        &self,
        volume: &str,
        publish: &std::collections::HashMap<String, String>,
    ) -> Result<(), Status> {
        use crate::controller::publish::PUBLISHED_NODE;
        match publish.get(PUBLISHED_NODE) {
            Some(n) if *n == self.node_id => Ok(()),
            Some(n) => Err(Status::failed_precondition(format!(
                "volume {volume} is attached to node {n}, not this node {}: a volume is used by one node at a time; stop the pod using it on {n} first; nothing was connected",
                self.node_id
            ))),
            None => Err(Status::failed_precondition(format!(
                "volume {volume} has no {PUBLISHED_NODE:?} in its publish context: it was not attached to this node by ControllerPublishVolume (the CSIDriver must say attachRequired: true, as deploy/csi/csidriver.yaml does); nothing was connected"
            ))),
        }
    }

    /// A MustLocal volume is used only on the node that holds it (its accessible
    /// topology says so, and the control plane placed it for that node's pods):
    /// another node asked to stage it is refused with FAILED_PRECONDITION (the CSI
    /// code for a volume whose use conflicts with where it is), naming the node.
    fn check_owner(
        &self,
        volume: &str,
        ctx: &std::collections::HashMap<String, String>,
    ) -> Result<(), Status> {
        let owner = ctx.get("node").map(String::as_str).unwrap_or_default();
        let local_only = ctx.get("placement").map(String::as_str) == Some("MustLocal");
        if local_only && !owner.is_empty() && owner != self.node_id {
            return Err(Status::failed_precondition(format!(
                "volume {volume} is MustLocal and held by node {owner}, not this node {}: run the pod on node {owner} (the PersistentVolume's node affinity says so), or make the volume with placement PreferLocal to reach it over NVMe/TCP; nothing was connected",
                self.node_id
            )));
        }
        Ok(())
    }

    /// Waits for the kernel's device to show the size the volume grew to (bounded
    /// by the device timeout), then grows a file system on it; a block volume gets
    /// only the size check. Returns the device's size.
    fn expand(&self, r: &csi::NodeExpandVolumeRequest) -> Result<u64, Status> {
        let Some((nqn, dev, staging)) = self.staged(&r.volume_id) else {
            return Err(Status::not_found(format!(
                "volume {} is not staged on this node: nothing to expand here",
                r.volume_id
            )));
        };
        let path = Path::new(&r.volume_path);
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume_path {} does not exist on this node",
                path.display()
            )));
        }
        let want = r
            .capacity_range
            .as_ref()
            .map_or(0, |c| c.required_bytes.max(0) as u64);
        let size = host::wait_size(&nqn, &dev, want, self.device_timeout)
            .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
        let block = match r
            .volume_capability
            .as_ref()
            .and_then(|c| c.access_type.as_ref())
        {
            Some(AccessType::Block(_)) => true,
            Some(AccessType::Mount(_)) => false,
            // Without a capability: a block volume is published as a file.
            None => !path.is_dir(),
        };
        if !block {
            let fs = host::fs_type(&dev).map_err(internal)?;
            // The staging mount is the file system's; the publish path a bind of it.
            let mounted = if !staging.is_empty() && host::is_mounted(Path::new(&staging)) {
                PathBuf::from(&staging)
            } else {
                path.to_path_buf()
            };
            host::grow_fs(&dev, &fs, &mounted).map_err(internal)?;
            tracing::info!(volume = %r.volume_id, device = %dev.display(), fs, size, "file system grown");
        }
        Ok(size)
    }

    fn unstage(&self, volume: &str, staging: &Path) -> Result<(), Status> {
        host::umount(staging).map_err(internal)?;
        if let Some((first, _, _)) = self.staged(volume) {
            if let Some(pv) = first.strip_prefix(local::RECORD_PREFIX) {
                local::stop(self, pv)?;
                let _ = std::fs::remove_file(self.record(volume));
                tracing::info!(volume, "unstaged (local, ublk)");
                return Ok(());
            }
        }
        let nqn = self
            .staged(volume)
            .map(|(n, _, _)| n)
            .unwrap_or_else(|| lightpool_model::volume::volume_nqn(volume));
        host::disconnect(&nqn).map_err(internal)?;
        let _ = std::fs::remove_file(self.record(volume));
        tracing::info!(volume, "unstaged");
        Ok(())
    }

    fn publish(&self, r: &csi::NodePublishVolumeRequest) -> Result<(), Status> {
        let cap = r
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        check_capabilities(std::slice::from_ref(cap)).map_err(Status::invalid_argument)?;
        let target = Path::new(&r.target_path);
        if host::is_mounted(target) {
            return Ok(());
        }
        let Some((_, dev, _)) = self.staged(&r.volume_id) else {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged on this node: NodeStageVolume comes first",
                r.volume_id
            )));
        };
        let src = match fs_of(cap) {
            Some(_) => {
                std::fs::create_dir_all(target).map_err(|e| {
                    Status::internal(format!("target path {}: {e}", target.display()))
                })?;
                PathBuf::from(&r.staging_target_path)
            }
            None => {
                if let Some(d) = target.parent() {
                    std::fs::create_dir_all(d).map_err(|e| {
                        Status::internal(format!("target directory {}: {e}", d.display()))
                    })?;
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(target)
                    .map_err(|e| {
                        Status::internal(format!("target file {}: {e}", target.display()))
                    })?;
                dev
            }
        };
        host::mount(&src, target, None, r.readonly).map_err(internal)
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for CsiNode {
    async fn node_stage_volume(
        &self,
        r: Request<csi::NodeStageVolumeRequest>,
    ) -> Res<csi::NodeStageVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.staging_target_path.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and staging_target_path are required",
            ));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.stage(&r))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        r: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Res<csi::NodeUnstageVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.staging_target_path.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and staging_target_path are required",
            ));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.unstage(&r.volume_id, Path::new(&r.staging_target_path))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        r: Request<csi::NodePublishVolumeRequest>,
    ) -> Res<csi::NodePublishVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.target_path.is_empty() || r.staging_target_path.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id, staging_target_path and target_path are required",
            ));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.publish(&r))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Res<csi::NodeUnpublishVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.target_path.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and target_path are required",
            ));
        }
        let target = PathBuf::from(&r.target_path);
        tokio::task::spawn_blocking(move || -> Result<(), Status> {
            host::umount(&target).map_err(internal)?;
            // The directory (file system) or file (block) the mount needed.
            let _ = std::fs::remove_dir(&target).or_else(|_| std::fs::remove_file(&target));
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Res<csi::NodeGetVolumeStatsResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.volume_path.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and volume_path are required",
            ));
        }
        let p = PathBuf::from(&r.volume_path);
        let meta = std::fs::metadata(&p).map_err(|_| {
            Status::not_found(format!("{} does not exist on this node", p.display()))
        })?;
        use csi::volume_usage::Unit;
        let usage = if meta.is_dir() {
            let c = std::ffi::CString::new(r.volume_path.as_bytes())
                .map_err(|_| Status::invalid_argument("volume_path holds a NUL byte"))?;
            // SAFETY: statvfs is plain old data; all-zero is a valid value.
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: the path is NUL-terminated and `s` is a valid, writable struct.
            if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
                return Err(Status::internal(format!(
                    "statvfs {}: {}",
                    p.display(),
                    std::io::Error::last_os_error()
                )));
            }
            let b = s.f_frsize;
            vec![
                csi::VolumeUsage {
                    available: (s.f_bavail * b) as i64,
                    total: (s.f_blocks * b) as i64,
                    used: ((s.f_blocks - s.f_bfree) * b) as i64,
                    unit: Unit::Bytes as i32,
                },
                csi::VolumeUsage {
                    available: s.f_favail as i64,
                    total: s.f_files as i64,
                    used: (s.f_files - s.f_ffree) as i64,
                    unit: Unit::Inodes as i32,
                },
            ]
        } else {
            let dev = self
                .staged(&r.volume_id)
                .map(|(_, d, _)| d)
                .ok_or_else(|| {
                    Status::not_found(format!("volume {} is not staged here", r.volume_id))
                })?;
            vec![csi::VolumeUsage {
                total: host::device_size(&dev).unwrap_or(0) as i64,
                unit: Unit::Bytes as i32,
                ..Default::default()
            }]
        };
        Ok(Response::new(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: None,
        }))
    }

    async fn node_expand_volume(
        &self,
        r: Request<csi::NodeExpandVolumeRequest>,
    ) -> Res<csi::NodeExpandVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() || r.volume_path.is_empty() {
            return Err(Status::invalid_argument(
                "volume_id and volume_path are required",
            ));
        }
        if let Some(c) = &r.volume_capability {
            check_capabilities(std::slice::from_ref(c)).map_err(Status::invalid_argument)?;
        }
        let me = self.clone();
        let size = tokio::task::spawn_blocking(move || me.expand(&r))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(csi::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _r: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Res<csi::NodeGetCapabilitiesResponse> {
        let cap = |t: Rpc| csi::NodeServiceCapability {
            r#type: Some(csi::node_service_capability::Type::Rpc(
                csi::node_service_capability::Rpc { r#type: t as i32 },
            )),
        };
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(Rpc::StageUnstageVolume),
                cap(Rpc::GetVolumeStats),
                cap(Rpc::ExpandVolume),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _r: Request<csi::NodeGetInfoRequest>,
    ) -> Res<csi::NodeGetInfoResponse> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(csi::Topology {
                segments: [(crate::TOPOLOGY_NODE.to_string(), self.node_id.clone())].into(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, dir: &Path) -> CsiNode {
        CsiNode {
            node_id: id.into(),
            state_dir: dir.to_path_buf(),
            device_timeout: Duration::from_secs(1),
            hostnqn: None,
            dataplane_api: None,
        }
    }

    #[test]
    fn a_mustlocal_volume_held_by_another_node_is_refused_before_anything_is_connected() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = |placement: &str| {
            [
                ("nqn", "nqn.2024-01.io.lightpool:volume:v"),
                ("nsid", "1"),
                // Nothing listens here: a connect attempt would fail differently.
                ("paths", "tcp ipv4 192.0.2.1 4420"),
                ("node", "node-a"),
                ("placement", placement),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let req = |placement: &str| csi::NodeStageVolumeRequest {
            volume_id: "v".into(),
            staging_target_path: dir.path().join("stage").display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(csi::volume_capability::AccessMode {
                    mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Block(csi::volume_capability::BlockVolume {})),
            }),
            volume_context: ctx(placement),
            publish_context: [("publishedNode".to_string(), "node-b".to_string())].into(),
            ..Default::default()
        };
        let e = node("node-b", dir.path())
            .stage(&req("MustLocal"))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        for want in [
            "held by node node-a, not this node node-b",
            "run the pod on node node-a",
            "PreferLocal",
            "nothing was connected",
        ] {
            assert!(
                e.message().contains(want),
                "{want:?} not in {}",
                e.message()
            );
        }
        assert!(
            !dir.path().join("v.stage").exists(),
            "no staging record left"
        );
        // Its own node, or a volume reached over NVMe/TCP, passes the check.
        assert!(node("node-a", dir.path())
            .check_owner("v", &ctx("MustLocal"))
            .is_ok());
        assert!(node("node-b", dir.path())
            .check_owner("v", &ctx("PreferLocal"))
            .is_ok());
    }

    #[test]
    fn a_volume_is_staged_only_on_the_node_it_is_attached_to() {
        let dir = tempfile::tempdir().unwrap();
        let n = node("node-b", dir.path());
        let publish = |node: Option<&str>| -> std::collections::HashMap<String, String> {
            node.map(|n| ("publishedNode".to_string(), n.to_string()))
                .into_iter()
                .collect()
        };
        assert!(n.check_published("v", &publish(Some("node-b"))).is_ok());
        let e = n
            .check_published("v", &publish(Some("node-a")))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        for want in [
            "attached to node node-a, not this node node-b",
            "nothing was connected",
        ] {
            assert!(
                e.message().contains(want),
                "{want:?} not in {}",
                e.message()
            );
        }
        let e = n.check_published("v", &publish(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("attachRequired: true"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn the_context_createvolume_gives_is_read_and_bad_ones_are_named() {
        let ctx = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let t = target_of(&ctx(&[
            ("nqn", "nqn.2024-01.io.lightpool:volume:v"),
            ("nsid", "1"),
            ("paths", "tcp ipv4 10.0.0.1 4420,tcp ipv4 10.0.0.2 4420"),
        ]))
        .unwrap();
        assert_eq!(t.paths.len(), 2);
        assert_eq!(t.paths[1].traddr, "10.0.0.2");
        assert_eq!(t.uuid, None);
        let e = target_of(&ctx(&[("nsid", "1")])).unwrap_err();
        assert!(
            e.contains("\"nqn\"") && e.contains("csi.lightpool.io"),
            "{e}"
        );
        let e = target_of(&ctx(&[
            ("nqn", "n"),
            ("nsid", "1"),
            ("paths", "tcp 10.0.0.1"),
        ]))
        .unwrap_err();
        assert!(e.contains("TRANSPORT ADRFAM ADDRESS PORT"), "{e}");
    }
}
