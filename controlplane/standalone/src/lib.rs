//! LightPool on one machine, `lightpool standalone`: the dataplane
//! (`lightpool-target`, a child process), the controller and one agent in this
//! process, the embedded store in the data directory, and a default pool of
//! sparse files under it. No cluster, no hugepages, no hardware.
//!
//! The data directory holds:
//! - `state.redb`: the store (volumes, the pool, leases);
//! - `pool/`: one sparse file per volume;
//! - `target.toml`, `target.log`, `target.sock`, `target.api.sock`: the dataplane;
//! - `controlplane.sock`: where `lightpool volume|pool|node` ask (see [`protocol`]).
//!
//! Stopped and started again, the instance serves the same volumes: the agent
//! finds them in the store and recreates what the new target lacks.

pub mod protocol;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lightpool_agent::{Agent, AgentConfig, ApiDataplane, DataplaneError};
use lightpool_controller::{Controller, ControllerConfig, ControllerError};
use lightpool_store::{EmbeddedStore, Store, StoreError};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

/// What went wrong starting or running an instance.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// A file or directory could not be made.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The dataplane did not start or stopped.
    #[error("lightpool-target: {0} (its log: {1})")]
    Target(String, String),
    /// The store could not be opened (another instance on this data directory?).
    #[error("the store in {dir}: {source}")]
    Store {
        dir: String,
        #[source]
        source: StoreError,
    },
    /// The pool directory could not be used.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The controller could not be built.
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// The default pool's size (a sparse file under the data directory).
    pub pool_size: u64,
    /// The pool on this file or block device instead of the sparse file.
    pub device: Option<PathBuf>,
    /// The node's name.
    pub node: String,
    /// The NVMe/TCP address hosts connect to.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// The address and port other nodes and hosts are told, when they reach this
    /// node through something in between (a NAT, a proxy); default `address:port`.
    pub advertise: Option<(String, u16)>,
    /// The `lightpool-target` binary.
    pub target_binary: PathBuf,
    /// Its log filter.
    pub target_log: String,
    /// Pool files through the page cache (for file systems without O_DIRECT, e.g. tmpfs).
    pub buffered: bool,
}

/// The control socket of the instance on `data_dir`.
pub fn control_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("controlplane.sock")
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StandaloneError {
    let what = what.into();
    move |source| StandaloneError::Io { what, source }
}

async fn start_target(o: &Options) -> Result<(Child, tonic::transport::Channel), StandaloneError> {
    let d = &o.data_dir;
    let config = d.join("target.toml");
    // No subsystems: the agent makes one per volume through the API.
    std::fs::write(&config, "[target]\nreactors = 1\n")
        .map_err(io(config.display().to_string()))?;
    let log_path = d.join("target.log");
    let log = std::fs::File::create(&log_path).map_err(io(log_path.display().to_string()))?;
    let err = log.try_clone().map_err(io("target log"))?;
    let api = d.join("target.api.sock");
    let _ = std::fs::remove_file(&api);
    let listen = if o.address.contains(':') {
        format!("[{}]:{}", o.address, o.port)
    } else {
        format!("{}:{}", o.address, o.port)
    };
    let mut cmd = Command::new(&o.target_binary);
    cmd.arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(&listen)
        .arg("--control-socket")
        .arg(d.join("target.sock"))
        .arg("--api-socket")
        .arg(&api)
        .arg("--log")
        .arg(&o.target_log)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only prctl(2), which is async-signal-safe; it touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            // The dataplane stops with us, even when we are killed outright.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        StandaloneError::Target(
            format!("cannot start {}: {e}", o.target_binary.display()),
            log_path.display().to_string(),
        )
    })?;
    let logname = log_path.display().to_string();
    for _ in 0..200 {
        if let Some(st) = child.try_wait().map_err(io("lightpool-target"))? {
            return Err(StandaloneError::Target(
                format!("exited at start ({st})"),
                logname,
            ));
        }
        if api.exists() {
            if let Ok(ch) = lightpool_api::connect(&api).await {
                return Ok((child, ch));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(StandaloneError::Target(
        "its API socket did not appear within 20 s".into(),
        logname,
    ))
}

/// Runs the instance until `stop` resolves (or the dataplane dies): the store
/// (served on the control socket), the controller, and this machine's node.
pub async fn run(
    o: Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), StandaloneError> {
    let d = &o.data_dir;
    std::fs::create_dir_all(d).map_err(io(d.display().to_string()))?;
    let store =
        EmbeddedStore::open(d.join("state.redb")).map_err(|source| StandaloneError::Store {
            dir: d.display().to_string(),
            source,
        })?;
    let controller = Controller::new(
        store.clone(),
        ControllerConfig::new(format!("{}-controller-{}", o.node, std::process::id())),
    )?;
    let sock = control_socket(d);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(io(sock.display().to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(io(sock.display().to_string()))?;
    }
    let server = tokio::spawn(protocol::serve(listener, store.clone()));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ctrl_task = tokio::spawn(controller.run(Duration::from_secs(5), stopped(rx)));
    let result = run_node(&o, store, stop).await;
    let _ = tx.send(true);
    let _ = ctrl_task.await;
    server.abort();
    let _ = std::fs::remove_file(&sock);
    result
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs one storage node until `stop` (or the dataplane dies): its dataplane
/// (a child `lightpool-target`, files under `o.data_dir`) and its agent over
/// `store` (the instance's own, or a [`protocol::RemoteStore`] for the other
/// nodes of a machine).
pub async fn run_node<S: Store>(
    o: &Options,
    store: S,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), StandaloneError> {
    let d = &o.data_dir;
    std::fs::create_dir_all(d).map_err(io(d.display().to_string()))?;
    let (mut child, channel) = start_target(o).await?;
    let (addr, port) = o
        .advertise
        .clone()
        .unwrap_or_else(|| (o.address.clone(), o.port));
    let mut cfg = AgentConfig::new(&o.node, &addr, port);
    if o.advertise.is_some() {
        cfg.listen = Some((o.address.clone(), o.port));
    }
    cfg.identity = format!("{}-{}", o.node, std::process::id());
    // The node's pool: one of the target's own, made through its API on first use.
    let mut dataplane = ApiDataplane::new(channel, d.join("pool"), o.pool_size)?
        .buffered(o.buffered)
        .overcommit(cfg.over_commit_percent);
    let on = match &o.device {
        Some(dev) => {
            dataplane = dataplane.on_device(dev);
            dev.display().to_string()
        }
        None => format!(
            "a sparse file of {} in {}",
            lightpool_model::quantity::human_bytes(o.pool_size),
            d.join("pool").display()
        ),
    };
    cfg.devices = vec![lightpool_model::pool::PoolDevice {
        path: o
            .device
            .clone()
            .unwrap_or_else(|| d.join("pool").join("pool.img"))
            .display()
            .to_string(),
        size: None,
    }];
    let agent = Agent::new(store, dataplane, cfg);
    println!(
        "lightpool: node {}, pool on {on}, NVMe/TCP on {}:{}",
        o.node, o.address, o.port
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(agent.run(Duration::from_secs(5), stopped(rx)));
    let result = tokio::select! {
        _ = stop => Ok(()),
        st = child.wait() => Err(StandaloneError::Target(
            format!("stopped ({})", st.map_or_else(|e| e.to_string(), |s| s.to_string())),
            d.join("target.log").display().to_string(),
        )),
    };
    let _ = tx.send(true);
    let _ = agent_task.await;
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    let _ = child.kill().await;
    result
}
