//! Restoring a target from what outlived its process: reading the state region back
//! and checking it (a successor adopting it, or `--recover`), rebuilding the live
//! objects from it, binding them to the records they came from, and the state a hot
//! upgrade carries beside the region (`state`). This sits above the live objects
//! (target, subsystems, controllers, queues), which write their own records and never
//! use this module.

mod state;
#[cfg(test)]
mod tests;

pub use state::*;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::queue::{record::queue_state_code, NvmfQueue, QueueState};
use crate::region::{
    slot, AnaGroupRec, ControllerRec, HostRec, Kind, ListenerRec, NamespaceRec, QueueDyn, QueueRec,
    QueueShm, Region, RegionError, RxPos, SlotRec, SubsystemRec, DISCOVERY_SUBSYS, MAX_AERS,
    MAX_EVENTS, MAX_IO_QUEUES, NO_CTRL,
};
use crate::subsystem::SubsysShm;
use crate::target::Target;
use crate::NvmfError;

/// A controller as read from its record.
#[derive(Debug, Clone)]
pub struct ControllerImage {
    pub rec: u32,
    /// The subsystem's NQN; `None` for a discovery controller.
    pub subnqn: Option<String>,
    pub state: ControllerState,
    pub aer_cids: Vec<u16>,
}

/// A queue as read from its record.
#[derive(Debug, Clone)]
pub struct QueueImage {
    pub rec: u32,
    pub gen: u32,
    pub stat: QueueRecView,
    pub sqhd: u16,
    pub sq_flow_disabled: bool,
    /// Connected, and its host has not authenticated yet.
    pub authenticating: bool,
    pub state: u8,
    pub rx: RxPos,
    /// (slot, state, cid) of every slot not free.
    pub busy: Vec<(u16, u8, u16)>,
}

/// The checksummed part of a queue record.
#[derive(Debug, Clone, Copy)]
pub struct QueueRecView {
    pub ctrl: u32,
    pub cntlid: u16,
    pub qid: u16,
    pub entries: u16,
    pub nslots: u16,
    pub reactor: u16,
}

/// Everything the region holds, read and checked.
#[derive(Debug, Clone)]
pub struct RegionImage {
    pub config_gen: u64,
    pub target: TargetState,
    /// Record index of each subsystem in `target.subsystems`, in the same order.
    pub subsystem_recs: Vec<u32>,
    /// (subsystem record, ANA group ID, record).
    pub ana_recs: Vec<(u32, u32, u32)>,
    /// (subsystem record, NSID, record).
    pub ns_recs: Vec<(u32, u32, u32)>,
    /// (subsystem record, record) of each allowed host.
    pub host_recs: Vec<(u32, u32)>,
    /// Record index of each listener in `target.listeners`, in the same order.
    pub listener_recs: Vec<u32>,
    pub controllers: Vec<ControllerImage>,
    pub queues: Vec<QueueImage>,
}

fn ok_all<T>(
    v: Vec<Result<(u32, u32, T), RegionError>>,
) -> Result<Vec<(u32, u32, T)>, RegionError> {
    v.into_iter().collect()
}

