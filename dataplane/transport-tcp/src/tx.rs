//! The send side of a connection: PDU pieces written with one `writev` per flush.
//! Headers, digests and responses are copied into a byte ring (consecutive ones become
//! one iovec); payload data is referenced in the request's buffer (or the RAM device),
//! never copied. A release frees a request slot once every byte queued before it is on
//! the wire.
//!
//! Everything is preallocated: the ring grows only if a connection ever queues more
//! header bytes than it holds (a warm queue never allocates).

use std::collections::VecDeque;
use std::io::IoSlice;

/// iovecs per writev.
pub(crate) const MAX_IOV: usize = 64;
/// Initial ring size: about 190 completions of header + data digest + response.
const RING: usize = 16 * 1024;
/// `slot` of an item whose bytes are in the ring.
const RING_ITEM: u16 = u16::MAX;

/// A run of bytes to send: from the ring, or a request's data.
#[derive(Debug, Clone, Copy)]
struct Item {
    /// `RING_ITEM`, or the request slot whose data this is.
    slot: u16,
    /// Offset in the request's data (unused for ring bytes).
    off: u32,
    len: u32,
}

/// Pending output of one connection.
pub(crate) struct TxQueue {
    items: VecDeque<Item>,
    /// Slots to free once this many bytes (since the start) have been written.
    releases: VecDeque<(u64, u16)>,
    ring: Box<[u8]>,
    /// Ring position (monotonic; index = pos % ring.len()) of the first byte not sent.
    ring_head: u64,
    /// Ring position where the next byte goes.
    ring_tail: u64,
    /// Bytes of the front item already written.
    head_off: usize,
    queued: u64,
    written: u64,
}

