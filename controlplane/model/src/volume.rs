//! Volume: a block device a consumer asked for, placed by the scheduler on one pool
//! and served over NVMe-oF.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::Condition;
use crate::labels::LabelSelector;
use crate::operation::OperationRecord;
use crate::quantity::Quantity;

/// A volume's request.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "lightpool.io",
    version = "v1alpha1",
    kind = "Volume",
    plural = "volumes",
    shortname = "lpv",
    status = "VolumeStatus",
    derive = "PartialEq",
    doc = "A block volume placed on one storage pool and served over NVMe-oF.",
    printcolumn = r#"{"name": "Size", "type": "string", "jsonPath": ".spec.size"}"#,
    printcolumn = r#"{"name": "Placement", "type": "string", "jsonPath": ".spec.placement"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Node", "type": "string", "jsonPath": ".status.node"}"#,
    printcolumn = r#"{"name": "Pool", "type": "string", "jsonPath": ".status.pool"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// The size: bytes, or a number with Ki/Mi/Gi/Ti (or K/M/G/T) suffix.
    pub size: Quantity,
    /// Thin volumes take space as they are written; thick ones reserve it all.
    #[serde(default)]
    pub provisioning: Provisioning,
    /// Whether the volume should sit on its consumer's node.
    #[serde(default)]
    pub placement: PlacementHint,
    /// The node the consumer (the database pod) runs on; "local" means this node.
    #[serde(default)]
    pub consumer_node: Option<String>,
    /// Where the volume may go.
    #[serde(default)]
    pub affinity: VolumeAffinity,
    /// Replicas of one database cluster share a spread group and land in
    /// different failure domains.
    #[serde(default)]
    pub spread: Option<Spread>,
    /// Create the volume from this snapshot (same pool as the snapshot).
    #[serde(default)]
    pub source_snapshot: Option<String>,
    /// Create the volume as a copy of this volume (a clone, in the source's pool:
    /// an internal snapshot of the source taken at creation, kept while the clone
    /// needs its data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume: Option<String>,
    /// The nodes the container orchestrator attached the volume to (CSI
    /// ControllerPublishVolume): a node stages the volume only while it is here,
    /// and a volume used by one node at a time is here at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<Publication>,
}

/// One node a volume is attached to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Publication {
    /// The node's name (the CSI node id).
    pub node: String,
    /// Attached read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// Thin or thick provisioning.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Provisioning {
    /// All space reserved at creation.
    #[default]
    Thick,
    /// Space taken as written; may over-commit within the pool's limit.
    Thin,
}

/// Where the volume should sit relative to its consumer's node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementHint {
    /// On the consumer's node, or nowhere.
    MustLocal,
    /// On the consumer's node when it fits, elsewhere otherwise.
    #[default]
    PreferLocal,
    /// On another node when one fits, the consumer's otherwise.
    PreferRemote,
    /// On another node, or nowhere.
    MustRemote,
}

impl PlacementHint {
    /// The spelling used in the CRD and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementHint::MustLocal => "MustLocal",
            PlacementHint::PreferLocal => "PreferLocal",
            PlacementHint::PreferRemote => "PreferRemote",
            PlacementHint::MustRemote => "MustRemote",
        }
    }
}

/// Constraints on the node and pool. Each non-empty part must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeAffinity {
    /// Only these nodes (by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Only these pools (by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
    /// Only nodes whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Only pools whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_selector: Option<LabelSelector>,
}

impl VolumeAffinity {
    /// Whether any constraint is set.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.pools.is_empty()
            && self
                .node_selector
                .as_ref()
                .is_none_or(LabelSelector::is_empty)
            && self
                .pool_selector
                .as_ref()
                .is_none_or(LabelSelector::is_empty)
    }
}

/// Spread of one database cluster's replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    /// Volumes with the same group are replicas of one database cluster.
    pub group: String,
    /// The node label whose values are the failure domains, e.g.
    /// `topology.kubernetes.io/zone`; the node itself when absent.
    #[serde(default)]
    pub topology_key: Option<String>,
}

/// The life of a volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumePhase {
    /// Not yet placed.
    #[default]
    Pending,
    /// Placed; the agent has not built it yet.
    Scheduled,
    /// Built and published: `target` says how to connect.
    Ready,
    /// Refused: the spec is invalid or no pool fits; `message` says why.
    Rejected,
    /// Being taken down.
    Deleting,
    /// A step failed for good; `message` says which.
    Failed,
}