/// Read the configuration part (subsystems, hosts, namespaces, ANA groups, listeners)
/// and, with `live`, controllers and queues too. Any damaged record is an error.
pub fn read_image(region: &Region, live: bool) -> Result<RegionImage, RegionError> {
    let config_gen = region.config_gen();
    let o = region.options();
    let bad = |s: String| RegionError::Invalid(s);
    let subs = ok_all(region.live::<SubsystemRec>(Kind::Subsystem))?;
    let hosts = ok_all(region.live::<HostRec>(Kind::Host))?;
    let nss = ok_all(region.live::<NamespaceRec>(Kind::Namespace))?;
    let anas = ok_all(region.live::<AnaGroupRec>(Kind::AnaGroup))?;
    let lis = ok_all(region.live::<ListenerRec>(Kind::Listener))?;
    let mut subsystems = Vec::new();
    let mut subsystem_recs = Vec::new();
    let mut ana_recs = Vec::new();
    let mut ns_recs = Vec::new();
    let mut host_recs = Vec::new();
    for (i, _, s) in &subs {
        let nqn = s.nqn.get("subsystem NQN")?;
        let mut namespaces: Vec<NamespaceState> = nss
            .iter()
            .filter(|(_, _, n)| n.subsys == *i)
            .map(|(_, _, n)| NamespaceState {
                nsid: n.nsid,
                num_blocks: n.num_blocks,
                nguid: n.nguid,
                uuid: n.uuid,
                anagrpid: n.anagrpid,
            })
            .collect();
        namespaces.sort_by_key(|n| n.nsid);
        for (ni, _, n) in nss.iter().filter(|(_, _, n)| n.subsys == *i) {
            ns_recs.push((*i, n.nsid, *ni));
        }
        for (hi, _, _) in hosts.iter().filter(|(_, _, h)| h.subsys == *i) {
            host_recs.push((*i, *hi));
        }
        let mut ana_groups = Vec::new();
        for (ai, _, a) in anas.iter().filter(|(_, _, a)| a.subsys == *i) {
            ana_groups.push((a.id, a.state, a.chgcnt));
            ana_recs.push((*i, a.id, *ai));
        }
        subsystems.push(SubsystemState {
            nqn,
            serial: s.serial.get("serial")?,
            model: s.model.get("model")?,
            allow_any_host: s.allow_any_host != 0,
            hosts: hosts
                .iter()
                .filter(|(_, _, h)| h.subsys == *i)
                .map(|(_, _, h)| h.nqn.get("host NQN"))
                .collect::<Result<_, _>>()?,
            min_cntlid: s.min_cntlid,
            max_cntlid: s.max_cntlid,
            next_cntlid: s.next_cntlid,
            namespaces,
            ana_groups,
            ana_chgcnt: s.ana_chgcnt,
            controllers: Vec::new(),
        });
        subsystem_recs.push(*i);
    }
    for (_, _, n) in &nss {
        if !subsystem_recs.contains(&n.subsys) {
            return Err(bad(format!(
                "namespace {} belongs to no recorded subsystem",
                n.nsid
            )));
        }
    }
    let listeners = lis
        .iter()
        .map(|(_, _, l)| {
            Ok(ListenerState {
                trtype: l.trtype,
                adrfam: l.adrfam,
                traddr: l.traddr.get("listener address")?,
                trsvcid: l.trsvcid.get("listener service")?,
                portid: l.portid,
            })
        })
        .collect::<Result<_, RegionError>>()?;
    let mut image = RegionImage {
        config_gen,
        target: TargetState {
            max_queue_depth: o.max_queue_depth,
            max_admin_queue_depth: o.max_admin_queue_depth,
            max_io_queues: o.max_io_queues,
            in_capsule_data_size: o.in_capsule_data_size,
            max_transfer_size: o.max_transfer_size,
            genctr: region.discovery_genctr(),
            listeners,
            subsystems,
            discovery_controllers: Vec::new(),
        },
        subsystem_recs,
        ana_recs,
        ns_recs,
        host_recs,
        listener_recs: lis.iter().map(|(i, _, _)| *i).collect(),
        controllers: Vec::new(),
        queues: Vec::new(),
    };
    if live {
        image.controllers = read_controllers(region, &image)?;
        image.queues = read_queues(region, &image)?;
    }
    Ok(image)
}

