use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::testing::*;
use lightpool_bdev::{Adopters, Bdev, DeviceGraph, IoOp, IoRequest, IoStatus};
use lightpool_bdev_ram::{MallocBdev, RamAdopter};

use crate::{FaultAdopter, FaultBdev, FaultRule};

const BS: u32 = 512;

fn over_ram() -> (Arc<MallocBdev>, Arc<FaultBdev>) {
    let ram = MallocBdev::new("ram1", 4 << 20, BS).expect("RAM");
    let f = FaultBdev::new("f1", ram.clone());
    (ram, f)
}

fn rules(f: &FaultBdev, texts: &[&str]) {
    f.set_rules(
        texts
            .iter()
            .map(|t| t.parse::<FaultRule>().expect("rule"))
            .collect(),
    );
}

fn on_ram(ram: &MallocBdev, lba: u64, n: u32) -> Vec<u8> {
    let mut got = vec![0u8; (n * BS) as usize];
    ram.read_at(lba * u64::from(BS), &mut got)
        .expect("in range");
    got
}

/// Without rules it is the device under it: the checks every backend passes, RAM's
/// in-place I/O included.
#[test]
fn without_rules_it_passes_the_backend_checks() {
    let (_, f) = over_ram();
    let f: Arc<dyn Bdev> = f;
    check_round_trip(&*f);
    check_out_of_range(&*f);
    check_flush(&*f);
    check_zeroes_and_deallocate(&*f);
    check_many_in_flight(&*f, 200);
    assert_eq!(
        check_served_in_place(&*f),
        InPlace {
            reads: true,
            writes: true
        }
    );
    assert_eq!((f.info().name.as_str(), f.kind()), ("f1", "fault"));
}

/// An error rule fails matching requests with its errno before they reach the device;
/// `count` bounds it across channels, `skip` and `every` pick which.
#[test]
fn errors_fail_requests_without_touching_the_device() {
    let (ram, f) = over_ram();
    let mut a = f.open_channel().expect("channel");
    let mut b = f.open_channel().expect("channel");
    rules(&f, &["write:eio,count=2"]);
    let data = pattern(BS, 10, 2, 1);
    assert_eq!(write(a.as_mut(), BS, 10, &data), IoStatus::Io(libc::EIO));
    assert_eq!(on_ram(&ram, 10, 2), vec![0u8; 1024], "nothing reached RAM");
    // The second fault is on the other channel: the count is the device's.
    assert_eq!(write(b.as_mut(), BS, 10, &data), IoStatus::Io(libc::EIO));
    assert_eq!(write(a.as_mut(), BS, 10, &data), IoStatus::Success);
    assert_eq!(on_ram(&ram, 10, 2), data);
    // Reads were never matched; in-place I/O is refused while rules are set, so
    // every request is seen.
    assert_eq!(read(a.as_mut(), BS, 10, 2).0, IoStatus::Success);
    assert!(a.read_in_place(10, 2).is_none());
    assert!(!a.write_in_place(10, 2, &data));
    let s = &f.rules()[0];
    assert_eq!((s.seen, s.fired), (3, 2));

    rules(&f, &["read:errno=110,skip=1,every=2"]);
    let got: Vec<IoStatus> = (0..5).map(|_| read(a.as_mut(), BS, 0, 1).0).collect();
    let t = IoStatus::Io(libc::ETIMEDOUT);
    assert_eq!(
        got,
        [
            IoStatus::Success,
            t,
            IoStatus::Success,
            t,
            IoStatus::Success
        ]
    );
    // Cleared: in place again.
    f.set_rules(Vec::new());
    assert!(a.read_in_place(10, 2).is_some());
}

/// Only requests touching the rule's blocks fail.
#[test]
fn a_block_range_limits_the_fault() {
    let (_, f) = over_ram();
    let mut ch = f.open_channel().expect("channel");
    rules(&f, &["read:eio,lba=100-199"]);
    assert_eq!(read(ch.as_mut(), BS, 96, 4).0, IoStatus::Success);
    assert_eq!(read(ch.as_mut(), BS, 96, 5).0, IoStatus::Io(libc::EIO));
    assert_eq!(read(ch.as_mut(), BS, 199, 1).0, IoStatus::Io(libc::EIO));
    assert_eq!(read(ch.as_mut(), BS, 200, 8).0, IoStatus::Success);
}

