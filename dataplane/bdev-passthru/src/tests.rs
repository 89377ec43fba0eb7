use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Adopters, Bdev, DeviceGraph, IoOp, IoRequest, IoStats, IoStatus};
use lightpool_bdev_ram::{MallocBdev, RamAdopter};

use crate::{PassthruAdopter, PassthruBdev};

fn over_ram() -> (Arc<MallocBdev>, Arc<dyn Bdev>) {
    let ram = MallocBdev::new("ram1", 4 << 20, 512).expect("RAM");
    let p: Arc<dyn Bdev> = PassthruBdev::new(ram.clone());
    (ram, p)
}

/// A pass-through behaves as the device under it: the checks every backend passes.
#[test]
fn passes_the_backend_checks() {
    let (_, p) = over_ram();
    check_round_trip(&*p);
    check_out_of_range(&*p);
    check_flush(&*p);
    check_zeroes_and_deallocate(&*p);
    check_many_in_flight(&*p, 200);
    // RAM's in-place I/O passes through.
    assert_eq!(
        check_served_in_place(&*p),
        InPlace {
            reads: true,
            writes: true
        }
    );
    assert_eq!(p.info().name, "passthru:ram1");
    assert_eq!(p.kind(), "passthru");
}

/// I/O served in place by the device under it is counted as submitted I/O is, and the
/// reference is the device's own memory.
#[test]
fn counts_what_is_served_in_place() {
    let (ram, p) = over_ram();
    let mut a = p.open_channel().expect("channel");
    let data = pattern(512, 20, 3, 9);
    assert!(a.write_in_place(20, 3, &data));
    let r = a.read_in_place(20, 3).expect("RAM");
    // SAFETY: channel `a` outlives the slice.
    assert!(unsafe { r.as_slice() } == data.as_slice());
    let mut raw = vec![0u8; data.len()];
    ram.read_at(20 * 512, &mut raw).expect("in range");
    assert_eq!(raw, data);
    assert_eq!(
        p.io_stats(),
        Some(IoStats {
            reads: 1,
            writes: 1,
            other: 0,
            blocks_read: 3,
            blocks_written: 3,
        })
    );
}

/// Counts are per request and per block, summed over live and closed channels.
#[test]
fn counts_what_it_passes() {
    let (ram, p) = over_ram();
    let mut a = p.open_channel().expect("channel");
    let mut b = p.open_channel().expect("channel");
    assert_eq!(
        write(a.as_mut(), 512, 8, &pattern(512, 8, 4, 1)),
        IoStatus::Success
    );
    let (st, _) = read(b.as_mut(), 512, 8, 4);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(
        run1(a.as_mut(), IoRequest::no_data(IoOp::Flush, 0, 0, 3)),
        IoStatus::Success
    );
    drop(a);
    let want = IoStats {
        reads: 1,
        writes: 1,
        other: 1,
        blocks_read: 4,
        blocks_written: 4,
    };
    assert_eq!(p.io_stats(), Some(want));
    drop(b);
    assert_eq!(p.io_stats(), Some(want));
    // The data went to the device under it.
    let mut got = vec![0u8; 2048];
    ram.read_at(8 * 512, &mut got).expect("in range");
    assert_eq!(got, pattern(512, 8, 4, 1));
}

/// Through the device graph, as a hot upgrade carries it: the RAM device travels with
/// its memfd, the pass-through with its counts, rebuilt on the adopted RAM device.
#[test]
fn travels_over_its_child_with_its_counts() {
    let (_, p) = over_ram();
    let mut ch = p.open_channel().expect("channel");
    assert_eq!(
        write(ch.as_mut(), 512, 100, &pattern(512, 100, 8, 5)),
        IoStatus::Success
    );
    drop(ch);
    let g = DeviceGraph::walk([&p]);
    let mut fds = Vec::new();
    let recs = g.export(|_| true, &mut fds, 0).expect("export");
    assert_eq!(
        recs.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["ram", "passthru"]
    );
    assert_eq!(recs[1].children, [0]);
    drop(p);

    let mut adopters = Adopters::new();
    adopters
        .register(Box::new(RamAdopter))
        .register(Box::new(PassthruAdopter));
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
    assert_eq!(q.info().name, "passthru:ram1");
    assert_eq!(q.io_stats().expect("counts").writes, 1);
    let mut ch = q.open_channel().expect("channel");
    let (st, buf) = read(ch.as_mut(), 512, 100, 8);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(buf.as_slice(), pattern(512, 100, 8, 5).as_slice());
    drop(ch);
    let s = q.io_stats().expect("counts");
    assert_eq!((s.reads, s.writes, s.blocks_written), (1, 1, 8));
}
