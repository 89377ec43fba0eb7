//! The dataplane through the target's management API (gRPC on its Unix
//! socket): the node's pool is one of the target's own pools (the Pools
//! service), made on first use on a device named on the command line or on a
//! sparse file under the data directory (opened again, with its volumes, when
//! the target restarts); each pool volume is a volume of it, which a namespace
//! serves as the target's block device `POOL:VOLUME`.
//!
//! gRPC's ALREADY_EXISTS on a create and NOT_FOUND on a delete are success:
//! the agent's calls are idempotent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    listeners_client::ListenersClient, namespaces_client::NamespacesClient,
    pools_client::PoolsClient, subsystems_client::SubsystemsClient,
};
use tonic::transport::Channel;
use tonic::Code;

use crate::{
    Dataplane, DataplaneError, Export, MigrationStart, PoolInfo, PoolSnapshot, PoolVolume,
    SourceMigration,
};
use lightpool_api::v1::{ana_client::AnaClient, migrations_client::MigrationsClient};
use lightpool_model::volume::AnaState;
use lightpool_model::MigrationProgress;

/// The name of the node's pool among the target's pools.
pub const POOL: &str = lightpool_model::volume::NODE_POOL;

/// The node's pool on a target, over its management API.
#[derive(Clone)]
pub struct ApiDataplane {
    channel: Channel,
    /// The pool's device: a file or block device.
    device: PathBuf,
    /// A sparse file of this size is made when the device does not exist.
    capacity: u64,
    buffered: bool,
    overcommit: u32,
}

fn status(s: tonic::Status) -> DataplaneError {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            DataplaneError::Unavailable(s.message().to_string())
        }
        _ => DataplaneError::Refused(s.message().to_string()),
    }
}

fn io(what: &str, e: std::io::Error) -> DataplaneError {
    DataplaneError::Refused(format!("{what}: {e}"))
}

/// The target's block device of pool volume `name` while a namespace serves it.
fn device(name: &str) -> String {
    format!("{POOL}:{name}")
}

