//! `lightpool target pool|volume|snapshot ...` (`raid`: target_raid.rs, `host-key`:
//! target_auth.rs): the pools, volumes and snapshots of
//! ONE running lightpool-target (the Pools service of its management API). The
//! top-level `lightpool pool` and `lightpool volume` are the standalone cluster's
//! objects, which the control plane places on these.

use clap::{Args, Subcommand};
use lightpool_api::v1 as pb;
use lightpool_api::v1::pools_client::PoolsClient;
use tonic::transport::Channel;

use crate::cmd::{done, emit, parse_size, refused, size};
use crate::table;

#[derive(Subcommand, Debug)]
pub enum TargetCmd {
    /// This target's pools (volume stores on its devices): create, list, show,
    /// check, delete.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Volumes of this target's pools, named POOL/VOLUME: create, list, show,
    /// grow, rename, inflate, delete; snapshot and clone.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots of this target's pools: list, delete.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// This target's RAID arrays: create, list, show; fail, remove, readd and add
    /// members; rate; delete.
    #[command(subcommand)]
    Raid(crate::target_raid::RaidCmd),
    /// Live migration from this target: start moving a served namespace to another
    /// target, status, list, stop.
    #[command(subcommand)]
    Migrate(crate::target_migrate::MigrateCmd),
    /// In-band authentication (DH-HMAC-CHAP) keys per host and subsystem: set or
    /// rotate, clear, list.
    #[command(subcommand)]
    HostKey(crate::target_auth::HostKeyCmd),
    /// NVMe/TCP TLS pre-shared keys per host and subsystem: set, clear, list.
    #[command(subcommand)]
    TlsKey(crate::target_tls::TlsKeyCmd),
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PoolDevice {
    /// A block device of the target by name (`lightpool bdev list`), a RAID array
    /// included.
    #[arg(long)]
    pub bdev: Option<String>,
    /// A file or block device of the host (io_uring).
    #[arg(long)]
    pub path: Option<String>,
    /// RAM of this size (e.g. 1GiB).
    #[arg(long, value_parser = parse_size)]
    pub ram: Option<u64>,
    /// An NVMe SSD bound to vfio-pci (PCI address).
    #[arg(long)]
    pub vfio: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Open a pool on a device: a new one on a blank device, the pool a device
    /// holds otherwise (a device holding anything else is never formatted over).
    Create {
        name: String,
        #[command(flatten)]
        device: PoolDevice,
        /// A new pool's cluster size (16KiB to 1GiB, a power of two; default 1MiB).
        #[arg(long, value_parser = parse_size)]
        cluster_size: Option<u64>,
        /// Percent of the data space thin volumes may promise (default 100).
        #[arg(long)]
        overcommit: Option<u32>,
        /// Volumes, snapshots and clones a new pool can hold (default 4032).
        #[arg(long)]
        max_volumes: Option<u32>,
        /// Metadata pages of a new pool.
        #[arg(long)]
        md_pages: Option<u32>,
        /// Block size of a --path or --ram device: 512 or 4096.
        #[arg(long)]
        block_size: Option<u32>,
        /// A --path through the page cache (no O_DIRECT).
        #[arg(long)]
        buffered: bool,
        /// Only import a pool the device holds; never make a new one.
        #[arg(long)]
        import: bool,
    },
    List,
    Show {
        name: String,
    },
    /// Re-read the pool's metadata from its device and check it.
    Check {
        name: String,
    },
    /// Close the pool cleanly and forget it (its device keeps it: `create` on the
    /// same device imports it again). Refused while a namespace serves a volume.
    Delete {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    Create {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// All clusters now (default thin: as written, within the over-commit).
        #[arg(long)]
        thick: bool,
    },
    /// The pool's volumes and clones (with --all its snapshots too); every pool's
    /// without POOL.
    List {
        pool: Option<String>,
        #[arg(long)]
        all: bool,
    },
    Show {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
    },
    Grow {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    Rename {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
        new_name: String,
    },
    /// Make a clone independent of its snapshot.
    Inflate {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
    },
    /// Refused while a namespace serves it.
    Delete {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
    },
    /// A read-only snapshot SNAPSHOT of the volume (taken while it is served).
    Snapshot {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
        snapshot: String,
    },
    /// A writable clone NAME of snapshot POOL/SNAPSHOT.
    Clone {
        /// POOL/SNAPSHOT.
        #[arg(value_parser = parse_pool_path)]
        snapshot: PoolPath,
        name: String,
    },
    /// Serve the volume to this host's own kernel as /dev/ublkbN (Linux ublk, the
    /// local path: no network), or stop doing so.
    #[command(subcommand)]
    Ublk(UblkCmd),
}

#[derive(Subcommand, Debug)]
pub enum UblkCmd {
    /// Export the volume as /dev/ublkbN, one queue per reactor (needs `modprobe
    /// ublk_drv`); a volume exported already answers with its device.
    Start {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
        /// Requests each queue holds at once (default 64).
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        queue_depth: u32,
    },
    /// Stop and delete the volume's ublk device (a volume not exported is left as
    /// it is).
    Stop {
        /// POOL/VOLUME.
        #[arg(value_parser = parse_pool_path)]
        volume: PoolPath,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Every pool's snapshots without POOL.
    List { pool: Option<String> },
    /// A snapshot with one clone hands its data to it; with more it is refused.
    Delete {
        /// POOL/SNAPSHOT.
        #[arg(value_parser = parse_pool_path)]
        snapshot: PoolPath,
    },
}

/// A volume or snapshot of a pool, "POOL/NAME" on the command line.
#[derive(Debug, Clone)]
pub struct PoolPath {
    pub pool: String,
    pub name: String,
}

impl std::fmt::Display for PoolPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.name)
    }
}

/// "POOL/NAME" (a malformed one is a usage error: exit code 2).
pub fn parse_pool_path(s: &str) -> Result<PoolPath, String> {
    match s.split_once('/') {
        Some((p, v)) if !p.is_empty() && !v.is_empty() && !v.contains('/') => Ok(PoolPath {
            pool: p.to_string(),
            name: v.to_string(),
        }),
        _ => Err(format!("{s:?} is not POOL/NAME (e.g. p0/vol1)")),
    }
}

fn split(p: &PoolPath) -> Result<(String, String), String> {
    Ok((p.pool.clone(), p.name.clone()))
}

fn pools_table(ps: &[pb::Pool]) {
    table::print(
        &[
            "NAME",
            "DEVICE",
            "CAPACITY",
            "FREE",
            "ALLOCATED",
            "PROMISED",
            "LIMIT",
            "VOLUMES",
            "CLUSTER",
            "OPENED",
            "HEALTH",
        ],
        &ps.iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.device.clone(),
                    size(p.capacity_bytes),
                    size(p.free_bytes),
                    size(p.allocated_bytes),
                    size(p.promised_bytes),
                    format!("{} ({}%)", size(p.promise_limit_bytes), p.overcommit),
                    format!("{}/{}", p.volumes, p.max_volumes),
                    size(p.cluster_size),
                    p.opened.clone(),
                    p.health.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn volumes_table(vs: &[pb::Volume]) {
    table::print(
        &[
            "VOLUME",
            "SIZE",
            "USED",
            "TYPE",
            "PARENT",
            "CLONES",
            "SERVED BY",
        ],
        &vs.iter()
            .map(|v| {
                vec![
                    format!("{}/{}", v.pool, v.name),
                    size(v.size_bytes),
                    size(v.used_bytes),
                    if v.snapshot {
                        "snapshot"
                    } else if v.thin {
                        "thin"
                    } else {
                        "thick"
                    }
                    .to_string(),
                    v.parent.clone().unwrap_or_else(|| "-".into()),
                    if v.clones.is_empty() {
                        "-".into()
                    } else {
                        v.clones.join(",")
                    },
                    {
                        // Namespaces, and the ublk device of the local path.
                        let by: Vec<&str> = v
                            .namespaces
                            .iter()
                            .map(String::as_str)
                            .chain(v.ublk_device.as_deref())
                            .collect();
                        if by.is_empty() {
                            "-".into()
                        } else {
                            by.join(",")
                        }
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
}

/// The names of `pool`, or of every pool.
async fn pools_of(
    api: &mut PoolsClient<Channel>,
    pool: &Option<String>,
) -> Result<Vec<String>, String> {
    match pool {
        Some(p) => Ok(vec![p.clone()]),
        None => Ok(api
            .list_pools(pb::ListPoolsRequest {})
            .await
            .map_err(refused)?
            .into_inner()
            .pools
            .into_iter()
            .map(|p| p.name)
            .collect()),
    }
}

pub async fn run(j: bool, ch: Channel, c: &TargetCmd) -> Result<(), String> {
    let mut api = PoolsClient::new(ch.clone());
    match c {
        TargetCmd::Pool(c) => pool(j, &mut api, c).await,
        TargetCmd::Volume(c) => volume(j, &mut api, c).await,
        TargetCmd::Snapshot(SnapshotCmd::List { pool }) => {
            let mut out = Vec::new();
            for p in pools_of(&mut api, pool).await? {
                out.extend(
                    api.list_snapshots(pb::ListSnapshotsRequest { pool: p })
                        .await
                        .map_err(refused)?
                        .into_inner()
                        .volumes,
                );
            }
            emit(j, &out, |v| volumes_table(v))
        }
        TargetCmd::Snapshot(SnapshotCmd::Delete { snapshot }) => {
            let (pool, name) = split(snapshot)?;
            api.delete_snapshot(pb::DeleteSnapshotRequest { pool, name })
                .await
                .map_err(refused)?;
            done(j, &format!("snapshot {snapshot} deleted"));
            Ok(())
        }
        TargetCmd::Raid(c) => crate::target_raid::run(j, ch, c).await,
        TargetCmd::Migrate(c) => crate::target_migrate::run(j, ch, c).await,
        TargetCmd::HostKey(c) => crate::target_auth::run(j, ch, c).await,
        TargetCmd::TlsKey(c) => crate::target_tls::run(j, ch, c).await,
    }
}

async fn pool(j: bool, api: &mut PoolsClient<Channel>, c: &PoolCmd) -> Result<(), String> {
    use pb::create_pool_request::Device;
    match c {
        PoolCmd::Create {
            name,
            device,
            cluster_size,
            overcommit,
            max_volumes,
            md_pages,
            block_size,
            buffered,
            import,
        } => {
            let dev = if let Some(b) = &device.bdev {
                Device::Bdev(b.clone())
            } else if let Some(p) = &device.path {
                Device::Path(p.clone())
            } else if let Some(r) = device.ram {
                Device::RamBytes(r)
            } else {
                Device::Vfio(device.vfio.clone().unwrap_or_default())
            };
            let p = api
                .create_pool(pb::CreatePoolRequest {
                    name: name.clone(),
                    device: Some(dev),
                    block_size: *block_size,
                    direct: buffered.then_some(false),
                    cluster_size: *cluster_size,
                    overcommit: *overcommit,
                    max_volumes: *max_volumes,
                    md_pages: *md_pages,
                    create: import.then_some(false),
                })
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &p, |p| {
                println!(
                    "pool {} on {} ({}): {} of data space, {} free, {} volumes",
                    p.name,
                    p.device,
                    p.opened,
                    size(p.capacity_bytes),
                    size(p.free_bytes),
                    p.volumes
                )
            })
        }
        PoolCmd::List => {
            let l = api
                .list_pools(pb::ListPoolsRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &l.pools, |p| pools_table(p))
        }
        PoolCmd::Show { name } => {
            let p = api
                .get_pool(pb::GetPoolRequest { name: name.clone() })
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &p, |p| pools_table(std::slice::from_ref(p)))
        }
        PoolCmd::Check { name } => {
            let r = api
                .check_pool(pb::CheckPoolRequest { name: name.clone() })
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &r, |r| {
                println!(
                    "pool {name}: ok ({} volumes, {} metadata pages read, {} clusters owned, {} free)",
                    r.volumes, r.md_pages_read, r.clusters_owned, r.free_clusters
                )
            })
        }
        PoolCmd::Delete { name } => {
            api.delete_pool(pb::DeletePoolRequest { name: name.clone() })
                .await
                .map_err(refused)?;
            done(j, &format!("pool {name} closed (its device keeps it)"));
            Ok(())
        }
    }
}

async fn volume(j: bool, api: &mut PoolsClient<Channel>, c: &VolumeCmd) -> Result<(), String> {
    let one = |v: &pb::Volume| volumes_table(std::slice::from_ref(v));
    let v = match c {
        VolumeCmd::Create {
            volume,
            size: bytes,
            thick,
        } => {
            let (pool, name) = split(volume)?;
            api.create_volume(pb::CreateVolumeRequest {
                pool,
                name,
                size_bytes: *bytes,
                thick: *thick,
            })
            .await
        }
        VolumeCmd::List { pool, all } => {
            let mut out = Vec::new();
            for p in pools_of(api, pool).await? {
                out.extend(
                    api.list_volumes(pb::ListVolumesRequest { pool: p, all: *all })
                        .await
                        .map_err(refused)?
                        .into_inner()
                        .volumes,
                );
            }
            return emit(j, &out, |v| volumes_table(v));
        }
        VolumeCmd::Show { volume } => {
            let (pool, name) = split(volume)?;
            api.get_volume(pb::GetVolumeRequest { pool, name }).await
        }
        VolumeCmd::Grow {
            volume,
            size: bytes,
        } => {
            let (pool, name) = split(volume)?;
            api.grow_volume(pb::GrowVolumeRequest {
                pool,
                name,
                size_bytes: *bytes,
            })
            .await
        }
        VolumeCmd::Rename { volume, new_name } => {
            let (pool, name) = split(volume)?;
            api.rename_volume(pb::RenameVolumeRequest {
                pool,
                name,
                new_name: new_name.clone(),
            })
            .await
        }
        VolumeCmd::Inflate { volume } => {
            let (pool, name) = split(volume)?;
            api.inflate_volume(pb::InflateVolumeRequest { pool, name })
                .await
        }
        VolumeCmd::Delete { volume } => {
            let (pool, name) = split(volume)?;
            api.delete_volume(pb::DeleteVolumeRequest { pool, name })
                .await
                .map_err(refused)?;
            done(j, &format!("volume {volume} deleted"));
            return Ok(());
        }
        VolumeCmd::Snapshot { volume, snapshot } => {
            let (pool, v) = split(volume)?;
            api.create_snapshot(pb::CreateSnapshotRequest {
                pool,
                volume: v,
                name: snapshot.clone(),
            })
            .await
        }
        VolumeCmd::Ublk(UblkCmd::Start {
            volume,
            queue_depth,
        }) => {
            let (pool, name) = split(volume)?;
            let v = api
                .export_volume_ublk(pb::ExportVolumeUblkRequest {
                    pool,
                    name,
                    queue_depth: *queue_depth,
                })
                .await
                .map_err(refused)?
                .into_inner();
            return emit(j, &v, |v| {
                println!("{}", v.ublk_device.as_deref().unwrap_or("(no ublk device)"))
            });
        }
        VolumeCmd::Ublk(UblkCmd::Stop { volume }) => {
            let (pool, name) = split(volume)?;
            api.stop_volume_ublk(pb::StopVolumeUblkRequest { pool, name })
                .await
                .map_err(refused)?;
            done(j, &format!("volume {volume} is not exported as ublk"));
            return Ok(());
        }
        VolumeCmd::Clone { snapshot, name } => {
            let (pool, s) = split(snapshot)?;
            api.clone_snapshot(pb::CloneSnapshotRequest {
                pool,
                snapshot: s,
                name: name.clone(),
            })
            .await
        }
    };
    let v = v.map_err(refused)?.into_inner();
    emit(j, &v, |v| {
        one(v);
        if let Some(us) = v.snapshot_pause_us {
            println!("the volume's I/O paused {us} us for the snapshot");
        }
    })
}
