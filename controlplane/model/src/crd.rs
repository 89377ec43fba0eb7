//! The CustomResourceDefinitions, generated from the types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Snapshot, StoragePool, Volume, VolumeMigration};

/// Every CRD of the project.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        StoragePool::crd(),
        Volume::crd(),
        Snapshot::crd(),
        VolumeMigration::crd(),
    ]
}

/// Each CRD as a YAML document and the file name it lives in under `deploy/crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
            let yaml = serde_yaml::to_string(&crd)?;
            Ok((
                name,
                format!(
                    "# Generated from controlplane/model by `cargo run -p lightpool-model --bin crdgen`; do not edit.\n{yaml}"
                ),
            ))
        })
        .collect()
}
