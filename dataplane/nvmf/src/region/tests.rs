use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use lightpool_bdev_ram::MallocBdev;
use lightpool_spec::nvme::Sqe;

use super::objects::{read_image, read_queue, region_params};
use super::*;
use crate::queue::NvmfQueue;
use crate::subsystem::{NamespaceConfig, SubsystemConfig};
use crate::target::{Target, TargetOptions};
use crate::transport::{ListenAddr, ListenerInfo};

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

fn target_with_region() -> (Arc<Target>, Arc<Region>) {
    let opts = TargetOptions {
        max_queue_depth: 16,
        ..TargetOptions::default()
    };
    let (sizes, ropts) = region_params(&opts);
    let region = Region::create(memfd(), sizes, ropts, LAYOUT).expect("region");
    let t = Target::new(opts).expect("target");
    t.attach_region(region.clone()).expect("attach");
    let mut cfg = SubsystemConfig::new("nqn.2024-01.io.lightpool:region");
    cfg.hosts = vec!["nqn.2024-01.io.host:a".into()];
    cfg.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev: MallocBdev::new("m", 1 << 20, 512).expect("bdev"),
        nguid: None,
        uuid: None,
        anagrpid: None,
    });
    t.add_subsystem(cfg).expect("subsystem");
    t.add_listener(ListenerInfo {
        addr: ListenAddr::tcp("127.0.0.1:4420".parse().expect("addr")),
        portid: 1,
    });
    (t, region)
}

#[test]
fn configuration_is_recorded_as_it_is_created_and_on_ana_changes() {
    let (t, region) = target_with_region();
    let g0 = region.config_gen();
    let img = read_image(&region, true).expect("image");
    assert_eq!(img.target.subsystems.len(), 1);
    let s = &img.target.subsystems[0];
    assert_eq!(s.nqn, "nqn.2024-01.io.lightpool:region");
    assert_eq!(s.hosts, vec!["nqn.2024-01.io.host:a".to_string()]);
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(
        s.ana_groups,
        vec![(1, lightpool_spec::log::ana_state::OPTIMIZED, 0)]
    );
    assert_eq!(img.target.listeners.len(), 1);
    assert_eq!(img.target.listeners[0].trsvcid, "4420");
    assert_eq!(img.target.max_queue_depth, 16);
    t.subsystems()[0]
        .set_ana_state(1, lightpool_spec::log::ana_state::INACCESSIBLE)
        .expect("ana");
    assert!(region.config_gen() > g0);
    let img = read_image(&region, false).expect("image");
    let s = &img.target.subsystems[0];
    assert_eq!(
        s.ana_groups,
        vec![(1, lightpool_spec::log::ana_state::INACCESSIBLE, 1)]
    );
    assert_eq!(s.ana_chgcnt, 1);
}

#[test]
fn a_queue_records_slots_and_sq_head_on_the_io_path_and_frees_its_record() {
    let (t, region) = target_with_region();
    let mut q: NvmfQueue<()> = NvmfQueue::new(t.clone());
    let rec = q.shm().expect("a record").index();
    let img = read_image(&region, true).expect("image");
    assert_eq!(img.queues.len(), 1);
    assert_eq!(img.queues[0].rec, rec);
    assert!(img.queues[0].busy.is_empty());
    let mut sqe = Sqe {
        cid: 0x1234,
        ..Sqe::default()
    };
    let a = q.alloc(&sqe).expect("slot");
    sqe.cid = 0x99;
    let b = q.alloc(&sqe).expect("slot");
    let qi = read_queue(&region, &img, rec)
        .expect("valid")
        .expect("live");
    let mut busy = qi.busy.clone();
    busy.sort();
    let mut want = vec![(a, slot::ALLOCATED, 0x1234), (b, slot::ALLOCATED, 0x99)];
    want.sort();
    assert_eq!(busy, want);
    q.free(a);
    let qi = read_queue(&region, &img, rec)
        .expect("valid")
        .expect("live");
    assert_eq!(qi.busy, vec![(b, slot::ALLOCATED, 0x99)]);
    q.free(b);
    drop(q);
    assert!(
        !region.is_live(Kind::Queue, rec),
        "the record goes with the queue"
    );
}

#[test]
fn a_queue_record_that_makes_no_sense_is_refused() {
    let (t, region) = target_with_region();
    let q: NvmfQueue<()> = NvmfQueue::new(t.clone());
    let m = q.shm().expect("record");
    let rec = m.index();
    let img = read_image(&region, false).expect("image");
    m.set_slot(1, 77, 5);
    assert!(matches!(
        read_queue(&region, &img, rec),
        Err(RegionError::Invalid(_))
    ));
    m.set_slot(1, slot::FREE, 0);
    // The SQ head past the end of the queue.
    m.write_static(&QueueRec {
        ctrl: NO_CTRL,
        cntlid: 0,
        qid: 1,
        entries: 4,
        nslots: 8,
        reactor: 0,
        _pad: 0,
    });
    m.set_sqhd(9);
    assert!(matches!(
        read_queue(&region, &img, rec),
        Err(RegionError::Invalid(_))
    ));
    m.set_sqhd(3);
    assert!(read_queue(&region, &img, rec).expect("valid").is_some());
    // A controller record that is not live.
    m.write_static(&QueueRec {
        ctrl: 2,
        cntlid: 7,
        qid: 1,
        entries: 4,
        nslots: 8,
        reactor: 0,
        _pad: 0,
    });
    assert!(matches!(
        read_queue(&region, &img, rec),
        Err(RegionError::Invalid(_))
    ));
}
