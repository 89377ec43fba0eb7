//! The store of a standalone instance, served on its local socket, and
//! [`RemoteStore`], the [`Store`] that talks to it: the `lightpool` CLI and the
//! agents of other nodes on the machine (each in its own network namespace,
//! sharing the file system) use the instance's store through it, as they would
//! use the Kubernetes API in a cluster. (redb allows one process per database.)
//!
//! One JSON request per connection line, one JSON answer per line; a watch
//! answers with a line per event until either side closes.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use lightpool_model::{Snapshot, StoragePool, Volume, VolumeMigration};
use lightpool_store::{
    Deleted, Event, EventRecord, EventStream, LeaseRecord, Listed, NewEvent, Object, Store,
    StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};

/// A store call; objects travel as JSON, their kind named.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Get {
        kind: String,
        name: String,
    },
    List {
        kind: String,
    },
    Watch {
        kind: String,
        version: String,
    },
    Apply {
        kind: String,
        object: Value,
    },
    PatchStatus {
        kind: String,
        name: String,
        status: Value,
        precondition: Option<String>,
    },
    SetFinalizers {
        kind: String,
        name: String,
        finalizers: Vec<String>,
        precondition: Option<String>,
    },
    Delete {
        kind: String,
        name: String,
        precondition: Option<String>,
    },
    GetLease {
        name: String,
    },
    PutLease {
        lease: LeaseRecord,
    },
    RecordEvent {
        event: NewEvent,
    },
    Events {
        kind: String,
        name: String,
    },
}

/// A store error as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireError {
    NotFound { kind: String, name: String },
    Conflict { kind: String, name: String },
    Gone { version: String },
    Invalid(String),
    Other(String),
}

/// An answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Object(Option<Value>),
    Listed { items: Vec<Value>, version: String },
    Event { deleted: bool, object: Value },
    Deleted { pending: Option<Value> },
    Lease(Option<LeaseRecord>),
    Events(Vec<EventRecord>),
    Error(WireError),
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, name } => WireError::NotFound { kind, name },
            StoreError::Conflict { kind, name } => WireError::Conflict { kind, name },
            StoreError::Gone { version } => WireError::Gone { version },
            StoreError::Invalid(m) => WireError::Invalid(m),
            e => WireError::Other(e.to_string()),
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotFound { kind, name } => StoreError::NotFound { kind, name },
            WireError::Conflict { kind, name } => StoreError::Conflict { kind, name },
            WireError::Gone { version } => StoreError::Gone { version },
            WireError::Invalid(m) => StoreError::Invalid(m),
            WireError::Other(m) => StoreError::Database(m),
        }
    }
}

/// Runs `$body` with `K` the type named by `$kind`.
macro_rules! by_kind {
    ($kind:expr, $K:ident => $body:expr) => {
        match $kind.as_str() {
            "Volume" => {
                type $K = Volume;
                $body
            }
            "StoragePool" => {
                type $K = StoragePool;
                $body
            }
            "Snapshot" => {
                type $K = Snapshot;
                $body
            }
            "VolumeMigration" => {
                type $K = VolumeMigration;
                $body
            }
            k => Err(StoreError::Invalid(format!("unknown kind '{k}'"))),
        }
    };
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, StoreError> {
    Ok(serde_json::to_value(v)?)
}

async fn answer<S: Store>(store: &S, req: Request) -> Result<Response, StoreError> {
    match req {
        Request::Get { kind, name } => by_kind!(kind, K => {
            let o = store.get::<K>(&name).await?;
            Ok(Response::Object(o.as_ref().map(to_value).transpose()?))
        }),
        Request::List { kind } => by_kind!(kind, K => {
            let l = store.list::<K>().await?;
            Ok(Response::Listed {
                items: l.items.iter().map(to_value).collect::<Result<_, _>>()?,
                version: l.version,
            })
        }),
        Request::Apply { kind, object } => by_kind!(kind, K => {
            let o: K = serde_json::from_value(object)?;
            Ok(Response::Object(Some(to_value(&store.apply(&o).await?)?)))
        }),
        Request::PatchStatus {
            kind,
            name,
            status,
            precondition,
        } => by_kind!(kind, K => {
            let st: <K as Object>::Status = serde_json::from_value(status)?;
            let o = store.patch_status::<K>(&name, &st, precondition.as_deref()).await?;
            Ok(Response::Object(Some(to_value(&o)?)))
        }),
        Request::SetFinalizers {
            kind,
            name,
            finalizers,
            precondition,
        } => by_kind!(kind, K => {
            let o = store.set_finalizers::<K>(&name, &finalizers, precondition.as_deref()).await?;
            Ok(Response::Object(o.as_ref().map(to_value).transpose()?))
        }),
        Request::Delete {
            kind,
            name,
            precondition,
        } => by_kind!(kind, K => {
            Ok(Response::Deleted {
                pending: match store.delete::<K>(&name, precondition.as_deref()).await? {
                    Deleted::Gone => None,
                    Deleted::Pending(o) => Some(to_value(&o)?),
                },
            })
        }),
        Request::GetLease { name } => Ok(Response::Lease(store.get_lease(&name).await?)),
        Request::PutLease { lease } => Ok(Response::Lease(Some(store.put_lease(&lease).await?))),
        Request::RecordEvent { event } => {
            Ok(Response::Events(vec![store.record_event(&event).await?]))
        }
        Request::Events { kind, name } => Ok(Response::Events(store.events(&kind, &name).await?)),
        Request::Watch { .. } => Err(StoreError::Invalid(
            "a watch has a connection of its own".into(),
        )),
    }
}

async fn write_line<T: Serialize>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await
}

