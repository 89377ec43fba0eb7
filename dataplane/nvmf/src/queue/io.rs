//! I/O commands: Read, Write, Compare, Flush, Write Zeroes, Dataset Management.

use lightpool_bdev::IoOp;
use lightpool_spec::log::ana_state;
use lightpool_spec::nvme::{io_opcode as op, DsmRange, Sqe, DSM_RANGE_SIZE};
use lightpool_spec::status::{generic, path, Status};

use crate::ctrlr::QueueStats;
use crate::queue::{channel_of, Exec, NvmfQueue, Xfer, NAMESPACE_WRITE_PROTECTED};

const BROADCAST_NSID: u32 = 0xFFFF_FFFF;

fn lba_out_of_range() -> Status {
    Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr()
}

impl<T: Default> NvmfQueue<T> {
    /// Index of an active namespace, and whether its ANA state lets I/O through.
    fn io_namespace(&self, nsid: u32) -> Result<usize, Status> {
        let idx = (nsid as usize).wrapping_sub(1);
        let Some(Some(ns)) = self.namespaces.get(idx) else {
            return Err(Status::generic(generic::INVALID_NAMESPACE).with_dnr());
        };
        let c = self
            .ctrlr
            .as_ref()
            .expect("dispatch checked the controller exists");
        if let Some(g) = c.subsys.ana_group(ns.anagrpid) {
            match g.state() {
                ana_state::OPTIMIZED | ana_state::NON_OPTIMIZED => {}
                // No DNR: the multipath host retries on another path.
                ana_state::INACCESSIBLE => {
                    return Err(Status::path(path::ASYMMETRIC_ACCESS_INACCESSIBLE))
                }
                ana_state::PERSISTENT_LOSS => {
                    return Err(Status::path(path::ASYMMETRIC_ACCESS_PERSISTENT_LOSS))
                }
                _ => return Err(Status::path(path::ASYMMETRIC_ACCESS_TRANSITION)),
            }
        }
        Ok(idx)
    }

    /// Starting LBA and block count of a Read/Write/Compare/Write Zeroes, checked
    /// against the namespace.
    fn lba_range(
        &self,
        idx: usize,
        cdw10: u32,
        cdw11: u32,
        cdw12: u32,
    ) -> Result<(u64, u32), Status> {
        let ns = self.namespaces[idx]
            .as_ref()
            .expect("io_namespace checked it");
        let slba = u64::from(cdw10) | (u64::from(cdw11) << 32);
        let nlb = (cdw12 & 0xFFFF) + 1;
        match slba.checked_add(u64::from(nlb)) {
            Some(end) if end <= ns.num_blocks => Ok((slba, nlb)),
            _ => Err(lba_out_of_range()),
        }
    }

    /// What a Read, Write or Compare works on, checked: the namespace's index, the
    /// starting LBA, the block count and log2(block size). One look at the namespace
    /// for the range and the data length (the I/O path).
    #[inline(always)]
    fn rw_range(&self, sqe: &Sqe, xfer: Xfer) -> Result<(usize, u64, u32, u32), Status> {
        let idx = self.io_namespace(sqe.nsid)?;
        let ns = self.namespaces[idx]
            .as_deref()
            .expect("io_namespace checked it");
        let slba = u64::from(sqe.cdw10) | (u64::from(sqe.cdw11) << 32);
        let nlb = (sqe.cdw12 & 0xFFFF) + 1;
        match slba.checked_add(u64::from(nlb)) {
            Some(end) if end <= ns.num_blocks => {}
            _ => return Err(lba_out_of_range()),
        }
        let need = u64::from(nlb) << ns.block_shift;
        let have = match xfer {
            Xfer::H2C { len, .. } | Xfer::C2H { len } => u64::from(len),
            Xfer::None => 0,
        };
        // The SGL is within the largest transfer (prepare checked it), so a transfer
        // too large for it is also one the SGL does not cover: one test on the way.
        if have < need || need > u64::from(self.opts.max_transfer) {
            return Err(if need > u64::from(self.opts.max_transfer) {
                Status::generic(generic::INVALID_FIELD).with_dnr()
            } else {
                Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr()
            });
        }
        Ok((idx, slba, nlb, ns.block_shift))
    }

