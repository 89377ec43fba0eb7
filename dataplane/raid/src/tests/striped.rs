use std::sync::Arc;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Bdev, IoOp, IoRequest, IoStatus};

use super::*;
use crate::{ArrayOptions, Level};

fn concat(prefix: &str) -> (Vec<Arc<Faulty>>, Arc<RaidBdev>) {
    // Members of different sizes: 3, 2 and 4 MiB of data after their 1 MiB header.
    let m = vec![
        Faulty::new(&format!("{prefix}0"), 4 * MIB, 512),
        Faulty::new(&format!("{prefix}1"), 3 * MIB, 512),
        Faulty::new(&format!("{prefix}2"), 5 * MIB, 512),
    ];
    let a = open(&m, &ArrayOptions::new(prefix, Level::Concat));
    (m, a)
}

fn raid0(prefix: &str, strip: u64) -> (Vec<Arc<Faulty>>, Arc<RaidBdev>) {
    let m = members(prefix, 3, 8 * MIB, 512);
    let mut o = ArrayOptions::new(prefix, Level::Raid0);
    o.strip_bytes = strip;
    let a = open(&m, &o);
    (m, a)
}

fn backend_checks(a: &Arc<RaidBdev>) -> InPlace {
    let d: Arc<dyn Bdev> = a.clone();
    check_round_trip(&*d);
    check_out_of_range(&*d);
    check_flush(&*d);
    check_zeroes_and_deallocate(&*d);
    check_many_in_flight(&*d, 300);
    check_served_in_place(&*d)
}

#[test]
fn concat_passes_the_backend_checks() {
    let (_, a) = concat("cat-checks");
    assert_eq!(a.info().num_blocks, (3 + 2 + 4) * MIB / 512);
    assert_eq!(a.kind(), "concat");
    // Over RAM, reads by reference and writes in place pass through.
    let both = InPlace {
        reads: true,
        writes: true,
    };
    assert_eq!(backend_checks(&a), both);
}

#[test]
fn raid0_passes_the_backend_checks() {
    for strip in [4096, 64 << 10] {
        let (_, a) = raid0(&format!("r0-checks-{strip}"), strip);
        assert_eq!(a.info().num_blocks, 3 * 7 * MIB / 512);
        assert_eq!(a.kind(), "raid0");
        let in_place = backend_checks(&a);
        if strip == 64 << 10 {
            // The checked blocks lie in one strip: served in place by their member.
            assert!(in_place.reads && in_place.writes);
        }
    }
}

/// A write crossing strips lands, strip by strip, on the members the layout names,
/// and reads back whole; the members hold nothing where it did not go.
#[test]
fn raid0_splits_a_request_across_members() {
    let (m, a) = raid0("r0-split", 4096);
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    // Blocks 6..46 (512-byte blocks, 8 per strip): strips 0 to 5, over every member.
    let data = pattern(512, 6, 40, 3);
    assert_eq!(write(ch.as_mut(), 512, 6, &data), IoStatus::Success);
    let (st, back) = read(ch.as_mut(), 512, 6, 40);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(back.as_slice(), data.as_slice());
    let off = MIB; // the data area on each member
    for b in 6u64..46 {
        let (strip, within) = (b / 8, b % 8);
        let member = (strip % 3) as usize;
        let mlba = (strip / 3) * 8 + within;
        let got = m[member].peek(off + mlba * 512, 512);
        let want = &data[((b - 6) * 512) as usize..((b - 5) * 512) as usize];
        assert_eq!(got, want, "array block {b} on member {member} block {mlba}");
    }
    // Member 0's blocks 0..6 (array blocks 0..6) were not written.
    assert!(m[0].peek(off, 6 * 512).iter().all(|&x| x == 0));
    // Write Zeroes over the same range reaches every member and nothing beyond.
    let st = run1(ch.as_mut(), IoRequest::no_data(IoOp::WriteZeroes, 8, 30, 5));
    assert_eq!(st, IoStatus::Success);
    let (_, back) = read(ch.as_mut(), 512, 6, 40);
    assert_eq!(&back.as_slice()[..1024], &data[..1024]);
    assert!(back.as_slice()[1024..31 * 512].iter().all(|&x| x == 0));
    assert_eq!(&back.as_slice()[32 * 512..], &data[32 * 512..]);
}

/// A request over the boundary between two concat members is split between them.
#[test]
fn concat_splits_at_member_boundaries() {
    let (m, a) = concat("cat-split");
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    let first = 3 * MIB / 512; // member 1 starts here
    let lba = first - 4;
    let data = pattern(512, lba, 12, 9);
    assert_eq!(write(ch.as_mut(), 512, lba, &data), IoStatus::Success);
    assert_eq!(m[0].peek(MIB + (first - 4) * 512, 4 * 512), &data[..2048]);
    assert_eq!(m[1].peek(MIB, 8 * 512), &data[2048..]);
    let (st, back) = read(ch.as_mut(), 512, lba, 12);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(back.as_slice(), data.as_slice());
}

/// A member's error is the request's (no redundancy), and only that request's.
#[test]
fn raid0_member_errors_fail_the_requests_that_touch_it() {
    let (m, a) = raid0("r0-err", 4096);
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    m[1].f
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Strip 1 is member 1: fails; strip 0 alone (member 0) succeeds.
    let st = write(ch.as_mut(), 512, 0, &pattern(512, 0, 16, 1));
    assert_eq!(st, IoStatus::Io(libc::EIO));
    assert_eq!(
        write(ch.as_mut(), 512, 0, &pattern(512, 0, 8, 1)),
        IoStatus::Success
    );
    assert!(
        a.fail_member("r0-err1").is_err(),
        "raid0 has nothing to fail over to"
    );
}

/// Assembled again from the superblocks, whatever the order the members are given in.
#[test]
fn striped_arrays_assemble_in_any_order() {
    let (m, a) = raid0("r0-again", 8192);
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    let data = pattern(512, 100, 64, 4);
    assert_eq!(write(ch.as_mut(), 512, 100, &data), IoStatus::Success);
    drop(ch);
    drop(d);
    drop(a);
    let shuffled = vec![m[2].clone(), m[0].clone(), m[1].clone()];
    let mut o = ArrayOptions::new("r0-again", Level::Raid0);
    o.strip_bytes = 8192;
    let b = RaidBdev::open(as_bdevs(&shuffled), &o).expect("assembles");
    let d: Arc<dyn Bdev> = b.clone();
    let mut ch = d.open_channel().expect("channel");
    let (st, back) = read(ch.as_mut(), 512, 100, 64);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(back.as_slice(), data.as_slice());
    assert_eq!(b.children()[0].info().name, "r0-again0");
}
