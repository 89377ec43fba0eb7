//! The embedded store for standalone mode: objects as JSON in one redb table keyed
//! `Kind/name`, and a revision counter that every write bumps and that serves as
//! `resourceVersion`. A write is one redb transaction (durable when it returns);
//! the events of the last writes are kept in memory for watches to resume from.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use crate::{
    conflict, lease_conflict, not_found, Deleted, Event, EventRecord, EventStream, LeaseRecord,
    Listed, NewEvent, Object, Store, StoreError,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// Events keyed `Kind/object/event-name`.
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
/// Events kept per object (the oldest go first).
const EVENTS_PER_OBJECT: usize = 64;
const REVISION: &str = "revision";
/// Events kept for watches to resume from.
const HISTORY: usize = 10_000;

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Database(e.into().to_string())
}

#[derive(Debug)]
struct RawEvent {
    kind: String,
    revision: u64,
    deleted: bool,
    object: Value,
}

struct History {
    events: VecDeque<Arc<RawEvent>>,
    /// Watches may resume from this revision or later.
    oldest: u64,
    tx: broadcast::Sender<Arc<RawEvent>>,
}

struct Inner {
    db: Database,
    /// One writer at a time, so a revision is read, bumped and published in order.
    writer: Mutex<()>,
    history: Mutex<History>,
}

/// The redb store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section finishes its change before it can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key<K: Object>(name: &str) -> String {
    format!("{}/{name}", K::kind(&()))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A write decided on the current object.
enum Write {
    /// Nothing changes; return this.
    Keep(Value),
    /// Store this (its resourceVersion is set by the store).
    Put(Value),
    /// Remove the object.
    Remove(Value),
}

