//! The checks every backend must pass (each backend's tests run them against it), and
//! helpers for writing such tests. Built with the `testing` feature.

use std::alloc::Layout;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Bdev, IoChannel, IoOp, IoRequest, IoStatus};

/// A 4096-byte-aligned buffer, as the target allocates them.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, layout }
    }
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.layout.size()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation is `len` initialised bytes (alloc_zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len()) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Polls until `want` completions have come back (or panics after 10 s), checking each
/// tag comes back once.
pub fn poll_n(ch: &mut dyn IoChannel, want: usize) -> HashMap<u64, IoStatus> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} completions arrived",
            got.len()
        );
        ch.poll(&mut |tag, status| {
            assert!(
                got.insert(tag, status).is_none(),
                "tag {tag} completed twice"
            );
        });
    }
    // Nothing more may arrive.
    ch.poll(&mut |tag, _| panic!("extra completion for tag {tag}"));
    assert_eq!(ch.in_flight(), 0);
    got
}

/// Submits one request and waits for its status.
pub fn run1(ch: &mut dyn IoChannel, req: IoRequest) -> IoStatus {
    let tag = req.tag;
    // SAFETY: callers pass buffers that outlive this call, which waits for completion.
    unsafe { ch.submit(req) };
    poll_n(ch, 1)[&tag]
}

pub fn read(ch: &mut dyn IoChannel, bs: u32, lba: u64, n: u32) -> (IoStatus, AlignedBuf) {
    let buf = AlignedBuf::new((n * bs) as usize);
    let st = run1(
        ch,
        IoRequest::rw(IoOp::Read, lba, n, buf.ptr(), buf.len(), 1),
    );
    (st, buf)
}

pub fn write(ch: &mut dyn IoChannel, bs: u32, lba: u64, data: &[u8]) -> IoStatus {
    let mut buf = AlignedBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    let n = (data.len() / bs as usize) as u32;
    run1(
        ch,
        IoRequest::rw(IoOp::Write, lba, n, buf.ptr(), buf.len(), 2),
    )
}

/// A pattern that differs per block and per byte, so misplaced data shows.
pub fn pattern(bs: u32, lba: u64, n: u32, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((n * bs) as usize);
    for b in 0..u64::from(n) {
        let block = lba + b;
        for i in 0..bs as u64 {
            v.push((block.wrapping_mul(31) ^ i.wrapping_mul(7) ^ u64::from(seed)) as u8);
        }
    }
    v
}

// ---- The checks every backend must pass. ----

pub fn check_round_trip(bdev: &dyn Bdev) {
    let info = bdev.info().clone();
    let bs = info.block_size;
    let mut ch = bdev.open_channel().unwrap();
    let ch = ch.as_mut();
    let last = info.num_blocks - 1;
    let cases: Vec<(u64, u32)> = vec![
        (0, 1),
        (1, 1),
        (7, 3),
        (8, 8),
        (33, 17),
        (100, 64),
        (last, 1),
        (last - 4, 5),
        (info.num_blocks / 2, 32),
    ];
    for (i, &(lba, n)) in cases.iter().enumerate() {
        let data = pattern(bs, lba, n, i as u8);
        assert_eq!(
            write(ch, bs, lba, &data),
            IoStatus::Success,
            "write {lba}+{n}"
        );
    }
    for (i, &(lba, n)) in cases.iter().enumerate() {
        // Later cases may overwrite earlier ones; check only those not overlapped later.
        let overlapped = cases[i + 1..]
            .iter()
            .any(|&(l2, n2)| l2 < lba + u64::from(n) && lba < l2 + u64::from(n2));
        if overlapped {
            continue;
        }
        let (st, buf) = read(ch, bs, lba, n);
        assert_eq!(st, IoStatus::Success);
        assert!(
            buf.as_slice() == pattern(bs, lba, n, i as u8).as_slice(),
            "data mismatch at {lba}+{n}"
        );
    }
    // Never-written blocks read as zeroes.
    let (st, buf) = read(ch, bs, 300, 4);
    assert_eq!(st, IoStatus::Success);
    assert!(buf.as_slice().iter().all(|&b| b == 0));
}

