//! Pool metadata images: the input format of the `pool_meta` target, and the RAM
//! device it is laid on.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

use lightpool_bdev::{Bdev, BdevError, BdevInfo, DataRef, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;
use lightpool_pool::PoolOptions;

/// The name of the pools in the seeds (an open asks for the pool by name).
pub const POOL_NAME: &str = "fuzz";
/// The device: 4 MiB of 4 KiB blocks.
pub const DEVICE_BYTES: u64 = 4 << 20;
pub const BLOCK: u32 = 4096;
/// Metadata pages are 4 KiB, each kept in two slots; the records address slots.
pub const SLOT: usize = 4096;
const MAGIC: &[u8; 8] = b"LPPOOLMD";
const H_CRC: usize = 60;

/// The geometry of the seed pools: small, so that an image is a few pages.
pub fn options() -> PoolOptions {
    PoolOptions {
        cluster_size: 64 << 10,
        overcommit: 100,
        max_volumes: 16,
        md_pages: Some(24),
    }
}

/// CRC32C of a metadata page with its CRC field as zero (docs/pool-format.md).
fn page_crc(p: &[u8]) -> u32 {
    let c = crc32c::crc32c(&p[..H_CRC]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &p[H_CRC + 4..SLOT])
}

/// Input: a flags byte (bit 0: re-seal the pages), then records of a slot number (u8),
/// a length (u16, little-endian, at most 4096) and that many bytes (the rest of the
/// slot zero). The device, with the image written, or `None` for input too short.
pub fn image_device(data: &[u8]) -> Option<Arc<dyn Bdev>> {
    let (&flags, mut rest) = data.split_first()?;
    // Only the slots the records name are kept and written: the device's other pages
    // stay zero (the target ran at under 1,000 inputs a second when it wrote every
    // slot).
    let mut slots: BTreeMap<usize, Box<[u8; SLOT]>> = BTreeMap::new();
    while rest.len() >= 3 {
        let slot = usize::from(rest[0]);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(SLOT);
        rest = &rest[3..];
        let n = len.min(rest.len());
        let page = slots.entry(slot).or_insert_with(|| Box::new([0; SLOT]));
        page[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    let dev = Reused::get();
    for (slot, page) in &mut slots {
        if flags & 1 != 0 && &page[..8] == MAGIC {
            let crc = page_crc(&page[..]);
            page[H_CRC..H_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        }
        dev.write((*slot * SLOT) as u64, &page[..]);
    }
    Some(dev as Arc<dyn Bdev>)
}

/// Pages of 4 KiB in the device, and words of the bitmap of those written.
const PAGES: usize = (DEVICE_BYTES / 4096) as usize;
const WORDS: usize = PAGES / 64;

/// The one RAM device every input of the process lays its image on, zeroed again
/// where the last input (its image or the pool) wrote: a new device per input cost
/// more than the input (the memfd's page faults on first touch, its teardown), and
/// zeroing all of it twice as much again.
pub struct Reused {
    inner: Arc<MallocBdev>,
    /// A bit per page written since the device was last cleared.
    written: Arc<[AtomicU64; WORDS]>,
}

impl Reused {
    /// The device, every page the last input wrote zeroed again.
    fn get() -> Arc<Reused> {
        static DEV: OnceLock<Arc<Reused>> = OnceLock::new();
        let dev = DEV
            .get_or_init(|| {
                Arc::new(Reused {
                    inner: MallocBdev::new("fuzz-pool", DEVICE_BYTES, BLOCK).expect("RAM device"),
                    written: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
                })
            })
            .clone();
        let zero = [0u8; 4096];
        for (w, word) in dev.written.iter().enumerate() {
            let mut bits = word.swap(0, Relaxed);
            while bits != 0 {
                let page = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                dev.inner
                    .write_at((page * 4096) as u64, &zero)
                    .expect("page zeroed");
            }
        }
        dev
    }

    fn write(&self, at: u64, data: &[u8]) {
        mark(&self.written, at, data.len() as u64);
        self.inner.write_at(at, data).expect("image written");
    }
}

/// Marks the pages of `len` bytes at `at` written.
fn mark(written: &[AtomicU64; WORDS], at: u64, len: u64) {
    if len == 0 {
        return;
    }
    let first = (at / 4096) as usize;
    let last = (((at + len - 1) / 4096) as usize).min(PAGES - 1);
    for p in first..=last {
        written[p / 64].fetch_or(1 << (p % 64), Relaxed);
    }
}

impl Bdev for Reused {
    fn info(&self) -> &BdevInfo {
        self.inner.info()
    }
    fn kind(&self) -> &'static str {
        "fuzz-reused-ram"
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(ReusedChannel {
            inner: self.inner.open_channel()?,
            written: self.written.clone(),
            bs: u64::from(self.inner.info().block_size),
        }))
    }
}

struct ReusedChannel {
    inner: Box<dyn IoChannel>,
    written: Arc<[AtomicU64; WORDS]>,
    bs: u64,
}

impl IoChannel for ReusedChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        // Write Zeroes and Deallocate leave zeroes (the RAM device punches a hole):
        // nothing to clear after them.
        if req.op == IoOp::Write {
            let len = u64::from(req.num_blocks) * self.bs;
            mark(
                &self.written,
                req.offset_blocks.saturating_mul(self.bs),
                len,
            );
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.submit(req) }
    }
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        self.inner.read_in_place(offset_blocks, num_blocks)
    }
    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        mark(
            &self.written,
            offset_blocks.saturating_mul(self.bs),
            data.len() as u64,
        );
        self.inner.write_in_place(offset_blocks, num_blocks, data)
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.inner.poll(done)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }
}

/// Records of every non-blank slot of `image` (trailing zeroes cut), after `flags`.
pub fn records(image: &[u8], flags: u8) -> Vec<u8> {
    let mut v = vec![flags];
    for (i, p) in image.chunks(SLOT).enumerate().take(256) {
        let Some(end) = p.iter().rposition(|&b| b != 0) else {
            continue;
        };
        v.push(i as u8);
        v.extend_from_slice(&((end + 1) as u16).to_le_bytes());
        v.extend_from_slice(&p[..=end]);
    }
    v
}