fn read_controllers(
    region: &Region,
    image: &RegionImage,
) -> Result<Vec<ControllerImage>, RegionError> {
    let mut out = Vec::new();
    for (i, _, c) in ok_all(region.live::<ControllerRec>(Kind::Controller))? {
        let subnqn = if c.subsys == DISCOVERY_SUBSYS {
            None
        } else {
            let at = image
                .subsystem_recs
                .iter()
                .position(|&s| s == c.subsys)
                .ok_or_else(|| {
                    RegionError::Invalid(format!(
                        "controller {} belongs to no recorded subsystem",
                        c.cntlid
                    ))
                })?;
            Some(image.target.subsystems[at].nqn.clone())
        };
        if usize::from(c.n_events) > MAX_EVENTS || usize::from(c.n_aers) > MAX_AERS {
            return Err(RegionError::Invalid(format!(
                "controller {} holds more events than a record can",
                c.cntlid
            )));
        }
        let nq = usize::from(image.target.max_io_queues);
        out.push(ControllerImage {
            rec: i,
            subnqn,
            state: ControllerState {
                cntlid: c.cntlid,
                hostnqn: c.hostnqn.get("host NQN")?,
                hostid: c.hostid,
                cc: c.cc,
                csts: c.csts,
                num_io_queues: c.num_io_queues,
                io_queues: (0..nq)
                    .map(|q| q < MAX_IO_QUEUES && c.io_queues[q / 64] & (1 << (q % 64)) != 0)
                    .collect(),
                aec: c.aec,
                vwce: c.vwce != 0,
                kato_ms: c.kato_ms,
                failed: c.failed != 0,
                events: c.events[..usize::from(c.n_events)].to_vec(),
                masked: c.masked,
                changed_ns: c.changed_ns,
            },
            aer_cids: c.aer_cids[..usize::from(c.n_aers)].to_vec(),
        });
    }
    Ok(out)
}

/// Read one queue record: its checksummed part, and the plain-store part checked for
/// sense (SQ head inside the queue, known slot and queue states, a known controller).
pub fn read_queue(
    region: &Region,
    image: &RegionImage,
    i: u32,
) -> Result<Option<QueueImage>, RegionError> {
    let Some((gen, q)) = region.read::<QueueRec>(Kind::Queue, i)? else {
        return Ok(None);
    };
    let bad = |what: String| RegionError::Invalid(format!("queue record {i}: {what}"));
    let (d, slots): (QueueDyn, Vec<SlotRec>) = region.queue_dyn(i);
    if q.ctrl != NO_CTRL {
        let c = image
            .controllers
            .iter()
            .find(|c| c.rec == q.ctrl)
            .ok_or_else(|| {
                bad(format!(
                    "names controller record {} that is not live",
                    q.ctrl
                ))
            })?;
        if c.state.cntlid != q.cntlid {
            return Err(bad(format!(
                "controller record {} is cntlid {}, the queue says {}",
                q.ctrl, c.state.cntlid, q.cntlid
            )));
        }
    }
    if q.ctrl == NO_CTRL && d.state != queue_state_code(QueueState::Connecting) {
        return Err(bad("connected, but names no controller record".into()));
    }
    if q.entries > 0 && d.sqhd >= q.entries {
        return Err(bad(format!("SQ head {} >= {} entries", d.sqhd, q.entries)));
    }
    if d.state > 3 || q.nslots > region.slots_per_queue() {
        return Err(bad("state or slot count out of range".into()));
    }
    let mut busy = Vec::new();
    for (j, s) in slots.iter().enumerate() {
        if s.state > slot::LAST {
            return Err(bad(format!("slot {j} has unknown state {}", s.state)));
        }
        if s.state != slot::FREE {
            if j >= usize::from(q.nslots) {
                return Err(bad(format!("slot {j} is in use past the queue's slots")));
            }
            busy.push((j as u16, s.state, s.cid));
        }
    }
    Ok(Some(QueueImage {
        rec: i,
        gen,
        stat: QueueRecView {
            ctrl: q.ctrl,
            cntlid: q.cntlid,
            qid: q.qid,
            entries: q.entries,
            nslots: q.nslots,
            reactor: q.reactor,
        },
        sqhd: d.sqhd,
        sq_flow_disabled: d.sq_flow_disabled & 1 != 0,
        authenticating: d.sq_flow_disabled & 2 != 0,
        state: d.state,
        rx: d.rx,
        busy,
    }))
}

fn read_queues(region: &Region, image: &RegionImage) -> Result<Vec<QueueImage>, RegionError> {
    let mut out = Vec::new();
    for i in 0..region.high(Kind::Queue) {
        if let Some(q) = read_queue(region, image, i)? {
            out.push(q);
        }
    }
    Ok(out)
}

