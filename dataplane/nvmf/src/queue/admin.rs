//! Admin commands: Identify, Get Log Page, Get/Set Features, Asynchronous Event Request,
//! Keep Alive, Abort.

use std::time::Instant;

use lightpool_spec::features::fid;
use lightpool_spec::identify::{
    self, cns, IdentifyController, IdentifyNamespace, NsIdDescriptor, IDENTIFY_DATA_SIZE,
};
use lightpool_spec::log::{self, lid, AnaGroupDesc, DiscoveryLogEntry, GetLogPage};
use lightpool_spec::nvme::admin_opcode as op;
use lightpool_spec::status::{command_specific as cs, generic, Status};

use crate::ctrlr::{Controller, AEC_ANA_CHANGE, AEC_DISCOVERY_CHANGE, AEC_NS_ATTR};
use crate::queue::{Exec, NvmfQueue, Xfer};
use crate::subsystem::{SubsystemKind, MAX_NAMESPACES};

/// NVMe version reported (VS and Identify VER): 1.4, which introduced ANA.
pub const VERSION: u32 = 0x0001_0400;
/// Asynchronous Event Request Limit, 0's based.
pub const AERL: u8 = 3;
/// Abort Command Limit, 0's based.
const ACL: u8 = 3;

fn invalid_field() -> Status {
    Status::generic(generic::INVALID_FIELD).with_dnr()
}

