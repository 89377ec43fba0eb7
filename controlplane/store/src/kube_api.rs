//! The store on the Kubernetes API.
//!
//! - apply: `PATCH` with `application/apply-patch+yaml` (server-side apply),
//!   `?fieldManager=<manager>&force=true`; the body holds apiVersion, kind, name,
//!   labels, annotations, the spec and, as a precondition, the resourceVersion.
//!   Forcing takes fields over from other managers: the stores have one owner per
//!   field (the spec is the user's or the agent's, the status the controller's),
//!   and conflicts are found by resourceVersion, as in the embedded store.
//! - patch_status: `PATCH .../status` with a JSON merge patch
//!   `{"metadata":{"resourceVersion":..},"status":{..}}`; the status types send
//!   every field, so the patch replaces the status.
//! - set_finalizers: a merge patch of `metadata.finalizers` (a list: replaced).
//! - delete: `DELETE` with `preconditions.resourceVersion`.
//! - leases: `coordination.k8s.io/v1` Leases in the store's namespace (the
//!   client's default unless set): `POST` to create, `PUT` with the
//!   resourceVersion to renew or take over (409 when someone else wrote it first).
//! - events: `events.k8s.io/v1` Events in the store's namespace, regarding the
//!   object (apiVersion, kind, name, uid), reportingController the reporter,
//!   reportingInstance the field manager: `POST` a new one; a repeat within the
//!   series window a merge `PATCH` of its `series` (count, lastObservedTime), as
//!   kube's Recorder does (a 404 there: the server let it expire, so `POST` a
//!   new one); listed with `fieldSelector=regarding.kind=..,regarding.name=..`.
//! - 404 is [`StoreError::NotFound`], 409 [`StoreError::Conflict`], 410
//!   [`StoreError::Gone`].

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions, WatchEvent, WatchParams,
};
use kube::Client;
use serde_json::{json, Value};

use crate::events::Series;
use crate::{
    Deleted, Event, EventRecord, EventStream, EventType, LeaseRecord, Listed, NewEvent, Object,
    Store, StoreError,
};

/// The Kubernetes API store. Cheap to clone.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    manager: String,
    namespace: String,
    series: Series,
}

impl KubeStore {
    /// A store writing as `field_manager` (e.g. "lightpool-controller").
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        let namespace = client.default_namespace().to_string();
        KubeStore {
            client,
            manager: field_manager.into(),
            namespace,
            series: Series::default(),
        }
    }

    /// Keeps leases in `namespace` rather than the client's default.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn events_api(&self) -> Api<KubeEvent> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn to_event(&self, r: &EventRecord) -> Result<KubeEvent, StoreError> {
        let e = &r.event;
        let time = |t: &str| {
            t.parse()
                .map(MicroTime)
                .map_err(|err| StoreError::Invalid(format!("event time '{t}': {err}")))
        };
        Ok(KubeEvent {
            metadata: ObjectMeta {
                name: Some(r.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(time(&r.first_time)?),
            regarding: Some(ObjectReference {
                api_version: Some(format!(
                    "{}/{}",
                    lightpool_model::GROUP,
                    lightpool_model::VERSION
                )),
                kind: Some(e.kind.clone()),
                name: Some(e.name.clone()),
                uid: e.uid.clone(),
                ..ObjectReference::default()
            }),
            reason: Some(e.reason.clone()),
            action: Some(e.action.clone()),
            note: Some(e.note.clone()),
            type_: Some(e.type_.as_str().into()),
            reporting_controller: Some(e.reporter.clone()),
            reporting_instance: Some(self.manager.clone()),
            ..KubeEvent::default()
        })
    }

    fn api<K: Object>(&self) -> Api<K> {
        Api::all(self.client.clone())
    }

    fn params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(self.manager.clone()),
            ..PatchParams::default()
        }
    }
}

fn map_err<K: Object>(name: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => crate::not_found::<K>(name),
        kube::Error::Api(s) if s.code == 409 => crate::conflict::<K>(name),
        kube::Error::Api(s) if s.code == 410 => StoreError::Gone {
            version: String::new(),
        },
        _ => StoreError::Api(Box::new(e)),
    }
}

/// Drops nulls, recursively (server-side apply would take a null as a value).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The body of an apply: what the caller owns, and the precondition.
pub(crate) fn apply_body<K: Object>(obj: &K) -> Result<Value, StoreError> {
    let full = serde_json::to_value(obj)?;
    let meta = obj.meta();
    let mut metadata = json!({ "name": meta.name });
    if let Some(l) = &meta.labels {
        metadata["labels"] = json!(l);
    }
    if let Some(a) = &meta.annotations {
        metadata["annotations"] = json!(a);
    }
    if let Some(rv) = &meta.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let mut body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "spec": full["spec"].clone(),
    });
    strip_nulls(&mut body);
    Ok(body)
}

