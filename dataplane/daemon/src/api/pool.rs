//! The Pools service: the pool's operations (`lightpool_pool::PoolOps`) at run time.
//! A pool is made through the registry (`DeviceSpec::Pool`, its `[[pool]]` section),
//! as the configuration makes one, so that `config save` writes it back and a hot
//! upgrade hands it over like a configured pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::pools_server;
use lightpool_pool::{Pool, PoolError, PoolOps, VolumeInfo};
use tonic::{Request, Response, Status};

use super::convert::status_of;
use super::service::Api;
use crate::config::{volume_device_name, PoolSection, Size};
use crate::manage::{DeviceSpec, ManageError};
use crate::Running;

type Res<T> = Result<Response<T>, Status>;

/// How long a volume's delete waits for the queues to let go of a namespace that was
/// just removed (they pick up the new namespace table at their next pass).
const LET_GO: Duration = Duration::from_secs(3);

fn pool_status(e: PoolError) -> Status {
    match e {
        PoolError::Corrupt { .. } => Status::data_loss(e.to_string()),
        e => status_of(crate::pools::manage_error(e)),
    }
}

/// Pool `name` of the target.
fn find(run: &Running, name: &str) -> Result<Arc<Pool>, ManageError> {
    crate::pools::all(run)
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let names: Vec<String> = crate::pools::all(run)
                .iter()
                .map(|p| p.name().to_string())
                .collect();
            ManageError::NotFound(format!(
                "no pool {name:?} (pools: {}): create it with `lightpool target pool create`",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
}

/// NQN/NSID of the namespaces serving volume `volume` of pool `pool`.
fn serving(run: &Running, pool: &str, volume: &str) -> Vec<String> {
    let dev = volume_device_name(pool, volume);
    run.namespaces()
        .into_iter()
        .filter(|v| v.device == dev)
        .map(|v| format!("{}/{}", v.nqn, v.ns.nsid))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pool_msg(p: &Pool) -> pb::Pool {
    let i = p.pool_info();
    let cs = u64::from(i.cluster_size);
    pb::Pool {
        name: i.name.clone(),
        uuid: hex(&i.uuid),
        block_size: i.block_size,
        cluster_size: cs,
        capacity_bytes: i.data_clusters * cs,
        free_bytes: i.free_clusters * cs,
        allocated_bytes: i.data_clusters.saturating_sub(i.free_clusters) * cs,
        promised_bytes: i.promised,
        promise_limit_bytes: i.promise_limit,
        overcommit: i.overcommit,
        volumes: i.volumes as u32,
        max_volumes: i.max_volumes as u32,
        md_pages: i.md_pages,
        md_pages_free: i.md_pages_free,
        opened: crate::pools::opened(&i.name).to_string(),
        health: health(&i.device).to_string(),
        device: i.device,
    }
}

/// A pool's health: its device's. A pool on a RAID array is "degraded" while the
/// array serves without redundancy, "recovering" while a member is resynced or
/// rebuilt, and "failed" when no member holds the data; otherwise "online".
pub(super) fn health(device: &str) -> &'static str {
    use lightpool_raid::ArrayState;
    match crate::raid::registry()
        .get(device)
        .map(|a| a.status().state)
    {
        Some(ArrayState::Degraded) => "degraded",
        Some(ArrayState::Recovering) => "recovering",
        Some(ArrayState::Failed) => "failed",
        Some(ArrayState::Optimal) | None => "online",
    }
}

fn volume_msg(run: &Running, pool: &str, v: VolumeInfo) -> pb::Volume {
    let ublk_device = run.mgmt.ublk.path_of(&volume_device_name(pool, &v.name));
    pb::Volume {
        pool: pool.to_string(),
        namespaces: serving(run, pool, &v.name),
        uuid: crate::manage::save::uuid_string(&v.uuid),
        name: v.name,
        id: v.id,
        size_bytes: v.size,
        used_bytes: v.used,
        thin: v.thin,
        snapshot: v.snapshot,
        parent: v.parent,
        clones: v.clones,
        created: v.created,
        snapshot_pause_us: None,
        ublk_device,
    }
}

/// The `[[pool]]` section a CreatePool request describes.
fn section(run: &Running, r: &pb::CreatePoolRequest) -> Result<PoolSection, ManageError> {
    use pb::create_pool_request::Device;
    let bad = |m: String| ManageError::Invalid(m);
    crate::config::check_device_name(&r.name).map_err(bad)?;
    let mut p = PoolSection {
        name: r.name.clone(),
        block_size: r.block_size,
        direct: r.direct,
        create: r.create.unwrap_or(true),
        cluster_size: r.cluster_size.map(Size),
        overcommit: r.overcommit,
        max_volumes: r.max_volumes,
        md_pages: r.md_pages,
        ..Default::default()
    };
    match &r.device {
        None => {
            return Err(bad(
                "say which device the pool is on: bdev (a block device or RAID array of the target), path, ram_bytes or vfio".into(),
            ))
        }
        Some(Device::Bdev(d)) => {
            let e = run.mgmt.registry.get(d).ok_or_else(|| {
                ManageError::NotFound(format!(
                    "no block device named {d:?} for pool {:?}: list them with `lightpool bdev list`",
                    r.name
                ))
            })?;
            match e.spec {
                DeviceSpec::Pool(_) | DeviceSpec::Volume { .. } => {
                    return Err(bad(format!(
                        "{d:?} is a pool or a pool's volume; a pool is made on a disk, a file, RAM or an array"
                    )))
                }
                DeviceSpec::Raid(_) => p.raid = Some(d.clone()),
                _ => p.bdev = Some(d.clone()),
            }
            if r.block_size.is_some() || r.direct.is_some() {
                return Err(bad(format!(
                    "a pool on block device {d:?} has that device's block size: leave block_size and direct out"
                )));
            }
        }
        Some(Device::Path(x)) => p.device = Some(x.into()),
        Some(Device::RamBytes(x)) => p.ram = Some(Size(*x)),
        Some(Device::Vfio(x)) => {
            lightpool_nvme_vfio::vfio::normalize_pci_address(x).ok_or_else(|| {
                bad(format!("{x:?} is not a PCI address such as \"0000:00:04.0\""))
            })?;
            p.vfio = Some(x.clone());
        }
    }
    if let Some(bs) = p.block_size {
        if bs != 512 && bs != 4096 {
            return Err(bad(format!("block size {bs} is neither 512 nor 4096")));
        }
    }
    if let Some(Size(v)) = p.cluster_size {
        if !v.is_power_of_two() || !(16 << 10..=1 << 30).contains(&v) {
            return Err(bad(format!(
                "cluster size {v} is not a power of two from 16 KiB to 1 GiB"
            )));
        }
    }
    if p.overcommit == Some(0) {
        return Err(bad("overcommit must be at least 1 (percent)".into()));
    }
    if p.max_volumes == Some(0) {
        return Err(bad("max_volumes must be at least 1".into()));
    }
    Ok(p)
}

fn create_pool(run: &Running, r: &pb::CreatePoolRequest) -> Result<pb::Pool, ManageError> {
    let want = section(run, r)?;
    if let Some(e) = run.mgmt.registry.get(&r.name) {
        // Asked again for the pool that exists: it is the answer.
        if let DeviceSpec::Pool(text) = &e.spec {
            if crate::pools::section(text).is_ok_and(|have| have == want) {
                return find(run, &r.name).map(|p| pool_msg(&p));
            }
            return Err(ManageError::Exists(format!(
                "pool {:?} exists already on another device or with other options: delete it first, or pick another name",
                r.name
            )));
        }
        return Err(ManageError::Exists(format!(
            "a block device named {:?} exists already: pick another name",
            r.name
        )));
    }
    if let Some(d) = want.device_name() {
        let e = run
            .mgmt
            .registry
            .get(d)
            .ok_or_else(|| ManageError::NotFound(format!("no block device named {d:?}")))?;
        let users = run.users_of(&e.bdev);
        if !users.is_empty() {
            return Err(ManageError::InUse(format!(
                "block device {d} is in use by {}: a pool must be its device's only user",
                users.join(", ")
            )));
        }
    }
    run.create_bdev(&r.name, crate::pools::spec(&want)?)?;
    find(run, &r.name).map(|p| pool_msg(&p))
}

fn delete_pool(run: &Running, name: &str) -> Result<(), ManageError> {
    let p = find(run, name)?;
    let served: Vec<String> = p
        .list()
        .iter()
        .flat_map(|v| {
            serving(run, name, &v.name)
                .into_iter()
                .map(move |ns| format!("{} by namespace {ns}", v.name))
        })
        .collect();
    if !served.is_empty() {
        return Err(ManageError::InUse(format!(
            "pool {name} has volumes served: {}; remove those namespaces first",
            served.join(", ")
        )));
    }
    drop(p);
    run.release_volumes()?;
    run.delete_bdev(name)
}

/// Runs `op` on the pool; a volume refused as in use although no namespace serves it
/// any more (the queues still hold the namespace just removed) is tried again.
fn retry_let_go<T>(
    run: &Running,
    p: &Pool,
    name: &str,
    op: impl Fn(&Pool) -> Result<T, PoolError>,
) -> Result<T, Status> {
    let until = Instant::now() + LET_GO;
    loop {
        match op(p) {
            Err(PoolError::InUse { .. })
                if Instant::now() < until && serving(run, p.name(), name).is_empty() =>
            {
                run.release_volumes().map_err(status_of)?;
                run.wake_reactors();
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.map_err(pool_status),
        }
    }
}

/// Refuses when a namespace serves the volume (`what` the operation, for the message).
fn not_served(run: &Running, pool: &str, name: &str, what: &str) -> Result<(), Status> {
    if let Some(dev) = run.mgmt.ublk.path_of(&volume_device_name(pool, name)) {
        return Err(Status::failed_precondition(format!(
            "volume {pool}/{name} is exported as {dev}: stop it (`lightpool target volume ublk stop {pool}/{name}`) before you {what} it"
        )));
    }
    let ns = serving(run, pool, name);
    if ns.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "volume {pool}/{name} is served by namespace {}: remove the namespace before you {what} it",
        ns.join(", ")
    )))
}

