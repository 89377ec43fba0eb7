//! Concat and RAID0: the array's blocks laid over the members one after the other, or
//! in strips taken from each member in turn. A request that crosses members is split;
//! it completes when every part has, with the first error any part met. Members have
//! no redundancy: a member's error is the request's error.

use std::collections::VecDeque;
use std::sync::Arc;

use lightpool_bdev::{
    check_request, Bdev, BdevError, DataRef, IoChannel, IoOp, IoRequest, IoStatus,
};

use crate::format::Superblock;
use crate::slab::Slab;
use crate::RaidBdev;

/// Where the array's blocks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Map {
    /// `starts[i]` is the first array block on member `i`; `starts[n]` the array size.
    Concat { starts: Vec<u64> },
    /// Strips of `strip` blocks over `n` members.
    Raid0 { strip: u64, n: u64 },
}

/// One piece of a request: `blocks` blocks at `member_lba` (in the member's data area)
/// of member `member`, which are blocks `skip..skip+blocks` of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub member: usize,
    pub member_lba: u64,
    pub blocks: u64,
    pub skip: u64,
}

impl Map {
    /// Calls `f` for each piece of `lba..lba+blocks`, in the request's order. The range
    /// must lie inside the array.
    pub fn pieces(&self, lba: u64, blocks: u64, mut f: impl FnMut(Piece)) {
        let mut done = 0;
        while done < blocks {
            let a = lba + done;
            let p = match self {
                Map::Concat { starts } => {
                    let m = starts.partition_point(|&s| s <= a) - 1;
                    Piece {
                        member: m,
                        member_lba: a - starts[m],
                        blocks: (starts[m + 1] - a).min(blocks - done),
                        skip: done,
                    }
                }
                Map::Raid0 { strip, n } => {
                    let s = a / strip;
                    let off = a % strip;
                    Piece {
                        member: (s % n) as usize,
                        member_lba: (s / n) * strip + off,
                        blocks: (strip - off).min(blocks - done),
                        skip: done,
                    }
                }
            };
            done += p.blocks;
            f(p);
        }
    }

    /// The member piece holding all of `lba..lba+blocks` (inside the array), if one does.
    #[inline]
    pub fn one_piece(&self, lba: u64, blocks: u64) -> Option<Piece> {
        let p = match self {
            Map::Concat { starts } => {
                let m = starts.partition_point(|&s| s <= lba) - 1;
                Piece {
                    member: m,
                    member_lba: lba - starts[m],
                    blocks,
                    skip: 0,
                }
            }
            Map::Raid0 { strip, n } => {
                let s = lba / strip;
                Piece {
                    member: (s % n) as usize,
                    member_lba: (s / n) * strip + lba % strip,
                    blocks,
                    skip: 0,
                }
            }
        };
        let room = match self {
            Map::Concat { starts } => starts[p.member + 1] - lba,
            Map::Raid0 { strip, .. } => strip - lba % strip,
        };
        (blocks <= room).then_some(p)
    }

    /// The member blocks that `lba..lba+blocks` covers on each member, as one range per
    /// member (for requests without data: a RAID0 member's share of any range is
    /// contiguous on it).
    pub fn member_ranges(&self, lba: u64, blocks: u64, mut f: impl FnMut(usize, u64, u64)) {
        match self {
            Map::Concat { .. } => self.pieces(lba, blocks, |p| f(p.member, p.member_lba, p.blocks)),
            Map::Raid0 { strip, n } => {
                // Blocks of member k before array position x, in member order.
                let before = |x: u64, k: u64| {
                    let s = x / strip;
                    let (row, col) = (s / n, s % n);
                    row * strip
                        + match k.cmp(&col) {
                            std::cmp::Ordering::Less => *strip,
                            std::cmp::Ordering::Equal => x % strip,
                            std::cmp::Ordering::Greater => 0,
                        }
                };
                for k in 0..*n {
                    let (a, b) = (before(lba, k), before(lba + blocks, k));
                    if b > a {
                        f(k as usize, a, b - a);
                    }
                }
            }
        }
    }
}

/// A concat or RAID0 array.
pub struct Striped {
    pub members: Vec<Arc<dyn Bdev>>,
    pub map: Map,
    /// Where the data area starts on every member, in blocks.
    pub data_offset: u64,
    pub block_size: u32,
    /// The superblock as written (member fields those of slot 0).
    pub sb: Superblock,
}

