//! Creating an array (new superblocks on blank members) and assembling one from its
//! members' superblocks, with the refusals that keep data safe: members of another
//! array, members replaced since, a member the array last saw active that is absent
//! (starting without it could roll acknowledged writes back), too few members, and
//! anything that cannot be read, which is never written.

use std::sync::Arc;
use std::time::Duration;

use lightpool_bdev::{Bdev, BdevInfo, IoStatus};

use crate::format::{
    bitmap_blocks, data_offset_for, decode_bitmap_block, encode_bitmap_block, Level, SlotEntry,
    SlotState, Superblock, BITMAP_BLOCK, BITMAP_OFFSET, DATA_ALIGN, MAX_MEMBERS, MAX_NAME,
    SB_BYTES, WORDS_PER_BLOCK,
};
use crate::io::{describe, Buf, SyncChannel};
use crate::mirror::{self, Member, Mirror, SlotInit};
use crate::striped::{Map, Striped};
use crate::{format_uuid, new_uuid, ArrayOptions, Inner, RaidBdev, RaidError};

/// What a device holds where a superblock would be.
pub(crate) enum Found {
    /// Nothing (zeroes): a new member.
    Blank,
    Sb(Superblock),
}

fn member_err(opts: &ArrayOptions, dev: &Arc<dyn Bdev>, reason: impl Into<String>) -> RaidError {
    RaidError::Member {
        array: opts.name.clone(),
        device: dev.info().name.clone(),
        reason: reason.into(),
    }
}