impl Api {
    /// Run `f` on a blocking thread with pool `pool`.
    async fn with_pool<T: Send + 'static>(
        &self,
        pool: String,
        f: impl FnOnce(&Running, &Pool) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let run = self
            .run
            .upgrade()
            .ok_or_else(|| Status::unavailable("the target is stopping"))?;
        tokio::task::spawn_blocking(move || {
            let p = find(&run, &pool).map_err(status_of)?;
            f(&run, &p)
        })
        .await
        .map_err(|e| Status::internal(format!("the call failed: {e}")))?
    }
}

/// Volume `name`, which must (`snapshot`) or must not be a snapshot.
fn kind_of(p: &Pool, name: &str, snapshot: bool) -> Result<VolumeInfo, Status> {
    let v = p.volume_info(name).map_err(pool_status)?;
    match (v.snapshot, snapshot) {
        (true, false) => Err(Status::failed_precondition(format!(
            "{}/{name} is a snapshot: use the snapshot commands (DeleteSnapshot)",
            p.name()
        ))),
        (false, true) => Err(Status::failed_precondition(format!(
            "{}/{name} is a volume, not a snapshot: use the volume commands (DeleteVolume)",
            p.name()
        ))),
        _ => Ok(v),
    }
}

/// A volume's name must also make a block device name ("POOL:VOLUME") to be served.
fn check_volume_name(pool: &str, name: &str) -> Result<(), Status> {
    crate::config::check_device_name(&volume_device_name(pool, name)).map_err(|_| {
        Status::invalid_argument(format!(
            "volume name {name:?}: use letters, digits, '.', '_', '-' or ':' ({} characters at most with the pool's name)",
            64 - pool.len() - 1
        ))
    })
}