fn with_precondition(mut body: Value, precondition: Option<&str>) -> Value {
    if let Some(rv) = precondition {
        body["metadata"]["resourceVersion"] = json!(rv);
    }
    body
}

fn parse_time(t: &Option<String>) -> Result<Option<MicroTime>, StoreError> {
    t.as_deref()
        .map(|t| {
            t.parse()
                .map(MicroTime)
                .map_err(|e| StoreError::Invalid(format!("lease time '{t}': {e}")))
        })
        .transpose()
}

fn to_lease(r: &LeaseRecord) -> Result<Lease, StoreError> {
    Ok(Lease {
        metadata: ObjectMeta {
            name: Some(r.name.clone()),
            resource_version: r.version.clone(),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: r.holder.clone(),
            lease_duration_seconds: Some(i32::try_from(r.duration_seconds).unwrap_or(i32::MAX)),
            acquire_time: parse_time(&r.acquire_time)?,
            renew_time: parse_time(&r.renew_time)?,
            lease_transitions: Some(i32::try_from(r.transitions).unwrap_or(i32::MAX)),
            ..LeaseSpec::default()
        }),
    })
}

fn from_lease(l: Lease) -> LeaseRecord {
    let spec = l.spec.unwrap_or_default();
    LeaseRecord {
        name: l.metadata.name.unwrap_or_default(),
        holder: spec.holder_identity,
        duration_seconds: spec
            .lease_duration_seconds
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0),
        acquire_time: spec.acquire_time.map(|t| t.0.to_string()),
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        transitions: spec
            .lease_transitions
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0),
        version: l.metadata.resource_version,
    }
}

fn lease_err(name: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound {
            kind: "Lease".into(),
            name: name.to_string(),
        },
        kube::Error::Api(s) if s.code == 409 => crate::lease_conflict(name),
        _ => StoreError::Api(Box::new(e)),
    }
}

fn gone_after_finalizers<K: Object>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
        && obj.meta().finalizers.as_ref().is_none_or(|f| f.is_empty())
}

fn from_event(ev: KubeEvent) -> EventRecord {
    let regarding = ev.regarding.unwrap_or_default();
    let first = ev.event_time.map(|t| t.0.to_string()).unwrap_or_default();
    let (count, last) = match ev.series {
        Some(s) => (
            u32::try_from(s.count).unwrap_or(u32::MAX),
            s.last_observed_time.0.to_string(),
        ),
        None => (1, first.clone()),
    };
    EventRecord {
        name: ev.metadata.name.unwrap_or_default(),
        event: NewEvent {
            kind: regarding.kind.unwrap_or_default(),
            name: regarding.name.unwrap_or_default(),
            uid: regarding.uid,
            type_: if ev.type_.as_deref() == Some("Warning") {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.unwrap_or_default(),
            action: ev.action.unwrap_or_default(),
            note: ev.note.unwrap_or_default(),
            reporter: ev.reporting_controller.unwrap_or_default(),
        },
        count,
        first_time: first,
        last_time: last,
    }
}

fn event_err(name: &str, e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound {
            kind: "Event".into(),
            name: name.to_string(),
        },
        _ => StoreError::Api(Box::new(e)),
    }
}