/// Reads both superblock slots of `dev`: the newer valid one, `Blank` when both are
/// zeroes, an error (in words) when it cannot be read or trusted.
pub(crate) fn read_superblock(dev: &Arc<dyn Bdev>) -> Result<Found, String> {
    let info = dev.info();
    if !matches!(info.block_size, 512 | 4096) {
        return Err(format!("block size {} is not 512 or 4096", info.block_size));
    }
    if info.num_blocks * u64::from(info.block_size) < DATA_ALIGN * 2 {
        return Err("is too small to be an array member (less than 2 MiB)".into());
    }
    let buf = crate::io::read_at(dev, 0, 2 * SB_BYTES)
        .map_err(|e| format!("cannot read its superblock: {e}"))?;
    let b = buf.as_slice();
    let a = Superblock::decode(&b[..SB_BYTES]);
    let c = Superblock::decode(&b[SB_BYTES..]);
    match (a, c) {
        (Ok(None), Ok(None)) => Ok(Found::Blank),
        (Ok(Some(x)), Ok(Some(y))) => Ok(Found::Sb(if y.events > x.events { y } else { x })),
        // One copy torn (or never written): the other is the superblock.
        (Ok(Some(x)), _) | (_, Ok(Some(x))) => Ok(Found::Sb(x)),
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_members(members: &[Arc<dyn Bdev>], opts: &ArrayOptions) -> Result<u32, RaidError> {
    if opts.name.is_empty() || opts.name.len() > MAX_NAME {
        return Err(RaidError::Invalid(format!(
            "array name {:?} must be 1 to {MAX_NAME} bytes",
            opts.name
        )));
    }
    let min = match opts.level {
        Level::Concat => 1,
        Level::Raid0 | Level::Raid1 => 2,
    };
    if members.len() < min || members.len() > MAX_MEMBERS {
        return Err(RaidError::Refused(format!(
            "array {}: a {} array has {min} to {MAX_MEMBERS} members, {} given",
            opts.name,
            opts.level,
            members.len()
        )));
    }
    let bs = members[0].info().block_size;
    for (i, m) in members.iter().enumerate() {
        if m.info().block_size != bs {
            return Err(member_err(
                opts,
                m,
                format!(
                    "block size {} differs from {}'s {bs}",
                    m.info().block_size,
                    members[0].info().name
                ),
            ));
        }
        if members[..i]
            .iter()
            .any(|o| Arc::ptr_eq(o, m) || o.info().name == m.info().name)
        {
            return Err(member_err(opts, m, "is listed twice"));
        }
    }
    Ok(bs)
}

fn size_of(d: &Arc<dyn Bdev>) -> u64 {
    d.info().num_blocks * u64::from(d.info().block_size)
}

/// Bitmap granularity for a member of `bytes`: 1 MiB, doubled until there are at most
/// about a million regions.
fn auto_region(bytes: u64) -> u64 {
    let mut r = 1u64 << 20;
    while bytes / r > (1 << 20) {
        r *= 2;
    }
    r
}

impl RaidBdev {
    /// Creates the array if every member is blank (zeroes where the superblocks go),
    /// assembles it otherwise.
    pub fn open(
        members: Vec<Arc<dyn Bdev>>,
        opts: &ArrayOptions,
    ) -> Result<Arc<RaidBdev>, RaidError> {
        let mut any = false;
        for m in &members {
            match read_superblock(m) {
                Ok(Found::Sb(_)) => any = true,
                Ok(Found::Blank) => {}
                Err(e) => return Err(member_err(opts, m, e)),
            }
        }
        if any {
            Self::assemble(members, opts)
        } else {
            Self::create(members, opts)
        }
    }

    /// Writes new superblocks (and, for RAID1, an empty bitmap; the data areas zeroed
    /// unless `assume_clean`) on `members`, which must be blank.
    pub fn create(
        members: Vec<Arc<dyn Bdev>>,
        opts: &ArrayOptions,
    ) -> Result<Arc<RaidBdev>, RaidError> {
        let bs = check_members(&members, opts)?;
        for m in &members {
            match read_superblock(m) {
                Ok(Found::Blank) => {}
                Ok(Found::Sb(sb)) => {
                    return Err(member_err(
                        opts,
                        m,
                        format!(
                            "is a member of array {} ({}); assemble that array, or zero its first 8 KiB to reuse the device",
                            sb.name,
                            format_uuid(&sb.array_uuid)
                        ),
                    ))
                }
                Err(e) => {
                    return Err(member_err(
                        opts,
                        m,
                        format!("{e}; zero its first 8 KiB to use it as a new member"),
                    ))
                }
            }
        }
        let bsz = u64::from(bs);
        let sizes: Vec<u64> = members.iter().map(size_of).collect();
        let min = *sizes.iter().min().expect("at least one member");
        let (data_offset, array_bytes, per, region_bytes, bitmap_bytes) = match opts.level {
            Level::Raid1 => {
                let region = opts.region_bytes.unwrap_or_else(|| auto_region(min));
                if !region.is_power_of_two() || region < 4096 {
                    return Err(RaidError::Invalid(format!(
                        "array {}: bitmap region size {region} is not a power of two of 4 KiB or more",
                        opts.name
                    )));
                }
                let est = bitmap_blocks(min.div_ceil(region)) * BITMAP_BLOCK as u64;
                let off = data_offset_for(est);
                if min <= off {
                    return Err(RaidError::Refused(format!(
                        "array {}: members of {min} bytes are too small",
                        opts.name
                    )));
                }
                let array = (min - off) / 4096 * 4096;
                let bitmap = bitmap_blocks(array.div_ceil(region)) * BITMAP_BLOCK as u64;
                (off, array, vec![array; members.len()], region, bitmap)
            }
            Level::Raid0 => {
                let strip = opts.strip_bytes;
                if strip == 0 || !strip.is_multiple_of(bsz) {
                    return Err(RaidError::Invalid(format!(
                        "array {}: strip size {strip} is not a multiple of the block size {bs}",
                        opts.name
                    )));
                }
                let each = (min - DATA_ALIGN) / strip * strip;
                if each == 0 {
                    return Err(RaidError::Refused(format!(
                        "array {}: members are smaller than one strip",
                        opts.name
                    )));
                }
                (
                    DATA_ALIGN,
                    each * members.len() as u64,
                    vec![each; members.len()],
                    0,
                    0,
                )
            }
            Level::Concat => {
                let per: Vec<u64> = sizes.iter().map(|s| (s - DATA_ALIGN) / bsz * bsz).collect();
                (DATA_ALIGN, per.iter().sum(), per, 0, 0)
            }
        };
        let uuids: Vec<[u8; 16]> = members.iter().map(|_| new_uuid()).collect();
        let mut sb = Superblock {
            array_uuid: new_uuid(),
            name: opts.name.clone(),
            level: opts.level,
            member_uuid: uuids[0],
            role: 0,
            block_size: bs,
            events: 1,
            clean: true,
            strip_bytes: if opts.level == Level::Raid0 {
                opts.strip_bytes
            } else {
                0
            },
            data_offset,
            array_bytes,
            region_bytes,
            bitmap_bytes,
            events_cleared: 1,
            created: unix_now(),
            table: uuids
                .iter()
                .zip(&per)
                .map(|(u, p)| SlotEntry {
                    member_uuid: *u,
                    state: SlotState::Active,
                    full_from: u64::MAX,
                    data_bytes: *p,
                })
                .collect(),
        };
        let zero_data = opts.level == Level::Raid1 && !opts.assume_clean;
        for (i, m) in members.iter().enumerate() {
            sb.role = i as u32;
            sb.member_uuid = uuids[i];
            init_member(m, &sb, zero_data).map_err(|e| member_err(opts, m, e))?;
        }
        sb.role = 0;
        sb.member_uuid = uuids[0];
        tracing::info!(array = %opts.name, level = %opts.level, uuid = %format_uuid(&sb.array_uuid), members = members.len(), bytes = array_bytes, "array created");
        build(
            members.into_iter().map(Some).collect(),
            sb,
            opts,
            Vec::new(),
            None,
        )
    }

    /// Assembles the array from its members' superblocks (in any order). RAID1 members
    /// that are blank become replacements, rebuilt once the array serves.
    pub fn assemble(
        members: Vec<Arc<dyn Bdev>>,
        opts: &ArrayOptions,
    ) -> Result<Arc<RaidBdev>, RaidError> {
        check_members(&members, opts).or_else(|e| match e {
            // A degraded RAID1 may be assembled from one member.
            RaidError::Refused(_) if opts.level == Level::Raid1 && members.len() == 1 => Ok(0),
            e => Err(e),
        })?;
        let mut sbs = Vec::new();
        let mut blanks = Vec::new();
        for m in &members {
            match read_superblock(m) {
                Ok(Found::Sb(sb)) => sbs.push((m.clone(), sb)),
                Ok(Found::Blank) => blanks.push(m.clone()),
                Err(e) => return Err(member_err(opts, m, e)),
            }
        }
        let Some(fresh) = sbs
            .iter()
            .filter(|(_, sb)| sb.name == opts.name)
            .max_by_key(|(_, sb)| sb.events)
            .map(|(_, sb)| sb.clone())
        else {
            return Err(match sbs.first() {
                Some((d, sb)) => member_err(
                    opts,
                    d,
                    format!(
                        "is a member of array {} ({}), not of {}",
                        sb.name,
                        format_uuid(&sb.array_uuid),
                        opts.name
                    ),
                ),
                None => RaidError::Refused(format!(
                    "array {}: no member carries a superblock (to create the array, give blank devices only)",
                    opts.name
                )),
            });
        };
        // Devices by slot, every one checked against the freshest superblock.
        let mut by_slot: Vec<Option<(Arc<dyn Bdev>, Superblock)>> =
            (0..fresh.table.len()).map(|_| None).collect();
        for (d, sb) in &sbs {
            let why = if sb.array_uuid != fresh.array_uuid {
                Some(format!(
                    "is a member of another array {} ({}), not of {} ({})",
                    sb.name,
                    format_uuid(&sb.array_uuid),
                    fresh.name,
                    format_uuid(&fresh.array_uuid)
                ))
            } else if sb.level != opts.level {
                Some(format!(
                    "is a {} member; the configuration says {}",
                    sb.level, opts.level
                ))
            } else if fresh.table[sb.role as usize].member_uuid != sb.member_uuid {
                Some(format!(
                    "was slot {} of {}, but has been replaced since (events {} < {}); zero its first 8 KiB to add it again",
                    sb.role, fresh.name, sb.events, fresh.events
                ))
            } else if by_slot[sb.role as usize].is_some() {
                Some(format!(
                    "claims slot {}, which another device holds",
                    sb.role
                ))
            } else if d.info().block_size != fresh.block_size {
                Some(format!(
                    "has block size {}, the array {}",
                    d.info().block_size,
                    fresh.block_size
                ))
            } else if size_of(d) < fresh.data_offset + fresh.table[sb.role as usize].data_bytes {
                Some("is smaller than its share of the array".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                return Err(member_err(opts, d, why));
            }
            by_slot[sb.role as usize] = Some((d.clone(), sb.clone()));
        }
        if opts.level != Level::Raid1 {
            if let Some(d) = blanks.first() {
                return Err(member_err(
                    opts,
                    d,
                    format!(
                        "carries no superblock; a {} array cannot take a new member",
                        opts.level
                    ),
                ));
            }
            for (s, d) in by_slot.iter().enumerate() {
                if d.is_none() {
                    return Err(RaidError::Refused(format!(
                        "array {}: slot {s} (member {}) is missing; a {} array needs every member",
                        opts.name,
                        format_uuid(&fresh.table[s].member_uuid),
                        opts.level
                    )));
                }
            }
            let devs = by_slot.into_iter().map(|d| d.map(|(d, _)| d)).collect();
            return build(devs, fresh, opts, Vec::new(), None);
        }
        assemble_mirror(by_slot, blanks, fresh, opts)
    }
}

/// RAID1: each slot's state from the freshest superblock and who came back, the bitmap
/// from the in-sync members.
fn assemble_mirror(
    by_slot: Vec<Option<(Arc<dyn Bdev>, Superblock)>>,
    blanks: Vec<Arc<dyn Bdev>>,
    fresh: Superblock,
    opts: &ArrayOptions,
) -> Result<Arc<RaidBdev>, RaidError> {
    let n = fresh.table.len();
    let mut states = Vec::with_capacity(n);
    for (s, entry) in fresh.table.iter().enumerate() {
        let present = by_slot[s].as_ref();
        let init = |state, full_from| SlotInit {
            state,
            cursor: 0,
            full_from,
            valid: false,
            snap: None,
            to_copy: 0,
            copied: 0,
        };
        states.push(match (entry.state, present) {
            (SlotState::Empty, _) => init(SlotState::Empty, u64::MAX),
            (SlotState::Active, Some(_)) => init(SlotState::Active, u64::MAX),
            (SlotState::Active, None) if !opts.allow_degraded => {
                let given: Vec<String> = by_slot
                    .iter()
                    .flatten()
                    .map(|(d, sb)| format!("{} (slot {}, events {})", d.info().name, sb.role, sb.events))
                    .collect();
                return Err(RaidError::Refused(format!(
                    "array {}: {} cannot start without slot {s} (member {}), which was in sync when the array last wrote its superblocks (events {}): they may be stale, and starting without it could roll back acknowledged writes; give it too, or allow a degraded start",
                    opts.name,
                    given.join(", "),
                    format_uuid(&entry.member_uuid),
                    fresh.events
                )));
            }
            (SlotState::Active | SlotState::Faulty | SlotState::Recovering, None) => {
                init(SlotState::Faulty, u64::MAX)
            }
            (SlotState::Faulty, Some((_, sb))) => {
                // A member that returns: the bitmap holds what it missed, unless bits
                // were cleared after it left.
                let f = if sb.events >= fresh.events_cleared { u64::MAX } else { 0 };
                init(SlotState::Recovering, f)
            }
            (SlotState::Recovering, Some(_)) => init(SlotState::Recovering, entry.full_from),
        });
    }
    let Some(source) = states.iter().position(|s| s.state == SlotState::Active) else {
        return Err(RaidError::Refused(format!(
            "array {}: no device holds the array's data in sync (members present: {}); the in-sync member is missing",
            opts.name,
            by_slot
                .iter()
                .flatten()
                .map(|(d, _)| d.info().name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    // The bitmap: the union of every in-sync member's (a block whose checksum fails
    // reads all dirty).
    let regions = fresh.regions();
    let mut bits = vec![0u64; (regions as usize).div_ceil(64)];
    for (s, st) in states.iter().enumerate() {
        if st.state != SlotState::Active {
            continue;
        }
        let (d, _) = by_slot[s].as_ref().expect("active slots are present");
        let buf = crate::io::read_at(d, BITMAP_OFFSET, fresh.bitmap_bytes as usize)
            .map_err(|e| member_err(opts, d, format!("cannot read its bitmap: {e}")))?;
        let mut mine = vec![0u64; bits.len()];
        for b in 0..(fresh.bitmap_bytes as usize / BITMAP_BLOCK) {
            let at = b * BITMAP_BLOCK;
            if !decode_bitmap_block(&buf.as_slice()[at..at + BITMAP_BLOCK], b, &mut mine) {
                tracing::warn!(array = %opts.name, device = %d.info().name, block = b, "bitmap block fails its checksum: its regions count as dirty");
            }
        }
        for (w, m) in bits.iter_mut().zip(&mine) {
            *w |= m;
        }
    }
    // Bits past the last region mean nothing.
    if !regions.is_multiple_of(64) {
        if let Some(last) = bits.last_mut() {
            *last &= (1u64 << (regions % 64)) - 1;
        }
    }
    let dirty: u64 = bits.iter().map(|w| u64::from(w.count_ones())).sum();
    if !fresh.clean {
        // An unclean stop: regions being written may differ between the in-sync
        // members. The first is the source; the others are made identical to it in
        // the dirty regions (and read only where they are).
        for st in states.iter_mut().skip(source + 1) {
            if st.state == SlotState::Active {
                st.state = SlotState::Recovering;
                st.valid = true;
            }
        }
        tracing::warn!(array = %opts.name, dirty_regions = dirty, "RAID1 array was not stopped cleanly: resyncing the bitmap's dirty regions only");
    }
    for st in states.iter_mut() {
        if st.state == SlotState::Recovering {
            let f = st.full_from.min(regions);
            let snapped: u64 = (0..f)
                .filter(|&r| bits[(r / 64) as usize] & (1 << (r % 64)) != 0)
                .count() as u64;
            st.to_copy = ((snapped + regions - f) * fresh.region_bytes).min(fresh.array_bytes);
        }
    }
    let devs: Vec<Option<Arc<dyn Bdev>>> = by_slot.into_iter().map(|d| d.map(|(d, _)| d)).collect();
    for (s, d) in devs.iter().enumerate() {
        let st = &states[s];
        if let Some(d) = d {
            tracing::info!(array = %opts.name, slot = s, device = %d.info().name, state = ?st.state, valid = st.valid, full_from = st.full_from, "RAID1 member assembled");
        }
    }
    let a = build(devs, fresh, opts, states, Some(bits))?;
    for b in blanks {
        let msg = a.add_member(b.clone())?;
        tracing::info!(array = %opts.name, "{msg}");
    }
    Ok(a)
}

/// Writes a new member's metadata: (RAID1) an empty bitmap and zeroed data, then its
/// superblock.
fn init_member(dev: &Arc<dyn Bdev>, sb: &Superblock, zero_data: bool) -> Result<(), String> {
    let mut ch = SyncChannel::open(dev.clone()).map_err(|e| e.to_string())?;
    let io = |st: IoStatus, what: &str| match st {
        IoStatus::Success => Ok(()),
        st => Err(format!("{what} failed: {}", describe(st))),
    };
    if sb.bitmap_bytes > 0 {
        let mut blk = Buf::new(BITMAP_BLOCK);
        encode_bitmap_block(&[0u64; WORDS_PER_BLOCK], 0, blk.as_mut_slice());
        let mut all = Buf::new(sb.bitmap_bytes as usize);
        for c in all.as_mut_slice().chunks_mut(BITMAP_BLOCK) {
            c.copy_from_slice(blk.as_slice());
        }
        io(ch.write(BITMAP_OFFSET, &all), "writing the bitmap")?;
    }
    if zero_data {
        // In pieces a request can carry.
        let bs = u64::from(sb.block_size);
        let step = (u64::from(u32::MAX) / bs * bs).min(1 << 30);
        let mut off = 0;
        while off < sb.array_bytes {
            let len = step.min(sb.array_bytes - off);
            ch.start_zeroes(sb.data_offset + off, len);
            io(ch.finish(), "zeroing the data area")?;
            off += len;
        }
    }
    let mut b = Buf::new(SB_BYTES);
    sb.encode(b.as_mut_slice());
    io(ch.write(sb.slot_offset(), &b), "writing the superblock")?;
    if dev.info().volatile_write_cache {
        io(ch.flush(), "flushing")?;
    }
    Ok(())
}

/// The block device of an array whose members (by slot), superblock and, for RAID1,
/// slot states and bitmap are decided.
pub(crate) fn build(
    devs: Vec<Option<Arc<dyn Bdev>>>,
    sb: Superblock,
    opts: &ArrayOptions,
    states: Vec<SlotInit>,
    bits: Option<Vec<u64>>,
) -> Result<Arc<RaidBdev>, RaidError> {
    let a = build_with(
        devs,
        sb,
        opts.rebuild_rate,
        opts.bitmap_clear_delay,
        states,
        bits,
        (0, 0),
    )?;
    a.start().map_err(|source| RaidError::Device {
        array: opts.name.clone(),
        source,
    })?;
    Ok(a)
}

/// As [`build`], without starting anything (an adopter starts the array later).
pub(crate) fn build_with(
    devs: Vec<Option<Arc<dyn Bdev>>>,
    sb: Superblock,
    rate: u64,
    clear_delay: Duration,
    mut states: Vec<SlotInit>,
    bits: Option<Vec<u64>>,
    (copied_total, recoveries): (u64, u64),
) -> Result<Arc<RaidBdev>, RaidError> {
    let bs = sb.block_size;
    let present: Vec<&Arc<dyn Bdev>> = devs.iter().flatten().collect();
    let info = BdevInfo {
        name: sb.name.clone(),
        block_size: bs,
        num_blocks: sb.array_bytes / u64::from(bs),
        read_only: present.iter().any(|d| d.info().read_only),
        volatile_write_cache: present.iter().any(|d| d.info().volatile_write_cache),
        supports_deallocate: !present.is_empty()
            && present.iter().all(|d| d.info().supports_deallocate),
    };
    let (level, uuid) = (sb.level, sb.array_uuid);
    let inner = match sb.level {
        Level::Raid1 => {
            if states.is_empty() {
                states = sb
                    .table
                    .iter()
                    .map(|e| SlotInit {
                        state: e.state,
                        cursor: 0,
                        full_from: e.full_from,
                        valid: false,
                        snap: None,
                        to_copy: 0,
                        copied: 0,
                    })
                    .collect();
            }
            let members = devs
                .into_iter()
                .zip(&sb.table)
                .map(|(d, e)| {
                    d.map(|dev| Member {
                        dev,
                        uuid: e.member_uuid,
                    })
                })
                .collect();
            let regions = sb.regions();
            Inner::Mirror(Mirror::new(mirror::Init {
                info: info.clone(),
                bits: bits.unwrap_or_else(|| vec![0; (regions as usize).div_ceil(64)]),
                sb,
                members,
                states,
                rate,
                clear_delay,
                copied_total,
                recoveries,
            }))
        }
        Level::Raid0 | Level::Concat => {
            let members: Vec<Arc<dyn Bdev>> = devs.into_iter().flatten().collect();
            let bsz = u64::from(bs);
            let map = if sb.level == Level::Raid0 {
                Map::Raid0 {
                    strip: sb.strip_bytes / bsz,
                    n: members.len() as u64,
                }
            } else {
                let mut starts = vec![0u64];
                for e in &sb.table {
                    starts.push(starts.last().expect("non-empty") + e.data_bytes / bsz);
                }
                Map::Concat { starts }
            };
            Inner::Striped(Box::new(Striped {
                members,
                map,
                data_offset: sb.data_offset / bsz,
                block_size: bs,
                sb,
            }))
        }
    };
    Ok(RaidBdev::build(info, level, uuid, inner))
}
