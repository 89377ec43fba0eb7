//! The record of a multi-step operation, kept in the status of the object it works
//! on, so a controller that restarts finds the phase it reached (see the
//! `lightpool-operation` crate for the machine that drives it).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A multi-step operation in progress (or finished) on one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationRecord {
    /// Which operation, e.g. "create", "delete", "migrate".
    pub kind: String,
    /// The phase reached: the next step to run, or a final phase.
    pub phase: String,
    /// Steps tried in this phase (resets when the phase advances).
    #[serde(default)]
    pub attempts: u32,
    /// The last step error, for people.
    pub last_error: Option<String>,
    /// Opaque data the steps carry between phases (JSON), e.g. the id of an object
    /// a step created, so that a resumed step finds it instead of making another.
    pub data: Option<String>,
}