    fn writable(&self, idx: usize) -> Result<(), Status> {
        if self.namespaces[idx].as_ref().is_some_and(|n| n.read_only) {
            return Err(Status::generic(NAMESPACE_WRITE_PROTECTED).with_dnr());
        }
        Ok(())
    }

    /// One of several operations of one command: once any is in flight, a failure to
    /// submit the next is recorded in the response instead of returned, so the request
    /// completes only after what was submitted has finished.
    fn submit_more(
        &mut self,
        slot: u16,
        idx: usize,
        op: IoOp,
        lba: u64,
        nb: u32,
    ) -> Result<(), Status> {
        match self.submit_bdev(slot, idx, op, lba, nb, false) {
            Err(st) if self.slot_pending(slot) > 0 => {
                self.req(slot).cqe.status = st;
                Ok(())
            }
            other => other,
        }
    }

    pub(crate) fn exec_io(&mut self, slot: u16) -> Result<Exec, Status> {
        self.check_namespaces();
        let r = self.req(slot);
        let sqe = r.sqe;
        let xfer = r.xfer;
        match sqe.opcode {
            op::READ => {
                let (idx, slba, nlb, shift) = self.rw_range(&sqe, xfer)?;
                self.read(slot, idx, slba, nlb, shift)
            }
            op::WRITE => {
                let (idx, slba, nlb, shift) = self.rw_range(&sqe, xfer)?;
                self.write(slot, idx, slba, nlb, shift)
            }
            op::COMPARE => {
                let (idx, slba, nlb, _) = self.rw_range(&sqe, xfer)?;
                if !matches!(xfer, Xfer::H2C { .. }) {
                    return Err(Status::generic(generic::INVALID_FIELD).with_dnr());
                }
                self.submit_bdev(slot, idx, IoOp::Read, slba, nlb, true)?;
                Ok(Exec::Pending)
            }
            op::WRITE_ZEROES => {
                let idx = self.io_namespace(sqe.nsid)?;
                let (slba, nlb) = self.lba_range(idx, sqe.cdw10, sqe.cdw11, sqe.cdw12)?;
                self.writable(idx)?;
                self.submit_bdev(slot, idx, IoOp::WriteZeroes, slba, nlb, false)?;
                Ok(Exec::Pending)
            }
            op::FLUSH => {
                if sqe.nsid == BROADCAST_NSID {
                    let all: Vec<usize> = (0..self.namespaces.len())
                        .filter(|&i| self.namespaces[i].is_some())
                        .collect();
                    for &idx in &all {
                        self.submit_more(slot, idx, IoOp::Flush, 0, 0)?;
                    }
                    return Ok(if all.is_empty() {
                        Exec::Done
                    } else {
                        Exec::Pending
                    });
                }
                let idx = self.io_namespace(sqe.nsid)?;
                self.submit_bdev(slot, idx, IoOp::Flush, 0, 0, false)?;
                Ok(Exec::Pending)
            }
            op::DATASET_MANAGEMENT => self.dataset_management(slot),
            _ => Err(Status::generic(generic::INVALID_OPCODE).with_dnr()),
        }
    }

    /// A Read: served in place by the channel when it can (sent from the device's own
    /// memory), else submitted.
    fn read(
        &mut self,
        slot: u16,
        idx: usize,
        slba: u64,
        nlb: u32,
        shift: u32,
    ) -> Result<Exec, Status> {
        QueueStats::bump(&self.stats.read_cmds, 1);
        QueueStats::bump(&self.stats.blocks_read_512, u64::from(nlb) << (shift - 9));
        let ch = channel_of(
            &mut self.channels,
            &mut self.open_channels,
            &self.namespaces,
            idx,
        )?;
        let r = &mut self.slots[usize::from(slot)];
        r.c2h_len = nlb << shift;
        // A fabric of registered memory (RDMA) sends only from the request's buffer.
        if !self.opts.keyed_sgl {
            if let Some(data) = ch.read_in_place(slba, nlb) {
                r.c2h_ext = Some(data);
                return Ok(Exec::Done);
            }
        }
        self.submit_bdev(slot, idx, IoOp::Read, slba, nlb, false)?;
        Ok(Exec::Pending)
    }

