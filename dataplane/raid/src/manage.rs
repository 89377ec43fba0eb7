//! The typed management interface of an array: what the daemon's configuration calls
//! at start and the management API at run time. Inspecting (state, members, recovery
//! progress, bytes copied), failing, removing and adding members, the recovery rate.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::Bdev;
use serde::Serialize;

use crate::assemble::{read_superblock, Found};
use crate::format::Level;
use crate::mirror::{Member, Mirror, Request, S_ACTIVE, S_EMPTY, S_FAULTY, S_RECOVERING};
use crate::{format_uuid, new_uuid, Inner, RaidBdev, RaidError};

/// How an array is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayState {
    /// Every member in sync.
    Optimal,
    /// Serving with fewer in-sync members than slots, nothing being recovered.
    Degraded,
    /// A member is being resynced or rebuilt.
    Recovering,
    /// No member holds the data: every request fails.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Active,
    Faulty,
    Recovering,
    /// No device in this slot.
    Empty,
}

impl ArrayState {
    pub fn name(self) -> &'static str {
        match self {
            ArrayState::Optimal => "optimal",
            ArrayState::Degraded => "degraded",
            ArrayState::Recovering => "recovering",
            ArrayState::Failed => "failed",
        }
    }
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Faulty => "faulty",
            MemberState::Recovering => "recovering",
            MemberState::Empty => "empty",
        }
    }
}

/// A recovering member's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// "resync" (only the bitmap's regions: a returning member, or making members
    /// identical after an unclean stop) or "rebuild" (everything from `full_from_region`).
    pub kind: &'static str,
    /// Regions below this are in sync.
    pub cursor_region: u64,
    pub regions: u64,
    pub full_from_region: Option<u64>,
    /// Bytes it will be sent in all (at most), and has been sent.
    pub total_bytes: u64,
    pub copied_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub slot: usize,
    /// The device's name; `None` when the slot has none.
    pub device: Option<String>,
    pub member_uuid: String,
    pub state: MemberState,
    pub recovery: Option<Recovery>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaidStatus {
    pub name: String,
    pub uuid: String,
    pub level: Level,
    pub state: ArrayState,
    pub block_size: u32,
    pub num_blocks: u64,
    pub members: Vec<MemberStatus>,
    /// RAID1: bytes per bitmap bit, regions, and how many are dirty now.
    pub region_bytes: u64,
    pub regions: u64,
    pub dirty_regions: u64,
    /// RAID1: bytes copied to recovering members since the array started (across hot
    /// upgrades), and recoveries finished.
    pub copied_bytes_total: u64,
    pub recoveries: u64,
    /// Superblock writes so far.
    pub events: u64,
    /// RAID1: bytes per second a recovery copies at most (0: no limit).
    pub rebuild_rate: u64,
}

impl RaidStatus {
    /// One line for listings: `md0 raid1 degraded members=/a:active,/b:faulty ...`.
    pub fn summary(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                let mut s = format!("{}:{}", m.device.as_deref().unwrap_or("-"), m.state.name());
                if let Some(r) = &m.recovery {
                    s.push_str(&format!(
                        "({} {}/{} bytes)",
                        r.kind, r.copied_bytes, r.total_bytes
                    ));
                }
                s
            })
            .collect();
        format!(
            "{} {} {} blocks={} block_size={} members={} dirty_regions={}/{} region_bytes={} copied_bytes={} recoveries={} events={}",
            self.name,
            self.level,
            self.state.name(),
            self.num_blocks,
            self.block_size,
            members.join(","),
            self.dirty_regions,
            self.regions,
            self.region_bytes,
            self.copied_bytes_total,
            self.recoveries,
            self.events,
        )
    }
}

fn slot_state(code: u8) -> MemberState {
    match code {
        S_ACTIVE => MemberState::Active,
        S_FAULTY => MemberState::Faulty,
        S_RECOVERING => MemberState::Recovering,
        _ => MemberState::Empty,
    }
}

impl RaidBdev {
    fn mirror(&self, what: &str) -> Result<&Arc<Mirror>, RaidError> {
        match &self.inner {
            Inner::Mirror(m) => Ok(m),
            Inner::Striped(_) => Err(RaidError::Refused(format!(
                "{}: a {} array has no redundancy: its members cannot be {what}",
                self.name(),
                self.level
            ))),
        }
    }

