//! The target's pools: each a block device of the registry (`DeviceSpec::Pool`),
//! opened from its `[[pool]]` section (replayed when it was not closed cleanly) with the
//! volumes it names created or grown; the volumes namespaces serve are registry devices
//! too (`DeviceSpec::Volume`, named "POOL:VOLUME"), so a hot upgrade hands both over
//! with the rest of the registry. And the control socket's POOL command, which runs the
//! pools' operations ([`PoolOps`]) at run time and which `lightpool-target pool` sends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lightpool_bdev::Bdev;
use lightpool_bdev_nvme_vfio::{NvmeVfioBdev, NvmeVfioOptions};
use lightpool_bdev_ram::MallocBdev;
use lightpool_bdev_uring::{UringBdev, UringOptions};
use lightpool_pool::{OpenReport, Pool, PoolError, PoolOps, PoolOptions, VolumeInfo};

use crate::config::{parse_size, split_volume, volume_device_name, PoolSection};
use crate::manage::{DeviceSpec, ManageError, Registry};
use crate::Running;

/// How long a hot upgrade may keep the pools' operations refused before they are
/// allowed again (an upgrade that started and neither finished nor said it gave up).
const FREEZE: Duration = Duration::from_secs(60);

/// A pool's registry description (its section as TOML).
pub fn spec(p: &PoolSection) -> Result<DeviceSpec, ManageError> {
    toml::to_string(p)
        .map(DeviceSpec::Pool)
        .map_err(|e| ManageError::Invalid(format!("pool {:?}: {e}", p.name)))
}

/// A pool's section from its registry description.
pub fn section(text: &str) -> Result<PoolSection, ManageError> {
    toml::from_str(text).map_err(|e| ManageError::Invalid(format!("a pool's description: {e}")))
}

/// Opens the pool `p` describes (making one on a blank device when allowed), and
/// creates or grows the volumes it names.
pub fn open_pool(
    p: &PoolSection,
    registry: &Registry,
    state_dir: Option<&Path>,
) -> Result<Arc<dyn Bdev>, ManageError> {
    let fail = |e: anyhow::Error| ManageError::Invalid(format!("{e:#}"));
    let dev = open_device(p, registry, state_dir)?;
    let opts = options(p);
    let (pool, report) = Pool::open(dev, &p.name, &opts, p.create).map_err(manage_error)?;
    let how = match &report {
        OpenReport::Created => "created",
        OpenReport::Clean { .. } => "clean",
        OpenReport::Recovered { .. } => "recovered",
    };
    OPENED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(p.name.clone(), how);
    match &report {
        OpenReport::Created => println!(
            "lightpool-target: pool {}: made a new pool on {}",
            p.name,
            pool.device_name()
        ),
        OpenReport::Clean { volumes } => println!(
            "lightpool-target: pool {}: opened ({volumes} volumes, closed cleanly)",
            p.name
        ),
        OpenReport::Recovered {
            volumes,
            finished,
            zeroed_clusters,
        } => {
            println!("lightpool-target: pool {}: recovered after an unclean shutdown ({volumes} volumes; {zeroed_clusters} free clusters zeroed)", p.name);
            for f in finished {
                println!("lightpool-target: pool {}: {f}", p.name);
            }
        }
    }
    for (vi, v) in p.volumes.iter().enumerate() {
        ensure_volume(&pool, &v.name, v.size.0, v.thin)
            .map_err(|e| fail(e.context(format!("volume[{vi}] ({})", v.name))))?;
    }
    Ok(pool)
}

/// The block device of volume `volume` of the registry's pool `pool`.
pub fn open_volume(
    registry: &Registry,
    pool: &str,
    volume: &str,
) -> Result<Arc<dyn Bdev>, ManageError> {
    let p = registry
        .get(pool)
        .and_then(|e| lightpool_pool::as_pool(&e.bdev))
        .ok_or_else(|| ManageError::NotFound(format!("no pool {pool:?}")))?;
    p.open_volume(volume)
        .map(|v| v as Arc<dyn Bdev>)
        .map_err(manage_error)
}

/// How this process opened each pool ("created", "clean", "recovered"); a pool a hot
/// upgrade handed over is not in it.
static OPENED: std::sync::Mutex<BTreeMap<String, &'static str>> =
    std::sync::Mutex::new(BTreeMap::new());

/// How this process opened pool `name`: "created", "clean", "recovered" or "adopted"
/// (from the process before a hot upgrade).
pub fn opened(name: &str) -> &'static str {
    OPENED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .copied()
        .unwrap_or("adopted")
}

