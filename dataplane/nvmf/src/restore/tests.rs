use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use lightpool_bdev_ram::MallocBdev;
use lightpool_spec::nvme::Sqe;

use super::{read_image, read_queue};
use crate::listener::{ListenAddr, ListenerInfo};
use crate::queue::NvmfQueue;
use crate::region::*;
use crate::subsystem::{NamespaceConfig, SubsystemConfig};
use crate::target::{region_params, Target, TargetOptions};

fn memfd() -> File {
    let name = std::ffi::CString::new("region-test").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: a new descriptor we own.
    unsafe { File::from_raw_fd(fd) }
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
        num_blocks: None,
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
    let mut q: NvmfQueue<()> = NvmfQueue::new(t.clone(), 3);
    let rec = q.shm().expect("a record").index();
    let img = read_image(&region, true).expect("image");
    assert_eq!(img.queues.len(), 1);
    assert_eq!(img.queues[0].rec, rec);
    assert_eq!(
        img.queues[0].stat.reactor, 3,
        "the owning reactor, as given"
    );
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
    let q: NvmfQueue<()> = NvmfQueue::new(t.clone(), 0);
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
