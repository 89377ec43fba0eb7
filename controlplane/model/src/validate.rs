//! Checks of user input, each failure a sentence that names the field and says what
//! to change. `validate_volume` needs only the spec; `validate_volume_against`
//! also checks it against the pools that exist (sizes beyond any pool, unknown
//! nodes or pools in affinities, hints no pool can satisfy).

use std::collections::BTreeSet;
use std::fmt;

use crate::labels::{validate_key, validate_value, LabelSelector};
use crate::pool::StoragePool;
use crate::quantity::{human_bytes, KIB, MIB};
use crate::volume::{PlacementHint, Provisioning, VolumeSpec};

/// The smallest volume.
pub const MIN_VOLUME_BYTES: u64 = MIB;
/// Volume sizes are whole multiples of this.
pub const VOLUME_ALIGN_BYTES: u64 = 4 * KIB;

/// One field's problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.size`.
    pub field: String,
    /// What is wrong and what to change.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a spec was refused: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    /// Each field's problem.
    pub errors: Vec<FieldError>,
}

struct Collect(Vec<FieldError>);

impl Collect {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn finish<T>(self, ok: T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(Invalid { errors: self.0 })
        }
    }
}

fn check_selector(c: &mut Collect, field: &str, s: &Option<LabelSelector>) {
    if let Some(s) = s {
        if let Err(e) = s.validate() {
            c.add(field, e.to_string());
        }
    }
}

/// Checks a volume spec on its own; returns its size in bytes.
pub fn validate_volume(spec: &VolumeSpec) -> Result<u64, Invalid> {
    let mut c = Collect(Vec::new());
    let size = match spec.size.bytes() {
        Ok(0) => {
            c.add(
                "spec.size",
                "is 0: a volume needs at least 1 MiB; write the size you need, e.g. 10Gi",
            );
            0
        }
        Ok(n) if n < MIN_VOLUME_BYTES => {
            c.add(
                "spec.size",
                format!("{n} bytes is below the minimum of 1 MiB; ask for at least 1Mi"),
            );
            n
        }
        Ok(n) if n % VOLUME_ALIGN_BYTES != 0 => {
            let up = n.div_ceil(VOLUME_ALIGN_BYTES) * VOLUME_ALIGN_BYTES;
            c.add(
                "spec.size",
                format!("{n} bytes is not a multiple of 4 KiB; round it up to {up}"),
            );
            n
        }
        Ok(n) => n,
        Err(e) => {
            c.add("spec.size", e.to_string());
            0
        }
    };

    let consumer = spec.consumer_node.as_deref();
    if consumer == Some("") {
        c.add(
            "spec.consumerNode",
            "is empty: name the consumer's node or leave the field out",
        );
    }
    match (spec.placement, consumer) {
        (PlacementHint::MustLocal | PlacementHint::MustRemote, None) => c.add(
            "spec.placement",
            format!(
                "{} needs spec.consumerNode (the node the consumer runs on): set it, or use {}",
                spec.placement.as_str(),
                if spec.placement == PlacementHint::MustLocal {
                    "PreferLocal"
                } else {
                    "PreferRemote"
                }
            ),
        ),
        (PlacementHint::MustLocal, Some(node))
            if !spec.affinity.nodes.is_empty()
                && !spec.affinity.nodes.iter().any(|n| n == node) =>
        {
            c.add(
                "spec.placement",
                format!(
                    "MustLocal puts the volume on node '{node}', but spec.affinity.nodes ({}) \
                     leaves it out: add '{node}' to the list or use PreferLocal",
                    spec.affinity.nodes.join(", ")
                ),
            )
        }
        (PlacementHint::MustRemote, Some(node))
            if !spec.affinity.nodes.is_empty() && spec.affinity.nodes.iter().all(|n| n == node) =>
        {
            c.add(
                "spec.placement",
                format!(
                    "MustRemote keeps the volume off node '{node}', but spec.affinity.nodes \
                     allows only '{node}': add other nodes or use PreferRemote"
                ),
            )
        }
        _ => {}
    }
    for (i, n) in spec.affinity.nodes.iter().enumerate() {
        if n.is_empty() {
            c.add(
                &format!("spec.affinity.nodes[{i}]"),
                "is empty: name a node",
            );
        }
    }
    for (i, p) in spec.affinity.pools.iter().enumerate() {
        if p.is_empty() {
            c.add(
                &format!("spec.affinity.pools[{i}]"),
                "is empty: name a pool",
            );
        }
    }
    check_selector(
        &mut c,
        "spec.affinity.nodeSelector",
        &spec.affinity.node_selector,
    );
    check_selector(
        &mut c,
        "spec.affinity.poolSelector",
        &spec.affinity.pool_selector,
    );
    if let Some(spread) = &spec.spread {
        if spread.group.is_empty() {
            c.add(
                "spec.spread.group",
                "is empty: name the database cluster the replicas belong to",
            );
        } else if let Err(e) = validate_value("spec.spread.group", &spread.group) {
            c.add("spec.spread.group", e.to_string());
        }
        if let Some(key) = &spread.topology_key {
            if let Err(e) = validate_key(key) {
                c.add("spec.spread.topologyKey", e.to_string());
            }
        }
    }
    if spec.source_snapshot.as_deref() == Some("") {
        c.add(
            "spec.sourceSnapshot",
            "is empty: name a snapshot or leave the field out",
        );
    }
    c.finish(size)
}

