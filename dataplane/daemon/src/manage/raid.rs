//! Run-time changes to an array's members (fail, remove, re-add, add), made under the
//! change lock, with the array's `[[raid]]` section kept in step: what `config save`
//! writes and what the boot blob (crash recovery, hot upgrade) remembers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lightpool_bdev::Bdev;
use lightpool_bdev_uring::{UringBdev, UringOptions};
use lightpool_raid::{RaidBdev, RaidError};

use super::{DeviceSpec, ManageError, Running};

/// What to do to a member.
#[derive(Clone, Copy)]
pub enum MemberOp<'a> {
    Fail(&'a str),
    Remove(&'a str),
    Readd(&'a str),
    /// A file or block device of the host.
    Add(&'a Path),
}

/// An array's refusal as the API's error kinds.
pub fn raid_error(e: RaidError) -> ManageError {
    match e {
        RaidError::Invalid(m) => ManageError::Invalid(m),
        RaidError::Busy(m) => ManageError::Unavailable(m),
        e @ (RaidError::Refused(_) | RaidError::Member { .. }) => ManageError::InUse(e.to_string()),
        e => ManageError::Failed(e.to_string()),
    }
}

/// Array `name` of this process.
pub fn array(name: &str) -> Result<Arc<RaidBdev>, ManageError> {
    crate::raid::registry().get(name).ok_or_else(|| {
        let names: Vec<String> = crate::raid::registry()
            .list()
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        ManageError::NotFound(format!(
            "no array {name:?} (arrays: {}): create one with `lightpool target raid create`",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

impl Running {
    /// Applies `op` to array `name`; returns what the array says it did.
    pub fn raid_member(&self, name: &str, op: MemberOp<'_>) -> Result<String, ManageError> {
        let g = self.change()?;
        let a = array(name)?;
        // The member's device name before a remove (its slot forgets it).
        let removed_device = match &op {
            MemberOp::Remove(m) => a
                .status()
                .members
                .iter()
                .find(|s| s.device.as_deref() == Some(*m) || format!("#{}", s.slot) == *m)
                .and_then(|s| s.device.clone()),
            _ => None,
        };
        let said = match op {
            MemberOp::Fail(m) => a.fail_member(m),
            MemberOp::Remove(m) => a.remove_member(m),
            MemberOp::Readd(m) => a.readd_member(m),
            MemberOp::Add(path) => {
                let opts = UringOptions {
                    block_size: Some(a.info().block_size),
                    ..UringOptions::default()
                };
                let dev: Arc<dyn Bdev> = UringBdev::open(path, opts).map_err(|e| {
                    ManageError::InUse(format!("{}: cannot open {}: {e}", name, path.display()))
                })?;
                a.add_member(dev)
            }
        }
        .map_err(raid_error)?;
        // Keep the section in step with the members, so that a restart assembles what
        // runs now: an added file is listed, a removed one is not.
        if let Some(DeviceSpec::Raid(mut r)) = self.mgmt.registry.get(name).map(|e| e.spec) {
            let before = r.devices.clone();
            if let Some(dev) = removed_device {
                r.devices.retain(|p| p != &PathBuf::from(&dev));
            }
            if let MemberOp::Add(path) = op {
                if !r.devices.iter().any(|p| p == path) {
                    r.devices.push(path.to_path_buf());
                }
            }
            if r.devices != before {
                self.mgmt.registry.set_spec(name, DeviceSpec::Raid(r));
            }
        }
        self.changed(g);
        tracing::info!(array = name, "{said}");
        Ok(said)
    }
}