impl RegionImage {
    /// The target state with its controllers, for `Target::import_state`.
    pub fn with_controllers(&self) -> TargetState {
        let mut st = self.target.clone();
        for c in &self.controllers {
            match &c.subnqn {
                Some(nqn) => {
                    if let Some(s) = st.subsystems.iter_mut().find(|s| &s.nqn == nqn) {
                        s.controllers.push(c.state.clone());
                    }
                }
                None => st.discovery_controllers.push(c.state.clone()),
            }
        }
        st
    }
}

/// Bind a target rebuilt from `image` to the records it came from and attach the
/// region. Nothing is written: the previous process may still take its state back.
pub fn bind(target: &Target, region: &Arc<Region>, image: &RegionImage) -> Result<(), NvmfError> {
    for (s, &rec) in image.target.subsystems.iter().zip(&image.subsystem_recs) {
        let sub = target
            .find_subsystem(&s.nqn)
            .ok_or_else(|| NvmfError::NoSuchSubsystem(s.nqn.clone()))?;
        let ana = image
            .ana_recs
            .iter()
            .filter(|(sr, _, _)| *sr == rec)
            .map(|&(_, id, i)| (id, i))
            .collect();
        let ns = image
            .ns_recs
            .iter()
            .filter(|(sr, _, _)| *sr == rec)
            .map(|&(_, nsid, i)| (nsid, i))
            .collect();
        let hosts = image
            .host_recs
            .iter()
            .filter(|(sr, _)| *sr == rec)
            .map(|&(_, i)| i)
            .collect();
        *sub.shm.lock().expect("subsystem shm lock poisoned") = Some(SubsysShm {
            region: region.clone(),
            rec,
            ana,
            ns,
            hosts,
        });
    }
    target.bind_listener_records(&image.listener_recs);
    for c in &image.controllers {
        let sub = match &c.subnqn {
            Some(n) => target.find_subsystem(n),
            None => Some(target.discovery_subsystem()),
        };
        let ctrl = sub
            .and_then(|s| s.controller(c.state.cntlid))
            .ok_or_else(|| {
                NvmfError::Invalid(format!("controller {} was not rebuilt", c.state.cntlid))
            })?;
        let _ = ctrl.shm.set(c.rec);
    }
    target.set_region(region.clone())
}

/// Once this process owns the region: free records that nothing adopted (queues of
/// connections that closed, controllers that went away) and return how many.
pub fn sweep(target: &Target, region: &Region, adopted_queues: &[u32]) -> usize {
    let mut n = 0;
    let mut ctrls: Vec<u32> = Vec::new();
    for s in target
        .subsystems()
        .into_iter()
        .chain(std::iter::once(target.discovery_subsystem()))
    {
        for c in s.controllers() {
            ctrls.extend(c.shm.get().copied());
        }
    }
    for i in 0..region.high(Kind::Controller) {
        if region.is_live(Kind::Controller, i) && !ctrls.contains(&i) {
            region.free(Kind::Controller, i);
            n += 1;
        }
    }
    for i in 0..region.high(Kind::Queue) {
        if region.is_live(Kind::Queue, i) && !adopted_queues.contains(&i) {
            region.free(Kind::Queue, i);
            n += 1;
        }
    }
    n
}

/// What of a queue is serialized at pause time because the region does not hold it:
/// the commands received and not finished (their SQEs and data), the order of parked
/// AERs and held commands, and the keep-alive time left.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuePause {
    pub rec: u32,
    pub gen: u32,
    pub ka_left_ms: Option<u64>,
    pub slots: Vec<SlotSnapshot>,
    pub aers: Vec<u16>,
    pub held: Vec<u16>,
}

impl QueuePause {
    /// Split an exported queue: what the region holds stays there.
    pub fn from_snapshot(m: &QueueShm, region: &Region, s: QueueSnapshot) -> QueuePause {
        QueuePause {
            rec: m.index(),
            gen: region.gen(Kind::Queue, m.index()),
            ka_left_ms: s.ka_left_ms,
            slots: s.slots,
            aers: s.aers,
            held: s.held,
        }
    }

