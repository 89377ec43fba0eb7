//! Random 4 KiB reads through the VFIO NVMe block device, in process, at a fixed queue
//! depth: the driver's IOPS without a network in the way.
//!
//!     nvme_vfio_iops PCI_ADDR [QUEUE_DEPTH=32] [SECONDS=10] [pool|bounce]
//!
//! `pool` (default) reads into buffers of the pool the device offers (`Bdev::dma_pool`,
//! where the NVMe-oF target takes its request buffers from too), which go to the device
//! as they are; `bounce` reads into ordinary memory, which the channel bounces. Prints
//! `IOPS=<n>` and `BOUNCED=<commands bounced>`.

use std::time::{Duration, Instant};

use lightpool_bdev::{Bdev, IoOp, IoRequest, IoStatus};
use lightpool_bdev_nvme_vfio::{NvmeVfioBdev, NvmeVfioOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .ok_or("usage: nvme_vfio_iops PCI_ADDR [QUEUE_DEPTH] [SECONDS] [pool|bounce]")?;
    let qd: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let secs: u64 = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let bounce = args.get(4).is_some_and(|s| s == "bounce");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let bdev = NvmeVfioBdev::open(addr, NvmeVfioOptions::default())?;
    let info = bdev.info().clone();
    let blocks_per_io = (4096 / info.block_size).max(1);
    let mut ch = bdev.open_channel()?;
    let pool = bdev
        .dma_pool()
        .ok_or("the VFIO device offers no DMA pool")?;
    // One 4 KiB buffer per slot.
    let mut pool_bufs = Vec::new();
    let mut heap: Vec<Vec<u8>> = Vec::new();
    let mut bufs: Vec<*mut u8> = Vec::new();
    for _ in 0..qd {
        if bounce {
            let mut v = vec![0u8; 8192];
            let off = v.as_ptr().align_offset(4096);
            bufs.push(v[off..].as_mut_ptr());
            heap.push(v);
        } else {
            let b = pool
                .get()
                .ok_or("the DMA pool has fewer buffers than the queue depth")?;
            bufs.push(b.as_ptr());
            pool_bufs.push(b);
        }
    }
    let span = info.num_blocks / u64::from(blocks_per_io);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_lba = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % span) * u64::from(blocks_per_io)
    };
    let submit = |ch: &mut Box<dyn lightpool_bdev::IoChannel>, slot: usize, lba: u64| {
        let req = IoRequest::rw(
            IoOp::Read,
            lba,
            blocks_per_io,
            bufs[slot],
            4096,
            slot as u64,
        );
        // SAFETY: buffer `slot` is 4096 bytes, stays alive until the end of main, and is
        // handed to one request at a time (resubmitted only after its completion).
        unsafe { ch.submit(req) };
    };
    for slot in 0..qd {
        submit(&mut ch, slot, next_lba());
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut finished = Vec::with_capacity(qd);
    loop {
        finished.clear();
        ch.poll(&mut |tag, st| finished.push((tag, st)));
        let now = Instant::now();
        for &(tag, st) in &finished {
            done += 1;
            if st != IoStatus::Success {
                errors += 1;
            }
            if now < end {
                submit(&mut ch, tag as usize, next_lba());
            }
        }
        if now >= end && ch.in_flight() == 0 {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "nvme_vfio_iops: {} qd={qd} {} reads in {elapsed:.1} s, errors={errors}",
        info.name,
        if bounce { "bounced" } else { "zero-copy" }
    );
    println!("IOPS={}", (done as f64 / elapsed) as u64);
    println!("BOUNCED={}", bdev.bounced());
    drop(ch);
    for b in pool_bufs {
        pool.put(b);
    }
    // The last reference: the controller is shut down (CC.SHN) here.
    drop(bdev);
    if errors > 0 {
        return Err(format!("{errors} reads failed").into());
    }
    Ok(())
}