impl Store for KubeStore {
    async fn record_event(&self, event: &NewEvent) -> Result<EventRecord, StoreError> {
        let mut record = self.series.next(event);
        let pp = PostParams {
            field_manager: Some(self.manager.clone()),
            ..PostParams::default()
        };
        if record.count > 1 {
            let time = record
                .last_time
                .parse()
                .map(MicroTime)
                .map_err(|e| StoreError::Invalid(format!("event time: {e}")))?;
            let patch = json!({"series": EventSeries { count: i32::try_from(record.count).unwrap_or(i32::MAX), last_observed_time: time }});
            match self
                .events_api()
                .patch(&record.name, &self.params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.series.written(&record);
                    return Ok(record);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.series.forget(event);
                    record = self.series.next(event);
                }
                Err(e) => return Err(event_err(&record.name, e)),
            }
        }
        let body = self.to_event(&record)?;
        self.events_api()
            .create(&pp, &body)
            .await
            .map_err(|e| event_err(&record.name, e))?;
        self.series.written(&record);
        Ok(record)
    }

    async fn events(&self, kind: &str, name: &str) -> Result<Vec<EventRecord>, StoreError> {
        let lp =
            ListParams::default().fields(&format!("regarding.kind={kind},regarding.name={name}"));
        let mut out: Vec<EventRecord> = self
            .events_api()
            .list(&lp)
            .await
            .map_err(|e| event_err(name, e))?
            .items
            .into_iter()
            .map(from_event)
            .collect();
        out.sort_by(|a, b| a.first_time.cmp(&b.first_time));
        Ok(out)
    }

    async fn get_lease(&self, name: &str) -> Result<Option<LeaseRecord>, StoreError> {
        Ok(self
            .leases()
            .get_opt(name)
            .await
            .map_err(|e| lease_err(name, e))?
            .map(from_lease))
    }

    async fn put_lease(&self, lease: &LeaseRecord) -> Result<LeaseRecord, StoreError> {
        let body = to_lease(lease)?;
        let pp = PostParams {
            field_manager: Some(self.manager.clone()),
            ..PostParams::default()
        };
        let written = if lease.version.is_none() {
            self.leases().create(&pp, &body).await
        } else {
            self.leases().replace(&lease.name, &pp, &body).await
        };
        written
            .map(from_lease)
            .map_err(|e| lease_err(&lease.name, e))
    }

    async fn get<K: Object>(&self, name: &str) -> Result<Option<K>, StoreError> {
        self.api::<K>()
            .get_opt(name)
            .await
            .map_err(|e| map_err::<K>(name, e))
    }

    async fn list<K: Object>(&self) -> Result<Listed<K>, StoreError> {
        let list = self
            .api::<K>()
            .list(&ListParams::default())
            .await
            .map_err(|e| map_err::<K>("", e))?;
        let mut items = list.items;
        items.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        Ok(Listed {
            items,
            version: list.metadata.resource_version.unwrap_or_default(),
        })
    }

    async fn watch<K: Object>(&self, version: &str) -> Result<EventStream<K>, StoreError> {
        let v = version.to_string();
        let stream = self
            .api::<K>()
            .watch(&WatchParams::default(), version)
            .await
            .map_err(|e| map_err::<K>("", e))?;
        Ok(stream
            .filter_map(move |r| {
                let v = v.clone();
                async move {
                    match r {
                        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                            Some(Ok(Event::Applied(o)))
                        }
                        Ok(WatchEvent::Deleted(o)) => Some(Ok(Event::Deleted(o))),
                        Ok(WatchEvent::Bookmark(_)) => None,
                        Ok(WatchEvent::Error(s)) if s.code == 410 => {
                            Some(Err(StoreError::Gone { version: v }))
                        }
                        Ok(WatchEvent::Error(s)) => {
                            Some(Err(StoreError::Api(Box::new(kube::Error::Api(s)))))
                        }
                        Err(e) => Some(Err(map_err::<K>("", e))),
                    }
                }
            })
            .boxed())
    }

    async fn apply<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or_else(|| StoreError::Invalid("apply needs metadata.name".into()))?;
        let body = apply_body(obj)?;
        self.api::<K>()
            .patch(
                &name,
                &PatchParams::apply(&self.manager).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(|e| map_err::<K>(&name, e))
    }

    async fn patch_status<K: Object>(
        &self,
        name: &str,
        status: &K::Status,
        precondition: Option<&str>,
    ) -> Result<K, StoreError> {
        let body = with_precondition(json!({ "status": status }), precondition);
        self.api::<K>()
            .patch_status(name, &self.params(), &Patch::Merge(body))
            .await
            .map_err(|e| map_err::<K>(name, e))
    }

    async fn set_finalizers<K: Object>(
        &self,
        name: &str,
        finalizers: &[String],
        precondition: Option<&str>,
    ) -> Result<Option<K>, StoreError> {
        let body = with_precondition(
            json!({ "metadata": { "finalizers": finalizers } }),
            precondition,
        );
        let obj = self
            .api::<K>()
            .patch(name, &self.params(), &Patch::Merge(body))
            .await
            .map_err(|e| map_err::<K>(name, e))?;
        Ok((!gone_after_finalizers(&obj)).then_some(obj))
    }

    async fn delete<K: Object>(
        &self,
        name: &str,
        precondition: Option<&str>,
    ) -> Result<Deleted<K>, StoreError> {
        let dp = DeleteParams {
            preconditions: precondition.map(|rv| Preconditions {
                resource_version: Some(rv.to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self
            .api::<K>()
            .delete(name, &dp)
            .await
            .map_err(|e| map_err::<K>(name, e))?
        {
            either::Either::Left(obj)
                if obj.meta().deletion_timestamp.is_some()
                    && obj
                        .meta()
                        .finalizers
                        .as_ref()
                        .is_some_and(|f| !f.is_empty()) =>
            {
                Ok(Deleted::Pending(obj))
            }
            _ => Ok(Deleted::Gone),
        }
    }
}
