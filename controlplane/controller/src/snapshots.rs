//! Snapshots no agent can take: a Pending Snapshot whose volume does not exist,
//! was refused a place, or failed is marked Failed with what to change (the
//! agent of the volume's node takes the others; see `lightpool-agent`).

use lightpool_model::snapshot::SnapshotPhase;
use lightpool_model::{Snapshot, Volume, VolumePhase};
use lightpool_store::{EventType, Store, StoreError};

use crate::record;

/// Marks the Snapshots that can never be taken Failed; returns their names.
pub(crate) async fn judge<S: Store>(
    store: &S,
    volumes: &[Volume],
) -> Result<Vec<String>, StoreError> {
    let mut failed = Vec::new();
    for s in store.list::<Snapshot>().await?.items {
        let Some(name) = s.metadata.name.clone() else {
            continue;
        };
        let st = s.status.clone().unwrap_or_default();
        if s.metadata.deletion_timestamp.is_some()
            || st.phase != SnapshotPhase::Pending
            || st.pool.is_some()
        {
            continue;
        }
        let vname = &s.spec.volume;
        let v = volumes
            .iter()
            .find(|v| v.metadata.name.as_deref() == Some(vname.as_str()));
        let why = match v.map(|v| v.status.clone().unwrap_or_default().phase) {
            None => format!("volume {vname} does not exist: snapshot an existing volume"),
            Some(p @ (VolumePhase::Rejected | VolumePhase::Failed)) => {
                format!("volume {vname} is {p:?} and holds no data: snapshot a Ready volume")
            }
            Some(_) => continue,
        };
        let mut st = st;
        st.phase = SnapshotPhase::Failed;
        st.message = Some(why.clone());
        match store
            .patch_status::<Snapshot>(&name, &st, s.metadata.resource_version.as_deref())
            .await
        {
            Ok(s) => {
                record(store, &s, EventType::Warning, "NoVolume", "Snapshot", why).await;
                failed.push(name);
            }
            // Someone wrote in between: judged again next tick.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(failed)
}
