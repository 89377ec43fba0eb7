//! VolumeMigration: a request to move a volume to another node while its consumer
//! keeps doing I/O (the live-migration issue fills in the steps; the type is here so
//! the CRD is versioned with the others from the start).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::operation::OperationRecord;

/// Move a volume.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "lightpool.io",
    version = "v1alpha1",
    kind = "VolumeMigration",
    plural = "volumemigrations",
    shortname = "lpm",
    status = "VolumeMigrationStatus",
    derive = "PartialEq",
    doc = "Moves a volume to another node while its consumer keeps doing I/O.",
    printcolumn = r#"{"name": "Volume", "type": "string", "jsonPath": ".spec.volume"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMigrationSpec {
    /// The volume to move.
    pub volume: String,
    /// The node to move it to; the scheduler picks one when absent.
    #[serde(default)]
    pub target_node: Option<String>,
    /// The pool to move it to; the scheduler picks one when absent.
    #[serde(default)]
    pub target_pool: Option<String>,
}

/// The life of a migration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MigrationPhase {
    /// Not started.
    #[default]
    Pending,
    /// Copying while writes go to both sides.
    Copying,
    /// ANA states flipping.
    Switching,
    /// The volume lives on the target.
    Succeeded,
    /// Given up; the volume stays on the source.
    Failed,
}

/// Where the migration stands. Written as a whole (see `VolumeStatus`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMigrationStatus {
    /// Where the migration is.
    #[serde(default)]
    pub phase: MigrationPhase,
    /// The node the volume is moving from.
    pub source_node: Option<String>,
    /// The pool chosen to receive it.
    pub target_pool: Option<String>,
    /// Bytes copied so far.
    pub copied_bytes: Option<u64>,
    /// Why it failed, for people.
    pub message: Option<String>,
    /// Observations with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The multi-step operation in progress.
    pub operation: Option<OperationRecord>,
}
