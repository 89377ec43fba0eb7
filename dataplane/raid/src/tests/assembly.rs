use std::sync::Arc;
use std::time::Duration;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Bdev, IoStatus};

use super::*;
use crate::{ArrayOptions, ArrayState, Level, MemberState, RaidError};

const REGION: u64 = 256 << 10;

/// The metadata a refused assembly must not have touched: superblocks and bitmap.
fn metadata(m: &Faulty) -> Vec<u8> {
    m.peek(0, 64 << 10)
}

fn write_regions(a: &Arc<RaidBdev>, regions: &[u64], seed: u8) {
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    for r in regions {
        let lba = r * REGION / 512;
        assert_eq!(
            write(ch.as_mut(), 512, lba, &pattern(512, lba, 32, seed)),
            IoStatus::Success
        );
    }
}

fn read_region(a: &Arc<RaidBdev>, r: u64) -> Vec<u8> {
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    let (st, b) = read(ch.as_mut(), 512, r * REGION / 512, 32);
    assert_eq!(st, IoStatus::Success);
    b.as_slice().to_vec()
}

/// Drops an array the way a crash would: nothing written at the end (the export of a
/// hot upgrade stops its background thread and marks it handed over).
fn crash(a: Arc<RaidBdev>) {
    a.export().expect("export");
    drop(a);
}

fn long_clear(name: &str) -> ArrayOptions {
    let mut o = raid1_opts(name);
    o.bitmap_clear_delay = Duration::from_secs(3600);
    o
}

/// After a crash the members may differ where writes were in flight; the restart
/// makes them identical by copying only the bitmap's dirty regions, from one member.
/// After a clean stop nothing is copied.
#[test]
fn unclean_stop_resyncs_only_the_dirty_regions() {
    let m = members("r1-crash-", 2, 16 * MIB, 512);
    let o = long_clear("r1-crash");
    let a = open(&m, &o);
    write_regions(&a, &[2, 5], 1);
    crash(a);
    // A write that reached member 1 only before the crash.
    m[1].poke(MIB + 5 * REGION, &pattern(512, 5 * REGION / 512, 32, 99));
    let a = RaidBdev::open(as_bdevs(&m), &o).expect("assembles");
    wait_for("the resync", || a.status().state == ArrayState::Optimal);
    let st = a.status();
    assert_eq!(st.copied_bytes_total, 2 * REGION, "{}", st.summary());
    assert_eq!(read_region(&a, 5), pattern(512, 5 * REGION / 512, 32, 1));
    assert_eq!(
        m[1].peek(MIB + 5 * REGION, 32 * 512),
        m[0].peek(MIB + 5 * REGION, 32 * 512)
    );
    // A clean stop: the next start copies nothing.
    drop(a);
    let a = RaidBdev::open(as_bdevs(&m), &o).expect("assembles");
    let st = a.status();
    assert_eq!(
        (st.state, st.copied_bytes_total),
        (ArrayState::Optimal, 0),
        "{}",
        st.summary()
    );
}

/// A member of another array is refused by name, and nothing is written anywhere.
#[test]
fn members_of_another_array_are_refused() {
    let x = members("asm-x-", 2, 8 * MIB, 512);
    let y = members("asm-y-", 2, 8 * MIB, 512);
    drop(open(&x, &raid1_opts("asm-x")));
    drop(open(&y, &raid1_opts("asm-y")));
    let before: Vec<Vec<u8>> = [&x[0], &y[1]].iter().map(|m| metadata(m)).collect();
    let mixed = vec![x[0].clone(), y[1].clone()];
    let e = RaidBdev::open(as_bdevs(&mixed), &raid1_opts("asm-x"))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("asm-y-1") && e.contains("another array asm-y"),
        "{e}"
    );
    let after: Vec<Vec<u8>> = [&x[0], &y[1]].iter().map(|m| metadata(m)).collect();
    assert_eq!(before, after, "a refused assembly writes nothing");
}

/// A member that missed writes while it was failed is never a source: alone it is
/// refused (starting from it would roll those writes back); with the member that has
/// them it is resynced.
#[test]
fn a_stale_member_does_not_roll_data_back() {
    let m = members("asm-stale-", 2, 16 * MIB, 512);
    let o = raid1_opts("asm-stale");
    let a = open(&m, &o);
    write_regions(&a, &[1, 2, 3], 1);
    wait_for("a clean bitmap", || a.status().dirty_regions == 0);
    a.fail_member("asm-stale-1").expect("fail");
    write_regions(&a, &[2], 2);
    drop(a);
    let before = metadata(&m[1]);
    let e = RaidBdev::open(vec![m[1].clone() as Arc<dyn Bdev>], &o)
        .err()
        .expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("asm-stale-1") && text.contains("roll back"),
        "{text}"
    );
    assert!(matches!(e, RaidError::Refused(_)));
    assert_eq!(
        metadata(&m[1]),
        before,
        "nothing written to the stale member"
    );
    // Both: the stale one is brought back from the bitmap, and the data is the new.
    let a = RaidBdev::open(as_bdevs(&m), &o).expect("assembles");
    assert_eq!(read_region(&a, 2), pattern(512, 2 * REGION / 512, 32, 2));
    wait_for("the resync", || a.status().state == ArrayState::Optimal);
    assert_eq!(
        a.status().copied_bytes_total,
        REGION,
        "only region 2 changed while it was away"
    );
    assert_eq!(
        m[1].peek(MIB + 2 * REGION, 32 * 512),
        pattern(512, 2 * REGION / 512, 32, 2)
    );
}