async fn watch<S: Store>(
    store: &S,
    kind: String,
    version: String,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let stream: Result<EventStream<Value>, StoreError> = by_kind!(kind, K => {
        store.watch::<K>(&version).await.map(|s| {
            s.map(|r| r.and_then(|e| match e {
                Event::Applied(o) => Ok(Event::Applied(to_value(&o)?)),
                Event::Deleted(o) => Ok(Event::Deleted(to_value(&o)?)),
            }))
            .boxed()
        })
    });
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return write_line(w, &Response::Error(e.into())).await,
    };
    while let Some(r) = stream.next().await {
        let resp = match r {
            Ok(Event::Applied(object)) => Response::Event {
                deleted: false,
                object,
            },
            Ok(Event::Deleted(object)) => Response::Event {
                deleted: true,
                object,
            },
            Err(e) => Response::Error(e.into()),
        };
        write_line(w, &resp).await?;
    }
    Ok(())
}

/// Serves `store` on `listener` until the task is dropped.
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
                    Ok(Request::Watch { kind, version }) => {
                        let _ = watch(&store, kind, version, &mut w).await;
                        return;
                    }
                    Ok(req) => answer(&store, req)
                        .await
                        .unwrap_or_else(|e| Response::Error(e.into())),
                    Err(e) => {
                        Response::Error(WireError::Invalid(format!("unreadable request: {e}")))
                    }
                };
                if write_line(&mut w, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The store of the instance whose socket is `path`.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    path: PathBuf,
}

impl RemoteStore {
    /// The store served on `path` (nothing is dialled until the first call).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RemoteStore { path: path.into() }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn open(
        &self,
        req: &Request,
    ) -> Result<(BufReader<OwnedReadHalf>, tokio::net::unix::OwnedWriteHalf), StoreError> {
        let s = UnixStream::connect(&self.path).await.map_err(|e| {
            StoreError::Database(format!(
                "no standalone instance answers on {} ({e}): start one with `lightpool standalone`, or name its --data-dir",
                self.path.display()
            ))
        })?;
        let (r, mut w) = s.into_split();
        write_line(&mut w, req)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        Ok((BufReader::new(r), w))
    }

    async fn call(&self, req: Request) -> Result<Response, StoreError> {
        let (mut r, _w) = self.open(&req).await?;
        let mut line = String::new();
        r.read_line(&mut line)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        match serde_json::from_str(&line)? {
            Response::Error(e) => Err(e.into()),
            resp => Ok(resp),
        }
    }
}

fn kind<K: Object>() -> String {
    K::kind(&()).into_owned()
}

fn unexpected(r: Response) -> StoreError {
    StoreError::Database(format!("unexpected answer: {r:?}"))
}

fn object<K: Object>(r: Response) -> Result<Option<K>, StoreError> {
    match r {
        Response::Object(o) => Ok(o.map(serde_json::from_value).transpose()?),
        r => Err(unexpected(r)),
    }
}

fn some<K: Object>(r: Response) -> Result<K, StoreError> {
    object(r)?.ok_or_else(|| StoreError::Database("an empty answer".into()))
}

