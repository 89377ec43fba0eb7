//! `lightpool-target`: the NVMe-over-Fabrics target daemon. A thin binary: it reads the
//! configuration, builds block devices and subsystems, starts the reactors and the
//! NVMe/TCP listeners, and waits for SIGINT/SIGTERM.

mod config;
#[macro_use]
mod fdpass;
mod control;
mod pools;
mod raid;
mod transports;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lightpool_bdev::Bdev;
use lightpool_bdev_nvme_vfio::{NvmeVfioBdev, NvmeVfioOptions};
use lightpool_bdev_ram::MallocBdev;
use lightpool_bdev_uring::{UringBdev, UringOptions};
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions, TransportContext};
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use std::os::unix::net::UnixListener;

use config::{parse_size, Config, ListenerSection, NamespaceSection, SubsystemSection};

/// The subsystem served when no configuration is given.
const DEFAULT_NQN: &str = "nqn.2024-01.io.lightpool:default";

#[derive(Parser, Debug)]
#[command(
    name = "lightpool-target",
    version,
    about = "LightPool NVMe-over-Fabrics target (NVMe/TCP)"
)]
struct Args {
    /// TOML configuration (see README.md). Without it: one 1 GiB RAM namespace in
    /// subsystem nqn.2024-01.io.lightpool:default on 127.0.0.1:4420.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen here instead of the configured listeners (IP:PORT).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "lightpool_transport_tcp=debug".
    #[arg(long, default_value = "info", global = true)]
    log: String,
    /// Unix socket for control (hot upgrade). Default: /run/lightpool-target.sock for
    /// root, /tmp/lightpool-target-UID.sock otherwise.
    #[arg(long, global = true)]
    control_socket: Option<String>,
    /// Take over from the target running behind this control socket (hot upgrade)
    /// instead of starting from a configuration.
    #[arg(long, conflicts_with_all = ["config", "listen"])]
    upgrade_from: Option<String>,
    /// Directory for state that outlives the process (overrides [target] state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Start from the state region a hot upgrade left in the state directory (after
    /// both processes of an upgrade died): same subsystems, namespaces, ANA states and
    /// listeners; hosts reconnect.
    #[arg(long, requires = "state_dir", conflicts_with_all = ["config", "upgrade_from"])]
    recover: bool,
    /// Test hook: the state layout this process writes at a handover.
    #[arg(long, hide = true, default_value_t = upgrade::STATE_LAYOUT)]
    state_layout: u32,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Replace the running target with another binary without disturbing its hosts:
    /// same connections, same controllers, nothing acknowledged lost.
    Upgrade {
        /// The new lightpool-target binary.
        #[arg(long)]
        binary: PathBuf,
    },
    /// List the block devices of the running target (children first, with the
    /// namespaces each serves and, for devices that count, their I/O).
    Devices,
    /// Run a pool operation on the running target: POOL info|list|check, create VOL
    /// SIZE [thick], delete VOL, grow VOL SIZE, rename VOL NEW, snapshot VOL SNAP,
    /// clone SNAP VOL, inflate VOL (no arguments: every pool).
    Pool {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Arrays of the running target: `list`, `status NAME`, `fail NAME MEMBER`,
    /// `remove NAME MEMBER`, `re-add NAME MEMBER`, `add NAME PATH`, `rate NAME
    /// BYTES-PER-SECOND` (a member is a device name or a slot as #N).
    Raid {
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set the ANA state of a namespace group of the running target; connected hosts
    /// get an ANA-change async event and re-read the ANA log.
    Ana {
        /// Subsystem NQN.
        #[arg(long)]
        nqn: String,
        /// ANA group ID (by default a namespace's group is its NSID).
        #[arg(long)]
        group: u32,
        /// optimized, non-optimized, inaccessible, persistent-loss or change.
        #[arg(long)]
        state: String,
    },
}

/// What Identify Controller reports as the firmware revision: the package version,
/// unless the build set LIGHTPOOL_FIRMWARE_REVISION.
pub fn firmware_revision() -> &'static str {
    option_env!("LIGHTPOOL_FIRMWARE_REVISION").unwrap_or(env!("CARGO_PKG_VERSION"))
}

fn default_control_socket() -> String {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        "/run/lightpool-target.sock".to_string()
    } else {
        format!("/tmp/lightpool-target-{uid}.sock")
    }
}