    /// A Write: taken in place by the channel when it can (from the transport's receive
    /// buffer when the data comes through `execute_write_from`, else from the request's
    /// buffer), else submitted from the request's buffer.
    fn write(
        &mut self,
        slot: u16,
        idx: usize,
        slba: u64,
        nlb: u32,
        shift: u32,
    ) -> Result<Exec, Status> {
        self.writable(idx)?;
        QueueStats::bump(&self.stats.write_cmds, 1);
        QueueStats::bump(
            &self.stats.blocks_written_512,
            u64::from(nlb) << (shift - 9),
        );
        let len = (nlb as usize) << shift;
        let ch = channel_of(
            &mut self.channels,
            &mut self.open_channels,
            &self.namespaces,
            idx,
        )?;
        let r = &mut self.slots[usize::from(slot)];
        let done = match self.direct_data {
            Some((p, n)) => {
                // SAFETY: set by execute_write_from for the length of this call from a
                // slice it borrows.
                let data = unsafe { std::slice::from_raw_parts(p, n) };
                // rw_range checked the SGL (whose length the data has) covers the blocks.
                let Some(data) = data.get(..len) else {
                    return Err(Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr());
                };
                let done = ch.write_in_place(slba, nlb, data);
                if !done {
                    // Submitted from the request's buffer.
                    r.buf_mut(len).copy_from_slice(data);
                }
                done
            }
            None => ch.write_in_place(slba, nlb, r.buf_mut(len)),
        };
        if done {
            return Ok(Exec::Done);
        }
        self.submit_bdev(slot, idx, IoOp::Write, slba, nlb, false)?;
        Ok(Exec::Pending)
    }

    fn dataset_management(&mut self, slot: u16) -> Result<Exec, Status> {
        let r = self.req(slot);
        let sqe = r.sqe;
        let nr = (sqe.cdw10 & 0xFF) as usize + 1;
        let deallocate = sqe.cdw11 & (1 << 2) != 0;
        let len = match r.xfer {
            Xfer::H2C { len, .. } => len as usize,
            _ => 0,
        };
        if len < nr * DSM_RANGE_SIZE {
            return Err(Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr());
        }
        let idx = self.io_namespace(sqe.nsid)?;
        if !deallocate {
            // Only attributes (hints): nothing to do.
            return Ok(Exec::Done);
        }
        self.writable(idx)?;
        let num_blocks = self.namespaces[idx].as_ref().map_or(0, |n| n.num_blocks);
        // Validate every range before submitting any, so a bad range changes nothing.
        let mut ranges = [(0u64, 0u32); 256];
        let mut n = 0;
        {
            let data = self.req(slot).buf(nr * DSM_RANGE_SIZE);
            for chunk in data.chunks_exact(DSM_RANGE_SIZE) {
                let rng =
                    DsmRange::from_bytes(chunk.try_into().expect("chunks_exact yields 16 bytes"));
                if rng.num_blocks == 0 {
                    continue;
                }
                match rng.starting_lba.checked_add(u64::from(rng.num_blocks)) {
                    Some(end) if end <= num_blocks => {}
                    _ => return Err(lba_out_of_range()),
                }
                ranges[n] = (rng.starting_lba, rng.num_blocks);
                n += 1;
            }
        }
        if n == 0 {
            return Ok(Exec::Done);
        }
        for &(lba, nb) in &ranges[..n] {
            self.submit_more(slot, idx, IoOp::Deallocate, lba, nb)?;
        }
        Ok(Exec::Pending)
    }
}