impl ApiDataplane {
    /// The target behind `channel`; its pool on the sparse file `pool.img` in
    /// `dir`, of `capacity` bytes (made when missing).
    pub fn new(
        channel: Channel,
        dir: impl Into<PathBuf>,
        capacity: u64,
    ) -> Result<Self, DataplaneError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| io(&format!("pool directory {}", dir.display()), e))?;
        Ok(ApiDataplane {
            channel,
            device: dir.join("pool.img"),
            capacity,
            buffered: false,
            overcommit: 100,
        })
    }

    /// The pool on this file or block device instead (it must exist; a device
    /// holding anything but a pool, or zeroes, is refused, never formatted over).
    pub fn on_device(mut self, device: impl Into<PathBuf>) -> Self {
        self.device = device.into();
        self.capacity = 0;
        self
    }

    /// Pool files through the page cache rather than O_DIRECT (file systems
    /// without O_DIRECT, such as tmpfs).
    pub fn buffered(mut self, buffered: bool) -> Self {
        self.buffered = buffered;
        self
    }

    /// Percent of a new pool's space its volumes may promise (default 100).
    pub fn overcommit(mut self, percent: u32) -> Self {
        self.overcommit = percent;
        self
    }

    /// Creates the subsystem with controller IDs `cntlid`; one that exists with
    /// another range is a mismatch when `strict`.
    async fn create_sub(
        &self,
        nqn: &str,
        cntlid: (u32, u32),
        strict: bool,
    ) -> Result<(), DataplaneError> {
        // Every volume's subsystem has the same identity on every node (serial,
        // model; the namespace's NGUID is derived from the NQN, its UUID given):
        // a node it migrates to presents the same subsystem.
        let r = SubsystemsClient::new(self.channel.clone())
            .create_subsystem(pb::CreateSubsystemRequest {
                nqn: nqn.into(),
                serial: None,
                model: Some("LightPool volume".into()),
                allow_any_host: Some(true),
                hosts: vec![],
                min_cntlid: Some(cntlid.0),
                max_cntlid: Some(cntlid.1),
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let have = self.exports().await?;
                match have.get(nqn) {
                    // Made before this range was asked for (the target's default
                    // range, or the other half): what it is stays.
                    Some(e) if e.cntlid == cntlid || !strict => Ok(()),
                    Some(e) => Err(DataplaneError::Mismatch(format!(
                        "subsystem {nqn} hands out controller IDs {}-{}, not {}-{}",
                        e.cntlid.0, e.cntlid.1, cntlid.0, cntlid.1
                    ))),
                    None => Err(status(s)),
                }
            }
            Err(s) => Err(status(s)),
        }
    }

    fn pools(&self) -> PoolsClient<Channel> {
        PoolsClient::new(self.channel.clone())
    }

    /// The pool, made or opened again (after the target restarted) when the
    /// target does not have it.
    async fn ensure_pool(&self) -> Result<pb::Pool, DataplaneError> {
        let path = &self.device;
        if self.capacity > 0 && !path.exists() {
            // Sparse: blocks are taken as hosts write.
            std::fs::File::create(path)
                .and_then(|f| f.set_len(self.capacity))
                .map_err(|e| io(&path.display().to_string(), e))?;
        }
        Ok(self
            .pools()
            .create_pool(pb::CreatePoolRequest {
                name: POOL.into(),
                device: Some(pb::create_pool_request::Device::Path(
                    path.display().to_string(),
                )),
                direct: self.buffered.then_some(false),
                overcommit: Some(self.overcommit),
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner())
    }
}

/// What a new volume may still take: room under the over-commit limit, and
/// clusters free.
fn info(p: &pb::Pool) -> PoolInfo {
    PoolInfo {
        capacity: p.capacity_bytes,
        free: p
            .promise_limit_bytes
            .saturating_sub(p.promised_bytes)
            .min(p.free_bytes),
        degraded: p.health == "degraded" || p.health == "recovering",
        failed: p.health == "failed",
    }
}

fn snapshot(v: pb::Volume) -> PoolSnapshot {
    PoolSnapshot {
        name: v.name,
        size: v.size_bytes,
        created: v.created,
    }
}

impl Dataplane for ApiDataplane {
    async fn pool(&self) -> Result<PoolInfo, DataplaneError> {
        Ok(info(&self.ensure_pool().await?))
    }

    async fn create_volume(
        &self,
        name: &str,
        size: u64,
        thin: bool,
    ) -> Result<PoolVolume, DataplaneError> {
        self.ensure_pool().await?;
        let r = self
            .pools()
            .create_volume(pb::CreateVolumeRequest {
                pool: POOL.into(),
                name: name.into(),
                size_bytes: size,
                thick: !thin,
            })
            .await;
        match r {
            Ok(v) => {
                let v = v.into_inner();
                Ok(PoolVolume {
                    name: name.into(),
                    device: device(name),
                    size: v.size_bytes,
                    ublk: v.ublk_device.is_some(),
                })
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                Err(DataplaneError::Mismatch(s.message().to_string()))
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                let free = info(&self.ensure_pool().await?).free;
                Err(DataplaneError::NoSpace { needed: size, free })
            }
            Err(s) => Err(status(s)),
        }
    }

    async fn grow_volume(&self, name: &str, size: u64) -> Result<PoolVolume, DataplaneError> {
        let r = self
            .pools()
            .grow_volume(pb::GrowVolumeRequest {
                pool: POOL.into(),
                name: name.into(),
                size_bytes: size,
            })
            .await;
        match r {
            Ok(v) => {
                let v = v.into_inner();
                Ok(PoolVolume {
                    name: name.into(),
                    device: device(name),
                    size: v.size_bytes,
                    ublk: v.ublk_device.is_some(),
                })
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                let free = info(&self.ensure_pool().await?).free;
                let has = self
                    .pools()
                    .get_volume(pb::GetVolumeRequest {
                        pool: POOL.into(),
                        name: name.into(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner()
                    .size_bytes;
                Err(DataplaneError::NoSpace {
                    needed: size.saturating_sub(has),
                    free,
                })
            }
            Err(s) => Err(status(s)),
        }
    }

    async fn delete_volume(&self, name: &str) -> Result<(), DataplaneError> {
        let r = self
            .pools()
            .delete_volume(pb::DeleteVolumeRequest {
                pool: POOL.into(),
                name: name.into(),
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // The volume, or the whole pool (not opened yet), is not there.
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status(s)),
        }
    }

    async fn create_snapshot(
        &self,
        volume: &str,
        name: &str,
    ) -> Result<PoolSnapshot, DataplaneError> {
        self.ensure_pool().await?;
        let r = self
            .pools()
            .create_snapshot(pb::CreateSnapshotRequest {
                pool: POOL.into(),
                volume: volume.into(),
                name: name.into(),
            })
            .await;
        match r {
            Ok(s) => Ok(snapshot(s.into_inner())),
            // Taken before (a later snapshot of the volume makes the target's own
            // repeat check miss it): a snapshot of that name is the answer.
            Err(s) if s.code() == Code::AlreadyExists => {
                let have = self
                    .pools()
                    .get_volume(pb::GetVolumeRequest {
                        pool: POOL.into(),
                        name: name.into(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                if have.snapshot {
                    Ok(snapshot(have))
                } else {
                    Err(DataplaneError::Mismatch(s.message().to_string()))
                }
            }
            Err(s) => Err(status(s)),
        }
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), DataplaneError> {
        let r = self
            .pools()
            .delete_snapshot(pb::DeleteSnapshotRequest {
                pool: POOL.into(),
                name: name.into(),
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status(s)),
        }
    }

    async fn snapshots(&self) -> Result<Vec<PoolSnapshot>, DataplaneError> {
        self.ensure_pool().await?;
        Ok(self
            .pools()
            .list_snapshots(pb::ListSnapshotsRequest { pool: POOL.into() })
            .await
            .map_err(status)?
            .into_inner()
            .volumes
            .into_iter()
            .map(snapshot)
            .collect())
    }

    async fn clone_snapshot(
        &self,
        snapshot: &str,
        name: &str,
    ) -> Result<PoolVolume, DataplaneError> {
        self.ensure_pool().await?;
        let r = self
            .pools()
            .clone_snapshot(pb::CloneSnapshotRequest {
                pool: POOL.into(),
                snapshot: snapshot.into(),
                name: name.into(),
            })
            .await;
        match r {
            Ok(v) => {
                let v = v.into_inner();
                Ok(PoolVolume {
                    name: name.into(),
                    device: device(name),
                    size: v.size_bytes,
                    ublk: v.ublk_device.is_some(),
                })
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                Err(DataplaneError::Mismatch(s.message().to_string()))
            }
            Err(s) => Err(status(s)),
        }
    }

    async fn volumes(&self) -> Result<Vec<PoolVolume>, DataplaneError> {
        self.ensure_pool().await?;
        let vs = self
            .pools()
            .list_volumes(pb::ListVolumesRequest {
                pool: POOL.into(),
                all: false,
            })
            .await
            .map_err(status)?
            .into_inner()
            .volumes;
        Ok(vs
            .into_iter()
            .map(|v| PoolVolume {
                device: device(&v.name),
                name: v.name,
                size: v.size_bytes,
                ublk: v.ublk_device.is_some(),
            })
            .collect())
    }

    async fn exports(&self) -> Result<BTreeMap<String, Export>, DataplaneError> {
        let subs = SubsystemsClient::new(self.channel.clone())
            .list_subsystems(pb::ListSubsystemsRequest { nqn: String::new() })
            .await
            .map_err(status)?
            .into_inner()
            .subsystems;
        Ok(subs
            .into_iter()
            .map(|s| {
                let namespaces = s
                    .namespaces
                    .into_iter()
                    .map(|n| (n.nsid, n.device))
                    .collect();
                (
                    s.nqn,
                    Export {
                        namespaces,
                        cntlid: (s.min_cntlid, s.max_cntlid),
                        controllers: s.controllers,
                    },
                )
            })
            .collect())
    }

    async fn create_subsystem(&self, nqn: &str) -> Result<(), DataplaneError> {
        // One made before with another range (the target's default, or the other
        // half: it came by migration) stays as it is.
        self.create_sub(nqn, lightpool_model::migration::CNTLID_LOW, false)
            .await
    }

    async fn delete_subsystem(&self, nqn: &str) -> Result<(), DataplaneError> {
        let r = SubsystemsClient::new(self.channel.clone())
            .delete_subsystem(pb::DeleteSubsystemRequest { nqn: nqn.into() })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status(s)),
        }
    }

    async fn add_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        device: &str,
        uuid: Option<&str>,
    ) -> Result<(), DataplaneError> {
        // A pool volume is served by name ("POOL/VOLUME"): the target makes it
        // the block device `device` names.
        let (device_name, volume) = match device.strip_prefix(&format!("{POOL}:")) {
            Some(v) => (String::new(), format!("{POOL}/{v}")),
            None => (device.to_string(), String::new()),
        };
        let r = NamespacesClient::new(self.channel.clone())
            .add_namespace(pb::AddNamespaceRequest {
                nqn: nqn.into(),
                nsid,
                device: device_name,
                nguid: None,
                uuid: uuid.map(str::to_string),
                ana_group: Some(1),
                size_bytes: None,
                volume,
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let have = self.exports().await?;
                match have.get(nqn).and_then(|e| e.namespaces.get(&nsid)) {
                    Some(d) if d == device => Ok(()),
                    _ => Err(status(s)),
                }
            }
            Err(s) => Err(status(s)),
        }
    }

    async fn ensure_listener(&self, address: &str, port: u16) -> Result<(), DataplaneError> {
        let addr = if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        let mut api = ListenersClient::new(self.channel.clone());
        let have = api
            .list_listeners(pb::ListListenersRequest {})
            .await
            .map_err(status)?
            .into_inner()
            .listeners;
        if have
            .iter()
            .any(|l| l.transport == "tcp" && l.address == addr)
        {
            return Ok(());
        }
        match api
            .add_listener(pb::AddListenerRequest {
                transport: "tcp".into(),
                address: addr,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(status(s)),
        }
    }

    async fn create_subsystem_with(
        &self,
        nqn: &str,
        cntlid: (u32, u32),
    ) -> Result<(), DataplaneError> {
        self.create_sub(nqn, cntlid, true).await
    }

    async fn set_ana_state(
        &self,
        nqn: &str,
        group: u32,
        state: AnaState,
    ) -> Result<(), DataplaneError> {
        let state = match state {
            AnaState::Optimized => pb::AnaState::Optimized,
            AnaState::NonOptimized => pb::AnaState::NonOptimized,
            AnaState::Inaccessible => pb::AnaState::Inaccessible,
            AnaState::PersistentLoss => pb::AnaState::PersistentLoss,
            AnaState::Change => pb::AnaState::Change,
        };
        AnaClient::new(self.channel.clone())
            .set_ana_state(pb::SetAnaStateRequest {
                nqn: nqn.into(),
                group,
                state: state.into(),
            })
            .await
            .map_err(status)?;
        Ok(())
    }

    async fn start_migration(&self, m: &MigrationStart) -> Result<SourceMigration, DataplaneError> {
        let r = MigrationsClient::new(self.channel.clone())
            .start_migration(pb::StartMigrationRequest {
                nqn: m.nqn.clone(),
                nsid: m.nsid,
                dest_address: m.dest_address.clone(),
                dest_nqn: m.dest_nqn.clone(),
                dest_nsid: m.dest_nsid,
                rate_limit_bytes: m.rate_limit,
                ..Default::default()
            })
            .await;
        match r {
            Ok(x) => Ok(source_migration(x.into_inner())),
            Err(s) if s.code() == Code::AlreadyExists => {
                match self.migration(&m.nqn, m.nsid).await? {
                    Some(x) => Ok(x),
                    None => Err(status(s)),
                }
            }
            // The queues did not let go of the device in time: asked again next tick.
            Err(s) if s.code() == Code::Unavailable => {
                Err(DataplaneError::Unavailable(s.message().to_string()))
            }
            Err(s) => Err(DataplaneError::Refused(s.message().to_string())),
        }
    }

    async fn migration(
        &self,
        nqn: &str,
        nsid: u32,
    ) -> Result<Option<SourceMigration>, DataplaneError> {
        let r = MigrationsClient::new(self.channel.clone())
            .get_migration(pb::GetMigrationRequest {
                nqn: nqn.into(),
                nsid,
            })
            .await;
        match r {
            Ok(x) => Ok(Some(source_migration(x.into_inner()))),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status(s)),
        }
    }

    async fn stop_migration(&self, nqn: &str, nsid: u32) -> Result<(), DataplaneError> {
        let r = MigrationsClient::new(self.channel.clone())
            .stop_migration(pb::StopMigrationRequest {
                nqn: nqn.into(),
                nsid,
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status(s)),
        }
    }
}

fn source_migration(m: pb::Migration) -> SourceMigration {
    SourceMigration {
        progress: MigrationProgress {
            state: m.state,
            round: m.round,
            copied_bytes: m.copied_bytes,
            total_bytes: m.total_bytes,
            dirty_bytes: m.dirty_bytes,
            elapsed_ms: m.elapsed_ms,
            eta_ms: m.eta_ms,
            pause_us: m.pause_us,
            throttled: m.throttled,
        },
        error: m.error,
    }
}
