//! `lightpool volume migrate VOLUME --to NODE` (and `cancel|status|list`) and
//! `lightpool node drain NODE`: VolumeMigration objects written to the
//! standalone instance's store, followed with a progress line per change
//! (phase, percent copied, MiB/s, dirty bytes left, ETA).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lightpool_model::quantity::human_bytes;
use lightpool_model::{
    MigrationPhase, StoragePool, Volume, VolumeMigration, VolumeMigrationSpec,
    VolumeMigrationStatus, VolumePhase,
};
use lightpool_standalone::protocol::RemoteStore;
use lightpool_store::Store;

use crate::{table, MigrateCmd};

fn status(m: &VolumeMigration) -> VolumeMigrationStatus {
    m.status.clone().unwrap_or_default()
}

async fn migrations(store: &RemoteStore) -> Result<Vec<VolumeMigration>, String> {
    let mut ms = store
        .list::<VolumeMigration>()
        .await
        .map_err(|e| e.to_string())?
        .items;
    ms.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then(a.metadata.name.cmp(&b.metadata.name))
    });
    Ok(ms)
}

/// The migration of `volume` that runs, else its latest.
async fn of_volume(store: &RemoteStore, volume: &str) -> Result<VolumeMigration, String> {
    let ms: Vec<VolumeMigration> = migrations(store)
        .await?
        .into_iter()
        .filter(|m| m.spec.volume == volume)
        .collect();
    ms.iter()
        .find(|m| status(m).phase.is_active())
        .or(ms.last())
        .cloned()
        .ok_or_else(|| {
            format!(
                "volume '{volume}' has no migration: `lightpool volume migrate list` shows them"
            )
        })
}

/// One line: phase, percent, rate, dirty bytes left, ETA.
pub fn progress_line(m: &VolumeMigration) -> String {
    let st = status(m);
    let mut line = format!("{} {:<14}", m.spec.volume, st.phase.as_str(),);
    if let Some(p) = &st.progress {
        let pct = if p.total_bytes == 0 {
            0.0
        } else {
            100.0 * p.copied_bytes.min(p.total_bytes) as f64 / p.total_bytes as f64
        };
        let rate = if p.elapsed_ms == 0 {
            0.0
        } else {
            p.copied_bytes as f64 / (1 << 20) as f64 / (p.elapsed_ms as f64 / 1000.0)
        };
        line.push_str(&format!(
            " {pct:5.1}%  {rate:8.1} MiB/s  dirty {:>9}  round {}",
            human_bytes(p.dirty_bytes),
            p.round
        ));
        if let Some(eta) = p.eta_ms {
            line.push_str(&format!("  ETA {:.1} s", eta as f64 / 1000.0));
        }
        if p.throttled {
            line.push_str("  writes throttled");
        }
    }
    if let Some(msg) = &st.message {
        line.push_str(&format!("  ({msg})"));
    }
    line
}

