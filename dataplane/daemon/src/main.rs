//! `lightpool-target`: the NVMe-over-Fabrics target daemon. A thin binary: it reads the
//! configuration, builds block devices and subsystems, starts the reactors and the
//! NVMe/TCP listeners, and waits for SIGINT/SIGTERM.

mod api;
mod config;
#[macro_use]
mod fdpass;
mod control;
mod instance;
mod logging;
mod manage;
mod metrics;
mod pod;
mod pools;
mod raid;
mod service;
mod startup;
mod transports;
mod ublk;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lightpool_nvmf::Target;
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use std::os::unix::net::UnixListener;

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
    /// Log filter: a level (off, error, warn, info, debug, trace) or TARGET=LEVEL
    /// directives separated by commas, e.g. "info,lightpool_transport_tcp=debug".
    #[arg(long, default_value = "info", global = true, value_parser = logging::parse_filter)]
    log: String,
    /// Unix socket for control (hot upgrade, ANA, devices). Default: one per target,
    /// named after its first listener, in /run/lightpool/ for root and
    /// /tmp/lightpool-UID/ otherwise (e.g. /run/lightpool/target-127.0.0.1-4420.sock).
    /// The commands find it from --config or --listen, or else act on the one target
    /// running, and refuse when several run.
    #[arg(long, global = true)]
    control_socket: Option<String>,
    /// Unix socket of the management API (gRPC; what `lightpool` talks to). Default:
    /// the control socket's path with `.sock` replaced by `.api.sock`.
    #[arg(long, global = true)]
    api_socket: Option<String>,
    /// Take over from the target running behind this control socket (hot upgrade)
    /// instead of starting from a configuration.
    #[arg(long, conflicts_with_all = ["config", "listen"])]
    upgrade_from: Option<String>,
    /// Start as a DaemonSet pod beside the one it replaces (README "Hot upgrade in
    /// Kubernetes"): if a target answers on the control socket, take everything over
    /// from it (the hot upgrade) and serve in this process; if nothing answers (no
    /// socket file, or a stale one), start from the configuration. One process at a
    /// time (a lock file beside the socket); with --instance, an older instance never
    /// takes over from a newer one (it stands by until SIGTERM).
    #[arg(long, conflicts_with_all = ["upgrade_from", "recover"])]
    take_over_or_start: bool,
    /// This process's instance: the pod's UID (metadata.uid) in a DaemonSet. STATUS
    /// says it, `ready` checks it, and once this process has handed its target over
    /// it stays, idle, until SIGTERM (its container must not end and restart).
    /// Default: $LIGHTPOOL_INSTANCE (what a readiness probe's command can carry).
    #[arg(long, global = true)]
    instance: Option<String>,
    /// After a handover in a pod: the idle process the old target becomes.
    #[arg(long, hide = true)]
    retired: bool,
    /// With --retired: the successor's pid, for the log.
    #[arg(long, hide = true, requires = "retired")]
    retired_for: Option<u32>,
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
    /// Succeed if the target answering on the control socket is this --instance (any
    /// target without one): a pod's readiness probe, false for the old pod from the
    /// moment it has handed over.
    Ready,
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

/// The control socket a target started with `args` listens on when none is given.
fn default_control_socket(args: &Args) -> String {
    let first = instance::first_listener(args.config.as_deref(), &args.listen)
        .unwrap_or_else(|| instance::DEFAULT_LISTENER.to_string());
    instance::socket_for_listener(&first)
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
    /// The management side: device registry, change lock, API socket.
    pub mgmt: manage::Mgmt,
    /// The metrics endpoint's listening socket, if metrics are on (handed over in a hot
    /// upgrade).
    pub metrics: Option<std::net::TcpListener>,
    /// The API's TCP listener with mutual TLS, if `[api]` asks for one (handed over in
    /// a hot upgrade).
    pub api_tcp: Option<api::tcp::ApiTcp>,
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
    logging::init(&args.log, args.upgrade_from.is_some());
    let instance = args
        .instance
        .clone()
        .or_else(|| std::env::var(pod::INSTANCE_ENV).ok());
    if let Some(id) = &instance {
        if let Err(e) = pod::set_instance(id) {
            eprintln!("lightpool-target: {e}");
            std::process::exit(2);
        }
    }
    if args.retired {
        if let Err(e) = pod::retired(args.retired_for) {
            eprintln!("lightpool-target: {}", manage::anyhow_chain(&e));
            std::process::exit(1);
        }
        return;
    }
    // A command acts on the target named by --control-socket, --config or --listen, or
    // on the one target running; a target serves on the socket given or its own.
    let control = match (&args.control_socket, &args.command) {
        (Some(c), _) => Ok(Some(c.clone())),
        (None, Some(_)) => instance::find_running(args.config.as_deref(), &args.listen).map(Some),
        (None, None) if args.recover => Ok(None),
        (None, None) => Ok(Some(default_control_socket(&args))),
    };
    let res = control.and_then(|control| {
        let path = control.clone().unwrap_or_default();
        match &args.command {
            Some(Cmd::Upgrade { binary }) => control::upgrade_command(&path, binary, &args.log),
            Some(Cmd::Ana { nqn, group, state }) => control::ana_command(&path, nqn, *group, state),
            Some(Cmd::Ready) => pod::ready_command(&path),
            Some(Cmd::Devices) => control::devices_command(&path),
            Some(Cmd::Pool { args }) => pools::command_client(&path, args),
            Some(Cmd::Raid { args }) => raid::command(&path, args),
            None => run(&args, control.as_deref()),
        }
    });
    if let Err(e) = res {
        eprintln!("lightpool-target: {}", manage::anyhow_chain(&e));
        std::process::exit(1);
    }
}