/// Without members enough the array does not start: a RAID0 with one missing, a
/// RAID1 whose only device is still being rebuilt.
#[test]
fn too_few_members_are_refused() {
    let m = members("asm-few0-", 3, 8 * MIB, 512);
    drop(open(&m, &ArrayOptions::new("asm-few0", Level::Raid0)));
    let e = RaidBdev::open(
        as_bdevs(&m[..2]),
        &ArrayOptions::new("asm-few0", Level::Raid0),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("slot 2") && e.contains("missing"), "{e}");

    let m = members("asm-few1-", 2, 16 * MIB, 512);
    let mut o = raid1_opts("asm-few1");
    o.rebuild_rate = 1 << 20;
    let a = open(&m, &o);
    write_regions(&a, &[0, 1], 1);
    a.fail_member("#1").expect("fail");
    a.remove_member("#1").expect("remove");
    let spare = Faulty::new("asm-few1-spare", 16 * MIB, 512);
    a.add_member(spare.clone()).expect("add");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a.status().members[1].state, MemberState::Recovering);
    drop(a);
    let mut degraded = o.clone();
    degraded.allow_degraded = true;
    let e = RaidBdev::open(vec![spare.clone() as Arc<dyn Bdev>], &degraded)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("no device holds the array's data in sync"),
        "{e}"
    );
    // With the in-sync member the rebuild carries on, and finishes.
    let mut fast = o.clone();
    fast.rebuild_rate = 0;
    let a = RaidBdev::open(vec![m[0].clone(), spare.clone()], &fast).expect("assembles");
    wait_for("the rebuild", || a.status().state == ArrayState::Optimal);
    assert_eq!(read_region(&a, 1), pattern(512, REGION / 512, 32, 1));
    assert_eq!(
        spare.peek(MIB + REGION, 32 * 512),
        pattern(512, REGION / 512, 32, 1)
    );
}

/// Damaged or foreign metadata is named and never overwritten.
#[test]
fn corrupt_or_foreign_metadata_is_refused() {
    let m = members("asm-bad-", 2, 8 * MIB, 512);
    drop(open(&m, &raid1_opts("asm-bad")));
    for off in [100u64, 4096 + 100] {
        let mut b = m[1].peek(off, 1);
        b[0] ^= 0xff;
        m[1].poke(off, &b);
    }
    let e = RaidBdev::open(as_bdevs(&m), &raid1_opts("asm-bad"))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("asm-bad-1") && e.contains("checksum"), "{e}");
    let f = members("asm-foreign-", 2, 8 * MIB, 512);
    f[0].poke(1024, b"\x53\xef an ext4 superblock, say");
    let before = metadata(&f[0]);
    let e = RaidBdev::open(as_bdevs(&f), &raid1_opts("asm-foreign"))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("asm-foreign-0") && e.contains("not a LightPool RAID superblock"),
        "{e}"
    );
    assert_eq!(metadata(&f[0]), before);
    assert!(
        metadata(&f[1]).iter().all(|&b| b == 0),
        "the other member untouched too"
    );
}

/// A member replaced since is refused by name; a blank device given with the members
/// takes an empty slot and is rebuilt.
#[test]
fn replaced_members_are_refused_and_blank_ones_rebuilt() {
    let m = members("asm-repl-", 2, 8 * MIB, 512);
    let o = raid1_opts("asm-repl");
    let a = open(&m, &o);
    write_regions(&a, &[1], 7);
    a.fail_member("asm-repl-1").expect("fail");
    a.remove_member("asm-repl-1").expect("remove");
    let c = Faulty::new("asm-repl-c", 8 * MIB, 512);
    a.add_member(c.clone()).expect("add");
    wait_for("the rebuild", || a.status().state == ArrayState::Optimal);
    drop(a);
    let e = RaidBdev::open(vec![m[0].clone(), c.clone(), m[1].clone()], &o)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("asm-repl-1") && e.contains("replaced since"),
        "{e}"
    );
    // c fails for good; a blank device given at start takes its place.
    let a = RaidBdev::open(vec![m[0].clone(), c.clone()], &o).expect("assembles");
    a.fail_member("asm-repl-c").expect("fail");
    a.remove_member("asm-repl-c").expect("remove");
    drop(a);
    let d = Faulty::new("asm-repl-d", 8 * MIB, 512);
    let a = RaidBdev::open(vec![m[0].clone(), d.clone()], &o).expect("assembles");
    wait_for("the rebuild", || a.status().state == ArrayState::Optimal);
    assert_eq!(
        d.peek(MIB + REGION, 32 * 512),
        pattern(512, REGION / 512, 32, 7)
    );
    assert_eq!(a.status().members[1].device.as_deref(), Some("asm-repl-d"));
}
