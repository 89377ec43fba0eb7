//! Wake-ups on change, for reconcilers that react to a watch and keep a slow
//! resync as a safety net: a task lists and watches one kind and wakes a
//! [`Notify`] at each change (wake-ups coalesce: a reconciler that is busy
//! runs once more, not once per change). A watch that ends or fails (a version
//! too old, a dropped connection) is started again from a new list, which
//! wakes too, for whatever changed in between.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{Object, Store};

/// Pause before listing again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Wakes `wake` at every change of a `K` until the task is aborted.
pub fn wake_on_change<S: Store, K: Object>(store: S, wake: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match store.list::<K>().await {
                Ok(listed) => {
                    wake.notify_one();
                    match store.watch::<K>(&listed.version).await {
                        Ok(mut changes) => {
                            while let Some(change) = changes.next().await {
                                match change {
                                    Ok(_) => wake.notify_one(),
                                    Err(e) => {
                                        tracing::debug!(error = %e, "watch ended; listing again");
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "watch refused; listing again"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "list for a watch failed; retrying"),
            }
            tokio::time::sleep(RETRY).await;
        }
    })
}
