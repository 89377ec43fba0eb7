//! A connection across a hot upgrade: quiescing it, exporting it (its queue record in
//! the state region holds most of it; the rest is serialized at pause time) and
//! rebuilding it in the next binary.

use std::time::Instant;

use lightpool_nvmf::region::objects::{QueuePause, RegionImage};
use lightpool_nvmf::region::{Region, RxPos};
use lightpool_nvmf::{NvmfQueue, Target, Xfer};
use lightpool_spec::tcp::{CommonHeader, PduType, COMMON_HEADER_SIZE, DIGEST_SIZE};

use super::{Conn, Params, Phase, Rx, Sink, Stream, TcpReq};

/// One connection as a hot upgrade carries it to the next binary, beside its queue's
/// record in the state region (queue identity, SQ head, slot states and command IDs,
/// and where the receive state machine stands): the negotiated parameters, the bytes
/// already read from the socket and not consumed, the pause-time part of the queue
/// (commands received and not finished, with their data) and each request's transport
/// state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnSnapshot {
    pub peer: String,
    params: Params,
    hdr: Vec<u8>,
    staged: Vec<u8>,
    queue: QueuePause,
    tr: Vec<(u16, TcpReq)>,
}

impl ConnSnapshot {
    /// The queue record this connection's state is in.
    pub fn queue_record(&self) -> u32 {
        self.queue.rec
    }

    /// Commands received and not finished that travel with it.
    pub fn commands(&self) -> usize {
        self.queue.slots.len()
    }
}

mod rxpos {
    pub const CH: u8 = 0;
    pub const HDR: u8 = 1;
    pub const PAD: u8 = 2;
    pub const DATA: u8 = 3;
    pub const DDGST: u8 = 4;
    pub const DEAD: u8 = 5;
    pub const SINK_CAPSULE: u8 = 0;
    pub const SINK_H2C: u8 = 1;
    pub const SINK_DISCARD: u8 = 2;
}

/// The receive state as the region records it.
fn rx_pos(state: &Rx, hdr_have: usize, staged: usize) -> RxPos {
    let mut p = RxPos {
        hdr_have: hdr_have as u16,
        staged: staged as u32,
        ..RxPos::default()
    };
    let sink_of = |p: &mut RxPos, sink: Sink| match sink {
        Sink::Capsule { slot } => {
            p.sink = rxpos::SINK_CAPSULE;
            p.slot = slot;
        }
        Sink::H2c { slot, end } => {
            p.sink = rxpos::SINK_H2C;
            p.slot = slot;
            p.end = end;
        }
        Sink::Discard => p.sink = rxpos::SINK_DISCARD,
    };
    match *state {
        Rx::Ch => p.kind = rxpos::CH,
        Rx::Hdr { .. } => p.kind = rxpos::HDR,
        Rx::Pad {
            left,
            sink,
            data,
            ddgst,
        } => {
            p.kind = rxpos::PAD;
            sink_of(&mut p, sink);
            p.left = left;
            p.data = data;
            p.ddgst = u8::from(ddgst);
        }
        Rx::Data {
            sink,
            off,
            left,
            ddgst,
            crc,
        } => {
            p.kind = rxpos::DATA;
            sink_of(&mut p, sink);
            p.off = off;
            p.left = left;
            p.ddgst = u8::from(ddgst);
            p.crc = crc;
        }
        Rx::Ddgst {
            sink,
            have,
            crc,
            digest,
        } => {
            p.kind = rxpos::DDGST;
            sink_of(&mut p, sink);
            p.have = have;
            p.crc = crc;
            p.digest = digest;
        }
        Rx::Dead => p.kind = rxpos::DEAD,
    }
    p
}

