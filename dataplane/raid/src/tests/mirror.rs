use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Bdev, IoStatus};

use super::*;
use crate::{ArrayState, MemberState};

const REGION: u64 = 256 << 10;

/// Whether every member holds the same data area.
fn mirrors_agree(m: &[Arc<Faulty>], array_bytes: u64) -> bool {
    let a = m[0].peek(MIB, array_bytes as usize);
    m[1..]
        .iter()
        .all(|x| x.peek(MIB, array_bytes as usize) == a)
}

fn array_bytes(a: &RaidBdev) -> u64 {
    a.info().num_blocks * u64::from(a.info().block_size)
}

#[test]
fn raid1_passes_the_backend_checks() {
    for (n, bs) in [(2, 512), (3, 4096)] {
        let m = members(&format!("r1-checks-{n}-"), n, 16 * MIB, bs);
        let a = open(&m, &raid1_opts(&format!("r1-checks-{n}")));
        assert_eq!(a.kind(), "raid1");
        let d: Arc<dyn Bdev> = a.clone();
        check_round_trip(&*d);
        check_out_of_range(&*d);
        check_flush(&*d);
        check_zeroes_and_deallocate(&*d);
        check_many_in_flight(&*d, 300);
        let in_place = check_served_in_place(&*d);
        assert!(in_place.reads && in_place.writes, "over RAM: {in_place:?}");
        assert!(mirrors_agree(&m, array_bytes(&a)));
        assert_eq!(a.status().state, ArrayState::Optimal);
    }
}

/// Reads are spread over the members (balanced); a read that meets a failing member
/// is retried on the other and succeeds.
#[test]
fn raid1_reads_are_balanced_and_retried() {
    let m = members("r1-balance-", 2, 8 * MIB, 4096);
    let a = open(&m, &raid1_opts("r1-balance"));
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    assert_eq!(
        write(ch.as_mut(), 4096, 0, &pattern(4096, 0, 64, 1)),
        IoStatus::Success
    );
    let bufs: Vec<AlignedBuf> = (0..64).map(|_| AlignedBuf::new(4096)).collect();
    let burst = |ch: &mut dyn lightpool_bdev::IoChannel| {
        for (i, b) in bufs.iter().enumerate() {
            let r = lightpool_bdev::IoRequest::rw(
                lightpool_bdev::IoOp::Read,
                i as u64,
                1,
                b.ptr(),
                4096,
                i as u64,
            );
            // SAFETY: `bufs` outlives the completions collected below.
            unsafe { ch.submit(r) };
        }
        let got = poll_n(ch, 64);
        assert!(got.values().all(|&s| s == IoStatus::Success), "{got:?}");
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(b.as_slice(), pattern(4096, i as u64, 1, 1).as_slice());
        }
    };
    // 64 reads in flight at once: half to each member.
    let reads = || -> Vec<u64> { m.iter().map(|x| x.f.reads.load(SeqCst)).collect() };
    let r0 = reads();
    burst(ch.as_mut());
    let r1 = reads();
    assert_eq!([r1[0] - r0[0], r1[1] - r0[1]], [32, 32]);
    // Member 0 fails its reads: those sent to it are retried on member 1.
    m[0].f.fail_reads.store(true, SeqCst);
    burst(ch.as_mut());
    assert_eq!(a.status().members[0].state, MemberState::Faulty);
    assert_eq!(
        reads()[1] - r1[1],
        64,
        "member 1 served every read in the end"
    );
    assert_eq!(a.status().state, ArrayState::Degraded);
}

