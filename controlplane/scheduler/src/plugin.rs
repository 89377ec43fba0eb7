//! The plugin interfaces, after the Kubernetes scheduler framework: a filter says
//! yes or no for one pool (and, only when asked, why not, in words); a score rates
//! a pool that passed every filter from 0 to 100, and the framework weights it.

use std::collections::HashSet;

use crate::cluster::{room, Cluster, PoolState, Usage};
use crate::request::VolumeRequest;

/// One pool as a plugin sees it: its facts and what is placed on it now
/// (reservations included).
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// Static facts.
    pub pool: &'a PoolState,
    /// Placed and reserved.
    pub usage: &'a Usage,
}

impl PoolView<'_> {
    /// Room left for the request's provisioning.
    pub fn room(&self, req: &VolumeRequest) -> u64 {
        room(self.pool, self.usage, req.provisioning)
    }

    /// Whether the pool is on the consumer's node.
    pub fn is_local(&self, req: &VolumeRequest) -> bool {
        req.consumer_node.as_deref() == Some(self.pool.node.as_str())
    }
}

/// What every plugin may read during one decision, computed once for it.
#[derive(Debug)]
pub struct Decision<'a> {
    /// The volume to place.
    pub req: &'a VolumeRequest,
    /// Remote volumes a pool may serve when it sets no limit of its own.
    pub max_remote_volumes: u32,
    /// The consumer node's zone, when a pool on that node names it.
    pub consumer_zone: Option<&'a str>,
    /// Failure domains already holding a replica of the request's spread group.
    pub spread_taken: HashSet<&'a str>,
}

impl<'a> Decision<'a> {
    /// Prepares a decision for `req` over `cluster` (the PreFilter step).
    pub fn new(req: &'a VolumeRequest, cluster: &'a Cluster, max_remote_volumes: u32) -> Self {
        let consumer_zone = req.consumer_node.as_deref().and_then(|c| {
            cluster
                .pools()
                .find(|(_, p, _)| p.node == c)
                .and_then(|(_, p, _)| p.node_labels.get(lightpool_model::labels::ZONE_LABEL))
                .map(String::as_str)
        });
        let mut spread_taken = HashSet::new();
        if let Some(group) = req.spread_group.as_deref().and_then(|g| cluster.group(g)) {
            for &i in group.keys() {
                if let Some(d) = cluster.pool(i).domain(req.spread_topology_key.as_deref()) {
                    spread_taken.insert(d);
                }
            }
        }
        Decision {
            req,
            max_remote_volumes,
            consumer_zone,
            spread_taken,
        }
    }
}

/// A yes/no test of one pool for one volume.
pub trait FilterPlugin: Send + Sync {
    /// The name used in the config file and in rejections.
    fn name(&self) -> &'static str;

    /// Whether the pool may take the volume. Called for every pool in every
    /// decision: no allocation here.
    fn filter(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> bool;

    /// Why `filter` said no, as words that follow the pool's name, e.g.
    /// "full (needs 100 GiB, has 20 GiB)". Called only for pools it refused,
    /// only when no pool fits.
    fn reason(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> String;
}

/// A rating of a pool that passed every filter.
pub trait ScorePlugin: Send + Sync {
    /// The name used in the config file.
    fn name(&self) -> &'static str;

    /// 0 (worst) to 100 (best).
    fn score(&self, d: &Decision<'_>, pool: &PoolView<'_>) -> u32;
}