/// The receive state back from the region; `hdr` is the header bytes gathered so far.
fn rx_from_pos(p: &RxPos, hdr: &[u8]) -> Result<Rx, String> {
    let sink = || match p.sink {
        rxpos::SINK_CAPSULE => Ok(Sink::Capsule { slot: p.slot }),
        rxpos::SINK_H2C => Ok(Sink::H2c {
            slot: p.slot,
            end: p.end,
        }),
        rxpos::SINK_DISCARD => Ok(Sink::Discard),
        k => Err(format!("unknown receive sink {k}")),
    };
    Ok(match p.kind {
        rxpos::CH => Rx::Ch,
        rxpos::HDR => {
            let ch: &[u8; COMMON_HEADER_SIZE] = hdr
                .get(..COMMON_HEADER_SIZE)
                .and_then(|h| h.try_into().ok())
                .ok_or("a header in progress without its common header")?;
            let ch = CommonHeader::parse(ch);
            let t = PduType::try_from(ch.pdu_type).map_err(|_| "header of an unknown PDU type")?;
            Rx::Hdr { ch, t }
        }
        rxpos::PAD => Rx::Pad {
            left: p.left,
            sink: sink()?,
            data: p.data,
            ddgst: p.ddgst != 0,
        },
        rxpos::DATA => Rx::Data {
            sink: sink()?,
            off: p.off,
            left: p.left,
            ddgst: p.ddgst != 0,
            crc: p.crc,
        },
        rxpos::DDGST => {
            if usize::from(p.have) >= DIGEST_SIZE {
                return Err(format!("{} digest bytes gathered", p.have));
            }
            Rx::Ddgst {
                sink: sink()?,
                have: p.have,
                crc: p.crc,
                digest: p.digest,
            }
        }
        rxpos::DEAD => Rx::Dead,
        k => return Err(format!("unknown receive state {k}")),
    })
}

impl<S: Stream> Conn<S> {
    /// Stop starting commands (they are received and held); what runs finishes.
    pub fn quiesce(&mut self) {
        self.q.quiesce();
    }

    /// Start held commands and take new ones again.
    pub fn resume(&mut self, now: Instant) {
        self.q.resume(now);
    }

    /// Nothing running, nothing left to send, not closing: the state can be exported.
    pub fn is_drained(&self) -> bool {
        self.phase == Phase::Active && self.q.is_drained() && self.tx.is_empty()
    }

    /// Store where the receive state machine stands into the queue's record (plain
    /// stores, once per poll).
    #[inline]
    pub(super) fn publish_rx(&self) {
        if let Some(m) = self.q.shm() {
            m.set_rx(&rx_pos(
                &self.state,
                self.hdr_have,
                self.rx_end - self.rx_start,
            ));
        }
    }

    /// Export a drained connection: its queue record holds most of it; this is the rest.
    pub fn export(&self, now: Instant) -> Result<ConnSnapshot, lightpool_nvmf::NvmfError> {
        self.publish_rx();
        // Bytes of each request's buffer that hold data received so far.
        let receiving = match self.state {
            Rx::Data {
                sink: Sink::Capsule { slot } | Sink::H2c { slot, .. },
                off,
                ..
            } => Some((slot, off)),
            Rx::Ddgst {
                sink: Sink::Capsule { slot },
                ..
            } => Some((slot, u32::MAX)),
            _ => None,
        };
        let queue = self.q.export_pause(now, |slot, r| {
            let full = match r.xfer {
                Xfer::H2C { len, .. } => len as usize,
                _ => 0,
            };
            if let Some((s, off)) = receiving {
                if s == slot {
                    return if off == u32::MAX { full } else { off as usize };
                }
            }
            if r.tr.awaiting_h2c {
                r.tr.h2c_received as usize
            } else {
                full
            }
        })?;
        let tr = queue
            .slots
            .iter()
            .map(|ss| (ss.index, self.q.req_ref(ss.index).tr))
            .collect();
        Ok(ConnSnapshot {
            peer: self.peer.clone(),
            params: self.p,
            hdr: self.hdr[..self.hdr_have].to_vec(),
            staged: self.rx[self.rx_start..self.rx_end].to_vec(),
            queue,
            tr,
        })
    }

