//! The control plane's data model: one set of Rust types that are both the
//! Kubernetes custom resources (group `lightpool.io`, version `v1alpha1`, status
//! subresources) and the records of the standalone store.
//!
//! - [`StoragePool`]: a node's disks pooled by its agent.
//! - [`Volume`]: a block volume, its placement wishes, where it landed and how to
//!   connect to it.
//! - [`Snapshot`] and [`VolumeMigration`].
//!
//! User input is checked by [`validate`], whose messages name the field and say
//! what to change. The CRD YAML under `deploy/crds/` is generated from these types
//! by the `crdgen` binary; a test fails when it is out of date.

pub mod condition;
pub mod crd;
pub mod labels;
pub mod migration;
pub mod operation;
pub mod pool;
pub mod quantity;
pub mod snapshot;
pub mod validate;
pub mod volume;

pub use condition::{set_condition, Condition, ConditionStatus};
pub use labels::{LabelSelector, Labels};
pub use migration::{
    MigrationPhase, MigrationProgress, MigrationSide, VolumeMigration, VolumeMigrationSpec,
    VolumeMigrationStatus,
};
pub use operation::OperationRecord;
pub use pool::{NodeInfo, PoolHealth, PoolLayout, StoragePool, StoragePoolSpec, StoragePoolStatus};
pub use quantity::Quantity;
pub use snapshot::{Snapshot, SnapshotSpec, SnapshotStatus};
pub use volume::{
    PlacementHint, Provisioning, Publication, Volume, VolumeAffinity, VolumePhase, VolumeSpec,
    VolumeStatus,
};

/// The API group of every LightPool resource.
pub const GROUP: &str = "lightpool.io";
/// The version the types describe.
pub const VERSION: &str = "v1alpha1";

/// Finalizer the controller puts on a Volume until its dataplane objects are gone.
pub const VOLUME_FINALIZER: &str = "lightpool.io/volume-protection";
/// Finalizer the agent puts on its StoragePool until no volume lives there.
pub const POOL_FINALIZER: &str = "lightpool.io/pool-protection";
/// Finalizer the controller puts on a Snapshot until it is deleted from its pool.
pub const SNAPSHOT_FINALIZER: &str = "lightpool.io/snapshot-protection";
/// Finalizer the controller puts on a VolumeMigration while it runs.
pub const MIGRATION_FINALIZER: &str = "lightpool.io/migration-protection";