/// A member whose writes start failing under a verifying load (four channels, QD32)
/// is dropped: not one request fails, every read checks, the array is degraded and
/// the superblock of the survivor records it. The same with a member that disappears.
#[test]
fn raid1_member_loss_under_verifying_load() {
    for how in ["write errors", "gone"] {
        let m = members("r1-loss-", 2, 32 * MIB, 512);
        let a = open(&m, &raid1_opts(&format!("r1-loss-{}", how.len())));
        let d: Arc<dyn Bdev> = a.clone();
        let blocks = array_bytes(&a) / 512;
        let (res, ()) = under_load(&d, 4, blocks, || {
            std::thread::sleep(Duration::from_millis(150));
            match how {
                "gone" => m[1].f.gone.store(true, SeqCst),
                _ => m[1].f.fail_writes.store(true, SeqCst),
            }
            std::thread::sleep(Duration::from_millis(300));
        });
        for r in &res {
            assert_eq!((r.errors, r.mismatches), (0, 0), "{how}: {res:?}");
            assert!(r.writes > 100 && r.reads > 10, "{how}: {res:?}");
        }
        let st = a.status();
        assert_eq!(st.state, ArrayState::Degraded, "{how}: {}", st.summary());
        assert_eq!(st.members[1].state, MemberState::Faulty);
        // The survivor's superblock says so (what a restart reads).
        let sb = match crate::assemble::read_superblock(&(m[0].clone() as Arc<dyn Bdev>)) {
            Ok(crate::assemble::Found::Sb(sb)) => sb,
            _ => panic!("survivor has a superblock"),
        };
        assert_eq!(sb.table[1].state, crate::format::SlotState::Faulty);
        assert!(!sb.clean);
    }
}

/// A member that fails, misses writes to four regions and returns is resynced by
/// copying exactly those regions: the bytes copied equal four regions, and it then
/// holds what the other member holds.
#[test]
fn raid1_returning_member_copies_only_what_changed() {
    let m = members("r1-return-", 2, 32 * MIB, 512);
    let a = open(&m, &raid1_opts("r1-return"));
    let d: Arc<dyn Bdev> = a.clone();
    let bytes = array_bytes(&a);
    let mut ch = d.open_channel().expect("channel");
    // Data everywhere, then wait for the bitmap to go clean (idle regions cleared).
    for r in 0..bytes / REGION {
        let lba = r * REGION / 512;
        assert_eq!(
            write(ch.as_mut(), 512, lba, &pattern(512, lba, 16, 1)),
            IoStatus::Success
        );
    }
    wait_for("a clean bitmap", || a.status().dirty_regions == 0);
    // Member 1 goes away.
    m[1].f.gone.store(true, SeqCst);
    let away = [3u64, 7, 8, 40];
    for (i, r) in away.iter().enumerate() {
        // Several writes per region, one crossing into the next block run.
        for k in 0..3u64 {
            let lba = r * REGION / 512 + k * 64;
            let data = pattern(512, lba, 8, 10 + i as u8);
            assert_eq!(write(ch.as_mut(), 512, lba, &data), IoStatus::Success);
        }
    }
    assert_eq!(a.status().state, ArrayState::Degraded);
    assert_eq!(a.status().dirty_regions, away.len() as u64);
    assert!(!mirrors_agree(&m, bytes));
    // It comes back.
    m[1].f.heal();
    let written_before = m[1].f.blocks_written.load(SeqCst);
    let msg = a.readd_member("r1-return-1").expect("re-add");
    assert!(msg.contains("resync of 4 dirty region(s)"), "{msg}");
    wait_for("the resync", || a.status().state == ArrayState::Optimal);
    let st = a.status();
    assert_eq!(
        st.copied_bytes_total,
        away.len() as u64 * REGION,
        "{}",
        st.summary()
    );
    let rec = st.members[1].recovery.as_ref().expect("reported");
    assert_eq!(rec.copied_bytes, away.len() as u64 * REGION);
    // What reached the member's data area: the four regions (metadata besides).
    let data_blocks = m[1].f.blocks_written.load(SeqCst) - written_before;
    let meta_blocks = data_blocks - away.len() as u64 * REGION / 512;
    assert!(
        meta_blocks < 400,
        "only bitmap and superblocks besides: {meta_blocks} blocks"
    );
    assert!(mirrors_agree(&m, bytes));
    // And it serves reads again (fail the other member's reads).
    m[0].f.fail_reads.store(true, SeqCst);
    let lba = 40 * REGION / 512 + 128;
    let (s, b) = read(ch.as_mut(), 512, lba, 8);
    assert_eq!(s, IoStatus::Success);
    assert_eq!(b.as_slice(), pattern(512, lba, 8, 13).as_slice());
}

