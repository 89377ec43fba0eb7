//! The control plane's commands: `standalone` runs an instance; `volume`,
//! `pool` and `node` ask the instance on the data directory (its local socket).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lightpool_agent::node_lease;
use lightpool_model::quantity::human_bytes;
use lightpool_model::{
    PlacementHint, Provisioning, Quantity, StoragePool, Volume, VolumeAffinity, VolumePhase,
    VolumeSpec,
};
use lightpool_standalone::protocol::RemoteStore;
use lightpool_standalone::{control_socket, Options};
use lightpool_store::{Deleted, Store};
use serde::Serialize;

use crate::{table, Cli, Cmd, MigrateCmd, MigrateSub, NodeCmd, PoolCmd, StandaloneArgs, VolumeCmd};

fn options(a: &StandaloneArgs, data_dir: PathBuf) -> Options {
    Options {
        data_dir,
        pool_size: a.pool_size,
        device: a.device.clone(),
        node: a.node.clone().unwrap_or_else(hostname),
        address: a.address.clone(),
        port: a.port,
        advertise: a.advertise.clone(),
        target_binary: target_binary(a),
        target_log: a.target_log.clone(),
        buffered: a.buffered,
    }
}

async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        } => {}
    }
}

/// The data directory the flags and environment name.
pub fn data_dir(cli: &Cli) -> PathBuf {
    if let Some(d) = &cli.data_dir {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("LIGHTPOOL_DATA_DIR") {
        return d.into();
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        "/var/lib/lightpool".into()
    } else {
        format!("/tmp/lightpool-{uid}").into()
    }
}

/// `MustLocal`, `must-local`, `mustlocal`: any of them.
pub fn parse_placement(s: &str) -> Result<PlacementHint, String> {
    match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "mustlocal" => Ok(PlacementHint::MustLocal),
        "preferlocal" => Ok(PlacementHint::PreferLocal),
        "preferremote" => Ok(PlacementHint::PreferRemote),
        "mustremote" => Ok(PlacementHint::MustRemote),
        _ => Err(format!(
            "{s:?} is not a placement: use must-local, prefer-local, prefer-remote or must-remote"
        )),
    }
}

/// Whether the command is the control plane's (no target socket needed).
pub fn is_cluster(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::Standalone(_)
            | Cmd::Agent(_)
            | Cmd::Volume(_)
            | Cmd::Snapshot(_)
            | Cmd::Pool(_)
            | Cmd::Node(_)
            | Cmd::Csi(_)
    )
}

fn target_binary(args: &StandaloneArgs) -> PathBuf {
    if let Some(b) = &args.target_binary {
        return b.clone();
    }
    std::env::current_exe()
        .ok()
        .map(|me| me.with_file_name("lightpool-target"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "lightpool-target".into())
}

/// A node as `node list` shows it.
#[derive(Debug, Serialize)]
struct NodeView {
    name: String,
    address: String,
    pools: Vec<String>,
    heartbeat: Option<String>,
}

async fn get(store: &RemoteStore, name: &str) -> Result<Option<Volume>, String> {
    store.get::<Volume>(name).await.map_err(|e| e.to_string())
}

fn emit<T: serde::Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
        );
    } else {
        human(v);
    }
    Ok(())
}

