//! Volumes served to this host's own kernel as /dev/ublkbN (`lightpool-ublk`): the
//! local path, for a pod on the node that holds its volume. The management side keeps
//! one export per volume's block device ("POOL:VOLUME"), which counts as a user of the
//! device (so it stays registered, and the volume cannot be deleted or renamed under
//! it). Exports stop with the target (SIGTERM) and refuse a hot upgrade: a ublk device
//! is tied to the process that serves its queues.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lightpool_bdev::Bdev;
use lightpool_ublk::{UblkDevice, UblkError, UblkOptions};

use crate::config::volume_device_name;
use crate::manage::ManageError;
use crate::Running;

/// One volume's export: its block device, and the ublk device once started.
pub struct Export {
    bdev: Arc<dyn Bdev>,
    dev: Option<UblkDevice>,
}

/// The exports of a target, by the volume's device name.
#[derive(Default)]
pub struct Exports(Mutex<BTreeMap<String, Export>>);

impl Exports {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Export>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// /dev/ublkbN of the volume with device name `device`, once started.
    pub fn path_of(&self, device: &str) -> Option<String> {
        self.lock()
            .get(device)
            .and_then(|e| e.dev.as_ref())
            .map(|d| d.block_path().display().to_string())
    }

    /// Whether `d` is exported (or being exported): a user of the device.
    pub fn uses(&self, d: &Arc<dyn Bdev>) -> Option<String> {
        self.lock()
            .iter()
            .find(|(_, e)| Arc::ptr_eq(&e.bdev, d))
            .map(|(name, e)| match &e.dev {
                Some(dev) => format!("ublk device {}", dev.block_path().display()),
                None => format!("ublk export of {name} (starting)"),
            })
    }

    /// Every export, for a message.
    pub fn describe(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(name, e)| match &e.dev {
                Some(d) => format!("{name} as {}", d.block_path().display()),
                None => format!("{name} (starting)"),
            })
            .collect()
    }
}

fn ublk_error(e: UblkError) -> ManageError {
    match e {
        UblkError::NoDriver => ManageError::InUse(e.to_string()),
        UblkError::Invalid(m) => ManageError::Invalid(m),
        e => ManageError::Failed(e.to_string()),
    }
}

/// Exports volume `volume` of pool `pool`; returns its /dev/ublkbN. Idempotent.
pub fn export(run: &Running, pool: &str, volume: &str, depth: u32) -> Result<String, ManageError> {
    let device = volume_device_name(pool, volume);
    if let Some(p) = run.mgmt.ublk.path_of(&device) {
        return Ok(p);
    }
    let queue_depth = match depth {
        0 => lightpool_ublk::DEFAULT_QUEUE_DEPTH,
        d => u16::try_from(d)
            .ok()
            .filter(|&d| d <= lightpool_ublk::sys::MAX_QUEUE_DEPTH)
            .ok_or_else(|| {
                ManageError::Invalid(format!("queue depth {d}: give 1 to 4096 (0: 64)"))
            })?,
    };
    // Refused before anything is registered: no driver, nothing to undo.
    if !lightpool_ublk::driver_loaded() {
        return Err(ublk_error(UblkError::NoDriver));
    }
    // The volume's device, registered (the change lock is taken inside, and never
    // while the exports are locked); marked as exported before it is started, so that
    // a release of unserved volumes in between keeps it.
    let mut tries = 0;
    let bdev = loop {
        let name = crate::pools::volume_device(run, &format!("{pool}/{volume}"))?;
        let Some(e) = run.mgmt.registry.get(&name) else {
            tries += 1;
            if tries > 10 {
                return Err(ManageError::Unavailable(format!(
                    "volume {pool}/{volume} keeps being released by other calls: ask again"
                )));
            }
            continue;
        };
        let mut ex = run.mgmt.ublk.lock();
        if let Some(x) = ex.get(&device) {
            return match &x.dev {
                Some(d) => Ok(d.block_path().display().to_string()),
                None => Err(ManageError::Unavailable(format!(
                    "volume {pool}/{volume} is being exported by another call: ask again"
                ))),
            };
        }
        ex.insert(
            device.clone(),
            Export {
                bdev: e.bdev.clone(),
                dev: None,
            },
        );
        break e.bdev;
    };
    let started = UblkDevice::start(bdev, &run.reactors, &UblkOptions { queue_depth });
    let mut ex = run.mgmt.ublk.lock();
    match started {
        Ok(dev) => {
            let path = dev.block_path().display().to_string();
            match ex.get_mut(&device) {
                Some(x) => x.dev = Some(dev),
                None => {
                    // Stopped while it started: undo.
                    drop(ex);
                    dev.stop().map_err(ublk_error)?;
                    let _ = run.release_volumes();
                    return Err(ManageError::Unavailable(format!(
                        "the export of {pool}/{volume} was stopped while it started"
                    )));
                }
            }
            Ok(path)
        }
        Err(e) => {
            ex.remove(&device);
            drop(ex);
            let _ = run.release_volumes();
            Err(ublk_error(e))
        }
    }
}

/// Stops the export of volume `volume` of pool `pool`, if there is one.
pub fn stop(run: &Running, pool: &str, volume: &str) -> Result<(), ManageError> {
    let device = volume_device_name(pool, volume);
    let x = run.mgmt.ublk.lock().remove(&device);
    if let Some(Export { dev: Some(d), .. }) = x {
        d.stop().map_err(ublk_error)?;
    }
    run.release_volumes()
}

/// Stops every export (the target is stopping).
pub fn stop_all(run: &Running) {
    let all = std::mem::take(&mut *run.mgmt.ublk.lock());
    for (name, x) in all {
        if let Some(d) = x.dev {
            if let Err(e) = d.stop() {
                tracing::error!(volume = name, error = %e, "ublk device not stopped");
            }
        }
    }
}

/// Deletes the ublk devices a dead LightPool process left (at start).
pub fn remove_stale() {
    match lightpool_ublk::remove_stale() {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(
                ?gone,
                "deleted ublk devices left by a LightPool process that died"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "stale ublk devices not cleaned up"),
    }
}
