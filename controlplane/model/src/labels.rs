//! Label selectors with Kubernetes' syntax and meaning (`matchLabels` and
//! `matchExpressions` with In, NotIn, Exists, DoesNotExist), and the syntax checks
//! for label keys and values, so a typo is refused with the rule it broke.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Labels of a node or a pool.
pub type Labels = BTreeMap<String, String>;

/// The node label that names a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The node label that names the node itself.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Why a label key, value or selector is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A key that breaks the label-key syntax.
    #[error("label key '{key}' is not valid: {rule}")]
    Key { key: String, rule: &'static str },
    /// A value that breaks the label-value syntax.
    #[error("label value '{value}' of key '{key}' is not valid: {rule}")]
    Value {
        key: String,
        value: String,
        rule: &'static str,
    },
    /// In/NotIn with no values, or Exists/DoesNotExist with values.
    #[error("expression on key '{key}': {rule}")]
    Operator { key: String, rule: &'static str },
}

/// A selector over labels: every `matchLabels` pair and every expression must hold.
/// An empty selector matches everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

/// One set-based requirement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LabelExpression {
    /// The label key.
    pub key: String,
    /// How the key's value is tested.
    pub operator: LabelOperator,
    /// The values for In and NotIn; empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operators of a set-based requirement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LabelOperator {
    /// The key is present with one of the values.
    In,
    /// The key is absent, or present with none of the values.
    NotIn,
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// A selector with only `matchLabels`.
    pub fn with_labels<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        LabelSelector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// Whether the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Checks every key, value and operator.
    pub fn validate(&self) -> Result<(), LabelError> {
        for (k, v) in &self.match_labels {
            validate_key(k)?;
            validate_value(k, v)?;
        }
        for e in &self.match_expressions {
            validate_key(&e.key)?;
            match e.operator {
                LabelOperator::In | LabelOperator::NotIn if e.values.is_empty() => {
                    return Err(LabelError::Operator {
                        key: e.key.clone(),
                        rule: "In and NotIn need at least one value",
                    })
                }
                LabelOperator::Exists | LabelOperator::DoesNotExist if !e.values.is_empty() => {
                    return Err(LabelError::Operator {
                        key: e.key.clone(),
                        rule: "Exists and DoesNotExist take no values",
                    })
                }
                _ => {}
            }
            for v in &e.values {
                validate_value(&e.key, v)?;
            }
        }
        Ok(())
    }
}

impl LabelExpression {
    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            LabelOperator::In => v.is_some_and(|v| self.values.contains(v)),
            LabelOperator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            LabelOperator::Exists => v.is_some(),
            LabelOperator::DoesNotExist => v.is_none(),
        }
    }
}

impl fmt::Display for LabelSelector {
    /// Kubernetes' selector text: `app=db,zone in (a,b),!gpu`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for e in &self.match_expressions {
            parts.push(match e.operator {
                LabelOperator::In => format!("{} in ({})", e.key, e.values.join(",")),
                LabelOperator::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
                LabelOperator::Exists => e.key.clone(),
                LabelOperator::DoesNotExist => format!("!{}", e.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A name part (of a key) or a value: at most 63 characters, alphanumerics with
/// '-', '_', '.' inside.
fn check_name(s: &str) -> Result<(), &'static str> {
    if s.len() > 63 {
        return Err("at most 63 characters");
    }
    if !s.chars().all(is_name_char) {
        return Err("only letters, digits, '-', '_' and '.'");
    }
    let first_last_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !first_last_ok(s.chars().next()) || !first_last_ok(s.chars().last()) {
        return Err("must begin and end with a letter or digit");
    }
    Ok(())
}

/// Checks a label key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let err = |rule| LabelError::Key {
        key: key.to_string(),
        rule,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if name.is_empty() {
        return Err(err("the name part is empty"));
    }
    check_name(name).map_err(err)?;
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(err(
                "the prefix before '/' must be a DNS subdomain (lower-case letters, digits, '-' and '.')",
            ));
        }
    }
    Ok(())
}

/// Checks a label value (may be empty).
pub fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    check_name(value).map_err(|rule| LabelError::Value {
        key: key.to_string(),
        value: value.to_string(),
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_semantics() {
        let l = labels(&[("zone", "a"), ("disk", "nvme")]);
        assert!(LabelSelector::default().matches(&l));
        assert!(LabelSelector::with_labels([("zone", "a")]).matches(&l));
        assert!(!LabelSelector::with_labels([("zone", "b")]).matches(&l));
        let expr = |key: &str, operator, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelExpression {
                key: key.into(),
                operator,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        };
        assert!(expr("zone", LabelOperator::In, &["a", "b"]).matches(&l));
        assert!(!expr("zone", LabelOperator::NotIn, &["a"]).matches(&l));
        assert!(expr("gpu", LabelOperator::NotIn, &["x"]).matches(&l));
        assert!(expr("disk", LabelOperator::Exists, &[]).matches(&l));
        assert!(!expr("disk", LabelOperator::DoesNotExist, &[]).matches(&l));
        assert_eq!(
            expr("zone", LabelOperator::In, &["a", "b"]).to_string(),
            "zone in (a,b)"
        );
    }

    #[test]
    fn syntax_errors_name_the_rule() {
        assert!(validate_key("topology.kubernetes.io/zone").is_ok());
        assert!(validate_key("app").is_ok());
        let e = validate_key("my zone").unwrap_err().to_string();
        assert!(e.contains("'my zone'") && e.contains("only letters"), "{e}");
        let e = validate_key("Example.COM/x").unwrap_err().to_string();
        assert!(e.contains("DNS subdomain"), "{e}");
        assert!(validate_key("a/").is_err());
        assert!(validate_value("k", "-x").is_err());
        assert!(validate_value("k", "").is_ok());
        let s = LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelExpression {
                key: "zone".into(),
                operator: LabelOperator::In,
                values: vec![],
            }],
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at least one value"));
    }
}
