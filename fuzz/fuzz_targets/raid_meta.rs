//! The RAID on-disk format readers of `lightpool_raid::format`: a superblock slot and
//! a write-intent bitmap block, fed arbitrary bytes (checksums made right first when
//! the input asks, so the checks past them are reached).
//!
//! Invariants beyond "no panic":
//! - a superblock that decodes encodes back to a slot that decodes to the same
//!   superblock (nothing the reader accepts is lost or changed by the writer), and its
//!   member table, role and geometry are within the format's bounds;
//! - a bitmap block decodes to its words when its checksum holds, to all bits set (the
//!   safe reading) when not, and a decoded block encodes back to the same bytes;
//! - no allocation beyond 64 KiB per input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::{bounded_allocator, crc32c, Armed, Choices};
use lightpool_raid::format::{
    decode_bitmap_block, encode_bitmap_block, Superblock, BITMAP_BLOCK, MAX_MEMBERS, SB_BYTES,
    WORDS_PER_BLOCK,
};

bounded_allocator!();

fuzz_target!(|data: &[u8]| {
    let _armed = Armed::new(64 << 10, 1 << 20);
    let mut c = Choices::new(data);
    let k = c.byte();
    let mut slot = [0u8; SB_BYTES];
    let b = c.bytes(SB_BYTES);
    slot[..b.len()].copy_from_slice(b);
    if k & 1 != 0 {
        let crc = crc32c(&slot[..SB_BYTES - 4]);
        slot[SB_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(Some(sb)) = Superblock::decode(&slot) {
        assert!(sb.table.len() <= MAX_MEMBERS && !sb.table.is_empty());
        assert!((sb.role as usize) < sb.table.len());
        let mut out = [0u8; SB_BYTES];
        sb.encode(&mut out);
        let back = Superblock::decode(&out)
            .expect("what the writer wrote decodes")
            .expect("not blank");
        assert_eq!(back, sb, "the superblock changed through encode");
        let _ = sb.regions();
    }
    let mut block = [0u8; BITMAP_BLOCK];
    let b = c.rest();
    let n = b.len().min(BITMAP_BLOCK);
    block[..n].copy_from_slice(&b[..n]);
    if k & 2 != 0 {
        let crc = crc32c(&block[..BITMAP_BLOCK - 4]);
        block[BITMAP_BLOCK - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    let which = usize::from(k >> 4);
    let mut words = vec![0u64; WORDS_PER_BLOCK * (which + 1)];
    let ok = decode_bitmap_block(&block, which, &mut words);
    let mine = &words[which * WORDS_PER_BLOCK..];
    if ok {
        let mut out = [0u8; BITMAP_BLOCK];
        encode_bitmap_block(&words, which, &mut out);
        assert!(
            out[..BITMAP_BLOCK - 8] == block[..BITMAP_BLOCK - 8],
            "bits changed through encode"
        );
        if block[BITMAP_BLOCK - 8..BITMAP_BLOCK - 4] == [0; 4] {
            // Reserved bytes as the writer leaves them: the very same block.
            assert_eq!(out[BITMAP_BLOCK - 4..], block[BITMAP_BLOCK - 4..]);
        }
    } else {
        assert!(
            mine.iter().all(|&w| w == u64::MAX),
            "a bad block must read as all dirty"
        );
    }
});
