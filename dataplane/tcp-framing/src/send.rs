//! PDU assembly onto the send queue: each function encodes a header with
//! `lightpool_spec`'s encoders into the ring and references the payload in the owner's
//! buffers (by slot and offset, never copied), with its data digest after it when data
//! digests are on.

use lightpool_spec::nvme::{Cqe, Sqe};
use lightpool_spec::tcp::{
    self as spec, DataHeader, PduType, R2t, TermError, TERM_REQ_HLEN, TERM_REQ_MAX_DATA,
};

use crate::offload::{Digest, DigestEngine};
use crate::TxQueue;

/// HLEN of a response capsule, an R2T and a data PDU (what their header digest covers).
const SHORT_HLEN: usize = 24;

impl TxQueue {
    /// The data digest of `data`, counted.
    #[inline]
    fn data_digest(&mut self, data: &[u8]) -> [u8; spec::DIGEST_SIZE] {
        self.counters.digest(data.len());
        Digest::append(0, data).to_le_bytes()
    }

    /// A header digest over `hlen` bytes (computed by the header's encoder), counted.
    #[inline(always)]
    fn count_hdgst(&mut self, hdgst: bool, hlen: usize) {
        if hdgst {
            self.counters.digest(hlen);
        }
    }
}

/// Room for a command capsule or data PDU header with its digest, padded to the
/// largest PDA (31: 128-byte alignment; both headers end before 128 with the digest).
const HEADER_ROOM: usize = 128;
/// A response capsule or R2T with its header digest.
const SHORT_PDU: usize = 28;

/// What ICReq/ICResp settled that shapes the PDUs this end sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendParams {
    pub hdgst: bool,
    pub ddgst: bool,
    /// The peer's PDU data alignment (HPDA for a controller's C2HData, CPDA for a
    /// host's capsules and H2CData).
    pub pda: u8,
}

impl TxQueue {
    /// A response capsule.
    #[inline]
    pub fn push_resp(&mut self, cqe: &Cqe, hdgst: bool) {
        self.count_hdgst(hdgst, SHORT_HLEN);
        self.push_encoded(SHORT_PDU, |b| {
            spec::encode_capsule_resp(cqe, hdgst, b.try_into().expect("28 bytes"))
        });
    }

    /// An R2T.
    #[inline]
    pub fn push_r2t(&mut self, r: &R2t, hdgst: bool) {
        self.count_hdgst(hdgst, SHORT_HLEN);
        self.push_encoded(SHORT_PDU, |b| {
            spec::encode_r2t(r, hdgst, b.try_into().expect("28 bytes"))
        });
    }

    /// A TermReq of type `t` (H2CTermReq or C2HTermReq) echoing up to 128 bytes of the
    /// offending header.
    #[inline]
    pub fn push_term_req(&mut self, t: PduType, e: TermError, header: &[u8]) {
        self.push_encoded(TERM_REQ_HLEN + TERM_REQ_MAX_DATA, |b| {
            spec::encode_term_req(t, e.fes, e.fei, header, b)
        });
    }

