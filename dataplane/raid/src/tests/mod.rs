//! Tests of the arrays, with members that fail on command: [`Faulty`] wraps a RAM
//! device and fails reads or writes, disappears (every request and every new channel
//! fails) and comes back, as the test says.

mod assembly;
mod mirror;
mod striped;
mod upgrade;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::testing::{pattern, AlignedBuf};
use lightpool_bdev::{Bdev, BdevError, BdevInfo, DataRef, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;

use crate::{ArrayOptions, Level, RaidBdev};

/// What a [`Faulty`] device does, switched by the test at any time.
#[derive(Default)]
pub struct Faults {
    pub fail_reads: AtomicBool,
    pub fail_writes: AtomicBool,
    /// Every request fails with ENODEV and no channel opens.
    pub gone: AtomicBool,
    /// Blocks written through it (data and metadata), and writes.
    pub blocks_written: AtomicU64,
    pub writes: AtomicU64,
    /// Reads passed to the device.
    pub reads: AtomicU64,
}

impl Faults {
    pub fn heal(&self) {
        self.fail_reads.store(false, SeqCst);
        self.fail_writes.store(false, SeqCst);
        self.gone.store(false, SeqCst);
    }
}

/// A RAM device that fails on command.
pub struct Faulty {
    pub ram: Arc<MallocBdev>,
    pub f: Arc<Faults>,
    info: BdevInfo,
}

impl Faulty {
    pub fn new(name: &str, bytes: u64, bs: u32) -> Arc<Faulty> {
        let ram = MallocBdev::new(name, bytes, bs).expect("RAM device");
        let mut info = ram.info().clone();
        info.name = name.to_string();
        Arc::new(Faulty {
            ram,
            f: Arc::new(Faults::default()),
            info,
        })
    }

    /// The member's bytes at `offset`, read behind the array's back.
    pub fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram.read_at(offset, &mut v).expect("in range");
        v
    }

    pub fn poke(&self, offset: u64, data: &[u8]) {
        self.ram.write_at(offset, data).expect("in range");
    }
}

impl Bdev for Faulty {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        "faulty"
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        if self.f.gone.load(SeqCst) {
            return Err(BdevError::Invalid(format!("{} is gone", self.info.name)));
        }
        Ok(Box::new(FaultyChannel {
            inner: self.ram.open_channel()?,
            f: self.f.clone(),
            errs: VecDeque::new(),
        }))
    }
}

struct FaultyChannel {
    inner: Box<dyn IoChannel>,
    f: Arc<Faults>,
    errs: VecDeque<(u64, IoStatus)>,
}

impl IoChannel for FaultyChannel {
    /// Passed on while healthy (a RAM device reads and writes in place).
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        if self.f.gone.load(SeqCst) || self.f.fail_reads.load(SeqCst) {
            return None;
        }
        self.inner.read_in_place(offset_blocks, num_blocks)
    }

    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        if self.f.gone.load(SeqCst) || self.f.fail_writes.load(SeqCst) {
            return false;
        }
        let done = self.inner.write_in_place(offset_blocks, num_blocks, data);
        if done {
            self.f.writes.fetch_add(1, SeqCst);
            self.f
                .blocks_written
                .fetch_add(u64::from(num_blocks), SeqCst);
        }
        done
    }

    unsafe fn submit(&mut self, req: IoRequest) {
        let writes = !matches!(req.op, IoOp::Read);
        let fail = if self.f.gone.load(SeqCst) {
            Some(libc::ENODEV)
        } else if (writes && self.f.fail_writes.load(SeqCst))
            || (!writes && self.f.fail_reads.load(SeqCst))
        {
            Some(libc::EIO)
        } else {
            None
        };
        match fail {
            Some(e) => self.errs.push_back((req.tag, IoStatus::Io(e))),
            None => {
                if req.op == IoOp::Read {
                    self.f.reads.fetch_add(1, SeqCst);
                }
                if req.op == IoOp::Write {
                    self.f.writes.fetch_add(1, SeqCst);
                    self.f
                        .blocks_written
                        .fetch_add(u64::from(req.num_blocks), SeqCst);
                }
                // SAFETY: the caller's contract, passed on.
                unsafe { self.inner.submit(req) }
            }
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = 0;
        while let Some((t, st)) = self.errs.pop_front() {
            done(t, st);
            n += 1;
        }
        n + self.inner.poll(done)
    }

    fn in_flight(&self) -> usize {
        self.errs.len() + self.inner.in_flight()
    }
}

pub const MIB: u64 = 1 << 20;

/// `n` faulty RAM members of `bytes` each.
pub fn members(prefix: &str, n: usize, bytes: u64, bs: u32) -> Vec<Arc<Faulty>> {
    (0..n)
        .map(|i| Faulty::new(&format!("{prefix}{i}"), bytes, bs))
        .collect()
}

pub fn as_bdevs(m: &[Arc<Faulty>]) -> Vec<Arc<dyn Bdev>> {
    m.iter().map(|f| f.clone() as Arc<dyn Bdev>).collect()
}

