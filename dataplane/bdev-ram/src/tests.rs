use lightpool_bdev::testing::*;
use lightpool_bdev::{Adopter, Adoption, Bdev, BdevError, IoOp, IoRequest, IoStatus};

use crate::{MallocBdev, RamAdopter};

fn dev(bs: u32) -> std::sync::Arc<MallocBdev> {
    MallocBdev::new("ram0", 4 << 20, bs).unwrap()
}

#[test]
fn info_is_as_configured() {
    let d = dev(512);
    let info = d.info();
    assert_eq!(info.name, "ram0");
    assert_eq!(info.block_size, 512);
    assert_eq!(info.num_blocks, 8192);
    assert!(!info.read_only);
    assert!(!info.volatile_write_cache);
    assert!(info.supports_deallocate);
}

#[test]
fn round_trip() {
    check_round_trip(&*dev(512));
    check_round_trip(&*dev(4096));
}

#[test]
fn out_of_range() {
    check_out_of_range(&*dev(512));
    check_out_of_range(&*dev(4096));
}

#[test]
fn flush() {
    check_flush(&*dev(4096));
}

#[test]
fn write_zeroes_and_deallocate_read_back_zeroes() {
    check_zeroes_and_deallocate(&*dev(512));
    check_zeroes_and_deallocate(&*dev(4096));
}

#[test]
fn many_in_flight() {
    check_many_in_flight(&*dev(512), 256);
}

/// RAM serves every read by reference to its own memory and takes every write in place.
#[test]
fn reads_by_reference_and_writes_in_place() {
    let both = InPlace {
        reads: true,
        writes: true,
    };
    assert_eq!(check_served_in_place(&*dev(512)), both);
    assert_eq!(check_served_in_place(&*dev(4096)), both);
    // The reference is the device's memory: another channel's write shows through it.
    let d = dev(4096);
    let mut a = d.open_channel().unwrap();
    let mut b = d.open_channel().unwrap();
    let r = a.read_in_place(3, 1).expect("offered");
    assert!(b.write_in_place(3, 1, &[0x5a; 4096]));
    // SAFETY: channel `a` is alive for the whole use of the slice.
    assert!(unsafe { r.as_slice() }.iter().all(|&x| x == 0x5a));
}

#[test]
fn completion_comes_from_poll_never_from_submit() {
    let d = dev(512);
    let mut ch = d.open_channel().unwrap();
    // SAFETY: no buffer.
    unsafe { ch.submit(IoRequest::no_data(IoOp::Flush, 0, 0, 42)) };
    assert_eq!(ch.in_flight(), 1);
    assert!(ch.completion_fd().is_none());
    let mut seen = vec![];
    assert_eq!(ch.poll(&mut |t, s| seen.push((t, s))), 1);
    assert_eq!(seen, vec![(42, IoStatus::Success)]);
    assert_eq!(ch.poll(&mut |_, _| panic!("twice")), 0);
}

#[test]
fn channels_share_the_memory() {
    let d = dev(4096);
    let mut a = d.open_channel().unwrap();
    let mut b = d.open_channel().unwrap();
    let data = pattern(4096, 9, 2, 8);
    assert_eq!(write(a.as_mut(), 4096, 9, &data), IoStatus::Success);
    let (st, buf) = read(b.as_mut(), 4096, 9, 2);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(buf.as_slice(), data.as_slice());
    // And the test accessors see the same bytes.
    let mut raw = vec![0u8; 8192];
    d.read_at(9 * 4096, &mut raw).unwrap();
    assert_eq!(raw, data);
}

