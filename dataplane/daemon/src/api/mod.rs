//! The management API served by the target: gRPC (`lightpool-api`, one service per
//! resource) on a Unix socket (mode 0600), on a thread of its own with its own tokio
//! runtime, never on a reactor. Each call runs the change on a blocking thread of that
//! runtime through the same operations the configuration file uses (`crate::manage`);
//! changes reach the reactors through their mailboxes and the namespace tables the
//! queues pick up. With `[api] address`, the same services are served on TCP with
//! mutual TLS as well (`tcp`).
//!
//! The socket's default path is the control socket's with `.sock` replaced by
//! `.api.sock` (`/run/lightpool-target.api.sock` beside `/run/lightpool-target.sock`),
//! or `.api` appended when it has no `.sock`. A hot upgrade hands the listening socket
//! to the new process, which serves on at the same path.

pub(crate) mod convert;
mod migrate;
mod pool;
mod raid;
mod service;
pub mod tcp;
mod upgrade;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::Running;

/// The API socket that goes with control socket `control` (the scheme the `lightpool`
/// CLI finds it by: `lightpool_api::socket`).
pub fn default_path(control: &str) -> String {
    lightpool_api::socket::api_path_for(control)
}

/// Listen on `path` (mode 0600); a stale socket file is replaced, a live one is an error.
pub fn bind(path: &str) -> Result<UnixListener> {
    if Path::new(path).exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("another lightpool-target serves its API on {path}: stop it, or give this one its own --api-socket");
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale API socket {path}"))?;
    }
    let l =
        UnixListener::bind(path).with_context(|| format!("cannot listen on API socket {path}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the API socket {path} private"))?;
    Ok(l)
}

/// Serve the API on its own thread. It holds the target only weakly, so that at
/// shutdown the target and its block devices are dropped.
pub fn serve(run: &Arc<Running>) -> Result<()> {
    let std_listener = run
        .mgmt
        .api
        .try_clone()
        .context("duplicating the API socket")?;
    std_listener.set_nonblocking(true)?;
    let tcp = match &run.api_tcp {
        Some(t) => Some((
            t.listener
                .try_clone()
                .context("duplicating the API's TCP socket")?,
            t.server_tls()?,
        )),
        None => None,
    };
    if let Some(t) = &run.api_tcp {
        if let Ok(a) = t.listener.local_addr() {
            tracing::info!(%a, "management API on TCP {a} (mutual TLS)");
        }
    }
    let weak = Arc::downgrade(run);
    std::thread::Builder::new()
        .name("lightpool-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("lightpool-api")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "no runtime for the management API");
                    return;
                }
            };
            let res = rt.block_on(service::serve(weak.clone(), std_listener, tcp));
            if let Err(e) = res {
                tracing::error!(error = %e, "the management API stopped");
            }
            // An API-started upgrade stopped the server once it answered.
            if let Some(run) = weak.upgrade() {
                run.mgmt.upgrade.sent();
            }
        })
        .context("starting the API thread")?;
    Ok(())
}