/// While a returning member is being resynced, the array serves: reads of regions it
/// has not received yet come from the other member, writes reach both, and nothing
/// fails or reads wrong.
#[test]
fn raid1_resync_while_serving_under_load() {
    let m = members("r1-resync-load-", 2, 32 * MIB, 512);
    let mut o = raid1_opts("r1-resync-load");
    o.rebuild_rate = 16 << 20;
    let a = open(&m, &o);
    let d: Arc<dyn Bdev> = a.clone();
    let blocks = array_bytes(&a) / 512;
    let (res, copied) = under_load(&d, 3, blocks, || {
        std::thread::sleep(Duration::from_millis(100));
        a.fail_member("#1").expect("fail");
        std::thread::sleep(Duration::from_millis(300));
        a.readd_member("#1").expect("re-add");
        wait_for("the resync", || a.status().state == ArrayState::Optimal);
        a.status().copied_bytes_total
    });
    for r in &res {
        assert_eq!((r.errors, r.mismatches), (0, 0), "{res:?}");
    }
    assert!(copied > 0);
    assert!(mirrors_agree(&m, array_bytes(&a)));
}

/// A replacement is rebuilt in the background, rate-limited, while a verifying load
/// runs; progress is reported as it goes; then it holds everything.
#[test]
fn raid1_replacement_rebuilt_while_serving() {
    let mut m = members("r1-rebuild-", 2, 24 * MIB, 4096);
    let mut o = raid1_opts("r1-rebuild");
    o.rebuild_rate = 40 << 20;
    let a = open(&m, &o);
    let d: Arc<dyn Bdev> = a.clone();
    let bytes = array_bytes(&a);
    let blocks = bytes / 4096;
    let (res, progress) = under_load(&d, 2, blocks, || {
        std::thread::sleep(Duration::from_millis(100));
        m[1].f.fail_writes.store(true, SeqCst);
        wait_for("the failure", || a.status().state == ArrayState::Degraded);
        a.remove_member("r1-rebuild-1").expect("remove");
        let spare = Faulty::new("r1-rebuild-spare", 24 * MIB, 4096);
        let msg = a.add_member(spare.clone()).expect("add");
        assert!(msg.contains("full rebuild"), "{msg}");
        let mut seen = Vec::new();
        wait_for("the rebuild", || {
            let st = a.status();
            if let Some(r) = &st.members[1].recovery {
                seen.push(r.copied_bytes);
            }
            st.state == ArrayState::Optimal
        });
        m[1] = spare;
        seen
    });
    for r in &res {
        assert_eq!((r.errors, r.mismatches), (0, 0), "{res:?}");
    }
    // Rate-limited: it took several looks, and progress only grew.
    assert!(progress.len() > 10, "{} samples", progress.len());
    assert!(progress.windows(2).all(|w| w[0] <= w[1]));
    let st = a.status();
    assert_eq!(st.members[1].device.as_deref(), Some("r1-rebuild-spare"));
    assert_eq!(
        st.members[1].recovery.as_ref().map(|r| r.copied_bytes),
        Some(bytes)
    );
    assert!(mirrors_agree(&m, bytes));
}

/// Both members failing fails the array: requests get errors, not wrong data.
#[test]
fn raid1_with_no_member_left_fails_requests() {
    let m = members("r1-dead-", 2, 8 * MIB, 512);
    let a = open(&m, &raid1_opts("r1-dead"));
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    assert_eq!(
        write(ch.as_mut(), 512, 0, &pattern(512, 0, 8, 1)),
        IoStatus::Success
    );
    m[0].f.gone.store(true, SeqCst);
    assert_eq!(
        write(ch.as_mut(), 512, 0, &pattern(512, 0, 8, 2)),
        IoStatus::Success
    );
    m[1].f.gone.store(true, SeqCst);
    assert_eq!(
        write(ch.as_mut(), 512, 0, &pattern(512, 0, 8, 3)),
        IoStatus::Io(libc::EIO)
    );
    let (st, _) = read(ch.as_mut(), 512, 0, 8);
    assert_eq!(st, IoStatus::Io(libc::EIO));
    wait_for("the failed state", || {
        a.status().state == ArrayState::Failed
    });
}

