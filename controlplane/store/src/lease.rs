//! Leases: a holder's claim renewed at an interval, for leader election (the
//! controller) and node heartbeats (the agents). On Kubernetes they are
//! `coordination.k8s.io/v1` Leases in the store's namespace; in the embedded store
//! a table of their own.
//!
//! Expiry is judged as client-go's leader election judges it: by the observer's
//! own clock, from the moment it last saw the lease change, never by comparing the
//! holder's `renewTime` with the local clock (the nodes' clocks may disagree).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{Store, StoreError};

/// One lease as both stores keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease's name.
    pub name: String,
    /// Who holds it.
    pub holder: Option<String>,
    /// How long a holder that stops renewing keeps it.
    pub duration_seconds: u32,
    /// When the holder took it (RFC 3339).
    pub acquire_time: Option<String>,
    /// When the holder last renewed it (RFC 3339).
    pub renew_time: Option<String>,
    /// How often it changed hands.
    pub transitions: u32,
    /// The store's version: `None` creates, `Some` replaces that version only.
    pub version: Option<String>,
}

pub(crate) fn now_micro() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    // Microseconds, as Kubernetes' MicroTime.
    now.round(k8s_openapi::jiff::Unit::Microsecond)
        .unwrap_or(now)
        .to_string()
}

/// What a [`LeaseClaim::tick`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We hold it (created, renewed or taken over).
    Held,
    /// Someone else holds it and renewed it within its duration.
    HeldBy(String),
}

/// A claim on one lease: call [`LeaseClaim::tick`] every renew interval. The
/// holder renews; any other claimant watches the lease and takes it over once it
/// has not changed for its whole duration.
#[derive(Debug)]
pub struct LeaseClaim {
    name: String,
    identity: String,
    duration: Duration,
    /// The lease as last seen (holder, renew time) and when we saw it change.
    observed: Option<(Option<String>, Option<String>, Instant)>,
}

