use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lightpool_bdev::testing::{
    check_flush, check_many_in_flight, check_out_of_range, check_round_trip, check_served_in_place,
    check_zeroes_and_deallocate, InPlace,
};
use lightpool_bdev::{Adopters, Bdev, DeviceGraph, IoOp, IoStatus};

use super::*;
use crate::{OpenReport, PoolError};

/// A volume is a block device like any other: thin or thick, 512- or 4096-byte blocks,
/// clusters smaller and larger than a request.
#[test]
fn volumes_pass_every_backend_check() {
    for (bs, cluster, thin) in [
        (512, 64 << 10, true),
        (512, 64 << 10, false),
        (4096, 1 << 20, true),
        (4096, 16 << 10, true),
    ] {
        let (_d, p) = ram_pool(64 * MIB, bs, &opts(cluster, 100));
        let v = vol(&p, "v", 16 * MIB, thin);
        check_round_trip(v.as_ref());
        check_out_of_range(v.as_ref());
        check_flush(v.as_ref());
        check_zeroes_and_deallocate(v.as_ref());
        check_many_in_flight(v.as_ref(), 300);
        // Over RAM, the target's zero-copy reads and in-place writes pass through.
        // (The check uses 5 blocks at the middle of the device: in one cluster unless
        // the clusters are smaller than that.)
        let ip = check_served_in_place(v.as_ref());
        let at = (v.info().num_blocks / 2 + 3) * u64::from(bs) % u64::from(cluster);
        let one = at + 5 * u64::from(bs) <= u64::from(cluster);
        let want = InPlace {
            reads: one,
            writes: one,
        };
        assert_eq!(ip, want, "{bs}-byte blocks, {cluster}-byte clusters");
        p.check().expect("metadata on the device matches memory");
    }
}

#[test]
fn thin_clusters_come_with_the_first_write_and_go_with_deallocate() {
    let (_d, p) = ram_pool(32 * MIB, 512, &opts(64 << 10, 100));
    let free0 = p.pool_info().free_clusters;
    let v = vol(&p, "v", 8 * MIB, true);
    assert_eq!(p.volume_info("v").unwrap().used, 0);
    assert_eq!(
        p.pool_info().free_clusters,
        free0,
        "a thin volume takes nothing at creation"
    );
    let mut ch = v.open_channel().unwrap();
    let ch = ch.as_mut();
    // One block in cluster 0; eight spanning clusters 1 and 2 (128 blocks each).
    assert_eq!(put(ch, 512, 5, 1, 1), IoStatus::Success);
    assert_eq!(put(ch, 512, 250, 8, 2), IoStatus::Success);
    assert_eq!(p.volume_info("v").unwrap().used, 3 * (64 << 10));
    assert_eq!(p.pool_info().free_clusters, free0 - 3);
    assert!(holds(ch, 512, 5, 1, Some(1)));
    assert!(holds(ch, 512, 250, 8, Some(2)));
    assert!(
        holds(ch, 512, 0, 5, None),
        "the rest of a new cluster reads as zeroes"
    );
    // Deallocate cluster 1 whole and two blocks of cluster 2.
    assert_eq!(zeroes(ch, IoOp::Deallocate, 128, 130), IoStatus::Success);
    assert_eq!(p.volume_info("v").unwrap().used, 2 * (64 << 10));
    assert_eq!(p.pool_info().free_clusters, free0 - 2);
    assert!(holds(ch, 512, 128, 130, None));
    assert!(holds(ch, 512, 5, 1, Some(1)));
    // Write Zeroes of a whole cluster frees it too.
    assert_eq!(zeroes(ch, IoOp::WriteZeroes, 0, 128), IoStatus::Success);
    assert_eq!(p.volume_info("v").unwrap().used, 64 << 10);
    assert!(holds(ch, 512, 0, 128, None));
    p.check().expect("consistent");
}