fn phase(v: &Volume) -> VolumePhase {
    v.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn show(v: &Volume) {
    let st = v.status.clone().unwrap_or_default();
    println!("volume {}", v.metadata.name.as_deref().unwrap_or("?"));
    println!("  size:      {}", v.spec.size.as_str());
    if let Some(c) = st.capacity_bytes {
        println!("  serves:    {}", human_bytes(c));
    }
    println!("  placement: {}", v.spec.placement.as_str());
    println!("  phase:     {:?}", st.phase);
    if let (Some(n), Some(p)) = (&st.node, &st.pool) {
        println!("  node:      {n} (pool {p})");
    }
    if let Some(m) = &st.message {
        println!("  message:   {m}");
    }
    for r in &st.rejections {
        println!(
            "    pool {} on {}: {} ({})",
            r.pool, r.node, r.reason, r.plugin
        );
    }
    if let Some(t) = &st.target {
        println!("  nqn:       {}", t.nqn);
        for c in t.connect_commands() {
            println!("  connect:   {c}");
        }
    }
}

pub(crate) fn show_events(events: &[lightpool_store::EventRecord]) {
    if events.is_empty() {
        return;
    }
    println!("  events:");
    for e in events {
        let times = if e.count > 1 {
            format!(" (x{}, last {})", e.count, e.last_time)
        } else {
            String::new()
        };
        println!(
            "    {} {:<8} {:<16} {}{times}: {}",
            e.first_time,
            e.event.type_.as_str(),
            e.event.reason,
            e.event.action,
            e.event.note
        );
    }
}

/// Runs a control-plane command.
pub async fn run(cli: &Cli) -> Result<(), String> {
    let dir = data_dir(cli);
    let store = RemoteStore::new(control_socket(&dir));
    let j = cli.json;
    match &cli.cmd {
        Cmd::Standalone(a) => lightpool_standalone::run(options(a, dir), signalled())
            .await
            .map_err(|e| e.to_string()),
        Cmd::Csi(a) => crate::csi::run(a, store, signalled()).await,
        Cmd::Agent(a) => {
            let o = options(&a.node, a.node_dir.clone());
            lightpool_standalone::run_node(&o, store, signalled())
                .await
                .map_err(|e| e.to_string())
        }
        Cmd::Volume(VolumeCmd::Snapshot {
            volume,
            snapshot,
            wait,
        }) => crate::snapshot::take(&store, j, volume, snapshot, *wait).await,
        Cmd::Snapshot(c) => crate::snapshot::run(&store, j, c).await,
        Cmd::Volume(VolumeCmd::Migrate(a)) => {
            let c = match (&a.cmd, &a.volume) {
                (Some(MigrateSub::Cancel { volume, wait }), _) => MigrateCmd::Cancel {
                    volume: volume.clone(),
                    wait: *wait,
                },
                (Some(MigrateSub::Status { volume }), _) => MigrateCmd::Status {
                    volume: volume.clone(),
                },
                (Some(MigrateSub::List), _) => MigrateCmd::List,
                (None, Some(volume)) => MigrateCmd::Start {
                    volume: volume.clone(),
                    to: a.to.clone(),
                    pool: a.pool.clone(),
                    rate_limit: a.rate_limit,
                    wait: a.wait,
                },
                (None, None) => {
                    return Err(
                        "name the volume to move (lightpool volume migrate VOLUME --to NODE), or cancel|status|list"
                            .into(),
                    )
                }
            };
            crate::migrate::run(&store, j, &c).await
        }
        Cmd::Node(NodeCmd::Cordon { node }) => {
            crate::migrate::cordon(&store, node, true).await?;
            println!("node {node} cordoned: no new volume is placed there (`lightpool node uncordon {node}` undoes it)");
            Ok(())
        }
        Cmd::Node(NodeCmd::Uncordon { node }) => {
            crate::migrate::cordon(&store, node, false).await?;
            println!("node {node} is schedulable again");
            Ok(())
        }
        Cmd::Node(NodeCmd::Drain {
            node,
            parallel,
            wait,
        }) => crate::migrate::drain(&store, node, *parallel, *wait).await,
        Cmd::Volume(VolumeCmd::Create {
            name,
            size,
            from_snapshot,
            from_volume,
            thin,
            placement,
            consumer,
            wait,
        }) => {
            let size = match (size, from_snapshot, from_volume) {
                (Some(s), _, _) => *s,
                (None, Some(snap), _) => crate::snapshot::size_of(&store, snap).await?,
                (None, None, Some(src)) => {
                    let v = get(&store, src).await?.ok_or_else(|| {
                        format!("volume '{src}' does not exist: `lightpool volume list` shows those that do")
                    })?;
                    v.status
                        .and_then(|s| s.size_bytes)
                        .map_or_else(|| v.spec.size.bytes().map_err(|e| e.to_string()), Ok)?
                }
                (None, None, None) => return Err("--size is needed".into()),
            };
            let spec = VolumeSpec {
                size: Quantity::from_bytes(size),
                provisioning: if *thin {
                    Provisioning::Thin
                } else {
                    Provisioning::Thick
                },
                placement: *placement,
                consumer_node: Some(consumer.clone().unwrap_or_else(hostname)),
                affinity: VolumeAffinity::default(),
                spread: None,
                source_snapshot: from_snapshot.clone(),
                source_volume: from_volume.clone(),
                published: Vec::new(),
            };
            if let Err(invalid) = lightpool_model::validate::validate_volume(&spec) {
                return Err(invalid.to_string());
            }
            if get(&store, name).await?.is_some() {
                return Err(format!(
                    "volume '{name}' exists: choose another name, or delete it first"
                ));
            }
            store
                .apply(&Volume::new(name, spec))
                .await
                .map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(*wait);
            let mut told = false;
            loop {
                let Some(v) = get(&store, name).await? else {
                    return Err(format!("volume '{name}' vanished while being created"));
                };
                match phase(&v) {
                    VolumePhase::Ready => {
                        return emit(j, &v, |v| {
                            show(v);
                        })
                    }
                    // No node has published a pool yet (a node still starting, as
                    // right after `lightpool standalone`): the controller places the
                    // volume when one appears, so that is waited for, within --wait.
                    VolumePhase::Rejected
                        if no_pools_yet(&v) && Instant::now() <= deadline =>
                    {
                        if !told {
                            eprintln!("lightpool: no node has published a pool yet; volume '{name}' is placed when one does (waiting up to {wait} s)");
                            told = true;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    VolumePhase::Rejected | VolumePhase::Failed => {
                        let st = v.status.clone().unwrap_or_default();
                        if j {
                            emit(j, &v, |_| {})?;
                        }
                        return Err(format!(
                            "volume '{name}' cannot be placed: {} (it is tried again when the pools or its spec change; `lightpool volume delete {name}` removes it)",
                            st.message.unwrap_or_default()
                        ));
                    }
                    _ if Instant::now() > deadline => {
                        return Err(format!(
                            "volume '{name}' is not ready after {wait} s (phase {:?}); `lightpool volume show {name}` follows it",
                            phase(&v)
                        ))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Cmd::Volume(VolumeCmd::Resize { name, size, wait }) => {
            let v = resize(&store, name, *size, *wait).await?;
            emit(j, &v, show)
        }
        Cmd::Volume(VolumeCmd::List) => {
            let vs = store
                .list::<Volume>()
                .await
                .map_err(|e| e.to_string())?
                .items;
            emit(j, &vs, |vs| {
                let rows: Vec<Vec<String>> = vs
                    .iter()
                    .map(|v| {
                        let st = v.status.clone().unwrap_or_default();
                        vec![
                            v.metadata.name.clone().unwrap_or_default(),
                            v.spec.size.as_str().to_string(),
                            v.spec.placement.as_str().to_string(),
                            format!("{:?}", st.phase),
                            st.node.unwrap_or_default(),
                            st.target.map(|t| t.nqn).unwrap_or_default(),
                        ]
                    })
                    .collect();
                table::print(
                    &["NAME", "SIZE", "PLACEMENT", "PHASE", "NODE", "NQN"],
                    &rows,
                );
            })
        }
        Cmd::Volume(VolumeCmd::Show { name }) => match get(&store, name).await? {
            Some(v) => {
                let events = store
                    .events("Volume", name)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut out = serde_json::to_value(&v).map_err(|e| e.to_string())?;
                out["events"] = serde_json::to_value(&events).map_err(|e| e.to_string())?;
                emit(j, &out, |_| {
                    show(&v);
                    show_events(&events);
                })
            }
            None => Err(format!(
                "volume '{name}' does not exist: `lightpool volume list` shows those that do"
            )),
        },
        Cmd::Volume(VolumeCmd::Delete { name, wait }) => {
            let mut gone = match store.delete::<Volume>(name, None).await {
                Ok(Deleted::Gone) => true,
                Ok(Deleted::Pending(_)) => false,
                Err(e) if e.is_not_found() => {
                    return Err(format!(
                    "volume '{name}' does not exist: `lightpool volume list` shows those that do"
                ))
                }
                Err(e) => return Err(e.to_string()),
            };
            let deadline = Instant::now() + Duration::from_secs(*wait);
            while !gone {
                if Instant::now() > deadline {
                    return Err(format!("volume '{name}' is still being removed after {wait} s; `lightpool volume show {name}` says why"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                gone = get(&store, name).await?.is_none();
            }
            if j {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("volume {name} deleted");
            }
            Ok(())
        }
        Cmd::Pool(PoolCmd::List) => {
            let ps = store
                .list::<StoragePool>()
                .await
                .map_err(|e| e.to_string())?
                .items;
            emit(j, &ps, |ps: &Vec<StoragePool>| {
                let rows: Vec<Vec<String>> = ps
                    .iter()
                    .map(|p| {
                        let st = p.status.clone().unwrap_or_default();
                        vec![
                            p.metadata.name.clone().unwrap_or_default(),
                            p.spec.node.name.clone(),
                            format!("{:?}", st.health),
                            human_bytes(st.capacity_bytes),
                            human_bytes(st.free_bytes),
                            st.volumes.to_string(),
                        ]
                    })
                    .collect();
                table::print(
                    &["NAME", "NODE", "HEALTH", "CAPACITY", "FREE", "VOLUMES"],
                    &rows,
                );
            })
        }
        Cmd::Node(NodeCmd::List) => {
            let pools = store
                .list::<StoragePool>()
                .await
                .map_err(|e| e.to_string())?
                .items;
            let mut ns: Vec<NodeView> = Vec::new();
            for p in &pools {
                let node = &p.spec.node;
                let pool = p.metadata.name.clone().unwrap_or_default();
                if let Some(n) = ns.iter_mut().find(|n| n.name == node.name) {
                    n.pools.push(pool);
                    continue;
                }
                let lease = store
                    .get_lease(&node_lease(&node.name))
                    .await
                    .map_err(|e| e.to_string())?;
                ns.push(NodeView {
                    name: node.name.clone(),
                    address: format!("{}:{}", node.address, node.port),
                    pools: vec![pool],
                    heartbeat: lease.and_then(|l| l.renew_time),
                });
            }
            emit(j, &ns, |ns: &Vec<NodeView>| {
                let rows: Vec<Vec<String>> = ns
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.address.clone(),
                            n.pools.join(","),
                            n.heartbeat.clone().unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                table::print(&["NAME", "ADDRESS", "POOLS", "LAST HEARTBEAT"], &rows);
            })
        }
        _ => Err("not a control-plane command".into()),
    }
}

/// Sets the volume's spec.size to `size` and waits until the controller judged
/// the edit and the node's dataplane serves the new size; a refusal (shrink, no
/// room on the pool, a grow the dataplane could not make) is the error.
async fn resize(store: &RemoteStore, name: &str, size: u64, wait: u64) -> Result<Volume, String> {
    let missing =
        || format!("volume '{name}' does not exist: `lightpool volume list` shows those that do");
    let v = get(store, name).await?.ok_or_else(missing)?;
    let st = v.status.clone().unwrap_or_default();
    if let Some(has) = st.capacity_bytes.or(st.size_bytes) {
        if size < has {
            return Err(format!(
                "volume '{name}' has {}: volumes only grow; give --size {} or more",
                human_bytes(has),
                human_bytes(has)
            ));
        }
    }
    let mut spec = v.spec.clone();
    spec.size = Quantity::from_bytes(size);
    let applied = store
        .apply(&Volume::new(name, spec))
        .await
        .map_err(|e| e.to_string())?;
    let generation = applied.metadata.generation;
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let v = get(store, name).await?.ok_or_else(missing)?;
        let st = v.status.clone().unwrap_or_default();
        let judged = st.observed_generation >= generation;
        let refused = |type_: &str, reason: Option<&str>| {
            st.conditions.iter().find(|c| {
                c.type_ == type_
                    && c.status == lightpool_model::ConditionStatus::False
                    && reason.is_none_or(|r| c.reason == r)
            })
        };
        if judged {
            if let Some(c) = refused("Valid", None) {
                return Err(format!("volume '{name}': {}", c.message));
            }
            if st.capacity_bytes.is_some_and(|c| c >= size) {
                return Ok(v);
            }
            if let Some(c) = refused("Resized", Some("GrowFailed")) {
                return Err(format!("volume '{name}': {}", c.message));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "volume '{name}' does not serve {} after {wait} s (it serves {}); `lightpool volume show {name}` follows it",
                human_bytes(size),
                st.capacity_bytes.map_or_else(|| "?".into(), human_bytes)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether `v` was refused only because no pool exists at all: the scheduler found no
/// pool to judge (no per-pool rejection), not pools that do not fit.
fn no_pools_yet(v: &Volume) -> bool {
    v.status.as_ref().is_some_and(|st| {
        st.rejections.is_empty()
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Scheduled" && c.reason == "NoPoolFits")
    })
}
