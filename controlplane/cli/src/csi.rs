//! `lightpool csi`: the CSI plugin (Identity, and Controller and/or Node) on a Unix
//! socket, the controller on the standalone instance's store on --data-dir. On
//! Kubernetes the same plugin runs as `lightpool-csi` (controlplane/k8s), on the
//! cluster's API.

use lightpool_csi::plugin::{self, PluginArgs};
use lightpool_standalone::protocol::RemoteStore;

pub type CsiArgs = PluginArgs;

pub async fn run(
    a: &CsiArgs,
    store: RemoteStore,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    plugin::run(a, store, stop).await.map_err(|e| e.to_string())
}
