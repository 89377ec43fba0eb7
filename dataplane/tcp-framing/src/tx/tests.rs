//! The send queue: order, coalescing, releases, the ring wrapping and growing, and
//! the `writev` loop against a socket that takes a few bytes at a time.

use std::io::{self, IoSlice};

use super::*;

/// Slot data of a test: `slots[i]` is slot i's buffer; releases are recorded.
struct Bufs {
    slots: Vec<Vec<u8>>,
    released: Vec<u16>,
}

impl TxBuffers for Bufs {
    fn data(&self, slot: u16) -> &[u8] {
        &self.slots[usize::from(slot)]
    }
    fn release(&mut self, slot: u16) {
        self.released.push(slot);
    }
}

fn bufs(n: usize, len: usize) -> Bufs {
    Bufs {
        slots: (0..n).map(|i| vec![i as u8; len]).collect(),
        released: Vec::new(),
    }
}

fn gathered(q: &TxQueue, b: &Bufs) -> (usize, Vec<u8>) {
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    let n = q.gather(&mut iov, b);
    (n, iov[..n].iter().flat_map(|s| s.iter().copied()).collect())
}

#[test]
fn coalesces_and_releases_in_order() {
    let mut b = bufs(2, 100);
    let mut q = TxQueue::new(8);
    q.push_bytes(b"abc");
    q.push_data(1, 10, 20);
    q.push_bytes(b"de");
    q.push_bytes(b"f");
    q.push_release(1);
    assert_eq!(q.bytes(), 26);
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    let n = q.gather(&mut iov, &b);
    assert_eq!(n, 3);
    assert_eq!(&*iov[0], b"abc");
    assert_eq!(&*iov[1], &[1u8; 20][..]);
    assert_eq!(&*iov[2], b"def");
    q.advance(5, &mut b);
    assert!(b.released.is_empty());
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    let n = q.gather(&mut iov, &b);
    assert_eq!(n, 2);
    assert_eq!(iov[0].len(), 18);
    q.advance(21, &mut b);
    assert_eq!(b.released, vec![1]);
    assert!(q.is_empty());
}

#[test]
fn large_byte_runs_grow_the_ring() {
    let b = bufs(0, 0);
    let mut q = TxQueue::new(2);
    let big: Vec<u8> = (0..RING * 2 + 5).map(|i| i as u8).collect();
    q.push_bytes(&big[..100]);
    q.push_bytes(&big[100..]);
    assert_eq!(gathered(&q, &b).1, big);
}

/// Bytes that wrap around the end of the ring come out in order, in two iovecs,
/// and responses separated only by releases go out as one run.
#[test]
fn wraps_and_coalesces_across_releases() {
    let mut b = Bufs {
        slots: vec![vec![9u8; 100]; 2000],
        released: Vec::new(),
    };
    let mut q = TxQueue::new(8);
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
        expect.extend_from_slice(&[9u8; 100]);
        expect.extend_from_slice(&resp);
        // Write a few odd-sized pieces, as a socket would.
        let (_, chunk) = gathered(&q, &b);
        let take = chunk.len().min(97 + (round as usize % 50));
        sent.extend_from_slice(&chunk[..take]);
        q.advance(take, &mut b);
    }
    loop {
        let (n, chunk) = gathered(&q, &b);
        if n == 0 {
            break;
        }
        sent.extend_from_slice(&chunk);
        q.advance(chunk.len(), &mut b);
    }
    q.advance(0, &mut b);
    assert!(q.is_empty());
    assert_eq!(sent, expect);
    assert_eq!(
        b.released,
        (0..2000u32).map(|r| r as u16).collect::<Vec<_>>()
    );
    // The ring never needed to grow: nothing was ever that far behind.
    assert_eq!(q.ring.len(), RING);

    // A response, a release, the next header: one iovec.
    q.push_bytes(b"resp");
    q.push_release(1);
    q.push_bytes(b"hdr");
    let (n, bytes) = gathered(&q, &b);
    assert_eq!((n, bytes.as_slice()), (1, &b"resphdr"[..]));
    b.released.clear();
    q.clear(&mut b);
    assert_eq!(b.released, vec![1]);
    assert!(q.is_empty());
    assert_eq!(q.bytes(), 0);
}

