//! Conditions in the Kubernetes style: a type, a status, a machine-readable reason
//! and a sentence for people.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One observed condition of an object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What the condition is about, e.g. "Scheduled", "Ready".
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// One CamelCase word, e.g. "NoPoolFits".
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: Option<String>,
}

/// Whether a condition holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// Not known.
    Unknown,
}

/// Sets the condition of `type_` in `conditions`, keeping its transition time when
/// its status did not change. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) if c.status == new.status && c.reason == new.reason && c.message == new.message => {
            false
        }
        Some(c) => {
            let keep_time = c.status == new.status;
            let time = if keep_time {
                c.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *c = new;
            c.last_transition_time = time;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: ConditionStatus, reason: &str, time: &str) -> Condition {
        Condition {
            type_: "Scheduled".into(),
            status,
            reason: reason.into(),
            message: reason.into(),
            last_transition_time: Some(time.into()),
        }
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            cond(ConditionStatus::False, "NoPoolFits", "t1")
        ));
        assert!(!set_condition(
            &mut cs,
            cond(ConditionStatus::False, "NoPoolFits", "t2")
        ));
        assert!(set_condition(
            &mut cs,
            cond(ConditionStatus::False, "Other", "t3")
        ));
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t1"));
        assert!(set_condition(
            &mut cs,
            cond(ConditionStatus::True, "Placed", "t4")
        ));
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time.as_deref(), Some("t4"));
    }
}
