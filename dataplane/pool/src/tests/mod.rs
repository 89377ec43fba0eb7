//! The pool's tests: volumes as block devices, operations, snapshots and clones with
//! data checks at every step, thin exhaustion, refusing what cannot be read, hot-upgrade
//! adoption, and crash safety on a device that loses power.

mod basic;
mod crash;
mod errors;
pub mod fault;
mod log;
mod ops_crash;
mod snapshots;

use std::sync::Arc;

use lightpool_bdev::testing::{pattern, read, run1, write};
use lightpool_bdev::{IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;

use crate::{Pool, PoolOps, PoolOptions, VolumeBdev};

pub const MIB: u64 = 1 << 20;

/// Options with small clusters, so that tests touch many.
pub fn opts(cluster: u32, overcommit: u32) -> PoolOptions {
    PoolOptions {
        cluster_size: cluster,
        overcommit,
        max_volumes: 64,
        md_pages: None,
    }
}

/// A new pool on a new RAM device.
pub fn ram_pool(bytes: u64, bs: u32, o: &PoolOptions) -> (Arc<MallocBdev>, Arc<Pool>) {
    let dev = MallocBdev::new("ram-pool", bytes, bs).expect("ram");
    let (p, r) = Pool::open(dev.clone(), "p", o, true).expect("pool");
    assert_eq!(r, crate::OpenReport::Created);
    (dev, p)
}

pub fn vol(p: &Arc<Pool>, name: &str, size: u64, thin: bool) -> Arc<VolumeBdev> {
    p.create(name, size, thin).expect("create");
    p.open_volume(name).expect("open")
}

/// Writes `pattern(seed)` to `n` blocks at `lba`.
pub fn put(ch: &mut dyn IoChannel, bs: u32, lba: u64, n: u32, seed: u8) -> IoStatus {
    write(ch, bs, lba, &pattern(bs, lba, n, seed))
}

/// Whether `n` blocks at `lba` hold `pattern(seed)` (`None`: zeroes).
pub fn holds(ch: &mut dyn IoChannel, bs: u32, lba: u64, n: u32, seed: Option<u8>) -> bool {
    let (st, buf) = read(ch, bs, lba, n);
    assert_eq!(st, IoStatus::Success, "read {lba}+{n}");
    match seed {
        Some(s) => buf.as_slice() == pattern(bs, lba, n, s).as_slice(),
        None => buf.as_slice().iter().all(|&b| b == 0),
    }
}

pub fn zeroes(ch: &mut dyn IoChannel, op: IoOp, lba: u64, n: u32) -> IoStatus {
    run1(ch, IoRequest::no_data(op, lba, n, 5))
}

pub fn flush(ch: &mut dyn IoChannel) -> IoStatus {
    run1(ch, IoRequest::no_data(IoOp::Flush, 0, 0, 6))
}

/// Drops a pool as a crash would: without closing it.
pub fn crash(p: Arc<Pool>) {
    p.owned.store(false, std::sync::atomic::Ordering::Release);
    drop(p);
}
