use lightpool_bdev::{Bdev, IoOp, IoStatus};

use super::*;
use crate::{OpenReport, PoolError};

const BS: u32 = 512;
/// Blocks per cluster with 64 KiB clusters.
const CB: u64 = 128;

/// What each volume must read, as (lba, blocks, seed or zeroes), checked in full.
fn expect(p: &Arc<Pool>, name: &str, want: &[(u64, u32, Option<u8>)]) {
    let v = p.open_volume(name).unwrap();
    let mut ch = v.open_channel().unwrap();
    for &(lba, n, seed) in want {
        assert!(
            holds(ch.as_mut(), BS, lba, n, seed),
            "{name}: {lba}+{n} should hold {seed:?}"
        );
    }
}

/// Snapshots and clones with data checks at every step: a snapshot keeps what the
/// volume held; the volume, the snapshot and a clone each read their own data; a
/// snapshot with two clones cannot be deleted, with one its clusters pass to it; a
/// clone inflated owns everything; all of it survives a clean and an unclean reopen.
#[test]
fn snapshots_and_clones_keep_their_data_at_every_step() {
    let dev = MallocBdev::new("d", 64 * MIB, BS).unwrap();
    let (p, _) = Pool::open(dev.clone(), "p", &opts(64 << 10, 400), true).unwrap();
    let v = vol(&p, "v", 8 * MIB, true);
    {
        let mut ch = v.open_channel().unwrap();
        // A: clusters 0, 1 (partly), 5 (whole).
        assert_eq!(put(ch.as_mut(), BS, 0, 40, 1), IoStatus::Success);
        assert_eq!(put(ch.as_mut(), BS, CB + 10, 20, 1), IoStatus::Success);
        assert_eq!(
            put(ch.as_mut(), BS, 5 * CB, CB as u32, 1),
            IoStatus::Success
        );
    }
    let a = [
        (0, 40, Some(1)),
        (CB + 10, 20, Some(1)),
        (5 * CB, CB as u32, Some(1)),
        (40, 10, None),
    ];
    let used_before = p.volume_info("v").unwrap().used;
    let s1 = p.snapshot("v", "s1").unwrap();
    assert!(s1.snapshot && s1.used == used_before);
    assert_eq!(p.volume_info("v").unwrap().parent.as_deref(), Some("s1"));
    assert_eq!(
        p.volume_info("v").unwrap().used,
        0,
        "the volume starts over, sharing s1"
    );
    expect(&p, "v", &a);
    expect(&p, "s1", &a);
    // The snapshot is read-only.
    {
        let s = p.open_volume("s1").unwrap();
        assert!(s.info().read_only);
        let mut ch = s.open_channel().unwrap();
        assert_eq!(put(ch.as_mut(), BS, 0, 1, 9), IoStatus::ReadOnly);
    }
    // B to the volume: copy on write of cluster 0 (partly) and 1, a new cluster 3.
    {
        let mut ch = v.open_channel().unwrap();
        assert_eq!(put(ch.as_mut(), BS, 20, 10, 2), IoStatus::Success);
        assert_eq!(put(ch.as_mut(), BS, CB + 15, 2, 2), IoStatus::Success);
        assert_eq!(put(ch.as_mut(), BS, 3 * CB, 8, 2), IoStatus::Success);
    }
    let ab = [
        (0, 20, Some(1)),
        (20, 10, Some(2)),
        (30, 10, Some(1)),
        (CB + 10, 5, Some(1)),
        (CB + 15, 2, Some(2)),
        (CB + 17, 13, Some(1)),
        (3 * CB, 8, Some(2)),
        (5 * CB, CB as u32, Some(1)),
    ];
    expect(&p, "v", &ab);
    expect(&p, "s1", &a);
    expect(&p, "s1", &[(3 * CB, 8, None)]);
    // A clone of s1 writes C; nobody else sees it.
    let c1 = p.clone_snapshot("s1", "c1").unwrap();
    assert_eq!(c1.parent.as_deref(), Some("s1"));
    expect(&p, "c1", &a);
    {
        let c = p.open_volume("c1").unwrap();
        let mut ch = c.open_channel().unwrap();
        assert_eq!(put(ch.as_mut(), BS, 5 * CB + 1, 3, 3), IoStatus::Success);
        // Deallocating a whole cluster a clone shares makes it read zeroes there only.
        assert_eq!(
            zeroes(ch.as_mut(), IoOp::Deallocate, 0, CB as u32),
            IoStatus::Success
        );
    }
    expect(
        &p,
        "c1",
        &[
            (0, CB as u32, None),
            (5 * CB, 1, Some(1)),
            (5 * CB + 1, 3, Some(3)),
            (5 * CB + 4, 5, Some(1)),
        ],
    );
    expect(&p, "s1", &a);
    expect(&p, "v", &ab);
    assert!(matches!(
        p.clone_snapshot("v", "x"),
        Err(PoolError::NotSnapshot { .. })
    ));
    // A second snapshot of the volume: a chain v -> s2 -> s1. D to the volume.
    p.snapshot("v", "s2").unwrap();
    {
        let mut ch = v.open_channel().unwrap();
        assert_eq!(put(ch.as_mut(), BS, 25, 30, 4), IoStatus::Success);
    }
    expect(&p, "s2", &ab);
    expect(&p, "s1", &a);
    expect(
        &p,
        "v",
        &[
            (0, 20, Some(1)),
            (20, 5, Some(2)),
            (25, 30, Some(4)),
            (CB + 15, 2, Some(2)),
            (5 * CB, 4, Some(1)),
        ],
    );
    // s1 has two clones (s2 and c1): refused.
    let e = p.delete("s1").unwrap_err();
    assert!(matches!(e, PoolError::HasClones { clones: 2, .. }), "{e}");
    p.delete("c1").unwrap();
    // With one clone (s2), s1's clusters pass to it.
    let free = p.pool_info().free_clusters;
    p.delete("s1").unwrap();
    assert!(p.volume_info("s1").is_err());
    assert_eq!(p.volume_info("s2").unwrap().parent, None);
    assert_eq!(
        p.pool_info().free_clusters,
        free + 2,
        "only s1's clusters 0 and 1, which s2 had copied, are freed"
    );
    expect(&p, "s2", &ab);
    expect(
        &p,
        "v",
        &[
            (0, 20, Some(1)),
            (25, 30, Some(4)),
            (5 * CB, CB as u32, Some(1)),
        ],
    );
    p.check().unwrap();
    // Inflate the volume: it owns a copy of everything it read through s2.
    let before = p.volume_info("v").unwrap().used;
    let vi = p.inflate("v").unwrap();
    assert_eq!(vi.parent, None);
    assert!(vi.used > before);
    assert!(matches!(p.inflate("v"), Err(PoolError::NotClone { .. })));
    p.delete("s2").unwrap();
    let vd = [
        (0, 20, Some(1)),
        (20, 5, Some(2)),
        (25, 30, Some(4)),
        (55, 1, None),
        (CB + 10, 5, Some(1)),
        (CB + 15, 2, Some(2)),
        (3 * CB, 8, Some(2)),
        (5 * CB, CB as u32, Some(1)),
    ];
    expect(&p, "v", &vd);
    assert_eq!(
        p.pool_info().free_clusters + vi.used / (64 << 10),
        p.pool_info().data_clusters,
        "only v's clusters are used"
    );
    p.check().unwrap();
    // Clean and unclean reopen.
    drop(v);
    drop(p);
    let (p, r) = Pool::open(dev.clone(), "p", &PoolOptions::default(), false).unwrap();
    assert_eq!(r, OpenReport::Clean { volumes: 1 });
    expect(&p, "v", &vd);
    p.snapshot("v", "s3").unwrap();
    crash(p);
    let (p, r) = Pool::open(dev, "p", &PoolOptions::default(), false).unwrap();
    assert!(
        matches!(r, OpenReport::Recovered { volumes: 2, .. }),
        "{r:?}"
    );
    expect(&p, "v", &vd);
    expect(&p, "s3", &vd);
    p.check().unwrap();
}