fn start(args: &Args, control_path: &str) -> Result<Running> {
    startup::start(
        startup::StartArgs {
            config: args.config.as_deref(),
            listen: &args.listen,
            state_dir: args.state_dir.as_deref(),
            layout: args.state_layout,
            api_path: &api_path(args, control_path),
        },
        control_path,
    )
}

/// The API socket: `--api-socket`, or derived from the control socket's path.
fn api_path(args: &Args, control_path: &str) -> String {
    args.api_socket
        .clone()
        .unwrap_or_else(|| api::default_path(control_path))
}

fn run(args: &Args, control_path: Option<&str>) -> Result<()> {
    // Signals are blocked before any thread starts, so every thread inherits the mask
    // and only the main thread takes them (sigwait below).
    let sigs = service::Signals::block();
    // Held from the decision until this process serves (--take-over-or-start).
    let mut start_lock = None;
    // Devices a LightPool that died left behind (their /dev/ublkbN fail every I/O).
    // Not when taking over: the target serving now may live in another PID namespace
    // (a pod), where its stamp's process id cannot be checked from here.
    if args.upgrade_from.is_none() && !args.take_over_or_start {
        ublk::remove_stale();
    }
    let running = match (&args.upgrade_from, &args.state_dir, control_path) {
        (Some(from), _, _) => upgrade::take_over(from, upgrade::Output::Predecessors)?,
        (None, _, Some(path)) if args.take_over_or_start => {
            let lock = pod::StartLock::acquire(path, pod::LOCK_TIMEOUT)?;
            match pod::decide(path)? {
                pod::Decision::StandBy(why) => {
                    drop(lock);
                    return pod::stand_by(&sigs, &why);
                }
                pod::Decision::TakeOver(serving) => {
                    tracing::info!(control = path, serving, "a target serves here: taking over");
                    start_lock = Some(lock);
                    // This container's output, not the old one's (it goes with its pod).
                    upgrade::take_over(path, upgrade::Output::Own)
                        .with_context(|| format!("taking over from the target on {path}"))?
                }
                pod::Decision::Start => {
                    tracing::info!(control = path, "no target answers here: starting");
                    ublk::remove_stale();
                    start_lock = Some(lock);
                    start(args, path)?
                }
            }
        }
        (None, Some(dir), path) if args.recover => {
            // Without --control-socket: the sockets the processes that wrote it used.
            let api = args
                .api_socket
                .clone()
                .or_else(|| path.map(api::default_path));
            upgrade::recover(dir, path, api.as_deref())?
        }
        (_, _, Some(path)) => start(args, path)?,
        (_, _, None) => anyhow::bail!("no control socket: give --control-socket PATH"),
    };
    use std::io::Write;
    std::io::stdout().flush().ok();
    let running = Arc::new(running);
    let unbind = control::Unbind::new(&running.control_path);
    // The API socket too, here rather than only when `Mgmt` drops: a request being
    // answered at SIGTERM can hold the last reference past this thread's exit.
    let unbind_api = control::Unbind::new(&running.mgmt.api_path);
    control::serve(running.clone())?;
    api::serve(&running)?;
    metrics::serve(&running)?;
    // Every listener, the control socket and the API accept: tell the service manager
    // (a successor of a hot upgrade said MAINPID= already, see upgrade/new.rs).
    service::notify_or_log(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving {} subsystem(s); control socket {}",
        std::process::id(),
        running.target.subsystems().len(),
        running.control_path
    ));
    // Serving: the next newcomer may look.
    drop(start_lock);

    let sig = sigs.wait_for_stop();
    tracing::info!(signal = service::signal_name(sig), "shutting down");
    service::notify_or_log("STOPPING=1");
    // ublk devices first, while the reactors still serve their queues: the kernel
    // drains each device through them before it deletes it.
    ublk::stop_all(&running);
    for r in &running.reactors {
        r.stop();
    }
    for r in &running.reactors {
        r.join().ok();
    }
    drop(unbind);
    drop(unbind_api);
    // The reactors' connections and channels are gone with their threads; dropping the
    // target now drops the block devices (flushes, and CC.SHN for VFIO controllers).
    drop(running);
    tracing::info!("stopped");
    Ok(())
}