/// Writes in place (RAM members) go to every writable member, but only once their
/// region's bit is durable: before that they are declined and nothing is written.
#[test]
fn raid1_in_place_writes_only_behind_a_durable_bit() {
    let m = members("r1-inplace-", 2, 8 * MIB, 4096);
    let a = open(&m, &raid1_opts("r1-inplace"));
    let d: Arc<dyn Bdev> = a.clone();
    let mut ch = d.open_channel().expect("channel");
    let at = |x: &Faulty| x.peek(MIB + 10 * 4096, 8192);
    assert!(
        !ch.write_in_place(10, 2, &pattern(4096, 10, 2, 1)),
        "no durable bit yet"
    );
    assert!(
        m.iter().all(|x| at(x).iter().all(|&b| b == 0)),
        "declined: nothing written"
    );
    assert_eq!(
        write(ch.as_mut(), 4096, 10, &pattern(4096, 10, 2, 1)),
        IoStatus::Success
    );
    assert!(ch.write_in_place(10, 2, &pattern(4096, 10, 2, 2)));
    assert!(m.iter().all(|x| at(x) == pattern(4096, 10, 2, 2)));
    let r = ch.read_in_place(10, 2).expect("served by reference");
    // SAFETY: the channel outlives the slice.
    assert_eq!(unsafe { r.as_slice() }, pattern(4096, 10, 2, 2).as_slice());
    // A failed member gets no more writes, in place or not.
    a.fail_member("#1").expect("fail");
    assert!(ch.write_in_place(10, 2, &pattern(4096, 10, 2, 3)));
    assert_eq!(at(&m[0]), pattern(4096, 10, 2, 3));
    assert_eq!(at(&m[1]), pattern(4096, 10, 2, 2));
    let r = ch.read_in_place(10, 2).expect("from the survivor");
    // SAFETY: as above.
    assert_eq!(unsafe { r.as_slice() }, pattern(4096, 10, 2, 3).as_slice());
    // The operator cannot fail the last member in sync: every I/O would fail.
    let e = a.fail_member("#0").expect_err("the last member in sync");
    assert!(e.to_string().contains("last member in sync"), "{e}");
    assert!(ch.write_in_place(10, 2, &pattern(4096, 10, 2, 4)));
    assert_eq!(at(&m[0]), pattern(4096, 10, 2, 4));
}

/// A write that a member failed completes only once the other member's superblock
/// records the failure: a restart can then never take the member that missed it for a
/// source. Checked the moment the write returns.
#[test]
fn raid1_write_completes_only_after_the_failure_is_on_disk() {
    for how in ["data write fails", "bitmap write fails"] {
        let m = members("r1-order-", 2, 8 * MIB, 512);
        let a = open(&m, &raid1_opts(&format!("r1-order-{}", how.len())));
        let d: Arc<dyn Bdev> = a.clone();
        let mut ch = d.open_channel().expect("channel");
        let lba = 3 * REGION / 512;
        if how == "data write fails" {
            // The region's bit is durable already: only the data write meets the failure.
            assert_eq!(
                write(ch.as_mut(), 512, lba, &pattern(512, lba, 8, 1)),
                IoStatus::Success
            );
        }
        m[1].f.fail_writes.store(true, SeqCst);
        assert_eq!(
            write(ch.as_mut(), 512, lba, &pattern(512, lba, 8, 2)),
            IoStatus::Success
        );
        let sb = match crate::assemble::read_superblock(&(m[0].clone() as Arc<dyn Bdev>)) {
            Ok(crate::assemble::Found::Sb(sb)) => sb,
            _ => panic!("member 0 has a superblock"),
        };
        assert_eq!(sb.table[1].state, crate::format::SlotState::Faulty, "{how}");
        assert_eq!(m[0].peek(MIB + lba * 512, 4096), pattern(512, lba, 8, 2));
    }
}
