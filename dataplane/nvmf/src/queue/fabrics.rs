//! Fabrics commands: Connect, Property Get/Set, Disconnect (Authentication Send and
//! Receive are in `queue::auth`).

use std::time::Instant;

use lightpool_spec::fabrics::{
    self, fctype, ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC,
};
use lightpool_spec::nvme::{self, csts, reg};
use lightpool_spec::status::{command_specific as cs, generic, Status};

use crate::ctrlr::Controller;
use crate::queue::{Exec, NvmfQueue};
use crate::subsystem::SubsystemKind;

/// CONNECT: the SQ Flow Control Disable bit of CATTR.
const CATTR_SQFC_DISABLE: u8 = 1 << 2;

/// A refused Connect: the status and Dword 0 the host gets, and why, for the log.
struct Refusal {
    status: Status,
    dw0: u32,
    why: String,
}

fn refuse(status: Status, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        dw0: 0,
        why: why.into(),
    }
}

/// Connect Invalid Parameters, pointing at the offending field (IATTR/IPO).
fn invalid_param(ipo: u16, in_data: bool, why: impl Into<String>) -> Refusal {
    Refusal {
        status: Status::command_specific(cs::CONNECT_INVALID_PARAMETERS).with_dnr(),
        dw0: fabrics::connect_invalid_param_dw0(ipo, u8::from(in_data)),
        why: why.into(),
    }
}

