//! A connection across a hot upgrade: quiescing it, exporting it (its queue record in
//! the state region holds most of it; the rest is serialized at pause time) and
//! rebuilding it in the next binary.

use std::time::Instant;

use lightpool_nvmf::region::{Region, RxPos};
use lightpool_nvmf::restore::{QueuePause, RegionImage};
use lightpool_nvmf::{NvmfQueue, Target, Xfer};
use lightpool_tcp_framing::{Digests, Receiver, RxSnapshot, RxState};

use super::{rx_config, Conn, Params, Phase, Sink, Stream, TcpReq};

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
fn rx_pos(state: &RxState<Sink>, hdr_have: usize, staged: usize) -> RxPos {
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
        RxState::Ch => p.kind = rxpos::CH,
        RxState::Hdr => p.kind = rxpos::HDR,
        RxState::Pad {
            left,
            sink,
            data,
            ddgst,
            ..
        } => {
            // The offset the data starts at follows from the sink (see rx_from_pos).
            p.kind = rxpos::PAD;
            sink_of(&mut p, sink);
            p.left = left;
            p.data = data;
            p.ddgst = u8::from(ddgst);
        }
        RxState::Data {
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
        RxState::Ddgst {
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
        RxState::Dead => p.kind = rxpos::DEAD,
    }
    p
}

/// The receive state back from the region (the framing checks the header bytes and
/// the digest position when it imports it).
fn rx_from_pos(p: &RxPos) -> Result<RxState<Sink>, String> {
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
        rxpos::CH => RxState::Ch,
        rxpos::HDR => RxState::Hdr,
        rxpos::PAD => {
            let sink = sink()?;
            // In-capsule data starts at 0; H2CData at DATAO, which is END - DATAL.
            let off = match sink {
                Sink::H2c { end, .. } => end
                    .checked_sub(p.data)
                    .ok_or("H2CData that ends before it starts")?,
                Sink::Capsule { .. } | Sink::Discard => 0,
            };
            RxState::Pad {
                left: p.left,
                sink,
                off,
                data: p.data,
                ddgst: p.ddgst != 0,
            }
        }
        rxpos::DATA => RxState::Data {
            sink: sink()?,
            off: p.off,
            left: p.left,
            ddgst: p.ddgst != 0,
            crc: p.crc,
        },
        rxpos::DDGST => RxState::Ddgst {
            sink: sink()?,
            have: p.have,
            crc: p.crc,
            digest: p.digest,
        },
        rxpos::DEAD => RxState::Dead,
        k => return Err(format!("unknown receive state {k}")),
    })
}

impl<S: Stream> Conn<S> {
    /// Stop starting commands (they are received and held); what runs finishes.
    pub fn quiesce(&mut self) {
        self.c.q.quiesce();
    }

    /// Start held commands and take new ones again.
    pub fn resume(&mut self, now: Instant) {
        self.c.q.resume(now);
    }

    /// Nothing running, nothing left to send, not closing: the state can be exported.
    pub fn is_drained(&self) -> bool {
        self.c.phase == Phase::Active && self.c.q.is_drained() && self.c.tx.is_empty()
    }

    /// Store where the receive state machine stands into the queue's record (plain
    /// stores, once per poll).
    #[inline]
    pub(super) fn publish_rx(&self) {
        if let Some(m) = self.c.q.shm() {
            m.set_rx(&rx_pos(
                &self.rx.state(),
                self.rx.header().len(),
                self.rx.staged().len(),
            ));
        }
    }

