//! The local socket of a standalone instance: one JSON request per line, one
//! JSON answer per line. It carries the control plane's objects (the model's
//! types) between the `lightpool` CLI and the store the instance owns (redb
//! allows one process per database).

use std::path::Path;

use lightpool_agent::node_lease;
use lightpool_model::{StoragePool, Volume, VolumeSpec};
use lightpool_store::{Deleted, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Create a Volume (refused if one of the name exists).
    CreateVolume { name: String, spec: VolumeSpec },
    /// One Volume.
    GetVolume { name: String },
    /// Every Volume.
    ListVolumes,
    /// Delete a Volume (its finalizers run first).
    DeleteVolume { name: String },
    /// Every StoragePool.
    ListPools,
    /// Every node: its pool and heartbeat.
    ListNodes,
}

/// A node as `node list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// The node.
    pub name: String,
    /// Where hosts connect.
    pub address: String,
    /// Its pools.
    pub pools: Vec<String>,
    /// Its heartbeat Lease's holder and last renewal.
    pub heartbeat: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// One volume (`None`: there is none).
    Volume(Option<Box<Volume>>),
    /// Volumes.
    Volumes(Vec<Volume>),
    /// Pools.
    Pools(Vec<StoragePool>),
    /// Nodes.
    Nodes(Vec<NodeView>),
    /// A delete: true when it is gone, false when it waits for its clean-up.
    Deleted(bool),
    /// Refused, with what to change.
    Error(String),
}

/// What went wrong talking to an instance.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No instance answers on the socket.
    #[error("no standalone instance answers on {path} ({source}): start one with `lightpool standalone`, or name its --data-dir")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("standalone instance: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not understood.
    #[error("standalone instance answered something unreadable: {0}")]
    Codec(#[from] serde_json::Error),
}

/// Sends one request to the instance on `path`.
pub async fn call(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let s = UnixStream::connect(path)
        .await
        .map_err(|e| ClientError::Connect {
            path: path.display().to_string(),
            source: e,
        })?;
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    Ok(serde_json::from_str(&answer)?)
}

/// Serves requests on `listener` from `store` until the task is dropped.
pub async fn serve<S: Store>(listener: UnixListener, store: S) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => answer(&store, req)
                        .await
                        .unwrap_or_else(|e| Response::Error(e.to_string())),
                    Err(e) => Response::Error(format!("unreadable request: {e}")),
                };
                let Ok(mut out) = serde_json::to_vec(&resp) else {
                    break;
                };
                out.push(b'\n');
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn answer<S: Store>(store: &S, req: Request) -> Result<Response, StoreError> {
    Ok(match req {
        Request::CreateVolume { name, spec } => {
            if store.get::<Volume>(&name).await?.is_some() {
                return Ok(Response::Error(format!(
                    "volume '{name}' exists: choose another name, or delete it first"
                )));
            }
            if let Err(invalid) = lightpool_model::validate::validate_volume(&spec) {
                return Ok(Response::Error(invalid.to_string()));
            }
            let v = store.apply(&Volume::new(&name, spec)).await?;
            Response::Volume(Some(Box::new(v)))
        }
        Request::GetVolume { name } => {
            Response::Volume(store.get::<Volume>(&name).await?.map(Box::new))
        }
        Request::ListVolumes => Response::Volumes(store.list::<Volume>().await?.items),
        Request::DeleteVolume { name } => match store.delete::<Volume>(&name, None).await {
            Ok(Deleted::Gone) => Response::Deleted(true),
            Ok(Deleted::Pending(_)) => Response::Deleted(false),
            Err(e) if e.is_not_found() => Response::Error(format!(
                "volume '{name}' does not exist: `lightpool volume list` shows those that do"
            )),
            Err(e) => return Err(e),
        },
        Request::ListPools => Response::Pools(store.list::<StoragePool>().await?.items),
        Request::ListNodes => {
            let pools = store.list::<StoragePool>().await?.items;
            let mut nodes: Vec<NodeView> = Vec::new();
            for p in &pools {
                let node = &p.spec.node;
                let pool = p.metadata.name.clone().unwrap_or_default();
                if let Some(n) = nodes.iter_mut().find(|n| n.name == node.name) {
                    n.pools.push(pool);
                    continue;
                }
                let lease = store.get_lease(&node_lease(&node.name)).await?;
                nodes.push(NodeView {
                    name: node.name.clone(),
                    address: format!("{}:{}", node.address, node.port),
                    pools: vec![pool],
                    heartbeat: lease.and_then(|l| l.renew_time),
                });
            }
            Response::Nodes(nodes)
        }
    })
}
