//! `--verify`: every block written carries its LBA, a generation and a checksum, and
//! every block read is checked against them.
//!
//! Block layout (little-endian), repeated for each logical block of an I/O:
//!
//! ```text
//! 0..8    magic "LPPERF01"
//! 8..16   LBA of this block
//! 16..20  generation: which write of this run put it there (per queue, from 1)
//! 20..24  run tag (from the seed), folded into the payload
//! 24..28  CRC32C of bytes 0..24 and 28..block_size
//! 28..32  zero
//! 32..    payload derived from (LBA, generation, tag)
//! ```
//!
//! Each queue owns a disjoint region (the engine splits the range when verifying)
//! and never has two I/Os on the same blocks in flight, so the generation a block
//! must hold is known: the last one written to it by this run. Blocks the run has
//! not written yet must still carry a valid stamp of their own LBA (any
//! generation, e.g. from an earlier write pass) or be all zeroes (never written).

use lightpool_spec::tcp::{crc32c, crc32c_append};

const MAGIC: [u8; 8] = *b"LPPERF01";
/// Bytes of stamp at the start of each block.
pub const STAMP_LEN: usize = 32;
/// Largest region (in blocks) one queue may verify: the expected-generation table
/// costs 4 bytes per block.
pub const MAX_VERIFY_BLOCKS: u64 = 1 << 28;

/// Why a block failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchKind {
    /// No stamp (and not all zeroes) where the run expected data.
    NoStamp,
    /// Stamp present but the checksum does not match the contents.
    Checksum { stored: u32, computed: u32 },
    /// A valid block of another LBA.
    WrongLba { found: u64 },
    /// A valid block of this LBA, but not the last generation written.
    StaleGeneration { found: u32, expected: u32 },
    /// Never-written (zero) data where this run wrote.
    Zeroed { expected: u32 },
    /// A block this run has not written holds no stamp of its own LBA: its last write
    /// was not a verifying run's (`found`: the LBA whose stamp it carries, if any).
    NotVerifyWritten { found: Option<u64> },
}

/// One block that failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    pub kind: MismatchKind,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LBA {}: ", self.lba)?;
        match self.kind {
            MismatchKind::NoStamp => f.write_str("the block carries no verify stamp"),
            MismatchKind::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, contents give {computed:#010x})"
            ),
            MismatchKind::WrongLba { found } => {
                write!(f, "the block holds the data of LBA {found}")
            }
            MismatchKind::StaleGeneration { found, expected } => write!(
                f,
                "stale data: generation {found}, the last write was generation {expected}"
            ),
            MismatchKind::Zeroed { expected } => {
                write!(f, "zeroes where generation {expected} was written")
            }
            MismatchKind::NotVerifyWritten { found: Some(found) } => write!(
                f,
                "not written by a verifying run: this run has not written it, and it holds a \
                 copy of LBA {found}'s block (a write without --verify sends whatever its \
                 buffer last read; a target that misplaced data would look the same): write \
                 the range with --verify before reading it with --verify"
            ),
            MismatchKind::NotVerifyWritten { found: None } => write!(
                f,
                "not written by a verifying run: this run has not written it, and it holds \
                 data without a verify stamp: write the range with --verify before reading it \
                 with --verify"
            ),
        }
    }
}

/// What checking one read found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckCounts {
    pub good: u64,
    /// All-zero blocks the run had not written: never written at all.
    pub unwritten: u64,
    pub bad: u64,
}

/// The verify state of one queue: its region and the generation each block holds.
pub struct VerifyState {
    start_lba: u64,
    block_size: usize,
    tag: u32,
    next_gen: u32,
    /// Expected generation per block of the region; 0 = not written by this run.
    expected: Vec<u32>,
}