    /// Rebuild a connection in a new process around the socket it had, from its queue
    /// record in `region` and the pause-time part. The queue starts quiesced: call
    /// `resume` once this process owns the connection.
    pub fn import(
        s: S,
        target: std::sync::Arc<Target>,
        region: &std::sync::Arc<Region>,
        image: &RegionImage,
        snap: &ConnSnapshot,
        now: Instant,
    ) -> Result<Conn<S>, lightpool_nvmf::NvmfError> {
        let mut c = Conn::new(s, target.clone(), snap.peer.clone());
        let (q, rec) = NvmfQueue::import_from_region(target, region, image, &snap.queue, now)?;
        c.q = q;
        for (slot, tr) in &snap.tr {
            if let Some(r) = c.q.try_req(*slot) {
                r.tr = *tr;
            }
        }
        c.p = snap.params;
        let bad = |what: &str| {
            lightpool_nvmf::NvmfError::Invalid(format!("connection {}: {what}", snap.peer))
        };
        if snap.hdr.len() > c.hdr.len() || snap.staged.len() > c.rx.len() {
            return Err(bad("receive buffers larger than this binary's"));
        }
        if usize::from(rec.rx.hdr_have) != snap.hdr.len()
            || rec.rx.staged as usize != snap.staged.len()
        {
            return Err(bad(
                "the receive position in the region does not match the bytes handed over",
            ));
        }
        c.hdr[..snap.hdr.len()].copy_from_slice(&snap.hdr);
        c.hdr_have = snap.hdr.len();
        c.rx[..snap.staged.len()].copy_from_slice(&snap.staged);
        c.rx_start = 0;
        c.rx_end = snap.staged.len();
        c.state = rx_from_pos(&rec.rx, &snap.hdr).map_err(|e| bad(&e))?;
        if let Rx::Pad { sink, .. } | Rx::Data { sink, .. } | Rx::Ddgst { sink, .. } = c.state {
            if let Sink::Capsule { slot } | Sink::H2c { slot, .. } = sink {
                if c.q.try_req(slot).is_none() {
                    return Err(bad("receiving into a slot that is not in use"));
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_receive_state_survives_the_region_encoding() {
        let hdr = [0x04, 0, 72, 0, 72, 0, 0, 0];
        let states = [
            Rx::Ch,
            Rx::Hdr {
                ch: CommonHeader::parse(&hdr),
                t: PduType::CapsuleCmd,
            },
            Rx::Pad {
                left: 3,
                sink: Sink::Capsule { slot: 7 },
                data: 4096,
                ddgst: true,
            },
            Rx::Data {
                sink: Sink::H2c { slot: 2, end: 8192 },
                off: 100,
                left: 4000,
                ddgst: false,
                crc: 0xDEAD_BEEF,
            },
            Rx::Ddgst {
                sink: Sink::Discard,
                have: 2,
                crc: 0x1234_5678,
                digest: [1, 2, 0, 0],
            },
            Rx::Dead,
        ];
        for st in states {
            let p = rx_pos(&st, hdr.len(), 12);
            assert_eq!((p.hdr_have, p.staged), (8, 12));
            assert_eq!(rx_from_pos(&p, &hdr).expect("decodes"), st, "{st:?}");
        }
    }

    #[test]
    fn a_receive_position_that_makes_no_sense_is_refused() {
        let bad_kind = RxPos {
            kind: 9,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&bad_kind, &[]).is_err());
        let bad_sink = RxPos {
            kind: rxpos::DATA,
            sink: 7,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&bad_sink, &[]).is_err());
        let digest_overrun = RxPos {
            kind: rxpos::DDGST,
            have: 4,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&digest_overrun, &[]).is_err());
        let header_without_bytes = RxPos {
            kind: rxpos::HDR,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&header_without_bytes, &[0x04, 0]).is_err());
    }
}