    /// Export a drained connection: its queue record holds most of it; this is the rest.
    pub fn export(&self, now: Instant) -> Result<ConnSnapshot, lightpool_nvmf::NvmfError> {
        self.publish_rx();
        // Bytes of each request's buffer that hold data received so far.
        let receiving = match self.rx.state() {
            RxState::Data {
                sink: Sink::Capsule { slot } | Sink::H2c { slot, .. },
                off,
                ..
            } => Some((slot, off)),
            RxState::Ddgst {
                sink: Sink::Capsule { slot },
                ..
            } => Some((slot, u32::MAX)),
            _ => None,
        };
        let queue = self.c.q.export_pause(now, |slot, r| {
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
            .map(|ss| (ss.index, self.c.q.req_ref(ss.index).tr))
            .collect();
        Ok(ConnSnapshot {
            peer: self.c.peer.clone(),
            params: self.c.p,
            hdr: self.rx.header().to_vec(),
            staged: self.rx.staged().to_vec(),
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
        reactor: usize,
    ) -> Result<Conn<S>, lightpool_nvmf::NvmfError> {
        let mut c = Conn::new(s, target.clone(), snap.peer.clone(), reactor);
        let (q, rec) =
            NvmfQueue::import_from_region(target, region, image, &snap.queue, now, reactor)?;
        c.c.q = q;
        for (slot, tr) in &snap.tr {
            if let Some(r) = c.c.q.try_req(*slot) {
                r.tr = *tr;
            }
        }
        c.c.p = snap.params;
        let bad = |what: &str| {
            lightpool_nvmf::NvmfError::Invalid(format!("connection {}: {what}", snap.peer))
        };
        if usize::from(rec.rx.hdr_have) != snap.hdr.len()
            || rec.rx.staged as usize != snap.staged.len()
        {
            return Err(bad(
                "the receive position in the region does not match the bytes handed over",
            ));
        }
        let rx = RxSnapshot {
            state: rx_from_pos(&rec.rx).map_err(|e| bad(&e))?,
            digests: Digests {
                header: snap.params.hdgst,
                data: snap.params.ddgst,
            },
            connected: snap.params.initialized,
            hdr: snap.hdr.clone(),
            staged: snap.staged.clone(),
        };
        let cfg = rx_config(c.rx.config().in_capsule_max);
        c.rx = Receiver::import(cfg, &rx).map_err(|e| bad(&e.to_string()))?;
        if let RxState::Pad { sink, .. }
        | RxState::Data { sink, .. }
        | RxState::Ddgst { sink, .. } = c.rx.state()
        {
            if let Sink::Capsule { slot } | Sink::H2c { slot, .. } = sink {
                if c.c.q.try_req(slot).is_none() {
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
        let states = [
            RxState::Ch,
            RxState::Hdr,
            RxState::Pad {
                left: 3,
                sink: Sink::Capsule { slot: 7 },
                off: 0,
                data: 4096,
                ddgst: true,
            },
            RxState::Pad {
                left: 8,
                sink: Sink::H2c {
                    slot: 2,
                    end: 12288,
                },
                off: 8192,
                data: 4096,
                ddgst: false,
            },
            RxState::Data {
                sink: Sink::H2c { slot: 2, end: 8192 },
                off: 100,
                left: 4000,
                ddgst: false,
                crc: 0xDEAD_BEEF,
            },
            RxState::Ddgst {
                sink: Sink::Discard,
                have: 2,
                crc: 0x1234_5678,
                digest: [1, 2, 0, 0],
            },
            RxState::Dead,
        ];
        for st in states {
            let p = rx_pos(&st, 8, 12);
            assert_eq!((p.hdr_have, p.staged), (8, 12));
            assert_eq!(rx_from_pos(&p).expect("decodes"), st, "{st:?}");
        }
    }

    #[test]
    fn a_receive_position_that_makes_no_sense_is_refused() {
        let bad_kind = RxPos {
            kind: 9,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&bad_kind).is_err());
        let bad_sink = RxPos {
            kind: rxpos::DATA,
            sink: 7,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&bad_sink).is_err());
        let backwards = RxPos {
            kind: rxpos::PAD,
            sink: rxpos::SINK_H2C,
            end: 100,
            data: 200,
            ..RxPos::default()
        };
        assert!(rx_from_pos(&backwards).is_err());
        // What the framing refuses on import (a digest overrun, a header without its
        // common header) is the framing's to test; here the whole path is checked.
        let cfg = rx_config(8192);
        let digest_overrun = RxPos {
            kind: rxpos::DDGST,
            have: 4,
            ..RxPos::default()
        };
        let header_without_bytes = RxPos {
            kind: rxpos::HDR,
            ..RxPos::default()
        };
        for (p, hdr) in [
            (digest_overrun, vec![]),
            (header_without_bytes, vec![0x04, 0]),
        ] {
            let snap = RxSnapshot {
                state: rx_from_pos(&p).expect("a known state"),
                digests: Digests::default(),
                connected: true,
                hdr,
                staged: Vec::new(),
            };
            assert!(Receiver::import(cfg, &snap).is_err(), "{p:?}");
        }
    }
}