/// A full device refuses writes (Capacity Exceeded to the host) and still reads.
#[test]
fn a_full_device_refuses_writes_and_reads() {
    let (ram, f) = over_ram();
    let mut ch = f.open_channel().expect("channel");
    assert_eq!(
        write(ch.as_mut(), BS, 0, &pattern(BS, 0, 1, 3)),
        IoStatus::Success
    );
    rules(&f, &["write+zeroes:full"]);
    assert_eq!(
        write(ch.as_mut(), BS, 0, &pattern(BS, 0, 1, 4)),
        IoStatus::CapacityExceeded
    );
    assert_eq!(
        run1(ch.as_mut(), IoRequest::no_data(IoOp::WriteZeroes, 0, 1, 7)),
        IoStatus::CapacityExceeded
    );
    let (st, buf) = read(ch.as_mut(), BS, 0, 1);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(buf.as_slice(), pattern(BS, 0, 1, 3).as_slice());
    assert_eq!(on_ram(&ram, 0, 1), pattern(BS, 0, 1, 3));
}

/// A torn write lands on a strict prefix of its blocks and fails: every block holds
/// either its old or its new contents, never a mix within a block.
#[test]
fn a_torn_write_lands_a_prefix_and_fails() {
    let (ram, f) = over_ram();
    let mut ch = f.open_channel().expect("channel");
    let old = pattern(BS, 0, 16, 1);
    assert_eq!(write(ch.as_mut(), BS, 0, &old), IoStatus::Success);
    rules(&f, &["write:torn"]);
    let mut landed_somewhere = false;
    for round in 0..20u8 {
        let before = on_ram(&ram, 0, 16);
        let new = pattern(BS, 0, 16, 10 + round);
        assert_eq!(write(ch.as_mut(), BS, 0, &new), IoStatus::Io(libc::EIO));
        let after = on_ram(&ram, 0, 16);
        let blocks: Vec<bool> = (0..16)
            .map(|b| {
                let r = b * BS as usize..(b + 1) * BS as usize;
                if after[r.clone()] == new[r.clone()] {
                    true
                } else {
                    assert_eq!(after[r.clone()], before[r], "block {b} is neither");
                    false
                }
            })
            .collect();
        let landed = blocks.iter().take_while(|x| **x).count();
        assert!(landed < 16, "a torn write never lands whole");
        assert!(
            blocks[landed..].iter().all(|x| !x),
            "only a prefix lands: {blocks:?}"
        );
        landed_somewhere |= landed > 0;
    }
    assert!(landed_somewhere, "twenty torn writes all landed nothing");
}

/// A delay holds the completion, not the data: the request is done when it returns.
#[test]
fn a_delay_holds_the_completion() {
    let (ram, f) = over_ram();
    let mut ch = f.open_channel().expect("channel");
    rules(&f, &["write:delay=150ms,count=1"]);
    let data = pattern(BS, 5, 1, 2);
    let buf = AlignedBuf::new(BS as usize);
    // SAFETY: `buf` (and the copy below) outlive the request, awaited here.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr(), data.len());
        ch.submit(IoRequest::rw(IoOp::Write, 5, 1, buf.ptr(), buf.len(), 9));
    }
    let t0 = Instant::now();
    let mut got = None;
    while got.is_none() {
        ch.poll(&mut |tag, st| got = Some((tag, st)));
        assert_eq!(ch.in_flight(), usize::from(got.is_none()));
        assert!(t0.elapsed() < Duration::from_secs(5), "never completed");
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(got, Some((9, IoStatus::Success)));
    assert_eq!(on_ram(&ram, 5, 1), data);
    // Spent: the next write is not held.
    assert_eq!(write(ch.as_mut(), BS, 6, &data), IoStatus::Success);
}

/// Through the device graph, as a hot upgrade carries it: the rules travel.
#[test]
fn travels_over_its_child_with_its_rules() {
    let (_, f) = over_ram();
    rules(&f, &["read:eio,lba=7-7"]);
    let f: Arc<dyn Bdev> = f;
    let g = DeviceGraph::walk([&f]);
    let mut fds = Vec::new();
    let recs = g.export(|_| true, &mut fds, 0).expect("export");
    assert_eq!(
        recs.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["ram", "fault"]
    );
    drop(f);
    let mut adopters = Adopters::new();
    adopters
        .register(Box::new(RamAdopter))
        .register(Box::new(FaultAdopter));
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut devs = BTreeMap::new();
    adopters
        .adopt_all(
            &recs,
            &mut devs,
            Some(&mut |i: usize| fds.get_mut(i).and_then(Option::take)),
        )
        .expect("adopt");
    let q = &devs[&1];
    assert_eq!(q.info().name, "f1");
    let mut ch = q.open_channel().expect("channel");
    assert_eq!(read(ch.as_mut(), BS, 7, 1).0, IoStatus::Io(libc::EIO));
    assert_eq!(read(ch.as_mut(), BS, 8, 1).0, IoStatus::Success);
}