impl VerifyState {
    pub fn new(
        start_lba: u64,
        blocks: u64,
        block_size: u32,
        seed: u64,
    ) -> Result<VerifyState, String> {
        if blocks > MAX_VERIFY_BLOCKS {
            return Err(format!(
                "--verify keeps 4 bytes per block: {blocks} blocks per queue is too many; narrow --range"
            ));
        }
        if (block_size as usize) < 512 {
            return Err(format!(
                "--verify needs blocks of at least 512 bytes, not {block_size}"
            ));
        }
        Ok(VerifyState {
            start_lba,
            block_size: block_size as usize,
            tag: (seed ^ (seed >> 32)) as u32,
            next_gen: 1,
            expected: vec![0; blocks as usize],
        })
    }

    fn index(&self, lba: u64) -> usize {
        (lba - self.start_lba) as usize
    }

    /// Stamps the blocks of a write of `buf` at `lba`; returns its generation.
    pub fn stamp(&mut self, buf: &mut [u8], lba: u64) -> u32 {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        for (i, b) in buf.chunks_exact_mut(self.block_size).enumerate() {
            fill_block(b, lba + i as u64, gen, self.tag);
        }
        gen
    }

    /// A write finished: on success its blocks now hold `gen`; on failure their
    /// contents are unknown.
    pub fn write_done(&mut self, lba: u64, nblocks: u32, gen: u32, ok: bool) {
        let i = self.index(lba);
        for e in &mut self.expected[i..i + nblocks as usize] {
            *e = if ok { gen } else { 0 };
        }
    }

    /// Checks the blocks of a read of `buf` at `lba`; each failure goes to `bad`.
    pub fn check(&self, buf: &[u8], lba: u64, bad: &mut impl FnMut(Mismatch)) -> CheckCounts {
        let mut counts = CheckCounts::default();
        for (i, b) in buf.chunks_exact(self.block_size).enumerate() {
            let at = lba + i as u64;
            let expected = self.expected[self.index(at)];
            match check_block(b, at, expected) {
                Ok(true) => counts.good += 1,
                Ok(false) => counts.unwritten += 1,
                Err(kind) => {
                    counts.bad += 1;
                    bad(Mismatch { lba: at, kind });
                }
            }
        }
        counts
    }
}

fn block_crc(b: &[u8]) -> u32 {
    crc32c_append(crc32c(&b[..24]), &b[28..])
}

/// Writes the stamp and payload of one block.
pub fn fill_block(b: &mut [u8], lba: u64, gen: u32, tag: u32) {
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..20].copy_from_slice(&gen.to_le_bytes());
    b[20..24].copy_from_slice(&tag.to_le_bytes());
    b[24..32].fill(0);
    let mut x = lba ^ (u64::from(gen) << 32) ^ u64::from(tag) ^ 0x9E37_79B9_7F4A_7C15;
    for w in b[STAMP_LEN..].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    let crc = block_crc(b);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// `Ok(true)`: valid; `Ok(false)`: all zeroes and not written by this run.