#[test]
fn write_at_corrupts_a_block_for_tests() {
    let d = dev(512);
    let mut ch = d.open_channel().unwrap();
    assert_eq!(write(ch.as_mut(), 512, 3, &[0x11; 512]), IoStatus::Success);
    d.write_at(3 * 512 + 10, &[0xee; 4]).unwrap();
    let (_, buf) = read(ch.as_mut(), 512, 3, 1);
    assert_eq!(
        &buf.as_slice()[8..16],
        &[0x11, 0x11, 0xee, 0xee, 0xee, 0xee, 0x11, 0x11]
    );
    assert_eq!(d.write_at(4 << 20, &[0]), Err(IoStatus::OutOfRange));
    assert_eq!(
        d.read_at((4 << 20) - 1, &mut [0; 2]),
        Err(IoStatus::OutOfRange)
    );
    assert_eq!(d.read_at(u64::MAX, &mut [0; 2]), Err(IoStatus::OutOfRange));
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_one_gib_device_costs_nothing_until_written() {
    let before = rss_bytes();
    let d = MallocBdev::new("big", 1 << 30, 4096).unwrap();
    let mut ch = d.open_channel().unwrap();
    let last = d.info().num_blocks - 1;
    assert_eq!(
        write(ch.as_mut(), 4096, last, &[0xab; 4096]),
        IoStatus::Success
    );
    let (_, buf) = read(ch.as_mut(), 4096, last, 1);
    assert!(buf.as_slice().iter().all(|&b| b == 0xab));
    let grown = rss_bytes().saturating_sub(before);
    // Other tests run in parallel in this process, so allow some slack; a committed
    // 1 GiB would be far above it.
    assert!(grown < 128 << 20, "RSS grew by {grown} bytes");
}

#[test]
fn invalid_arguments_are_refused_with_a_sentence() {
    let msg = |r: Result<_, BdevError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(MallocBdev::new("r", 1 << 20, 1024)),
        "RAM device r: block size 1024 is not supported; use 512 or 4096"
    );
    assert_eq!(
        msg(MallocBdev::new("r", 0, 512)),
        "RAM device r: size is 0 bytes; it must hold at least one 512-byte block"
    );
    assert_eq!(
        msg(MallocBdev::new("r", 1000, 512)),
        "RAM device r: size 1000 bytes is not a multiple of the 512-byte block size"
    );
    assert!(matches!(
        MallocBdev::new("r", 1000, 512),
        Err(BdevError::Invalid(_))
    ));
}

#[test]
fn memory_survives_in_the_memfd_for_a_successor() {
    use std::os::fd::AsFd;
    let a = MallocBdev::new("ha", 1 << 20, 512).expect("RAM");
    a.write_at(4096 * 3, b"kept across the upgrade")
        .expect("in range");
    let fd = a.memfd().as_fd().try_clone_to_owned().expect("dup");
    assert_eq!(a.export().expect("exported").fds.len(), 1);
    drop(a);
    let b = MallocBdev::from_memfd("hb", fd, 512).expect("adopt");
    assert_eq!(b.info().num_blocks, 2048);
    let mut got = [0u8; 23];
    b.read_at(4096 * 3, &mut got).expect("in range");
    assert_eq!(&got, b"kept across the upgrade");
    // Deallocation zeroes through the memfd too.
    let mut ch = b.open_channel().expect("channel");
    // SAFETY: no buffer for Deallocate.
    unsafe {
        ch.submit(IoRequest {
            op: IoOp::Deallocate,
            offset_blocks: 0,
            num_blocks: 2048,
            buf: std::ptr::null_mut(),
            len: 0,
            tag: 1,
        })
    };
    let mut n = 0;
    ch.poll(&mut |_, st| {
        assert_eq!(st, IoStatus::Success);
        n += 1;
    });
    assert_eq!(n, 1);
    b.read_at(4096 * 3, &mut got).expect("in range");
    assert_eq!(got, [0u8; 23]);
}

/// The tests that count huge pages run one at a time.
static HUGE_PAGE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// 2 MiB huge pages on this machine, free or not.
fn huge_pages_total() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("HugePages_Total:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Free 2 MiB huge pages on this machine (tests/run.sh reserves some with
/// `hugepage-setup reserve` before the tests run).
fn free_huge_pages() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // Reserved pages are promised to a mapping already.
    field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:"))
}