/// The most a pool could ever hold of a volume with this provisioning.
pub fn pool_limit(pool: &StoragePool, provisioning: Provisioning) -> u64 {
    let capacity = pool.status.as_ref().map_or(0, |s| s.capacity_bytes);
    match provisioning {
        Provisioning::Thick => capacity,
        Provisioning::Thin => {
            let limit =
                u128::from(capacity) * u128::from(pool.spec.over_commit_percent.max(100)) / 100;
            u64::try_from(limit).unwrap_or(u64::MAX)
        }
    }
}

/// Checks a volume spec against the pools that exist: a size no pool could ever
/// hold, nodes or pools in affinities that have no pool, MustLocal on a node with
/// no pool. With no pools at all, only `validate_volume`'s checks apply (the
/// volume waits for pools).
pub fn validate_volume_against(spec: &VolumeSpec, pools: &[StoragePool]) -> Result<u64, Invalid> {
    let size = validate_volume(spec)?;
    if pools.is_empty() {
        return Ok(size);
    }
    let mut c = Collect(Vec::new());
    let nodes: BTreeSet<&str> = pools.iter().map(|p| p.spec.node.name.as_str()).collect();
    let names: BTreeSet<String> = pools
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let list = |set: &mut dyn Iterator<Item = &str>| set.collect::<Vec<_>>().join(", ");

    // A pool whose agent has not yet reported its capacity (status still absent: the
    // agent writes the pool, then its status) says nothing about what fits; counting
    // it as 0 B refused a volume created in that window. With no pool reported, the
    // volume waits like one with no pools at all.
    if let Some(biggest) = pools
        .iter()
        .filter(|p| p.status.is_some())
        .max_by_key(|p| pool_limit(p, spec.provisioning))
    {
        let limit = pool_limit(biggest, spec.provisioning);
        if size > limit {
            c.add(
                "spec.size",
                format!(
                    "{} is larger than any pool can hold: the largest, {} on node {}, holds {} \
                     for {:?} volumes; ask for at most {}",
                    human_bytes(size),
                    biggest.metadata.name.as_deref().unwrap_or("?"),
                    biggest.spec.node.name,
                    human_bytes(limit),
                    spec.provisioning,
                    human_bytes(limit)
                ),
            );
        }
    }
    for (i, n) in spec.affinity.nodes.iter().enumerate() {
        if !nodes.contains(n.as_str()) {
            c.add(
                &format!("spec.affinity.nodes[{i}]"),
                format!(
                    "node '{n}' has no storage pool; nodes with pools: {}",
                    list(&mut nodes.iter().copied())
                ),
            );
        }
    }
    for (i, p) in spec.affinity.pools.iter().enumerate() {
        if !names.contains(p) {
            c.add(
                &format!("spec.affinity.pools[{i}]"),
                format!(
                    "pool '{p}' does not exist; pools: {}",
                    list(&mut names.iter().map(String::as_str))
                ),
            );
        }
    }
    if let (PlacementHint::MustLocal, Some(node)) = (spec.placement, &spec.consumer_node) {
        if !nodes.contains(node.as_str()) {
            c.add(
                "spec.placement",
                format!(
                    "MustLocal needs a pool on the consumer's node '{node}', which has none: \
                     use PreferLocal, or move the consumer to one of {}",
                    list(&mut nodes.iter().copied())
                ),
            );
        } else if !spec.affinity.pools.is_empty()
            && !pools.iter().any(|p| {
                p.spec.node.name == *node
                    && p.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| spec.affinity.pools.contains(n))
            })
        {
            c.add(
                "spec.placement",
                format!(
                    "MustLocal puts the volume on node '{node}', but none of spec.affinity.pools \
                     ({}) is on it: add a pool of '{node}' or use PreferLocal",
                    spec.affinity.pools.join(", ")
                ),
            );
        }
    }
    c.finish(size)
}