impl Striped {
    pub fn open_channel(&self, dev: Arc<RaidBdev>) -> Result<Box<dyn IoChannel>, BdevError> {
        let mut members = Vec::with_capacity(self.members.len());
        for m in &self.members {
            members.push(m.open_channel()?);
        }
        Ok(Box::new(StripedChannel {
            info: dev.info.clone(),
            dev,
            map: self.map.clone(),
            data_offset: self.data_offset,
            bs: u64::from(self.block_size),
            members,
            reqs: Slab::new(),
            ready: VecDeque::with_capacity(crate::slab::INITIAL),
            in_flight: 0,
        }))
    }
}

#[derive(Default)]
struct Parent {
    tag: u64,
    remaining: u32,
    status: Option<IoStatus>,
}

struct StripedChannel {
    /// Keeps the array alive while the channel is.
    #[allow(dead_code)]
    dev: Arc<RaidBdev>,
    info: lightpool_bdev::BdevInfo,
    map: Map,
    data_offset: u64,
    bs: u64,
    members: Vec<Box<dyn IoChannel>>,
    reqs: Slab<Parent>,
    /// Completions decided at submit (refused requests), handed out by the next poll.
    ready: VecDeque<(u64, IoStatus)>,
    in_flight: usize,
}

impl StripedChannel {
    /// Submits one part of parent `p` to a member.
    ///
    /// # Safety
    /// As [`IoChannel::submit`]: `buf..buf+len` stays valid until the part completes.
    unsafe fn part(&mut self, p: u32, member: usize, op: IoOp, lba: u64, n: u64, buf: *mut u8) {
        let len = if buf.is_null() {
            0
        } else {
            (n * self.bs) as usize
        };
        self.reqs.get(p).remaining += 1;
        let req = IoRequest {
            op,
            // A Flush has no range.
            offset_blocks: if op == IoOp::Flush {
                0
            } else {
                self.data_offset + lba
            },
            num_blocks: n as u32,
            buf,
            len,
            tag: u64::from(p),
        };
        // SAFETY: the caller's contract on the buffer, passed on.
        unsafe { self.members[member].submit(req) };
    }
}

impl StripedChannel {
    /// The one member piece `lba..lba+n` lies in, if it lies in one and in the array.
    #[inline]
    fn one_piece(&self, lba: u64, n: u32) -> Option<Piece> {
        let end = lba.checked_add(u64::from(n))?;
        if n == 0 || end > self.info.num_blocks {
            return None;
        }
        self.map.one_piece(lba, u64::from(n))
    }
}

