//! ControllerExpandVolume (online): the Volume's spec.size set to the new size; the
//! control plane's controller takes the added bytes in the pool's ledger and the
//! agent of the volume's node grows the pool volume while it is served (connected
//! hosts are told, so the node's kernel sees the new size). Answers once the
//! dataplane serves the new size; a file-system volume then needs NodeExpandVolume.
//! And the source of a volume cloned from another (CLONE_VOLUME).
//!
//! Codes: NOT_FOUND for a missing volume, OUT_OF_RANGE for a range no whole MiB
//! fits or a size beyond any pool, RESOURCE_EXHAUSTED when the volume's pool has
//! no room for the grow now (the request is taken back, so a later call tries
//! again), ABORTED while another call on the volume is in flight. A size the
//! volume has reached already is answered at once (idempotent; CSI asks that a
//! smaller one be answered with the volume's size too).

use std::time::{Duration, Instant};

use lightpool_model::quantity::human_bytes;
use lightpool_model::validate::validate_volume_against;
use lightpool_model::{ConditionStatus, Quantity, Volume, VolumePhase};
use lightpool_store::Store;
use tonic::Status;

use super::{size_for, store_err, CsiController};
use crate::v1 as csi;
use crate::v1::volume_capability::AccessType;

impl<S: Store> CsiController<S> {
    pub(super) async fn expand_(
        &self,
        r: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse, Status> {
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let range = r
            .capacity_range
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let size = size_for(Some(range))?;
        // A block volume has no file system for the node to grow.
        let block = matches!(
            r.volume_capability
                .as_ref()
                .and_then(|c| c.access_type.as_ref()),
            Some(AccessType::Block(_))
        );
        let answer = |bytes: u64| csi::ControllerExpandVolumeResponse {
            capacity_bytes: bytes as i64,
            node_expansion_required: !block,
        };
        let id = r.volume_id.as_str();
        let _held = self.hold(id)?;
        let v = self.existing(id).await?;
        let st = v.status.clone().unwrap_or_default();
        if st.phase != VolumePhase::Ready {
            return Err(Status::failed_precondition(format!(
                "volume {id} is {:?}, not Ready: expand it once it is",
                st.phase
            )));
        }
        let has = st.size_bytes.unwrap_or(0);
        if size <= has && st.capacity_bytes.is_some_and(|c| c >= has) {
            return Ok(answer(has));
        }
        let mut spec = v.spec.clone();
        spec.size = Quantity::from_bytes(size.max(has));
        let pools = self.pools().await?;
        if let Err(e) = validate_volume_against(&spec, &pools) {
            return Err(Status::out_of_range(format!("volume {id}: {e}")));
        }
        let applied = self
            .store
            .apply(&Volume::new(id, spec))
            .await
            .map_err(store_err)?;
        let generation = applied.metadata.generation;
        let deadline = Instant::now() + self.wait;
        loop {
            let v = self.existing(id).await?;
            let st = v.status.clone().unwrap_or_default();
            let refused = |type_: &str, reason: Option<&str>| {
                st.conditions
                    .iter()
                    .find(|c| {
                        c.type_ == type_
                            && c.status == ConditionStatus::False
                            && reason.is_none_or(|r| c.reason == r)
                    })
                    .map(|c| c.message.clone())
            };
            if st.observed_generation >= generation {
                let why = refused("Valid", None).or_else(|| refused("Resized", Some("GrowFailed")));
                if let Some(why) = why {
                    // Taken back: the next call asks again (the controller judges
                    // each edit once).
                    self.set_size(id, st.capacity_bytes.unwrap_or(has)).await?;
                    return Err(Status::resource_exhausted(format!(
                        "volume {id} cannot grow to {} now: {why}",
                        human_bytes(size)
                    )));
                }
                if st.capacity_bytes.is_some_and(|c| c >= size) {
                    tracing::info!(volume = %id, size = %human_bytes(size), "volume expanded");
                    return Ok(answer(st.capacity_bytes.unwrap_or(size)));
                }
            }
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "volume {id} does not serve {} after {} s (it serves {}); it is still growing: call again",
                    human_bytes(size),
                    self.wait.as_secs(),
                    st.capacity_bytes.map_or_else(|| "?".into(), human_bytes)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn existing(&self, id: &str) -> Result<Volume, Status> {
        self.store
            .get::<Volume>(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("volume {id} does not exist")))
    }

    /// Sets spec.size back to `bytes` (a refused grow taken back).
    async fn set_size(&self, id: &str, bytes: u64) -> Result<(), Status> {
        let v = self.existing(id).await?;
        let mut spec = v.spec.clone();
        spec.size = Quantity::from_bytes(bytes);
        self.store
            .apply(&Volume::new(id, spec))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// The size of a clone of volume `id` for `range`, and the source's node: at
    /// least the source's size (CSI: a clone is not smaller than its source).
    pub(super) async fn clone_source(
        &self,
        id: &str,
        range: Option<&csi::CapacityRange>,
    ) -> Result<(u64, Option<String>), Status> {
        let v = self
            .store
            .get::<Volume>(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("source volume {id} does not exist")))?;
        let st = v.status.clone().unwrap_or_default();
        let has = match (st.phase, st.size_bytes) {
            (VolumePhase::Ready, Some(b)) if v.metadata.deletion_timestamp.is_none() => b,
            _ => {
                return Err(Status::unavailable(format!(
                    "source volume {id} is not ready to clone (phase {:?}): call again",
                    st.phase
                )))
            }
        };
        let (req, lim) = range.map_or((0, 0), |r| {
            (r.required_bytes.max(0) as u64, r.limit_bytes.max(0) as u64)
        });
        let size = if req == 0 {
            has
        } else {
            size_for(range)?.max(has)
        };
        if lim != 0 && size > lim {
            return Err(Status::out_of_range(format!(
                "volume {id} holds {has} bytes: a clone of it has at least that (limit_bytes {lim} is below)"
            )));
        }
        Ok((size, st.node))
    }
}