    /// State, members and recovery progress.
    pub fn status(&self) -> RaidStatus {
        let mut st = RaidStatus {
            name: self.name().to_string(),
            uuid: self.uuid(),
            level: self.level,
            state: ArrayState::Optimal,
            block_size: self.info.block_size,
            num_blocks: self.info.num_blocks,
            members: Vec::new(),
            region_bytes: 0,
            regions: 0,
            dirty_regions: 0,
            copied_bytes_total: 0,
            recoveries: 0,
            events: 0,
            rebuild_rate: 0,
        };
        match &self.inner {
            Inner::Striped(s) => {
                st.events = s.sb.events;
                for (i, (d, e)) in s.members.iter().zip(&s.sb.table).enumerate() {
                    st.members.push(MemberStatus {
                        slot: i,
                        device: Some(d.info().name.clone()),
                        member_uuid: format_uuid(&e.member_uuid),
                        state: MemberState::Active,
                        recovery: None,
                    });
                }
            }
            Inner::Mirror(m) => {
                let sb = m.sb.lock().expect("sb poisoned").clone();
                let members = m.members.lock().expect("members poisoned").clone();
                st.events = sb.events;
                st.region_bytes = sb.region_bytes;
                st.regions = m.regions;
                st.dirty_regions = m
                    .ondisk
                    .iter()
                    .map(|w| u64::from(w.load(Relaxed).count_ones()))
                    .sum();
                st.copied_bytes_total = m.stats.copied_total.load(Relaxed);
                st.recoveries = m.stats.recoveries.load(Relaxed);
                st.rebuild_rate = m.tun.rate.load(Relaxed);
                let mut active = 0;
                let mut recovering = false;
                for (s, slot) in m.slots.iter().enumerate() {
                    let state = slot_state(slot.state());
                    active += usize::from(state == MemberState::Active);
                    let recovery = (state == MemberState::Recovering).then(|| {
                        recovering = true;
                        let f = slot.full_from.load(Relaxed);
                        Recovery {
                            kind: if f == u64::MAX { "resync" } else { "rebuild" },
                            cursor_region: slot.cursor.load(Relaxed),
                            regions: m.regions,
                            full_from_region: (f != u64::MAX).then_some(f),
                            total_bytes: slot.to_copy.load(Relaxed),
                            copied_bytes: slot.copied.load(Relaxed),
                        }
                    });
                    // A finished recovery keeps reporting what it copied.
                    let recovery = recovery.or_else(|| {
                        let c = slot.copied.load(Relaxed);
                        (c > 0 && state == MemberState::Active).then(|| Recovery {
                            kind: "done",
                            cursor_region: m.regions,
                            regions: m.regions,
                            full_from_region: None,
                            total_bytes: slot.to_copy.load(Relaxed),
                            copied_bytes: c,
                        })
                    });
                    st.members.push(MemberStatus {
                        slot: s,
                        device: members[s].as_ref().map(|x| x.dev.info().name.clone()),
                        member_uuid: format_uuid(&sb.table[s].member_uuid),
                        state,
                        recovery,
                    });
                }
                st.state = if m.failed.load(Relaxed) || active == 0 {
                    ArrayState::Failed
                } else if recovering {
                    ArrayState::Recovering
                } else if active < m.slots.len() {
                    ArrayState::Degraded
                } else {
                    ArrayState::Optimal
                };
            }
        }
        st
    }

    /// The slot `member` names: `#N` or `slot:N`, or a device's name.
    fn slot_of(&self, m: &Mirror, member: &str) -> Result<usize, RaidError> {
        let n = member
            .strip_prefix('#')
            .or_else(|| member.strip_prefix("slot:"))
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = n {
            if n < m.slots.len() {
                return Ok(n);
            }
        }
        m.members
            .lock()
            .expect("members poisoned")
            .iter()
            .position(|x| x.as_ref().is_some_and(|x| x.dev.info().name == member))
            .ok_or_else(|| {
                RaidError::Refused(format!(
                    "{}: no member {member:?} (name a device, or a slot as #N)",
                    self.name()
                ))
            })
    }