impl IoChannel for StripedChannel {
    /// Passed on to the member when the blocks lie in one piece of it (a RAM member
    /// keeps its reads by reference).
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        let p = self.one_piece(offset_blocks, num_blocks)?;
        self.members[p.member].read_in_place(self.data_offset + p.member_lba, num_blocks)
    }

    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        if self.info.read_only || data.len() as u64 != u64::from(num_blocks) * self.bs {
            return false;
        }
        match self.one_piece(offset_blocks, num_blocks) {
            Some(p) => self.members[p.member].write_in_place(
                self.data_offset + p.member_lba,
                num_blocks,
                data,
            ),
            None => false,
        }
    }

    unsafe fn submit(&mut self, req: IoRequest) {
        self.in_flight += 1;
        if let Err(st) = check_request(&self.info, &req) {
            self.ready.push_back((req.tag, st));
            return;
        }
        let p = self.reqs.alloc();
        self.reqs.get(p).tag = req.tag;
        // Taken out for the walk (a move, no copy), so that `part` can borrow self.
        let map = std::mem::replace(&mut self.map, Map::Raid0 { strip: 1, n: 1 });
        match req.op {
            IoOp::Read | IoOp::Write => {
                let bs = self.bs;
                map.pieces(req.offset_blocks, u64::from(req.num_blocks), |pc| {
                    // SAFETY: the piece lies inside the request's buffer (the pieces
                    // cover the request exactly); the caller keeps it valid until the
                    // parent completes, which is after its last part.
                    unsafe {
                        let buf = req.buf.add((pc.skip * bs) as usize);
                        self.part(p, pc.member, req.op, pc.member_lba, pc.blocks, buf)
                    }
                });
            }
            IoOp::Flush => {
                for m in 0..self.members.len() {
                    // SAFETY: no buffer.
                    unsafe { self.part(p, m, IoOp::Flush, 0, 0, std::ptr::null_mut()) };
                }
            }
            IoOp::WriteZeroes | IoOp::Deallocate => {
                map.member_ranges(req.offset_blocks, u64::from(req.num_blocks), |m, lba, n| {
                    // SAFETY: no buffer.
                    unsafe { self.part(p, m, req.op, lba, n, std::ptr::null_mut()) };
                });
            }
        }
        self.map = map;
        if self.reqs.at(p).remaining == 0 {
            // A zero-length range: nothing to split.
            self.reqs.free(p);
            self.ready.push_back((req.tag, IoStatus::Success));
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        if self.in_flight == 0 {
            // Nothing of ours anywhere (every part counts in its parent).
            return 0;
        }
        let mut n = 0;
        while let Some((tag, st)) = self.ready.pop_front() {
            self.in_flight -= 1;
            done(tag, st);
            n += 1;
        }
        let reqs = &mut self.reqs;
        let in_flight = &mut self.in_flight;
        for ch in self.members.iter_mut() {
            ch.poll(&mut |tag, st| {
                let p = tag as u32;
                let r = reqs.get(p);
                if st != IoStatus::Success && r.status.is_none() {
                    r.status = Some(st);
                }
                r.remaining -= 1;
                if r.remaining == 0 {
                    let (tag, st) = (r.tag, r.status.unwrap_or(IoStatus::Success));
                    reqs.free(p);
                    *in_flight -= 1;
                    done(tag, st);
                    n += 1;
                }
            });
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(m: &Map, lba: u64, n: u64) -> Vec<Piece> {
        let mut v = Vec::new();
        m.pieces(lba, n, |p| v.push(p));
        v
    }

    #[test]
    fn raid0_pieces_follow_the_strips() {
        let m = Map::Raid0 { strip: 8, n: 3 };
        // Blocks 6..26: the end of strip 0 (member 0), strip 1 (member 1), strip 2
        // (member 2), the start of strip 3 (member 0, second row).
        assert_eq!(
            collect(&m, 6, 20),
            vec![
                Piece {
                    member: 0,
                    member_lba: 6,
                    blocks: 2,
                    skip: 0
                },
                Piece {
                    member: 1,
                    member_lba: 0,
                    blocks: 8,
                    skip: 2
                },
                Piece {
                    member: 2,
                    member_lba: 0,
                    blocks: 8,
                    skip: 10
                },
                Piece {
                    member: 0,
                    member_lba: 8,
                    blocks: 2,
                    skip: 18
                },
            ]
        );
        assert_eq!(
            collect(&m, 25, 1),
            vec![Piece {
                member: 0,
                member_lba: 9,
                blocks: 1,
                skip: 0
            }]
        );
    }

    #[test]
    fn concat_pieces_cross_members() {
        let m = Map::Concat {
            starts: vec![0, 10, 12, 40],
        };
        assert_eq!(
            collect(&m, 8, 6),
            vec![
                Piece {
                    member: 0,
                    member_lba: 8,
                    blocks: 2,
                    skip: 0
                },
                Piece {
                    member: 1,
                    member_lba: 0,
                    blocks: 2,
                    skip: 2
                },
                Piece {
                    member: 2,
                    member_lba: 0,
                    blocks: 2,
                    skip: 4
                },
            ]
        );
        assert_eq!(
            collect(&m, 39, 1),
            vec![Piece {
                member: 2,
                member_lba: 27,
                blocks: 1,
                skip: 0
            }]
        );
    }

    /// `one_piece` is `pieces` when that gives exactly one.
    #[test]
    fn one_piece_agrees_with_pieces() {
        for m in [
            Map::Raid0 { strip: 4, n: 3 },
            Map::Concat {
                starts: vec![0, 10, 12, 40],
            },
        ] {
            for lba in 0..36 {
                for n in 1..(40 - lba).min(12) {
                    let all = collect(&m, lba, n);
                    let want = (all.len() == 1).then(|| all[0]);
                    assert_eq!(m.one_piece(lba, n), want, "{m:?} {lba}+{n}");
                }
            }
        }
    }

    /// A member's share of any range, computed per member, is exactly the union of the
    /// pieces on it, and contiguous.
    #[test]
    fn raid0_member_ranges_match_the_pieces() {
        let m = Map::Raid0 { strip: 4, n: 3 };
        for lba in 0..30 {
            for n in 1..40 {
                let mut per = vec![Vec::new(); 3];
                m.pieces(lba, n, |p| {
                    per[p.member].extend(p.member_lba..p.member_lba + p.blocks)
                });
                let mut got = vec![Vec::new(); 3];
                m.member_ranges(lba, n, |k, a, len| got[k].extend(a..a + len));
                for k in 0..3 {
                    per[k].sort_unstable();
                    assert_eq!(per[k], got[k], "lba {lba} n {n} member {k}");
                }
            }
        }
    }
}
