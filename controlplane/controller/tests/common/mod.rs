//! What the controller's tests of several objects share: two nodes (node-a, node-b),
//! each an agent over an in-memory dataplane of 100 GiB, and the controller, on either
//! store.
#![allow(dead_code)]

use std::time::Duration;

use lightpool_agent::{Agent, AgentConfig, MemoryDataplane};
use lightpool_controller::{Controller, ControllerConfig};
use lightpool_model::quantity::GIB;
use lightpool_store::fake_api::FakeApi;
use lightpool_store::{EmbeddedStore, KubeStore, Store};

pub struct Cluster<S> {
    pub store: S,
    pub agents: Vec<(Agent<S, MemoryDataplane>, MemoryDataplane)>,
    pub controller: Controller<S>,
}

pub fn embedded() -> EmbeddedStore {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
    // The open database keeps its file.
    std::mem::forget(dir);
    s
}

pub fn kube() -> KubeStore {
    KubeStore::new(FakeApi::default().client(), "lightpool-test")
}

pub fn cluster<S: Store>(store: S) -> Cluster<S> {
    let agents = ["node-a", "node-b"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dp = MemoryDataplane::new(100 * GIB);
            let cfg = AgentConfig::new(*n, format!("10.0.0.{}", i + 1), 4420);
            (Agent::new(store.clone(), dp.clone(), cfg), dp)
        })
        .collect();
    let controller = Controller::new(store.clone(), ControllerConfig::new("c1")).unwrap();
    Cluster {
        store,
        agents,
        controller,
    }
}

impl<S: Store> Cluster<S> {
    /// `n` seconds: each second every agent ticks, then the controller.
    pub async fn seconds(&mut self, n: usize) {
        for _ in 0..n {
            for (a, _) in &mut self.agents {
                a.tick().await.unwrap();
            }
            self.controller.tick().await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    pub fn dp(&self, i: usize) -> &MemoryDataplane {
        &self.agents[i].1
    }
}