#[test]
fn volumes_and_data_survive_a_clean_close_and_an_unclean_one() {
    let dev = MallocBdev::new("d", 64 * MIB, 512).unwrap();
    {
        let (p, _) = Pool::open(dev.clone(), "p", &opts(64 << 10, 200), true).unwrap();
        let a = vol(&p, "a", 16 * MIB, true);
        let b = vol(&p, "b", 4 * MIB, false);
        let mut ca = a.open_channel().unwrap();
        let mut cb = b.open_channel().unwrap();
        assert_eq!(put(ca.as_mut(), 512, 1000, 64, 3), IoStatus::Success);
        assert_eq!(put(cb.as_mut(), 512, 7, 9, 4), IoStatus::Success);
        assert_eq!(flush(ca.as_mut()), IoStatus::Success);
    }
    // Everything dropped: the pool closed cleanly.
    let (p, r) = Pool::open(dev.clone(), "p", &PoolOptions::default(), false).unwrap();
    assert_eq!(r, OpenReport::Clean { volumes: 2 });
    let names: Vec<String> = p.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(!p.volume_info("b").unwrap().thin);
    assert_eq!(
        p.volume_info("b").unwrap().used,
        4 * MIB,
        "thick: all allocated"
    );
    {
        let a = p.open_volume("a").unwrap();
        let mut ca = a.open_channel().unwrap();
        assert!(holds(ca.as_mut(), 512, 1000, 64, Some(3)));
        assert_eq!(put(ca.as_mut(), 512, 20_000, 16, 5), IoStatus::Success);
    }
    crash(p);
    let (p, r) = Pool::open(dev.clone(), "p", &PoolOptions::default(), false).unwrap();
    assert!(
        matches!(r, OpenReport::Recovered { volumes: 2, .. }),
        "{r:?}"
    );
    let a = p.open_volume("a").unwrap();
    let b = p.open_volume("b").unwrap();
    let mut ca = a.open_channel().unwrap();
    let mut cb = b.open_channel().unwrap();
    assert!(holds(ca.as_mut(), 512, 1000, 64, Some(3)));
    assert!(holds(ca.as_mut(), 512, 20_000, 16, Some(5)));
    assert!(holds(cb.as_mut(), 512, 7, 9, Some(4)));
    p.check().expect("consistent after the replay");
}

#[test]
fn operations_and_what_they_refuse() {
    let (_d, p) = ram_pool(32 * MIB, 512, &opts(64 << 10, 150));
    let data = p.pool_info().data_clusters * (64 << 10);
    p.create("a", 8 * MIB, true).unwrap();
    assert!(matches!(
        p.create("a", MIB, true),
        Err(PoolError::Exists { .. })
    ));
    assert!(matches!(
        p.create("x/y", MIB, true),
        Err(PoolError::InvalidName { .. })
    ));
    assert!(matches!(
        p.create("z", 1000, true),
        Err(PoolError::InvalidSize { .. })
    ));
    // The over-commit limit counts every writable volume's size.
    let limit = p.pool_info().promise_limit;
    assert_eq!(limit, data / 100 * 150);
    let e = p.create("big", limit / 512 * 512, true).unwrap_err();
    assert!(matches!(e, PoolError::Overcommit { .. }), "{e}");
    assert!(e.to_string().contains("overcommit"), "{e}");
    // A thick volume larger than the free space is refused.
    let e = p.create("thick", data + (64 << 10), false).unwrap_err();
    assert!(
        matches!(e, PoolError::NoSpace { .. } | PoolError::Overcommit { .. }),
        "{e}"
    );
    // Rename, grow.
    p.rename("a", "b").unwrap();
    assert!(p.volume_info("a").is_err());
    let v = p.open_volume("b").unwrap();
    let mut ch = v.open_channel().unwrap();
    assert_eq!(put(ch.as_mut(), 512, 16_000, 8, 9), IoStatus::Success);
    let g = p.grow("b", 12 * MIB).unwrap();
    assert_eq!(g.size, 12 * MIB);
    assert!(matches!(p.grow("b", MIB), Err(PoolError::Shrink { .. })));
    assert!(
        holds(ch.as_mut(), 512, 16_000, 8, Some(9)),
        "growing keeps the data"
    );
    // Served: not deleted.
    let e = p.delete("b").unwrap_err();
    assert!(matches!(e, PoolError::InUse { .. }), "{e}");
    drop(ch);
    drop(v);
    let free = p.pool_info().free_clusters;
    p.delete("b").unwrap();
    assert_eq!(
        p.pool_info().free_clusters,
        free + 1,
        "its cluster came back"
    );
    assert!(p.list().is_empty());
    p.check().unwrap();
}