impl TxQueue {
    pub(crate) fn new(capacity: usize) -> TxQueue {
        TxQueue {
            items: VecDeque::with_capacity(capacity),
            releases: VecDeque::with_capacity(capacity),
            ring: vec![0u8; RING].into_boxed_slice(),
            ring_head: 0,
            ring_tail: 0,
            head_off: 0,
            queued: 0,
            written: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.releases.is_empty()
    }

    /// Bytes queued and not yet written.
    pub(crate) fn bytes(&self) -> usize {
        (self.queued - self.written) as usize
    }

    /// Queue bytes to send (copied).
    #[inline]
    pub(crate) fn push_bytes(&mut self, b: &[u8]) {
        let n = b.len();
        if n == 0 {
            return;
        }
        let used = (self.ring_tail - self.ring_head) as usize;
        if used + n > self.ring.len() {
            self.grow(used + n);
        }
        // The ring's length is a power of two.
        let mask = self.ring.len() - 1;
        let at = self.ring_tail as usize & mask;
        if at + n <= self.ring.len() {
            self.ring[at..at + n].copy_from_slice(b);
        } else {
            let first = self.ring.len() - at;
            self.ring[at..].copy_from_slice(&b[..first]);
            self.ring[..n - first].copy_from_slice(&b[first..]);
        }
        self.ring_tail += n as u64;
        self.queued += n as u64;
        match self.items.back_mut() {
            Some(last) if last.slot == RING_ITEM => last.len += n as u32,
            _ => self.items.push_back(Item {
                slot: RING_ITEM,
                off: 0,
                len: n as u32,
            }),
        }
    }

    /// A bigger ring holding the same unsent bytes at the same positions.
    #[cold]
    fn grow(&mut self, need: usize) {
        let cap = need.next_power_of_two().max(self.ring.len() * 2);
        let mut ring = vec![0u8; cap].into_boxed_slice();
        let (old_mask, mask) = (self.ring.len() - 1, cap - 1);
        for pos in self.ring_head..self.ring_tail {
            ring[pos as usize & mask] = self.ring[pos as usize & old_mask];
        }
        self.ring = ring;
    }

    pub(crate) fn push_data(&mut self, slot: u16, off: u32, len: u32) {
        if len > 0 {
            self.queued += u64::from(len);
            self.items.push_back(Item { slot, off, len });
        }
    }

    /// Free `slot` once everything queued so far is written.
    pub(crate) fn push_release(&mut self, slot: u16) {
        self.releases.push_back((self.queued, slot));
    }

    /// Fill `iov` with what is pending, in order; `data` resolves a request's buffer.
    pub(crate) fn gather<'a>(
        &'a self,
        iov: &mut [IoSlice<'a>; MAX_IOV],
        data: &dyn Fn(u16) -> &'a [u8],
    ) -> usize {
        let mut n = 0;
        let cap = self.ring.len();
        let mask = cap - 1;
        let mut ring_pos = self.ring_head;
        let mut skip = self.head_off;
        for item in &self.items {
            if n == MAX_IOV {
                break;
            }
            if item.slot == RING_ITEM {
                let len = item.len as usize - skip;
                let at = ring_pos as usize & mask;
                let first = len.min(cap - at);
                iov[n] = IoSlice::new(&self.ring[at..at + first]);
                n += 1;
                if first < len && n < MAX_IOV {
                    iov[n] = IoSlice::new(&self.ring[..len - first]);
                    n += 1;
                }
                ring_pos += len as u64;
            } else {
                let d = data(item.slot);
                let start = item.off as usize + skip;
                let end = (item.off + item.len) as usize;
                let s = &d[start.min(d.len())..end.min(d.len())];
                if !s.is_empty() {
                    iov[n] = IoSlice::new(s);
                    n += 1;
                }
            }
            skip = 0;
        }
        n
    }

    /// `written` bytes went out: drop what is done, returning released slots through
    /// `release` in order.
    pub(crate) fn advance(&mut self, written: usize, release: &mut dyn FnMut(u16)) {
        self.written += written as u64;
        let mut left = written;
        while let Some(front) = self.items.front() {
            let rest = front.len as usize - self.head_off;
            let ring = front.slot == RING_ITEM;
            if left >= rest {
                left -= rest;
                self.head_off = 0;
                self.items.pop_front();
                if ring {
                    self.ring_head += rest as u64;
                }
            } else {
                self.head_off += left;
                if ring {
                    self.ring_head += left as u64;
                }
                break;
            }
        }
        while let Some(&(pos, slot)) = self.releases.front() {
            if pos > self.written {
                break;
            }
            self.releases.pop_front();
            release(slot);
        }
    }

    /// Forget everything (the peer is gone), releasing every slot still referenced.
    pub(crate) fn clear(&mut self, release: &mut dyn FnMut(u16)) {
        self.items.clear();
        for (_, slot) in self.releases.drain(..) {
            release(slot);
        }
        self.head_off = 0;
        self.ring_head = self.ring_tail;
        self.written = self.queued;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_releases_in_order() {
        let data = [7u8; 100];
        let mut q = TxQueue::new(8);
        q.push_bytes(b"abc");
        q.push_data(1, 10, 20);
        q.push_bytes(b"de");
        q.push_bytes(b"f");
        q.push_release(1);
        assert_eq!(q.bytes(), 26);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = q.gather(&mut iov, &|_| &data[..]);
        assert_eq!(n, 3);
        assert_eq!(&*iov[0], b"abc");
        assert_eq!(iov[1].len(), 20);
        assert_eq!(&*iov[2], b"def");
        let mut released = Vec::new();
        q.advance(5, &mut |s| released.push(s));
        assert!(released.is_empty());
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = q.gather(&mut iov, &|_| &data[..]);
        assert_eq!(n, 2);
        assert_eq!(iov[0].len(), 18);
        q.advance(21, &mut |s| released.push(s));
        assert_eq!(released, vec![1]);
        assert!(q.is_empty());
    }

    #[test]
    fn large_byte_runs_grow_the_ring() {
        let mut q = TxQueue::new(2);
        let big: Vec<u8> = (0..RING * 2 + 5).map(|i| i as u8).collect();
        q.push_bytes(&big[..100]);
        q.push_bytes(&big[100..]);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = q.gather(&mut iov, &|_| &[]);
        let got: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(got, big);
    }

    /// Bytes that wrap around the end of the ring come out in order, in two iovecs,
    /// and responses separated only by releases go out as one run.
    #[test]
    fn wraps_and_coalesces_across_releases() {
        let data = [9u8; 4096];
        let mut q = TxQueue::new(8);
        let mut released = Vec::new();
        let mut sent: Vec<u8> = Vec::new();
        let mut expect: Vec<u8> = Vec::new();
        for round in 0..2000u32 {
            let hdr = [round as u8; 24];
            let resp = [(round >> 8) as u8; 16];
            q.push_bytes(&hdr);
            q.push_data(round as u16, 0, 100);
            q.push_bytes(&resp);
            q.push_release(round as u16);
            expect.extend_from_slice(&hdr);
            expect.extend_from_slice(&data[..100]);
            expect.extend_from_slice(&resp);
            // Write a few odd-sized pieces, as a socket would.
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = q.gather(&mut iov, &|_| &data[..]);
            let chunk: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
            let take = chunk.len().min(97 + (round as usize % 50));
            sent.extend_from_slice(&chunk[..take]);
            q.advance(take, &mut |s| released.push(s));
        }
        loop {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = q.gather(&mut iov, &|_| &data[..]);
            if n == 0 {
                break;
            }
            let chunk: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
            sent.extend_from_slice(&chunk);
            q.advance(chunk.len(), &mut |s| released.push(s));
        }
        q.advance(0, &mut |s| released.push(s));
        assert!(q.is_empty());
        assert_eq!(sent, expect);
        assert_eq!(released, (0..2000u32).map(|r| r as u16).collect::<Vec<_>>());
        // The ring never needed to grow: nothing was ever that far behind.
        assert_eq!(q.ring.len(), RING);

        // A response, a release, the next header: one iovec.
        q.push_bytes(b"resp");
        q.push_release(1);
        q.push_bytes(b"hdr");
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        assert_eq!(q.gather(&mut iov, &|_| &data[..]), 1);
        assert_eq!(&*iov[0], b"resphdr");
        q.clear(&mut |s| released.push(s));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }
}
