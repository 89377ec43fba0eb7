use std::sync::atomic::Ordering;

use lightpool_bdev::testing::AlignedBuf;
use lightpool_bdev::{Bdev, IoOp, IoRequest, IoStatus};

use super::*;
use crate::format::PAGE;
use crate::meta::page_offset;
use crate::PoolError;

/// The whole device, as bytes.
fn image(d: &Arc<dyn Bdev>) -> Vec<u8> {
    let bytes = d.info().num_blocks * u64::from(d.info().block_size);
    let mut ch = d.open_channel().unwrap();
    let buf = AlignedBuf::new(bytes as usize);
    let n = (bytes / u64::from(d.info().block_size)) as u32;
    let st = run1(
        ch.as_mut(),
        IoRequest::rw(IoOp::Read, 0, n, buf.ptr(), buf.len(), 1),
    );
    assert_eq!(st, IoStatus::Success);
    buf.as_slice().to_vec()
}

/// Overwrites bytes at `off` (block-aligned).
fn poke(d: &Arc<dyn Bdev>, off: u64, bytes: &[u8]) {
    let bs = d.info().block_size;
    let mut ch = d.open_channel().unwrap();
    assert_eq!(
        write(ch.as_mut(), bs, off / u64::from(bs), bytes),
        IoStatus::Success
    );
}

/// A pool with one thin volume that has data, closed; its device, and the metadata
/// page of the volume's first map page.
fn closed_pool() -> (Arc<dyn Bdev>, u32) {
    let dev = MallocBdev::new("ram-x", 32 * MIB, 512).unwrap();
    let (p, _) = Pool::open(dev.clone(), "p", &opts(64 << 10, 100), true).unwrap();
    let v = vol(&p, "v", 4 * MIB, true);
    let mut ch = v.open_channel().unwrap();
    assert_eq!(put(ch.as_mut(), 512, 0, 8, 1), IoStatus::Success);
    let slot = *p.ctl.lock().unwrap().by_name.get("v").unwrap();
    let page = p.map_page_nums(slot)[0].load(Ordering::Relaxed);
    drop(ch);
    drop(v);
    drop(p);
    (dev, page)
}

#[test]
fn a_blank_device_is_a_pool_only_when_asked() {
    let dev: Arc<dyn Bdev> = MallocBdev::new("blank", 8 * MIB, 512).unwrap();
    let e = Pool::open(dev.clone(), "p", &PoolOptions::default(), false).unwrap_err();
    assert!(matches!(e, PoolError::NotAPool { .. }), "{e}");
    assert!(e.to_string().contains("blank"), "{e}");
    assert!(image(&dev).iter().all(|&b| b == 0), "nothing written");
}

#[test]
fn data_that_is_not_a_pool_is_never_formatted_over() {
    let dev: Arc<dyn Bdev> = MallocBdev::new("used-disk", 8 * MIB, 512).unwrap();
    poke(&dev, 0, &[0xEE; 4096]);
    let before = image(&dev);
    let e = Pool::open(dev.clone(), "p", &PoolOptions::default(), true).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PoolError::NotAPool { .. }), "{msg}");
    assert!(
        msg.contains("used-disk") && msg.contains("refusing to format"),
        "{msg}"
    );
    assert!(image(&dev) == before, "the device was written");
}

#[test]
fn the_wrong_pool_a_smaller_device_and_another_block_size_are_refused() {
    let (dev, _) = closed_pool();
    let e = Pool::open(dev.clone(), "q", &PoolOptions::default(), false).unwrap_err();
    assert!(matches!(e, PoolError::WrongPool { .. }), "{e}");
    // The same bytes on a smaller device: a truncated or wrong one.
    let img = image(&dev);
    let small: Arc<dyn Bdev> = MallocBdev::new("small", 16 * MIB, 512).unwrap();
    poke(&small, 0, &img[..16 << 20]);
    let e = Pool::open(small, "p", &PoolOptions::default(), false).unwrap_err();
    assert!(matches!(e, PoolError::DeviceSize { .. }), "{e}");
    assert!(e.to_string().contains("missing, truncated"), "{e}");
    let big: Arc<dyn Bdev> = MallocBdev::new("four-k", 32 * MIB, 4096).unwrap();
    poke(&big, 0, &img);
    let e = Pool::open(big, "p", &PoolOptions::default(), false).unwrap_err();
    assert!(matches!(e, PoolError::BlockSize { .. }), "{e}");
}