    /// A C2HData PDU carrying `h.datal` bytes of `slot`'s data from `off`. `bytes`
    /// gives those bytes; it is called only when data digests are on.
    #[inline]
    pub fn push_c2h_data<'a>(
        &mut self,
        h: &DataHeader,
        last: bool,
        success: bool,
        p: SendParams,
        (slot, off): (u16, u32),
        bytes: impl FnOnce() -> &'a [u8],
    ) {
        self.count_hdgst(p.hdgst, SHORT_HLEN);
        self.push_encoded(HEADER_ROOM, |b| {
            spec::encode_c2h_data_header(h, last, success, p.hdgst, p.ddgst, p.pda, b)
        });
        self.push_data(slot, off, h.datal);
        if p.ddgst && h.datal > 0 {
            let d = self.data_digest(bytes());
            self.push_bytes(&d);
        }
    }

    /// An H2CData PDU carrying `h.datal` bytes of `slot`'s data from `h.datao`;
    /// `data` is the slot's data (read only for the digest).
    #[inline]
    pub fn push_h2c_data(
        &mut self,
        h: &DataHeader,
        last: bool,
        p: SendParams,
        slot: u16,
        data: &[u8],
    ) {
        self.count_hdgst(p.hdgst, SHORT_HLEN);
        self.push_encoded(HEADER_ROOM, |b| {
            spec::encode_h2c_data_header(h, last, p.hdgst, p.ddgst, p.pda, b)
        });
        self.push_data(slot, h.datao, h.datal);
        if p.ddgst && h.datal > 0 {
            let (a, b) = (h.datao as usize, (h.datao + h.datal) as usize);
            let d = self.data_digest(&data[a..b]);
            self.push_bytes(&d);
        }
    }

    /// The H2CData PDUs an R2T asks for, each at most `maxh2cdata` bytes, from `slot`'s
    /// `data`. Returns how many were queued.
    pub fn push_h2c_for_r2t(
        &mut self,
        r: &R2t,
        maxh2cdata: u32,
        p: SendParams,
        slot: u16,
        data: &[u8],
    ) -> u32 {
        let end = r.r2to + r.r2tl;
        let mut off = r.r2to;
        let mut pdus = 0;
        while off < end {
            let n = (end - off).min(maxh2cdata.max(1));
            let h = DataHeader {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: off,
                datal: n,
            };
            self.push_h2c_data(&h, off + n == end, p, slot, data);
            off += n;
            pdus += 1;
        }
        pdus
    }

    /// A command capsule; with `in_capsule` = (slot, its data), that data travels in
    /// the capsule (referenced, from offset 0).
    #[inline]
    pub fn push_capsule(&mut self, sqe: &Sqe, p: SendParams, in_capsule: Option<(u16, &[u8])>) {
        let len = in_capsule.map_or(0, |(_, d)| d.len() as u32);
        self.count_hdgst(p.hdgst, spec::CAPSULE_CMD_HLEN);
        self.push_encoded(HEADER_ROOM, |b| {
            spec::encode_capsule_cmd_header(sqe, p.hdgst, p.ddgst, len, p.pda, b)
        });
        if let Some((slot, data)) = in_capsule {
            self.push_data(slot, 0, len);
            if p.ddgst && len > 0 {
                let d = self.data_digest(data);
                self.push_bytes(&d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use lightpool_spec::nvme::Sqe;
    use lightpool_spec::status::Status;
    use lightpool_spec::tcp::{flags, CommonHeader};

    use super::*;
    use crate::tx::{Shared, MAX_IOV};

    fn bytes_of(q: &TxQueue, data: &[u8]) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let shared = Shared(data);
        let n = q.gather(&mut iov, &shared);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn r2t_answer_is_split_at_maxh2cdata_with_digests() {
        let data: Vec<u8> = (0..20480u32).map(|i| (i * 7) as u8).collect();
        let p = SendParams {
            hdgst: true,
            ddgst: true,
            pda: 0,
        };
        let mut q = TxQueue::new(8);
        let r = R2t {
            cccid: 3,
            ttag: 9,
            r2to: 0,
            r2tl: 20480,
        };
        assert_eq!(q.push_h2c_for_r2t(&r, 8192, p, 0, &data), 3);
        // Three header digests over 24 bytes, three data digests over all the data.
        let c = q.offload();
        assert_eq!((c.digests, c.digest_bytes), (6, 3 * 24 + 20480));
        assert!(
            c.placed_bytes.iter().all(|&b| b == 0),
            "sending places nothing"
        );
        let w = bytes_of(&q, &data);
        let mut at = 0;
        let mut got = Vec::new();
        for (i, want) in [8192u32, 8192, 4096].into_iter().enumerate() {
            let ch = CommonHeader::parse(w[at..at + 8].try_into().expect("8"));
            assert_eq!(ch.pdu_type, PduType::H2CData as u8);
            assert_eq!(ch.flags & flags::DATA_LAST != 0, i == 2);
            let h = DataHeader::parse(&w[at..]);
            assert_eq!(
                (h.cccid, h.ttag, h.datao, h.datal),
                (3, 9, i as u32 * 8192, want)
            );
            assert!(spec::header_digest_ok(
                &w[at..at + 24],
                w[at + 24..at + 28].try_into().expect("4")
            ));
            let pdo = usize::from(ch.pdo);
            let d = &w[at + pdo..at + pdo + want as usize];
            assert_eq!(
                &w[at + pdo + d.len()..at + pdo + d.len() + 4],
                &spec::data_digest(d)
            );
            got.extend_from_slice(d);
            at += ch.plen as usize;
        }
        assert_eq!(at, w.len());
        assert_eq!(got, data);
    }

    #[test]
    fn c2h_data_and_response_digest_only_when_on() {
        let data = [5u8; 512];
        for ddgst in [false, true] {
            let p = SendParams {
                hdgst: false,
                ddgst,
                pda: 0,
            };
            let mut q = TxQueue::new(4);
            let h = DataHeader {
                cccid: 1,
                ttag: 0,
                datao: 0,
                datal: 512,
            };
            let mut asked = false;
            q.push_c2h_data(&h, true, false, p, (0, 0), || {
                asked = true;
                &data[..]
            });
            assert_eq!(asked, ddgst, "digest bytes asked for only when on");
            q.push_resp(&Cqe::new(1, Status::SUCCESS), false);
            let w = bytes_of(&q, &data);
            let dg = if ddgst { 4 } else { 0 };
            assert_eq!(w.len(), 24 + 512 + dg + 24);
            assert_eq!(&w[24..536], &data[..]);
            let resp = spec::capsule_resp_cqe(w[536 + dg..].try_into().expect("24"));
            assert_eq!(resp.cid, 1);
        }
    }

    #[test]
    fn capsule_with_data_and_term_req() {
        let data = [1u8; 100];
        let p = SendParams {
            hdgst: false,
            ddgst: true,
            pda: 0,
        };
        let mut q = TxQueue::new(4);
        let sqe = Sqe {
            cid: 4,
            ..Sqe::default()
        };
        q.push_capsule(&sqe, p, Some((0, &data)));
        q.push_capsule(&sqe, p, None);
        let w = bytes_of(&q, &data);
        assert_eq!(w.len(), 72 + 100 + 4 + 72);
        assert_eq!(&w[172..176], &spec::data_digest(&data));
        let mut q = TxQueue::new(1);
        let e = TermError::invalid_field(2);
        q.push_term_req(PduType::C2HTermReq, e, &[0xAA; 200]);
        let w = bytes_of(&q, &[]);
        assert_eq!(w.len(), TERM_REQ_HLEN + TERM_REQ_MAX_DATA);
        let tr = spec::TermReq::parse(&w);
        assert_eq!((tr.fes, tr.fei), (e.fes, e.fei));
    }
}