impl<T: Default> NvmfQueue<T> {
    pub(crate) fn exec_admin(&mut self, slot: u16, now: Instant) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let c = self
            .ctrlr
            .clone()
            .expect("dispatch checked the controller exists");
        let discovery = c.is_discovery();
        match sqe.opcode {
            op::IDENTIFY => self.identify(&c, slot),
            op::GET_LOG_PAGE => self.get_log_page(&c, slot),
            op::KEEP_ALIVE => {
                c.keep_alives
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.reset_keep_alive(now);
                Ok(Exec::Done)
            }
            op::ASYNC_EVENT_REQUEST => self.park_aer(slot),
            op::SET_FEATURES => self.set_features(&c, slot, now),
            op::GET_FEATURES => self.get_features(&c, slot),
            op::ABORT if !discovery => {
                // Commands are not aborted once received (they finish quickly); dw0 bit 0
                // set says "not aborted", which the specification allows.
                self.req(slot).cqe.dw0 = 1;
                Ok(Exec::Done)
            }
            _ => Err(Status::generic(generic::INVALID_OPCODE).with_dnr()),
        }
    }

    fn c2h_window(&mut self, slot: u16) -> Result<usize, Status> {
        match self.req(slot).xfer {
            Xfer::C2H { len } => Ok(len as usize),
            Xfer::None => Ok(0),
            Xfer::H2C { .. } => Err(invalid_field()),
        }
    }

    fn identify(&mut self, c: &Controller, slot: u16) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let cns_v = (sqe.cdw10 & 0xFF) as u8;
        let csi = (sqe.cdw11 >> 24) as u8;
        let want = self.c2h_window(slot)?;
        let mut page = [0u8; IDENTIFY_DATA_SIZE];
        match cns_v {
            cns::CONTROLLER => identify_controller(c, &mut page, self.opts.keyed_sgl),
            cns::NAMESPACE if c.subsys.kind == SubsystemKind::Nvm => {
                if sqe.nsid == 0xFFFF_FFFF {
                    // Common namespace capabilities: LBA format only.
                    let id = IdentifyNamespace {
                        nlbaf: 0,
                        lbads: 9,
                        ..Default::default()
                    };
                    id.encode(&mut page);
                } else {
                    let Some(ns) = c.subsys.namespace(sqe.nsid) else {
                        if sqe.nsid == 0 || sqe.nsid > MAX_NAMESPACES {
                            return Err(Status::generic(generic::INVALID_NAMESPACE).with_dnr());
                        }
                        // An allocated-but-inactive NSID reads as zeroes.
                        return self.send_zeroes(slot, want);
                    };
                    let id = IdentifyNamespace {
                        nsze: ns.num_blocks,
                        ncap: ns.num_blocks,
                        nuse: ns.num_blocks,
                        // Bit 0 thin provisioning (deallocate), bit 3: NGUID/EUI64 never reused.
                        nsfeat: if ns.bdev.info().supports_deallocate {
                            0x01
                        } else {
                            0
                        } | 0x08,
                        nlbaf: 0,
                        flbas: 0,
                        // Deallocated blocks read as zeroes; write zeroes deallocates.
                        dlfeat: if ns.bdev.info().supports_deallocate {
                            0x01
                        } else {
                            0
                        },
                        nmic: 0x01,
                        anagrpid: ns.anagrpid,
                        nsattr: u8::from(ns.read_only),
                        nguid: ns.nguid,
                        eui64: [0; 8],
                        lbads: ns.block_shift as u8,
                    };
                    id.encode(&mut page);
                }
            }
            cns::ACTIVE_NS_LIST if c.subsys.kind == SubsystemKind::Nvm => {
                if sqe.nsid >= 0xFFFF_FFFE {
                    return Err(Status::generic(generic::INVALID_NAMESPACE).with_dnr());
                }
                identify::encode_active_ns_list(
                    c.subsys.namespaces().iter().map(|n| n.nsid),
                    sqe.nsid,
                    &mut page,
                );
            }
            cns::NS_ID_DESCRIPTORS if c.subsys.kind == SubsystemKind::Nvm => {
                let Some(ns) = c.subsys.namespace(sqe.nsid) else {
                    return Err(Status::generic(generic::INVALID_NAMESPACE).with_dnr());
                };
                let descs = [
                    NsIdDescriptor::Nguid(ns.nguid),
                    NsIdDescriptor::Uuid(ns.uuid),
                    NsIdDescriptor::Csi(0),
                ];
                identify::encode_ns_id_descriptors(&descs, &mut page);
            }
            // I/O command set specific Identify Namespace / Controller for the NVM command
            // set: all limits zero ("no limit beyond MDTS").
            0x05 | 0x06 if csi == 0 && c.subsys.kind == SubsystemKind::Nvm => {
                if cns_v == 0x05 && c.subsys.namespace(sqe.nsid).is_none() {
                    return Err(Status::generic(generic::INVALID_NAMESPACE).with_dnr());
                }
            }
            _ => return Err(invalid_field()),
        }
        let n = want.min(IDENTIFY_DATA_SIZE);
        let r = self.req(slot);
        r.buf_mut(n).copy_from_slice(&page[..n]);
        r.c2h_len = n as u32;
        Ok(Exec::Done)
    }

    fn send_zeroes(&mut self, slot: u16, want: usize) -> Result<Exec, Status> {
        let n = want.min(IDENTIFY_DATA_SIZE);
        let r = self.req(slot);
        r.buf_mut(n).fill(0);
        r.c2h_len = n as u32;
        Ok(Exec::Done)
    }

    fn get_log_page(&mut self, c: &Controller, slot: u16) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let glp = GetLogPage::parse(&sqe);
        let want = self
            .c2h_window(slot)?
            .min(usize::try_from(glp.len_bytes()).unwrap_or(usize::MAX));
        if !glp.lpo.is_multiple_of(4) {
            return Err(invalid_field());
        }
        let discovery = c.is_discovery();
        let offset = glp.lpo;
        let target = self.target.clone();
        let r = self.req(slot);
        let out = r.buf_mut(want);
        out.fill(0);
        let page_len: u64 = match glp.lid {
            lid::DISCOVERY if discovery => {
                let entries = discovery_entries(&target, &c.hostnqn);
                log::encode_discovery_log(target.discovery_genctr(), &entries, offset, out);
                1024 + 1024 * entries.len() as u64
            }
            lid::ERROR_INFO if !discovery => 64,
            lid::SMART_HEALTH if !discovery => {
                let [rc, wc, rb, wb] = c.stats_sum();
                let smart = log::SmartLog {
                    // 1000 units of 512 bytes, rounded up, as the specification counts.
                    data_units_read: u128::from(rb.div_ceil(1000)),
                    data_units_written: u128::from(wb.div_ceil(1000)),
                    host_read_commands: u128::from(rc),
                    host_write_commands: u128::from(wc),
                    temperature_k: 300,
                    ..Default::default()
                };
                copy_window(&smart.encode(), offset, out);
                512
            }
            lid::FIRMWARE_SLOT if !discovery => {
                let mut frs = [[0u8; 8]; 7];
                frs[0] = fw_rev(c);
                copy_window(&log::FirmwareSlotLog { afi: 1, frs }.encode(), offset, out);
                512
            }
            lid::CHANGED_NS_LIST if !discovery => {
                let mut page = [0u8; log::CHANGED_NS_LIST_SIZE];
                log::encode_changed_ns_list(&c.changed_namespaces(!glp.rae), &mut page);
                copy_window(&page, offset, out);
                log::CHANGED_NS_LIST_SIZE as u64
            }
            lid::ANA if !discovery => {
                let subsys = &c.subsys;
                let nsids: Vec<Vec<u32>> = subsys
                    .ana_groups()
                    .iter()
                    .map(|g| {
                        subsys
                            .namespaces()
                            .iter()
                            .filter(|n| n.anagrpid == g.id)
                            .map(|n| n.nsid)
                            .collect()
                    })
                    .collect();
                let groups: Vec<AnaGroupDesc<'_>> = subsys
                    .ana_groups()
                    .iter()
                    .zip(&nsids)
                    .map(|(g, ids)| AnaGroupDesc {
                        grpid: g.id,
                        chgcnt: g.chgcnt(),
                        state: g.state(),
                        nsids: ids,
                    })
                    .collect();
                let rgo = glp.lsp & 1 != 0;
                log::encode_ana_log(subsys.ana_chgcnt(), &groups, rgo, offset, out) as u64
            }
            _ => return Err(Status::command_specific(cs::INVALID_LOG_PAGE).with_dnr()),
        };
        if offset > page_len && glp.lid != lid::ANA {
            return Err(invalid_field());
        }
        r.c2h_len = want as u32;
        if !glp.rae {
            c.log_read(glp.lid);
        }
        Ok(Exec::Done)
    }

    fn set_features(&mut self, c: &Controller, slot: u16, now: Instant) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let f = (sqe.cdw10 & 0xFF) as u8;
        let discovery = c.is_discovery();
        let dw0 = match f {
            fid::KEEP_ALIVE_TIMER => {
                c.set_kato_ms(sqe.cdw11);
                self.reset_keep_alive(now);
                0
            }
            fid::ASYNC_EVENT_CONFIG => {
                let supported = if discovery {
                    AEC_DISCOVERY_CHANGE
                } else {
                    AEC_NS_ATTR | AEC_ANA_CHANGE
                };
                let mut r = c.regs.lock().expect("ctrlr regs lock poisoned");
                r.aec = sqe.cdw11 & supported;
                0
            }
            fid::NUMBER_OF_QUEUES if !discovery => {
                let nsqr = (sqe.cdw11 & 0xFFFF) as u16;
                let ncqr = (sqe.cdw11 >> 16) as u16;
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return Err(invalid_field());
                }
                let mut r = c.regs.lock().expect("ctrlr regs lock poisoned");
                if r.io_queues.iter().any(|&q| q) {
                    return Err(Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr());
                }
                let max = c.target.opts.max_io_queues;
                let granted = nsqr.max(ncqr).saturating_add(1).min(max);
                r.num_io_queues = granted;
                let g = u32::from(granted - 1);
                g | (g << 16)
            }
            fid::VOLATILE_WRITE_CACHE if !discovery => {
                let mut r = c.regs.lock().expect("ctrlr regs lock poisoned");
                r.vwce = sqe.cdw11 & 1 != 0;
                0
            }
            fid::ARBITRATION
            | fid::POWER_MGMT
            | fid::TEMP_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::INTERRUPT_COALESCING
            | fid::WRITE_ATOMICITY
                if !discovery =>
            {
                return Err(Status::command_specific(cs::FEATURE_NOT_CHANGEABLE).with_dnr());
            }
            _ => return Err(invalid_field()),
        };
        self.req(slot).cqe.dw0 = dw0;
        Ok(Exec::Done)
    }

    fn get_features(&mut self, c: &Controller, slot: u16) -> Result<Exec, Status> {
        let sqe = self.req(slot).sqe;
        let f = (sqe.cdw10 & 0xFF) as u8;
        let sel = ((sqe.cdw10 >> 8) & 0x7) as u8;
        let discovery = c.is_discovery();
        if sel == 3 {
            // Supported capabilities: none of ours is saveable or namespace-specific;
            // all that can be set are changeable.
            self.req(slot).cqe.dw0 = 0x4;
            return Ok(Exec::Done);
        }
        let default = sel == 1 || sel == 2;
        let r = c.regs.lock().expect("ctrlr regs lock poisoned");
        let dw0 = match f {
            fid::KEEP_ALIVE_TIMER => c.kato_ms(),
            fid::ASYNC_EVENT_CONFIG => {
                if default {
                    0
                } else {
                    r.aec
                }
            }
            fid::NUMBER_OF_QUEUES if !discovery => {
                let g = u32::from(
                    if default {
                        c.target.opts.max_io_queues
                    } else {
                        r.num_io_queues
                    } - 1,
                );
                g | (g << 16)
            }
            fid::VOLATILE_WRITE_CACHE if !discovery => {
                u32::from(if default { true } else { r.vwce })
            }
            fid::ARBITRATION
            | fid::POWER_MGMT
            | fid::ERROR_RECOVERY
            | fid::INTERRUPT_COALESCING
            | fid::WRITE_ATOMICITY
                if !discovery =>
            {
                0
            }
            // Over-temperature threshold default: 0x157 K (70 C).
            fid::TEMP_THRESHOLD if !discovery => 0x157,
            _ => return Err(invalid_field()),
        };
        drop(r);
        self.req(slot).cqe.dw0 = dw0;
        Ok(Exec::Done)
    }
}

