//! The scheduler's profile: which filters run in which order, which scores with
//! which weights, and the default limit on remote volumes per pool. Read from
//! TOML (see `deploy/examples/scheduler.toml`).

use serde::Deserialize;

use crate::plugin::{FilterPlugin, ScorePlugin};
use crate::plugins;

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a field of the wrong type.
    #[error("scheduler config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A filter name no plugin has.
    #[error("scheduler config: unknown filter '{name}'; filters: {}", plugins::FILTERS.join(", "))]
    UnknownFilter { name: String },
    /// A score name no plugin has.
    #[error("scheduler config: unknown score '{name}'; scores: {}", plugins::SCORES.join(", "))]
    UnknownScore { name: String },
    /// A weight outside 1..=1000.
    #[error("scheduler config: score '{name}' has weight {weight}; use 1 to 1000 (remove the entry to turn it off)")]
    Weight { name: String, weight: u32 },
    /// The same plugin listed twice.
    #[error("scheduler config: '{name}' is listed twice")]
    Duplicate { name: String },
}

/// A score and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// The plugin's name.
    pub plugin: String,
    /// Its weight, 1 to 1000.
    pub weight: u32,
}

/// The profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Filters, run in this order; a pool must pass all.
    #[serde(default = "default_filters")]
    pub filters: Vec<String>,
    /// Scores and weights; the pool with the highest weighted sum wins.
    #[serde(default = "default_scores")]
    pub scores: Vec<ScoreConfig>,
    /// Remote volumes a pool may serve when it sets no limit of its own.
    #[serde(default = "default_max_remote")]
    pub max_remote_volumes: u32,
}

fn default_filters() -> Vec<String> {
    plugins::FILTERS.iter().map(|s| s.to_string()).collect()
}

fn default_scores() -> Vec<ScoreConfig> {
    // Locality outweighs load: a local pool that fits beats an emptier remote one.
    vec![
        ScoreConfig {
            plugin: "locality".into(),
            weight: 2,
        },
        ScoreConfig {
            plugin: "least-used".into(),
            weight: 1,
        },
    ]
}

fn default_max_remote() -> u32 {
    lightpool_model::pool::DEFAULT_MAX_REMOTE_VOLUMES
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            filters: default_filters(),
            scores: default_scores(),
            max_remote_volumes: default_max_remote(),
        }
    }
}

/// The plugins a profile names, built.
pub struct Profile {
    /// Filters in order.
    pub filters: Vec<Box<dyn FilterPlugin>>,
    /// Scores with weights.
    pub scores: Vec<(Box<dyn ScorePlugin>, u32)>,
    /// Default remote-volume limit.
    pub max_remote_volumes: u32,
}

impl SchedulerConfig {
    /// Parses a TOML profile.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Builds the plugins.
    pub fn build(&self) -> Result<Profile, ConfigError> {
        let mut seen = std::collections::HashSet::new();
        let mut filters = Vec::new();
        for name in &self.filters {
            if !seen.insert(name.as_str()) {
                return Err(ConfigError::Duplicate { name: name.clone() });
            }
            filters.push(
                plugins::filter(name)
                    .ok_or_else(|| ConfigError::UnknownFilter { name: name.clone() })?,
            );
        }
        let mut scores = Vec::new();
        for s in &self.scores {
            if !seen.insert(s.plugin.as_str()) {
                return Err(ConfigError::Duplicate {
                    name: s.plugin.clone(),
                });
            }
            if !(1..=1000).contains(&s.weight) {
                return Err(ConfigError::Weight {
                    name: s.plugin.clone(),
                    weight: s.weight,
                });
            }
            let plugin = plugins::score(&s.plugin).ok_or_else(|| ConfigError::UnknownScore {
                name: s.plugin.clone(),
            })?;
            scores.push((plugin, s.weight));
        }
        Ok(Profile {
            filters,
            scores,
            max_remote_volumes: self.max_remote_volumes,
        })
    }
}
