//! The on-disk format (described in full in docs/raid-format.md): a superblock per
//! member, kept in two slots written alternately, and for RAID1 a write-intent bitmap
//! in checksummed 4 KiB blocks. Encoding and decoding only; no I/O.
//!
//! ```text
//! member byte 0      superblock slot 0 (4 KiB)   written when events is even
//!             4096   superblock slot 1 (4 KiB)   written when events is odd
//!             8192   bitmap (RAID1): bitmap_bytes, 4 KiB blocks of 4088 bytes of bits,
//!                    4 reserved bytes and a CRC32C
//!             data_offset (a multiple of 1 MiB)  the array's data
//! ```

/// "LPRAID" and the format version in the magic's last bytes.
pub const MAGIC: [u8; 8] = *b"LPRAID\x00\x01";
pub const VERSION: u32 = 1;
/// Bytes of one superblock slot.
pub const SB_BYTES: usize = 4096;
/// Where the bitmap starts on each member.
pub const BITMAP_OFFSET: u64 = 2 * SB_BYTES as u64;
/// Bytes of one bitmap block: bits, then their CRC32C.
pub const BITMAP_BLOCK: usize = 4096;
/// 64-bit words of bits one bitmap block holds (4088 bytes; 4 reserved bytes and the
/// CRC32C follow).
pub const WORDS_PER_BLOCK: usize = (BITMAP_BLOCK - 8) / 8;
/// Bits (regions) one bitmap block covers.
pub const BITS_PER_BLOCK: u64 = WORDS_PER_BLOCK as u64 * 64;
/// Members an array may have.
pub const MAX_MEMBERS: usize = 32;
/// The data area starts at a multiple of this.
pub const DATA_ALIGN: u64 = 1 << 20;
/// Longest array name.
pub const MAX_NAME: usize = 32;

const TABLE_OFFSET: usize = 256;
const ENTRY_BYTES: usize = 40;
const CRC_OFFSET: usize = SB_BYTES - 4;
const FLAG_CLEAN: u32 = 1;

/// Errors decoding what a member holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("holds data that is not a LightPool RAID superblock")]
    Foreign,
    #[error("its superblocks fail their checksum (both copies)")]
    Checksum,
    #[error("its superblock has format version {0}, this binary reads version {VERSION}")]
    Version(u32),
    #[error("its superblock is inconsistent: {0}")]
    Invalid(String),
}

/// How an array lays data over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Members one after the other.
    Concat,
    /// Striped: strip `i` on member `i % n`.
    Raid0,
    /// Mirrored: every member holds all the data.
    Raid1,
}

