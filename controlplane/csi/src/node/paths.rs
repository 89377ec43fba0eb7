//! The host side of a live migration: the node plugin keeps the NVMe/TCP paths of
//! each volume it staged in step with the Volume's `status.target.paths`. While a
//! volume migrates the controller lists the destination's path beside the
//! source's (inaccessible, then optimized) and, after the switch, the
//! destination's alone; the follower connects a listed path that is missing (so
//! the kernel's native multipath has the new path before the switch and moves its
//! I/O there on the ANA change) and disconnects a path no longer listed (the old
//! one, after the switch) — never the last working one.
//!
//! The node plugin, not the agent, does it: it runs on every node that consumes
//! volumes (agents run where pools are), it made the connections, and it is the
//! one component that touches the host's initiator; agents touch only their own
//! target, through its management API.

use std::path::Path;
use std::time::Duration;

use lightpool_model::volume::TargetPath;
use lightpool_model::Volume;
use lightpool_store::Store;

use super::host::{self, Path4};

/// What to do to one volume's connections.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Paths listed but not connected.
    pub connect: Vec<Path4>,
    /// Controllers (`nvme3`) on paths no longer listed.
    pub disconnect: Vec<String>,
}

fn path4(p: &TargetPath) -> Path4 {
    Path4 {
        transport: p.transport.clone(),
        traddr: p.traddr.clone(),
        trsvcid: p.trsvcid.to_string(),
    }
}

/// The plan for `wanted` paths given the `connected` controllers (name, path).
/// Nothing is disconnected unless a listed path is connected: an empty or wrong
/// list never leaves the host without a path it had.
pub fn plan(wanted: &[TargetPath], connected: &[(String, Path4)]) -> Plan {
    let wanted: Vec<Path4> = wanted.iter().map(path4).collect();
    let connect: Vec<Path4> = wanted
        .iter()
        .filter(|w| !connected.iter().any(|(_, c)| c == *w))
        .cloned()
        .collect();
    let keeps_one = connected.iter().any(|(_, c)| wanted.contains(c));
    let disconnect = if keeps_one {
        connected
            .iter()
            .filter(|(_, c)| !wanted.contains(c))
            .map(|(n, _)| n.clone())
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        connect,
        disconnect,
    }
}

/// The volumes staged on this node over NVMe/TCP: (volume, NQN) from the staging
/// records (a local volume's record names no NQN).
fn staged(state_dir: &Path) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(state_dir) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let volume = name.strip_suffix(".stage")?.to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            let nqn = text.lines().next()?.to_string();
            nqn.starts_with("nqn.").then_some((volume, nqn))
        })
        .collect()
}

/// One pass over the staged volumes; returns what it did, for the log and tests.
pub async fn follow_once<S: Store>(
    store: &S,
    state_dir: &Path,
    hostnqn: Option<&str>,
) -> Vec<String> {
    let mut did = Vec::new();
    for (volume, nqn) in staged(state_dir) {
        let v = match store.get::<Volume>(&volume).await {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(volume, error = %e, "path follower: the store did not answer");
                return did;
            }
        };
        let Some(target) = v.status.and_then(|s| s.target) else {
            continue;
        };
        if target.nqn != nqn {
            continue;
        }
        let p = plan(&target.paths, &host::controllers(&nqn));
        for c in &p.connect {
            match host::connect(&nqn, c, hostnqn) {
                Ok(_) => did.push(format!("{volume}: connected {}:{}", c.traddr, c.trsvcid)),
                Err(e) => {
                    tracing::warn!(volume, path = ?c, error = %e, "path follower: connect failed")
                }
            }
        }
        for d in &p.disconnect {
            match host::run("nvme", &["disconnect", "-d", d]) {
                Ok(_) => did.push(format!("{volume}: disconnected {d}")),
                Err(e) => {
                    tracing::warn!(volume, controller = %d, error = %e, "path follower: disconnect failed")
                }
            }
        }
    }
    for d in &did {
        tracing::info!("path follower: {d}");
    }
    did
}

/// Follows the Volumes' paths until `stop`: at once when a Volume changes, and
/// every `every` as a resync.
pub async fn follow<S: Store>(
    store: S,
    state_dir: std::path::PathBuf,
    hostnqn: Option<String>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let watch = lightpool_store::wake_on_change::<S, Volume>(store.clone(), wake.clone());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        follow_once(&store, &state_dir, hostnqn.as_deref()).await;
    }
    watch.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightpool_model::volume::AnaState;

    fn tp(addr: &str, state: AnaState) -> TargetPath {
        TargetPath {
            node: addr.into(),
            transport: "tcp".into(),
            adrfam: "ipv4".into(),
            traddr: addr.into(),
            trsvcid: 4420,
            ana_group: 1,
            ana_state: state,
        }
    }

    fn p4(addr: &str) -> Path4 {
        Path4 {
            transport: "tcp".into(),
            traddr: addr.into(),
            trsvcid: "4420".into(),
        }
    }

    #[test]
    fn the_destination_is_connected_before_the_switch_and_the_source_dropped_after() {
        let a = ("nvme0".to_string(), p4("10.0.0.1"));
        // Before: the source alone, as staged.
        assert_eq!(
            plan(
                &[tp("10.0.0.1", AnaState::Optimized)],
                std::slice::from_ref(&a)
            ),
            Plan::default()
        );
        // SetupPipe: the destination is listed, inaccessible: connected now.
        let during = [
            tp("10.0.0.1", AnaState::Optimized),
            tp("10.0.0.2", AnaState::Inaccessible),
        ];
        assert_eq!(
            plan(&during, std::slice::from_ref(&a)),
            Plan {
                connect: vec![p4("10.0.0.2")],
                disconnect: vec![]
            }
        );
        // Cleaning: the destination alone: the source's controller goes.
        let b = ("nvme1".to_string(), p4("10.0.0.2"));
        assert_eq!(
            plan(
                &[tp("10.0.0.2", AnaState::Optimized)],
                &[a.clone(), b.clone()]
            ),
            Plan {
                connect: vec![],
                disconnect: vec!["nvme0".into()]
            }
        );
        // The destination's path not up yet: the source's stays.
        assert_eq!(
            plan(&[tp("10.0.0.2", AnaState::Optimized)], &[a]),
            Plan {
                connect: vec![p4("10.0.0.2")],
                disconnect: vec![]
            }
        );
        // An empty list never cuts the host off.
        assert_eq!(plan(&[], &[b]).disconnect, Vec::<String>::new());
    }

    #[test]
    fn only_nvme_tcp_staging_records_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("v1.stage"),
            "nqn.2024-01.io.lightpool:volume:v1\n/dev/nvme0n1\n/stage/v1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("v2.stage"),
            "ublk\n/dev/ublkb0\n/stage/v2\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("other"), "nqn.x\n").unwrap();
        assert_eq!(
            staged(dir.path()),
            vec![(
                "v1".to_string(),
                "nqn.2024-01.io.lightpool:volume:v1".to_string()
            )]
        );
    }
}