/// A volume grown while served: the served device keeps the size it was opened with
/// (its namespace's), the pool records the new one, and a reopened device has it.
#[test]
fn growing_a_served_volume_pauses_it_and_keeps_its_data() {
    let (_d, p) = ram_pool(64 * MIB, 4096, &opts(16 << 10, 100));
    let v = vol(&p, "v", 4 * MIB, true);
    let mut ch = v.open_channel().unwrap();
    for i in 0..64 {
        assert_eq!(
            put(ch.as_mut(), 4096, i * 16, 2, i as u8),
            IoStatus::Success
        );
    }
    // Map pages hold 1008 clusters of 16 KiB: this grows past one map page.
    p.grow("v", 40 * MIB).unwrap();
    for i in 0..64 {
        assert!(holds(ch.as_mut(), 4096, i * 16, 2, Some(i as u8)));
    }
    drop(ch);
    drop(v);
    let v = p.open_volume("v").unwrap();
    assert_eq!(v.info().num_blocks, 40 * MIB / 4096);
    let mut ch = v.open_channel().unwrap();
    assert_eq!(put(ch.as_mut(), 4096, 10_000, 4, 77), IoStatus::Success);
    assert!(holds(ch.as_mut(), 4096, 10_000, 4, Some(77)));
    p.check().unwrap();
}

/// Channels on several threads write to the same thin clusters at once (each its own
/// blocks): every block holds its data, no cluster went to two places, and the counts
/// add up.
#[test]
fn concurrent_first_writes_allocate_each_cluster_once() {
    let (_d, p) = ram_pool(64 * MIB, 512, &opts(64 << 10, 100));
    let v = vol(&p, "v", 32 * MIB, true);
    let threads = 4u64;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut ch = v.open_channel().unwrap();
                // Block t of every 4 in each of the first 200 clusters, 32 in flight.
                let blocks: Vec<u64> = (0..200u64)
                    .flat_map(|c| (0..8).map(move |k| c * 128 + k * 16 + t))
                    .collect();
                for chunk in blocks.chunks(32) {
                    let bufs: Vec<_> = chunk
                        .iter()
                        .map(|&lba| {
                            let mut b = lightpool_bdev::testing::AlignedBuf::new(512);
                            b.as_mut_slice()
                                .copy_from_slice(&pattern(512, lba, 1, t as u8));
                            b
                        })
                        .collect();
                    for (i, (b, &lba)) in bufs.iter().zip(chunk).enumerate() {
                        let r = lightpool_bdev::IoRequest::rw(
                            IoOp::Write,
                            lba,
                            1,
                            b.ptr(),
                            512,
                            i as u64,
                        );
                        // SAFETY: `bufs` outlives the completions polled below.
                        unsafe { ch.submit(r) };
                    }
                    let got = lightpool_bdev::testing::poll_n(ch.as_mut(), chunk.len());
                    assert!(got.values().all(|s| *s == IoStatus::Success));
                }
                blocks
            })
        })
        .collect();
    let written: Vec<(u64, Vec<u64>)> = hs
        .into_iter()
        .enumerate()
        .map(|(t, h)| (t as u64, h.join().unwrap()))
        .collect();
    let mut ch = v.open_channel().unwrap();
    for (t, blocks) in &written {
        for &lba in blocks.iter().step_by(7) {
            assert!(
                holds(ch.as_mut(), 512, lba, 1, Some(*t as u8)),
                "block {lba}"
            );
        }
    }
    assert_eq!(p.volume_info("v").unwrap().used, 200 * (64 << 10));
    p.check().unwrap();
}

