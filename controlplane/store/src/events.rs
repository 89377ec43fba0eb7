//! Events: what the controller decided about an object and why (a placement, a
//! refusal, a publish, a delete, a pool's health), kept by either store and
//! shown beside the object (`lightpool volume show`, `kubectl describe`).
//!
//! Repeats are counted, not written again, as kube's `Recorder` does: an event
//! equal to one recorded within [`SERIES_WINDOW`] (same object, type, reason,
//! action, reporter and note) bumps that event's `series.count` and
//! `lastObservedTime`. The note is part of the key (kube's leaves it out): a
//! refusal with another explanation is news, and gets its own event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::Object;

/// How long a recorded event takes repeats into its series (kube's Recorder: 6 min).
pub const SERIES_WINDOW: std::time::Duration = std::time::Duration::from_secs(6 * 60);

/// Normal or Warning, as Kubernetes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// Things going as they should.
    Normal,
    /// Something the user may have to act on.
    Warning,
}

impl EventType {
    /// As the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An event to record about one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewEvent {
    /// The object's kind (`Volume`, `StoragePool`).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its uid, when known (Kubernetes ties the event to that incarnation).
    pub uid: Option<String>,
    /// Normal or Warning.
    pub type_: EventType,
    /// Why, in CamelCase (`Placed`, `NoPoolFits`).
    pub reason: String,
    /// What was done (`Schedule`, `Publish`, `Delete`, `Heartbeat`).
    pub action: String,
    /// The human explanation.
    pub note: String,
    /// The component that reports it (`lightpool-controller`).
    pub reporter: String,
}

impl NewEvent {
    /// An event about `obj`.
    pub fn about<K: Object>(
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
        reporter: &str,
    ) -> Self {
        NewEvent {
            kind: K::kind(&()).into_owned(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone(),
            type_,
            reason: reason.into(),
            action: action.into(),
            note: note.into(),
            reporter: reporter.into(),
        }
    }
}

/// An event as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The event's own name (`<object>.<hex nanoseconds>`, as kube names them).
    pub name: String,
    /// What happened.
    pub event: NewEvent,
    /// How often it happened within its series (1 for a single event).
    pub count: u32,
    /// When it first happened (RFC 3339, microseconds).
    pub first_time: String,
    /// When it last happened.
    pub last_time: String,
}

impl EventRecord {
    /// A new event happening now.
    pub(crate) fn first(event: &NewEvent) -> Self {
        let now = k8s_openapi::jiff::Timestamp::now();
        let stamp = crate::lease::now_micro();
        EventRecord {
            name: format!("{}.{:x}", event.name, now.as_nanosecond()),
            event: event.clone(),
            count: 1,
            first_time: stamp.clone(),
            last_time: stamp,
        }
    }

    /// Whether a repeat now still belongs to this event's series.
    pub(crate) fn open(&self) -> bool {
        let Ok(last) = self.last_time.parse::<k8s_openapi::jiff::Timestamp>() else {
            return false;
        };
        let now = k8s_openapi::jiff::Timestamp::now();
        now.duration_since(last).unsigned_abs() < SERIES_WINDOW
    }

    /// Counts a repeat now.
    pub(crate) fn repeat(&mut self) {
        self.count += 1;
        self.last_time = crate::lease::now_micro();
    }
}

/// The recent events by key, for a store that counts repeats in memory (the
/// Kubernetes store; the embedded one looks in its table).
#[derive(Debug, Clone, Default)]
pub(crate) struct Series {
    recent: Arc<Mutex<HashMap<NewEvent, EventRecord>>>,
}

impl Series {
    /// The event to write: a repeat of a recent one (count bumped) or a new one.
    pub(crate) fn next(&self, event: &NewEvent) -> EventRecord {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, r| r.open());
        match recent.get(event) {
            Some(r) => {
                let mut r = r.clone();
                r.repeat();
                r
            }
            None => EventRecord::first(event),
        }
    }

    /// Remembers what was written.
    pub(crate) fn written(&self, record: &EventRecord) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.insert(record.event.clone(), record.clone());
    }

    /// Forgets an event the server no longer has.
    pub(crate) fn forget(&self, event: &NewEvent) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.remove(event);
    }
}
