//! The shared store suite on `KubeStore`, through the real kube client, against a
//! fake API server that keeps the API server's semantics.

mod common;

use lightpool_store::fake_api::FakeApi;
use lightpool_store::KubeStore;

fn fresh() -> KubeStore {
    KubeStore::new(FakeApi::default().client(), "lightpool-test")
}

lightpool_store::conformance_tests!(fresh());