/// A hot upgrade in one process: the pool and a volume exported while the volume is
/// served, adopted from the records and the arena's memfd; the successor sees every
/// write, including those made after the export, and carries on.
#[test]
fn a_successor_adopts_the_pool_from_its_shared_memory() {
    let dev = MallocBdev::new("ram1", 64 * MIB, 512).unwrap();
    let (p, _) = Pool::open(dev.clone(), "p", &opts(64 << 10, 100), true).unwrap();
    let v = vol(&p, "v", 16 * MIB, true);
    let mut ch = v.open_channel().unwrap();
    assert_eq!(put(ch.as_mut(), 512, 0, 16, 1), IoStatus::Success);
    let root: Arc<dyn Bdev> = v.clone();
    let g = DeviceGraph::walk([&root]);
    assert_eq!(
        g.devices().map(|d| d.kind()).collect::<Vec<_>>(),
        ["ram", "pool", "volume"]
    );
    assert!(
        !g.any_at_pause(),
        "the pool and its volumes travel before the pause"
    );
    let mut fds = Vec::new();
    let recs = g.export(|at_pause| !at_pause, &mut fds, 0).unwrap();
    // Operations are refused while the handover runs (the daemon freezes them).
    p.freeze(std::time::Duration::from_secs(60));
    assert!(matches!(
        p.create("w", MIB, true),
        Err(PoolError::HandedOver { .. })
    ));
    // The old process keeps serving until the pause: a first write after the export.
    assert_eq!(put(ch.as_mut(), 512, 5000, 8, 2), IoStatus::Success);
    let mut adopters = Adopters::new();
    adopters
        .register(Box::new(lightpool_bdev_ram::RamAdopter))
        .register(Box::new(crate::PoolAdopter))
        .register(Box::new(crate::VolumeAdopter));
    let mut fds: Vec<Option<std::os::fd::OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut devs = std::collections::BTreeMap::new();
    adopters
        .adopt_all(
            &recs,
            &mut devs,
            Some(&mut |i: usize| fds.get_mut(i).and_then(Option::take)),
        )
        .unwrap();
    let nv = devs[&2].clone();
    let np = devs[&1].clone();
    assert_eq!(nv.kind(), "volume");
    // The predecessor lets go (its process would exit without closing anything).
    drop(ch);
    drop(v);
    crash(p);
    np.adopted();
    let pool = crate::as_pool(&np).unwrap();
    let mut nch = nv.open_channel().unwrap();
    assert!(holds(nch.as_mut(), 512, 0, 16, Some(1)));
    assert!(
        holds(nch.as_mut(), 512, 5000, 8, Some(2)),
        "a write after the export"
    );
    assert_eq!(put(nch.as_mut(), 512, 9000, 8, 3), IoStatus::Success);
    pool.create("w", MIB, true)
        .expect("operations work in the successor");
    pool.check().unwrap();
    drop(nch);
    drop(nv);
    drop(pool);
    drop(np);
    drop(devs);
    // The successor closed it cleanly.
    let (p, r) = Pool::open(dev, "p", &PoolOptions::default(), false).unwrap();
    assert_eq!(r, OpenReport::Clean { volumes: 2 });
    let v = p.open_volume("v").unwrap();
    let mut ch = v.open_channel().unwrap();
    assert!(holds(ch.as_mut(), 512, 9000, 8, Some(3)));
}

/// The gate's pause is short and nothing is lost across it: a thread keeps writing
/// while snapshots are taken.
#[test]
fn snapshots_under_load_pause_briefly_and_lose_nothing() {
    let (_d, p) = ram_pool(128 * MIB, 512, &opts(64 << 10, 400));
    let v = vol(&p, "v", 32 * MIB, true);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (v, stop) = (v.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ch = v.open_channel().unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lba = (n * 977) % 60_000;
                assert_eq!(
                    put(ch.as_mut(), 512, lba, 4, (n % 251) as u8),
                    IoStatus::Success
                );
                n += 1;
            }
            n
        })
    };
    for i in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.snapshot("v", &format!("s{i}")).unwrap();
        let pause = v.last_snapshot_pause();
        assert!(pause < std::time::Duration::from_secs(1), "{pause:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let n = writer.join().unwrap();
    assert!(n > 0);
    let mut ch = v.open_channel().unwrap();
    for k in n.saturating_sub(50)..n {
        let lba = (k * 977) % 60_000;
        // Later writes may overwrite part of an earlier one; the last one to each lba
        // is checked by the last iterations only.
        let later = (k + 1..n).any(|j| {
            let l2 = (j * 977) % 60_000;
            l2 < lba + 4 && lba < l2 + 4
        });
        if !later {
            assert!(holds(ch.as_mut(), 512, lba, 4, Some((k % 251) as u8)));
        }
    }
    assert_eq!(p.list().len(), 6);
    p.check().unwrap();
}