/// The name of a node's pool among its dataplane's pools: a volume the control plane
/// places on a node is volume NAME of pool `NODE_POOL` there.
pub const NODE_POOL: &str = "node";

/// The observed state of a volume. Written as a whole (every optional field is
/// sent, as null when absent) so that a status patch replaces it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    /// Where the volume is in its life.
    #[serde(default)]
    pub phase: VolumePhase,
    /// The `metadata.generation` this status describes.
    pub observed_generation: Option<i64>,
    /// The node the volume landed on.
    pub node: Option<String>,
    /// The pool the volume landed on.
    pub pool: Option<String>,
    /// The size in bytes the control plane granted (spec.size once placed, or
    /// grown to): what the pool's ledger counts.
    pub size_bytes: Option<u64>,
    /// The size the node's dataplane serves (written by its agent); below
    /// `size_bytes` while a grow is under way.
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
    /// Whether the volume sits on its consumer's node.
    pub local: Option<bool>,
    /// Exported to its node's own kernel through ublk (its consumer on that node
    /// reads the pool through the node's dataplane, not over NVMe/TCP): written by
    /// the node's agent from its dataplane. Such a volume cannot migrate (the local
    /// export has no second path to follow).
    #[serde(default)]
    pub ublk: bool,
    /// How a host connects to it, once Ready.
    pub target: Option<VolumeTarget>,
    /// Why it is not Ready, for people: the validation error or the scheduler's
    /// rejection ("3 pools: node-a full (...), ...").
    pub message: Option<String>,
    /// Each pool's reason for refusing the volume, when none accepted it.
    #[serde(default)]
    pub rejections: Vec<PoolRejection>,
    /// Observations with reasons (Valid, Scheduled, Ready).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The multi-step operation in progress.
    pub operation: Option<OperationRecord>,
}

/// One pool's reason to refuse a volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolRejection {
    /// The pool.
    pub pool: String,
    /// Its node.
    pub node: String,
    /// Which plugin refused it.
    pub plugin: String,
    /// Why, for people.
    pub reason: String,
}

/// The exact parameters a host connects with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeTarget {
    /// The subsystem NQN.
    pub nqn: String,
    /// The namespace ID inside the subsystem.
    pub nsid: u32,
    /// The namespace's UUID (the same on every node that serves it).
    pub uuid: Option<String>,
    /// Every path to the volume; more than one while it migrates.
    pub paths: Vec<TargetPath>,
}

/// One path to a volume: a node's listener and its ANA state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetPath {
    /// The node serving this path.
    pub node: String,
    /// Transport: "tcp" (later "rdma").
    pub transport: String,
    /// Address family: "ipv4" or "ipv6".
    pub adrfam: String,
    /// The listener's address.
    pub traddr: String,
    /// The listener's port.
    pub trsvcid: u16,
    /// The ANA group of the namespace on this node.
    pub ana_group: u32,
    /// The group's ANA state on this node.
    pub ana_state: AnaState,
}

/// ANA states (NVMe base specification, Asymmetric Namespace Access).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AnaState {
    /// Optimized.
    Optimized,
    /// Non-optimized.
    NonOptimized,
    /// Inaccessible.
    Inaccessible,
    /// Persistent loss.
    PersistentLoss,
    /// Change in progress.
    Change,
}

/// The NQN of a volume's subsystem.
pub fn volume_nqn(volume_name: &str) -> String {
    format!("nqn.2024-01.io.lightpool:volume:{volume_name}")
}

impl VolumeTarget {
    /// The `nvme connect` line for each accessible path, optimized ones first.
    pub fn connect_commands(&self) -> Vec<String> {
        let mut paths: Vec<&TargetPath> = self
            .paths
            .iter()
            .filter(|p| matches!(p.ana_state, AnaState::Optimized | AnaState::NonOptimized))
            .collect();
        paths.sort_by_key(|p| p.ana_state != AnaState::Optimized);
        paths
            .iter()
            .map(|p| {
                format!(
                    "nvme connect -t {} -a {} -s {} -n {}",
                    p.transport, p.traddr, p.trsvcid, self.nqn
                )
            })
            .collect()
    }
}
