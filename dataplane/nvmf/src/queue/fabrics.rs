//! Fabrics commands: Connect, Property Get/Set, Disconnect.

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

fn invalid_param(ipo: u16, in_data: bool) -> (Status, u32) {
    (
        Status::command_specific(cs::CONNECT_INVALID_PARAMETERS).with_dnr(),
        fabrics::connect_invalid_param_dw0(ipo, u8::from(in_data)),
    )
}

impl<T: Default> NvmfQueue<T> {
    pub(crate) fn exec_fabrics(&mut self, slot: u16, now: Instant) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        match fabrics::fctype(&sqe) {
            fctype::CONNECT => match self.connect(slot, now) {
                Ok(()) => Ok(Exec::Done),
                Err((st, dw0)) => {
                    self.req(slot).cqe.dw0 = dw0;
                    Err(st)
                }
            },
            _ if self.ctrlr.is_none() => {
                Err(Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr())
            }
            fctype::PROPERTY_GET if self.qid == 0 => self.property_get(slot),
            fctype::PROPERTY_SET if self.qid == 0 => self.property_set(slot),
            fctype::DISCONNECT => {
                self.set_disconnecting();
                Ok(Exec::Done)
            }
            _ => Err(Status::generic(generic::INVALID_OPCODE).with_dnr()),
        }
    }

    fn connect(&mut self, slot: u16, now: Instant) -> Result<(), (Status, u32)> {
        if self.ctrlr.is_some() {
            return Err((
                Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr(),
                0,
            ));
        }
        let sqe = self.req(slot).sqe;
        let cmd = ConnectCommand::parse(&sqe);
        if cmd.recfmt != 0 {
            return Err((
                Status::command_specific(cs::CONNECT_INCOMPATIBLE_FORMAT).with_dnr(),
                0,
            ));
        }
        let data_len = match self.req(slot).xfer {
            crate::Xfer::H2C { len, .. } => len as usize,
            _ => 0,
        };
        if data_len < fabrics::CONNECT_DATA_SIZE {
            return Err((
                Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr(),
                0,
            ));
        }
        let data = match ConnectData::parse(self.req(slot).buf(fabrics::CONNECT_DATA_SIZE)) {
            Ok(d) => d,
            Err(_) => return Err(invalid_param(256, true)),
        };
        let target = self.target.clone();
        let subnqn = data.subnqn_str();
        let hostnqn = data.hostnqn_str().to_string();
        let Some(subsys) = target.find_subsystem(subnqn) else {
            tracing::info!(subnqn, hostnqn, "connect to an unknown subsystem refused");
            return Err(invalid_param(256, true));
        };
        if hostnqn.is_empty() {
            return Err(invalid_param(512, true));
        }
        if !subsys.host_allowed(&hostnqn) {
            tracing::info!(
                subnqn,
                hostnqn,
                "connect from a host not on the allowed list refused"
            );
            return Err((
                Status::command_specific(cs::CONNECT_INVALID_HOST).with_dnr(),
                0,
            ));
        }
        self.sq_flow_disabled = cmd.cattr & CATTR_SQFC_DISABLE != 0;
        let entries = u32::from(cmd.sqsize) + 1;
        if cmd.qid == 0 {
            if cmd.sqsize == 0 || entries > u32::from(target.opts.max_admin_queue_depth) {
                return Err(invalid_param(44, false));
            }
            if data.cntlid != CNTLID_DYNAMIC {
                return Err(invalid_param(16, true));
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
                .ok_or((Status::command_specific(cs::CONNECT_CONTROLLER_BUSY), 0))?;
            ctrlr.record();
            tracing::info!(
                subnqn,
                hostnqn,
                cntlid = ctrlr.cntlid,
                "admin queue connected"
            );
            let cntlid = ctrlr.cntlid;
            self.set_connected(ctrlr, 0, entries as u16, now);
            self.req(slot).cqe.dw0 = fabrics::connect_response_dw0(cntlid);
        } else {
            if subsys.kind == SubsystemKind::Discovery {
                return Err(invalid_param(42, false));
            }
            if cmd.sqsize == 0 || entries > u32::from(target.opts.max_queue_depth) {
                return Err(invalid_param(44, false));
            }
            let Some(ctrlr) = subsys.controller(data.cntlid) else {
                return Err(invalid_param(16, true));
            };
            if ctrlr.hostnqn != hostnqn || ctrlr.hostid != data.hostid || ctrlr.is_failed() {
                return Err(invalid_param(16, true));
            }
            if !ctrlr.is_ready() {
                return Err((
                    Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr(),
                    0,
                ));
            }
            if !ctrlr.claim_io_queue(cmd.qid) {
                return Err(invalid_param(42, false));
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
            self.req(slot).cqe.dw0 = fabrics::connect_response_dw0(cntlid);
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
