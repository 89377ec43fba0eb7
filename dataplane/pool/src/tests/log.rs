//! The mapping log under faults: a ring that wraps many times, a torn log write, a
//! power cut at every request of a checkpoint, a replay cut at every request and
//! replayed again, and pools of format version 1 (no log) opened and served.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lightpool_bdev::{Bdev, IoStatus};

use super::fault::FaultBdev;
use super::*;
use crate::ctlio::CtlIo;
use crate::format::{self, PAGE};
use crate::log::{self, test_pages};
use crate::meta::page_offset;

const BS: u32 = 512;
const CLUSTER: u32 = 16 << 10;
const CB: u64 = CLUSTER as u64 / BS as u64;
const DEV: usize = 40 << 20;

/// A pool on a fault device with `log_pages` log pages (`Some(0)`: version 1), and two
/// thin volumes of `clusters` clusters each.
fn setup(log_pages: Option<u32>, volatile: bool, clusters: u64) -> (Arc<FaultBdev>, Arc<Pool>) {
    setup_on(DEV, log_pages, volatile, clusters)
}

fn setup_on(
    bytes: usize,
    log_pages: Option<u32>,
    volatile: bool,
    clusters: u64,
) -> (Arc<FaultBdev>, Arc<Pool>) {
    test_pages::set(log_pages);
    let dev = FaultBdev::new(vec![0; bytes], BS, volatile, 7);
    let (p, _) = Pool::open(dev.clone(), "p", &opts(CLUSTER, 400), true).expect("pool");
    test_pages::set(None);
    for name in ["a", "b"] {
        p.create(name, clusters * CLUSTER as u64, true)
            .expect("create");
    }
    (dev, p)
}

/// One block at the start of every `step`-th cluster of `name`, each with its own seed;
/// flushed. What was written: (lba, seed).
fn fill(p: &Arc<Pool>, name: &str, clusters: u64, step: u64, salt: u8) -> Vec<(u64, u8)> {
    let v = p.open_volume(name).expect("open");
    let mut ch = v.open_channel().expect("channel");
    let mut out = Vec::new();
    for c in (0..clusters).step_by(step as usize) {
        let lba = c * CB + c % CB;
        let seed = (c as u8).wrapping_mul(7) ^ salt;
        assert_eq!(put(ch.as_mut(), BS, lba, 1, seed), IoStatus::Success);
        out.push((lba, seed));
    }
    assert_eq!(flush(ch.as_mut()), IoStatus::Success);
    out
}

/// Whether every written block reads back, and the pool's check passes.
fn verify(p: &Arc<Pool>, name: &str, want: &[(u64, u8)]) -> Result<(), String> {
    let v = p.open_volume(name).map_err(|e| e.to_string())?;
    let mut ch = v.open_channel().map_err(|e| e.to_string())?;
    for &(lba, seed) in want {
        if !holds(ch.as_mut(), BS, lba, 1, Some(seed)) {
            return Err(format!("{name}: block {lba} lost seed {seed}"));
        }
    }
    p.check().map_err(|e| e.to_string())?;
    Ok(())
}

fn reopen(image: Vec<u8>) -> Result<Arc<Pool>, String> {
    let dev = FaultBdev::new(image, BS, false, 3);
    Pool::open(dev, "p", &PoolOptions::default(), false)
        .map(|(p, _)| p)
        .map_err(|e| format!("reopen: {e}"))
}

/// Log page numbers reached so far.
fn log_number(p: &Pool) -> u64 {
    p.arena.header().log_tail.load(Ordering::Acquire) >> 16
}

/// A two-page ring wraps hundreds of times (appends wait while it is full, the
/// checkpoint thread folds it); a crash after that loses nothing.
#[test]
fn a_ring_that_wraps_loses_nothing_across_a_crash() {
    let (dev, p) = setup(Some(2), false, 1000);
    let a = fill(&p, "a", 1000, 1, 1);
    let b = fill(&p, "b", 1000, 1, 2);
    assert!(log_number(&p) >= 7, "the ring of 2 pages did not wrap");
    dev.cut_now();
    let image = dev.image();
    crash(p);
    let p = reopen(image).unwrap();
    verify(&p, "a", &a).unwrap();
    verify(&p, "b", &b).unwrap();
}

/// A write of the tail log page torn by the power cut lands in the slot that does not
/// hold the last durable copy: the records of that copy are all replayed. A first
/// write of a log page torn reads as never written.
#[test]
fn a_torn_log_write_keeps_every_acknowledged_record() {
    let (dev, p) = setup(Some(8), false, 300);
    let a = fill(&p, "a", 300, 1, 3);
    let n = log_number(&p);
    let q = (n % 8) as u32;
    let page = p.geo.log_page(q);
    let next = p.geo.log_page(((n + 1) % 8) as u32);
    dev.cut_now();
    let mut image = dev.image();
    crash(p);
    let off = page_offset(page) as usize;
    let (newer, h) = format::pick(&image[off..off + 2 * PAGE], None, page)
        .unwrap()
        .expect("the tail log page was written");
    assert!(format::decode_log(&image[off + newer * PAGE..][..PAGE]).len() > 1);
    // The next copy's slot, half written: the first sectors of a newer copy.
    let other = off + (1 - newer) * PAGE;
    let mut torn = image[off + newer * PAGE..][..PAGE].to_vec();
    torn[32..40].copy_from_slice(&(h.seq + 1).to_le_bytes());
    image[other..other + 1024].copy_from_slice(&torn[..1024]);
    image[other + 1024..other + PAGE].fill(0xEE);
    // The next log page's first write, torn.
    let noff = page_offset(next) as usize;
    image[noff..noff + 512].copy_from_slice(&torn[..512]);
    image[noff + PAGE..noff + 2 * PAGE].fill(0);
    let p = reopen(image).unwrap();
    verify(&p, "a", &a).unwrap();
}

