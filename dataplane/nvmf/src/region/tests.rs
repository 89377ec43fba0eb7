use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use std::sync::atomic::Ordering;

use super::*;

fn memfd() -> File {
    let name = std::ffi::CString::new("region-test").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: a new descriptor we own.
    unsafe { File::from_raw_fd(fd) }
}

fn small() -> RegionSizes {
    RegionSizes {
        counts: [2, 2, 4, 4, 2, 3, 3],
        slots_per_queue: 8,
    }
}

fn new_region(layout: u32) -> (Arc<Region>, File) {
    let f = memfd();
    let copy = f.try_clone().expect("dup");
    let r = Region::create(f, small(), RegionOptions::default(), layout).expect("create");
    (r, copy)
}

fn listener(port: u16) -> ListenerRec {
    ListenerRec {
        portid: port,
        trtype: 3,
        adrfam: 1,
        traddr: Str::new("addr", "127.0.0.1").expect("short"),
        trsvcid: Str::new("svc", &port.to_string()).expect("short"),
        _pad: [0; 2],
    }
}

#[test]
fn records_are_allocated_written_read_and_freed() {
    let (r, _) = new_region(LAYOUT);
    let a = r.alloc(Kind::Listener).expect("first");
    let b = r.alloc(Kind::Listener).expect("second");
    assert_ne!(a, b);
    assert!(matches!(
        r.alloc(Kind::Listener),
        Err(RegionError::Full(Kind::Listener))
    ));
    r.write(Kind::Listener, a, &listener(4420));
    let (gen, l) = r
        .read::<ListenerRec>(Kind::Listener, a)
        .expect("valid")
        .expect("live");
    assert_eq!(gen, 1);
    assert_eq!(l.portid, 4420);
    assert_eq!(l.trsvcid.get("svc").expect("utf-8"), "4420");
    r.free(Kind::Listener, a);
    assert!(r
        .read::<ListenerRec>(Kind::Listener, a)
        .expect("ok")
        .is_none());
    // The freed record is taken again, with a new generation.
    assert_eq!(r.alloc(Kind::Listener).expect("free again"), a);
    assert_eq!(r.gen(Kind::Listener, a), 2);
    // Other kinds are independent tables.
    assert_eq!(r.alloc(Kind::Controller).expect("ctrl"), 0);
}

#[test]
fn a_reopened_region_reads_the_same_records_and_is_not_owned() {
    let (r, f) = new_region(LAYOUT);
    let a = r.alloc(Kind::Listener).expect("alloc");
    r.write(Kind::Listener, a, &listener(4421));
    r.write_blob(Blob::Boot, b"boot").expect("blob");
    let o = Region::open(f).expect("open");
    assert_eq!(o.id(), r.id());
    assert!(!o.owned());
    let got = o.live::<ListenerRec>(Kind::Listener);
    assert_eq!(got.len(), 1);
    let (i, _, l) = got.into_iter().next().expect("one").expect("valid");
    assert_eq!((i, l.portid), (a, 4421));
    assert_eq!(
        o.read_blob(Blob::Boot).expect("ok").as_deref(),
        Some(&b"boot"[..])
    );
    assert!(o.read_blob(Blob::Handover).expect("ok").is_none());
    // Not the owner: it cannot allocate, and writes and frees do nothing.
    assert!(matches!(
        o.alloc(Kind::Listener),
        Err(RegionError::NotOwner)
    ));
    o.free(Kind::Listener, a);
    assert!(o.is_live(Kind::Listener, a));
    o.take_ownership();
    assert_eq!(o.owner_pid(), std::process::id());
    o.free(Kind::Listener, a);
    assert!(!r.is_live(Kind::Listener, a), "both map the same memory");
}

#[test]
fn an_unknown_layout_is_refused() {
    let (_r, f) = new_region(LAYOUT + 5);
    match Region::open(f) {
        Err(RegionError::Layout { found }) => assert_eq!(found, LAYOUT + 5),
        other => panic!("expected a layout refusal, got {other:?}"),
    }
}

#[test]
fn a_foreign_or_damaged_header_is_refused() {
    use std::os::unix::fs::FileExt;
    let (_r, f) = new_region(LAYOUT);
    f.write_all_at(b"NOTOURS!", 0).expect("write");
    assert!(matches!(Region::open(f), Err(RegionError::BadMagic)));

    let (_r, f) = new_region(LAYOUT);
    // The region id lies in the checksummed header.
    f.write_all_at(&[0xAA], 17).expect("write");
    assert!(matches!(Region::open(f), Err(RegionError::Damaged(_))));

    assert!(matches!(
        Region::open(memfd()),
        Err(RegionError::Damaged(_))
    ));
}

#[test]
fn a_corrupted_or_torn_record_is_detected() {
    let (r, _) = new_region(LAYOUT);
    let a = r.alloc(Kind::Listener).expect("alloc");
    r.write(Kind::Listener, a, &listener(4420));
    // Flip one byte of the body behind the checksum's back.
    // SAFETY: inside record `a` of the mapping; no one else uses it in this test.
    unsafe { *r.rec_ptr(Kind::Listener, a).add(HEAD + 5) ^= 0x40 };
    assert!(matches!(
        r.read::<ListenerRec>(Kind::Listener, a),
        Err(RegionError::Corrupt { kind: Kind::Listener, index }) if index == a
    ));
    let errs = r.live::<ListenerRec>(Kind::Listener);
    assert!(errs[0].is_err(), "a scan reports it too");
    // A writer that died half way leaves the sequence odd.
    r.write(Kind::Listener, a, &listener(4420));
    r.head(Kind::Listener, a).seq.fetch_add(1, Ordering::AcqRel);
    assert!(matches!(
        r.read::<ListenerRec>(Kind::Listener, a),
        Err(RegionError::Torn { .. })
    ));
}

#[test]
fn a_damaged_blob_is_detected() {
    use std::os::unix::fs::FileExt;
    let (r, f) = new_region(LAYOUT);
    r.write_blob(Blob::Handover, b"pause-time state")
        .expect("blob");
    f.write_all_at(b"X", r.hdr.len + BOOT_CAP + 3)
        .expect("write");
    assert!(matches!(
        r.read_blob(Blob::Handover),
        Err(RegionError::Damaged(_))
    ));
}

#[test]
fn strings_too_long_for_a_record_are_refused() {
    let long = "x".repeat(300);
    assert!(matches!(
        Str::<254>::new("host NQN", &long),
        Err(RegionError::TooLong {
            max: 254,
            len: 300,
            ..
        })
    ));
}
