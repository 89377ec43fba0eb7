//! A small blocking NVMe/TCP host for tests that need to talk to the target from the
//! host side and check every byte (the hot-upgrade tests): connect an admin queue and
//! I/O queues, write and read back batches of blocks with in-capsule data.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::identify::IdentifyController;
use lightpool_spec::nvme::{
    admin_opcode, io_opcode, reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::tcp::{self as pdu, CommonHeader, DataHeader, IcReq, PduType};

/// One queue (admin or I/O) on its own TCP connection.
pub struct HostQueue {
    s: TcpStream,
    next_cid: u16,
}

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:lightpool-e2e-host";

impl HostQueue {
    fn open(addr: SocketAddr) -> Result<HostQueue> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        let mut q = HostQueue { s, next_cid: 1 };
        q.s.write_all(
            &IcReq {
                pfv: 0,
                hpda: 0,
                hdgst: false,
                ddgst: false,
                maxr2t: 0,
            }
            .encode(),
        )?;
        let (ch, _) = q.recv_pdu()?;
        if ch.pdu_type != PduType::IcResp as u8 {
            bail!("expected ICResp, got PDU type {:#x}", ch.pdu_type);
        }
        Ok(q)
    }

    fn cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        c
    }

    fn send_capsule(&mut self, sqe: &Sqe, data: &[u8]) -> Result<()> {
        let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
        let n = pdu::encode_capsule_cmd_header(sqe, false, false, data.len() as u32, 0, &mut hdr);
        let mut v = hdr[..n].to_vec();
        v.extend_from_slice(data);
        self.s.write_all(&v)?;
        Ok(())
    }

    fn recv_pdu(&mut self) -> Result<(CommonHeader, Vec<u8>)> {
        let mut ch = [0u8; 8];
        self.s
            .read_exact(&mut ch)
            .context("the target closed the connection or timed out")?;
        let c = CommonHeader::parse(&ch);
        if c.plen < 8 || c.plen > 16 << 20 {
            bail!("implausible PDU length {}", c.plen);
        }
        let mut p = ch.to_vec();
        p.resize(c.plen as usize, 0);
        self.s.read_exact(&mut p[8..])?;
        if c.pdu_type == PduType::C2HTermReq as u8 {
            bail!(
                "the target terminated the connection: {:?}",
                pdu::TermReq::parse(&p)
            );
        }
        Ok((c, p))
    }

    /// Next response; C2H data before it is appended to `data`.
    fn recv_resp(&mut self, data: &mut Vec<u8>) -> Result<Cqe> {
        loop {
            let (c, p) = self.recv_pdu()?;
            match PduType::try_from(c.pdu_type) {
                Ok(PduType::CapsuleResp) => {
                    return Ok(pdu::capsule_resp_cqe(p[..24].try_into().expect("24 bytes")))
                }
                Ok(PduType::C2HData) => {
                    let h = DataHeader::parse(&p);
                    let start = usize::from(c.pdo);
                    data.extend_from_slice(&p[start..start + h.datal as usize]);
                }
                _ => bail!("unexpected PDU type {:#x}", c.pdu_type),
            }
        }
    }

    fn connect(&mut self, subnqn: &str, qid: u16, cntlid: u16, sqsize: u16) -> Result<u16> {
        let mut sqe = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize,
            cattr: 0,
            kato: if qid == 0 { 30_000 } else { 0 },
        }
        .to_sqe(self.cid());
        sqe.dptr = SglDescriptor {
            address: 0,
            length: 1024,
            id: SGL_DATA_BLOCK_OFFSET,
        }
        .to_bytes();
        let data = ConnectData::new([0x42; 16], cntlid, subnqn, HOSTNQN).to_bytes();
        self.send_capsule(&sqe, &data)?;
        let c = self.recv_resp(&mut Vec::new())?;
        if !c.status.is_success() {
            bail!("connect (qid {qid}) failed: {}", c.status);
        }
        Ok(c.dw0 as u16)
    }
}

/// A controller: its admin queue and I/O queues.
pub struct HostController {
    pub admin: HostQueue,
    pub io: Vec<HostQueue>,
    pub cntlid: u16,
}

impl HostController {
    pub fn connect(addr: SocketAddr, subnqn: &str, io_queues: usize) -> Result<HostController> {
        let mut admin = HostQueue::open(addr)?;
        let cntlid = admin.connect(subnqn, 0, CNTLID_DYNAMIC, 31)?;
        let cid = admin.cid();
        admin.send_capsule(
            &PropertyCommand {
                size8: false,
                offset: reg::CC,
                value: 0x0046_0001,
            }
            .to_set_sqe(cid),
            &[],
        )?;
        let c = admin.recv_resp(&mut Vec::new())?;
        if !c.status.is_success() {
            bail!("enable failed: {}", c.status);
        }
        let mut io = Vec::new();
        for qid in 1..=io_queues as u16 {
            let mut q = HostQueue::open(addr)?;
            q.connect(subnqn, qid, cntlid, 127)?;
            io.push(q);
        }
        Ok(HostController { admin, io, cntlid })
    }