impl EmbeddedStore {
    /// Opens (or creates) the database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        let revision = {
            txn.open_table(OBJECTS).map_err(db_err)?;
            txn.open_table(LEASES).map_err(db_err)?;
            txn.open_table(EVENTS).map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            let r = meta.get(REVISION).map_err(db_err)?.map_or(0, |v| v.value());
            r
        };
        txn.commit().map_err(db_err)?;
        let (tx, _) = broadcast::channel(1024);
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(()),
                history: Mutex::new(History {
                    events: VecDeque::new(),
                    oldest: revision,
                    tx,
                }),
            }),
        })
    }

    fn read<K: Object>(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(OBJECTS).map_err(db_err)?;
        let got = table.get(key::<K>(name).as_str()).map_err(db_err)?;
        got.map(|g| serde_json::from_slice(g.value()).map_err(StoreError::from))
            .transpose()
    }

    /// Runs one write: `decide` sees the current object (if any) and says what to do.
    fn write<K: Object>(
        &self,
        name: &str,
        decide: impl FnOnce(Option<Value>) -> Result<Write, StoreError>,
    ) -> Result<Option<Value>, StoreError> {
        let _w = lock(&self.inner.writer);
        let current = self.read::<K>(name)?;
        let decision = decide(current)?;
        let (mut obj, deleted) = match decision {
            Write::Keep(v) => return Ok(Some(v)),
            Write::Put(v) => (v, false),
            Write::Remove(v) => (v, true),
        };
        let txn = self.inner.db.begin_write().map_err(db_err)?;
        let revision;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            revision = meta.get(REVISION).map_err(db_err)?.map_or(0, |v| v.value()) + 1;
            meta.insert(REVISION, revision).map_err(db_err)?;
            obj["metadata"]["resourceVersion"] = json!(revision.to_string());
            let mut objects = txn.open_table(OBJECTS).map_err(db_err)?;
            let k = key::<K>(name);
            if deleted {
                objects.remove(k.as_str()).map_err(db_err)?;
                // Its events go with it.
                let mut events = txn.open_table(EVENTS).map_err(db_err)?;
                let prefix = format!("{k}/");
                let end = format!("{k}0");
                events
                    .retain_in(prefix.as_str()..end.as_str(), |_, _| false)
                    .map_err(db_err)?;
            } else {
                let bytes = serde_json::to_vec(&obj)?;
                objects
                    .insert(k.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        let event = Arc::new(RawEvent {
            kind: K::kind(&()).into_owned(),
            revision,
            deleted,
            object: obj.clone(),
        });
        let mut h = lock(&self.inner.history);
        if h.events.len() == HISTORY {
            if let Some(old) = h.events.pop_front() {
                h.oldest = old.revision;
            }
        }
        h.events.push_back(event.clone());
        // No receiver is not an error: nobody watches.
        let _ = h.tx.send(event);
        Ok((!deleted).then_some(obj))
    }
}

fn decode<K: Object>(v: Value) -> Result<K, StoreError> {
    Ok(serde_json::from_value(v)?)
}

fn check_precondition<K: Object>(
    name: &str,
    current: &Value,
    precondition: Option<&str>,
) -> Result<(), StoreError> {
    match precondition {
        Some(rv) if current["metadata"]["resourceVersion"].as_str() != Some(rv) => {
            Err(conflict::<K>(name))
        }
        _ => Ok(()),
    }
}

fn finalizers(v: &Value) -> Vec<String> {
    serde_json::from_value(v["metadata"]["finalizers"].clone()).unwrap_or_default()
}

fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// Sets or removes a metadata field (an empty or null value removes it).
fn set_meta(v: &mut Value, field: &str, value: Value) {
    let empty = value.is_null()
        || value.as_object().is_some_and(|o| o.is_empty())
        || value.as_array().is_some_and(|a| a.is_empty());
    if let Some(m) = v["metadata"].as_object_mut() {
        if empty {
            m.remove(field);
        } else {
            m.insert(field.to_string(), value);
        }
    }
}

impl EmbeddedStore {
    fn read_lease(&self, name: &str) -> Result<Option<LeaseRecord>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LEASES).map_err(db_err)?;
        let got = table.get(name).map_err(db_err)?;
        got.map(|g| serde_json::from_slice(g.value()).map_err(StoreError::from))
            .transpose()
    }

    /// Leases take a revision like objects but are not watched.
    fn write_lease(&self, lease: &LeaseRecord) -> Result<LeaseRecord, StoreError> {
        let _w = lock(&self.inner.writer);
        let current = self.read_lease(&lease.name)?;
        match (&current, &lease.version) {
            (None, None) => {}
            (Some(c), Some(v)) if c.version.as_ref() == Some(v) => {}
            (None, Some(_)) => return Err(not_found_lease(&lease.name)),
            _ => return Err(lease_conflict(&lease.name)),
        }
        let txn = self.inner.db.begin_write().map_err(db_err)?;
        let mut out = lease.clone();
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let revision = meta.get(REVISION).map_err(db_err)?.map_or(0, |v| v.value()) + 1;
            meta.insert(REVISION, revision).map_err(db_err)?;
            out.version = Some(revision.to_string());
            let bytes = serde_json::to_vec(&out)?;
            let mut leases = txn.open_table(LEASES).map_err(db_err)?;
            leases
                .insert(lease.name.as_str(), bytes.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(out)
    }
}

