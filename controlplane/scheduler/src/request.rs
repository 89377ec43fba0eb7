//! What one placement decision is asked to place.

use lightpool_model::validate::{validate_volume, Invalid};
use lightpool_model::{PlacementHint, Provisioning, VolumeAffinity, VolumeSpec};

/// A volume to place, its size parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    /// The volume's name (its key in the ledger).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Thick or thin.
    pub provisioning: Provisioning,
    /// Local or remote wishes.
    pub placement: PlacementHint,
    /// The consumer's node.
    pub consumer_node: Option<String>,
    /// Node and pool constraints.
    pub affinity: VolumeAffinity,
    /// Spread group of the replicas of one database cluster.
    pub spread_group: Option<String>,
    /// The node label whose values are the spread's failure domains (node when none).
    pub spread_topology_key: Option<String>,
}

impl VolumeRequest {
    /// A request from a Volume's spec, checked first.
    pub fn from_spec(name: &str, spec: &VolumeSpec) -> Result<Self, Invalid> {
        let size = validate_volume(spec)?;
        Ok(VolumeRequest {
            name: name.to_string(),
            size,
            provisioning: spec.provisioning,
            placement: spec.placement,
            consumer_node: spec.consumer_node.clone(),
            affinity: spec.affinity.clone(),
            spread_group: spec.spread.as_ref().map(|s| s.group.clone()),
            spread_topology_key: spec.spread.as_ref().and_then(|s| s.topology_key.clone()),
        })
    }

    /// A plain request: a size, anywhere.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        VolumeRequest {
            name: name.into(),
            size,
            provisioning: Provisioning::Thick,
            placement: PlacementHint::PreferLocal,
            consumer_node: None,
            affinity: VolumeAffinity::default(),
            spread_group: None,
            spread_topology_key: None,
        }
    }

    /// Whether a volume on `node` would be remote to its consumer (false when the
    /// consumer's node is not known).
    pub fn is_remote_on(&self, node: &str) -> bool {
        self.consumer_node.as_deref().is_some_and(|c| c != node)
    }
}