/// Follows migration `name` until it ends or `wait` seconds pass, a line per
/// change; the error says why it did not succeed.
pub async fn follow(
    store: &RemoteStore,
    name: &str,
    wait: u64,
    quiet: bool,
) -> Result<VolumeMigration, String> {
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut last = String::new();
    loop {
        let m = store
            .get::<VolumeMigration>(name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("migration '{name}' vanished"))?;
        let line = progress_line(&m);
        if line != last && !quiet {
            println!("{line}");
            last = line;
        }
        let st = status(&m);
        match st.phase {
            MigrationPhase::Succeeded => return Ok(m),
            MigrationPhase::Failed | MigrationPhase::RolledBack => {
                return Err(format!(
                    "migration '{name}' of volume '{}' {}: {}",
                    m.spec.volume,
                    st.phase,
                    st.message.unwrap_or_default()
                ))
            }
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "migration '{name}' is in {} after {wait} s; `lightpool volume migrate status {}` follows it",
                    st.phase, m.spec.volume
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Writes a migration of `volume`; its name is returned.
pub async fn start(
    store: &RemoteStore,
    volume: &str,
    to: Option<&str>,
    pool: Option<&str>,
    rate: Option<u64>,
) -> Result<String, String> {
    store
        .get::<Volume>(volume)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("volume '{volume}' does not exist: `lightpool volume list` shows those that do")
        })?;
    if let Some(m) = migrations(store)
        .await?
        .into_iter()
        .find(|m| m.spec.volume == volume && status(m).phase.is_active())
    {
        return Err(format!(
            "volume '{volume}' is already migrating ({}, {}): wait for it, or `lightpool volume migrate cancel {volume}`",
            m.metadata.name.clone().unwrap_or_default(),
            status(&m).phase
        ));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("{volume}-{stamp}");
    let m = VolumeMigration::new(
        &name,
        VolumeMigrationSpec {
            volume: volume.into(),
            target_node: to.map(str::to_string),
            target_pool: pool.map(str::to_string),
            rate_limit_bytes: rate,
            cancel: false,
        },
    );
    store.apply(&m).await.map_err(|e| e.to_string())?;
    Ok(name)
}

pub async fn run(store: &RemoteStore, json: bool, cmd: &MigrateCmd) -> Result<(), String> {
    let emit = |m: &VolumeMigration| -> Result<(), String> {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(m).map_err(|e| e.to_string())?
            );
        }
        Ok(())
    };
    match cmd {
        MigrateCmd::Start {
            volume,
            to,
            pool,
            rate_limit,
            wait,
        } => {
            let name = start(store, volume, to.as_deref(), pool.as_deref(), *rate_limit).await?;
            if !json {
                println!("migration {name} of volume {volume} started");
            }
            match wait {
                Some(w) => {
                    let m = follow(store, &name, *w, json).await?;
                    emit(&m)
                }
                None => {
                    let m = store
                        .get::<VolumeMigration>(&name)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("migration '{name}' vanished"))?;
                    emit(&m)
                }
            }
        }
        MigrateCmd::Cancel { volume, wait } => {
            let mut m = of_volume(store, volume).await?;
            let st = status(&m);
            if !st.phase.is_active() {
                return Err(format!(
                    "volume '{volume}' is not migrating (its last migration is {})",
                    st.phase
                ));
            }
            if !st.phase.before_switch() {
                return Err(format!(
                    "too late to cancel: the migration of '{volume}' is in {} and its destination serves the hosts; it finishes on its own",
                    st.phase
                ));
            }
            let name = m.metadata.name.clone().unwrap_or_default();
            m.spec.cancel = true;
            store.apply(&m).await.map_err(|e| e.to_string())?;
            let m = follow(store, &name, *wait, json).await;
            match m {
                Err(e) if e.contains("RolledBack") => {
                    if !json {
                        println!("migration {name} cancelled: volume {volume} stays where it was");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
                Ok(m) => Err(format!(
                    "migration {name} finished before the cancel: volume {volume} lives on {}",
                    status(&m).target_node.unwrap_or_default()
                )),
            }
        }
        MigrateCmd::Status { volume } => {
            let m = of_volume(store, volume).await?;
            if json {
                return emit(&m);
            }
            let st = status(&m);
            println!("migration {}", m.metadata.name.clone().unwrap_or_default());
            println!(
                "  from {} to {} (pool {})",
                st.source_node.as_deref().unwrap_or("-"),
                st.target_node.as_deref().unwrap_or("-"),
                st.target_pool.as_deref().unwrap_or("-")
            );
            println!("  {}", progress_line(&m));
            Ok(())
        }
        MigrateCmd::List => {
            let ms = migrations(store).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ms).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            let rows: Vec<Vec<String>> = ms
                .iter()
                .map(|m| {
                    let st = status(m);
                    let pct = st.progress.as_ref().map_or_else(String::new, |p| {
                        format!(
                            "{:.0}%",
                            100.0 * p.copied_bytes.min(p.total_bytes) as f64
                                / p.total_bytes.max(1) as f64
                        )
                    });
                    vec![
                        m.metadata.name.clone().unwrap_or_default(),
                        m.spec.volume.clone(),
                        st.source_node.unwrap_or_default(),
                        st.target_node.unwrap_or_default(),
                        st.phase.to_string(),
                        pct,
                        st.message.unwrap_or_default(),
                    ]
                })
                .collect();
            table::print(
                &["NAME", "VOLUME", "FROM", "TO", "PHASE", "COPIED", "MESSAGE"],
                &rows,
            );
            Ok(())
        }
    }
}