fn copy_window(img: &[u8], offset: u64, out: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(img.len());
    let n = (img.len() - start).min(out.len());
    out[..n].copy_from_slice(&img[start..start + n]);
}

fn fw_rev(c: &Controller) -> [u8; 8] {
    identify::pad_ascii::<8>(&c.target.opts.firmware_revision)
}

/// Discovery log entries a host may see: one per (subsystem that admits it, listener).
fn discovery_entries(target: &crate::Target, hostnqn: &str) -> Vec<DiscoveryLogEntry> {
    let mut out = Vec::new();
    for l in target.listeners() {
        let mut push = |subnqn: &str, subtype: u8| {
            let mut e = DiscoveryLogEntry::tcp(
                subtype,
                l.addr.adrfam,
                l.portid,
                &l.addr.traddr,
                &l.addr.trsvcid,
                subnqn,
            );
            e.trtype = l.addr.trtype;
            if l.addr.trtype == log::trtype::RDMA {
                // RDMA listeners are plain (TLS is NVMe/TCP's): their own TSAS.
                e.tsas = lightpool_spec::rdma::tsas::rdma_cm();
                e.treq = log::treq::NOT_REQUIRED;
            } else {
                // NVMe/TCP TSAS byte 0 (SECTYPE) and TREQ's secure channel bits: what the
                // listener's TLS setting is.
                match target.tls.listener(&l.addr.to_addr_string()) {
                    crate::tls::Secure::None => e.treq = log::treq::NOT_REQUIRED,
                    crate::tls::Secure::Optional => {
                        e.treq = log::treq::NOT_REQUIRED;
                        e.tsas[0] = log::tcp_sectype::TLS_1_3;
                    }
                    crate::tls::Secure::Required => {
                        e.treq = log::treq::REQUIRED;
                        e.tsas[0] = log::tcp_sectype::TLS_1_3;
                    }
                }
            }
            e.asqsz = target.opts.max_admin_queue_depth;
            out.push(e);
        };
        push(
            lightpool_spec::fabrics::DISCOVERY_NQN,
            log::subtype::CURRENT_DISCOVERY,
        );
        for s in target.subsystems() {
            if s.host_allowed(hostnqn) {
                push(&s.nqn, log::subtype::NVME_SUBSYSTEM);
            }
        }
    }
    out
}

