//! What the two Kubernetes binaries share: the client (in-cluster service
//! account, or `$KUBECONFIG` / `~/.kube/config` outside a cluster, as kube's
//! `Config::infer` finds them), the namespace the Leases and Events live in,
//! logging, and the shutdown signal.

use anyhow::Context;
use lightpool_store::KubeStore;

/// A store on the cluster this process runs in (or the kubeconfig's), writing
/// as `manager`; Leases and Events in `namespace`, else the client's default
/// (the pod's own namespace in a cluster).
pub async fn store(manager: &str, namespace: Option<&str>) -> anyhow::Result<KubeStore> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API: neither the in-cluster service account nor a kubeconfig ($KUBECONFIG, ~/.kube/config) was usable")?;
    let store = KubeStore::new(client, manager);
    Ok(match namespace {
        Some(ns) => store.with_namespace(ns),
        None => store,
    })
}

/// An environment variable as a flag's default (empty when unset; the binaries
/// refuse an empty value).
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Refuses an empty flag with what to set.
pub fn required(value: &str, flag: &str, var: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!value.is_empty(), "{flag} is empty: pass it or set ${var}");
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM (a pod stopping) or Ctrl-C.
pub async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        } => {}
    }
}