/// A pool's error as the kind of refusal it is (each kind one gRPC status code).
pub fn manage_error(e: PoolError) -> ManageError {
    use PoolError as P;
    let m = e.to_string();
    match e {
        P::NoSuchVolume { .. } => ManageError::NotFound(m),
        P::Exists { .. } => ManageError::Exists(m),
        P::InvalidName { .. } | P::InvalidSize { .. } | P::Options(_) => ManageError::Invalid(m),
        P::NoSpace { .. }
        | P::Overcommit { .. }
        | P::TooManyVolumes { .. }
        | P::MetadataFull { .. }
        | P::MapAreaFull { .. } => ManageError::NoMemory(m),
        P::IsSnapshot { .. }
        | P::NotSnapshot { .. }
        | P::NotClone { .. }
        | P::HasClones { .. }
        | P::InUse { .. }
        | P::Shrink { .. }
        | P::NotAPool { .. }
        | P::WrongPool { .. }
        | P::Version { .. }
        | P::DeviceSize { .. }
        | P::BlockSize { .. } => ManageError::InUse(m),
        P::Busy { .. } | P::HandedOver { .. } => ManageError::Unavailable(m),
        P::Device { .. } | P::Io { .. } | P::Corrupt { .. } | P::Arena { .. } => {
            ManageError::Failed(m)
        }
    }
}

/// The registry's name of volume "POOL/VOLUME", registered first if no namespace
/// served it yet.
pub fn volume_device(run: &Running, spec: &str) -> Result<String, ManageError> {
    let (pool, volume) = split_volume(spec)
        .ok_or_else(|| ManageError::Invalid(format!("{spec:?} is not \"POOL/VOLUME\"")))?;
    let name = volume_device_name(pool, volume);
    if run.mgmt.registry.get(&name).is_none() {
        run.create_bdev(
            &name,
            DeviceSpec::Volume {
                pool: pool.to_string(),
                volume: volume.to_string(),
            },
        )?;
    }
    Ok(name)
}

/// Every pool of the target.
pub fn all(run: &Running) -> Vec<Arc<Pool>> {
    run.mgmt
        .registry
        .all()
        .iter()
        .filter_map(|e| lightpool_pool::as_pool(&e.bdev))
        .collect()
}

/// A hot upgrade starts: the pools' operations wait for it to end (the successor
/// reads the pools' structure now).
pub fn freeze(run: &Running) {
    for p in all(run) {
        p.freeze(FREEZE);
    }
}

/// The upgrade did not happen: operations are allowed again.
pub fn thaw(run: &Running) {
    for p in all(run) {
        p.thaw();
    }
}

/// Runs a POOL command: `POOL NAME OP [ARGS]` (see [`USAGE`]). Answer lines.
pub fn command(run: &Running, line: &str) -> Result<Vec<String>> {
    let pools = all(run);
    let w: Vec<&str> = line.split_whitespace().collect();
    let (name, op, args) = match w.as_slice() {
        [] => return Ok(pools.iter().map(|p| pool_line(p.as_ref())).collect()),
        [name, op, args @ ..] => (*name, *op, args),
        [name] => (*name, "info", &[][..]),
    };
    let p = pools.iter().find(|p| p.name() == name).ok_or_else(|| {
        let names: Vec<&str> = pools.iter().map(|p| p.name()).collect();
        anyhow!("no pool {name:?} (pools: {})", names.join(", "))
    })?;
    let size = |s: &str| parse_size(s).map_err(|e| anyhow!(e));
    let out = match (op, args) {
        ("info", []) => vec![pool_line(p.as_ref())],
        ("list", []) => p.list().iter().map(volume_line).collect(),
        ("create", [v, sz]) => vec![volume_line(&p.create(v, size(sz)?, true)?)],
        ("create", [v, sz, "thick"]) => vec![volume_line(&p.create(v, size(sz)?, false)?)],
        ("delete", [v]) => {
            p.delete(v)?;
            vec![format!("deleted {v}")]
        }
        ("grow", [v, sz]) => vec![volume_line(&p.grow(v, size(sz)?)?)],
        ("rename", [v, new]) => vec![volume_line(&p.rename(v, new)?)],
        ("snapshot", [v, snap]) => {
            let info = p.snapshot(v, snap)?;
            let pause = p.served_volume(v).map(|d| d.last_snapshot_pause());
            let mut l = volume_line(&info);
            if let Some(d) = pause {
                l.push_str(&format!(" pause_us={}", d.as_micros()));
            }
            vec![l]
        }
        ("clone", [snap, v]) => vec![volume_line(&p.clone_snapshot(snap, v)?)],
        ("inflate", [v]) => vec![volume_line(&p.inflate(v)?)],
        ("check", []) => {
            let r = p.check()?;
            vec![format!(
                "ok volumes={} md_pages={} clusters_owned={} free_clusters={}",
                r.volumes, r.md_pages_read, r.clusters_owned, r.free_clusters
            )]
        }
        _ => bail!("{line:?}: {USAGE}"),
    };
    Ok(out)
}

/// What the POOL command takes.
pub const USAGE: &str = "use: POOL NAME info|list|check | create VOL SIZE [thick] | delete VOL | grow VOL SIZE | rename VOL NEW | snapshot VOL SNAP | clone SNAP VOL | inflate VOL";

fn pool_line(p: &Pool) -> String {
    let i = p.pool_info();
    format!(
        "pool={} device={} cluster_size={} block_size={} data_clusters={} free_clusters={} volumes={} max_volumes={} overcommit={} promised={} promise_limit={} md_pages={} md_pages_free={}",
        i.name, i.device, i.cluster_size, i.block_size, i.data_clusters, i.free_clusters, i.volumes, i.max_volumes,
        i.overcommit, i.promised, i.promise_limit, i.md_pages, i.md_pages_free
    )
}

