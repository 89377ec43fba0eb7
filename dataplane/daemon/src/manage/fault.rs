//! Run-time changes to a fault device's rules, made under the change lock, with the
//! device's registry entry kept in step: what `config save` writes and what a restart
//! from the boot blob starts with (a hot upgrade carries the rules by the device's
//! own export).

use std::sync::Arc;

use lightpool_bdev_fault::{FaultBdev, FaultRule};

use super::{DeviceSpec, ManageError, Running};

/// Fault device `name` of this process.
pub fn fault_device(name: &str) -> Result<Arc<FaultBdev>, ManageError> {
    FaultBdev::find(name).ok_or_else(|| {
        ManageError::NotFound(format!(
            "no fault device {name:?}: create one with `lightpool bdev create {name} --fault DEVICE`"
        ))
    })
}

impl Running {
    /// Replaces fault device `name`'s rules (`text`: the same, as given).
    pub fn set_fault_rules(
        &self,
        name: &str,
        rules: Vec<FaultRule>,
        text: Vec<String>,
    ) -> Result<lightpool_api::v1::FaultRules, ManageError> {
        let g = self.change()?;
        let d = fault_device(name)?;
        let Some(DeviceSpec::Fault { base, .. }) = self.mgmt.registry.get(name).map(|e| e.spec)
        else {
            return Err(ManageError::NotFound(format!(
                "no fault device {name:?} in the registry"
            )));
        };
        d.set_rules(rules);
        self.mgmt
            .registry
            .set_spec(name, DeviceSpec::Fault { base, rules: text });
        self.changed(g);
        tracing::warn!(
            device = name,
            rules = ?d.rules().iter().map(|r| r.rule.to_string()).collect::<Vec<_>>(),
            "fault rules set"
        );
        Ok(crate::api::convert::fault_rules(name, &d))
    }
}
