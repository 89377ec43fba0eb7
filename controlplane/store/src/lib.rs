//! The control plane's state behind one trait, [`Store`], with two
//! implementations that keep the same semantics:
//!
//! - [`KubeStore`]: the Kubernetes API (server-side apply of spec and labels,
//!   merge patches of the status subresource and of finalizers, watches,
//!   preconditions on `resourceVersion`);
//! - [`EmbeddedStore`]: a redb database for standalone mode, with a revision
//!   counter that plays `resourceVersion`, generations, finalizers and deletion
//!   timestamps as the API server does, and a history of events to watch from.
//!
//! The semantics both keep (one test suite runs against both):
//! - `apply` creates or updates what the caller owns: `spec`, `metadata.labels`,
//!   `metadata.annotations` (as sent: labels left out are removed). It never
//!   touches status or finalizers. An apply that changes nothing changes no
//!   `resourceVersion`; one that changes the spec bumps `metadata.generation`.
//! - Every write may carry a precondition, the `resourceVersion` the caller last
//!   read; when the object moved on since, the write fails with
//!   [`StoreError::Conflict`] and changes nothing (HTTP 409).
//! - `patch_status` replaces the whole status (the model's status types send
//!   every field, absent ones as null); `set_finalizers` replaces the list.
//!   Both fail with [`StoreError::NotFound`] on a missing object (HTTP 404).
//! - `delete` of an object with finalizers only marks it (deletionTimestamp) and
//!   returns it; it goes when its last finalizer is removed.
//! - `list` returns the objects sorted by name and the version to `watch` from;
//!   `watch` yields every change after that version, or [`StoreError::Gone`]
//!   when the version is too old to resume from (HTTP 410): list again.
//! - `record_event` keeps an event about an object, counting repeats into a
//!   series as kube's Recorder does; `events` lists an object's events. On
//!   Kubernetes they are `events.k8s.io/v1` Events in the store's namespace; the
//!   embedded store keeps the last 64 per object and drops them with it.

#[cfg(feature = "conformance")]
pub mod conformance;
mod embedded;
mod events;
#[cfg(feature = "conformance")]
pub mod fake_api;
mod kube_api;
mod lease;
mod object;
mod wake;

use std::fmt::Debug;
use std::future::Future;

use futures::stream::BoxStream;

pub use embedded::EmbeddedStore;
pub use events::{EventRecord, EventType, NewEvent, SERIES_WINDOW};
pub use kube_api::KubeStore;
pub use lease::{Claim, LeaseClaim, LeaseObserver, LeaseRecord};
pub use object::Object;
pub use wake::wake_on_change;

