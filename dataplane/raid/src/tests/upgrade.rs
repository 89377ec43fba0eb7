//! Arrays through the device graph, as a hot upgrade carries them: members (RAM, with
//! their memfds) adopted first, then the array over them from its export.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Adopters, Bdev, DeviceGraph, IoStatus};
use lightpool_bdev_ram::{MallocBdev, RamAdopter};

use super::*;
use crate::{ArrayOptions, ArrayState, Level, MemberState, RaidAdopter, Registry};

fn ram_members(prefix: &str, n: usize, bytes: u64) -> Vec<Arc<dyn Bdev>> {
    (0..n)
        .map(|i| {
            MallocBdev::new(&format!("{prefix}{i}"), bytes, 512).expect("RAM") as Arc<dyn Bdev>
        })
        .collect()
}

/// Exports the graph under `root` (all of it, as on a drained target), drops the old
/// devices, adopts everything in a "new process", and tells it the predecessor let go.
fn hand_over(root: Arc<dyn Bdev>, registry: &Arc<Registry>) -> Arc<dyn Bdev> {
    let g = DeviceGraph::walk([&root]);
    let mut fds = Vec::new();
    let recs = g.export(|_| true, &mut fds, 0).expect("export");
    drop(g);
    drop(root);
    let mut adopters = Adopters::new();
    adopters.register(Box::new(RamAdopter));
    for a in RaidAdopter::all(Some(registry.clone())) {
        adopters.register(a);
    }
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut devs = BTreeMap::new();
    adopters
        .adopt_all(
            &recs,
            &mut devs,
            Some(&mut |i: usize| fds.get_mut(i).and_then(Option::take)),
        )
        .expect("adopt");
    for d in devs.values() {
        d.adopted();
    }
    devs.values().last().expect("root adopted last").clone()
}

/// A degraded RAID1 with a member being resynced travels: the successor knows the
/// failed member, carries on the resync where it stood (counting what was copied
/// before), and serves every byte written.
#[test]
fn degraded_raid1_travels_and_its_resync_carries_on() {
    let m = ram_members("up-r1-", 3, 32 * MIB);
    let mut o = raid1_opts("up-r1");
    o.rebuild_rate = 8 << 20;
    let a = RaidBdev::open(m.clone(), &o).expect("array");
    let d: Arc<dyn Bdev> = a.clone();
    {
        let mut ch = d.open_channel().expect("channel");
        wait_for("a clean bitmap", || a.status().dirty_regions == 0);
        a.fail_member("up-r1-1").expect("fail");
        a.fail_member("up-r1-2").expect("fail");
        for r in 0..40u64 {
            let lba = r * (256 << 10) / 512;
            assert_eq!(
                write(ch.as_mut(), 512, lba, &pattern(512, lba, 16, 3)),
                IoStatus::Success
            );
        }
    }
    a.readd_member("up-r1-1").expect("re-add");
    wait_for("some progress", || a.status().copied_bytes_total > 0);
    let before = a.status();
    assert_eq!(before.state, ArrayState::Recovering);
    drop(a);
    let registry = Arc::new(Registry::new());
    let b = hand_over(d, &registry);
    assert_eq!(b.kind(), "raid1");
    let arr = registry.get("up-r1").expect("registered by its adopter");
    let st = arr.status();
    assert_eq!(st.members[2].state, MemberState::Faulty, "{}", st.summary());
    assert!(st.copied_bytes_total >= before.copied_bytes_total);
    arr.set_rebuild_rate(0).expect("rate");
    wait_for("the resync", || {
        arr.status().members[1].state == MemberState::Active
    });
    let st = arr.status();
    assert_eq!(
        st.state,
        ArrayState::Degraded,
        "slot 2 is still failed: {}",
        st.summary()
    );
    assert_eq!(st.copied_bytes_total, 40 * (256 << 10), "{}", st.summary());
    let mut ch = b.open_channel().expect("channel");
    for r in 0..40u64 {
        let lba = r * (256 << 10) / 512;
        let (s, buf) = read(ch.as_mut(), 512, lba, 16);
        assert_eq!(s, IoStatus::Success);
        assert_eq!(buf.as_slice(), pattern(512, lba, 16, 3).as_slice());
    }
}

/// A hot upgrade that does not happen: the exported array serves on, and its
/// background thread comes back with the next request.
#[test]
fn an_abandoned_handover_resumes_the_array() {
    let m = ram_members("up-abandon-", 2, 16 * MIB);
    let a = RaidBdev::open(m, &raid1_opts("up-abandon")).expect("array");
    let d: Arc<dyn Bdev> = a.clone();
    a.export().expect("export");
    let mut ch = d.open_channel().expect("channel");
    // A write needs a bitmap bit: only the background thread sets it.
    assert_eq!(
        write(ch.as_mut(), 512, 4096, &pattern(512, 4096, 8, 1)),
        IoStatus::Success
    );
    a.fail_member("#1").expect("management works again");
    assert_eq!(a.status().state, ArrayState::Degraded);
}

/// Concat and RAID0 travel with their layout; the data reads back.
#[test]
fn striped_arrays_travel() {
    for level in [Level::Concat, Level::Raid0] {
        let name = format!("up-{level}");
        let m = ram_members(&format!("{name}-"), 3, 8 * MIB);
        let a: Arc<dyn Bdev> = RaidBdev::open(m, &ArrayOptions::new(&name, level)).expect("array");
        let data = pattern(512, 1000, 300, 5);
        {
            let mut ch = a.open_channel().expect("channel");
            assert_eq!(write(ch.as_mut(), 512, 1000, &data), IoStatus::Success);
        }
        let registry = Arc::new(Registry::new());
        let b = hand_over(a, &registry);
        assert_eq!(b.kind(), level.name());
        let mut ch = b.open_channel().expect("channel");
        let (s, buf) = read(ch.as_mut(), 512, 1000, 300);
        assert_eq!(s, IoStatus::Success);
        assert_eq!(buf.as_slice(), data.as_slice());
    }
}
