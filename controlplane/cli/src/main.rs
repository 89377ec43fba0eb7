//! `lightpool`: the command line of a LightPool node, a thin client of the target's
//! management API (gRPC on a Unix socket, see `lightpool-api`). One subcommand per
//! resource; human tables by default, `--json` for scripts.
//!
//! Exit codes: 0 done; 1 the target refused or failed the request (its message says
//! what to change), or no target answers on the socket; 2 bad usage (an unknown
//! option, a missing argument, a malformed value).

mod cluster;
mod cmd;
mod csi;
mod migrate;
mod snapshot;
mod table;
mod target;
mod target_auth;
mod target_migrate;
mod target_raid;
mod target_tls;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "lightpool",
    version,
    about = "Manage a running lightpool-target through its management API"
)]
pub struct Cli {
    /// The target's API socket. Default: $LIGHTPOOL_SOCKET, else the one beside
    /// --control-socket, else that of the one target running (its API socket
    /// answering in /run/lightpool/ for root, /tmp/lightpool-UID/ otherwise, or
    /// $LIGHTPOOL_RUNTIME_DIR); refused when several run.
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// The target's control socket; its API socket is the one beside it (.sock ->
    /// .api.sock).
    #[arg(long, global = true)]
    pub control_socket: Option<String>,
    /// The target's API on TCP (HOST:PORT), with mutual TLS: needs --tls-ca,
    /// --tls-cert and --tls-key. Default: $LIGHTPOOL_API; without it, the Unix socket.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// The CA that signed the target's API certificate (PEM). Default: $LIGHTPOOL_TLS_CA.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate, signed by the CA the target trusts (PEM). Default:
    /// $LIGHTPOOL_TLS_CERT.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This client's private key (PEM). Default: $LIGHTPOOL_TLS_KEY.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the target's certificate must carry, if not the host of --api.
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The standalone instance's data directory (standalone, volume, pool, node).
    /// Default: $LIGHTPOOL_DATA_DIR, else /var/lib/lightpool for root and
    /// /tmp/lightpool-UID otherwise.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Subsystems: create, delete, list.
    #[command(subcommand)]
    Subsystem(SubsystemCmd),
    /// Namespaces: add, remove, resize, list (hosts are told of each change).
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Block devices: create, delete, list (the device graph).
    #[command(subcommand, alias = "device")]
    Bdev(BdevCmd),
    /// Listeners: add, remove, list.
    #[command(subcommand)]
    Listener(ListenerCmd),
    /// ANA group states: set, list.
    #[command(subcommand)]
    Ana(AnaCmd),
    /// Controllers: list, disconnect.
    #[command(subcommand)]
    Controller(ControllerCmd),
    /// Connections (queue pairs): list, disconnect.
    #[command(subcommand)]
    Connection(ConnectionCmd),
    /// Statistics: per subsystem and controller, and devices that count their I/O.
    Stats,
    /// The log filter: get, set.
    #[command(subcommand)]
    Log(LogCmd),
    /// The running target: version, pid, sockets.
    Status,
    /// Replace the running target with another binary without disturbing its hosts.
    Upgrade {
        /// The new lightpool-target binary (a path the target can open).
        #[arg(long)]
        binary: PathBuf,
        /// Log filter of the new process; default the running one's.
        #[arg(long)]
        log: Option<String>,
    },
    /// Configuration as state.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Run LightPool on this machine: the dataplane, the controller and one agent,
    /// state in the data directory and the node's pool (a pool of the target) on a
    /// sparse file there or on --device.
    Standalone(StandaloneArgs),
    /// Run a further storage node on this machine (its own dataplane and agent,
    /// e.g. in a network namespace of its own) that joins the standalone
    /// instance on --data-dir.
    Agent(AgentArgs),
    /// This target's own pools, volumes and snapshots (the dataplane's, through
    /// its API): `lightpool target pool|volume|snapshot ...`. `lightpool pool` and
    /// `lightpool volume` are the standalone cluster's, placed on these.
    #[command(subcommand)]
    Target(target::TargetCmd),
    /// Volumes (of the standalone instance): create, list, show, delete, snapshot.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots of the standalone instance's volumes: list, show, delete
    /// (`lightpool volume snapshot` takes one). A target's own pool snapshots:
    /// `lightpool target snapshot`.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Storage pools (of the standalone instance, one per node): list. A
    /// target's own pools: `lightpool target pool`.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Storage nodes: list.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Serve the CSI plugin (Identity, Controller, Node) on a Unix socket.
    Csi(csi::CsiArgs),
}