impl EmbeddedStore {
    fn read_events(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        kind: &str,
        name: &str,
    ) -> Result<Vec<(String, EventRecord)>, StoreError> {
        // '0' follows '/': the range is every key under `Kind/name/`.
        let (from, to) = (format!("{kind}/{name}/"), format!("{kind}/{name}0"));
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((k.value().to_string(), serde_json::from_slice(v.value())?));
        }
        out.sort_by(|a: &(String, EventRecord), b| a.1.first_time.cmp(&b.1.first_time));
        Ok(out)
    }

    fn write_event(&self, event: &NewEvent) -> Result<EventRecord, StoreError> {
        let _w = lock(&self.inner.writer);
        let txn = self.inner.db.begin_write().map_err(db_err)?;
        let record = {
            let mut table = txn.open_table(EVENTS).map_err(db_err)?;
            let mut known = Self::read_events(&table, &event.kind, &event.name)?;
            let record = match known.iter().find(|(_, r)| r.event == *event && r.open()) {
                Some((_, r)) => {
                    let mut r = r.clone();
                    r.repeat();
                    r
                }
                None => {
                    let r = EventRecord::first(event);
                    known.push((String::new(), r.clone()));
                    r
                }
            };
            let key = format!("{}/{}/{}", event.kind, event.name, record.name);
            table
                .insert(key.as_str(), serde_json::to_vec(&record)?.as_slice())
                .map_err(db_err)?;
            let excess = known.len().saturating_sub(EVENTS_PER_OBJECT);
            for (k, _) in known.iter().take(excess) {
                table.remove(k.as_str()).map_err(db_err)?;
            }
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }
}

fn not_found_lease(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: "Lease".into(),
        name: name.to_string(),
    }
}

impl Store for EmbeddedStore {
    async fn get_lease(&self, name: &str) -> Result<Option<LeaseRecord>, StoreError> {
        self.read_lease(name)
    }

    async fn put_lease(&self, lease: &LeaseRecord) -> Result<LeaseRecord, StoreError> {
        self.write_lease(lease)
    }

    async fn record_event(&self, event: &NewEvent) -> Result<EventRecord, StoreError> {
        self.write_event(event)
    }