/// `keyed`: the fabric moves data by keyed SGL data blocks (NVMe/RDMA), which SGLS
/// bit 2 then says (the Linux RDMA host refuses a controller without it).
fn identify_controller(c: &Controller, page: &mut [u8; IDENTIFY_DATA_SIZE], keyed: bool) {
    let t = &c.target.opts;
    let nvm = c.subsys.kind == SubsystemKind::Nvm;
    let vwc = nvm
        && c.subsys
            .namespaces()
            .iter()
            .any(|n| n.bdev.info().volatile_write_cache);
    let id = IdentifyController {
        vid: 0x1D1D,
        ssvid: 0x1D1D,
        sn: identify::pad_ascii::<20>(&c.subsys.serial),
        mn: identify::pad_ascii::<40>(&c.subsys.model),
        fr: identify::pad_ascii::<8>(&t.firmware_revision),
        rab: 6,
        ieee: [0; 3],
        // Multiple controllers per subsystem, ANA reporting.
        cmic: if nvm { 0x0A } else { 0 },
        mdts: t.mdts(),
        cntlid: c.cntlid,
        ver: VERSION,
        oaes: if nvm {
            AEC_NS_ATTR | AEC_ANA_CHANGE
        } else {
            AEC_DISCOVERY_CHANGE
        },
        ctratt: 0,
        cntrltype: if nvm { 1 } else { 2 },
        oacs: 0,
        acl: ACL,
        aerl: AERL,
        // One read-only firmware slot.
        frmw: 0x03,
        // SMART per namespace not supported; extended data (offsets) for Get Log Page.
        lpa: 0x04,
        elpe: 0,
        kas: 10,
        sqes: 0x66,
        cqes: 0x44,
        maxcmd: t.max_queue_depth,
        nn: if nvm { MAX_NAMESPACES } else { 0 },
        // Compare, Dataset Management, Write Zeroes.
        oncs: if nvm { 0x01 | 0x04 | 0x08 } else { 0 },
        fuses: 0,
        fna: 0,
        vwc: u8::from(vwc) | if vwc { 0x06 } else { 0 },
        awun: 0,
        awupf: 0,
        // SGLs supported; in-capsule data may carry an offset; keyed data blocks on a
        // fabric of them.
        sgls: 0x01 | (1 << 20) | if keyed { 1 << 2 } else { 0 },
        anatt: if nvm { 10 } else { 0 },
        // Optimized, non-optimized, inaccessible, persistent loss, change; ANAGRPID
        // constant while attached; non-zero ANAGRPID.
        anacap: if nvm { 0x1F | 0x40 | 0x80 } else { 0 },
        anagrpmax: if nvm { MAX_NAMESPACES } else { 0 },
        nanagrpid: if nvm { MAX_NAMESPACES } else { 0 },
        mnan: if nvm { MAX_NAMESPACES } else { 0 },
        subnqn: identify::nqn_bytes(&c.subsys.nqn),
        ioccsz: (64 + t.in_capsule_data_size) / 16,
        iorcsz: 1,
        icdoff: 0,
        fcatt: 0,
        msdbd: 1,
        ofcs: 0,
    };
    id.encode(page);
}
