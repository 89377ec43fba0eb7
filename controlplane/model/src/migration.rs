//! VolumeMigration: a request to move a volume to another node while its consumer
//! keeps doing I/O. The controller drives it through named phases, persisted in
//! the status (a restarted controller resumes where it was); the agents of the
//! two nodes do each phase's work on their own dataplanes and report it in
//! `status.source` and `status.destination`.
//!
//! ```text
//! Pending -> CreatingVolume -> SetupPipe -> Syncing -> Switching -> Cleaning -> Succeeded
//!               \_______________\______________\ (failure or cancel)
//!                                               RollingBack -> RolledBack | Failed
//! ```

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
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "From", "type": "string", "jsonPath": ".status.sourceNode"}"#,
    printcolumn = r#"{"name": "To", "type": "string", "jsonPath": ".status.targetNode"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMigrationSpec {
    /// The volume to move.
    pub volume: String,
    /// The node to move it to; the scheduler picks one (not the volume's own)
    /// when absent.
    #[serde(default)]
    pub target_node: Option<String>,
    /// The pool to move it to; the scheduler picks one when absent.
    #[serde(default)]
    pub target_pool: Option<String>,
    /// Bytes per second the copy reads at most (the writers' share of the
    /// disks and the network); no limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_bytes: Option<u64>,
    /// Set to give up: honoured before the switch (the migration rolls back),
    /// too late once the destination serves the hosts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// The life of a migration.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum MigrationPhase {
    /// Not started: checked and placed next.
    #[default]
    Pending,
    /// The destination node makes a pool volume of the same size.
    CreatingVolume,
    /// The destination presents the volume's subsystem (same identity, its ANA
    /// group inaccessible, controller IDs disjoint from the source's) and the pipe
    /// subsystem the copy goes through.
    SetupPipe,
    /// The source copies to the pipe while mirroring new writes, until synced.
    Syncing,
    /// The destination's path becomes optimized, then the source's inaccessible.
    Switching,
    /// The source stops the migration and deletes its copy; the Volume lives on
    /// the destination.
    Cleaning,
    /// The volume lives on the destination.
    Succeeded,
    /// Before the switch: what the destination made is being removed, the source
    /// serves alone again.
    RollingBack,
    /// Cancelled and rolled back; the volume stays on the source.
    RolledBack,
    /// Refused, or failed and rolled back; the volume stays on the source.
    Failed,
}

impl MigrationPhase {
    /// Every phase in order (its number is its position).
    pub const ALL: [MigrationPhase; 10] = [
        MigrationPhase::Pending,
        MigrationPhase::CreatingVolume,
        MigrationPhase::SetupPipe,
        MigrationPhase::Syncing,
        MigrationPhase::Switching,
        MigrationPhase::Cleaning,
        MigrationPhase::Succeeded,
        MigrationPhase::RollingBack,
        MigrationPhase::RolledBack,
        MigrationPhase::Failed,
    ];

    /// The name, as in the CRD.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Pending => "Pending",
            MigrationPhase::CreatingVolume => "CreatingVolume",
            MigrationPhase::SetupPipe => "SetupPipe",
            MigrationPhase::Syncing => "Syncing",
            MigrationPhase::Switching => "Switching",
            MigrationPhase::Cleaning => "Cleaning",
            MigrationPhase::Succeeded => "Succeeded",
            MigrationPhase::RollingBack => "RollingBack",
            MigrationPhase::RolledBack => "RolledBack",
            MigrationPhase::Failed => "Failed",
        }
    }

    /// Nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationPhase::Succeeded | MigrationPhase::RolledBack | MigrationPhase::Failed
        )
    }

    /// The migration holds its volume: another may not start, and the agents
    /// leave the volume's objects to it.
    pub fn is_active(self) -> bool {
        !self.is_final()
    }

    /// Before the switch: a cancel or a failure rolls back.
    pub fn before_switch(self) -> bool {
        matches!(
            self,
            MigrationPhase::Pending
                | MigrationPhase::CreatingVolume
                | MigrationPhase::SetupPipe
                | MigrationPhase::Syncing
        )
    }
}

impl std::fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MigrationPhase {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        MigrationPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(())
    }
}