#[tonic::async_trait]
impl pools_server::Pools for Api {
    async fn create_pool(&self, r: Request<pb::CreatePoolRequest>) -> Res<pb::Pool> {
        let r = r.into_inner();
        let out = self.blocking(move |run| create_pool(run, &r)).await?;
        Ok(Response::new(out))
    }

    async fn delete_pool(&self, r: Request<pb::DeletePoolRequest>) -> Res<pb::DeletePoolResponse> {
        let name = r.into_inner().name;
        self.blocking(move |run| delete_pool(run, &name)).await?;
        Ok(Response::new(pb::DeletePoolResponse {}))
    }

    async fn list_pools(&self, _: Request<pb::ListPoolsRequest>) -> Res<pb::ListPoolsResponse> {
        let out = self
            .blocking(|run| Ok(crate::pools::all(run).iter().map(|p| pool_msg(p)).collect()))
            .await?;
        Ok(Response::new(pb::ListPoolsResponse { pools: out }))
    }

    async fn get_pool(&self, r: Request<pb::GetPoolRequest>) -> Res<pb::Pool> {
        let name = r.into_inner().name;
        let out = self.with_pool(name, |_, p| Ok(pool_msg(p))).await?;
        Ok(Response::new(out))
    }

    async fn check_pool(&self, r: Request<pb::CheckPoolRequest>) -> Res<pb::CheckPoolResponse> {
        let name = r.into_inner().name;
        let c = self
            .with_pool(name, |_, p| p.check().map_err(pool_status))
            .await?;
        Ok(Response::new(pb::CheckPoolResponse {
            volumes: c.volumes as u32,
            md_pages_read: c.md_pages_read as u32,
            clusters_owned: c.clusters_owned,
            free_clusters: c.free_clusters,
        }))
    }