/// Moves every volume off `node`, `parallel` at a time, the scheduler choosing
/// each destination; a line per change. The error names the volumes that stayed.
/// Marks every pool of `node` unschedulable (`on`) or schedulable again: the
/// scheduler's filters leave a cordoned pool out of every placement.
pub async fn cordon(store: &RemoteStore, node: &str, on: bool) -> Result<(), String> {
    let pools: Vec<StoragePool> = store
        .list::<StoragePool>()
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter(|p| p.spec.node.name == node)
        .collect();
    if pools.is_empty() {
        return Err(format!(
            "there is no node {node} with a pool: `lightpool node list` shows the nodes"
        ));
    }
    for mut p in pools {
        if p.spec.unschedulable != on {
            p.spec.unschedulable = on;
            store.apply(&p).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

pub async fn drain(
    store: &RemoteStore,
    node: &str,
    parallel: usize,
    wait: u64,
) -> Result<(), String> {
    // First no new volume lands there.
    cordon(store, node, true).await?;
    println!("node {node} cordoned: no new volume is placed there (`lightpool node uncordon {node}` undoes it)");
    let vols: Vec<String> = store
        .list::<Volume>()
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter(|v| {
            v.metadata.deletion_timestamp.is_none()
                && v.status.as_ref().is_some_and(|s| {
                    s.node.as_deref() == Some(node) && s.phase == VolumePhase::Ready
                })
        })
        .filter_map(|v| v.metadata.name)
        .collect();
    println!(
        "draining node {node}: {} volume(s), {parallel} at a time",
        vols.len()
    );
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut queue = vols.into_iter();
    let mut running: BTreeMap<String, String> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut moved = 0usize;
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        while running.len() < parallel.max(1) {
            let Some(v) = queue.next() else { break };
            match start(store, &v, None, None, None).await {
                Ok(name) => {
                    running.insert(v, name);
                }
                Err(e) => failed.push(format!("{v}: {e}")),
            }
        }
        if running.is_empty() {
            break;
        }
        let mut ended = Vec::new();
        for (v, name) in &running {
            let Some(m) = store
                .get::<VolumeMigration>(name)
                .await
                .map_err(|e| e.to_string())?
            else {
                ended.push(v.clone());
                failed.push(format!("{v}: migration {name} vanished"));
                continue;
            };
            let line = progress_line(&m);
            if last.get(v) != Some(&line) {
                println!("{line}");
                last.insert(v.clone(), line);
            }
            let st = status(&m);
            match st.phase {
                MigrationPhase::Succeeded => {
                    moved += 1;
                    ended.push(v.clone());
                }
                MigrationPhase::Failed | MigrationPhase::RolledBack => {
                    failed.push(format!("{v}: {}", st.message.unwrap_or_default()));
                    ended.push(v.clone());
                }
                _ => {}
            }
        }
        for v in ended {
            running.remove(&v);
        }
        if Instant::now() > deadline {
            let left: Vec<String> = running.keys().cloned().chain(queue.by_ref()).collect();
            return Err(format!(
                "node {node} not drained after {wait} s: still moving or queued {}; `lightpool volume migrate list` follows them",
                left.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if failed.is_empty() {
        println!("node {node} drained: {moved} volume(s) moved");
        Ok(())
    } else {
        Err(format!(
            "node {node}: {moved} volume(s) moved, {} stayed: {}",
            failed.len(),
            failed.join("; ")
        ))
    }
}