impl Level {
    fn code(self) -> u32 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Concat => 0xff,
        }
    }

    fn from_code(c: u32) -> Option<Level> {
        match c {
            0 => Some(Level::Raid0),
            1 => Some(Level::Raid1),
            0xff => Some(Level::Concat),
            _ => None,
        }
    }

    /// The name configurations and listings use ("concat", "raid0", "raid1"), which is
    /// also the block device's kind.
    pub fn name(self) -> &'static str {
        match self {
            Level::Concat => "concat",
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "concat" | "linear" => Some(Level::Concat),
            "raid0" | "0" | "stripe" => Some(Level::Raid0),
            "raid1" | "1" | "mirror" => Some(Level::Raid1),
            _ => None,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the array records about one member slot (role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SlotState {
    /// No device holds this role.
    Empty,
    /// In sync.
    Active,
    /// Failed: gets no I/O, never a source; may come back (resync) or be removed.
    Faulty,
    /// Being brought in sync: regions below `recovery_offset` are copied (for a
    /// rebuild), the rest follow the bitmap or a full copy.
    Recovering,
}

impl SlotState {
    fn code(self) -> u32 {
        match self {
            SlotState::Empty => 0,
            SlotState::Active => 1,
            SlotState::Faulty => 2,
            SlotState::Recovering => 3,
        }
    }

    fn from_code(c: u32) -> Option<SlotState> {
        Some(match c {
            0 => SlotState::Empty,
            1 => SlotState::Active,
            2 => SlotState::Faulty,
            3 => SlotState::Recovering,
            _ => return None,
        })
    }
}

/// One entry of the slot table every member carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotEntry {
    /// The member that holds this role (zero when empty).
    pub member_uuid: [u8; 16],
    pub state: SlotState,
    /// A recovering member: regions from here on are copied in full (a rebuild);
    /// `u64::MAX` when only the bitmap's regions are (a returning member).
    pub full_from: u64,
    /// Bytes of data this member holds for the array (concat members differ).
    pub data_bytes: u64,
}

impl SlotEntry {
    pub fn empty() -> SlotEntry {
        SlotEntry {
            member_uuid: [0; 16],
            state: SlotState::Empty,
            full_from: u64::MAX,
            data_bytes: 0,
        }
    }
}

/// One member's superblock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Superblock {
    pub array_uuid: [u8; 16],
    pub name: String,
    pub level: Level,
    /// This member.
    pub member_uuid: [u8; 16],
    /// This member's slot in `table`.
    pub role: u32,
    /// The array's logical block size (every member's).
    pub block_size: u32,
    /// Incremented on every superblock write; the freshest member has the highest.
    pub events: u64,
    /// Written at an orderly stop: every write reached every in-sync member.
    pub clean: bool,
    /// RAID0: bytes per strip.
    pub strip_bytes: u64,
    /// Where the array's data starts on every member.
    pub data_offset: u64,
    /// The array's size.
    pub array_bytes: u64,
    /// RAID1: bytes one bitmap bit covers (0 without a bitmap).
    pub region_bytes: u64,
    /// RAID1: bytes of the bitmap area (whole 4 KiB blocks; 0 without a bitmap).
    pub bitmap_bytes: u64,
    /// The events count when bits were last cleared with every slot in sync: a member
    /// that returns with fewer events may have missed writes whose bits are gone.
    pub events_cleared: u64,
    /// Seconds since the epoch when the array was created.
    pub created: u64,
    pub table: Vec<SlotEntry>,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Superblock {
    /// Which of the two slots this superblock goes to.
    pub fn slot_offset(&self) -> u64 {
        (self.events % 2) * SB_BYTES as u64
    }

    /// The 4 KiB image of this superblock.
    pub fn encode(&self, out: &mut [u8]) {
        assert!(out.len() >= SB_BYTES, "a superblock is 4 KiB");
        assert!(self.table.len() <= MAX_MEMBERS, "checked at creation");
        let b = &mut out[..SB_BYTES];
        b.fill(0);
        b[0..8].copy_from_slice(&MAGIC);
        put32(b, 8, VERSION);
        put32(b, 12, SB_BYTES as u32);
        b[16..32].copy_from_slice(&self.array_uuid);
        b[32..48].copy_from_slice(&self.member_uuid);
        put32(b, 48, self.level.code());
        put32(b, 52, self.role);
        put32(b, 56, self.table.len() as u32);
        put32(b, 60, self.block_size);
        put64(b, 64, self.events);
        put32(b, 72, if self.clean { FLAG_CLEAN } else { 0 });
        put64(b, 80, self.strip_bytes);
        put64(b, 88, self.data_offset);
        put64(b, 96, self.array_bytes);
        put64(b, 104, self.region_bytes);
        put64(b, 112, BITMAP_OFFSET);
        put64(b, 120, self.bitmap_bytes);
        put64(b, 128, self.events_cleared);
        put64(b, 136, self.created);
        let name = self.name.as_bytes();
        let n = name.len().min(MAX_NAME);
        b[144..144 + n].copy_from_slice(&name[..n]);
        for (i, e) in self.table.iter().enumerate() {
            let at = TABLE_OFFSET + i * ENTRY_BYTES;
            b[at..at + 16].copy_from_slice(&e.member_uuid);
            put32(b, at + 16, e.state.code());
            put64(b, at + 24, e.full_from);
            put64(b, at + 32, e.data_bytes);
        }
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        put32(b, CRC_OFFSET, crc);
    }

    /// Decodes one 4 KiB slot: `Ok(None)` when it is all zeroes (never written).
    pub fn decode(b: &[u8]) -> Result<Option<Superblock>, FormatError> {
        let b = &b[..SB_BYTES];
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[0..6] != MAGIC[0..6] {
            return Err(FormatError::Foreign);
        }
        if crc32c::crc32c(&b[..CRC_OFFSET]) != get32(b, CRC_OFFSET) {
            return Err(FormatError::Checksum);
        }
        let version = get32(b, 8);
        if b[0..8] != MAGIC || version != VERSION {
            return Err(FormatError::Version(version));
        }
        let bad = |what: &str| FormatError::Invalid(what.to_string());
        let level = Level::from_code(get32(b, 48)).ok_or_else(|| bad("unknown RAID level"))?;
        let slots = get32(b, 56) as usize;
        if slots == 0 || slots > MAX_MEMBERS {
            return Err(bad("member count out of range"));
        }
        let role = get32(b, 52);
        if role as usize >= slots {
            return Err(bad("role beyond the member count"));
        }
        let block_size = get32(b, 60);
        if block_size != 512 && block_size != 4096 {
            return Err(bad("block size is neither 512 nor 4096"));
        }
        if get64(b, 112) != BITMAP_OFFSET {
            return Err(bad("bitmap offset"));
        }
        let name_bytes = &b[144..144 + MAX_NAME];
        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(MAX_NAME);
        let name = String::from_utf8(name_bytes[..end].to_vec())
            .map_err(|_| bad("array name is not UTF-8"))?;
        let mut table = Vec::with_capacity(slots);
        for i in 0..slots {
            let at = TABLE_OFFSET + i * ENTRY_BYTES;
            table.push(SlotEntry {
                member_uuid: b[at..at + 16].try_into().expect("16 bytes"),
                state: SlotState::from_code(get32(b, at + 16))
                    .ok_or_else(|| bad("unknown member state in the slot table"))?,
                full_from: get64(b, at + 24),
                data_bytes: get64(b, at + 32),
            });
        }
        let sb = Superblock {
            array_uuid: b[16..32].try_into().expect("16 bytes"),
            member_uuid: b[32..48].try_into().expect("16 bytes"),
            name,
            level,
            role,
            block_size,
            events: get64(b, 64),
            clean: get32(b, 72) & FLAG_CLEAN != 0,
            strip_bytes: get64(b, 80),
            data_offset: get64(b, 88),
            array_bytes: get64(b, 96),
            region_bytes: get64(b, 104),
            bitmap_bytes: get64(b, 120),
            events_cleared: get64(b, 128),
            created: get64(b, 136),
            table,
        };
        sb.check()?;
        Ok(Some(sb))
    }

    /// What decoding cannot see byte by byte: the geometry adds up.
    fn check(&self) -> Result<(), FormatError> {
        let bad = |what: &str| Err(FormatError::Invalid(what.to_string()));
        let bs = u64::from(self.block_size);
        if !self.data_offset.is_multiple_of(DATA_ALIGN) || self.data_offset < BITMAP_OFFSET {
            return bad("data offset");
        }
        if self.array_bytes == 0 || !self.array_bytes.is_multiple_of(bs) {
            return bad("array size");
        }
        if self.table[self.role as usize].member_uuid != self.member_uuid {
            return bad("the slot table names another member in this member's role");
        }
        match self.level {
            Level::Raid1 => {
                if !self.region_bytes.is_power_of_two() || self.region_bytes < bs {
                    return bad("bitmap region size");
                }
                let blocks = bitmap_blocks(self.regions());
                if self.bitmap_bytes != blocks * BITMAP_BLOCK as u64
                    || BITMAP_OFFSET + self.bitmap_bytes > self.data_offset
                {
                    return bad("bitmap size");
                }
            }
            Level::Raid0 => {
                if self.strip_bytes == 0 || !self.strip_bytes.is_multiple_of(bs) {
                    return bad("strip size");
                }
            }
            Level::Concat => {}
        }
        Ok(())
    }

    /// RAID1: how many bitmap regions the array has.
    pub fn regions(&self) -> u64 {
        if self.region_bytes == 0 {
            0
        } else {
            self.array_bytes.div_ceil(self.region_bytes)
        }
    }
}

/// Bitmap blocks needed for `regions` bits.
pub fn bitmap_blocks(regions: u64) -> u64 {
    regions.div_ceil(BITS_PER_BLOCK)
}

/// Where the data starts for a bitmap of `bitmap_bytes`.
pub fn data_offset_for(bitmap_bytes: u64) -> u64 {
    (BITMAP_OFFSET + bitmap_bytes).div_ceil(DATA_ALIGN) * DATA_ALIGN
}

/// Encodes bitmap block `block` from `words` (the whole bitmap, 64 regions a word,
/// region `i` is bit `i % 64` of word `i / 64`) into `out` (4 KiB).
pub fn encode_bitmap_block(words: &[u64], block: usize, out: &mut [u8]) {
    let out = &mut out[..BITMAP_BLOCK];
    out.fill(0);
    let first = block * WORDS_PER_BLOCK;
    for i in 0..WORDS_PER_BLOCK {
        let w = words.get(first + i).copied().unwrap_or(0);
        out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[..BITMAP_BLOCK - 4]);
    put32(out, BITMAP_BLOCK - 4, crc);
}

/// Decodes bitmap block `block` from `b` into `words`; false (and every bit of the
/// block set, the safe reading) when its checksum fails.
pub fn decode_bitmap_block(b: &[u8], block: usize, words: &mut [u64]) -> bool {
    let b = &b[..BITMAP_BLOCK];
    let first = block * WORDS_PER_BLOCK;
    let ok = crc32c::crc32c(&b[..BITMAP_BLOCK - 4]) == get32(b, BITMAP_BLOCK - 4);
    for i in 0..WORDS_PER_BLOCK {
        let Some(w) = words.get_mut(first + i) else {
            break;
        };
        *w = if ok { get64(b, i * 8) } else { u64::MAX };
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            array_uuid: [7; 16],
            name: "md0".into(),
            level: Level::Raid1,
            member_uuid: [2; 16],
            role: 1,
            block_size: 512,
            events: 5,
            clean: true,
            strip_bytes: 0,
            data_offset: DATA_ALIGN,
            array_bytes: 64 << 20,
            region_bytes: 1 << 20,
            bitmap_bytes: 4096,
            events_cleared: 3,
            created: 1_700_000_000,
            table: vec![
                SlotEntry {
                    member_uuid: [1; 16],
                    state: SlotState::Active,
                    full_from: u64::MAX,
                    data_bytes: 64 << 20,
                },
                SlotEntry {
                    member_uuid: [2; 16],
                    state: SlotState::Recovering,
                    full_from: 12,
                    data_bytes: 64 << 20,
                },
            ],
        }
    }

    #[test]
    fn superblock_round_trips_and_alternates_slots() {
        let sb = sample();
        let mut b = vec![0u8; SB_BYTES];
        sb.encode(&mut b);
        assert_eq!(&b[..8], b"LPRAID\0\x01");
        assert_eq!(Superblock::decode(&b), Ok(Some(sb.clone())));
        assert_eq!(sb.slot_offset(), 4096);
        let mut next = sb;
        next.events += 1;
        assert_eq!(next.slot_offset(), 0);
    }

    #[test]
    fn damage_is_named() {
        let mut b = vec![0u8; SB_BYTES];
        assert_eq!(Superblock::decode(&b), Ok(None));
        sample().encode(&mut b);
        b[200] ^= 1;
        assert_eq!(Superblock::decode(&b), Err(FormatError::Checksum));
        let mut ext4 = vec![0u8; SB_BYTES];
        ext4[1080 % SB_BYTES] = 0x53;
        assert_eq!(Superblock::decode(&ext4), Err(FormatError::Foreign));
        // A table whose entry for this role names another member is refused.
        let mut sb = sample();
        sb.table[1].member_uuid = [9; 16];
        sb.encode(&mut b);
        assert!(matches!(
            Superblock::decode(&b),
            Err(FormatError::Invalid(_))
        ));
    }

    #[test]
    fn bitmap_blocks_round_trip_and_a_torn_one_reads_all_dirty() {
        let regions = BITS_PER_BLOCK + 100;
        let nwords = (regions as usize).div_ceil(64);
        let mut words = vec![0u64; nwords];
        words[0] = 0b1010;
        words[WORDS_PER_BLOCK - 1] = 1 << 3;
        words[WORDS_PER_BLOCK] = 1;
        let mut b = vec![0u8; BITMAP_BLOCK];
        let mut back = vec![0u64; nwords];
        for blk in 0..2 {
            encode_bitmap_block(&words, blk, &mut b);
            assert!(decode_bitmap_block(&b, blk, &mut back));
        }
        assert_eq!(back, words);
        encode_bitmap_block(&words, 1, &mut b);
        b[10] ^= 0xff;
        assert!(!decode_bitmap_block(&b, 1, &mut back));
        assert!(back[WORDS_PER_BLOCK..].iter().all(|&w| w == u64::MAX));
        assert_eq!(back[0], 0b1010);
    }
}
