//! What to do next: the access pattern (sequential or random), the read/write mix and
//! the LBA region of one queue. Allocation-free; one generator per queue pair.

use std::fmt;
use std::str::FromStr;

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
}

/// The `-w` workloads, as spdk_nvme_perf and fio name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Sequential, reads and writes mixed by `-M`.
    Rw,
    /// Random, reads and writes mixed by `-M`.
    RandRw,
}

impl Workload {
    pub fn random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }

    /// Percentage of reads: fixed for the pure workloads, `mix` for rw/randrw.
    pub fn read_percent(self, mix: u8) -> u8 {
        match self {
            Workload::Read | Workload::RandRead => 100,
            Workload::Write | Workload::RandWrite => 0,
            Workload::Rw | Workload::RandRw => mix.min(100),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Workload::Read => "read",
            Workload::Write => "write",
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rw => "rw",
            Workload::RandRw => "randrw",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" | "readwrite" => Workload::Rw,
            "randrw" => Workload::RandRw,
            _ => {
                return Err(format!(
                    "unknown workload {s:?}; use read, write, randread, randwrite, rw or randrw"
                ))
            }
        })
    }
}

/// xorshift64*: fast, good enough for offsets, and reproducible from a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // SplitMix64 of the seed so that nearby seeds give unrelated streams; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The blocks one queue works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start_lba: u64,
    pub blocks: u64,
}

/// The operations of one queue pair.
#[derive(Clone, Debug)]
pub struct Generator {
    random: bool,
    read_pct: u8,
    region: Region,
    io_blocks: u32,
    /// I/Os of `io_blocks` that fit in the region.
    slots: u64,
    cursor: u64,
    rng: Rng,
}

impl Generator {
    /// `region` must hold at least one I/O of `io_blocks` blocks.
    pub fn new(
        workload: Workload,
        mix: u8,
        region: Region,
        io_blocks: u32,
        seed: u64,
    ) -> Generator {
        let slots = (region.blocks / u64::from(io_blocks.max(1))).max(1);
        let mut rng = Rng::new(seed);
        // Sequential queues start at a random place so repeated short runs do not all
        // hit the same first blocks.
        let cursor = if workload.random() {
            0
        } else {
            rng.below(slots)
        };
        Generator {
            random: workload.random(),
            read_pct: workload.read_percent(mix),
            region,
            io_blocks,
            slots,
            cursor,
            rng,
        }
    }

    pub fn region(&self) -> Region {
        self.region
    }

    /// The next operation and its first LBA (aligned to the I/O size within the
    /// region).
    #[inline]
    pub fn next_op(&mut self) -> (Op, u64) {
        let op = match self.read_pct {
            100 => Op::Read,
            0 => Op::Write,
            p => {
                if self.rng.below(100) < u64::from(p) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        let idx = if self.random {
            self.rng.below(self.slots)
        } else {
            let c = self.cursor;
            self.cursor = if c + 1 == self.slots { 0 } else { c + 1 };
            c
        };
        (op, self.region.start_lba + idx * u64::from(self.io_blocks))
    }
}

/// Splits `range` among `n` queues: each gets a contiguous share of whole I/Os.
/// `None` when the range holds fewer I/Os than queues.
pub fn split_region(range: Region, io_blocks: u32, n: usize) -> Option<Vec<Region>> {
    let ios = range.blocks / u64::from(io_blocks.max(1));
    let n64 = n as u64;
    if n == 0 || ios < n64 {
        return None;
    }
    let per = ios / n64;
    let extra = ios % n64;
    let mut out = Vec::with_capacity(n);
    let mut at = range.start_lba;
    for i in 0..n64 {
        let count = per + u64::from(i < extra);
        let blocks = count * u64::from(io_blocks);
        out.push(Region {
            start_lba: at,
            blocks,
        });
        at += blocks;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_wraps_and_stays_aligned() {
        let r = Region {
            start_lba: 100,
            blocks: 8 * 4 + 3,
        };
        let mut g = Generator::new(Workload::Write, 0, r, 8, 1);
        let mut seen = Vec::new();
        for _ in 0..8 {
            let (op, lba) = g.next_op();
            assert_eq!(op, Op::Write);
            assert!((lba - 100) % 8 == 0 && lba + 8 <= 100 + 32, "{lba}");
            seen.push(lba);
        }
        // Two full laps over the four slots, in order.
        assert_eq!(seen[..4], seen[4..]);
        let mut sorted = seen[..4].to_vec();
        sorted.sort();
        assert_eq!(sorted, vec![100, 108, 116, 124]);
    }

    #[test]
    fn random_covers_the_region_and_mix_is_close() {
        let r = Region {
            start_lba: 0,
            blocks: 64,
        };
        let mut g = Generator::new(Workload::RandRw, 70, r, 1, 42);
        let mut hit = [false; 64];
        let mut reads = 0;
        for _ in 0..100_000 {
            let (op, lba) = g.next_op();
            hit[lba as usize] = true;
            reads += usize::from(op == Op::Read);
        }
        assert!(hit.iter().all(|&h| h));
        assert!((69_000..71_000).contains(&reads), "{reads}");
    }

    #[test]
    fn split_is_disjoint_and_whole() {
        let r = Region {
            start_lba: 10,
            blocks: 100,
        };
        let parts = split_region(r, 8, 3).expect("12 I/Os for 3 queues");
        assert_eq!(
            parts,
            vec![
                Region {
                    start_lba: 10,
                    blocks: 32
                },
                Region {
                    start_lba: 42,
                    blocks: 32
                },
                Region {
                    start_lba: 74,
                    blocks: 32
                },
            ]
        );
        assert!(split_region(r, 64, 3).is_none());
    }

    #[test]
    fn workload_names_round_trip() {
        for w in ["read", "write", "randread", "randwrite", "rw", "randrw"] {
            assert_eq!(w.parse::<Workload>().expect("known").name(), w);
        }
        assert!("bogus".parse::<Workload>().is_err());
    }
}