    /// Marks a member failed (as an I/O error would): it gets no more I/O; the array
    /// serves on from the others. Returns once the superblocks record it.
    pub fn fail_member(&self, member: &str) -> Result<String, RaidError> {
        let m = self.mirror("failed")?;
        let s = self.slot_of(m, member)?;
        let st = m.slots[s].state();
        if st != S_ACTIVE && st != S_RECOVERING {
            return Err(RaidError::Refused(format!(
                "{}: slot {s} is not in use (it is {:?})",
                self.name(),
                slot_state(st)
            )));
        }
        if st == S_ACTIVE && !(0..m.slots.len()).any(|o| o != s && m.slots[o].state() == S_ACTIVE) {
            return Err(RaidError::Refused(format!(
                "{}: slot {s} is the last member in sync: failing it would fail every I/O (add or re-add a member and let it recover first)",
                self.name()
            )));
        }
        m.fail_slot(s, "failed by the operator");
        let t0 = Instant::now();
        while m.sb_active.load(SeqCst) & (1 << s) != 0 && !m.failed.load(SeqCst) {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(RaidError::Busy(format!(
                    "{}: slot {s} failed, but the superblocks were not written within 30 s",
                    self.name()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(format!("{}: slot {s} failed", self.name()))
    }

    /// Takes a failed member out of the array (its slot becomes empty).
    pub fn remove_member(&self, member: &str) -> Result<String, RaidError> {
        let m = self.mirror("removed")?;
        let slot = self.slot_of(m, member)?;
        m.ask(|reply| Request::Remove { slot, reply })
    }

    /// Brings a failed member's device back: resynced from the bitmap when it missed
    /// only what the bitmap records, rebuilt in full otherwise.
    pub fn readd_member(&self, member: &str) -> Result<String, RaidError> {
        let m = self.mirror("re-added")?;
        let s = self.slot_of(m, member)?;
        let dev = m.members.lock().expect("members poisoned")[s]
            .as_ref()
            .map(|x| x.dev.clone())
            .ok_or_else(|| {
                RaidError::Refused(format!("{}: slot {s} has no device; add one", self.name()))
            })?;
        self.add_member(dev)
    }

    /// Adds a device: a member of this array that returns (to its own slot, resynced
    /// from the bitmap), or a blank device (a replacement: into an empty slot, or the
    /// slot of a failed member whose device is gone, rebuilt in full in the background
    /// while serving).
    pub fn add_member(&self, dev: Arc<dyn Bdev>) -> Result<String, RaidError> {
        let m = self.mirror("added")?;
        let err = |reason: String| RaidError::Member {
            array: self.name().to_string(),
            device: dev.info().name.clone(),
            reason,
        };
        let (sb, members) = (
            m.sb.lock().expect("sb poisoned").clone(),
            m.members.lock().expect("members poisoned").clone(),
        );
        if dev.info().block_size != sb.block_size {
            return Err(err(format!(
                "block size {} differs from the array's {}",
                dev.info().block_size,
                sb.block_size
            )));
        }
        let size = dev.info().num_blocks * u64::from(dev.info().block_size);
        if size < sb.data_offset + sb.array_bytes {
            return Err(err(format!(
                "holds {size} bytes, the array needs {}",
                sb.data_offset + sb.array_bytes
            )));
        }
        if self.info.supports_deallocate && !dev.info().supports_deallocate {
            return Err(err(
                "cannot deallocate, which the array's members do (mirrors would differ)".into(),
            ));
        }
        let in_use = |s: usize| {
            members
                .iter()
                .enumerate()
                .any(|(i, x)| i != s && x.as_ref().is_some_and(|x| Arc::ptr_eq(&x.dev, &dev)))
        };
        match read_superblock(&dev).map_err(&err)? {
            Found::Sb(own) if own.array_uuid == sb.array_uuid => {
                let s = own.role as usize;
                if sb.table[s].member_uuid != own.member_uuid {
                    return Err(err(format!(
                        "was slot {s} of {}, which another member holds now; zero its first 8 KiB to add it as a new member",
                        self.name()
                    )));
                }
                if m.slots[s].state() != S_FAULTY || in_use(s) {
                    return Err(err(format!("is slot {s}, which is in use")));
                }
                let bitmap_only = own.events >= sb.events_cleared;
                let member = Member {
                    dev: dev.clone(),
                    uuid: own.member_uuid,
                };
                m.ask(|reply| Request::Join {
                    slot: s,
                    member,
                    bitmap_only,
                    reply,
                })
            }
            Found::Sb(other) => Err(err(format!(
                "is a member of array {} ({}); zero its first 8 KiB to add it",
                other.name,
                format_uuid(&other.array_uuid)
            ))),
            Found::Blank => {
                let free = (0..m.slots.len())
                    .find(|&s| m.slots[s].state() == S_EMPTY)
                    .or_else(|| {
                        (0..m.slots.len())
                            .find(|&s| m.slots[s].state() == S_FAULTY && members[s].is_none())
                    })
                    .ok_or_else(|| {
                        err(format!(
                            "{} has no free slot: remove a failed member first",
                            self.name()
                        ))
                    })?;
                if in_use(usize::MAX) {
                    return Err(err("is a member already".into()));
                }
                let member = Member {
                    dev: dev.clone(),
                    uuid: new_uuid(),
                };
                m.ask(|reply| Request::Join {
                    slot: free,
                    member,
                    bitmap_only: false,
                    reply,
                })
            }
        }
    }

    /// RAID1: bytes per second a recovery copies at most (0: no limit).
    pub fn set_rebuild_rate(&self, bytes_per_sec: u64) -> Result<(), RaidError> {
        let m = self.mirror("rate-limited")?;
        m.tun.rate.store(bytes_per_sec, Relaxed);
        m.ctl.wake();
        Ok(())
    }

    /// RAID1: how long a region stays idle before its bitmap bit is cleared.
    pub fn set_bitmap_clear_delay(&self, d: Duration) -> Result<(), RaidError> {
        let m = self.mirror("tuned")?;
        m.tun.clear_delay_ms.store(d.as_millis() as u64, Relaxed);
        m.ctl.wake();
        Ok(())
    }
}
