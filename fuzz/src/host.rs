//! A real target (one subsystem, a RAM namespace) behind real NVMe/TCP connections
//! (`lightpool_transport_tcp::Conn` over [`Mem`]), and a host that drives them: it
//! sends what a target input says, answers R2Ts with H2CData as a host would, and
//! checks every PDU the target sends.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use lightpool_bdev_ram::MallocBdev;
use lightpool_dma::{DmaPool, HugePages, PoolOptions};
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::nvme::{reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET};
use lightpool_spec::tcp::{
    self as spec, flags, CommonHeader, DataHeader, IcReq, IcResp, PduType, R2t, Role, TermReq,
    COMMON_HEADER_SIZE, MAX_HEADER_BUF,
};
use lightpool_transport_tcp::Conn;

use crate::Mem;

pub const NQN: &str = "nqn.2024-01.io.lightpool:fuzz";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:fuzz-host";
/// Polls without a byte moving after which a busy connection is taken to be spinning.
const MAX_POLLS: usize = 10_000;

/// The request buffers of every target of the process, made once: a target's own pool
/// (32 MiB, zeroed) made per input would cost more than the input.
fn buffers() -> Arc<DmaPool> {
    static POOL: OnceLock<Arc<DmaPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let opts = PoolOptions {
            buf_size: 32 * 1024,
            count: 128,
            cache_size: 32,
            hugepages: HugePages::Off,
        };
        DmaPool::new(&opts, None).expect("a pool of ordinary memory")
    })
    .clone()
}

/// A small target: one subsystem with one 64 KiB RAM namespace (512-byte blocks),
/// shallow queues, 8 KiB in-capsule data, 32 KiB transfers.
pub fn target() -> Arc<Target> {
    let opts = TargetOptions {
        max_queue_depth: 32,
        max_admin_queue_depth: 32,
        max_io_queues: 4,
        in_capsule_data_size: 8192,
        max_transfer_size: 32 * 1024,
        ..TargetOptions::default()
    };
    let t = Target::new(opts).expect("valid options");
    t.use_buffer_pool(buffers());
    let mut sc = SubsystemConfig::new(NQN);
    let bdev = MallocBdev::new("ram", 64 << 10, 512).expect("RAM bdev");
    sc.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev,
        nguid: None,
        uuid: None,
        anagrpid: None,
        num_blocks: None,
    });
    t.add_subsystem(sc).expect("valid subsystem");
    t
}

/// What the target sent, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    IcResp(IcResp),
    Resp(Cqe),
    Data { h: DataHeader, success: bool },
    R2t(R2t),
    Term(TermReq),
}

/// One connection, the host's end of it.
pub struct Host {
    pub conn: Conn<Mem>,
    /// The connection's stream, the host's handle on it.
    pub pipe: Mem,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Negotiated (ICResp seen): the digests apply from then on.
    pub ic_done: bool,
    pub maxh2cdata: u32,
    /// The target sent a TermReq, or closed.
    pub terminated: bool,
    /// CIDs of commands sent and not answered yet.
    pub outstanding: HashSet<u16>,
    /// Per CID, the bytes of write data the command asked for (what R2Ts may ask).
    pub write_len: HashMap<u16, u32>,
    /// The host knows what it sent (commands with CIDs of its own): answers are
    /// checked against it. Off for raw byte streams.
    pub track: bool,
}

impl Host {
    pub fn new(t: &Arc<Target>, chunks: &[u8], hdgst: bool, ddgst: bool) -> Host {
        let pipe = Mem::new(chunks);
        Host {
            conn: Conn::new(pipe.clone(), t.clone(), "fuzz".into(), 0),
            pipe,
            hdgst,
            ddgst,
            ic_done: false,
            maxh2cdata: 0,
            terminated: false,
            outstanding: HashSet::new(),
            write_len: HashMap::new(),
            track: true,
        }
    }