    async fn create_volume(&self, r: Request<pb::CreateVolumeRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                check_volume_name(&r.pool, &r.name)?;
                let v = match p.volume_info(&r.name) {
                    Ok(v) if !v.snapshot && v.size == r.size_bytes && v.thin != r.thick => v,
                    Ok(v) => {
                        return Err(Status::already_exists(format!(
                            "pool {}: {:?} exists already as a {} {} of {} bytes: delete it first, or pick another name",
                            r.pool,
                            r.name,
                            if v.thin { "thin" } else { "thick" },
                            if v.snapshot { "snapshot" } else { "volume" },
                            v.size
                        )))
                    }
                    Err(_) => p
                        .create(&r.name, r.size_bytes, !r.thick)
                        .map_err(pool_status)?,
                };
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn delete_volume(
        &self,
        r: Request<pb::DeleteVolumeRequest>,
    ) -> Res<pb::DeleteVolumeResponse> {
        let r = r.into_inner();
        self.with_pool(r.pool.clone(), move |run, p| {
            kind_of(p, &r.name, false)?;
            not_served(run, &r.pool, &r.name, "delete")?;
            retry_let_go(run, p, &r.name, |p| p.delete(&r.name))
        })
        .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn grow_volume(&self, r: Request<pb::GrowVolumeRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                run.not_migrating(&volume_device_name(&r.pool, &r.name))
                    .map_err(status_of)?;
                let v = p.grow(&r.name, r.size_bytes).map_err(pool_status)?;
                // A served volume: its namespaces present the new size and hosts
                // are told, so a connected host sees the volume grow.
                run.regrow_volume(&volume_device_name(&r.pool, &r.name), || {
                    p.regrown_device(&r.name)
                        .map(|d| d.map(|d| d as Arc<dyn lightpool_bdev::Bdev>))
                        .map_err(crate::pools::manage_error)
                })
                .map_err(status_of)?;
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn rename_volume(&self, r: Request<pb::RenameVolumeRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                check_volume_name(&r.pool, &r.new_name)?;
                not_served(run, &r.pool, &r.name, "rename")?;
                // Its block device (kept while it was served) goes first: the
                // registry names it by the volume's name.
                run.release_volumes().map_err(status_of)?;
                let v = p.rename(&r.name, &r.new_name).map_err(pool_status)?;
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_volumes(
        &self,
        r: Request<pb::ListVolumesRequest>,
    ) -> Res<pb::ListVolumesResponse> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                Ok(p.list()
                    .into_iter()
                    .filter(|v| r.all || !v.snapshot)
                    .map(|v| volume_msg(run, &r.pool, v))
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ListVolumesResponse { volumes: out }))
    }

    async fn get_volume(&self, r: Request<pb::GetVolumeRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                let v = p.volume_info(&r.name).map_err(pool_status)?;
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn inflate_volume(&self, r: Request<pb::InflateVolumeRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                let v = p.inflate(&r.name).map_err(pool_status)?;
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn create_snapshot(&self, r: Request<pb::CreateSnapshotRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                check_volume_name(&r.pool, &r.name)?;
                let vol = p.volume_info(&r.volume).map_err(pool_status)?;
                if let Ok(s) = p.volume_info(&r.name) {
                    // Asked again: the volume's snapshot of that name is the answer.
                    if s.snapshot && vol.parent.as_deref() == Some(r.name.as_str()) {
                        return Ok(volume_msg(run, &r.pool, s));
                    }
                    return Err(Status::already_exists(format!(
                        "pool {}: {:?} exists already (and is not a snapshot of {}): pick another name",
                        r.pool, r.name, r.volume
                    )));
                }
                let s = p.snapshot(&r.volume, &r.name).map_err(pool_status)?;
                let pause = p
                    .served_volume(&r.volume)
                    .map(|d| d.last_snapshot_pause().as_micros() as u64);
                Ok(pb::Volume {
                    snapshot_pause_us: pause,
                    ..volume_msg(run, &r.pool, s)
                })
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_snapshots(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Res<pb::ListVolumesResponse> {
        let pool = r.into_inner().pool;
        let out = self
            .with_pool(pool.clone(), move |run, p| {
                Ok(p.list()
                    .into_iter()
                    .filter(|v| v.snapshot)
                    .map(|v| volume_msg(run, &pool, v))
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ListVolumesResponse { volumes: out }))
    }

    async fn delete_snapshot(
        &self,
        r: Request<pb::DeleteSnapshotRequest>,
    ) -> Res<pb::DeleteVolumeResponse> {
        let r = r.into_inner();
        self.with_pool(r.pool.clone(), move |run, p| {
            kind_of(p, &r.name, true)?;
            not_served(run, &r.pool, &r.name, "delete")?;
            retry_let_go(run, p, &r.name, |p| p.delete(&r.name))
        })
        .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn clone_snapshot(&self, r: Request<pb::CloneSnapshotRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                check_volume_name(&r.pool, &r.name)?;
                if let Ok(c) = p.volume_info(&r.name) {
                    if c.parent.as_deref() == Some(r.snapshot.as_str()) && !c.snapshot {
                        return Ok(volume_msg(run, &r.pool, c));
                    }
                    return Err(Status::already_exists(format!(
                        "pool {}: {:?} exists already (and is not a clone of {}): pick another name",
                        r.pool, r.name, r.snapshot
                    )));
                }
                let c = p.clone_snapshot(&r.snapshot, &r.name).map_err(pool_status)?;
                Ok(volume_msg(run, &r.pool, c))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn export_volume_ublk(&self, r: Request<pb::ExportVolumeUblkRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                kind_of(p, &r.name, false)?;
                crate::ublk::export(run, &r.pool, &r.name, r.queue_depth).map_err(status_of)?;
                let v = p.volume_info(&r.name).map_err(pool_status)?;
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn stop_volume_ublk(&self, r: Request<pb::StopVolumeUblkRequest>) -> Res<pb::Volume> {
        let r = r.into_inner();
        let out = self
            .with_pool(r.pool.clone(), move |run, p| {
                let v = p.volume_info(&r.name).map_err(pool_status)?;
                crate::ublk::stop(run, &r.pool, &r.name).map_err(status_of)?;
                Ok(volume_msg(run, &r.pool, v))
            })
            .await?;
        Ok(Response::new(out))
    }
}