/// A serving target: what the control thread and a hot upgrade need.
pub struct Running {
    pub target: Arc<Target>,
    pub reactors: Vec<ReactorHandle>,
    /// The transports serving, one per kind in use.
    pub transports: transports::Transports,
    pub cores: Vec<Option<usize>>,
    pub idle_spin_us: Option<u64>,
    pub control: UnixListener,
    pub control_path: String,
    /// State layout written at a handover.
    pub layout: u32,
    /// Where RAM namespaces and the state region live, if anywhere.
    pub state_dir: Option<PathBuf>,
    /// The state region: every object that must outlive this process is recorded here
    /// as it is created.
    pub region: Arc<lightpool_nvmf::region::Region>,
    /// The pools (volume stores) the target holds.
    pub pools: pools::Pools,
}

fn default_config() -> Config {
    Config {
        target: Default::default(),
        listeners: vec![ListenerSection {
            address: "127.0.0.1:4420".into(),
            transport: "tcp".into(),
        }],
        subsystems: vec![SubsystemSection {
            nqn: DEFAULT_NQN.into(),
            serial: "LIGHTPOOL0000001".into(),
            model: "LightPool".into(),
            allow_any_host: true,
            hosts: vec![],
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
            namespaces: vec![NamespaceSection {
                nsid: 1,
                ram: Some("1GiB".into()),
                file: None,
                vfio: None,
                vfio_nsid: None,
                block_size: Some(512),
                hugepages: false,
                read_only: false,
                direct: None,
                nguid: None,
                uuid: None,
                ana_group: None,
                passthru: false,
                raid: None,
                volume: None,
            }],
        }],
        raids: Vec::new(),
        pools: vec![],
    }
}

fn load_config(args: &Args) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let cfg: Config = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
            cfg.validate()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            cfg
        }
        None => default_config(),
    };
    if !args.listen.is_empty() {
        cfg.listeners = args
            .listen
            .iter()
            .map(|a| ListenerSection {
                address: a.to_string(),
                transport: "tcp".into(),
            })
            .collect();
    }
    if cfg.listeners.is_empty() {
        bail!(
            "no listener configured: add a [[listener]] with an address, or pass --listen IP:PORT"
        );
    }
    Ok(cfg)
}

/// The tmpfs file of a RAM namespace in the state directory.
pub fn ram_file(dir: &std::path::Path, nqn: &str, nsid: u32) -> PathBuf {
    let safe: String = nqn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("ram-{safe}-{nsid}"))
}

fn open_bdev(
    field: &str,
    nqn: &str,
    n: &NamespaceSection,
    state_dir: Option<&std::path::Path>,
) -> Result<Arc<dyn Bdev>> {
    if let Some(size) = &n.ram {
        let bytes = parse_size(size).map_err(|e| anyhow::anyhow!("{field}.ram: {e}"))?;
        let name = format!("ram{}", n.nsid);
        let bs = n.block_size.unwrap_or(512);
        let bdev = match state_dir {
            Some(_) if n.hugepages => Err(lightpool_bdev::BdevError::Invalid(
                "huge pages cannot be used with a state directory (its RAM files live on tmpfs)"
                    .into(),
            )),
            Some(dir) => MallocBdev::open_shared(&name, &ram_file(dir, nqn, n.nsid), bytes, bs),
            None if n.hugepages => MallocBdev::new_hugepages(&name, bytes, bs),
            None => MallocBdev::new(&name, bytes, bs),
        }
        .map_err(|e| anyhow::anyhow!("{field}.ram: {e}"))?;
        return Ok(bdev);
    }
    if let Some(addr) = &n.vfio {
        let opts = NvmeVfioOptions {
            nsid: n.vfio_nsid.unwrap_or(1),
            ..NvmeVfioOptions::default()
        };
        let bdev =
            NvmeVfioBdev::open(addr, opts).map_err(|e| anyhow::anyhow!("{field}.vfio: {e}"))?;
        return Ok(bdev);
    }
    let path = n
        .file
        .as_ref()
        .expect("validate() guarantees ram, file or vfio");
    let opts = UringOptions {
        block_size: n.block_size,
        read_only: n.read_only,
        direct: n.direct.unwrap_or(true),
        ..UringOptions::default()
    };
    let bdev = UringBdev::open(path, opts).map_err(|e| anyhow::anyhow!("{field}.file: {e}"))?;
    Ok(bdev)
}

