//! CreateSnapshot / DeleteSnapshot / ListSnapshots: Snapshot objects in the
//! control plane's store, taken by the agent of the source volume's node in its
//! pool; and the snapshot a CreateVolume restores from.
//!
//! A snapshot's id is its name (the CO's, as a volume's). CreateSnapshot answers
//! once the pool has it (ready_to_use), or, after the call's wait, with
//! ready_to_use false (the CO calls again). A snapshot outlives its volume.
//! DeleteSnapshot answers FAILED_PRECONDITION while the pool refuses (more than
//! one volume depends on it: the clones to delete first are named).

use std::time::Instant;

use lightpool_model::snapshot::SnapshotPhase;
use lightpool_model::{Snapshot, SnapshotSpec, Volume};
use lightpool_store::{Deleted, Store};
use tonic::Status;

use super::{store_err, CsiController};
use crate::v1 as csi;

/// The CSI view of a snapshot.
pub(super) fn csi_snapshot(s: &Snapshot) -> csi::Snapshot {
    let st = s.status.clone().unwrap_or_default();
    csi::Snapshot {
        size_bytes: st.size_bytes.unwrap_or(0) as i64,
        snapshot_id: s.metadata.name.clone().unwrap_or_default(),
        source_volume_id: s.spec.volume.clone(),
        creation_time: st
            .taken_at
            .as_deref()
            .and_then(lightpool_store::unix_of_rfc3339)
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        ready_to_use: st.phase == SnapshotPhase::Ready,
        group_snapshot_id: String::new(),
    }
}

impl<S: Store> CsiController<S> {
    async fn snapshot(&self, name: &str) -> Result<Option<Snapshot>, Status> {
        self.store.get::<Snapshot>(name).await.map_err(store_err)
    }

    pub(super) async fn create_snapshot_(
        &self,
        r: csi::CreateSnapshotRequest,
    ) -> Result<csi::Snapshot, Status> {
        if r.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if r.source_volume_id.is_empty() {
            return Err(Status::invalid_argument("source_volume_id is required"));
        }
        let _held = self.hold(&format!("snapshot/{}", r.name))?;
        match self.snapshot(&r.name).await? {
            Some(s) if s.spec.volume != r.source_volume_id => {
                return Err(Status::already_exists(format!(
                    "snapshot {} exists, of volume {}: use another name for a snapshot of {}",
                    r.name, s.spec.volume, r.source_volume_id
                )))
            }
            Some(s) if s.metadata.deletion_timestamp.is_some() => {
                return Err(Status::aborted(format!(
                    "snapshot {} is being deleted: call again once it is gone",
                    r.name
                )))
            }
            Some(_) => {}
            None => {
                let v: Option<Volume> = self
                    .store
                    .get(&r.source_volume_id)
                    .await
                    .map_err(store_err)?;
                if v.is_none() {
                    return Err(Status::not_found(format!(
                        "source volume {} does not exist",
                        r.source_volume_id
                    )));
                }
                let s = Snapshot::new(
                    &r.name,
                    SnapshotSpec {
                        volume: r.source_volume_id.clone(),
                    },
                );
                self.store.apply(&s).await.map_err(store_err)?;
                tracing::info!(snapshot = %r.name, volume = %r.source_volume_id, "snapshot requested");
            }
        }
        let deadline = Instant::now() + self.wait;
        loop {
            let s = self.snapshot(&r.name).await?.ok_or_else(|| {
                Status::aborted(format!("snapshot {} was deleted while being taken", r.name))
            })?;
            let st = s.status.clone().unwrap_or_default();
            match st.phase {
                SnapshotPhase::Ready => return Ok(csi_snapshot(&s)),
                SnapshotPhase::Failed => {
                    // Nothing half made: the next CreateSnapshot starts afresh.
                    let _ = self.store.delete::<Snapshot>(&r.name, None).await;
                    return Err(Status::internal(format!(
                        "snapshot {} failed: {}",
                        r.name,
                        st.message.unwrap_or_default()
                    )));
                }
                // Not taken yet: the CO polls with the same call.
                _ if Instant::now() >= deadline => return Ok(csi_snapshot(&s)),
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    pub(super) async fn delete_snapshot_(&self, id: &str) -> Result<(), Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("snapshot_id is required"));
        }
        let _held = self.hold(&format!("snapshot/{id}"))?;
        let deadline = Instant::now() + self.wait;
        match self.store.delete::<Snapshot>(id, None).await {
            Ok(Deleted::Gone) => return Ok(()),
            Ok(Deleted::Pending(_)) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(store_err(e)),
        }
        loop {
            let Some(s) = self.snapshot(id).await? else {
                tracing::info!(snapshot = %id, "snapshot deleted");
                return Ok(());
            };
            let st = s.status.unwrap_or_default();
            if st.phase == SnapshotPhase::Deleting {
                return Err(Status::failed_precondition(format!(
                    "snapshot {id}: {}",
                    st.message.unwrap_or_default()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "snapshot {id} is being deleted (its node has not confirmed after {} s): call again",
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn list_snapshots_(
        &self,
        r: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse, Status> {
        let mut ss = self
            .store
            .list::<Snapshot>()
            .await
            .map_err(store_err)?
            .items;
        ss.retain(|s| {
            (r.snapshot_id.is_empty() || s.metadata.name.as_deref() == Some(&r.snapshot_id))
                && (r.source_volume_id.is_empty() || s.spec.volume == r.source_volume_id)
        });
        ss.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let (start, end) = super::page(&r.starting_token, r.max_entries, ss.len())?;
        Ok(csi::ListSnapshotsResponse {
            entries: ss[start..end]
                .iter()
                .map(|s| csi::list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(s)),
                })
                .collect(),
            next_token: if end < ss.len() {
                end.to_string()
            } else {
                String::new()
            },
        })
    }

    /// The snapshot a CreateVolume restores from, and the size the volume gets
    /// (the snapshot's: a restored volume is a clone of it).
    pub(super) async fn restore_source(
        &self,
        id: &str,
        range: Option<&csi::CapacityRange>,
    ) -> Result<u64, Status> {
        let s = self
            .snapshot(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("source snapshot {id} does not exist")))?;
        let st = s.status.unwrap_or_default();
        let size = match (st.phase, st.size_bytes) {
            (SnapshotPhase::Ready, Some(b)) => b,
            _ => {
                return Err(Status::unavailable(format!(
                    "source snapshot {id} is not ready to use yet: call again"
                )))
            }
        };
        if let Some(r) = range {
            if r.required_bytes > 0 && r.required_bytes as u64 > size {
                return Err(Status::out_of_range(format!(
                    "snapshot {id} holds {size} bytes: a volume restored from it has that size (ask for at most {size} bytes)"
                )));
            }
            if r.limit_bytes > 0 && (r.limit_bytes as u64) < size {
                return Err(Status::out_of_range(format!(
                    "snapshot {id} holds {size} bytes, over limit_bytes {}",
                    r.limit_bytes
                )));
            }
        }
        Ok(size)
    }
}