pub fn check_out_of_range(bdev: &dyn Bdev) {
    let info = bdev.info().clone();
    let bs = info.block_size;
    let nb = info.num_blocks;
    let mut ch = bdev.open_channel().unwrap();
    let ch = ch.as_mut();
    let buf = AlignedBuf::new(2 * bs as usize);
    for (lba, n) in [(nb, 1), (nb - 1, 2), (u64::MAX, 1), (u64::MAX - 1, 2)] {
        for op in [IoOp::Read, IoOp::Write] {
            let len = (n * bs) as usize;
            let st = run1(ch, IoRequest::rw(op, lba, n, buf.ptr(), len, 9));
            assert_eq!(st, IoStatus::OutOfRange, "{op:?} {lba}+{n}");
        }
        for op in [IoOp::WriteZeroes, IoOp::Deallocate] {
            let st = run1(ch, IoRequest::no_data(op, lba, n, 9));
            assert_eq!(st, IoStatus::OutOfRange, "{op:?} {lba}+{n}");
        }
    }
    // The last block itself is fine.
    let st = run1(
        ch,
        IoRequest::rw(IoOp::Read, nb - 1, 1, buf.ptr(), bs as usize, 1),
    );
    assert_eq!(st, IoStatus::Success);
    // A buffer length that does not match the block count is refused, not truncated.
    let st = run1(
        ch,
        IoRequest::rw(IoOp::Read, 0, 2, buf.ptr(), bs as usize, 1),
    );
    assert_eq!(st, IoStatus::Io(libc::EINVAL));
}

pub fn check_flush(bdev: &dyn Bdev) {
    let bs = bdev.info().block_size;
    let mut ch = bdev.open_channel().unwrap();
    let ch = ch.as_mut();
    assert_eq!(write(ch, bs, 5, &pattern(bs, 5, 2, 1)), IoStatus::Success);
    assert_eq!(
        run1(ch, IoRequest::no_data(IoOp::Flush, 0, 0, 4)),
        IoStatus::Success
    );
    let (st, buf) = read(ch, bs, 5, 2);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(buf.as_slice(), pattern(bs, 5, 2, 1).as_slice());
}

pub fn check_zeroes_and_deallocate(bdev: &dyn Bdev) {
    let bs = bdev.info().block_size;
    let mut ch = bdev.open_channel().unwrap();
    let ch = ch.as_mut();
    for op in [IoOp::WriteZeroes, IoOp::Deallocate] {
        // A large range (multi-page, partly unaligned to pages for 512-byte blocks) and
        // a single block.
        for (lba, n) in [(3u64, 300u32), (400, 1)] {
            let start = lba - 2;
            let total = n + 4;
            let data = pattern(bs, start, total, 3);
            assert_eq!(write(ch, bs, start, &data), IoStatus::Success);
            let st = run1(ch, IoRequest::no_data(op, lba, n, 7));
            assert_eq!(st, IoStatus::Success, "{op:?} {lba}+{n}");
            let (st, buf) = read(ch, bs, start, total);
            assert_eq!(st, IoStatus::Success);
            let bsz = bs as usize;
            let got = buf.as_slice();
            if op == IoOp::WriteZeroes || bdev.info().supports_deallocate {
                assert!(
                    got[2 * bsz..(2 + n as usize) * bsz].iter().all(|&b| b == 0),
                    "{op:?} {lba}+{n} left data behind"
                );
            }
            assert_eq!(
                &got[..2 * bsz],
                &data[..2 * bsz],
                "{op:?} touched blocks before"
            );
            assert_eq!(
                &got[(2 + n as usize) * bsz..],
                &data[(2 + n as usize) * bsz..],
                "{op:?} touched blocks after"
            );
        }
    }
}