impl LeaseClaim {
    /// A claim by `identity` on lease `name`, held for `duration` without renewal.
    pub fn new(name: impl Into<String>, identity: impl Into<String>, duration: Duration) -> Self {
        LeaseClaim {
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: None,
        }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates, renews or takes over the lease, or reports who holds it. A
    /// conflict (someone wrote the lease between our read and our write) is
    /// reported as held by whoever holds it now.
    pub async fn tick<S: Store>(&mut self, store: &S) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let current = store.get_lease(&self.name).await?;
        let stamp = now_micro();
        let secs = u32::try_from(self.duration.as_secs()).unwrap_or(u32::MAX);
        let mut next = match current {
            None => LeaseRecord {
                name: self.name.clone(),
                holder: Some(self.identity.clone()),
                duration_seconds: secs,
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                transitions: 0,
                version: None,
            },
            Some(cur) if cur.holder.as_deref() == Some(self.identity.as_str()) => LeaseRecord {
                renew_time: Some(stamp),
                duration_seconds: secs,
                ..cur
            },
            Some(cur) => {
                let seen = (cur.holder.clone(), cur.renew_time.clone());
                let since = match &self.observed {
                    Some((h, r, at)) if (h, r) == (&seen.0, &seen.1) => *at,
                    _ => {
                        self.observed = Some((seen.0, seen.1, now));
                        now
                    }
                };
                let held_for = Duration::from_secs(u64::from(cur.duration_seconds));
                let vacant = cur.holder.as_deref().is_none_or(str::is_empty);
                if !vacant && now.duration_since(since) < held_for {
                    return Ok(Claim::HeldBy(cur.holder.unwrap_or_default()));
                }
                LeaseRecord {
                    holder: Some(self.identity.clone()),
                    duration_seconds: secs,
                    acquire_time: Some(stamp.clone()),
                    renew_time: Some(stamp),
                    transitions: cur.transitions + 1,
                    ..cur
                }
            }
        };
        match store.put_lease(&next).await {
            Ok(written) => {
                next = written;
                self.observed = Some((next.holder.clone(), next.renew_time.clone(), now));
                Ok(Claim::Held)
            }
            Err(e) if e.is_conflict() => {
                let holder = store
                    .get_lease(&self.name)
                    .await?
                    .and_then(|l| l.holder)
                    .unwrap_or_default();
                self.observed = None;
                Ok(Claim::HeldBy(holder))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if we hold it (the next claimant need not wait).
    pub async fn release<S: Store>(&mut self, store: &S) -> Result<(), StoreError> {
        if let Some(cur) = store.get_lease(&self.name).await? {
            if cur.holder.as_deref() == Some(self.identity.as_str()) {
                let vacant = LeaseRecord {
                    holder: None,
                    ..cur
                };
                match store.put_lease(&vacant).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.observed = None;
        Ok(())
    }
}

/// Watches other holders' leases (the controller over the agents' heartbeats):
/// a lease is live while it changed within `deadline` of the observer's clock.
///
/// The age of a lease is measured from the observer's previous look when that
/// look was recent (within `precision`): a renewal first seen now happened
/// after that look, so the lease is never judged younger than it is by more
/// than the time between looks. Looking every `precision` therefore notices a
/// silent holder at most `deadline + precision` after its last renewal.
#[derive(Debug)]
pub struct LeaseObserver {
    deadline: Duration,
    precision: Duration,
    seen: std::collections::HashMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    renew_time: Option<String>,
    /// The lease was renewed no earlier than this.
    renewed_by: Instant,
    /// When we last looked.
    looked: Instant,
}

impl LeaseObserver {
    /// Live while renewed at least once per `deadline`, looked at every
    /// `precision` (a look after a longer pause dates a renewal at the look).
    pub fn new(deadline: Duration, precision: Duration) -> Self {
        LeaseObserver {
            deadline,
            precision,
            seen: Default::default(),
        }
    }

    /// Records `lease` as seen now; returns whether it is live. A lease seen for
    /// the first time counts as just renewed.
    pub fn observe(&mut self, lease: &LeaseRecord, now: Instant) -> bool {
        let e = self.seen.entry(lease.name.clone()).or_insert(Seen {
            renew_time: lease.renew_time.clone(),
            renewed_by: now,
            looked: now,
        });
        if e.renew_time != lease.renew_time {
            e.renew_time = lease.renew_time.clone();
            e.renewed_by = if now.duration_since(e.looked) <= self.precision {
                e.looked
            } else {
                now
            };
        }
        e.looked = now;
        lease.holder.is_some() && now.duration_since(e.renewed_by) <= self.deadline
    }

    /// Whether a lease seen before is still live at `now` (false if never seen).
    pub fn live(&self, name: &str, now: Instant) -> bool {
        self.seen
            .get(name)
            .is_some_and(|s| now.duration_since(s.renewed_by) <= self.deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renew: &str) -> LeaseRecord {
        LeaseRecord {
            name: "n".into(),
            holder: Some("a".into()),
            duration_seconds: 15,
            acquire_time: None,
            renew_time: Some(renew.into()),
            transitions: 0,
            version: Some("1".into()),
        }
    }

    #[test]
    fn a_renewal_is_dated_at_the_previous_recent_look() {
        let ms = Duration::from_millis;
        let mut o = LeaseObserver::new(ms(14_000), ms(250));
        let t0 = Instant::now();
        assert!(o.observe(&lease("r0"), t0));
        // Renewed between the looks at 250 and 500 ms: dated at 250 ms.
        assert!(o.observe(&lease("r0"), t0 + ms(250)));
        assert!(o.observe(&lease("r1"), t0 + ms(500)));
        assert!(o.observe(&lease("r1"), t0 + ms(14_250)));
        assert!(!o.observe(&lease("r1"), t0 + ms(14_251)));
        assert!(!o.live("n", t0 + ms(14_251)));
        // Seen again after a long pause: dated at that look, not the old one.
        assert!(o.observe(&lease("r2"), t0 + ms(60_000)));
        assert!(o.live("n", t0 + ms(74_000)));
        assert!(!o.live("n", t0 + ms(74_001)));
    }
}