#[derive(Args, Debug)]
pub struct StandaloneArgs {
    /// The default pool's size (a sparse file: space is taken as hosts write).
    #[arg(long, default_value = "10GiB", value_parser = cmd::parse_size)]
    pub pool_size: u64,
    /// The node's pool on this file or block device instead of the sparse file
    /// (a new pool when it is blank; one it holds is opened; anything else is
    /// refused, never formatted over).
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// The node's name; default the host name.
    #[arg(long)]
    pub node: Option<String>,
    /// The address hosts connect to (NVMe/TCP).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Its port.
    #[arg(long, default_value_t = 4420)]
    pub port: u16,
    /// HOST:PORT other nodes and hosts are told to connect to, when they reach this
    /// node through something in between (a NAT, a proxy); default --address:--port.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_advertise)]
    pub advertise: Option<(String, u16)>,
    /// The lightpool-target binary; default the one beside lightpool, else $PATH's.
    #[arg(long)]
    pub target_binary: Option<PathBuf>,
    /// The dataplane's log filter (its log: target.log in the data directory).
    #[arg(long, default_value = "info")]
    pub target_log: String,
    /// Pool files through the page cache (a data directory on tmpfs has no O_DIRECT).
    #[arg(long)]
    pub buffered: bool,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This node's own directory (its pool files, its target's sockets and log).
    #[arg(long)]
    pub node_dir: PathBuf,
    #[command(flatten)]
    pub node: StandaloneArgs,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume and wait until it can be connected to; prints the
    /// `nvme connect` line.
    Create {
        name: String,
        /// e.g. 10GiB; with --from-snapshot or --from-volume the source's size
        /// when left out.
        #[arg(long, value_parser = cmd::parse_size, required_unless_present_any = ["from_snapshot", "from_volume"])]
        size: Option<u64>,
        /// Restore from this snapshot: a clone of it, in its pool on its node.
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        /// A copy of this volume as it is now: a clone in its pool on its node
        /// (of the source's size).
        #[arg(long)]
        from_volume: Option<String>,
        /// Thin: space taken as written, within the pool's over-commit.
        #[arg(long)]
        thin: bool,
        /// must-local, prefer-local, prefer-remote or must-remote (to the consumer).
        #[arg(long, default_value = "prefer-local", value_parser = cluster::parse_placement)]
        placement: lightpool_model::PlacementHint,
        /// The node that will use it; default this host.
        #[arg(long)]
        consumer: Option<String>,
        /// Seconds to wait for it to be ready.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    List,
    /// Grow a volume to --size while it is served (hosts connected to it are
    /// told); waits until its node's dataplane serves the new size. Volumes only
    /// grow.
    #[command(alias = "expand")]
    Resize {
        name: String,
        /// The new size, e.g. 20GiB: at least the volume's size.
        #[arg(long, value_parser = cmd::parse_size)]
        size: u64,
        /// Seconds to wait for the dataplane to serve it.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Its placement, status and connect line.
    Show {
        name: String,
    },
    /// Delete it (hosts are cut off first) and wait until it is gone. Its
    /// snapshots stay, to restore from.
    Delete {
        name: String,
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Move a volume to another node while its hosts keep doing I/O (live
    /// migration: the destination copies while new writes go to both, then the
    /// hosts' paths switch by ANA). `--wait` follows it with a progress line per
    /// change. `cancel`, `status` and `list` work on the migrations.
    Migrate(MigrateArgs),
    /// Take snapshot SNAPSHOT of the volume (in its pool, while it is served) and
    /// wait until it is Ready.
    Snapshot {
        volume: String,
        snapshot: String,
        /// Seconds to wait for it.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub cmd: Option<MigrateSub>,
    /// The volume to move.
    pub volume: Option<String>,
    /// The node to move it to; the scheduler picks one when left out.
    #[arg(long)]
    pub to: Option<String>,
    /// The pool there; the scheduler picks one when left out.
    #[arg(long)]
    pub pool: Option<String>,
    /// Bytes per second the copy reads at most, e.g. 100MiB.
    #[arg(long, value_parser = cmd::parse_size)]
    pub rate_limit: Option<u64>,
    /// Follow it until it ends (at most this many seconds; 3600 when no number
    /// is given).
    #[arg(long, num_args = 0..=1, default_missing_value = "3600")]
    pub wait: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum MigrateSub {
    /// Give up a migration before its switch: it rolls back and the volume stays.
    Cancel {
        volume: String,
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// The volume's migration that runs, else its latest.
    Status { volume: String },
    /// Every migration.
    List,
}

/// What `lightpool volume migrate` was asked.
#[derive(Debug)]
pub enum MigrateCmd {
    Start {
        volume: String,
        to: Option<String>,
        pool: Option<String>,
        rate_limit: Option<u64>,
        wait: Option<u64>,
    },
    Cancel {
        volume: String,
        wait: u64,
    },
    Status {
        volume: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    List,
    /// Its volume, pool, node, size, time taken and events.
    Show {
        name: String,
    },
    /// Delete it from its pool and wait until it is gone; refused (it stays
    /// marked) while more than one volume depends on it.
    Delete {
        name: String,
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    List,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    List,
    /// Mark the node unschedulable: no new volume (nor migration) is placed there;
    /// what it holds stays.
    Cordon {
        node: String,
    },
    /// Make a cordoned (or drained) node schedulable again.
    Uncordon {
        node: String,
    },
    /// Cordon the node, then move every volume off it (live migrations, the
    /// scheduler choosing each destination), `--parallel` at a time, with a progress
    /// line per change. `lightpool node uncordon` makes it schedulable again.
    Drain {
        node: String,
        /// Migrations at once.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Seconds to wait for all of them.
        #[arg(long, default_value_t = 3600)]
        wait: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum SubsystemCmd {
    Create {
        nqn: String,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// A host allowed to connect (repeatable); with none, any host may.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Let any host connect even with --host given.
        #[arg(long)]
        allow_any_host: bool,
        #[arg(long)]
        min_cntlid: Option<u32>,
        #[arg(long)]
        max_cntlid: Option<u32>,
    },
    Delete {
        nqn: String,
    },
    List {
        nqn: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NamespaceCmd {
    Add {
        #[arg(long)]
        nqn: String,
        /// The block device to serve,
        #[arg(long, required_unless_present = "volume", conflicts_with = "volume")]
        device: Option<String>,
        /// or a volume of one of the target's pools, POOL/VOLUME.
        #[arg(long, value_parser = target::parse_pool_path)]
        volume: Option<target::PoolPath>,
        /// 1 to 32; default the lowest free.
        #[arg(long, default_value_t = 0)]
        nsid: u32,
        /// Bytes of the device to present (e.g. 512MiB); default all of it.
        #[arg(long, value_parser = cmd::parse_size)]
        size: Option<u64>,
        #[arg(long)]
        nguid: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long)]
        ana_group: Option<u32>,
    },
    Remove {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        nsid: u32,
    },
    Resize {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        nsid: u32,
        /// New size (e.g. 1GiB); default all of its device.
        #[arg(long, value_parser = cmd::parse_size)]
        size: Option<u64>,
    },
    List {
        #[arg(long)]
        nqn: Option<String>,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct DeviceKind {
    /// A RAM device of this size (e.g. 1GiB).
    #[arg(long, value_parser = cmd::parse_size)]
    pub ram: Option<u64>,
    /// A file or block device (io_uring).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// An NVMe SSD bound to vfio-pci (PCI address).
    #[arg(long)]
    pub vfio: Option<String>,
    /// A pass-through counting the I/O of this device.
    #[arg(long)]
    pub passthru: Option<String>,
    /// A device injecting faults into this device (rules: --rule).
    #[arg(long)]
    pub fault: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BdevCmd {
    Create {
        name: String,
        #[command(flatten)]
        kind: DeviceKind,
        /// 512 or 4096.
        #[arg(long)]
        block_size: Option<u32>,
        /// RAM in 2 MiB huge pages: `true` (refused when not free) or `false`; left
        /// out, in huge pages whenever enough are free.
        #[arg(long)]
        hugepages: Option<bool>,
        #[arg(long)]
        read_only: bool,
        /// Files: go through the page cache (no O_DIRECT).
        #[arg(long)]
        buffered: bool,
        /// The SSD's namespace (vfio).
        #[arg(long)]
        vfio_nsid: Option<u32>,
        /// A fault device's rule (repeat for several): OPS:FAULT[,KEY=VALUE...], e.g.
        /// write:eio,count=1 or read:delay=50ms,every=100 (see `bdev faults --help`).
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    Delete {
        name: String,
    },
    List,
    /// Shows a fault device's rules and what each did; with RULEs, replaces them.
    ///
    /// A rule is OPS:FAULT[,KEY=VALUE...]. OPS: read, write, flush, zeroes, discard or
    /// any, joined with '+'. FAULT: eio (fails, nothing reaches the device), errno=N,
    /// full (a write refused for lack of space), torn (a write lands only on its first
    /// blocks, then fails) or delay=DURATION (300us, 50ms, 2s). KEYs: lba=FIRST-LAST,
    /// skip=N (let N through first), every=N (one in N), count=N (at most N faults).
    Faults {
        name: String,
        /// The new rules.
        rules: Vec<String>,
        /// Remove every rule: the device passes everything through.
        #[arg(long, conflicts_with = "rules")]
        clear: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ListenerCmd {
    Add {
        /// IP:PORT.
        address: String,
        #[arg(long, default_value = "tcp")]
        transport: String,
    },
    Remove {
        address: String,
        #[arg(long, default_value = "tcp")]
        transport: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum AnaCmd {
    /// Set a group's state; connected hosts get an ANA-change event.
    Set {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        group: u32,
        /// optimized, non-optimized, inaccessible, persistent-loss or change.
        #[arg(long, value_parser = cmd::parse_ana_state)]
        state: i32,
    },
    List {
        #[arg(long)]
        nqn: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ControllerCmd {
    List {
        #[arg(long)]
        nqn: Option<String>,
    },
    /// Fail a controller: all its connections close.
    Disconnect {
        #[arg(long)]
        nqn: String,
        #[arg(long)]
        cntlid: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConnectionCmd {
    List,
    /// Close one connection (as `connection list` shows it).
    Disconnect {
        #[arg(long)]
        reactor: u32,
        #[arg(long)]
        peer: String,
        #[arg(long, default_value = "tcp")]
        transport: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LogCmd {
    Get,
    /// e.g. "debug" or "info,lightpool_transport_tcp=debug".
    Set {
        filter: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Write the running target as a configuration file (stdout, or --output FILE):
    /// started from it, a target is the same.
    Save {
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn flag_or_env(v: &Option<PathBuf>, env: &str) -> Option<PathBuf> {
    v.clone().or_else(|| {
        std::env::var_os(env)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    })
}

/// Where the API is: TCP with mutual TLS when --api (or $LIGHTPOOL_API) names it,
/// else the Unix socket. An error comes with its exit code (2: bad usage, 1: no target).
fn dest(cli: &Cli) -> Result<cmd::Dest, (i32, String)> {
    let api = cli.api.clone().or_else(|| {
        std::env::var("LIGHTPOOL_API")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let Some(addr) = api else {
        return socket(cli).map(cmd::Dest::Unix).map_err(|e| (1, e));
    };
    let need = |v: &Option<PathBuf>, env: &str, flag: &str| {
        flag_or_env(v, env).ok_or_else(|| {
            (
                2,
                format!(
                    "--api {addr} is served only with mutual TLS: give {flag} FILE (or ${env})"
                ),
            )
        })
    };
    Ok(cmd::Dest::Tls(
        addr.clone(),
        lightpool_api::ClientTls {
            ca: need(&cli.tls_ca, "LIGHTPOOL_TLS_CA", "--tls-ca")?,
            cert: need(&cli.tls_cert, "LIGHTPOOL_TLS_CERT", "--tls-cert")?,
            key: need(&cli.tls_key, "LIGHTPOOL_TLS_KEY", "--tls-key")?,
            domain: cli.tls_domain.clone(),
        },
    ))
}

/// The API socket the flags and environment name, or the one target running.
fn socket(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(s) = std::env::var_os("LIGHTPOOL_SOCKET").filter(|s| !s.is_empty()) {
        return Ok(s.into());
    }
    match &cli.control_socket {
        Some(c) => Ok(lightpool_api::socket::api_path_for(c).into()),
        None => lightpool_api::socket::find_api_socket(),
    }
}

fn main() {
    let cli = Cli::parse();
    if cluster::is_cluster(&cli.cmd) {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("lightpool: {e}");
                std::process::exit(1);
            }
        };
        if let Err(e) = rt.block_on(cluster::run(&cli)) {
            eprintln!("lightpool: {e}");
            std::process::exit(1);
        }
        return;
    }
    let dest = match dest(&cli) {
        Ok(d) => d,
        Err((code, e)) => {
            eprintln!("lightpool: {e}");
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lightpool: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(cmd::run(&cli, &dest)) {
        eprintln!("lightpool: {e}");
        std::process::exit(1);
    }
}

/// `HOST:PORT` (an IPv6 host in brackets).
fn parse_advertise(s: &str) -> Result<(String, u16), String> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: give HOST:PORT"))?;
    let port = p
        .parse()
        .map_err(|_| format!("{s:?}: {p:?} is not a port"))?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    if h.is_empty() {
        return Err(format!("{s:?}: the host is missing"));
    }
    Ok((h.to_string(), port))
}
