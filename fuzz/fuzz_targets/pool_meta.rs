//! The pool's on-disk metadata reader (`Pool::open` of an existing pool: superblock,
//! volume table, heads and their continuation pages, maps, the mapping log, the
//! cross-checks and the replay after an unclean shutdown), on a RAM device whose
//! metadata area the input writes: records of (4 KiB slot number, bytes), every page
//! that starts with the metadata magic re-sealed with its right CRC when the input
//! asks (so the checks past the checksum are reached; seeds are images the pool's own
//! writer made, fuzz/examples/seeds.rs).
//!
//! Invariants beyond "no panic":
//! - an image is refused with an error, or it opens, and then the pool's own check
//!   (`PoolOps::check`: every map page re-read, no cluster owned twice, the free
//!   clusters those the maps leave) passes, and every volume listed can be looked up;
//! - no allocation beyond 8 MiB, 64 MiB live, whatever the metadata claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::pool::{image_device, POOL_NAME};
use lightpool_fuzz::{bounded_allocator, Armed};
use lightpool_pool::{Pool, PoolOps, PoolOptions};

bounded_allocator!();

fuzz_target!(|data: &[u8]| {
    let Some(dev) = image_device(data) else {
        return;
    };
    let _armed = Armed::new(8 << 20, 64 << 20);
    if let Ok((pool, _report)) = Pool::open(dev, POOL_NAME, &PoolOptions::default(), false) {
        let report = pool
            .check()
            .expect("a pool that opened passes its own check");
        let list = pool.list();
        assert_eq!(list.len(), report.volumes, "check and list disagree");
        for v in &list {
            pool.volume_info(&v.name)
                .expect("a listed volume can be looked up");
        }
    }
});
