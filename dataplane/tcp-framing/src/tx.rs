//! The send side of a connection: PDU pieces written with one `writev` per pass.
//!
//! Headers, digests and responses are copied into a byte ring (consecutive ones become
//! one iovec, even across releases); payload data is referenced in the owner's buffers
//! by slot and range ([`TxBuffers`]), never copied. A release frees a slot once every
//! byte queued before it is on the wire, so a buffer is never reused while the kernel
//! may still be asked to send from it.
//!
//! Everything is preallocated: the ring grows only if a connection ever queues more
//! header bytes than it holds (a warm queue never allocates).

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use crate::offload::OffloadCounters;
use crate::Stream;

/// iovecs per `writev` of a target's connection (see [`TxQueue::send`]).
pub const MAX_IOV: usize = 64;
/// Initial ring size: about 190 completions of header + data digest + response.
const RING: usize = 16 * 1024;
/// `slot` of an item whose bytes are in the ring.
const RING_ITEM: u16 = u16::MAX;
/// The most bytes one [`TxQueue::push_encoded`] takes.
pub const MAX_ENCODED: usize = 256;

/// The owner's data buffers, which queued data items name by slot.
pub trait TxBuffers {
    /// The bytes of `slot`; an item's offset and length index into them.
    fn data(&self, slot: u16) -> &[u8];

    /// Everything queued before [`TxQueue::push_release`]`(slot)` is on the wire (or
    /// was dropped by [`TxQueue::clear`]): the slot's buffer is the owner's again.
    fn release(&mut self, slot: u16) {
        let _ = slot;
    }
}

/// One buffer behind every slot, nothing to release (a load generator's shared data).
pub struct Shared<'a>(pub &'a [u8]);

impl TxBuffers for Shared<'_> {
    fn data(&self, _slot: u16) -> &[u8] {
        self.0
    }
}

/// A run of bytes to send: from the ring, or a slot's data.
#[derive(Debug, Clone, Copy)]
struct Item {
    /// `RING_ITEM`, or the slot whose data this is.
    slot: u16,
    /// Offset in the slot's data (unused for ring bytes).
    off: u32,
    len: u32,
}

/// What one [`TxQueue::send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// `writev` calls that wrote something (or only released slots).
    pub writes: usize,
    /// The socket buffer is full: bytes are left (wait for it to become writable).
    pub blocked: bool,
}

/// Pending output of one connection.
pub struct TxQueue {
    items: VecDeque<Item>,
    /// Slots to release once this many bytes (since the start) have been written.
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
    /// Digests computed for what was queued (plain counts: see `offload`).
    pub(crate) counters: OffloadCounters,
}

impl TxQueue {
    /// A queue with room for `capacity` items and releases before it grows.
    pub fn new(capacity: usize) -> TxQueue {
        TxQueue {
            items: VecDeque::with_capacity(capacity),
            releases: VecDeque::with_capacity(capacity),
            ring: vec![0u8; RING].into_boxed_slice(),
            ring_head: 0,
            ring_tail: 0,
            head_off: 0,
            queued: 0,
            written: 0,
            counters: OffloadCounters::default(),
        }
    }

    /// The digests computed for what this queue sent.
    pub fn offload(&self) -> &OffloadCounters {
        &self.counters
    }

