//! The send side of a queue pair: PDUs waiting for the socket, written with one
//! `writev` per flush.
//!
//! Headers and digests are copied into the queue (at most 128 bytes each, see
//! [`INLINE_MAX`]); payload stays in the command's data buffer and is referenced by
//! command id and range, so a write's data is never copied on its way out. The
//! queue is preallocated and only grows if the socket stays full for a long time.

use std::collections::VecDeque;
use std::io::IoSlice;

/// The largest header the queue carries inline: a command capsule or H2CData header
/// with its header digest, padded to the controller's PDA (at most 128 bytes: PDA
/// 31 aligns to 128 and both headers end before 128 with the digest).
pub const INLINE_MAX: usize = 128;

/// iovecs per `writev`.
pub const MAX_IOV: usize = 256;

#[derive(Clone, Copy)]
pub enum TxItem {
    /// Header or digest bytes.
    Inline { buf: [u8; INLINE_MAX], len: u8 },
    /// `len` bytes of the data buffer of command `cid`, from `off`.
    Data { cid: u16, off: u32, len: u32 },
}

pub struct TxQueue {
    items: VecDeque<TxItem>,
    /// Bytes of the first item already written.
    head_off: usize,
    /// Bytes not yet written.
    bytes: usize,
}

impl TxQueue {
    pub fn new(capacity: usize) -> TxQueue {
        TxQueue {
            items: VecDeque::with_capacity(capacity),
            head_off: 0,
            bytes: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues `b` (at most [`INLINE_MAX`] bytes).
    ///
    /// # Panics
    /// If `b` is longer than [`INLINE_MAX`]; callers encode headers that cannot be.
    pub fn push_bytes(&mut self, b: &[u8]) {
        let mut buf = [0u8; INLINE_MAX];
        buf[..b.len()].copy_from_slice(b);
        self.bytes += b.len();
        self.items.push_back(TxItem::Inline {
            buf,
            len: u8::try_from(b.len()).expect("inline items are at most 128 bytes"),
        });
    }

    /// Queues a header the caller encoded into a 128-byte buffer.
    pub fn push_header(&mut self, buf: [u8; INLINE_MAX], len: usize) {
        self.bytes += len;
        self.items.push_back(TxItem::Inline {
            buf,
            len: u8::try_from(len).expect("inline items are at most 128 bytes"),
        });
    }

    /// Queues a range of command `cid`'s data buffer.
    pub fn push_data(&mut self, cid: u16, off: u32, len: u32) {
        self.bytes += len as usize;
        self.items.push_back(TxItem::Data { cid, off, len });
    }

    /// Fills `iov` with the bytes waiting, in order; `data(cid)` gives a command's
    /// data buffer. Returns the iovecs used.
    pub fn gather<'a>(&'a self, iov: &mut [IoSlice<'a>], data: &impl Fn(u16) -> &'a [u8]) -> usize {
        let mut n = 0;
        for (i, item) in self.items.iter().enumerate() {
            if n == iov.len() {
                break;
            }
            let skip = if i == 0 { self.head_off } else { 0 };
            let s: &'a [u8] = match item {
                TxItem::Inline { buf, len } => &buf[..usize::from(*len)],
                TxItem::Data { cid, off, len } => {
                    let d = data(*cid);
                    &d[*off as usize..*off as usize + *len as usize]
                }
            };
            iov[n] = IoSlice::new(&s[skip..]);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes; `released(cid)` is called for each data item written
    /// out completely.
    pub fn advance(&mut self, mut n: usize, released: &mut impl FnMut(u16)) {
        self.bytes -= n;
        while n > 0 {
            let Some(item) = self.items.front() else {
                break;
            };
            let len = match item {
                TxItem::Inline { len, .. } => usize::from(*len),
                TxItem::Data { len, .. } => *len as usize,
            };
            let left = len - self.head_off;
            if n < left {
                self.head_off += n;
                return;
            }
            n -= left;
            self.head_off = 0;
            if let Some(TxItem::Data { cid, .. }) = self.items.pop_front() {
                released(cid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_and_partial_advance() {
        let data: Vec<Vec<u8>> = vec![vec![1u8; 10], vec![2u8; 20]];
        let mut q = TxQueue::new(4);
        q.push_bytes(&[9, 9, 9]);
        q.push_data(1, 5, 10);
        q.push_bytes(&[7]);
        assert_eq!(q.bytes, 14);
        {
            let mut iov = [IoSlice::new(&[]); 8];
            assert_eq!(q.gather(&mut iov, &|c| data[usize::from(c)].as_slice()), 3);
            assert_eq!(&*iov[1], &[2u8; 10][..]);
        }
        let mut released = Vec::new();
        q.advance(5, &mut |c| released.push(c));
        assert!(released.is_empty());
        {
            let mut iov = [IoSlice::new(&[]); 8];
            assert_eq!(q.gather(&mut iov, &|c| data[usize::from(c)].as_slice()), 2);
            assert_eq!(iov[0].len(), 8);
        }
        q.advance(8, &mut |c| released.push(c));
        assert_eq!(released, vec![1]);
        q.advance(1, &mut |c| released.push(c));
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
    }
}
