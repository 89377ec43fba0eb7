//! Neighbours without ARP: where the kernel keeps the interface's IP address, ARP
//! frames go to the kernel (the XDP program passes them), so smoltcp, which fills its
//! neighbour cache only from ARP, would never learn where to send its replies.
//!
//! [`Learn`] wraps a queue: it remembers the source MAC of every IPv4 frame that
//! arrives (a connection always starts with the peer's SYN, so the peer is known
//! before the stack first sends to it), and when the stack asks by ARP for an address
//! it has learned, it answers the stack itself with a reply fed back into the receive
//! side. The request still goes out on the wire: the peer's kernel answers it to our
//! kernel, which is harmless. Peers behind a router are not learned this way (their
//! frames carry the router's MAC for another IP): the stack serves on-link peers.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use smoltcp::phy::{self, Device, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::{EngineCounters, PacketEngine};

const ETH_HDR: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// More addresses than this and the table starts again (a flood of spoofed sources
/// must not grow it without bound).
const MAX_NEIGHBOURS: usize = 4096;

/// A queue that learns its peers' MACs from their IPv4 frames and answers the stack's
/// ARP requests for them.
pub struct Learn<D> {
    inner: D,
    state: RefCell<State>,
}

#[derive(Default)]
/// What a [`Learn`] queue knows: learned neighbours and replies for the stack.
pub struct State {
    neighbours: HashMap<[u8; 4], [u8; 6]>,
    /// ARP replies made for the stack, delivered before the queue's own frames.
    replies: VecDeque<Vec<u8>>,
}

impl State {
    fn learn(&mut self, frame: &[u8]) {
        if frame.len() < ETH_HDR + 20 || frame[12..14] != ETHERTYPE_IPV4 {
            return;
        }
        let mut ip = [0u8; 4];
        ip.copy_from_slice(&frame[ETH_HDR + 12..ETH_HDR + 16]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&frame[6..12]);
        if mac[0] & 1 != 0 {
            return; // never learn a multicast source
        }
        if self.neighbours.get(&ip) != Some(&mac) {
            if self.neighbours.len() >= MAX_NEIGHBOURS {
                self.neighbours.clear();
            }
            self.neighbours.insert(ip, mac);
        }
    }

    /// If `frame` is the stack's ARP request for a learned address, queue the reply.
    fn answer(&mut self, frame: &[u8]) {
        let a = ETH_HDR;
        if frame.len() < a + 28
            || frame[12..14] != ETHERTYPE_ARP
            || frame[a..a + 8] != [0, 1, 8, 0, 6, 4, 0, 1]
        {
            return;
        }
        let mut target = [0u8; 4];
        target.copy_from_slice(&frame[a + 24..a + 28]);
        let Some(mac) = self.neighbours.get(&target) else {
            return;
        };
        let mut reply = vec![0u8; ETH_HDR + 28];
        reply[0..6].copy_from_slice(&frame[6..12]);
        reply[6..12].copy_from_slice(mac);
        reply[12..14].copy_from_slice(&ETHERTYPE_ARP);
        reply[a..a + 8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        reply[a + 8..a + 14].copy_from_slice(mac);
        reply[a + 14..a + 18].copy_from_slice(&target);
        reply[a + 18..a + 28].copy_from_slice(&frame[a + 8..a + 18]);
        self.replies.push_back(reply);
    }
}

impl<D> Learn<D> {
    pub fn new(inner: D) -> Self {
        Learn {
            inner,
            state: RefCell::default(),
        }
    }

    /// The MAC learned for an IPv4 address, if any.
    pub fn neighbour(&self, ip: [u8; 4]) -> Option<[u8; 6]> {
        self.state.borrow().neighbours.get(&ip).copied()
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }
}

pub enum RxToken<'a, R> {
    Queue(R, &'a RefCell<State>),
    Reply(Vec<u8>),
}

pub struct TxToken<'a, T> {
    inner: T,
    state: &'a RefCell<State>,
}

impl<R: phy::RxToken> phy::RxToken for RxToken<'_, R> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        match self {
            RxToken::Queue(t, state) => t.consume(|frame| {
                state.borrow_mut().learn(frame);
                f(frame)
            }),
            RxToken::Reply(frame) => f(&frame),
        }
    }
}

impl<T: phy::TxToken> phy::TxToken for TxToken<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let state = self.state;
        self.inner.consume(len, |frame| {
            let r = f(frame);
            state.borrow_mut().answer(frame);
            r
        })
    }
}

impl<D: Device> Device for Learn<D> {
    type RxToken<'a>
        = RxToken<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.state.get_mut().replies.is_empty() {
            let tx = self.inner.transmit(now)?;
            let reply = self.state.get_mut().replies.pop_front().unwrap_or_default();
            let state = &self.state;
            return Some((RxToken::Reply(reply), TxToken { inner: tx, state }));
        }
        let (rx, tx) = self.inner.receive(now)?;
        let state = &self.state;
        Some((RxToken::Queue(rx, state), TxToken { inner: tx, state }))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken {
            inner: self.inner.transmit(now)?,
            state: &self.state,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<D: PacketEngine> PacketEngine for Learn<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn mac(&self) -> [u8; 6] {
        self.inner.mac()
    }
    fn counters(&self) -> EngineCounters {
        self.inner.counters()
    }
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.wake_fd()
    }
    fn flush(&mut self) {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_frame(src_mac: [u8; 6], src_ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HDR + 20];
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        f[ETH_HDR + 12..ETH_HDR + 16].copy_from_slice(&src_ip);
        f
    }

    fn arp_request(our_mac: [u8; 6], our_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HDR + 28];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&our_mac);
        f[12..14].copy_from_slice(&ETHERTYPE_ARP);
        f[ETH_HDR..ETH_HDR + 8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[ETH_HDR + 8..ETH_HDR + 14].copy_from_slice(&our_mac);
        f[ETH_HDR + 14..ETH_HDR + 18].copy_from_slice(&our_ip);
        f[ETH_HDR + 24..ETH_HDR + 28].copy_from_slice(&target);
        f
    }

    #[test]
    fn answers_only_for_learned_addresses() {
        let peer_mac = [2, 0, 0, 0, 0, 9];
        let our_mac = [2, 0, 0, 0, 0, 1];
        let mut s = State::default();
        s.answer(&arp_request(our_mac, [10, 0, 0, 1], [10, 0, 0, 2]));
        assert!(s.replies.is_empty(), "nothing learned yet");
        s.learn(&ipv4_frame(peer_mac, [10, 0, 0, 2]));
        s.learn(&ipv4_frame([3, 0, 0, 0, 0, 0], [10, 0, 0, 3])); // multicast source
        assert_eq!(s.neighbours.len(), 1);
        s.answer(&arp_request(our_mac, [10, 0, 0, 1], [10, 0, 0, 2]));
        let r = s.replies.pop_front().expect("a reply");
        assert_eq!(&r[0..6], &our_mac);
        assert_eq!(&r[6..12], &peer_mac);
        assert_eq!(&r[ETH_HDR + 6..ETH_HDR + 8], &[0, 2]);
        assert_eq!(&r[ETH_HDR + 8..ETH_HDR + 14], &peer_mac);
        assert_eq!(&r[ETH_HDR + 14..ETH_HDR + 18], &[10, 0, 0, 2]);
        assert_eq!(&r[ETH_HDR + 18..ETH_HDR + 24], &our_mac);
        assert_eq!(&r[ETH_HDR + 24..ETH_HDR + 28], &[10, 0, 0, 1]);
    }
}