fn check_block(b: &[u8], lba: u64, expected: u32) -> Result<bool, MismatchKind> {
    if b[0..8] != MAGIC {
        if b.iter().all(|&x| x == 0) {
            return if expected == 0 {
                Ok(false)
            } else {
                Err(MismatchKind::Zeroed { expected })
            };
        }
        return Err(if expected == 0 {
            MismatchKind::NotVerifyWritten { found: None }
        } else {
            MismatchKind::NoStamp
        });
    }
    let stored = u32::from_le_bytes(b[24..28].try_into().expect("4 bytes"));
    let computed = block_crc(b);
    if stored != computed {
        return Err(MismatchKind::Checksum { stored, computed });
    }
    let found = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    if found != lba {
        // A verifying write always stamps the LBA it writes; where this run has not
        // written, the block's last write was someone else's.
        return Err(if expected == 0 {
            MismatchKind::NotVerifyWritten { found: Some(found) }
        } else {
            MismatchKind::WrongLba { found }
        });
    }
    let gen = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
    if expected != 0 && gen != expected {
        return Err(MismatchKind::StaleGeneration {
            found: gen,
            expected,
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_blocks_verify_and_damage_is_named() {
        let mut v = VerifyState::new(1000, 64, 512, 7).expect("small region");
        let mut buf = vec![0u8; 4096];
        let gen = v.stamp(&mut buf, 1008);
        v.write_done(1008, 8, gen, true);
        let mut bad = Vec::new();
        let c = v.check(&buf, 1008, &mut |m| bad.push(m));
        assert_eq!(
            c,
            CheckCounts {
                good: 8,
                unwritten: 0,
                bad: 0
            }
        );

        // One flipped payload byte in the fourth block.
        buf[3 * 512 + 100] ^= 1;
        let c = v.check(&buf, 1008, &mut |m| bad.push(m));
        assert_eq!(c.bad, 1);
        assert_eq!(bad[0].lba, 1011);
        assert!(matches!(bad[0].kind, MismatchKind::Checksum { .. }));
        buf[3 * 512 + 100] ^= 1;

        // Read back at another LBA this run wrote: every block names the one it holds.
        let mut other = vec![0u8; 4096];
        let g = v.stamp(&mut other, 1016);
        v.write_done(1016, 8, g, true);
        bad.clear();
        let c = v.check(&buf, 1016, &mut |m| bad.push(m));
        assert_eq!(c.bad, 8);
        assert_eq!(bad[0].kind, MismatchKind::WrongLba { found: 1008 });
        assert!(bad[0].to_string().contains("holds the data of LBA 1008"));

        // At an LBA this run has not written, the same copy is a block its last writer
        // did not stamp (a run without --verify writes what its buffer last read).
        bad.clear();
        let c = v.check(&buf, 1024, &mut |m| bad.push(m));
        assert_eq!(c.bad, 8);
        assert_eq!(
            bad[0].kind,
            MismatchKind::NotVerifyWritten { found: Some(1008) }
        );
        let msg = bad[0].to_string();
        assert!(
            msg.starts_with("LBA 1024: not written by a verifying run")
                && msg.contains("copy of LBA 1008's block")
                && msg.contains("--verify before reading"),
            "{msg}"
        );

        // A newer write makes the old contents stale.
        let old = buf.clone();
        let gen2 = v.stamp(&mut buf, 1008);
        v.write_done(1008, 8, gen2, true);
        bad.clear();
        v.check(&old, 1008, &mut |m| bad.push(m));
        assert_eq!(
            bad[0].kind,
            MismatchKind::StaleGeneration {
                found: gen,
                expected: gen2
            }
        );
        assert!(bad[0].to_string().starts_with("LBA 1008: stale data"));
    }

    #[test]
    fn zeroes_are_unwritten_unless_this_run_wrote_there() {
        let mut v = VerifyState::new(0, 16, 4096, 1).expect("region");
        let zero = vec![0u8; 8192];
        let mut bad = Vec::new();
        assert_eq!(v.check(&zero, 0, &mut |m| bad.push(m)).unwritten, 2);
        v.write_done(0, 1, 5, true);
        let c = v.check(&zero, 0, &mut |m| bad.push(m));
        assert_eq!((c.bad, c.unwritten), (1, 1));
        assert_eq!(bad[0].kind, MismatchKind::Zeroed { expected: 5 });
        // Garbage is never "unwritten": where this run wrote, the stamp is gone; where it
        // did not, the block was written by something else.
        let junk = vec![0xFFu8; 4096];
        bad.clear();
        v.check(&junk, 0, &mut |m| bad.push(m));
        assert_eq!(bad[0].kind, MismatchKind::NoStamp);
        bad.clear();
        v.check(&junk, 3, &mut |m| bad.push(m));
        assert_eq!(bad[0].kind, MismatchKind::NotVerifyWritten { found: None });
    }

    #[test]
    fn earlier_passes_verify_without_generation() {
        // A later run (new state, same blocks) accepts any generation of the right LBA.
        let mut w = VerifyState::new(0, 8, 512, 1).expect("region");
        let mut buf = vec![0u8; 512];
        w.stamp(&mut buf, 5);
        w.stamp(&mut buf, 5);
        let r = VerifyState::new(0, 8, 512, 99).expect("region");
        let c = r.check(&buf, 5, &mut |_| panic!("valid"));
        assert_eq!(c.good, 1);
    }
}