/// The copy's progress, as the source's dataplane reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationProgress {
    /// copying, pausing, synced, failed, cancelled.
    pub state: String,
    /// The copy round (1 is the full pass).
    pub round: u32,
    /// Bytes copied so far (rounds after the first copy some again).
    pub copied_bytes: u64,
    /// The volume's bytes.
    pub total_bytes: u64,
    /// Bytes written since their region was copied.
    pub dirty_bytes: u64,
    /// Since the copy started.
    pub elapsed_ms: u64,
    /// Estimated time to synced.
    #[serde(default)]
    pub eta_ms: Option<u64>,
    /// How long writes were held at the final pause.
    #[serde(default)]
    pub pause_us: Option<u64>,
    /// New writes are slowed down: the copy did not converge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub throttled: bool,
}

/// What one node's agent reports of its side.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSide {
    /// The last phase whose work this node finished.
    #[serde(default)]
    pub done: Option<MigrationPhase>,
    /// The node's NVMe/TCP address (the destination's is where the copy goes).
    #[serde(default)]
    pub address: Option<String>,
    /// Its port.
    #[serde(default)]
    pub port: Option<u16>,
    /// The controller IDs its subsystem of the volume hands out (the
    /// destination takes the other half).
    #[serde(default)]
    pub cntlid: Option<CntlidRange>,
    /// The last failure of this node's work, for people (and the controller:
    /// before the switch it rolls back).
    #[serde(default)]
    pub error: Option<String>,
    /// Since when `error` has been reported (RFC 3339): the controller gives a
    /// passing error (a target asked to try again) some time.
    #[serde(default)]
    pub error_since: Option<String>,
}

/// A range of controller IDs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub struct CntlidRange {
    /// The first.
    pub first: u32,
    /// The last.
    pub last: u32,
}

/// Where the migration stands. Written as a whole (see `VolumeStatus`): the
/// controller writes the phase and placement, each agent its side.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMigrationStatus {
    /// Where the migration is.
    #[serde(default)]
    pub phase: MigrationPhase,
    /// The node the volume is moving from.
    pub source_node: Option<String>,
    /// The pool it is moving from.
    #[serde(default)]
    pub source_pool: Option<String>,
    /// The node chosen to receive it.
    #[serde(default)]
    pub target_node: Option<String>,
    /// The pool chosen to receive it.
    pub target_pool: Option<String>,
    /// The volume's size in bytes.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// The copy's progress (written by the source's agent while Syncing).
    #[serde(default)]
    pub progress: Option<MigrationProgress>,
    /// The source node's report.
    #[serde(default)]
    pub source: MigrationSide,
    /// The destination node's report.
    #[serde(default)]
    pub destination: MigrationSide,
    /// Why it rolled back or failed, or what it waits for, for people.
    pub message: Option<String>,
    /// When the phase last changed (RFC 3339).
    #[serde(default)]
    pub phase_since: Option<String>,
    /// Observations with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The multi-step operation in progress.
    pub operation: Option<OperationRecord>,
}

/// The pipe: a subsystem of the destination serving the moving volume's device to
/// the source's copy (the hosts' subsystem there stands by, inaccessible, and an
/// inaccessible ANA group refuses every host, the copy included).
pub fn pipe_nqn(volume: &str) -> String {
    format!("nqn.2024-01.io.lightpool:migration:{volume}")
}

/// The migration's condition that says whether the source deleted its copy: False
/// (reason `SourceAway`) when the migration succeeded while the source was down,
/// its agent owing the clean-up; True (`Cleaned`) once it is done.
pub const SOURCE_CLEANED: &str = "SourceCleaned";

/// The controller IDs a node hands out for a volume's subsystem: the low half
/// where the volume was created, the other half from the one its source uses
/// when it arrives by migration (a Linux host refuses two controllers of one
/// subsystem with the same ID).
pub const CNTLID_LOW: (u32, u32) = (1, 0x7fff);
/// The high half (see [`CNTLID_LOW`]).
pub const CNTLID_HIGH: (u32, u32) = (0x8000, 0xffef);

/// The range a destination takes, given the source's.
pub fn other_cntlid_half(source: (u32, u32)) -> (u32, u32) {
    if source.0 >= CNTLID_HIGH.0 {
        CNTLID_LOW
    } else {
        CNTLID_HIGH
    }
}
