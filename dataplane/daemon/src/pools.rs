//! The target's pools: opened at start from the configuration (replayed when they were
//! not closed cleanly), with the volumes it names created or grown; found again among
//! the devices a predecessor handed over; and the control socket's POOL command, which
//! runs the pools' operations ([`PoolOps`]) at run time and which
//! `lightpool-target pool` sends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lightpool_bdev::Bdev;
use lightpool_bdev_nvme_vfio::{NvmeVfioBdev, NvmeVfioOptions};
use lightpool_bdev_ram::MallocBdev;
use lightpool_bdev_uring::{UringBdev, UringOptions};
use lightpool_pool::{OpenReport, Pool, PoolOps, PoolOptions, VolumeInfo};

use crate::config::{parse_size, Config, PoolSection};

/// How long a hot upgrade may keep the pools' operations refused before they are
/// allowed again (an upgrade that started and neither finished nor said it gave up).
const FREEZE: Duration = Duration::from_secs(60);

/// The pools of a target, by name.
#[derive(Default)]
pub struct Pools {
    by_name: Mutex<BTreeMap<String, Arc<Pool>>>,
}

impl Pools {
    /// Opens every configured pool (making one on a blank device when allowed), and
    /// creates or grows the volumes the configuration names.
    pub fn open(
        cfg: &Config,
        state_dir: Option<&Path>,
        arrays: &BTreeMap<String, Arc<dyn Bdev>>,
    ) -> Result<Pools> {
        let pools = Pools::default();
        for (pi, p) in cfg.pools.iter().enumerate() {
            let field = format!("pool[{pi}]");
            let dev = open_device(&field, p, state_dir, arrays)?;
            let opts = options(p)?;
            let (pool, report) = Pool::open(dev, &p.name, &opts, p.create)
                .map_err(|e| anyhow!("{field} ({}): {e}", p.name))?;
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
                let size =
                    parse_size(&v.size).map_err(|e| anyhow!("{field}.volume[{vi}].size: {e}"))?;
                ensure_volume(&pool, &v.name, size, v.thin)
                    .map_err(|e| anyhow!("{field}.volume[{vi}] ({}): {e}", v.name))?;
            }
            pools.insert(pool);
        }
        Ok(pools)
    }

    /// The pools among devices taken over from a predecessor.
    pub fn from_devices<'a>(devs: impl Iterator<Item = &'a Arc<dyn Bdev>>) -> Pools {
        let pools = Pools::default();
        for d in devs {
            if let Some(p) = lightpool_pool::as_pool(d) {
                pools.insert(p);
            }
        }
        pools
    }

    fn insert(&self, p: Arc<Pool>) {
        self.by_name
            .lock()
            .expect("pools poisoned")
            .insert(p.name().to_string(), p);
    }

    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.by_name
            .lock()
            .expect("pools poisoned")
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.by_name
            .lock()
            .expect("pools poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// The pools as roots of the device graph: a pool whose volumes no namespace serves
    /// is handed over all the same.
    pub fn roots(&self) -> Vec<Arc<dyn Bdev>> {
        self.all().into_iter().map(|p| p as Arc<dyn Bdev>).collect()
    }

    /// The block device of volume "POOL/VOLUME".
    pub fn volume(&self, spec: &str) -> Result<Arc<dyn Bdev>> {
        let (pool, vol) = spec
            .split_once('/')
            .ok_or_else(|| anyhow!("{spec:?} is not \"POOL/VOLUME\""))?;
        let p = self.get(pool).ok_or_else(|| anyhow!("no pool {pool:?}"))?;
        Ok(p.open_volume(vol)?)
    }

    /// A hot upgrade starts: the pools' operations wait for it to end (the successor
    /// reads the pools' structure now).
    pub fn freeze(&self) {
        for p in self.all() {
            p.freeze(FREEZE);
        }
    }

    /// The upgrade did not happen: operations are allowed again.
    pub fn thaw(&self) {
        for p in self.all() {
            p.thaw();
        }
    }

    /// Runs a POOL command: `POOL OP [ARGS]` (see [`USAGE`]). Answer lines.
    pub fn command(&self, line: &str) -> Result<Vec<String>> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (name, op, args) = match w.as_slice() {
            [] => return Ok(self.all().iter().map(|p| pool_line(p.as_ref())).collect()),
            [name, op, args @ ..] => (*name, *op, args),
            [name] => (*name, "info", &[][..]),
        };
        let p = self.get(name).ok_or_else(|| {
            let names: Vec<String> = self.all().iter().map(|p| p.name().to_string()).collect();
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

fn options(p: &PoolSection) -> Result<PoolOptions> {
    let d = PoolOptions::default();
    Ok(PoolOptions {
        cluster_size: match &p.cluster_size {
            Some(s) => {
                u32::try_from(parse_size(s).map_err(|e| anyhow!(e))?).context("cluster_size")?
            }
            None => d.cluster_size,
        },
        overcommit: p.overcommit.unwrap_or(d.overcommit),
        max_volumes: p.max_volumes.unwrap_or(d.max_volumes),
        md_pages: p.md_pages,
    })
}

/// The file of a RAM pool in the state directory.
pub fn ram_file(dir: &Path, pool: &str) -> std::path::PathBuf {
    dir.join(format!("pool-{pool}"))
}

/// Opens a pool's device.
fn open_device(
    field: &str,
    p: &PoolSection,
    state_dir: Option<&Path>,
    arrays: &BTreeMap<String, Arc<dyn Bdev>>,
) -> Result<Arc<dyn Bdev>> {
    let name = format!("pool-{}", p.name);
    if let Some(r) = &p.raid {
        return arrays
            .get(r)
            .cloned()
            .ok_or_else(|| anyhow!("{field}.raid: no array {r:?} was opened"));
    }
    if let Some(size) = &p.ram {
        let bytes = parse_size(size).map_err(|e| anyhow!("{field}.ram: {e}"))?;
        let bs = p.block_size.unwrap_or(512);
        let dev = match state_dir {
            Some(dir) => MallocBdev::open_shared(&name, &ram_file(dir, &p.name), bytes, bs),
            None => MallocBdev::new(&name, bytes, bs),
        }
        .map_err(|e| anyhow!("{field}.ram: {e}"))?;
        return Ok(dev);
    }
    if let Some(addr) = &p.vfio {
        let opts = NvmeVfioOptions {
            nsid: p.vfio_nsid.unwrap_or(1),
            ..NvmeVfioOptions::default()
        };
        return Ok(NvmeVfioBdev::open(addr, opts).map_err(|e| anyhow!("{field}.vfio: {e}"))?);
    }
    let path = p
        .device
        .as_ref()
        .expect("validate() guarantees device, ram, vfio or raid");
    let opts = UringOptions {
        block_size: p.block_size,
        direct: p.direct.unwrap_or(true),
        ..UringOptions::default()
    };
    Ok(UringBdev::open(path, opts).map_err(|e| anyhow!("{field}.device: {e}"))?)
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
