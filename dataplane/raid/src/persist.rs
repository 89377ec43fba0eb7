//! Hot upgrade of arrays: what an array exports, and the adopter that rebuilds it over
//! its already adopted members.
//!
//! Concat and RAID0 export their superblock (nothing of theirs changes while serving).
//! RAID1 exports at the pause ([`Bdev::export_at_pause`]): on the drained target its
//! background thread is stopped (nothing of it in flight), then the bitmap as it is on
//! the members, each slot's state and recovery cursor, and the counters travel in the
//! handover blob; the successor starts its own background thread once the predecessor
//! has let go ([`Bdev::adopted`]), and carries on a recovery where it stood. The
//! predecessor's thread resumes by itself if the upgrade does not happen (its next
//! request). Members are matched to slots by name.
//!
//! Recovery after both processes died (`--recover`) has records without state: the
//! array is assembled again from its members' superblocks, as at a start.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

use lightpool_bdev::{Adopter, Adoption, Bdev, BdevError, Export};
use serde::{Deserialize, Serialize};

use crate::assemble::build_with;
use crate::format::{Level, Superblock};
use crate::mirror::{SlotInit, S_ACTIVE, S_FAULTY, S_RECOVERING};
use crate::{ArrayOptions, Inner, RaidBdev, Registry};

/// What an array hands to its successor.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    sb: Superblock,
    /// Each slot's device, by name (`None`: no device).
    devices: Vec<Option<String>>,
    /// RAID1 only (empty otherwise).
    slots: Vec<SlotInit>,
    bits: Vec<u64>,
    rate: u64,
    clear_delay_ms: u64,
    copied_total: u64,
    recoveries: u64,
}

pub(crate) fn export(a: &RaidBdev) -> Result<Export, BdevError> {
    let st = match &a.inner {
        Inner::Striped(s) => State {
            sb: s.sb.clone(),
            devices: s
                .members
                .iter()
                .map(|m| Some(m.info().name.clone()))
                .collect(),
            slots: Vec::new(),
            bits: Vec::new(),
            rate: 0,
            clear_delay_ms: 0,
            copied_total: 0,
            recoveries: 0,
        },
        Inner::Mirror(m) => {
            m.pause()?;
            m.ctl.handed_over.store(true, SeqCst);
            let members = m.members.lock().expect("members poisoned").clone();
            let slots = m
                .slots
                .iter()
                .map(|s| SlotInit {
                    state: match s.state() {
                        S_ACTIVE => crate::format::SlotState::Active,
                        S_FAULTY => crate::format::SlotState::Faulty,
                        S_RECOVERING => crate::format::SlotState::Recovering,
                        _ => crate::format::SlotState::Empty,
                    },
                    cursor: s.cursor.load(SeqCst),
                    full_from: s.full_from.load(SeqCst),
                    valid: s.valid.load(SeqCst),
                    snap: Some(s.snap.iter().map(|w| w.load(SeqCst)).collect()),
                    to_copy: s.to_copy.load(SeqCst),
                    copied: s.copied.load(SeqCst),
                })
                .collect();
            State {
                sb: m.sb.lock().expect("sb poisoned").clone(),
                devices: members
                    .iter()
                    .map(|x| x.as_ref().map(|x| x.dev.info().name.clone()))
                    .collect(),
                slots,
                bits: m.ondisk.iter().map(|w| w.load(SeqCst)).collect(),
                rate: m.tun.rate.load(SeqCst),
                clear_delay_ms: m.tun.clear_delay_ms.load(SeqCst),
                copied_total: m.stats.copied_total.load(SeqCst),
                recoveries: m.stats.recoveries.load(SeqCst),
            }
        }
    };
    Ok(Export {
        state: postcard::to_stdvec(&st)
            .map_err(|e| BdevError::Invalid(format!("{}: state: {e}", a.name())))?,
        fds: Vec::new(),
    })
}

/// Rebuilds arrays of one level over their adopted members (and records them in a
/// registry, when given one).
pub struct RaidAdopter {
    level: Level,
    registry: Option<Arc<Registry>>,
}

impl RaidAdopter {
    pub fn new(level: Level, registry: Option<Arc<Registry>>) -> RaidAdopter {
        RaidAdopter { level, registry }
    }

    /// One adopter per level.
    pub fn all(registry: Option<Arc<Registry>>) -> Vec<Box<dyn Adopter>> {
        [Level::Concat, Level::Raid0, Level::Raid1]
            .into_iter()
            .map(|l| Box::new(RaidAdopter::new(l, registry.clone())) as Box<dyn Adopter>)
            .collect()
    }
}

impl Adopter for RaidAdopter {
    fn kind(&self) -> &'static str {
        self.level.name()
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let arr = if a.state.is_empty() {
            // Recovery from a record without state: assemble from the superblocks.
            let opts = ArrayOptions::new(a.name, self.level);
            RaidBdev::assemble(a.children, &opts)?
        } else {
            let st: State = postcard::from_bytes(a.state)
                .map_err(|e| BdevError::Invalid(format!("{}: unreadable state: {e}", a.name)))?;
            let mut devs = Vec::with_capacity(st.devices.len());
            for d in &st.devices {
                devs.push(match d {
                    None => None,
                    Some(name) => Some(
                        a.children
                            .iter()
                            .find(|c| &c.info().name == name)
                            .cloned()
                            .ok_or_else(|| {
                                BdevError::Invalid(format!(
                                    "{}: member {name} did not come with the array",
                                    a.name
                                ))
                            })?,
                    ),
                });
            }
            let bits = (self.level == Level::Raid1).then_some(st.bits);
            let arr = build_with(
                devs,
                st.sb,
                st.rate,
                Duration::from_millis(st.clear_delay_ms),
                st.slots,
                bits,
                (st.copied_total, st.recoveries),
            )?;
            if a.fds.is_none() {
                // No predecessor alive: nothing to wait for.
                arr.start()?;
            }
            arr
        };
        if let Some(r) = &self.registry {
            r.insert(&arr)?;
        }
        Ok(arr)
    }
}
