//! StorageClass parameters, checked: a typo is refused with the nearest known key
//! (never silently ignored, which would give a volume other than the one asked for).
//!
//! | key | values | default |
//! | --- | --- | --- |
//! | `thin` | `true`, `false` | `true` |
//! | `placement` | `MustLocal`, `PreferLocal`, `PreferRemote`, `MustRemote` | `PreferLocal` |
//! | `poolSelector` | `key=value[,key=value...]`: pools whose labels match all | none |
//! | `nodeSelector` | the same, for nodes' labels | none |
//! | `spreadGroup` | replicas of one database cluster: placed on distinct nodes | none |
//!
//! Keys under `csi.storage.k8s.io/` (what the external-provisioner adds) are
//! accepted and not used here.

use std::collections::{BTreeMap, HashMap};

use lightpool_model::volume::Spread;
use lightpool_model::{LabelSelector, PlacementHint, Provisioning, VolumeAffinity};

/// The parameters the driver knows.
pub const KNOWN: &[&str] = &[
    "thin",
    "placement",
    "poolSelector",
    "nodeSelector",
    "spreadGroup",
];

/// A StorageClass's parameters, read.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeParams {
    pub provisioning: Provisioning,
    pub placement: PlacementHint,
    pub affinity: VolumeAffinity,
    pub spread: Option<Spread>,
}

impl Default for VolumeParams {
    fn default() -> Self {
        VolumeParams {
            provisioning: Provisioning::Thin,
            placement: PlacementHint::PreferLocal,
            affinity: VolumeAffinity::default(),
            spread: None,
        }
    }
}

/// The edit distance between two keys (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn selector(key: &str, v: &str) -> Result<LabelSelector, String> {
    let mut labels = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, val) = pair.split_once('=').ok_or_else(|| {
            format!("StorageClass parameter {key}: {pair:?} is not key=value (e.g. {key}: \"tier=fast,zone=a\")")
        })?;
        labels.insert(k.trim().to_string(), val.trim().to_string());
    }
    if labels.is_empty() {
        return Err(format!(
            "StorageClass parameter {key} is empty: give key=value pairs or remove it"
        ));
    }
    Ok(LabelSelector {
        match_labels: labels,
        ..Default::default()
    })
}

/// Reads `params`; the error names the key and what to write instead.
pub fn parse(params: &HashMap<String, String>) -> Result<VolumeParams, String> {
    let mut out = VolumeParams::default();
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for k in keys {
        let v = params[k].trim();
        match k.as_str() {
            "thin" => {
                out.provisioning = match v.to_ascii_lowercase().as_str() {
                    "true" => Provisioning::Thin,
                    "false" => Provisioning::Thick,
                    _ => {
                        return Err(format!(
                            "StorageClass parameter thin: {v:?} is not \"true\" or \"false\""
                        ))
                    }
                }
            }
            "placement" => {
                out.placement = match v.to_ascii_lowercase().as_str() {
                    "mustlocal" => PlacementHint::MustLocal,
                    "preferlocal" => PlacementHint::PreferLocal,
                    "preferremote" => PlacementHint::PreferRemote,
                    "mustremote" => PlacementHint::MustRemote,
                    _ => return Err(format!(
                        "StorageClass parameter placement: {v:?} is not one of MustLocal, PreferLocal, PreferRemote, MustRemote"
                    )),
                }
            }
            "poolSelector" => out.affinity.pool_selector = Some(selector(k, v)?),
            "nodeSelector" => out.affinity.node_selector = Some(selector(k, v)?),
            "spreadGroup" => {
                if v.is_empty() {
                    return Err("StorageClass parameter spreadGroup is empty: name the group or remove it".into());
                }
                out.spread = Some(Spread {
                    group: v.to_string(),
                    topology_key: None,
                })
            }
            k if k.starts_with("csi.storage.k8s.io/") => {}
            k => {
                let near = KNOWN
                    .iter()
                    .map(|n| (distance(k, n), *n))
                    .min()
                    .filter(|(d, _)| *d <= 3)
                    .map(|(_, n)| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown StorageClass parameter {k:?}{near}: the known ones are {}",
                    KNOWN.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kv: &[(&str, &str)]) -> Result<VolumeParams, String> {
        parse(
            &kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_values_and_refusals() {
        assert_eq!(p(&[]).unwrap(), VolumeParams::default());
        let v = p(&[
            ("thin", "false"),
            ("placement", "mustRemote"),
            ("poolSelector", "tier=fast, zone=a"),
            ("spreadGroup", "pg-main"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ])
        .unwrap();
        assert_eq!(v.provisioning, Provisioning::Thick);
        assert_eq!(v.placement, PlacementHint::MustRemote);
        let sel = v.affinity.pool_selector.unwrap().match_labels;
        assert_eq!(sel.get("zone").map(String::as_str), Some("a"));
        assert_eq!(v.spread.unwrap().group, "pg-main");
        let e = p(&[("plcement", "MustLocal")]).unwrap_err();
        assert!(
            e.contains("\"plcement\"") && e.contains("did you mean \"placement\""),
            "{e}"
        );
        let e = p(&[("fsType", "ext4")]).unwrap_err();
        assert!(e.contains("known ones are thin"), "{e}");
        let e = p(&[("thin", "yes")]).unwrap_err();
        assert!(e.contains("\"true\" or \"false\""), "{e}");
        let e = p(&[("placement", "local")]).unwrap_err();
        assert!(e.contains("MustLocal, PreferLocal"), "{e}");
        let e = p(&[("poolSelector", "fast")]).unwrap_err();
        assert!(e.contains("key=value"), "{e}");
    }
}
