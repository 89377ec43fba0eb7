//! Live migration on the source node (issue 14): a served namespace's device is
//! mirrored to a namespace of another target (the remote NVMe/TCP device) and copied
//! there in rounds (`lightpool_migrate`). Starting one puts the mirror in the
//! namespace's place (no host sees a change), waits until no queue uses the old device
//! directly, then starts the copy. Stopping one puts the source device back. While one
//! runs, its namespace cannot be removed or resized, and a hot upgrade is refused (the
//! mirror and its connections are this process's).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lightpool_bdev::Bdev;
use lightpool_bdev_nvmf_tcp::{RemoteBdev, RemoteOptions};
use lightpool_migrate::{MigrateOptions, Migration, Progress};

use super::{ManageError, Running};

/// How long the queues get to let go of the old device once the mirror is in place.
const LET_GO: Duration = Duration::from_secs(5);
/// How long a mirrored write waits for the destination before the migration fails.
const DEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a namespace moves to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub addr: SocketAddr,
    pub nqn: String,
    pub nsid: u32,
}

/// A migration of this process.
pub struct Entry {
    pub nqn: String,
    pub nsid: u32,
    pub dest: Destination,
    pub migration: Arc<Migration>,
}

/// The migrations of this process, by namespace.
type Table = BTreeMap<(String, u32), Arc<Entry>>;

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Table> {
    table().lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether namespace `nqn`/`nsid` is being migrated.
pub fn active(nqn: &str, nsid: u32) -> bool {
    lock().contains_key(&(nqn.to_string(), nsid))
}

/// Every migration, with its progress.
pub fn all() -> Vec<(Arc<Entry>, Progress)> {
    lock()
        .values()
        .map(|e| (e.clone(), e.migration.progress()))
        .collect()
}

/// Migration of `nqn`/`nsid`.
pub fn get(nqn: &str, nsid: u32) -> Result<(Arc<Entry>, Progress), ManageError> {
    let e = lock().get(&(nqn.to_string(), nsid)).cloned().ok_or_else(|| {
        ManageError::NotFound(format!(
            "namespace {nqn}/{nsid} is not being migrated: start one with `lightpool target migrate start`"
        ))
    })?;
    let p = e.migration.progress();
    Ok((e, p))
}

/// The namespace whose migration moves device `d`, if one does.
pub fn moving(d: &Arc<dyn Bdev>) -> Option<String> {
    lock()
        .values()
        .find(|e| Arc::ptr_eq(&e.migration.devices().0, d))
        .map(|e| format!("{}/{}", e.nqn, e.nsid))
}

/// Whether any migration runs (a hot upgrade is refused then).
pub fn any() -> bool {
    !lock().is_empty()
}

impl Running {
    /// Refused (FAILED_PRECONDITION) when registry device `device` is being migrated.
    pub fn not_migrating(&self, device: &str) -> Result<(), ManageError> {
        let Some(e) = self.mgmt.registry.get(device) else {
            return Ok(());
        };
        match moving(&e.bdev) {
            Some(ns) => Err(ManageError::InUse(format!(
                "{device} is being migrated (namespace {ns}): change it once the migration has ended"
            ))),
            None => Ok(()),
        }
    }

    /// Starts moving namespace `nqn`/`nsid` to `dest`.
    pub fn start_migration(
        &self,
        nqn: &str,
        nsid: u32,
        dest: Destination,
        opts: MigrateOptions,
        remote: Option<RemoteOptions>,
    ) -> Result<Progress, ManageError> {
        let g = self.change()?;
        if active(nqn, nsid) {
            return Err(ManageError::Exists(format!(
                "namespace {nqn}/{nsid} is being migrated already: see `lightpool target migrate status`"
            )));
        }
        let s = self.subsystem(nqn)?;
        let ns = s.namespace(nsid).ok_or_else(|| {
            ManageError::NotFound(format!("subsystem {nqn} has no namespace {nsid}"))
        })?;
        let name = format!("{nqn}/{nsid}");
        // A destination that stops answering fails the migration within seconds: host
        // writes wait for both copies, so they wait for it that long at most.
        let mut ro = remote.unwrap_or_else(|| {
            let mut o = RemoteOptions::new(dest.addr, &dest.nqn, dest.nsid);
            o.io_timeout = DEST_TIMEOUT;
            o.connect_timeout = DEST_TIMEOUT;
            o.keep_alive_timeout = Duration::from_secs(5);
            o.reconnect_delay = Duration::from_millis(100);
            o
        });
        ro.addr = dest.addr;
        ro.subnqn = dest.nqn.clone();
        ro.nsid = dest.nsid;
        let remote = RemoteBdev::connect(&format!("{name} -> {}", dest.addr), ro).map_err(|e| {
            ManageError::InUse(format!(
                "the destination {} {}/{} cannot be used: {e}",
                dest.addr, dest.nqn, dest.nsid
            ))
        })?;
        let (m, mirror) = Migration::prepare(&name, ns.bdev.clone(), remote as Arc<dyn Bdev>, opts)
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        let old = s.replace_namespace_device(nsid, mirror)?;
        drop(ns);
        // Every queue takes the new table and lets go of its channels to the old
        // device once they have finished; then only the mirror writes to the source.
        let t0 = Instant::now();
        while Arc::strong_count(&old) > 1 {
            if t0.elapsed() > LET_GO {
                let _ = s.replace_namespace_device(nsid, old.bdev.clone());
                return Err(ManageError::Unavailable(format!(
                    "the queues of {name} did not let go of its device within {LET_GO:?}: try again"
                )));
            }
            self.wake_reactors();
            std::thread::sleep(Duration::from_millis(2));
        }
        m.go().map_err(|e| ManageError::Failed(e.to_string()))?;
        let e = Arc::new(Entry {
            nqn: nqn.to_string(),
            nsid,
            dest,
            migration: m.clone(),
        });
        lock().insert((nqn.to_string(), nsid), e);
        drop(g);
        tracing::info!(namespace = name, "migration started");
        Ok(m.progress())
    }

    /// Ends the migration of `nqn`/`nsid` (cancelling the copy if it runs) and serves
    /// the namespace from its own device again: after a switch, the source does this
    /// before it lets the namespace go; before, it is a cancel. Returns how it stood.
    pub fn stop_migration(&self, nqn: &str, nsid: u32) -> Result<Progress, ManageError> {
        let _g = self.change()?;
        let (e, _) = get(nqn, nsid)?;
        e.migration.cancel();
        let p = e.migration.wait();
        let (source, _) = e.migration.devices();
        self.subsystem(nqn)?
            .replace_namespace_device(nsid, source)?;
        self.wake_reactors();
        lock().remove(&(nqn.to_string(), nsid));
        tracing::info!(namespace = %format!("{nqn}/{nsid}"), state = p.state.name(), "migration stopped");
        Ok(p)
    }
}