impl<T: Default> NvmfQueue<T> {
    pub(crate) fn exec_fabrics(&mut self, slot: u16, now: Instant) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        match fabrics::fctype(&sqe) {
            fctype::CONNECT => match self.connect(slot, now) {
                Ok(()) => Ok(Exec::Done),
                Err(r) => {
                    let cmd = ConnectCommand::parse(&sqe);
                    let (subnqn, hostnqn) = match self.connect_data(slot) {
                        Some(d) => (d.subnqn_str().to_string(), d.hostnqn_str().to_string()),
                        None => (String::new(), String::new()),
                    };
                    tracing::info!(
                        subnqn,
                        hostnqn,
                        qid = cmd.qid,
                        status = ?r.status,
                        reason = %r.why,
                        "connect refused"
                    );
                    self.req(slot).cqe.dw0 = r.dw0;
                    Err(r.status)
                }
            },
            _ if self.ctrlr.is_none() => {
                Err(Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr())
            }
            fctype::PROPERTY_GET if self.qid == 0 => self.property_get(slot),
            fctype::PROPERTY_SET if self.qid == 0 => self.property_set(slot),
            fctype::AUTH_SEND => self.auth_send(slot),
            fctype::AUTH_RECV => self.auth_recv(slot),
            fctype::DISCONNECT => {
                self.set_disconnecting();
                Ok(Exec::Done)
            }
            _ => Err(Status::generic(generic::INVALID_OPCODE).with_dnr()),
        }
    }

    /// The Connect data of the request in `slot`, if it carries a whole one.
    fn connect_data(&mut self, slot: u16) -> Option<ConnectData> {
        let data_len = match self.req(slot).xfer {
            crate::Xfer::H2C { len, .. } => len as usize,
            _ => 0,
        };
        if data_len < fabrics::CONNECT_DATA_SIZE {
            return None;
        }
        ConnectData::parse(self.req(slot).buf(fabrics::CONNECT_DATA_SIZE)).ok()
    }

    fn connect(&mut self, slot: u16, now: Instant) -> Result<(), Refusal> {
        if self.ctrlr.is_some() {
            return Err(refuse(
                Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr(),
                "the queue is connected already",
            ));
        }
        let sqe = self.req(slot).sqe;
        let cmd = ConnectCommand::parse(&sqe);
        if cmd.recfmt != 0 {
            return Err(refuse(
                Status::command_specific(cs::CONNECT_INCOMPATIBLE_FORMAT).with_dnr(),
                format!("record format {} (only 0 exists)", cmd.recfmt),
            ));
        }
        let data_len = match self.req(slot).xfer {
            crate::Xfer::H2C { len, .. } => len as usize,
            _ => 0,
        };
        if data_len < fabrics::CONNECT_DATA_SIZE {
            return Err(refuse(
                Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr(),
                format!(
                    "{data_len} bytes of Connect data, {} needed",
                    fabrics::CONNECT_DATA_SIZE
                ),
            ));
        }
        let data = match ConnectData::parse(self.req(slot).buf(fabrics::CONNECT_DATA_SIZE)) {
            Ok(d) => d,
            Err(_) => {
                return Err(invalid_param(
                    256,
                    true,
                    "the subsystem NQN is not NUL-terminated text",
                ))
            }
        };
        let target = self.target.clone();
        let subnqn = data.subnqn_str();
        let hostnqn = data.hostnqn_str().to_string();
        let Some(subsys) = target.find_subsystem(subnqn).filter(|s| !s.is_removed()) else {
            return Err(invalid_param(256, true, "no such subsystem"));
        };
        // An empty host NQN (SPDK's initiator sends one unless told a host NQN) is a
        // host nobody can name: accepted where any host may connect, as SPDK's target
        // and Linux nvmet do, refused where the subsystem lists its hosts.
        if hostnqn.is_empty() && !subsys.allow_any_host {
            return Err(invalid_param(
                512,
                true,
                "empty host NQN, and the subsystem admits only the hosts it lists",
            ));
        }
        if !subsys.host_allowed(&hostnqn) {
            return Err(refuse(
                Status::command_specific(cs::CONNECT_INVALID_HOST).with_dnr(),
                "the host is not on the subsystem's allowed list",
            ));
        }
        self.sq_flow_disabled = cmd.cattr & CATTR_SQFC_DISABLE != 0;
        let entries = u32::from(cmd.sqsize) + 1;
        if cmd.qid == 0 {
            if cmd.sqsize == 0 || entries > u32::from(target.opts.max_admin_queue_depth) {
                return Err(invalid_param(
                    44,
                    false,
                    format!(
                        "admin queue size {entries} (2 to {} allowed)",
                        target.opts.max_admin_queue_depth
                    ),
                ));
            }
            if data.cntlid != CNTLID_DYNAMIC {
                return Err(invalid_param(
                    16,
                    true,
                    format!(
                        "controller ID {:#x} asked for (only the dynamic model, FFFFh)",
                        data.cntlid
                    ),
                ));
            }
            let kato = if subsys.kind == SubsystemKind::Discovery && cmd.kato == 0 {
                0
            } else {
                cmd.kato
            };
            let ctrlr = subsys
                .register_controller(|id| {
                    Controller::new(
                        id,
                        subsys.clone(),
                        target.clone(),
                        hostnqn.clone(),
                        data.hostid,
                        kato,
                    )
                })
                .ok_or_else(|| {
                    refuse(
                        Status::command_specific(cs::CONNECT_CONTROLLER_BUSY),
                        "every controller ID of the subsystem's range is in use",
                    )
                })?;
            ctrlr.record();
            tracing::info!(
                subnqn,
                hostnqn,
                cntlid = ctrlr.cntlid,
                "admin queue connected"
            );
            let cntlid = ctrlr.cntlid;
            self.set_connected(ctrlr, 0, entries as u16, now);
            let authreq = self.require_auth();
            self.req(slot).cqe.dw0 = fabrics::connect_response_dw0(cntlid) | authreq;
        } else {
            if subsys.kind == SubsystemKind::Discovery {
                return Err(invalid_param(
                    42,
                    false,
                    "an I/O queue to the discovery subsystem",
                ));
            }
            if cmd.sqsize == 0 || entries > u32::from(target.opts.max_queue_depth) {
                return Err(invalid_param(
                    44,
                    false,
                    format!(
                        "I/O queue size {entries} (2 to {} allowed)",
                        target.opts.max_queue_depth
                    ),
                ));
            }
            let Some(ctrlr) = subsys.controller(data.cntlid) else {
                return Err(invalid_param(
                    16,
                    true,
                    format!("no controller {} in the subsystem", data.cntlid),
                ));
            };
            if ctrlr.hostnqn != hostnqn || ctrlr.hostid != data.hostid || ctrlr.is_failed() {
                return Err(invalid_param(
                    16,
                    true,
                    format!(
                        "controller {} belongs to another host, or has failed",
                        data.cntlid
                    ),
                ));
            }
            if !ctrlr.is_ready() {
                return Err(refuse(
                    Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr(),
                    "the controller is not enabled (CC.EN) yet",
                ));
            }
            if !ctrlr.claim_io_queue(cmd.qid) {
                return Err(invalid_param(
                    42,
                    false,
                    format!(
                        "queue ID {} is in use or beyond the controller's queues",
                        cmd.qid
                    ),
                ));
            }
            tracing::debug!(
                subnqn,
                cntlid = ctrlr.cntlid,
                qid = cmd.qid,
                entries,
                "I/O queue connected"
            );
            let cntlid = ctrlr.cntlid;
            self.set_connected(ctrlr, cmd.qid, entries as u16, now);
            let authreq = self.require_auth();
            self.req(slot).cqe.dw0 = fabrics::connect_response_dw0(cntlid) | authreq;
        }
        Ok(())
    }

    fn cap(&self) -> u64 {
        let mqes = self.target.opts.max_queue_depth - 1;
        // TO = 15 s in 500 ms units; NVM command set; doorbell stride 0; 4 KiB pages.
        nvme::cap_value(mqes, 30, true, 0, 0, 0)
    }

    fn property_get(&mut self, slot: u16) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let p = PropertyCommand::parse_get(&sqe);
        let c = self
            .ctrlr
            .clone()
            .expect("dispatch checked the controller exists");
        let r = c.regs.lock().expect("ctrlr regs lock poisoned");
        let value: u64 = match (p.offset, p.size8) {
            (reg::CAP, true) => self.cap(),
            (reg::CAP, false) => self.cap() & 0xFFFF_FFFF,
            (o, false) if o == reg::CAP + 4 => self.cap() >> 32,
            (reg::VS, false) => u64::from(crate::queue::admin::VERSION),
            (reg::CC, false) => u64::from(r.cc),
            (reg::CSTS, false) => u64::from(r.csts),
            (reg::NSSR, false) => 0,
            _ => return Err(Status::generic(generic::INVALID_FIELD).with_dnr()),
        };
        drop(r);
        let cqe = &mut self.req(slot).cqe;
        cqe.dw0 = value as u32;
        cqe.dw1 = (value >> 32) as u32;
        Ok(Exec::Done)
    }

    fn property_set(&mut self, slot: u16) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let p = PropertyCommand::parse_set(&sqe);
        let c = self
            .ctrlr
            .clone()
            .expect("dispatch checked the controller exists");
        if p.offset != reg::CC || p.size8 {
            return Err(Status::generic(generic::INVALID_FIELD).with_dnr());
        }
        let cc = p.value as u32;
        let mut r = c.regs.lock().expect("ctrlr regs lock poisoned");
        let was_enabled = nvme::cc_en(r.cc);
        r.cc = cc;
        if nvme::cc_en(cc) && !was_enabled {
            r.csts = csts::RDY;
        } else if !nvme::cc_en(cc) && was_enabled {
            // Controller reset: ready clears; a host re-enables it on the same association.
            r.csts &= !(csts::RDY | csts::SHST_MASK);
        }
        match nvme::cc_shn(cc) {
            0 => {}
            _ => r.csts = (r.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE,
        }
        Ok(Exec::Done)
    }
}