    /// Nothing to send and nothing to release.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.releases.is_empty()
    }

    /// Bytes queued and not yet written.
    pub fn bytes(&self) -> usize {
        (self.queued - self.written) as usize
    }

    /// Queue bytes to send (copied).
    #[inline]
    pub fn push_bytes(&mut self, b: &[u8]) {
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

    /// Queue what `encode` writes into the buffer it is given (`max` bytes; it returns
    /// how many it wrote, every one of them). Encoded in place in the ring when `max`
    /// bytes are free there in one piece: no staging buffer, no copy.
    #[inline]
    pub fn push_encoded(&mut self, max: usize, encode: impl FnOnce(&mut [u8]) -> usize) {
        let used = (self.ring_tail - self.ring_head) as usize;
        if used + max > self.ring.len() {
            self.grow(used + max);
        }
        let at = self.ring_tail as usize & (self.ring.len() - 1);
        if at + max > self.ring.len() {
            // Too close to the end of the ring: encode aside, copy in two pieces.
            let mut tmp = [0u8; MAX_ENCODED];
            let n = encode(&mut tmp[..max.min(MAX_ENCODED)]);
            return self.push_bytes(&tmp[..n]);
        }
        let n = encode(&mut self.ring[at..at + max]);
        debug_assert!(n <= max, "an encoder wrote past its buffer");
        if n == 0 {
            return;
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

    /// Queue `len` bytes of `slot`'s data from `off` (referenced, not copied).
    #[inline]
    pub fn push_data(&mut self, slot: u16, off: u32, len: u32) {
        debug_assert!(slot != RING_ITEM, "slot {slot} is reserved");
        if len > 0 {
            self.queued += u64::from(len);
            self.items.push_back(Item { slot, off, len });
        }
    }

    /// Release `slot` once everything queued so far is written.
    #[inline]
    pub fn push_release(&mut self, slot: u16) {
        self.releases.push_back((self.queued, slot));
    }

    /// Fill `iov` with what is pending, in order; `b` resolves the slots' data.
    /// Returns the iovecs used.
    pub fn gather<'a, B: TxBuffers + ?Sized>(&'a self, iov: &mut [IoSlice<'a>], b: &'a B) -> usize {
        let mut n = 0;
        let max = iov.len();
        let cap = self.ring.len();
        let mask = cap - 1;
        let mut ring_pos = self.ring_head;
        let mut skip = self.head_off;
        for item in &self.items {
            if n == max {
                break;
            }
            if item.slot == RING_ITEM {
                let len = item.len as usize - skip;
                let at = ring_pos as usize & mask;
                let first = len.min(cap - at);
                iov[n] = IoSlice::new(&self.ring[at..at + first]);
                n += 1;
                if first < len && n < max {
                    iov[n] = IoSlice::new(&self.ring[..len - first]);
                    n += 1;
                }
                ring_pos += len as u64;
            } else {
                let d = b.data(item.slot);
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

    /// `written` bytes went out: drop what is done and release, in order, the slots
    /// whose data is all on the wire.
    pub fn advance<B: TxBuffers + ?Sized>(&mut self, written: usize, b: &mut B) {
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
            b.release(slot);
        }
    }

    /// Forget everything (the peer is gone), releasing every slot still referenced.
    pub fn clear<B: TxBuffers + ?Sized>(&mut self, b: &mut B) {
        self.items.clear();
        for (_, slot) in self.releases.drain(..) {
            b.release(slot);
        }
        self.head_off = 0;
        self.ring_head = self.ring_tail;
        self.written = self.queued;
    }

    /// Write as much as `s` takes, `IOV` iovecs per `writev` at most. A socket that
    /// takes nothing (`Ok(0)`) is an error (`WriteZero`); so is any error other than
    /// `WouldBlock` (reported as [`Sent::blocked`]) and `Interrupted` (retried). On
    /// error, what is queued stays queued: the caller decides (usually
    /// [`TxQueue::clear`]).
    pub fn send<const IOV: usize, S: Stream + ?Sized, B: TxBuffers + ?Sized>(
        &mut self,
        s: &mut S,
        b: &mut B,
    ) -> io::Result<Sent> {
        let mut sent = Sent::default();
        while !self.is_empty() {
            let res = {
                let mut iov = [IoSlice::new(&[]); IOV];
                let n = self.gather(&mut iov, &*b);
                if n == 0 {
                    Ok(0)
                } else {
                    s.writev(&iov[..n])
                }
            };
            match res {
                Ok(0) if self.bytes() > 0 => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n, b);
                    sent.writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sent.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests;