    /// Join the pause-time part with the queue's record into the queue's state,
    /// checking the two agree: the same generation, and every slot the record says is
    /// in use (with its command ID and state) is one the pause part carries, and back.
    pub fn join(
        &self,
        region: &Region,
        image: &RegionImage,
    ) -> Result<(QueueImage, QueueSnapshot), NvmfError> {
        let bad = |w: String| NvmfError::Invalid(format!("queue record {}: {w}", self.rec));
        if self.rec >= region.count(Kind::Queue) {
            return Err(bad("out of range".into()));
        }
        let q = read_queue(region, image, self.rec)?.ok_or_else(|| bad("is free".into()))?;
        if q.gen != self.gen {
            return Err(bad(format!(
                "generation {} is not the {} the handover names",
                q.gen, self.gen
            )));
        }
        let mut busy = q.busy.clone();
        for s in &self.slots {
            let cid = u16::from_le_bytes([
                s.sqe.get(2).copied().unwrap_or(0),
                s.sqe.get(3).copied().unwrap_or(0),
            ]);
            let want = match s.state {
                state::ST_HELD => slot::HELD,
                state::ST_PARKED => slot::PARKED,
                _ => slot::ALLOCATED,
            };
            let at = busy
                .iter()
                .position(|&(i, st, c)| i == s.index && st == want && c == cid)
                .ok_or_else(|| {
                    bad(format!(
                        "slot {} (cid {cid}) is not recorded as in use",
                        s.index
                    ))
                })?;
            busy.swap_remove(at);
        }
        if let Some(&(i, st, c)) = busy.first() {
            return Err(bad(format!(
                "slot {i} (state {st}, cid {c}) is in use but was not handed over"
            )));
        }
        let ctrl = image.controllers.iter().find(|c| c.rec == q.stat.ctrl);
        let snap = QueueSnapshot {
            subnqn: ctrl.map(|c| {
                c.subnqn
                    .clone()
                    .unwrap_or_else(|| lightpool_spec::fabrics::DISCOVERY_NQN.to_string())
            }),
            cntlid: ctrl.map(|c| c.state.cntlid),
            qid: q.stat.qid,
            entries: q.stat.entries,
            sqhd: q.sqhd,
            sq_flow_disabled: q.sq_flow_disabled,
            authenticating: q.authenticating,
            disconnecting: q.state == queue_state_code(QueueState::Disconnecting),
            ka_left_ms: self.ka_left_ms,
            nslots: usize::from(q.stat.nslots),
            slots: self.slots.clone(),
            aers: self.aers.clone(),
            held: self.held.clone(),
        };
        Ok((q, snap))
    }
}

impl<T: Default> NvmfQueue<T> {
    /// The pause-time part of a drained queue (the rest is in its record).
    pub fn export_pause(
        &self,
        now: std::time::Instant,
        valid: impl Fn(u16, &crate::queue::Request<T>) -> usize,
    ) -> Result<QueuePause, NvmfError> {
        let m = self.shm.as_ref().ok_or_else(|| {
            NvmfError::Invalid(format!(
                "queue {} has no record in the state region",
                self.qid
            ))
        })?;
        Ok(QueuePause::from_snapshot(
            m,
            m.region(),
            self.export_state(now, valid),
        ))
    }

    /// Rebuild a queue from its record and the pause-time part, bound to the record
    /// (written again only once this process owns the region). Returns the record as
    /// read, for the transport's own fields (receive position).
    pub fn import_from_region(
        target: Arc<Target>,
        region: &Arc<Region>,
        image: &RegionImage,
        pause: &QueuePause,
        now: std::time::Instant,
        reactor: usize,
    ) -> Result<(NvmfQueue<T>, QueueImage), NvmfError> {
        let (qi, snap) = pause.join(region, image)?;
        let mut q = NvmfQueue::import_state(target, &snap, now, reactor)?;
        q.shm = Some(region.queue_handle(pause.rec, true));
        Ok((q, qi))
    }
}