/// A RAM device in huge pages: same behaviour, deallocation that spans whole huge pages
/// zeroes exactly the range (a hole is punched in whole 2 MiB pages, the partial ones
/// at either end are written), the memory is handed over intact, and a shortage is a
/// clear error.
#[test]
fn huge_pages() {
    let _one = HUGE_PAGE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let free = free_huge_pages();
    assert!(
        free >= 4,
        "this test needs 4 free 2 MiB huge pages, the machine has {free}: \
         run `hugepage-setup reserve --pages 16 --no-mount` (tests/run.sh does)"
    );
    let d = MallocBdev::new_hugepages("huge", 8 << 20, 512).unwrap();
    assert_eq!(
        free_huge_pages(),
        free - 4,
        "pages are reserved at creation"
    );
    check_round_trip(&*d);
    check_out_of_range(&*d);

    let bs = 512u32;
    let total = (8u32 << 20) / bs;
    let data = pattern(bs, 0, total, 9);
    let mut ch = d.open_channel().unwrap();
    assert_eq!(write(ch.as_mut(), bs, 0, &data), IoStatus::Success);
    // 1 MiB + 1 block .. 7 MiB - 1 block: two whole huge pages and two partial ones.
    let (lba, n) = ((1u64 << 20) / 512 + 1, ((6u32 << 20) / 512) - 2);
    let st = run1(ch.as_mut(), IoRequest::no_data(IoOp::Deallocate, lba, n, 1));
    assert_eq!(st, IoStatus::Success);
    let (st, buf) = read(ch.as_mut(), bs, 0, total);
    assert_eq!(st, IoStatus::Success);
    let got = buf.as_slice();
    let (a, b) = (lba as usize * 512, (lba as usize + n as usize) * 512);
    assert_eq!(&got[..a], &data[..a], "blocks before the range changed");
    assert!(
        got[a..b].iter().all(|&x| x == 0),
        "deallocated blocks not zero"
    );
    assert_eq!(&got[b..], &data[b..], "blocks after the range changed");

    // The successor maps the same pages.
    let view = {
        let mut ch = d.open_channel().unwrap();
        let r = ch.read_in_place(0, 8).expect("RAM reads in place");
        // SAFETY: the channel is alive for the whole use of the slice.
        unsafe { r.as_slice() }.to_vec()
    };
    let fd = d.memfd().try_clone_to_owned().unwrap();
    let d2 = MallocBdev::from_memfd("huge", fd, 512).unwrap();
    let mut back = vec![0u8; 4096];
    d2.read_at(0, &mut back).unwrap();
    assert_eq!(back, view);
    drop(d2);

    // Sizes and shortages.
    let e = MallocBdev::new_hugepages("odd", 3 << 20, 512).unwrap_err();
    assert!(e.to_string().contains("multiple of the 2 MiB"), "{e}");
    let e = MallocBdev::new_hugepages("big", 1 << 40, 512).unwrap_err();
    assert!(e.to_string().contains("hugepage-setup reserve"), "{e}");
}