/// A map page whose two copies are both bad: the pool refuses to open, names the
/// device, the volume and the page, and writes nothing.
#[test]
fn corrupt_metadata_is_named_and_nothing_is_written() {
    let (dev, page) = closed_pool();
    let off = page_offset(page);
    let mut garbage = vec![0x5Au8; 2 * PAGE];
    garbage[0] = b'L';
    poke(&dev, off, &garbage);
    let before = image(&dev);
    let e = Pool::open(dev.clone(), "p", &PoolOptions::default(), false).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PoolError::Corrupt { .. }), "{msg}");
    assert!(
        msg.contains("ram-x") && msg.contains("map page 0 of volume \"v\""),
        "{msg}"
    );
    assert!(msg.contains("nothing was written"), "{msg}");
    assert!(image(&dev) == before, "the device was written");
}

/// One torn copy of a page: the other copy is taken (the write that tore was never
/// acknowledged).
#[test]
fn a_torn_copy_falls_back_to_the_other() {
    let (dev, page) = closed_pool();
    let img = image(&dev);
    let off = page_offset(page) as usize;
    // Which slot is newer: tear that one.
    let (slot, _) = crate::format::pick(&img[off..off + 2 * PAGE], None, page)
        .unwrap()
        .unwrap();
    let at = off + slot * PAGE + 1000;
    poke(&dev, (at / 512 * 512) as u64, &[0xAB; 512]);
    let (p, _) = Pool::open(dev, "p", &PoolOptions::default(), false).unwrap();
    let v = p.open_volume("v").unwrap();
    let mut ch = v.open_channel().unwrap();
    // The older copy of the map page was written before the data: it may or may not
    // name the cluster, but the pool opens and is consistent.
    let _ = holds(ch.as_mut(), 512, 0, 8, Some(1));
    p.check().unwrap();
}

/// Two volumes whose maps name the same cluster: refused, naming both.
#[test]
fn a_cluster_owned_twice_is_refused() {
    let dev = MallocBdev::new("ram-y", 32 * MIB, 512).unwrap();
    let (p, _) = Pool::open(dev.clone(), "p", &opts(64 << 10, 100), true).unwrap();
    let a = vol(&p, "a", MIB, true);
    let b = vol(&p, "b", MIB, true);
    for v in [&a, &b] {
        let mut ch = v.open_channel().unwrap();
        assert_eq!(put(ch.as_mut(), 512, 0, 1, 1), IoStatus::Success);
    }
    let (sa, sb) = {
        let c = p.ctl.lock().unwrap();
        (c.by_name["a"], c.by_name["b"])
    };
    // Make b's map name a's cluster, and write b's map page from that.
    let ca = p.entries(sa)[0].load(Ordering::Relaxed);
    p.entries(sb)[0].store(ca, Ordering::Relaxed);
    let mut io = crate::ctlio::CtlIo::open(&p.dev).unwrap();
    p.commit_maps(&mut io, sb, &[0]).unwrap();
    drop(io);
    drop((a, b));
    crash(p);
    let e = Pool::open(dev, "p", &PoolOptions::default(), false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cluster {ca} is mapped by both")),
        "{msg}"
    );
    assert!(msg.contains("\"a\"") && msg.contains("\"b\""), "{msg}");
}

/// Found by fuzzing (fuzz target pool_meta, input in tests/data/dangling-parent.fuzz): a
/// pool not closed cleanly whose snapshot was marked being deleted while it still had
/// clones other than the one it hands its clusters to. The replay finished the deletion
/// and left a clone naming a parent that was gone (the pool opened, then failed its own
/// check). It must be refused as corrupt, and nothing written.
#[test]
fn a_deletion_that_would_orphan_a_clone_is_refused() {
    let input = include_bytes!("data/dangling-parent.fuzz");
    assert_eq!(input[0] & 1, 1, "the input re-seals its pages");
    let img = fuzz_image(input);
    let dev = MallocBdev::new("ram-fuzz", 4 * MIB, 4096).unwrap();
    let d: Arc<dyn Bdev> = dev.clone();
    poke(&d, 0, &img);
    let before = image(&d);
    let e = Pool::open(d.clone(), "fuzz", &PoolOptions::default(), false).unwrap_err();
    assert!(
        matches!(&e, PoolError::Corrupt { what, .. } if what.contains("unfinished operation")),
        "{e}"
    );
    assert!(image(&d) == before, "a refused pool was written to");
}