/// The power goes at each request of a checkpoint in turn (with and without a
/// volatile cache): every acknowledged write is still there, from the map pages the
/// checkpoint finished or from the log.
#[test]
fn a_power_cut_at_every_request_of_a_checkpoint_loses_nothing() {
    for volatile in [false, true] {
        let mut k = 1;
        loop {
            let (dev, p) = setup(Some(16), volatile, 1200);
            let a = fill(&p, "a", 1200, 1, 4);
            let b = fill(&p, "b", 1200, 3, 5);
            // The background thread stays out of it; this test runs the checkpoint.
            p.owned.store(false, Ordering::Release);
            let start = dev.submitted();
            dev.cut_after(k);
            let mut io = CtlIo::open(&(dev.clone() as Arc<dyn Bdev>)).unwrap();
            let done = log::checkpoint(&p, &mut io).is_ok() && !dev.is_dead();
            let used = dev.submitted() - start;
            drop(io);
            dev.cut_now();
            let image = dev.image();
            crash(p);
            let p = reopen(image).unwrap_or_else(|e| panic!("cut at request {k}: {e}"));
            verify(&p, "a", &a).unwrap_or_else(|e| panic!("cut at request {k}: {e}"));
            verify(&p, "b", &b).unwrap_or_else(|e| panic!("cut at request {k}: {e}"));
            if done {
                assert!(used > 2, "the checkpoint wrote only {used} requests");
                break;
            }
            // Map pages are written 256 to a request batch: cut in each batch's
            // middle and at its edges.
            k += 1;
        }
    }
}

/// A pool whose log holds records not folded: its open replays them and folds them.
/// The power goes at each request of that open in turn, and the pool is opened (and
/// replayed) again from what is left; opened twice without a cut, it is the same.
#[test]
fn a_replay_cut_short_is_replayed_again() {
    // A small device: every open after a crash zeroes its free clusters.
    let (dev, p) = setup_on(8 << 20, Some(16), true, 200);
    let a = fill(&p, "a", 200, 1, 6);
    let b = fill(&p, "b", 200, 2, 7);
    assert!(log::used_pages(&p) > 1, "the log holds records");
    dev.cut_now();
    let image = dev.image();
    crash(p);
    // Replayed twice (the first open's fold kept, nothing else written).
    let d = FaultBdev::new(image.clone(), BS, false, 5);
    let (p, _) = Pool::open(d.clone(), "p", &PoolOptions::default(), false).unwrap();
    verify(&p, "a", &a).unwrap();
    crash(p);
    d.cut_now();
    let p = reopen(d.image()).unwrap();
    verify(&p, "a", &a).unwrap();
    verify(&p, "b", &b).unwrap();
    crash(p);
    // Cut at each request of the replaying open.
    let mut k = 1;
    loop {
        let d = FaultBdev::new(image.clone(), BS, true, k);
        d.cut_after(k);
        let opened = Pool::open(d.clone(), "p", &PoolOptions::default(), false);
        let done = opened.is_ok() && !d.is_dead();
        if let Ok((p, _)) = opened {
            crash(p);
        }
        d.cut_now();
        let p = reopen(d.image()).unwrap_or_else(|e| panic!("cut at request {k}: {e}"));
        verify(&p, "a", &a).unwrap_or_else(|e| panic!("cut at request {k}: {e}"));
        verify(&p, "b", &b).unwrap_or_else(|e| panic!("cut at request {k}: {e}"));
        crash(p);
        if done {
            break;
        }
        k += 1;
    }
    assert!(k > 3, "the replay made only {k} requests");
}

/// A pool of format version 1 (made before the log) opens, serves allocating writes
/// by writing map pages, survives a crash, and stays version 1.
#[test]
fn a_version_1_pool_opens_and_serves() {
    let (dev, p) = setup(Some(0), false, 200);
    assert_eq!(p.geo.log_pages, 0);
    let a = fill(&p, "a", 200, 1, 8);
    dev.cut_now();
    let image = dev.image();
    crash(p);
    let sb = &image[..2 * PAGE];
    let (slot, _) = format::pick(sb, None, 0).unwrap().unwrap();
    assert_eq!(
        u32::from_le_bytes(sb[slot * PAGE + 64..][..4].try_into().unwrap()),
        format::VERSION_NO_LOG
    );
    let p = reopen(image).unwrap();
    assert_eq!(p.geo.log_pages, 0);
    verify(&p, "a", &a).unwrap();
    let b = fill(&p, "b", 200, 1, 9);
    verify(&p, "b", &b).unwrap();
}