impl Store for RemoteStore {
    async fn get<K: Object>(&self, name: &str) -> Result<Option<K>, StoreError> {
        object(
            self.call(Request::Get {
                kind: kind::<K>(),
                name: name.into(),
            })
            .await?,
        )
    }

    async fn list<K: Object>(&self) -> Result<Listed<K>, StoreError> {
        match self.call(Request::List { kind: kind::<K>() }).await? {
            Response::Listed { items, version } => Ok(Listed {
                items: items
                    .into_iter()
                    .map(serde_json::from_value)
                    .collect::<Result<_, _>>()?,
                version,
            }),
            r => Err(unexpected(r)),
        }
    }

    async fn watch<K: Object>(&self, version: &str) -> Result<EventStream<K>, StoreError> {
        let (r, w) = self
            .open(&Request::Watch {
                kind: kind::<K>(),
                version: version.into(),
            })
            .await?;
        let lines = r.lines();
        let stream =
            futures::stream::unfold((lines, w, false), |(mut lines, w, done)| async move {
                if done {
                    return None;
                }
                let item = match lines.next_line().await {
                    Ok(Some(l)) => match serde_json::from_str::<Response>(&l) {
                        Ok(Response::Event { deleted, object }) => {
                            serde_json::from_value::<K>(object)
                                .map(|o| {
                                    if deleted {
                                        Event::Deleted(o)
                                    } else {
                                        Event::Applied(o)
                                    }
                                })
                                .map_err(StoreError::from)
                        }
                        Ok(Response::Error(e)) => Err(e.into()),
                        Ok(r) => Err(unexpected(r)),
                        Err(e) => Err(e.into()),
                    },
                    Ok(None) => return None,
                    Err(e) => Err(StoreError::Database(e.to_string())),
                };
                let done = item.is_err();
                Some((item, (lines, w, done)))
            });
        Ok(stream.boxed())
    }

    async fn apply<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        some(
            self.call(Request::Apply {
                kind: kind::<K>(),
                object: to_value(obj)?,
            })
            .await?,
        )
    }

    async fn patch_status<K: Object>(
        &self,
        name: &str,
        status: &K::Status,
        precondition: Option<&str>,
    ) -> Result<K, StoreError> {
        some(
            self.call(Request::PatchStatus {
                kind: kind::<K>(),
                name: name.into(),
                status: to_value(status)?,
                precondition: precondition.map(str::to_string),
            })
            .await?,
        )
    }

    async fn set_finalizers<K: Object>(
        &self,
        name: &str,
        finalizers: &[String],
        precondition: Option<&str>,
    ) -> Result<Option<K>, StoreError> {
        object(
            self.call(Request::SetFinalizers {
                kind: kind::<K>(),
                name: name.into(),
                finalizers: finalizers.to_vec(),
                precondition: precondition.map(str::to_string),
            })
            .await?,
        )
    }

    async fn delete<K: Object>(
        &self,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<Deleted<K>, StoreError> {
        match self
            .call(Request::Delete {
                kind: kind::<K>(),
                name: name.into(),
                precondition: precondition.map(str::to_string),
            })
            .await?
        {
            Response::Deleted { pending: None } => Ok(Deleted::Gone),
            Response::Deleted { pending: Some(o) } => {
                Ok(Deleted::Pending(serde_json::from_value(o)?))
            }
            r => Err(unexpected(r)),
        }
    }

    async fn record_event(&self, event: &NewEvent) -> Result<EventRecord, StoreError> {
        match self
            .call(Request::RecordEvent {
                event: event.clone(),
            })
            .await?
        {
            Response::Events(mut e) if e.len() == 1 => Ok(e.remove(0)),
            r => Err(unexpected(r)),
        }
    }

    async fn events(&self, kind: &str, name: &str) -> Result<Vec<EventRecord>, StoreError> {
        match self
            .call(Request::Events {
                kind: kind.into(),
                name: name.into(),
            })
            .await?
        {
            Response::Events(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    async fn get_lease(&self, name: &str) -> Result<Option<LeaseRecord>, StoreError> {
        match self.call(Request::GetLease { name: name.into() }).await? {
            Response::Lease(l) => Ok(l),
            r => Err(unexpected(r)),
        }
    }

    async fn put_lease(&self, lease: &LeaseRecord) -> Result<LeaseRecord, StoreError> {
        match self
            .call(Request::PutLease {
                lease: lease.clone(),
            })
            .await?
        {
            Response::Lease(Some(l)) => Ok(l),
            r => Err(unexpected(r)),
        }
    }
}
