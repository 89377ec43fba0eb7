//! The committed CRD YAML is what the types generate.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let files = lightpool_model::crd::crd_files().unwrap();
    assert_eq!(files.len(), 4);
    for (name, yaml) in files {
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("deploy/crds/{name}: {e}; run `cargo run -p lightpool-model --bin crdgen`")
        });
        assert!(
            committed == yaml,
            "deploy/crds/{name} differs from what the types generate; run `cargo run -p lightpool-model --bin crdgen`"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        [
            "snapshots.lightpool.io.yaml",
            "storagepools.lightpool.io.yaml",
            "volumemigrations.lightpool.io.yaml",
            "volumes.lightpool.io.yaml"
        ],
        "deploy/crds holds a file the types do not generate"
    );
}

#[test]
fn crds_are_versioned_with_status_subresources() {
    for crd in lightpool_model::crd::crds() {
        assert_eq!(crd.spec.group, "lightpool.io");
        assert_eq!(crd.spec.scope, "Cluster");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has no status subresource",
            crd.spec.names.kind
        );
    }
}

#[test]
fn size_is_int_or_string_in_the_schema() {
    let crd = lightpool_model::crd::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "Volume")
        .unwrap();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let size = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"];
    assert_eq!(size["x-kubernetes-int-or-string"], true, "{size}");
}