fn volume_line(v: &VolumeInfo) -> String {
    format!(
        "name={} size={} used={} thin={} snapshot={} parent={} clones={} id={:#x}",
        v.name,
        v.size,
        v.used,
        v.thin,
        v.snapshot,
        v.parent.as_deref().unwrap_or("-"),
        if v.clones.is_empty() {
            "-".to_string()
        } else {
            v.clones.join(",")
        },
        v.id
    )
}

/// The configured volume exists with at least its size: created if missing, grown if
/// smaller; a larger one (grown at run time) is kept as it is.
fn ensure_volume(pool: &Pool, name: &str, size: u64, thin: bool) -> Result<()> {
    match pool.volume_info(name) {
        Err(lightpool_pool::PoolError::NoSuchVolume { .. }) => {
            pool.create(name, size, thin)?;
            println!("lightpool-target: pool {}: created volume {name} ({size} bytes, {})", pool.name(), if thin { "thin" } else { "thick" });
        }
        Err(e) => return Err(e.into()),
        Ok(v) if v.snapshot => bail!("{name:?} is a snapshot on the pool; the configuration names a volume"),
        Ok(v) if v.size < size => {
            pool.grow(name, size)?;
            println!("lightpool-target: pool {}: grew volume {name} from {} to {size} bytes", pool.name(), v.size);
        }
        Ok(v) if v.size > size => println!(
            "lightpool-target: pool {}: volume {name} has {} bytes, more than the {size} configured (grown at run time); kept",
            pool.name(),
            v.size
        ),
        Ok(_) => {}
    }
    Ok(())
}

fn options(p: &PoolSection) -> PoolOptions {
    let d = PoolOptions::default();
    PoolOptions {
        cluster_size: p
            .cluster_size
            .map_or(d.cluster_size, |s| u32::try_from(s.0).unwrap_or(u32::MAX)),
        overcommit: p.overcommit.unwrap_or(d.overcommit),
        max_volumes: p.max_volumes.unwrap_or(d.max_volumes),
        md_pages: p.md_pages,
    }
}

/// The file of a RAM pool in the state directory.
pub fn ram_file(dir: &Path, pool: &str) -> std::path::PathBuf {
    dir.join(format!("pool-{pool}"))
}

/// Opens a pool's device: a device of the registry by name, or its own.
fn open_device(
    p: &PoolSection,
    registry: &Registry,
    state_dir: Option<&Path>,
) -> Result<Arc<dyn Bdev>, ManageError> {
    let bad = |key: &str, e: lightpool_bdev::BdevError| ManageError::Invalid(format!("{key}: {e}"));
    if let Some(d) = p.device_name() {
        return registry.get(d).map(|e| e.bdev).ok_or_else(|| {
            ManageError::NotFound(format!("no block device named {d:?} for pool {:?}", p.name))
        });
    }
    let name = format!("pool-{}", p.name);
    if let Some(size) = p.ram {
        let bs = p.block_size.unwrap_or(512);
        // Not populated: a pool's RAM fills as it is written.
        return match state_dir {
            Some(dir) => MallocBdev::open_shared(&name, &ram_file(dir, &p.name), size.0, bs),
            None => MallocBdev::new(&name, size.0, bs),
        }
        .map(|d| d as Arc<dyn Bdev>)
        .map_err(|e| bad("ram", e));
    }
    if let Some(addr) = &p.vfio {
        let opts = NvmeVfioOptions {
            nsid: p.vfio_nsid.unwrap_or(1),
            ..NvmeVfioOptions::default()
        };
        return NvmeVfioBdev::open(addr, opts)
            .map(|d| d as Arc<dyn Bdev>)
            .map_err(|e| bad("vfio", e));
    }
    let path = p
        .device
        .as_ref()
        .ok_or_else(|| ManageError::Invalid(format!("pool {:?} names no device", p.name)))?;
    let opts = UringOptions {
        block_size: p.block_size,
        direct: p.direct.unwrap_or(true),
        ..UringOptions::default()
    };
    UringBdev::open(path, opts)
        .map(|d| d as Arc<dyn Bdev>)
        .map_err(|e| bad("device", e))
}

/// `lightpool-target pool ARGS`: sends POOL ARGS to the running target and prints its
/// answer.
pub fn command_client(control: &str, args: &[String]) -> Result<()> {
    let mut s = UnixStream::connect(control)
        .with_context(|| format!("cannot reach the running target at {control}"))?;
    s.write_all(format!("POOL {}\n", args.join(" ")).as_bytes())?;
    let mut r = BufReader::new(&s);
    let mut head = String::new();
    r.read_line(&mut head)?;
    let head = head.trim_end();
    if let Some(e) = head.strip_prefix("ERR ") {
        bail!("{e}");
    }
    let n: usize = head
        .strip_prefix("OK ")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unexpected answer {head:?}"))?;
    for _ in 0..n {
        let mut l = String::new();
        r.read_line(&mut l)?;
        print!("{l}");
    }
    Ok(())
}
