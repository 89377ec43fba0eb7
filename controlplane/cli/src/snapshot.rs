//! `lightpool volume snapshot VOLUME SNAPSHOT` and `lightpool snapshot
//! list|show|delete`: the standalone instance's Snapshots (taken by the agent of
//! the volume's node in its pool; a volume is restored from one with `lightpool
//! volume create NAME --from-snapshot SNAPSHOT`).

use std::time::{Duration, Instant};

use lightpool_model::quantity::human_bytes;
use lightpool_model::snapshot::SnapshotPhase;
use lightpool_model::{Snapshot, SnapshotSpec, StoragePool, Volume};
use lightpool_standalone::protocol::RemoteStore;
use lightpool_store::{Deleted, Store};

use crate::{table, SnapshotCmd};

async fn get(store: &RemoteStore, name: &str) -> Result<Option<Snapshot>, String> {
    store.get::<Snapshot>(name).await.map_err(|e| e.to_string())
}

fn missing(name: &str) -> String {
    format!("snapshot '{name}' does not exist: `lightpool snapshot list` shows those that do")
}

fn phase(s: &Snapshot) -> SnapshotPhase {
    s.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The node holding the snapshot: that of its pool.
async fn node_of(store: &RemoteStore, s: &Snapshot) -> Result<Option<String>, String> {
    let Some(pool) = s.status.as_ref().and_then(|s| s.pool.clone()) else {
        return Ok(None);
    };
    let p: Option<StoragePool> = store.get(&pool).await.map_err(|e| e.to_string())?;
    Ok(p.map(|p| p.spec.node.name))
}

fn show(s: &Snapshot, node: Option<&str>) {
    let st = s.status.clone().unwrap_or_default();
    println!("snapshot {}", s.metadata.name.as_deref().unwrap_or("?"));
    println!("  volume:    {}", s.spec.volume);
    println!("  phase:     {:?}", st.phase);
    if let Some(b) = st.size_bytes {
        println!("  size:      {}", human_bytes(b));
    }
    if let Some(p) = &st.pool {
        println!("  pool:      {p} (node {})", node.unwrap_or("?"));
    }
    if let Some(t) = &st.taken_at {
        println!("  taken at:  {t}");
    }
    if let Some(m) = &st.message {
        println!("  message:   {m}");
    }
}

/// The size of a Ready snapshot (a volume restored from it has that size).
pub async fn size_of(store: &RemoteStore, name: &str) -> Result<u64, String> {
    let s = get(store, name).await?.ok_or_else(|| missing(name))?;
    match s.status.and_then(|st| st.size_bytes) {
        Some(b) => Ok(b),
        None => Err(format!(
            "snapshot '{name}' is not taken yet: `lightpool snapshot show {name}` says why"
        )),
    }
}

/// `lightpool volume snapshot VOLUME SNAPSHOT`: asks for it and waits until it is
/// Ready (or refused).
pub async fn take(
    store: &RemoteStore,
    json: bool,
    volume: &str,
    name: &str,
    wait: u64,
) -> Result<(), String> {
    let v: Option<Volume> = store.get(volume).await.map_err(|e| e.to_string())?;
    if v.is_none() {
        return Err(format!(
            "volume '{volume}' does not exist: `lightpool volume list` shows those that do"
        ));
    }
    match get(store, name).await? {
        Some(s) if s.spec.volume != volume => {
            return Err(format!(
                "snapshot '{name}' exists, of volume '{}': choose another name",
                s.spec.volume
            ))
        }
        Some(_) => {}
        None => {
            let s = Snapshot::new(
                name,
                SnapshotSpec {
                    volume: volume.into(),
                },
            );
            store.apply(&s).await.map_err(|e| e.to_string())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        let Some(s) = get(store, name).await? else {
            return Err(format!("snapshot '{name}' vanished while being taken"));
        };
        match phase(&s) {
            SnapshotPhase::Ready => {
                let node = node_of(store, &s).await?;
                return crate::cmd::emit(json, &s, |s| show(s, node.as_deref()));
            }
            SnapshotPhase::Failed => {
                let msg = s.status.and_then(|s| s.message).unwrap_or_default();
                return Err(format!(
                    "snapshot '{name}' failed: {msg} (`lightpool snapshot delete {name}` removes it)"
                ));
            }
            _ if Instant::now() > deadline => {
                let msg = s.status.and_then(|s| s.message).unwrap_or_default();
                return Err(format!(
                    "snapshot '{name}' is not ready after {wait} s ({msg}); `lightpool snapshot show {name}` follows it"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `lightpool snapshot list|show|delete`.
pub async fn run(store: &RemoteStore, json: bool, cmd: &SnapshotCmd) -> Result<(), String> {
    match cmd {
        SnapshotCmd::List => {
            let ss = store
                .list::<Snapshot>()
                .await
                .map_err(|e| e.to_string())?
                .items;
            crate::cmd::emit(json, &ss, |ss| {
                let rows: Vec<Vec<String>> = ss
                    .iter()
                    .map(|s| {
                        let st = s.status.clone().unwrap_or_default();
                        vec![
                            s.metadata.name.clone().unwrap_or_default(),
                            s.spec.volume.clone(),
                            format!("{:?}", st.phase),
                            st.size_bytes.map(human_bytes).unwrap_or_default(),
                            st.pool.unwrap_or_default(),
                            st.taken_at.unwrap_or_default(),
                        ]
                    })
                    .collect();
                table::print(
                    &["NAME", "VOLUME", "PHASE", "SIZE", "POOL", "TAKEN AT"],
                    &rows,
                );
            })
        }
        SnapshotCmd::Show { name } => {
            let s = get(store, name).await?.ok_or_else(|| missing(name))?;
            let node = node_of(store, &s).await?;
            let events = store
                .events("Snapshot", name)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = serde_json::to_value(&s).map_err(|e| e.to_string())?;
            out["node"] = serde_json::to_value(&node).map_err(|e| e.to_string())?;
            out["events"] = serde_json::to_value(&events).map_err(|e| e.to_string())?;
            crate::cmd::emit(json, &out, |_| {
                show(&s, node.as_deref());
                crate::cluster::show_events(&events);
            })
        }
        SnapshotCmd::Delete { name, wait } => {
            let mut gone = match store.delete::<Snapshot>(name, None).await {
                Ok(Deleted::Gone) => true,
                Ok(Deleted::Pending(_)) => false,
                Err(e) if e.is_not_found() => return Err(missing(name)),
                Err(e) => return Err(e.to_string()),
            };
            let deadline = Instant::now() + Duration::from_secs(*wait);
            while !gone {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(s) = get(store, name).await? else {
                    gone = true;
                    continue;
                };
                let st = s.status.unwrap_or_default();
                // The pool refuses while clones depend on it: say so now.
                if st.phase == SnapshotPhase::Deleting {
                    return Err(format!(
                        "snapshot '{name}' cannot be deleted yet: {} (it stays marked for deletion and goes once that is done)",
                        st.message.unwrap_or_default()
                    ));
                }
                if Instant::now() > deadline {
                    return Err(format!("snapshot '{name}' is still being removed after {wait} s; `lightpool snapshot show {name}` says why"));
                }
            }
            if json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                println!("snapshot {name} deleted");
            }
            Ok(())
        }
    }
}