/// `count` writes submitted before one poll, then `count` reads; each tag completes once
/// and every block holds what its write put there.
pub fn check_many_in_flight(bdev: &dyn Bdev, count: usize) {
    let bs = bdev.info().block_size;
    let mut ch = bdev.open_channel().unwrap();
    let ch = ch.as_mut();
    let bufs: Vec<AlignedBuf> = (0..count)
        .map(|i| {
            let mut b = AlignedBuf::new(bs as usize);
            b.as_mut_slice()
                .copy_from_slice(&pattern(bs, i as u64, 1, 0x5a));
            b
        })
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        let req = IoRequest::rw(IoOp::Write, i as u64, 1, b.ptr(), b.len(), 1000 + i as u64);
        // SAFETY: `bufs` outlives the completions collected below.
        unsafe { ch.submit(req) };
    }
    assert_eq!(ch.in_flight(), count);
    let got = poll_n(ch, count);
    for i in 0..count {
        assert_eq!(got[&(1000 + i as u64)], IoStatus::Success);
    }
    let rbufs: Vec<AlignedBuf> = (0..count).map(|_| AlignedBuf::new(bs as usize)).collect();
    for (i, b) in rbufs.iter().enumerate() {
        let req = IoRequest::rw(IoOp::Read, i as u64, 1, b.ptr(), b.len(), 5000 + i as u64);
        // SAFETY: `rbufs` outlives the completions collected below.
        unsafe { ch.submit(req) };
    }
    let got = poll_n(ch, count);
    for (i, b) in rbufs.iter().enumerate() {
        assert_eq!(got[&(5000 + i as u64)], IoStatus::Success);
        assert_eq!(
            b.as_slice(),
            pattern(bs, i as u64, 1, 0x5a).as_slice(),
            "block {i}"
        );
    }
}

/// What a channel serves in place ([`IoChannel::read_in_place`],
/// [`IoChannel::write_in_place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlace {
    pub reads: bool,
    pub writes: bool,
}

/// A device that serves I/O in place serves the same bytes as through `submit`, both
/// ways, and leaves to `submit` what a submitted request would be refused; one that
/// declines is left to `submit` altogether. Returns what it serves in place.
pub fn check_served_in_place(bdev: &dyn Bdev) -> InPlace {
    let info = bdev.info().clone();
    let bs = info.block_size;
    let nb = info.num_blocks;
    let mut ch = bdev.open_channel().unwrap();
    let ch = ch.as_mut();
    let (lba, n) = (nb / 2 + 3, 5);
    let data = pattern(bs, lba, n, 0x11);
    assert_eq!(write(ch, bs, lba, &data), IoStatus::Success);
    let reads = match ch.read_in_place(lba, n) {
        None => false,
        Some(r) => {
            assert_eq!(r.len(), data.len());
            // SAFETY: the channel outlives the slice.
            assert!(unsafe { r.as_slice() } == data.as_slice(), "read in place");
            // What a submitted read would be refused is not served in place.
            assert!(ch.read_in_place(nb, 1).is_none());
            assert!(ch.read_in_place(nb - 1, 2).is_none());
            assert!(ch.read_in_place(u64::MAX, 2).is_none());
            true
        }
    };
    let newer = pattern(bs, lba, n, 0x22);
    let writes = ch.write_in_place(lba, n, &newer);
    if writes {
        let (st, buf) = read(ch, bs, lba, n);
        assert_eq!(st, IoStatus::Success);
        assert!(buf.as_slice() == newer.as_slice(), "written in place");
        assert!(!ch.write_in_place(nb - 1, 2, &newer[..2 * bs as usize]));
        // The data must be exactly the blocks named.
        assert!(!ch.write_in_place(lba, 2, &newer[..bs as usize]));
        let (_, buf) = read(ch, bs, lba, n);
        assert!(buf.as_slice() == newer.as_slice(), "a refused write wrote");
    } else {
        let (_, buf) = read(ch, bs, lba, n);
        assert!(buf.as_slice() == data.as_slice(), "a declined write wrote");
    }
    // Nothing in place leaves a completion behind.
    ch.poll(&mut |tag, _| panic!("completion for tag {tag} after in-place I/O"));
    assert_eq!(ch.in_flight(), 0);
    InPlace { reads, writes }
}