/// The metadata area a `pool_meta` fuzz input describes: a flags byte (1: re-seal
/// pages), then records of a 4 KiB slot number, a length and that many bytes; pages
/// with the magic get their right CRC when the flag asks (as the fuzz target does).
fn fuzz_image(input: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 256 * PAGE];
    let mut rest = &input[1..];
    while rest.len() >= 3 {
        let slot = usize::from(rest[0]);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(PAGE);
        rest = &rest[3..];
        let n = len.min(rest.len());
        img[slot * PAGE..slot * PAGE + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    if input[0] & 1 == 1 {
        for p in img.chunks_mut(PAGE) {
            if &p[..8] == b"LPPOOLMD" {
                let c = crc32c::crc32c(&p[..60]);
                let c = crc32c::crc32c_append(c, &[0; 4]);
                let c = crc32c::crc32c_append(c, &p[64..]);
                p[60..64].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    img
}

/// Found by fuzzing (fuzz target pool_meta, input in tests/data/seq-at-max.fuzz): a
/// metadata page whose copy carries the sequence number `u64::MAX` (its checksum
/// right). The open took it as the newest copy, and the first write of that page
/// added one to it: an overflow (a panic with overflow checks; without them the
/// sequence wraps to 0 and the next open would take the older copy for the newer).
/// A copy above `MAX_SEQ` is corrupt now: the open uses the page's other copy or
/// refuses the pool, and never panics.
#[test]
fn a_page_copy_with_an_impossible_sequence_number_is_not_taken() {
    let input = include_bytes!("data/seq-at-max.fuzz");
    let img = fuzz_image(input);
    let seqs: Vec<u64> = img
        .chunks(PAGE)
        .filter(|p| &p[..8] == b"LPPOOLMD")
        .map(|p| u64::from_le_bytes(p[32..40].try_into().unwrap()))
        .collect();
    assert!(
        seqs.iter().any(|&s| s > crate::format::MAX_SEQ),
        "the input has no such copy: {seqs:?}"
    );
    let dev = MallocBdev::new("ram-fuzz-seq", 4 * MIB, 4096).unwrap();
    let d: Arc<dyn Bdev> = dev.clone();
    poke(&d, 0, &img);
    let before = image(&d);
    match Pool::open(d.clone(), "fuzz", &PoolOptions::default(), false) {
        Ok((pool, _)) => {
            pool.check()
                .expect("a pool that opened passes its own check");
        }
        // Here the copy is the superblock's only one: no pool (and nothing written).
        Err(e) => {
            assert!(e.to_string().contains("superblock"), "{e}");
            assert!(image(&d) == before, "a refused pool was written to");
        }
    }
}

/// Found by fuzzing (fuzz target pool_meta, input in
/// tests/data/deleting-and-uncommitted.fuzz): a pool not closed cleanly with a volume
/// marked being deleted that is also the new volume of a snapshot never committed (its
/// parent not a snapshot). The open counted it in both, and the replay's report
/// subtracted it twice from the volumes (an overflow). No operation leaves that (they
/// hold the operation lock): it is refused as corrupt, and nothing written.
#[test]
fn a_volume_both_deleted_and_uncommitted_is_refused() {
    let input = include_bytes!("data/deleting-and-uncommitted.fuzz");
    let img = fuzz_image(input);
    let dev = MallocBdev::new("ram-fuzz-du", 4 * MIB, 4096).unwrap();
    let d: Arc<dyn Bdev> = dev.clone();
    poke(&d, 0, &img);
    let before = image(&d);
    let e = Pool::open(d.clone(), "fuzz", &PoolOptions::default(), false).unwrap_err();
    assert!(
        matches!(&e, PoolError::Corrupt { what, .. } if what.contains("both being deleted")),
        "{e}"
    );
    assert!(image(&d) == before, "a refused pool was written to");
}
