//! The send side of a connection: a queue of PDU pieces written with one `writev` per
//! flush. Headers, digests and responses are copied into small inline chunks (adjacent
//! ones coalesce); payload data is referenced in the request's buffer, never copied.
//! A `Release` marker frees a request slot once everything before it is on the wire.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Bytes one inline chunk holds: a TermReq (24 + 128) with room to spare, or several
/// response capsules coalesced.
const INLINE: usize = 240;
/// iovecs per writev.
pub(crate) const MAX_IOV: usize = 64;

// Inline chunks live in the preallocated queue itself: boxing them would allocate per PDU.
#[allow(clippy::large_enum_variant)]
pub(crate) enum TxItem {
    Inline { buf: [u8; INLINE], len: usize },
    Data { slot: u16, off: u32, len: u32 },
    Release(u16),
}

/// Pending output of one connection.
pub(crate) struct TxQueue {
    items: VecDeque<TxItem>,
    /// Bytes of the front item already written.
    head_off: usize,
    bytes: usize,
}

impl TxQueue {
    pub(crate) fn new(capacity: usize) -> TxQueue {
        TxQueue {
            items: VecDeque::with_capacity(capacity),
            head_off: 0,
            bytes: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queue bytes to send, appended to the last inline chunk when it has room.
    pub(crate) fn push_bytes(&mut self, b: &[u8]) {
        self.bytes += b.len();
        let mut rest = b;
        // Only append to a chunk nothing of which has been written yet, or the front
        // chunk's written prefix would shift.
        let untouched = self.items.len() > 1 || self.head_off == 0;
        if let Some(TxItem::Inline { buf, len }) = self.items.back_mut() {
            if untouched {
                let n = (INLINE - *len).min(rest.len());
                buf[*len..*len + n].copy_from_slice(&rest[..n]);
                *len += n;
                rest = &rest[n..];
            }
        }
        while !rest.is_empty() {
            let n = rest.len().min(INLINE);
            let mut buf = [0u8; INLINE];
            buf[..n].copy_from_slice(&rest[..n]);
            self.items.push_back(TxItem::Inline { buf, len: n });
            rest = &rest[n..];
        }
    }

    pub(crate) fn push_data(&mut self, slot: u16, off: u32, len: u32) {
        if len > 0 {
            self.bytes += len as usize;
            self.items.push_back(TxItem::Data { slot, off, len });
        }
    }

    pub(crate) fn push_release(&mut self, slot: u16) {
        self.items.push_back(TxItem::Release(slot));
    }

    /// Fill `iov` with what is pending, in order; `data` resolves a request's buffer.
    pub(crate) fn gather<'a>(
        &'a self,
        iov: &mut [IoSlice<'a>; MAX_IOV],
        data: &dyn Fn(u16) -> &'a [u8],
    ) -> usize {
        let mut n = 0;
        let mut first = true;
        for item in &self.items {
            if n == MAX_IOV {
                break;
            }
            let skip = if first { self.head_off } else { 0 };
            let s: &[u8] = match item {
                TxItem::Inline { buf, len } => &buf[skip..*len],
                TxItem::Data { slot, off, len } => {
                    let d = data(*slot);
                    let start = *off as usize + skip;
                    let end = (*off + *len) as usize;
                    &d[start.min(d.len())..end.min(d.len())]
                }
                TxItem::Release(_) => &[],
            };
            first = false;
            if !s.is_empty() {
                iov[n] = IoSlice::new(s);
                n += 1;
            }
        }
        n
    }

    /// `written` bytes went out: drop what is done, returning released slots through
    /// `release` in order.
    pub(crate) fn advance(&mut self, mut written: usize, release: &mut dyn FnMut(u16)) {
        self.bytes -= written;
        while let Some(front) = self.items.front() {
            let len = match front {
                TxItem::Inline { len, .. } => *len,
                TxItem::Data { len, .. } => *len as usize,
                TxItem::Release(slot) => {
                    release(*slot);
                    self.items.pop_front();
                    continue;
                }
            };
            let left = len - self.head_off;
            if written >= left {
                written -= left;
                self.head_off = 0;
                self.items.pop_front();
            } else {
                self.head_off += written;
                break;
            }
        }
    }

    /// Forget everything (the peer is gone), releasing every slot still referenced.
    pub(crate) fn clear(&mut self, release: &mut dyn FnMut(u16)) {
        for item in self.items.drain(..) {
            if let TxItem::Release(slot) = item {
                release(slot);
            }
        }
        self.head_off = 0;
        self.bytes = 0;
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
    fn large_byte_runs_span_chunks() {
        let mut q = TxQueue::new(2);
        let big = vec![1u8; INLINE * 2 + 5];
        q.push_bytes(&big);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = q.gather(&mut iov, &|_| &[]);
        assert_eq!(iov[..n].iter().map(|s| s.len()).sum::<usize>(), big.len());
    }
}