fn build_target(
    cfg: &Config,
    state_dir: Option<&std::path::Path>,
    layout: u32,
) -> Result<(
    Arc<Target>,
    Arc<lightpool_nvmf::region::Region>,
    pools::Pools,
)> {
    let t = &cfg.target;
    let opts = TargetOptions {
        max_queue_depth: t.max_queue_depth,
        max_io_queues: t.max_io_queues,
        in_capsule_data_size: t.in_capsule_data_size,
        max_transfer_size: t.max_transfer_size,
        firmware_revision: firmware_revision().to_string(),
        ..TargetOptions::default()
    };
    let target = Target::new(opts).map_err(|e| anyhow::anyhow!("target: {e}"))?;
    let region = upgrade::create_region(&target.opts, state_dir, layout)?;
    target
        .attach_region(region.clone())
        .map_err(|e| anyhow::anyhow!("state region: {e}"))?;
    let arrays = raid::open_arrays(&cfg.raids, state_dir)?;
    let pools = pools::Pools::open(cfg, state_dir, &arrays)?;
    for (si, s) in cfg.subsystems.iter().enumerate() {
        let mut sc = SubsystemConfig::new(&s.nqn);
        sc.serial = s.serial.clone();
        sc.model = s.model.clone();
        sc.allow_any_host = s.allow_any_host;
        sc.hosts = s.hosts.clone();
        sc.min_cntlid = s.min_cntlid;
        sc.max_cntlid = s.max_cntlid;
        for (ni, n) in s.namespaces.iter().enumerate() {
            let field = format!("subsystem[{si}].namespace[{ni}]");
            let mut bdev = match (&n.volume, &n.raid) {
                (Some(v), _) => pools.volume(v).with_context(|| format!("{field}.volume"))?,
                (None, Some(r)) => arrays[r].clone(),
                (None, None) => open_bdev(&field, &s.nqn, n, state_dir)?,
            };
            if n.passthru {
                bdev = lightpool_bdev_passthru::PassthruBdev::new(bdev);
            }
            sc.namespaces.push(NamespaceConfig {
                nsid: n.nsid,
                bdev,
                nguid: Config::nguid(n),
                uuid: Config::uuid(n),
                anagrpid: n.ana_group,
            });
        }
        target
            .add_subsystem(sc)
            .map_err(|e| anyhow::anyhow!("subsystem[{si}]: {e}"))?;
    }
    Ok((target, region, pools))
}

/// Block SIGINT and SIGTERM in every thread (reactors inherit the mask) so the main
/// thread can wait for them with sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` was initialised by block_signals; sigwait writes one int.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// Start one reactor per entry: pinned to the core given, or unpinned.
pub fn spawn_reactors(
    cores: &[Option<usize>],
    idle_spin_us: Option<u64>,
) -> Result<Vec<ReactorHandle>> {
    let mut reactors = Vec::new();
    for (id, core) in cores.iter().enumerate() {
        let mut rc = ReactorConfig::new(id, *core);
        if let Some(us) = idle_spin_us {
            rc.idle_spin = Duration::from_micros(us);
        }
        reactors
            .push(lightpool_reactor::spawn(rc).with_context(|| format!("starting reactor {id}"))?);
    }
    Ok(reactors)
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let control = args
        .control_socket
        .clone()
        .unwrap_or_else(default_control_socket);
    let res = match &args.command {
        Some(Cmd::Upgrade { binary }) => control::upgrade_command(&control, binary, &args.log),
        Some(Cmd::Ana { nqn, group, state }) => control::ana_command(&control, nqn, *group, state),
        Some(Cmd::Devices) => control::devices_command(&control),
        Some(Cmd::Pool { args }) => pools::command_client(&control, args),
        Some(Cmd::Raid { args }) => raid::command(&control, args),
        None => run(&args, &control),
    };
    if let Err(e) = res {
        eprintln!("lightpool-target: {e:#}");
        std::process::exit(1);
    }
}