    async fn events(&self, kind: &str, name: &str) -> Result<Vec<EventRecord>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(EVENTS).map_err(db_err)?;
        Ok(Self::read_events(&table, kind, name)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    async fn get<K: Object>(&self, name: &str) -> Result<Option<K>, StoreError> {
        self.read::<K>(name)?.map(decode).transpose()
    }

    async fn list<K: Object>(&self) -> Result<Listed<K>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let version = txn
            .open_table(META)
            .map_err(db_err)?
            .get(REVISION)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let table = txn.open_table(OBJECTS).map_err(db_err)?;
        let prefix = format!("{}/", K::kind(&()));
        // '/' + 1 is '0': the range holds exactly the keys with the prefix.
        let end = format!("{}0", K::kind(&()));
        let mut items = Vec::new();
        for row in table.range(prefix.as_str()..end.as_str()).map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            items.push(serde_json::from_slice::<K>(v.value())?);
        }
        items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        Ok(Listed {
            items,
            version: version.to_string(),
        })
    }

    async fn watch<K: Object>(&self, version: &str) -> Result<EventStream<K>, StoreError> {
        let since: u64 = version.parse().map_err(|_| {
            StoreError::Invalid(format!("'{version}' is not a version of this store"))
        })?;
        let kind = K::kind(&()).into_owned();
        let (backlog, rx) = {
            let h = lock(&self.inner.history);
            if since < h.oldest {
                return Err(StoreError::Gone {
                    version: version.to_string(),
                });
            }
            let backlog: Vec<Arc<RawEvent>> = h
                .events
                .iter()
                .filter(|e| e.revision > since && e.kind == kind)
                .cloned()
                .collect();
            (backlog, h.tx.subscribe())
        };
        let last = backlog.last().map_or(since, |e| e.revision);
        let live = BroadcastStream::new(rx).filter_map(move |r| {
            let kind = kind.clone();
            async move {
                match r {
                    Ok(e) if e.kind == kind && e.revision > last => Some(Ok(e)),
                    Ok(_) => None,
                    // Fell behind: the watcher lists again.
                    Err(_) => Some(Err(StoreError::Gone {
                        version: last.to_string(),
                    })),
                }
            }
        });
        let stream = futures::stream::iter(backlog.into_iter().map(Ok))
            .chain(live)
            .map(|r| {
                let e = r?;
                let obj: K = serde_json::from_value(e.object.clone())?;
                Ok(if e.deleted {
                    Event::Deleted(obj)
                } else {
                    Event::Applied(obj)
                })
            });
        Ok(stream.boxed())
    }

    async fn apply<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or_else(|| StoreError::Invalid("apply needs metadata.name".into()))?;
        let precondition = obj.meta().resource_version.clone();
        let given = serde_json::to_value(obj)?;
        let out = self.write::<K>(&name, |current| {
            let Some(current) = current else {
                if precondition.is_some() {
                    return Err(conflict::<K>(&name));
                }
                let mut v = json!({
                    "apiVersion": K::api_version(&()),
                    "kind": K::kind(&()),
                    "metadata": {
                        "name": name,
                        "uid": uuid::Uuid::new_v4().to_string(),
                        "creationTimestamp": now(),
                        "generation": 1,
                    },
                    "spec": given["spec"].clone(),
                });
                set_meta(&mut v, "labels", given["metadata"]["labels"].clone());
                set_meta(
                    &mut v,
                    "annotations",
                    given["metadata"]["annotations"].clone(),
                );
                return Ok(Write::Put(v));
            };
            check_precondition::<K>(&name, &current, precondition.as_deref())?;
            let mut v = current.clone();
            v["spec"] = given["spec"].clone();
            set_meta(&mut v, "labels", given["metadata"]["labels"].clone());
            set_meta(
                &mut v,
                "annotations",
                given["metadata"]["annotations"].clone(),
            );
            if v == current {
                return Ok(Write::Keep(current));
            }
            if v["spec"] != current["spec"] {
                let g = current["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
                v["metadata"]["generation"] = json!(g);
            }
            Ok(Write::Put(v))
        })?;
        decode(out.ok_or_else(|| not_found::<K>(&name))?)
    }

    async fn patch_status<K: Object>(
        &self,
        name: &str,
        status: &K::Status,
        precondition: Option<&str>,
    ) -> Result<K, StoreError> {
        let status = serde_json::to_value(status)?;
        let out = self.write::<K>(name, |current| {
            let current = current.ok_or_else(|| not_found::<K>(name))?;
            check_precondition::<K>(name, &current, precondition)?;
            if current["status"] == status {
                return Ok(Write::Keep(current));
            }
            let mut v = current;
            v["status"] = status;
            Ok(Write::Put(v))
        })?;
        decode(out.ok_or_else(|| not_found::<K>(name))?)
    }

    async fn set_finalizers<K: Object>(
        &self,
        name: &str,
        list: &[String],
        precondition: Option<&str>,
    ) -> Result<Option<K>, StoreError> {
        let out = self.write::<K>(name, |current| {
            let current = current.ok_or_else(|| not_found::<K>(name))?;
            check_precondition::<K>(name, &current, precondition)?;
            if finalizers(&current) == list {
                return Ok(Write::Keep(current));
            }
            let mut v = current;
            set_meta(&mut v, "finalizers", json!(list));
            if list.is_empty() && deleting(&v) {
                Ok(Write::Remove(v))
            } else {
                Ok(Write::Put(v))
            }
        })?;
        out.map(decode).transpose()
    }

    async fn delete<K: Object>(
        &self,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<Deleted<K>, StoreError> {
        let out = self.write::<K>(name, |current| {
            let current = current.ok_or_else(|| not_found::<K>(name))?;
            check_precondition::<K>(name, &current, precondition)?;
            if finalizers(&current).is_empty() {
                return Ok(Write::Remove(current));
            }
            if deleting(&current) {
                return Ok(Write::Keep(current));
            }
            let mut v = current;
            v["metadata"]["deletionTimestamp"] = json!(now());
            Ok(Write::Put(v))
        })?;
        match out {
            Some(v) => Ok(Deleted::Pending(decode(v)?)),
            None => Ok(Deleted::Gone),
        }
    }
}