    /// Identify Controller.
    pub fn identify(&mut self) -> Result<IdentifyController> {
        let cid = self.admin.cid();
        let mut sqe = Sqe {
            opcode: admin_opcode::IDENTIFY,
            cid,
            cdw10: 1,
            ..Default::default()
        };
        sqe.dptr = SglDescriptor {
            address: 0,
            length: 4096,
            id: SGL_TRANSPORT_DATA_BLOCK,
        }
        .to_bytes();
        self.admin.send_capsule(&sqe, &[])?;
        let mut data = Vec::new();
        let c = self.admin.recv_resp(&mut data)?;
        if !c.status.is_success() || data.len() != 4096 {
            bail!("identify failed: {} ({} bytes)", c.status, data.len());
        }
        Ok(IdentifyController::parse(
            data.as_slice().try_into().expect("4096 bytes"),
        ))
    }

    /// Keep-alive on the admin queue.
    pub fn keep_alive(&mut self) -> Result<()> {
        let cid = self.admin.cid();
        self.admin.send_capsule(
            &Sqe {
                opcode: admin_opcode::KEEP_ALIVE,
                cid,
                ..Default::default()
            },
            &[],
        )?;
        let c = self.admin.recv_resp(&mut Vec::new())?;
        if !c.status.is_success() {
            bail!("keep-alive failed: {}", c.status);
        }
        Ok(())
    }
}

fn rw(opcode: u8, cid: u16, lba: u64, blocks: u32, sgl: u8, len: u32) -> Sqe {
    rw_ns(1, opcode, cid, lba, blocks, sgl, len)
}

fn rw_ns(nsid: u32, opcode: u8, cid: u16, lba: u64, blocks: u32, sgl: u8, len: u32) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        cid,
        nsid,
        cdw10: lba as u32,
        cdw11: (lba >> 32) as u32,
        cdw12: blocks - 1,
        ..Default::default()
    };
    sqe.dptr = SglDescriptor {
        address: 0,
        length: len,
        id: sgl,
    }
    .to_bytes();
    sqe
}

