//! The shared store suite on the embedded (redb) store, and what only it has:
//! state that survives a reopen, and watches resumed from an old version.

mod common;

use lightpool_model::*;
use lightpool_store::{EmbeddedStore, Store, StoreError};

fn fresh() -> EmbeddedStore {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path().join("state.redb")).unwrap();
    // The directory may go: the open database keeps its file.
    std::mem::forget(dir);
    s
}

lightpool_store::conformance_tests!(fresh());

#[tokio::test]
async fn state_and_versions_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let rv = {
        let s = EmbeddedStore::open(&path).unwrap();
        s.apply(&common::volume("v", "1Gi")).await.unwrap();
        let v = s
            .patch_status::<Volume>(
                "v",
                &VolumeStatus {
                    phase: VolumePhase::Ready,
                    ..Default::default()
                },
                None,
            )
            .await
            .unwrap();
        v.metadata.resource_version.unwrap()
    };
    let s = EmbeddedStore::open(&path).unwrap();
    let v: Volume = s.get("v").await.unwrap().unwrap();
    assert_eq!(v.status.unwrap().phase, VolumePhase::Ready);
    let w = s.apply(&common::pool("p", "n")).await.unwrap();
    assert!(
        w.metadata.resource_version.unwrap().parse::<u64>().unwrap() > rv.parse::<u64>().unwrap(),
        "versions keep growing across restarts"
    );
    // Nothing from before the reopen can be replayed: list again.
    assert!(matches!(
        s.watch::<Volume>("1").await,
        Err(StoreError::Gone { .. })
    ));
    assert!(matches!(
        s.watch::<Volume>("x").await,
        Err(StoreError::Invalid(_))
    ));
}