/// RAID1 options for tests: small regions, quick clearing, no rate limit.
pub fn raid1_opts(name: &str) -> ArrayOptions {
    let mut o = ArrayOptions::new(name, Level::Raid1);
    o.region_bytes = Some(256 << 10);
    o.bitmap_clear_delay = Duration::from_millis(50);
    o.rebuild_rate = 0;
    o
}

/// Waits (up to 20 s) until `cond` holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a verifying load saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadResult {
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
    pub mismatches: u64,
}

struct Lane {
    buf: AlignedBuf,
    chunk: u64,
    gen: u8,
    write: bool,
    busy: bool,
}

/// Where and how a verifying load runs.
pub struct LoadSpec {
    pub base: u64,
    pub chunks: u64,
    pub chunk_blocks: u32,
    pub qd: usize,
    pub seed: u64,
    pub min_ops: u64,
}

/// A verifying load on one channel: `qd` requests in flight, each lane owning the
/// chunks `c` with `c % qd == lane` of `chunks` chunks of `chunk_blocks` blocks from
/// `base`, writing a pattern stamped with a generation and reading it back, until
/// `stop` (after at least `min_ops`). Every read is checked against what its chunk
/// last had written (zeroes before).
pub fn verify_load(dev: &Arc<dyn Bdev>, spec: &LoadSpec, stop: &AtomicBool) -> LoadResult {
    let LoadSpec {
        base,
        chunks,
        chunk_blocks,
        qd,
        seed,
        min_ops,
    } = *spec;
    let bs = dev.info().block_size;
    let mut ch = dev.open_channel().expect("channel");
    let mut model = vec![0u8; chunks as usize];
    let mut lanes: Vec<Lane> = (0..qd)
        .map(|_| Lane {
            buf: AlignedBuf::new((chunk_blocks * bs) as usize),
            chunk: 0,
            gen: 0,
            write: false,
            busy: false,
        })
        .collect();
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut res = LoadResult::default();
    let per_lane = chunks / qd as u64;
    assert!(per_lane > 0, "fewer chunks than lanes");
    loop {
        let stopping = stop.load(Relaxed) && res.writes + res.reads >= min_ops;
        for (i, l) in lanes.iter_mut().enumerate() {
            if l.busy || stopping {
                continue;
            }
            l.chunk = (next() % per_lane) * qd as u64 + i as u64;
            let g = model[l.chunk as usize];
            l.write = g == 0 || next() % 2 == 0;
            let lba = base + l.chunk * u64::from(chunk_blocks);
            if l.write {
                l.gen = if g == 255 { 1 } else { g + 1 };
                l.buf
                    .as_mut_slice()
                    .copy_from_slice(&pattern(bs, lba, chunk_blocks, l.gen));
            } else {
                l.gen = g;
            }
            let op = if l.write { IoOp::Write } else { IoOp::Read };
            let req = IoRequest::rw(op, lba, chunk_blocks, l.buf.ptr(), l.buf.len(), i as u64);
            l.busy = true;
            // SAFETY: the lane's buffer lives until the request completes (the loop
            // below waits for every lane before returning).
            unsafe { ch.submit(req) };
        }
        let mut any_busy = false;
        ch.poll(&mut |tag, st| {
            let l = &mut lanes[tag as usize];
            l.busy = false;
            if st != IoStatus::Success {
                res.errors += 1;
                return;
            }
            if l.write {
                res.writes += 1;
                model[l.chunk as usize] = l.gen;
            } else {
                res.reads += 1;
                let lba = base + l.chunk * u64::from(chunk_blocks);
                let ok = if l.gen == 0 {
                    l.buf.as_slice().iter().all(|&b| b == 0)
                } else {
                    l.buf.as_slice() == pattern(bs, lba, chunk_blocks, l.gen).as_slice()
                };
                if !ok {
                    res.mismatches += 1;
                }
            }
        });
        for l in &lanes {
            any_busy |= l.busy;
        }
        if stopping && !any_busy {
            return res;
        }
        std::thread::yield_now();
    }
}

/// Runs `threads` verifying loads (disjoint quarters of the first `blocks` blocks)
/// while `during` runs; stops them when it returns.
pub fn under_load<T>(
    dev: &Arc<dyn Bdev>,
    threads: usize,
    blocks: u64,
    during: impl FnOnce() -> T,
) -> (Vec<LoadResult>, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let bs = dev.info().block_size;
    let chunk_blocks = 4096 / bs;
    let per = blocks / threads as u64;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let dev = dev.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let spec = LoadSpec {
                    base: t as u64 * per,
                    chunks: per / u64::from(chunk_blocks),
                    chunk_blocks,
                    qd: 32,
                    seed: 0x9e37_79b9 + t as u64,
                    min_ops: 500,
                };
                verify_load(&dev, &spec, &stop)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let out = during();
    stop.store(true, SeqCst);
    let res = hs
        .into_iter()
        .map(|h| h.join().expect("load thread"))
        .collect();
    (res, out)
}

/// Opens an array over `m`.
pub fn open(m: &[Arc<Faulty>], opts: &ArrayOptions) -> Arc<RaidBdev> {
    RaidBdev::open(as_bdevs(m), opts).expect("array opens")
}