/// The content a test writes to `lba` in round `gen`.
pub fn pattern(lba: u64, gen: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x =
        lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

impl HostQueue {
    /// Write `lbas.len()` blocks of `bs` bytes (pipelined: all sent, then all answered),
    /// then read them back the same way and compare. Returns the number of blocks
    /// verified.
    pub fn write_verify_batch(&mut self, lbas: &[u64], bs: u32, gen: u64) -> Result<usize> {
        let blocks = bs / 512;
        let mut out = Vec::new();
        for &lba in lbas {
            let cid = self.cid();
            let data = pattern(lba, gen, bs as usize);
            let sqe = rw(
                io_opcode::WRITE,
                cid,
                lba,
                blocks,
                SGL_DATA_BLOCK_OFFSET,
                bs,
            );
            let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
            let n = pdu::encode_capsule_cmd_header(&sqe, false, false, bs, 0, &mut hdr);
            out.extend_from_slice(&hdr[..n]);
            out.extend_from_slice(&data);
        }
        self.s.write_all(&out)?;
        for _ in lbas {
            let c = self.recv_resp(&mut Vec::new())?;
            if !c.status.is_success() {
                bail!("write failed: {}", c.status);
            }
        }
        self.read_verify_batch(lbas, bs, gen)
    }

    /// Read `lbas` back (pipelined) and compare with what round `gen` wrote.
    pub fn read_verify_batch(&mut self, lbas: &[u64], bs: u32, gen: u64) -> Result<usize> {
        let blocks = bs / 512;
        let mut out = Vec::new();
        let mut cids = Vec::new();
        for &lba in lbas {
            let cid = self.cid();
            cids.push((cid, lba));
            let sqe = rw(
                io_opcode::READ,
                cid,
                lba,
                blocks,
                SGL_TRANSPORT_DATA_BLOCK,
                bs,
            );
            let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
            let n = pdu::encode_capsule_cmd_header(&sqe, false, false, 0, 0, &mut hdr);
            out.extend_from_slice(&hdr[..n]);
        }
        self.s.write_all(&out)?;
        // Responses may complete in any order: collect data by CID.
        let mut got = std::collections::HashMap::new();
        let mut pending_data: std::collections::HashMap<u16, Vec<u8>> =
            std::collections::HashMap::new();
        while got.len() < lbas.len() {
            let (c, p) = self.recv_pdu()?;
            match PduType::try_from(c.pdu_type) {
                Ok(PduType::C2HData) => {
                    let h = DataHeader::parse(&p);
                    let start = usize::from(c.pdo);
                    pending_data
                        .entry(h.cccid)
                        .or_default()
                        .extend_from_slice(&p[start..start + h.datal as usize]);
                }
                Ok(PduType::CapsuleResp) => {
                    let cqe = pdu::capsule_resp_cqe(p[..24].try_into().expect("24 bytes"));
                    if !cqe.status.is_success() {
                        bail!("read failed: {}", cqe.status);
                    }
                    got.insert(cqe.cid, pending_data.remove(&cqe.cid).unwrap_or_default());
                }
                _ => bail!("unexpected PDU type {:#x}", c.pdu_type),
            }
        }
        for (cid, lba) in cids {
            let data = got
                .get(&cid)
                .ok_or_else(|| anyhow!("no answer for cid {cid}"))?;
            if *data != pattern(lba, gen, bs as usize) {
                bail!("LBA {lba}: data read back differs from what was written in round {gen}");
            }
        }
        Ok(lbas.len())
    }
}

impl HostQueue {
    /// One command on namespace `nsid` at `lba` for `blocks` blocks of `bs` bytes: a
    /// write (or other command carrying data) of `data` in the capsule when given,
    /// else a read into a transport data block. Its status, and the data read (empty
    /// when it failed).
    pub fn command(
        &mut self,
        nsid: u32,
        opcode: u8,
        lba: u64,
        blocks: u32,
        bs: u32,
        data: Option<&[u8]>,
    ) -> Result<(lightpool_spec::status::Status, Vec<u8>)> {
        let cid = self.cid();
        let (sgl, len) = match data {
            Some(d) => (SGL_DATA_BLOCK_OFFSET, d.len() as u32),
            None => (SGL_TRANSPORT_DATA_BLOCK, blocks * bs),
        };
        let sqe = rw_ns(nsid, opcode, cid, lba, blocks, sgl, len);
        self.send_capsule(&sqe, data.unwrap_or(&[]))?;
        let mut got = Vec::new();
        let c = self.recv_resp(&mut got)?;
        if c.cid != cid {
            bail!("answer for command {} while waiting for {cid}", c.cid);
        }
        Ok((c.status, got))
    }

    /// Sends `count` reads of `blocks` blocks of `bs` bytes each, from `lba` on, without
    /// waiting for them; [`HostQueue::recv_reads`] collects them.
    pub fn send_reads(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u32,
        bs: u32,
        count: u32,
    ) -> Result<()> {
        for i in 0..u64::from(count) {
            let cid = self.cid();
            let sqe = rw_ns(
                nsid,
                io_opcode::READ,
                cid,
                lba + i * u64::from(blocks),
                blocks,
                SGL_TRANSPORT_DATA_BLOCK,
                blocks * bs,
            );
            self.send_capsule(&sqe, &[])?;
        }
        Ok(())
    }

    /// The answers of `count` commands sent before: how many succeeded, and the bytes
    /// of data that came with them.
    pub fn recv_reads(&mut self, count: u32) -> Result<(u32, usize)> {
        let (mut ok, mut bytes) = (0, 0);
        for _ in 0..count {
            let mut data = Vec::new();
            let c = self.recv_resp(&mut data)?;
            bytes += data.len();
            ok += u32::from(c.status.is_success());
        }
        Ok((ok, bytes))
    }

    /// Sends a write of `data` (`blocks` blocks of `bs` bytes at `lba`) whose data
    /// the target asks for with R2Ts (no data in the capsule); returns its CID.
    pub fn send_write_r2t(&mut self, nsid: u32, lba: u64, blocks: u32, bs: u32) -> Result<u16> {
        let cid = self.cid();
        let sqe = rw_ns(
            nsid,
            io_opcode::WRITE,
            cid,
            lba,
            blocks,
            SGL_TRANSPORT_DATA_BLOCK,
            blocks * bs,
        );
        self.send_capsule(&sqe, &[])?;
        Ok(cid)
    }

    /// A write of `data` through R2Ts: each R2T answered with one H2CData PDU of the
    /// bytes it asks for. The write's status.
    pub fn write_r2t(
        &mut self,
        nsid: u32,
        lba: u64,
        bs: u32,
        data: &[u8],
    ) -> Result<lightpool_spec::status::Status> {
        let blocks = (data.len() / bs as usize) as u32;
        let cid = self.send_write_r2t(nsid, lba, blocks, bs)?;
        loop {
            let (c, p) = self.recv_pdu()?;
            match PduType::try_from(c.pdu_type) {
                Ok(PduType::R2T) => {
                    let r = pdu::R2t::parse(&p);
                    let (off, len) = (r.r2to as usize, r.r2tl as usize);
                    if r.cccid != cid || off + len > data.len() {
                        bail!("R2T for command {} at {off}+{len}", r.cccid);
                    }
                    let h = DataHeader {
                        cccid: cid,
                        ttag: r.ttag,
                        datao: r.r2to,
                        datal: r.r2tl,
                    };
                    let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
                    let n = pdu::encode_h2c_data_header(&h, true, false, false, 0, &mut hdr);
                    let mut v = hdr[..n].to_vec();
                    v.extend_from_slice(&data[off..off + len]);
                    self.s.write_all(&v)?;
                }
                Ok(PduType::CapsuleResp) => {
                    let cqe = pdu::capsule_resp_cqe(p[..24].try_into().expect("24 bytes"));
                    if cqe.cid != cid {
                        bail!("answer for command {} while waiting for {cid}", cqe.cid);
                    }
                    return Ok(cqe.status);
                }
                _ => bail!("unexpected PDU type {:#x}", c.pdu_type),
            }
        }
    }

    /// Writes `pattern(lba, gen)` to each `(lba, gen)` of namespace `nsid`, one block of
    /// `bs` bytes each (pipelined: all sent, then all answered, in any order). Whether
    /// each succeeded, in order; an error when the connection fails (then which of them
    /// the target executed is unknown).
    pub fn write_blocks(&mut self, nsid: u32, blocks: &[(u64, u64)], bs: u32) -> Result<Vec<bool>> {
        let mut out = Vec::new();
        let mut cids = Vec::new();
        for &(lba, gen) in blocks {
            let cid = self.cid();
            cids.push(cid);
            let sqe = rw_ns(
                nsid,
                io_opcode::WRITE,
                cid,
                lba,
                1,
                SGL_DATA_BLOCK_OFFSET,
                bs,
            );
            let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
            let n = pdu::encode_capsule_cmd_header(&sqe, false, false, bs, 0, &mut hdr);
            out.extend_from_slice(&hdr[..n]);
            out.extend_from_slice(&pattern(lba, gen, bs as usize));
        }
        self.s.write_all(&out)?;
        let mut ok = std::collections::HashMap::new();
        while ok.len() < blocks.len() {
            let c = self.recv_resp(&mut Vec::new())?;
            ok.insert(c.cid, c.status.is_success());
        }
        Ok(cids
            .iter()
            .map(|c| ok.get(c).copied().unwrap_or(false))
            .collect())
    }

    /// Reads one block of `bs` bytes at each of `lbas` of namespace `nsid` (pipelined):
    /// the data of each, in order.
    pub fn read_blocks(&mut self, nsid: u32, lbas: &[u64], bs: u32) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut cids = Vec::new();
        for &lba in lbas {
            let cid = self.cid();
            cids.push(cid);
            let sqe = rw_ns(
                nsid,
                io_opcode::READ,
                cid,
                lba,
                1,
                SGL_TRANSPORT_DATA_BLOCK,
                bs,
            );
            let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
            let n = pdu::encode_capsule_cmd_header(&sqe, false, false, 0, 0, &mut hdr);
            out.extend_from_slice(&hdr[..n]);
        }
        self.s.write_all(&out)?;
        let mut got = std::collections::HashMap::new();
        let mut pending: std::collections::HashMap<u16, Vec<u8>> = std::collections::HashMap::new();
        while got.len() < lbas.len() {
            let (c, p) = self.recv_pdu()?;
            match PduType::try_from(c.pdu_type) {
                Ok(PduType::C2HData) => {
                    let h = DataHeader::parse(&p);
                    let start = usize::from(c.pdo);
                    pending
                        .entry(h.cccid)
                        .or_default()
                        .extend_from_slice(&p[start..start + h.datal as usize]);
                }
                Ok(PduType::CapsuleResp) => {
                    let cqe = pdu::capsule_resp_cqe(p[..24].try_into().expect("24 bytes"));
                    if !cqe.status.is_success() {
                        bail!("read failed: {}", cqe.status);
                    }
                    got.insert(cqe.cid, pending.remove(&cqe.cid).unwrap_or_default());
                }
                _ => bail!("unexpected PDU type {:#x}", c.pdu_type),
            }
        }
        cids.iter()
            .map(|c| {
                got.remove(c)
                    .ok_or_else(|| anyhow!("no answer for cid {c}"))
            })
            .collect()
    }
}