/// The adopter maps the memfd handed over; recovery (no descriptors) reopens the tmpfs
/// file of a device in the state directory and refuses one that lived only in memory.
#[test]
fn adopter_takes_the_memfd_or_the_state_file() {
    let a = MallocBdev::new("ram1", 1 << 20, 4096).expect("RAM");
    a.write_at(8192, b"acknowledged").expect("in range");
    let e = a.export().expect("export");
    let b = RamAdopter
        .adopt(Adoption {
            name: "ram1",
            state: &e.state,
            fds: Some(e.fds),
            children: Vec::new(),
        })
        .expect("adopt");
    assert_eq!((b.info().block_size, b.info().num_blocks), (4096, 256));
    let mut ch = b.open_channel().expect("channel");
    let (st, buf) = read(ch.as_mut(), 4096, 2, 1);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(&buf.as_slice()[..12], b"acknowledged");

    let e = a.export().expect("export");
    let err = RamAdopter
        .adopt(Adoption {
            name: "ram1",
            state: &e.state,
            fds: None,
            children: Vec::new(),
        })
        .err()
        .expect("a memfd-only device cannot be recovered");
    assert_eq!(
        err.to_string(),
        "RAM device ram1 lived outside the state directory: its data did not survive"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ram-x-1");
    let s = MallocBdev::open_shared("ram2", &path, 1 << 20, 512).expect("shared");
    s.write_at(512 * 7, b"in the file").expect("in range");
    let e = s.export().expect("export");
    drop(s);
    let r = RamAdopter
        .adopt(Adoption {
            name: "ram2",
            state: &e.state,
            fds: None,
            children: Vec::new(),
        })
        .expect("recovered from the file");
    let mut ch = r.open_channel().expect("channel");
    let (_, buf) = read(ch.as_mut(), 512, 7, 1);
    assert_eq!(&buf.as_slice()[..11], b"in the file");
}

/// Whether every page of `len` bytes at `ptr` is in memory (`mincore`).
fn resident(ptr: *const u8, len: usize) -> bool {
    let page = crate::memory::page_size();
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `ptr` is the page-aligned start of a live mapping of at least `len` bytes
    // (the caller's device), and `vec` has one byte per page of it.
    let rc = unsafe { libc::mincore(ptr.cast_mut().cast(), len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().all(|&v| v & 1 == 1)
}

/// The device's whole memory.
fn memory_of(d: &MallocBdev) -> (*const u8, usize) {
    (d.mem.ptr.as_ptr(), d.mem.len)
}

/// The default: 2 MiB huge pages when enough are free, every page in memory before the
/// first I/O; when they are not (too few free, or a size that is no whole number of huge
/// pages), ordinary memory with the reason, and the same behaviour. Required huge pages
/// that cannot be had are an error naming the command that reserves them.
#[test]
fn a_ram_device_lands_in_huge_pages_when_free_and_falls_back_when_not() {
    use crate::{Backing, Pages, RamOptions, HUGE_PAGE};
    let _one = HUGE_PAGE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let free = free_huge_pages();
    assert!(
        free >= 4,
        "this test needs 4 free 2 MiB huge pages, the machine has {free}: \
         run `hugepage-setup reserve --pages 24` (tests/run.sh does)"
    );
    let d = MallocBdev::with_options("auto", 8 << 20, 512, &RamOptions::default()).unwrap();
    assert_eq!(d.backing(), &Backing::Huge);
    assert!(crate::memory::is_hugetlb(d.memfd()));
    let (ptr, len) = memory_of(&d);
    assert_eq!(len, 8 << 20);
    assert!(resident(ptr, len), "populated at creation");
    check_round_trip(&*d);

    // More pages than the machine has: ordinary memory (not populated here: it may be
    // large).
    let short = (huge_pages_total() + 1) * HUGE_PAGE as u64;
    let lazy = RamOptions {
        populate: false,
        ..RamOptions::default()
    };
    let o = MallocBdev::with_options("short", short, 512, &lazy).unwrap();
    match o.backing() {
        Backing::Ordinary { reason } => assert!(reason.contains("are free"), "{reason}"),
        b => panic!("{short} bytes of huge pages with fewer free: {b:?}"),
    }
    assert!(!crate::memory::is_hugetlb(o.memfd()));
    check_round_trip(&*o);
    drop(o);

    // A size that is no whole number of huge pages: ordinary memory, populated.
    let odd = MallocBdev::with_options("odd", 3 << 20, 512, &RamOptions::default()).unwrap();
    match odd.backing() {
        Backing::Ordinary { reason } => {
            assert!(reason.contains("multiple of the 2 MiB"), "{reason}")
        }
        b => panic!("3 MiB in huge pages: {b:?}"),
    }
    let (ptr, len) = memory_of(&odd);
    assert!(resident(ptr, len), "ordinary memory is populated too");
    check_round_trip(&*odd);

    // Ordinary pages asked for, and lazily: nothing is in memory before it is written.
    let plain = MallocBdev::new("plain", 4 << 20, 512).unwrap();
    let (ptr, len) = memory_of(&plain);
    assert!(!resident(ptr, len));

    let required = RamOptions {
        pages: Pages::Huge,
        ..RamOptions::default()
    };
    let e = MallocBdev::with_options("must", short, 512, &required).unwrap_err();
    assert!(
        e.to_string().contains("hugepage-setup reserve --pages"),
        "{e}"
    );
}

/// A device kept in a state directory: in huge pages, its data lives in a file on the
/// mounted hugetlbfs and the state directory holds a link to it; a restart and recovery
/// reattach it (huge pages, data intact), and removing it frees both. Without huge
/// pages it is a plain file in the state directory.
#[test]
fn a_state_directory_device_keeps_its_data_in_huge_pages() {
    use crate::{remove_state_file, Backing, RamOptions};
    let _one = HUGE_PAGE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        crate::memory::hugetlbfs_mount().is_some(),
        "this test needs a hugetlbfs of 2 MiB pages mounted: run `hugepage-setup reserve \
         --pages 24` (tests/run.sh does)"
    );
    assert!(
        free_huge_pages() >= 2,
        "this test needs 2 free 2 MiB huge pages"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ram-nqn-1");
    let opts = RamOptions {
        file: Some(path.clone()),
        ..RamOptions::default()
    };
    let d = MallocBdev::with_options("st", 4 << 20, 512, &opts).unwrap();
    assert_eq!(d.backing(), &Backing::Huge);
    assert!(crate::memory::is_hugetlb(d.memfd()));
    let link = std::fs::read_link(&path).expect("the state directory holds a link");
    let mount = crate::memory::hugetlbfs_mount().expect("checked above");
    assert!(
        link.starts_with(&mount),
        "{} on {}",
        link.display(),
        mount.display()
    );
    d.write_at(512 * 9, b"survives a restart").unwrap();
    drop(d);

    let again = MallocBdev::with_options("st", 4 << 20, 512, &opts).unwrap();
    assert_eq!(again.backing(), &Backing::Huge);
    let mut got = [0u8; 18];
    again.read_at(512 * 9, &mut got).unwrap();
    assert_eq!(&got, b"survives a restart");
    let e = again.export().expect("export");
    drop(again);
    let r = RamAdopter
        .adopt(Adoption {
            name: "st",
            state: &e.state,
            fds: None,
            children: Vec::new(),
        })
        .expect("recovered from the state directory");
    let mut ch = r.open_channel().expect("channel");
    let (_, buf) = read(ch.as_mut(), 512, 9, 1);
    assert_eq!(&buf.as_slice()[..18], b"survives a restart");
    drop(ch);
    drop(r);
    remove_state_file(&path).unwrap();
    assert!(std::fs::symlink_metadata(&path).is_err());
    assert!(
        std::fs::metadata(&link).is_err(),
        "the hugetlbfs file is gone too"
    );

    // No whole number of huge pages: a plain file in the state directory.
    let odd_path = dir.path().join("ram-nqn-2");
    let odd = RamOptions {
        file: Some(odd_path.clone()),
        ..RamOptions::default()
    };
    let o = MallocBdev::with_options("st2", 3 << 20, 512, &odd).unwrap();
    assert!(matches!(o.backing(), Backing::Ordinary { .. }));
    assert!(std::fs::symlink_metadata(&odd_path)
        .expect("made")
        .file_type()
        .is_file());
    drop(o);
    remove_state_file(&odd_path).unwrap();
    assert!(std::fs::symlink_metadata(&odd_path).is_err());
}