/// What went wrong with a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound { kind: String, name: String },
    /// The object moved on since the version the caller read.
    #[error("{kind} '{name}' was changed by someone else (conflict): read it again and retry")]
    Conflict { kind: String, name: String },
    /// The watch version is too old to resume from: list again.
    #[error("watch version {version} is too old: list again")]
    Gone { version: String },
    /// The request itself was wrong (no name, a bad version string).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An object could not be encoded or decoded.
    #[error("object encoding: {0}")]
    Codec(#[from] serde_json::Error),
    /// The embedded database failed.
    #[error("embedded store: {0}")]
    Database(String),
    /// The Kubernetes API failed otherwise.
    #[error("kubernetes API: {0}")]
    Api(#[source] Box<kube::Error>),
}

impl StoreError {
    /// Whether this is a conflict (retry after reading again).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// Whether the object was not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A list and the version to watch from.
#[derive(Debug, Clone)]
pub struct Listed<K> {
    /// Objects sorted by name.
    pub items: Vec<K>,
    /// The collection's version at the time of the list.
    pub version: String,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// Created or changed: the object as it now is.
    Applied(K),
    /// Gone: the object as it last was.
    Deleted(K),
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted<K> {
    /// The object is gone.
    Gone,
    /// The object is marked for deletion and waits for its finalizers.
    Pending(K),
}

/// A stream of changes.
pub type EventStream<K> = BoxStream<'static, Result<Event<K>, StoreError>>;

/// The operations the reconcilers use, on either store. `precondition` is a
/// `resourceVersion` the object must still have.
pub trait Store: Clone + Send + Sync + 'static {
    /// The object, or `None` when there is none.
    fn get<K: Object>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<K>, StoreError>> + Send;

    /// Every object of the kind, and the version to watch from.
    fn list<K: Object>(&self) -> impl Future<Output = Result<Listed<K>, StoreError>> + Send;

    /// Changes after `version` (from `list`).
    fn watch<K: Object>(
        &self,
        version: &str,
    ) -> impl Future<Output = Result<EventStream<K>, StoreError>> + Send;

    /// Creates or updates the object's spec, labels and annotations. A
    /// `metadata.resourceVersion` on `obj` is a precondition.
    fn apply<K: Object>(&self, obj: &K) -> impl Future<Output = Result<K, StoreError>> + Send;

    /// Replaces the status.
    fn patch_status<K: Object>(
        &self,
        name: &str,
        status: &K::Status,
        precondition: Option<&str>,
    ) -> impl Future<Output = Result<K, StoreError>> + Send;

    /// Replaces the finalizers; `None` when that let a deleted object go.
    fn set_finalizers<K: Object>(
        &self,
        name: &str,
        finalizers: &[String],
        precondition: Option<&str>,
    ) -> impl Future<Output = Result<Option<K>, StoreError>> + Send;

    /// Deletes the object, or marks it while finalizers remain.
    fn delete<K: Object>(
        &self,
        name: &str,
        precondition: Option<&str>,
    ) -> impl Future<Output = Result<Deleted<K>, StoreError>> + Send;

    /// The lease, or `None` when there is none.
    fn get_lease(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LeaseRecord>, StoreError>> + Send;

    /// Records an event about an object; a repeat within [`SERIES_WINDOW`] is
    /// counted into the recent event's series.
    fn record_event(
        &self,
        event: &NewEvent,
    ) -> impl Future<Output = Result<EventRecord, StoreError>> + Send;

    /// The events about one object, oldest first.
    fn events(
        &self,
        kind: &str,
        name: &str,
    ) -> impl Future<Output = Result<Vec<EventRecord>, StoreError>> + Send;

    /// Creates the lease (`version: None`; a [`StoreError::Conflict`] when it
    /// exists) or replaces the given version of it (a conflict when it moved on).
    fn put_lease(
        &self,
        lease: &LeaseRecord,
    ) -> impl Future<Output = Result<LeaseRecord, StoreError>> + Send;
}

/// Adds a finalizer (read, add, write with precondition; retried on conflict).
/// Returns the object as written.
pub async fn add_finalizer<S: Store, K: Object>(
    store: &S,
    name: &str,
    finalizer: &str,
) -> Result<K, StoreError> {
    loop {
        let obj: K = store.get(name).await?.ok_or_else(|| not_found::<K>(name))?;
        let mut list = obj.meta().finalizers.clone().unwrap_or_default();
        if list.iter().any(|f| f == finalizer) {
            return Ok(obj);
        }
        list.push(finalizer.to_string());
        match store
            .set_finalizers::<K>(name, &list, obj.meta().resource_version.as_deref())
            .await
        {
            Ok(Some(o)) => return Ok(o),
            Ok(None) => return Err(not_found::<K>(name)),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes a finalizer (retried on conflict). `None` when the object is gone,
/// before or because of it.
pub async fn remove_finalizer<S: Store, K: Object>(
    store: &S,
    name: &str,
    finalizer: &str,
) -> Result<Option<K>, StoreError> {
    loop {
        let Some(obj) = store.get::<K>(name).await? else {
            return Ok(None);
        };
        let list = obj.meta().finalizers.clone().unwrap_or_default();
        if !list.iter().any(|f| f == finalizer) {
            return Ok(Some(obj));
        }
        let kept: Vec<String> = list.into_iter().filter(|f| f != finalizer).collect();
        match store
            .set_finalizers::<K>(name, &kept, obj.meta().resource_version.as_deref())
            .await
        {
            Ok(o) => return Ok(o),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// The time now, RFC 3339 (as Kubernetes writes times).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A time in seconds since the epoch, RFC 3339; `None` beyond the calendar.
pub fn rfc3339_of_unix(secs: u64) -> Option<String> {
    let secs = i64::try_from(secs).ok()?;
    Some(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .ok()?
            .to_string(),
    )
}

/// Seconds since the epoch of an RFC 3339 time; `None` when it does not parse.
pub fn unix_of_rfc3339(time: &str) -> Option<i64> {
    Some(
        time.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()?
            .as_second(),
    )
}

/// How long ago an RFC 3339 time was on this clock; `None` when it does not
/// parse or lies ahead.
pub fn age_of(time: &str) -> Option<std::time::Duration> {
    let t = time.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    std::time::Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(t)).ok()
}

pub(crate) fn not_found<K: Object>(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: K::kind(&()).into_owned(),
        name: name.to_string(),
    }
}

pub(crate) fn lease_conflict(name: &str) -> StoreError {
    StoreError::Conflict {
        kind: "Lease".into(),
        name: name.to_string(),
    }
}

pub(crate) fn conflict<K: Object>(name: &str) -> StoreError {
    StoreError::Conflict {
        kind: K::kind(&()).into_owned(),
        name: name.to_string(),
    }
}
