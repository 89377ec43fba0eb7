//! `lightpool-perf bdev`: the same workloads on a LightPool block device in-process
//! (RAM or an io_uring file/block device), one channel per queue, like SPDK's
//! bdevperf: what a backend can do before any network is involved.

use std::sync::Arc;
use std::time::SystemTime;

use lightpool_bdev::{Bdev, IoChannel, IoOp, IoRequest};
use lightpool_bdev_ram::MallocBdev;
use lightpool_bdev_uring::{UringBdev, UringOptions};
use lightpool_dma::{DmaBuf, DmaPool};

use crate::cli::{fail_setup, BdevArgs};
use crate::engine::{Device, Done, IoQueue, PerfError, QueueSetup, WorkerSpec};
use crate::report::Report;
use crate::stats::ErrorKind;
use crate::workload::{split_region, Op, Region};

/// One channel with its own data buffers (4096-aligned, as `O_DIRECT` needs): from the
/// device's buffer pool when it offers one (a target takes its request buffers from
/// there too), else memory of the queue's own.
pub struct BdevQueue {
    // Declared first so it is dropped (and waits for its requests) before the buffers.
    ch: Box<dyn IoChannel>,
    data: Vec<u8>,
    base: usize,
    buf_len: usize,
    /// The pool buffers, one per tag, when the device's pool had enough of the size.
    pooled: Vec<DmaBuf>,
    pool: Option<Arc<DmaPool>>,
    depth: u16,
    free: Vec<u16>,
    name: String,
}

impl BdevQueue {
    pub fn new(bdev: &dyn Bdev, depth: u16, io_size: u32) -> Result<BdevQueue, PerfError> {
        let ch = bdev
            .open_channel()
            .map_err(|e| PerfError::Setup(format!("{}: {e}", bdev.info().name)))?;
        let buf_len = (io_size as usize).div_ceil(4096) * 4096;
        let mut pooled = Vec::new();
        let pool = bdev.dma_pool().filter(|p| p.buf_size() >= buf_len);
        if let Some(p) = &pool {
            pooled.extend((0..depth).map_while(|_| p.get()));
            if pooled.len() < usize::from(depth) {
                for b in pooled.drain(..) {
                    p.put(b);
                }
            }
        }
        let own = if pooled.is_empty() {
            usize::from(depth) * buf_len + 4096
        } else {
            0
        };
        let data = vec![0u8; own];
        let base = data.as_ptr().align_offset(4096).min(4096);
        Ok(BdevQueue {
            ch,
            data,
            base,
            buf_len,
            pool: (!pooled.is_empty()).then_some(pool).flatten(),
            pooled,
            depth,
            free: (0..depth).rev().collect(),
            name: bdev.info().name.clone(),
        })
    }

    fn range(&self, tag: u16) -> std::ops::Range<usize> {
        let s = self.base + usize::from(tag) * self.buf_len;
        s..s + self.buf_len
    }
}

impl Drop for BdevQueue {
    fn drop(&mut self) {
        // The channel first: it waits for the requests that use the buffers.
        drop(std::mem::replace(&mut self.ch, Box::new(NoChannel)));
        if let Some(p) = &self.pool {
            for b in self.pooled.drain(..) {
                p.put(b);
            }
        }
    }
}

/// What a dropped queue's channel is replaced with.
struct NoChannel;

impl IoChannel for NoChannel {
    unsafe fn submit(&mut self, _req: IoRequest) {}
    fn poll(&mut self, _done: &mut dyn FnMut(u64, lightpool_bdev::IoStatus)) -> usize {
        0
    }
    fn in_flight(&self) -> usize {
        0
    }
}

impl IoQueue for BdevQueue {
    fn depth(&self) -> u16 {
        self.depth
    }

    fn alloc(&mut self) -> Option<u16> {
        self.free.pop()
    }

    fn buf(&self, tag: u16) -> &[u8] {
        match self.pooled.get(usize::from(tag)) {
            Some(b) => &b.as_slice()[..self.buf_len],
            None => &self.data[self.range(tag)],
        }
    }

    fn buf_mut(&mut self, tag: u16) -> &mut [u8] {
        let len = self.buf_len;
        if usize::from(tag) < self.pooled.len() {
            return &mut self.pooled[usize::from(tag)].as_mut_slice()[..len];
        }
        let r = self.range(tag);
        &mut self.data[r]
    }

    #[inline]
    fn submit(
        &mut self,
        tag: u16,
        op: Op,
        lba: u64,
        blocks: u32,
        bytes: u32,
    ) -> Result<(), PerfError> {
        let op = match op {
            Op::Read => IoOp::Read,
            Op::Write => IoOp::Write,
        };
        let ptr = self.buf_mut(tag).as_mut_ptr();
        let req = IoRequest::rw(op, lba, blocks, ptr, bytes as usize, u64::from(tag));
        // SAFETY: `ptr` points at `tag`'s own `buf_len` bytes (of `self.data`, never
        // resized, or of the tag's pool buffer, held until the queue is dropped), which
        // outlive the channel (dropped first); the engine does not touch a tag's buffer
        // between submit and the completion `poll` returns.
        unsafe { self.ch.submit(req) };
        Ok(())
    }

