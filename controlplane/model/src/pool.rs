//! StoragePool: one node's disks made into one pool by its agent.
//!
//! The spec is what the agent found and was told (devices, layout, limits); the
//! status is what it and the controller observe (capacity, health). The pool's own
//! labels are its `metadata.labels`; the node's labels (zone, rack) travel in the
//! spec so that selectors on nodes work in standalone mode too.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::labels::{Labels, ZONE_LABEL};
use crate::quantity::Quantity;

/// Default for `maxRemoteVolumes` when neither the pool nor the scheduler config
/// says otherwise (LiteIO's figure).
pub const DEFAULT_MAX_REMOTE_VOLUMES: u32 = 3;
/// Default NVMe/TCP port.
pub const DEFAULT_NVMF_PORT: u16 = 4420;

/// A node's local disks pooled into one allocator.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lightpool.io",
    version = "v1alpha1",
    kind = "StoragePool",
    plural = "storagepools",
    shortname = "lpp",
    status = "StoragePoolStatus",
    derive = "PartialEq",
    doc = "A storage node's local disks pooled into one allocator by its agent.",
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".spec.node.name"}"#,
    printcolumn = r#"{"name": "Health", "type": "string", "jsonPath": ".status.health"}"#,
    printcolumn = r#"{"name": "Capacity", "type": "integer", "jsonPath": ".status.capacityBytes"}"#,
    printcolumn = r#"{"name": "Free", "type": "integer", "jsonPath": ".status.freeBytes"}"#,
    printcolumn = r#"{"name": "Volumes", "type": "integer", "jsonPath": ".status.volumes"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolSpec {
    /// The node the pool lives on.
    pub node: NodeInfo,
    /// The block devices the pool is made of.
    #[serde(default)]
    pub devices: Vec<PoolDevice>,
    /// How the devices are combined.
    #[serde(default)]
    pub layout: PoolLayout,
    /// How much may be provisioned, in percent of the capacity: 100 allows no
    /// over-commit; 200 lets thin volumes promise twice the capacity. Thick
    /// volumes always fit in the capacity itself.
    #[serde(default = "default_over_commit")]
    pub over_commit_percent: u32,
    /// At most this many volumes on this pool may serve consumers on other nodes;
    /// the scheduler's configured default when absent.
    #[serde(default)]
    pub max_remote_volumes: Option<u32>,
    /// No new volumes are placed here (existing ones stay).
    #[serde(default)]
    pub unschedulable: bool,
}

fn default_over_commit() -> u32 {
    100
}

/// Where a pool's node is and how it is reached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node's name (a Kubernetes node name, or the host name standalone).
    pub name: String,
    /// The address its dataplane serves NVMe/TCP on.
    pub address: String,
    /// The NVMe/TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The node's labels (zone, rack, ...), copied by the agent.
    #[serde(default)]
    pub labels: Labels,
}

fn default_port() -> u16 {
    DEFAULT_NVMF_PORT
}

impl NodeInfo {
    /// The node's zone label, if any.
    pub fn zone(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }
}

/// One device of a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolDevice {
    /// A path (`/dev/nvme0n1`, a file) or a PCI address (`0000:03:00.0`).
    pub path: String,
    /// Its size, when known before the agent opens it (a sparse file to create).
    #[serde(default)]
    pub size: Option<Quantity>,
}

/// How a pool combines its devices.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PoolLayout {
    /// One after another.
    #[default]
    Linear,
    /// Striped, no redundancy.
    Raid0,
    /// Mirrored.
    Raid1,
    /// Striped with parity.
    Raid5,
}

/// A pool's health as the controller sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PoolHealth {
    /// Heartbeats arrive and the pool serves I/O.
    Ready,
    /// Serving, but a redundant member is missing.
    Degraded,
    /// No heartbeat for too long; nothing new is placed here.
    #[default]
    Unknown,
    /// The agent reports the pool cannot serve.
    Failed,
}

impl PoolHealth {
    /// Whether new volumes may be placed on a pool in this state.
    pub fn schedulable(self) -> bool {
        matches!(self, PoolHealth::Ready | PoolHealth::Degraded)
    }
}

/// What the agent and the controller observe of a pool. Written as a whole (every
/// optional field is sent, as null when absent) so a status patch replaces it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// Health, from the node's heartbeat and the agent's report.
    #[serde(default)]
    pub health: PoolHealth,
    /// Usable bytes after the layout.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Bytes not yet written by any volume (thin volumes use less than they promise).
    #[serde(default)]
    pub free_bytes: u64,
    /// Sum of the sizes of the volumes placed here.
    #[serde(default)]
    pub provisioned_bytes: u64,
    /// Volumes placed here.
    #[serde(default)]
    pub volumes: u32,
    /// Of those, volumes whose consumer is on another node.
    #[serde(default)]
    pub remote_volumes: u32,
    /// Observations with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Why the pool is not Ready, for people.
    pub message: Option<String>,
}