fn start(args: &Args, control_path: &str) -> Result<Running> {
    let cfg = load_config(args)?;
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| cfg.target.state_dir.clone());
    if let Some(d) = &state_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("creating the state directory {}", d.display()))?;
    }
    let (target, region, pools) = build_target(&cfg, state_dir.as_deref(), args.state_layout)?;
    let control = control::bind(control_path)?;
    let cores: Vec<Option<usize>> = if cfg.target.cores.is_empty() {
        vec![None; cfg.target.reactors]
    } else {
        cfg.target.cores.iter().map(|&c| Some(c)).collect()
    };
    let reactors = spawn_reactors(&cores, cfg.target.idle_spin_us)?;
    let transports = transports::Transports::new(TransportContext {
        target: target.clone(),
        reactors: reactors.clone(),
    });
    let mut bound = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let t = transports
            .get_or_create(&l.transport)
            .with_context(|| format!("listener[{i}].transport"))?;
        let addr = t
            .add_listener(&l.address)
            .with_context(|| format!("listener[{i}]"))?;
        bound.push((t.name(), addr));
    }
    for s in target.subsystems() {
        let ns: Vec<String> = s
            .namespaces()
            .iter()
            .map(|n| {
                format!(
                    "nsid {} ({} x {} B, {})",
                    n.nsid,
                    n.num_blocks,
                    n.block_size,
                    n.bdev.info().name
                )
            })
            .collect();
        println!(
            "lightpool-target {}: subsystem {} with {}",
            firmware_revision(),
            s.nqn,
            ns.join(", ")
        );
    }
    for (name, a) in &bound {
        println!(
            "lightpool-target: listening on {} ({}, discovery included)",
            a.to_addr_string(),
            transports::label(name)
        );
    }
    if let (Some((name, a)), Some(s)) = (bound.first(), target.subsystems().first()) {
        println!(
            "Connect a Linux host with: nvme connect -t {name} -a {} -s {} -n {}",
            a.traddr, a.trsvcid, s.nqn
        );
    }
    println!("lightpool-target: control socket {control_path} (upgrade with: lightpool-target upgrade --binary NEW --control-socket {control_path})");
    let run = Running {
        target,
        reactors,
        transports,
        cores,
        idle_spin_us: cfg.target.idle_spin_us,
        control,
        control_path: control_path.to_string(),
        layout: args.state_layout,
        state_dir,
        region,
        pools,
    };
    upgrade::write_boot(&run)?;
    Ok(run)
}

fn run(args: &Args, control_path: &str) -> Result<()> {
    // Signals are blocked before any thread starts, so every thread inherits the mask
    // and only the main thread takes them (sigwait below).
    let sigs = block_signals();
    let running = match (&args.upgrade_from, &args.state_dir) {
        (Some(from), _) => upgrade::take_over(from)?,
        (None, Some(dir)) if args.recover => upgrade::recover(dir, control_path)?,
        _ => start(args, control_path)?,
    };
    use std::io::Write;
    std::io::stdout().flush().ok();
    let running = Arc::new(running);
    control::serve(running.clone())?;

    let sig = wait_for_signal(&sigs);
    tracing::info!(signal = sig, "shutting down");
    for r in &running.reactors {
        r.stop();
    }
    for r in &running.reactors {
        r.join().ok();
    }
    let _ = std::fs::remove_file(&running.control_path);
    // The reactors' connections and channels are gone with their threads; dropping the
    // target now drops the block devices (flushes, and CC.SHN for VFIO controllers).
    drop(running);
    tracing::info!("stopped");
    Ok(())
}