    pub fn icreq(&self) -> Vec<u8> {
        IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: self.hdgst,
            ddgst: self.ddgst,
            maxr2t: 0,
        }
        .encode()
        .to_vec()
    }

    /// A command capsule carrying `data` in-capsule.
    pub fn capsule(&self, sqe: &Sqe, data: &[u8]) -> Vec<u8> {
        let mut hdr = [0u8; MAX_HEADER_BUF];
        let n = spec::encode_capsule_cmd_header(
            sqe,
            self.hdgst,
            self.ddgst,
            data.len() as u32,
            0,
            &mut hdr,
        );
        let mut v = hdr[..n].to_vec();
        if !data.is_empty() {
            v.extend_from_slice(data);
            if self.ddgst {
                v.extend_from_slice(&spec::digest_bytes(spec::crc32c(data)));
            }
        }
        v
    }

    pub fn h2c(&self, cid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) -> Vec<u8> {
        let mut hdr = [0u8; MAX_HEADER_BUF];
        let h = DataHeader {
            cccid: cid,
            ttag,
            datao,
            datal: data.len() as u32,
        };
        let n = spec::encode_h2c_data_header(&h, last, self.hdgst, self.ddgst, 0, &mut hdr);
        let mut v = hdr[..n].to_vec();
        v.extend_from_slice(data);
        if self.ddgst {
            v.extend_from_slice(&spec::digest_bytes(spec::crc32c(data)));
        }
        v
    }

    pub fn connect_capsule(&self, cid: u16, qid: u16, cntlid: u16) -> Vec<u8> {
        let mut sqe = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize: 15,
            cattr: 0,
            kato: if qid == 0 { 30_000 } else { 0 },
        }
        .to_sqe(cid);
        sqe.dptr = SglDescriptor {
            address: 0,
            length: 1024,
            id: SGL_DATA_BLOCK_OFFSET,
        }
        .to_bytes();
        let data = ConnectData::new([7; 16], cntlid, NQN, HOSTNQN).to_bytes();
        self.capsule(&sqe, &data)
    }

    pub fn enable_capsule(&self, cid: u16) -> Vec<u8> {
        let sqe = PropertyCommand {
            size8: false,
            offset: reg::CC,
            value: 0x0046_0001,
        }
        .to_set_sqe(cid);
        self.capsule(&sqe, &[])
    }

    /// Feeds `bytes`, polls until the connection is quiet, checks and returns what the
    /// target sent since the last call. R2Ts are answered with H2CData (pattern
    /// bytes) when `answer_r2t`.
    pub fn send(&mut self, bytes: &[u8], answer_r2t: bool) -> Vec<Out> {
        self.conn_input(bytes);
        let mut all = Vec::new();
        loop {
            self.poll_quiet();
            let out = self.take_out();
            let mut reply = Vec::new();
            for o in &out {
                if let (Out::R2t(r), true) = (o, answer_r2t) {
                    reply.extend(self.answer(r));
                }
            }
            all.extend(out);
            if reply.is_empty() || self.terminated {
                return all;
            }
            self.conn_input(&reply);
        }
    }

    fn conn_input(&mut self, bytes: &[u8]) {
        self.pipe.pipe().input.extend(bytes);
    }

    /// Bytes taken from the input and given to the output so far: what moves.
    fn progress(&self) -> (usize, usize) {
        let p = self.pipe.pipe();
        (p.input.len(), p.out.len())
    }

    /// Polls until nothing happens; a connection that keeps reporting work while no
    /// byte moves in or out for many polls is spinning. (A slow reader may take many
    /// polls to drain a large response: that is progress.)
    ///
    /// The clock stands still for the loop (one reading): a reading per poll was a
    /// tenth of each execution, and no timer of the connection is due within it.
    pub fn poll_quiet(&mut self) {
        let mut still = 0;
        let mut last = self.progress();
        let now = Instant::now();
        while still < MAX_POLLS {
            let w = self.conn.poll(now);
            if self.conn.is_closed() {
                self.terminated = true;
                return;
            }
            if w == 0 && self.pipe.pipe().input.is_empty() && !self.conn.has_pending_work() {
                return;
            }
            let now = self.progress();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        panic!("the connection is still busy after {MAX_POLLS} polls without progress");
    }

    /// The peer closes: the connection must close (after what it has to send).
    pub fn hang_up(&mut self) {
        self.pipe.pipe().eof = true;
        let mut still = 0;
        let mut last = self.progress();
        let now = Instant::now();
        while still < MAX_POLLS {
            self.conn.poll(now);
            if self.conn.is_closed() {
                let _ = self.take_out();
                return;
            }
            let now = self.progress();
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
        panic!("the connection did not close after the peer hung up");
    }

    /// H2CData for an R2T: within what the command asked for (checked), split at
    /// MAXH2CDATA.
    fn answer(&mut self, r: &R2t) -> Vec<u8> {
        if !self.track {
            return Vec::new();
        }
        let asked = *self
            .write_len
            .get(&r.cccid)
            .unwrap_or_else(|| panic!("an R2T for CID {} that asked for no data", r.cccid));
        assert!(r.r2tl > 0, "an R2T for no bytes: {r:?}");
        assert!(
            u64::from(r.r2to) + u64::from(r.r2tl) <= u64::from(asked),
            "an R2T beyond the command's data: {r:?}, the command has {asked}"
        );
        let mut v = Vec::new();
        let step = self.maxh2cdata.max(1);
        let mut off = 0;
        while off < r.r2tl {
            let n = step.min(r.r2tl - off);
            let data: Vec<u8> = (0..n).map(|i| (i as u8) ^ 0x5A).collect();
            v.extend(self.h2c(r.cccid, r.ttag, r.r2to + off, &data, off + n == r.r2tl));
            off += n;
        }
        v
    }

    /// Parses and checks what the target sent since last time: whole PDUs only, each a
    /// controller's, valid for a host to receive, digests right.
    fn take_out(&mut self) -> Vec<Out> {
        let all = std::mem::take(&mut self.pipe.pipe().out);
        let mut b = &all[..];
        let mut v = Vec::new();
        while b.len() >= COMMON_HEADER_SIZE {
            let ch = CommonHeader::parse(b[..COMMON_HEADER_SIZE].try_into().expect("8 bytes"));
            let (hd, dd) = if self.ic_done {
                (self.hdgst, self.ddgst)
            } else {
                (false, false)
            };
            let t = spec::validate_header_for(Role::Host, &ch, hd, dd, u32::MAX, u32::MAX)
                .unwrap_or_else(|e| panic!("the target sent an invalid header {ch:?}: {e:?}"));
            let plen = ch.plen as usize;
            assert!(b.len() >= plen, "a truncated PDU from the target: {ch:?}");
            let p = &b[..plen];
            if hd && t.digests_apply() {
                let hl = usize::from(ch.hlen);
                assert!(
                    spec::header_digest_ok(&p[..hl], p[hl..hl + 4].try_into().expect("4")),
                    "a bad header digest from the target"
                );
            }
            v.push(match t {
                PduType::IcResp => {
                    assert!(!self.ic_done, "a second ICResp");
                    let r = IcResp::parse(p.try_into().expect("128 bytes"));
                    if self.track {
                        assert_eq!((r.hdgst, r.ddgst), (self.hdgst, self.ddgst));
                    } else {
                        // A raw stream asked for what it asked for.
                        (self.hdgst, self.ddgst) = (r.hdgst, r.ddgst);
                    }
                    self.ic_done = true;
                    self.maxh2cdata = r.maxh2cdata;
                    Out::IcResp(r)
                }
                PduType::CapsuleResp => {
                    let c = spec::capsule_resp_cqe(p[..24].try_into().expect("24 bytes"));
                    self.answered(c.cid);
                    Out::Resp(c)
                }
                PduType::R2T => {
                    let r = R2t::parse(p);
                    assert!(
                        !self.track || self.outstanding.contains(&r.cccid),
                        "an R2T for CID {} not outstanding",
                        r.cccid
                    );
                    Out::R2t(r)
                }
                PduType::C2HTermReq => {
                    self.terminated = true;
                    Out::Term(TermReq::parse(p))
                }
                PduType::C2HData => {
                    let h = DataHeader::parse(p);
                    assert!(
                        h.check_len(&ch).is_ok(),
                        "C2HData DATAL disagrees with PLEN"
                    );
                    assert!(
                        !self.track || self.outstanding.contains(&h.cccid),
                        "C2HData for CID {} not outstanding",
                        h.cccid
                    );
                    let start = usize::from(ch.pdo);
                    let data = &p[start..start + h.datal as usize];
                    if dd {
                        let d: [u8; 4] = p[start + data.len()..][..4].try_into().expect("4");
                        assert_eq!(
                            spec::digest_bytes(spec::crc32c(data)),
                            d,
                            "a bad data digest"
                        );
                    }
                    let success = ch.flags & flags::DATA_SUCCESS != 0;
                    if success {
                        assert!(ch.flags & flags::DATA_LAST != 0, "SUCCESS without LAST_PDU");
                        self.answered(h.cccid);
                    }
                    Out::Data { h, success }
                }
                other => panic!("the target sent a {other:?}"),
            });
            b = &b[plen..];
        }
        assert!(
            b.is_empty(),
            "the target sent a partial PDU: {} bytes",
            b.len()
        );
        v
    }

    fn answered(&mut self, cid: u16) {
        if self.track && !self.terminated {
            assert!(
                self.outstanding.remove(&cid),
                "an answer to CID {cid}, which is not outstanding"
            );
        }
    }
}

/// An admin queue connected and enabled (CC.EN = 1), and its controller ID. The set-up
/// moves whole PDUs; what follows moves in `chunks`' sizes (the same set-up cut anywhere
/// is the first byte's fuzzing, and cost most of each execution).
pub fn admin(t: &Arc<Target>, chunks: &[u8], hdgst: bool, ddgst: bool) -> (Host, u16) {
    let mut h = Host::new(t, &[], hdgst, ddgst);
    let ic = h.icreq();
    h.send(&ic, false);
    assert!(h.ic_done, "no ICResp");
    h.outstanding.insert(0xFFF0);
    let c = h.connect_capsule(0xFFF0, 0, CNTLID_DYNAMIC);
    let out = h.send(&c, false);
    let cntlid = match out.as_slice() {
        [Out::Resp(c)] if c.status.is_success() => c.dw0 as u16,
        other => panic!("admin connect: {other:?}"),
    };
    h.outstanding.insert(0xFFF1);
    let e = h.enable_capsule(0xFFF1);
    let out = h.send(&e, false);
    assert!(
        matches!(out.as_slice(), [Out::Resp(c)] if c.status.is_success()),
        "enable: {out:?}"
    );
    h.pipe.set_chunks(chunks);
    (h, cntlid)
}

/// An I/O queue (QID 1) of controller `cntlid`; its set-up as [`admin`]'s.
pub fn io_queue(t: &Arc<Target>, chunks: &[u8], hdgst: bool, ddgst: bool, cntlid: u16) -> Host {
    let mut h = Host::new(t, &[], hdgst, ddgst);
    let ic = h.icreq();
    h.send(&ic, false);
    h.outstanding.insert(0xFFF0);
    let c = h.connect_capsule(0xFFF0, 1, cntlid);
    let out = h.send(&c, false);
    assert!(
        matches!(out.as_slice(), [Out::Resp(c)] if c.status.is_success()),
        "I/O connect: {out:?}"
    );
    h.pipe.set_chunks(chunks);
    h
}