/// A thick volume's snapshot: the volume's next writes copy on write into new clusters.
#[test]
fn a_thick_volume_after_a_snapshot_copies_on_write() {
    let (_d, p) = ram_pool(32 * MIB, BS, &opts(64 << 10, 100));
    let v = vol(&p, "v", 2 * MIB, false);
    let mut ch = v.open_channel().unwrap();
    assert_eq!(put(ch.as_mut(), BS, 0, 256, 1), IoStatus::Success);
    let free = p.pool_info().free_clusters;
    p.snapshot("v", "s").unwrap();
    assert_eq!(
        p.pool_info().free_clusters,
        free,
        "a snapshot takes no cluster"
    );
    assert_eq!(put(ch.as_mut(), BS, 3, 1, 2), IoStatus::Success);
    assert_eq!(p.pool_info().free_clusters, free - 1);
    assert!(holds(ch.as_mut(), BS, 0, 3, Some(1)));
    assert!(holds(ch.as_mut(), BS, 3, 1, Some(2)));
    assert!(holds(ch.as_mut(), BS, 4, 252, Some(1)));
    expect(&p, "s", &[(0, 256, Some(1))]);
}

/// A thin pool out of space answers writes that need a new cluster with Capacity
/// Exceeded and harms nothing else: data already written stays, writes to allocated
/// clusters succeed, other volumes are untouched, and freeing space lets writes in.
#[test]
fn thin_exhaustion_fails_only_the_writes_that_need_space() {
    let (_d, p) = ram_pool(16 * MIB, BS, &opts(64 << 10, 1000));
    let data = p.pool_info().data_clusters;
    let a = vol(&p, "a", 64 * MIB, true);
    let b = vol(&p, "b", 64 * MIB, true);
    let mut ca = a.open_channel().unwrap();
    let mut cb = b.open_channel().unwrap();
    assert_eq!(put(cb.as_mut(), BS, 0, 8, 7), IoStatus::Success);
    let mut written = 0u64;
    let full = loop {
        let lba = written * CB;
        match put(ca.as_mut(), BS, lba, 4, (written % 200) as u8) {
            IoStatus::Success => written += 1,
            st => break st,
        }
        assert!(written <= data, "more clusters than the pool has");
    };
    assert_eq!(full, IoStatus::CapacityExceeded);
    assert_eq!(written, data - 1, "every cluster but b's was used");
    assert_eq!(p.pool_info().free_clusters, 0);
    // Nothing else harmed.
    for c in (0..written).step_by(17) {
        assert!(holds(ca.as_mut(), BS, c * CB, 4, Some((c % 200) as u8)));
    }
    assert_eq!(
        put(ca.as_mut(), BS, 5, 2, 1),
        IoStatus::Success,
        "allocated cluster"
    );
    assert!(holds(cb.as_mut(), BS, 0, 8, Some(7)));
    assert_eq!(
        put(cb.as_mut(), BS, 9 * CB, 1, 1),
        IoStatus::CapacityExceeded
    );
    assert!(
        holds(cb.as_mut(), BS, 9 * CB, 1, None),
        "a refused write leaves nothing"
    );
    // Space freed on a: b can write again.
    assert_eq!(
        zeroes(ca.as_mut(), IoOp::Deallocate, 0, 2 * CB as u32),
        IoStatus::Success
    );
    assert_eq!(put(cb.as_mut(), BS, 9 * CB, 1, 1), IoStatus::Success);
    assert!(holds(cb.as_mut(), BS, 9 * CB, 1, Some(1)));
    p.check().unwrap();
}