    #[inline]
    fn poll(&mut self, out: &mut Vec<Done>) -> Result<(), PerfError> {
        let free = &mut self.free;
        self.ch.poll(&mut |tag, st| {
            let tag = tag as u16;
            free.push(tag);
            out.push(Done {
                tag,
                error: ErrorKind::from_bdev(st),
            });
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PerfError> {
        // Channels submit at their next poll, which the loop makes right away.
        Ok(())
    }

    fn in_flight(&self) -> usize {
        usize::from(self.depth) - self.free.len()
    }

    fn close(self) -> Result<(), PerfError> {
        Ok(())
    }

    fn describe(&self) -> String {
        format!("block device {}", self.name)
    }
}

fn open(a: &BdevArgs, depth: u16) -> Result<Arc<dyn Bdev>, PerfError> {
    if let Some(size) = a.ram {
        let b = MallocBdev::new("ram", size, a.block_size.unwrap_or(512))
            .map_err(|e| PerfError::Setup(e.to_string()))?;
        return Ok(b);
    }
    let path = a
        .file
        .as_ref()
        .ok_or_else(|| PerfError::Setup("give --ram SIZE or --file PATH".into()))?;
    let opts = UringOptions {
        block_size: a.block_size,
        read_only: false,
        direct: !a.buffered,
        queue_depth: u32::from(depth),
    };
    let b = UringBdev::open_with(path, opts, a.ring.unwrap_or_default())
        .map_err(|e| PerfError::Setup(e.to_string()))?;
    if !a.buffered && !b.is_direct() {
        eprintln!(
            "lightpool-perf: {} does not support O_DIRECT here; the run goes through the page cache",
            path.display()
        );
    }
    Ok(b)
}

pub fn main(a: &BdevArgs) -> i32 {
    let job = match a.w.job(a.out.progress()) {
        Ok(j) => j,
        Err(e) => return fail_setup(PerfError::Setup(e)),
    };
    let bdev = match open(a, job.depth) {
        Ok(b) => b,
        Err(e) => return fail_setup(e),
    };
    let info = bdev.info().clone();
    let bs = info.block_size;
    if !job.io_size.is_multiple_of(bs) {
        return fail_setup(PerfError::Setup(format!(
            "the I/O size {} is not a multiple of the {bs}-byte block size",
            job.io_size
        )));
    }
    let (start, end) = a.w.range.unwrap_or((0, info.num_blocks));
    if end > info.num_blocks || end - start < u64::from(job.io_size / bs) {
        return fail_setup(PerfError::Setup(format!(
            "--range {start}:{end} does not fit {} ({} blocks) or holds no {}-byte I/O",
            info.name, info.num_blocks, job.io_size
        )));
    }
    let range = Region {
        start_lba: start,
        blocks: end - start,
    };
    let cores = a.w.core_list();
    let per_core = usize::from(a.w.qpairs);
    let nq = cores.len() * per_core;
    let io_blocks = job.io_size / bs;
    let regions = if job.verify || !job.workload.random() {
        match split_region(range, io_blocks, nq) {
            Some(r) => r,
            None => {
                return fail_setup(PerfError::Setup(format!(
                    "the range holds fewer {}-byte I/Os than the {nq} queues that share it",
                    job.io_size
                )))
            }
        }
    } else {
        vec![range; nq]
    };
    let seed = a.w.seed();
    let devices = vec![Device {
        name: info.name.clone(),
        block_size: bs,
        range,
    }];
    let mut workers = Vec::new();
    for (ci, core) in cores.iter().enumerate() {
        let bdev = bdev.clone();
        let regions: Vec<Region> = regions[ci * per_core..(ci + 1) * per_core].to_vec();
        let (depth, io_size) = (job.depth, job.io_size);
        workers.push(WorkerSpec {
            core: *core,
            build: Box::new(move || {
                regions
                    .into_iter()
                    .enumerate()
                    .map(|(qi, region)| {
                        Ok(QueueSetup {
                            queue: BdevQueue::new(bdev.as_ref(), depth, io_size)?,
                            device: 0,
                            region,
                            seed: seed ^ ((ci * per_core + qi) as u64).wrapping_mul(0x9E37_79B9),
                        })
                    })
                    .collect()
            }),
        });
    }
    let started = SystemTime::now();
    let target = format!(
        "{} ({} x {} B{})",
        info.name,
        info.num_blocks,
        bs,
        if a.file.is_some() {
            if a.buffered {
                ", io_uring, buffered"
            } else {
                ", io_uring, O_DIRECT"
            }
        } else {
            ", RAM"
        }
    );
    let settings =
        a.w.settings("block device", target, per_core, String::new());
    match crate::engine::run(&job, &devices, workers, &mut || Ok(())) {
        Ok(out) => a
            .out
            .emit(&Report::new(settings, &job, &devices, &out), started),
        Err(e) => fail_setup(e),
    }
}
