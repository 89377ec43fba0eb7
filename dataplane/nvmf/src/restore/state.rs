//! The target's state as a hot upgrade hands it to the next binary: plain data,
//! serializable, versioned by the region that carries it (see the daemon). Everything a
//! host can observe survives: subsystems and their identity, ANA states and change
//! counts, controllers (cntlid, registers, features, keep-alive timeout, queued async
//! events), and each queue (qid, SQ head, every command received and not yet finished,
//! with its data, and parked Asynchronous Event Requests).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::Bdev;
use lightpool_spec::nvme::{Cqe, Sqe};
use serde::{Deserialize, Serialize};

use crate::ctrlr::{Controller, CtrlRegs};
use crate::listener::{ListenAddr, ListenerInfo};
use crate::queue::{NvmfQueue, QueueState, Request, SlotState, Xfer};
use crate::subsystem::{NamespaceConfig, Subsystem, SubsystemConfig};
use crate::target::{Target, TargetOptions};
use crate::NvmfError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetState {
    pub max_queue_depth: u16,
    pub max_admin_queue_depth: u16,
    pub max_io_queues: u16,
    pub in_capsule_data_size: u32,
    pub max_transfer_size: u32,
    pub genctr: u64,
    pub listeners: Vec<ListenerState>,
    pub subsystems: Vec<SubsystemState>,
    pub discovery_controllers: Vec<ControllerState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerState {
    pub trtype: u8,
    pub adrfam: u8,
    pub traddr: String,
    pub trsvcid: String,
    pub portid: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubsystemState {
    pub nqn: String,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    pub next_cntlid: u16,
    pub namespaces: Vec<NamespaceState>,
    /// (group id, state, change count).
    pub ana_groups: Vec<(u32, u8, u64)>,
    pub ana_chgcnt: u64,
    pub controllers: Vec<ControllerState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceState {
    pub nsid: u32,
    /// Blocks it presents (at most its device's).
    pub num_blocks: u64,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub anagrpid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControllerState {
    pub cntlid: u16,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub cc: u32,
    pub csts: u32,
    pub num_io_queues: u16,
    pub io_queues: Vec<bool>,
    pub aec: u32,
    pub vwce: bool,
    pub kato_ms: u32,
    pub failed: bool,
    pub events: Vec<u32>,
    pub masked: u32,
    /// The Changed Namespace List not yet read (bit NSID - 1).
    pub changed_ns: u32,
}

/// One queue. The transport saves its own per-request state beside it, by slot index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub subnqn: Option<String>,
    pub cntlid: Option<u16>,
    pub qid: u16,
    pub entries: u16,
    pub sqhd: u16,
    pub sq_flow_disabled: bool,
    /// The host has not authenticated yet: the rebuilt queue serves only
    /// Authentication Send/Receive, in a new transaction.
    #[serde(default)]
    pub authenticating: bool,
    pub disconnecting: bool,
    /// Keep-alive time left (admin queues), in milliseconds.
    pub ka_left_ms: Option<u64>,
    pub nslots: usize,
    pub slots: Vec<SlotSnapshot>,
    /// Slots of parked Asynchronous Event Requests, in order.
    pub aers: Vec<u16>,
    /// Slots of held commands, in arrival order.
    pub held: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotSnapshot {
    pub index: u16,
    pub sqe: Vec<u8>,
    pub xfer: XferState,
    /// Allocated (data still arriving), Held, or Parked (AER).
    pub state: u8,
    /// The valid prefix of the data buffer.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum XferState {
    None,
    H2C { len: u32, in_capsule: bool },
    C2H { len: u32 },
}

pub(crate) const ST_ALLOCATED: u8 = 0;
pub(crate) const ST_HELD: u8 = 1;
pub(crate) const ST_PARKED: u8 = 2;

fn ctrl_state(c: &Controller) -> ControllerState {
    let r = c.regs.lock().expect("ctrlr regs lock poisoned");
    let (events, masked, changed_ns) = c.events_snapshot();
    ControllerState {
        cntlid: c.cntlid,
        hostnqn: c.hostnqn.clone(),
        hostid: c.hostid,
        cc: r.cc,
        csts: r.csts,
        num_io_queues: r.num_io_queues,
        io_queues: r.io_queues.clone(),
        aec: r.aec,
        vwce: r.vwce,
        kato_ms: c.kato_ms(),
        failed: c.is_failed(),
        events,
        masked,
        changed_ns,
    }
}

impl Target {
    /// Everything but the queues and the block devices' data.
    pub fn export_state(&self) -> TargetState {
        let subsystems = self
            .subsystems()
            .iter()
            .map(|s| SubsystemState {
                nqn: s.nqn.clone(),
                serial: s.serial.clone(),
                model: s.model.clone(),
                allow_any_host: s.allow_any_host,
                hosts: s.hosts.clone(),
                min_cntlid: s.min_cntlid,
                max_cntlid: s.max_cntlid,
                next_cntlid: s.next_cntlid(),
                namespaces: s
                    .namespaces()
                    .iter()
                    .map(|n| NamespaceState {
                        nsid: n.nsid,
                        num_blocks: n.num_blocks,
                        nguid: n.nguid,
                        uuid: n.uuid,
                        anagrpid: n.anagrpid,
                    })
                    .collect(),
                ana_groups: s
                    .ana_groups()
                    .iter()
                    .map(|g| (g.id, g.state(), g.chgcnt()))
                    .collect(),
                ana_chgcnt: s.ana_chgcnt(),
                controllers: s.controllers().iter().map(|c| ctrl_state(c)).collect(),
            })
            .collect();
        TargetState {
            max_queue_depth: self.opts.max_queue_depth,
            max_admin_queue_depth: self.opts.max_admin_queue_depth,
            max_io_queues: self.opts.max_io_queues,
            in_capsule_data_size: self.opts.in_capsule_data_size,
            max_transfer_size: self.opts.max_transfer_size,
            genctr: self.discovery_genctr(),
            listeners: self
                .listeners()
                .into_iter()
                .map(|l| ListenerState {
                    trtype: l.addr.trtype,
                    adrfam: l.addr.adrfam,
                    traddr: l.addr.traddr,
                    trsvcid: l.addr.trsvcid,
                    portid: l.portid,
                })
                .collect(),
            subsystems,
            discovery_controllers: self
                .discovery_subsystem()
                .controllers()
                .iter()
                .map(|c| ctrl_state(c))
                .collect(),
        }
    }

    /// Rebuild a target from an exported state. `bdev` supplies each namespace's block
    /// device (taken over by the caller); `firmware_revision` is this binary's own.
    pub fn import_state(
        st: &TargetState,
        firmware_revision: &str,
        mut bdev: impl FnMut(&str, u32) -> Result<Arc<dyn Bdev>, NvmfError>,
    ) -> Result<(Arc<Target>, Vec<Arc<Controller>>), NvmfError> {
        let opts = TargetOptions {
            max_queue_depth: st.max_queue_depth,
            max_admin_queue_depth: st.max_admin_queue_depth,
            max_io_queues: st.max_io_queues,
            in_capsule_data_size: st.in_capsule_data_size,
            max_transfer_size: st.max_transfer_size,
            firmware_revision: firmware_revision.to_string(),
        };
        let target = Target::new(opts)?;
        target.set_discovery_genctr(st.genctr);
        for l in &st.listeners {
            target.add_listener_quiet(ListenerInfo {
                addr: ListenAddr {
                    trtype: l.trtype,
                    adrfam: l.adrfam,
                    traddr: l.traddr.clone(),
                    trsvcid: l.trsvcid.clone(),
                },
                portid: l.portid,
            });
        }
        // Controllers are kept alive here until their queues are restored and hold them.
        let mut ctrlrs = Vec::new();
        for s in &st.subsystems {
            let mut cfg = SubsystemConfig::new(&s.nqn);
            cfg.serial = s.serial.clone();
            cfg.model = s.model.clone();
            cfg.allow_any_host = s.allow_any_host;
            cfg.hosts = s.hosts.clone();
            cfg.min_cntlid = s.min_cntlid;
            cfg.max_cntlid = s.max_cntlid;
            for n in &s.namespaces {
                cfg.namespaces.push(NamespaceConfig {
                    nsid: n.nsid,
                    bdev: bdev(&s.nqn, n.nsid)?,
                    nguid: Some(n.nguid),
                    uuid: Some(n.uuid),
                    anagrpid: Some(n.anagrpid),
                    num_blocks: Some(n.num_blocks),
                });
            }
            let sub = target.add_subsystem_quiet(cfg)?;
            sub.restore_ana(&s.ana_groups, s.ana_chgcnt);
            sub.set_next_cntlid(s.next_cntlid);
            for c in &s.controllers {
                ctrlrs.push(restore_ctrl(&sub, &target, c)?);
            }
        }
        let disc = target.discovery_subsystem();
        for c in &st.discovery_controllers {
            ctrlrs.push(restore_ctrl(&disc, &target, c)?);
        }
        Ok((target, ctrlrs))
    }
}

impl Target {
    /// Into a target rebuilt from the same configuration (a hot upgrade prepares it
    /// before the pause): what changes while it serves, read inside the pause. ANA
    /// states and change counts, next controller IDs, the discovery generation counter
    /// and every controller. Returns the controllers (keep them until their queues hold
    /// them).
    pub fn import_live(
        self: &Arc<Self>,
        st: &TargetState,
    ) -> Result<Vec<Arc<Controller>>, NvmfError> {
        self.set_discovery_genctr(st.genctr);
        let mut ctrlrs = Vec::new();
        for s in &st.subsystems {
            let sub = self
                .find_subsystem(&s.nqn)
                .ok_or_else(|| NvmfError::NoSuchSubsystem(s.nqn.clone()))?;
            sub.restore_ana(&s.ana_groups, s.ana_chgcnt);
            sub.set_next_cntlid(s.next_cntlid);
            for c in &s.controllers {
                ctrlrs.push(restore_ctrl(&sub, self, c)?);
            }
        }
        let disc = self.discovery_subsystem();
        for c in &st.discovery_controllers {
            ctrlrs.push(restore_ctrl(&disc, self, c)?);
        }
        Ok(ctrlrs)
    }
}

fn restore_ctrl(
    sub: &Arc<Subsystem>,
    target: &Arc<Target>,
    c: &ControllerState,
) -> Result<Arc<Controller>, NvmfError> {
    let ctrl = Controller::new(
        c.cntlid,
        sub.clone(),
        target.clone(),
        c.hostnqn.clone(),
        c.hostid,
        c.kato_ms,
    );
    {
        let mut r = ctrl.regs.lock().expect("ctrlr regs lock poisoned");
        *r = CtrlRegs {
            cc: c.cc,
            csts: c.csts,
            num_io_queues: c.num_io_queues,
            io_queues: c.io_queues.clone(),
            aec: c.aec,
            vwce: c.vwce,
        };
    }
    ctrl.restore_events(&c.events, c.masked, c.changed_ns);
    if c.failed {
        ctrl.fail();
    }
    sub.adopt_controller(&ctrl).then_some(ctrl).ok_or_else(|| {
        NvmfError::Invalid(format!(
            "controller {} of {} is restored twice",
            c.cntlid, sub.nqn
        ))
    })
}

impl<T: Default> NvmfQueue<T> {
    /// The queue's state; `valid` tells, per slot, how many bytes of its buffer hold
    /// data (the transport knows how much has arrived).
    pub fn export_state(
        &self,
        now: Instant,
        valid: impl Fn(u16, &Request<T>) -> usize,
    ) -> QueueSnapshot {
        let mut slots = Vec::new();
        for (i, r) in self.slots.iter().enumerate() {
            let state = match r.state {
                SlotState::Free => continue,
                SlotState::Allocated => ST_ALLOCATED,
                SlotState::Held => ST_HELD,
                SlotState::Parked => ST_PARKED,
                // Drained queues have none of these; a caller that snapshots too early
                // would lose them, so refuse loudly in debug builds.
                SlotState::Executing | SlotState::Done => {
                    debug_assert!(false, "queue exported before it drained");
                    continue;
                }
            };
            let n = valid(i as u16, r).min(r.buf.get().map_or(0, |b| b.len()));
            slots.push(SlotSnapshot {
                index: i as u16,
                sqe: r.sqe.to_bytes().to_vec(),
                xfer: match r.xfer {
                    Xfer::None => XferState::None,
                    Xfer::H2C { len, in_capsule } => XferState::H2C { len, in_capsule },
                    Xfer::C2H { len } => XferState::C2H { len },
                },
                state,
                data: r
                    .buf
                    .get()
                    .map_or_else(Vec::new, |b| b.as_slice()[..n].to_vec()),
            });
        }
        QueueSnapshot {
            subnqn: self.ctrlr.as_ref().map(|c| c.subsys.nqn.clone()),
            cntlid: self.ctrlr.as_ref().map(|c| c.cntlid),
            qid: self.qid,
            entries: self.entries,
            sqhd: self.sqhd,
            sq_flow_disabled: self.sq_flow_disabled,
            authenticating: self.is_authenticating(),
            disconnecting: self.state == QueueState::Disconnecting,
            ka_left_ms: self
                .ka_deadline
                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
            nslots: self.slots.len(),
            slots,
            aers: self.aers.clone(),
            held: self.held.iter().copied().collect(),
        }
    }

    /// Rebuild a queue in a new process. The queue starts quiesced: held commands run
    /// when the transport calls `resume`.
    pub fn import_state(
        target: Arc<Target>,
        s: &QueueSnapshot,
        now: Instant,
        reactor: usize,
    ) -> Result<NvmfQueue<T>, NvmfError> {
        let mut q = NvmfQueue::new(target.clone(), reactor);
        q.grow_slots(s.nslots);
        if let (Some(nqn), Some(cntlid)) = (&s.subnqn, s.cntlid) {
            let sub = target
                .find_subsystem(nqn)
                .ok_or_else(|| NvmfError::Invalid(format!("queue of unknown subsystem {nqn}")))?;
            let c = sub.controller(cntlid).ok_or_else(|| {
                NvmfError::Invalid(format!("queue of unknown controller {cntlid} in {nqn}"))
            })?;
            q.set_connected(c, s.qid, s.entries, now);
            q.ka_deadline = s.ka_left_ms.map(|ms| now + Duration::from_millis(ms));
        }
        q.sqhd = s.sqhd;
        q.sq_flow_disabled = s.sq_flow_disabled;
        if s.authenticating {
            // A transaction under way does not survive: the host's next message fails
            // it and the host starts again (or gives up and reconnects).
            q.gate |= crate::queue::gate::UNAUTHENTICATED;
            q.auth = Some(Box::default());
            // The host gets a whole transaction timeout from here.
            let kato = q.ctrlr.as_ref().map_or(0, |c| c.kato_ms());
            q.auth_deadline = Some(now + crate::auth::auth_timeout(kato));
        }
        if s.disconnecting {
            q.set_disconnecting();
        }
        q.free = (0..q.slots.len() as u16).rev().collect();
        for ss in &s.slots {
            let idx = usize::from(ss.index);
            if idx >= q.slots.len() || ss.sqe.len() != 64 {
                return Err(NvmfError::Invalid(format!(
                    "queue {} has a malformed slot {}",
                    s.qid, ss.index
                )));
            }
            q.free.retain(|&f| f != ss.index);
            let r = &mut q.slots[idx];
            r.sqe = Sqe::from_bytes(ss.sqe.as_slice().try_into().expect("length checked above"));
            r.cqe = Cqe::default();
            r.xfer = match ss.xfer {
                XferState::None => Xfer::None,
                XferState::H2C { len, in_capsule } => Xfer::H2C { len, in_capsule },
                XferState::C2H { len } => Xfer::C2H { len },
            };
            let want = match r.xfer {
                Xfer::H2C { len, .. } | Xfer::C2H { len } => len as usize,
                Xfer::None => 0,
            }
            .max(ss.data.len());
            if want > 0 {
                // Not in a pool buffer: the predecessor may still use those pages.
                r.own_buf_mut(want)[..ss.data.len()].copy_from_slice(&ss.data);
            }
            r.state = match ss.state {
                ST_HELD => SlotState::Held,
                ST_PARKED => SlotState::Parked,
                _ => SlotState::Allocated,
            };
        }
        q.aers = s.aers.clone();
        q.held = VecDeque::from(s.held.clone());
        q.quiesce();
        Ok(q)
    }
}