/// Encoded in place, or aside and copied when the ring's end is too near: the same
/// bytes either way, and the ring grows when they do not fit at all.
#[test]
fn encoded_pushes_land_in_order_across_the_ring_end() {
    let mut b = bufs(0, 0);
    let mut q = TxQueue::new(4);
    let mut expect = Vec::new();
    let mut sent = Vec::new();
    for round in 0..1000usize {
        let len = 20 + round % 90;
        q.push_encoded(128, |out| {
            for (i, x) in out[..len].iter_mut().enumerate() {
                *x = (round + i) as u8;
            }
            len
        });
        expect.extend((0..len).map(|i| (round + i) as u8));
        let (_, chunk) = gathered(&q, &b);
        let take = chunk.len().min(50 + round % 70);
        sent.extend_from_slice(&chunk[..take]);
        q.advance(take, &mut b);
    }
    let (_, chunk) = gathered(&q, &b);
    sent.extend_from_slice(&chunk);
    assert_eq!(sent, expect);
    assert_eq!(q.ring.len(), RING);
    // More than the ring holds at once.
    let mut q = TxQueue::new(4);
    for _ in 0..200 {
        q.push_encoded(MAX_ENCODED, |out| {
            out.fill(7);
            out.len()
        });
    }
    assert_eq!(q.bytes(), 200 * MAX_ENCODED);
    assert!(gathered(&q, &b).1.iter().all(|&x| x == 7));
}

#[test]
fn gather_stops_at_the_iovecs_it_is_given() {
    let b = bufs(4, 8);
    let mut q = TxQueue::new(8);
    for s in 0..4 {
        q.push_bytes(b"h");
        q.push_data(s, 0, 8);
    }
    let mut iov = [IoSlice::new(&[]); 3];
    assert_eq!(q.gather(&mut iov, &b), 3);
    assert_eq!(&*iov[2], b"h");
}

/// A socket that takes at most `take` bytes per call, blocking every other call.
struct Trickle {
    take: usize,
    calls: usize,
    out: Vec<u8>,
    fail: Option<io::ErrorKind>,
}

impl crate::Stream for Trickle {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        if let Some(k) = self.fail {
            return Err(k.into());
        }
        self.calls += 1;
        if self.calls.is_multiple_of(2) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for s in iov {
            let k = s.len().min(self.take - n);
            self.out.extend_from_slice(&s[..k]);
            n += k;
            if n == self.take {
                break;
            }
        }
        Ok(n)
    }
}

#[test]
fn send_resumes_after_partial_writes_and_a_full_socket() {
    let mut b = bufs(3, 50);
    let mut q = TxQueue::new(8);
    let mut expect = Vec::new();
    for s in 0..3u16 {
        q.push_bytes(&[0xA0 + s as u8; 7]);
        q.push_data(s, 5, 40);
        q.push_release(s);
        expect.extend_from_slice(&[0xA0 + s as u8; 7]);
        expect.extend_from_slice(&[s as u8; 40]);
    }
    let mut t = Trickle {
        take: 13,
        calls: 0,
        out: Vec::new(),
        fail: None,
    };
    let mut rounds = 0;
    while !q.is_empty() {
        let sent = q.send::<4, _, _>(&mut t, &mut b).expect("no error");
        assert!(sent.blocked || q.is_empty());
        rounds += 1;
        assert!(rounds < 100, "no progress");
    }
    assert_eq!(t.out, expect);
    assert_eq!(b.released, vec![0, 1, 2]);

    // Errors are the caller's; what was queued stays queued.
    q.push_bytes(b"x");
    t.fail = Some(io::ErrorKind::BrokenPipe);
    let e = q.send::<4, _, _>(&mut t, &mut b).expect_err("broken pipe");
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(q.bytes(), 1);
}

#[test]
fn a_socket_that_takes_nothing_is_an_error() {
    struct Zero;
    impl crate::Stream for Zero {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn writev(&mut self, _iov: &[IoSlice<'_>]) -> io::Result<usize> {
            Ok(0)
        }
    }
    let mut q = TxQueue::new(1);
    q.push_bytes(b"abc");
    let one = [7u8; 4];
    let e = q
        .send::<MAX_IOV, _, _>(&mut Zero, &mut Shared(&one))
        .expect_err("zero");
    assert_eq!(e.kind(), io::ErrorKind::WriteZero);
}
