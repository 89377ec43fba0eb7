//! Snapshot: a point-in-time copy of a volume, kept in the volume's pool.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::operation::OperationRecord;

/// A snapshot's request.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "lightpool.io",
    version = "v1alpha1",
    kind = "Snapshot",
    plural = "snapshots",
    shortname = "lps",
    status = "SnapshotStatus",
    derive = "PartialEq",
    doc = "A point-in-time copy of a volume, kept in the volume's pool.",
    printcolumn = r#"{"name": "Volume", "type": "string", "jsonPath": ".spec.volume"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// The volume to copy.
    pub volume: String,
}

/// The life of a snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SnapshotPhase {
    /// Not taken yet.
    #[default]
    Pending,
    /// Taken.
    Ready,
    /// Refused or failed; `message` says why.
    Failed,
    /// Being deleted.
    Deleting,
}

/// What was taken. Written as a whole (see `VolumeStatus`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// Where the snapshot is in its life.
    #[serde(default)]
    pub phase: SnapshotPhase,
    /// The volume's size when taken.
    pub size_bytes: Option<u64>,
    /// The pool holding it.
    pub pool: Option<String>,
    /// RFC 3339 time it was taken.
    pub taken_at: Option<String>,
    /// Why it is not Ready, for people.
    pub message: Option<String>,
    /// Observations with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The multi-step operation in progress.
    pub operation: Option<OperationRecord>,
}
