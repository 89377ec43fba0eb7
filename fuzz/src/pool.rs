//! Pool metadata images: the input format of the `pool_meta` target, and the RAM
//! device it is laid on.

use std::collections::BTreeMap;
use std::sync::Arc;

use lightpool_bdev::Bdev;
use lightpool_bdev_ram::MallocBdev;
use lightpool_pool::PoolOptions;

/// The name of the pools in the seeds (an open asks for the pool by name).
pub const POOL_NAME: &str = "fuzz";
/// The device: 4 MiB of 4 KiB blocks.
pub const DEVICE_BYTES: u64 = 4 << 20;
pub const BLOCK: u32 = 4096;
/// Metadata pages are 4 KiB, each kept in two slots; the records address slots.
pub const SLOT: usize = 4096;
const MAGIC: &[u8; 8] = b"LPPOOLMD";
const H_CRC: usize = 60;

/// The geometry of the seed pools: small, so that an image is a few pages.
pub fn options() -> PoolOptions {
    PoolOptions {
        cluster_size: 64 << 10,
        overcommit: 100,
        max_volumes: 16,
        md_pages: Some(24),
    }
}

/// CRC32C of a metadata page with its CRC field as zero (docs/pool-format.md).
fn page_crc(p: &[u8]) -> u32 {
    let c = crc32c::crc32c(&p[..H_CRC]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &p[H_CRC + 4..SLOT])
}

/// Input: a flags byte (bit 0: re-seal the pages), then records of a slot number (u8),
/// a length (u16, little-endian, at most 4096) and that many bytes (the rest of the
/// slot zero). The device, with the image written, or `None` for input too short.
pub fn image_device(data: &[u8]) -> Option<Arc<dyn Bdev>> {
    let (&flags, mut rest) = data.split_first()?;
    // Only the slots the records name are kept and written: the device's other pages
    // stay holes, so an input costs a few page faults, not the whole 1 MiB image's
    // (the target ran at under 1,000 inputs a second when it wrote every slot).
    let mut slots: BTreeMap<usize, Box<[u8; SLOT]>> = BTreeMap::new();
    while rest.len() >= 3 {
        let slot = usize::from(rest[0]);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(SLOT);
        rest = &rest[3..];
        let n = len.min(rest.len());
        let page = slots.entry(slot).or_insert_with(|| Box::new([0; SLOT]));
        page[..n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    let dev = MallocBdev::new("fuzz-pool", DEVICE_BYTES, BLOCK).expect("RAM device");
    for (slot, page) in &mut slots {
        if flags & 1 != 0 && &page[..8] == MAGIC {
            let crc = page_crc(&page[..]);
            page[H_CRC..H_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        }
        dev.write_at((*slot * SLOT) as u64, &page[..])
            .expect("image written");
    }
    Some(dev)
}

/// Records of every non-blank slot of `image` (trailing zeroes cut), after `flags`.
pub fn records(image: &[u8], flags: u8) -> Vec<u8> {
    let mut v = vec![flags];
    for (i, p) in image.chunks(SLOT).enumerate().take(256) {
        let Some(end) = p.iter().rposition(|&b| b != 0) else {
            continue;
        };
        v.push(i as u8);
        v.extend_from_slice(&((end + 1) as u16).to_le_bytes());
        v.extend_from_slice(&p[..=end]);
    }
    v
}
