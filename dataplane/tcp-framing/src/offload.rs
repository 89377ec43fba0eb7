//! The per-PDU work a SmartNIC could take over, named so that what did it can be
//! counted and, one day, swapped: CRC32C **digests** (header and data, computed on
//! send, checked on receive), **placement** (how a received payload reached the
//! request's buffer) and **steering** (which engine put a flow on this reactor's
//! queue). Steering happens below the framing (the kernel's accept, the XDP program,
//! DPDK's queues: see `lightpool-transport-tcp`'s `offload` module); digests and
//! placement happen here, in the receiver and the send queue.
//!
//! Everything is static: the digest engine is a type ([`DigestEngine`], chosen at
//! compile time as [`Crc32c`]), the placement of a direct read is the stream's
//! ([`Stream::placement`](crate::Stream::placement), an inlined match), and the
//! counters ([`OffloadCounters`]) are plain `u64`s of the connection, added to once per
//! PDU or read, summed by whoever reports them. No dynamic dispatch, no atomic, on the
//! path of a PDU.
//!
//! Where a SmartNIC plugs in (docs/architecture.md, "Offload"): a device that checks
//! data digests would hand the receiver payload already verified, a `Stream` whose
//! reads say so; a device that places H2C data would report [`Placement::Device`] for
//! the bytes it wrote into a request buffer; a device that computes digests on send
//! would be a [`DigestEngine`] whose digest the device fills in.

/// The kinds of work, as the metrics label them (`work`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    Digest,
    Placement,
    Steering,
}

impl Work {
    pub const ALL: [Work; 3] = [Work::Digest, Work::Placement, Work::Steering];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Work::Digest => "digest",
            Work::Placement => "placement",
            Work::Steering => "steering",
        }
    }
}

/// What computes CRC32C for NVMe/TCP's header and data digests.
pub trait DigestEngine {
    /// The engine, as the metrics label it.
    const NAME: &'static str;
    /// CRC32C of `data` continuing `crc` (0 for an empty prefix).
    fn append(crc: u32, data: &[u8]) -> u32;
}

/// CRC32C in software through the `crc32c` crate: on x86-64 with SSE4.2 (detected at
/// run time) the `crc32` instruction over three interleaved streams, combined with
/// shift tables (no PCLMULQDQ folding); on aarch64 with the CRC extension its
/// instructions; a table-driven loop elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32c;

impl DigestEngine for Crc32c {
    const NAME: &'static str = "software";
    #[inline(always)]
    fn append(crc: u32, data: &[u8]) -> u32 {
        lightpool_spec::tcp::crc32c_append(crc, data)
    }
}

/// The digest engine of this build.
pub type Digest = Crc32c;

/// Whether this machine gives [`Crc32c`] its instruction path (SSE4.2's `crc32` on
/// x86-64, the CRC extension on aarch64) rather than the table loop.
pub fn crc32c_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sse4.2")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("crc")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// What puts a flow on a reactor's queue: the kernel's accept (with its RSS), an XDP
/// program, a DPDK port's RSS or flow rules, a SmartNIC's flow table. Below the
/// framing: implemented where the listeners are (`lightpool-transport-tcp`), counted
/// per flow on the reactor it reached.
pub trait SteeringEngine {
    /// The engine, as the metrics label it (`engine` of `work="steering"`).
    const NAME: &'static str;
    /// What it did with frames, where it sees them itself (an XDP program's map);
    /// `None` where it does not (the kernel's accept; DPDK's RSS, whose per-queue
    /// receives the queues count).
    fn frames(&self) -> Option<SteeredFrames>;
}

/// Frames a steering engine saw, by what it did with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteeredFrames {
    /// Sent to the queue (socket) of the reactor that owns the flow.
    pub steered: u64,
    /// Passed to the kernel (not for a steered port).
    pub passed: u64,
    /// For a steered port, on a queue with no socket (passed to the kernel).
    pub no_socket: u64,
}

/// How received payload reached a request's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placement {
    /// Read straight into the request's buffer by `recv(2)`/`readv(2)` (the kernel
    /// copied it out of its socket buffer; with software TLS, decrypted into it).
    Recv,
    /// Copied straight into the request's buffer from the userspace TCP stack's
    /// socket ring (AF_XDP, DPDK).
    StackRing,
    /// Copied from the connection's staging buffer, after a read into that (or taken
    /// from there in place by a RAM namespace).
    Staged,
    /// Written into the request's buffer by a device (a SmartNIC's data placement).
    /// No engine of this build does it.
    Device,
}

/// Number of [`Placement`]s.
pub const PLACEMENTS: usize = 4;

impl Placement {
    pub const ALL: [Placement; PLACEMENTS] = [
        Placement::Recv,
        Placement::StackRing,
        Placement::Staged,
        Placement::Device,
    ];

    /// The label value (`engine` of `work="placement"`).
    pub fn name(self) -> &'static str {
        match self {
            Placement::Recv => "recv",
            Placement::StackRing => "stack_ring",
            Placement::Staged => "staged_copy",
            Placement::Device => "device",
        }
    }
}

/// What one connection's framing did of the offloadable work: plain counts, only
/// ever added to by the connection's own thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadCounters {
    /// Digests computed (send) or checked (receive), header and data.
    pub digests: u64,
    /// Bytes those digests covered.
    pub digest_bytes: u64,
    /// Reads or copies that put payload into a request's buffer, by [`Placement`].
    pub placements: [u64; PLACEMENTS],
    /// Bytes they put there, by [`Placement`].
    pub placed_bytes: [u64; PLACEMENTS],
}

impl OffloadCounters {
    /// A digest over `bytes` bytes (the whole of one header or one data payload; a
    /// payload's digest taken in parts counts once, with all its bytes).
    #[inline(always)]
    pub fn digest(&mut self, bytes: usize) {
        self.digests += 1;
        self.digest_bytes += bytes as u64;
    }

    /// Bytes of a digest taken in parts (the digest itself counted by `digest(0)`).
    #[inline(always)]
    pub fn digest_bytes(&mut self, bytes: usize) {
        self.digest_bytes += bytes as u64;
    }

    /// `bytes` payload bytes placed by `how`.
    #[inline(always)]
    pub fn place(&mut self, how: Placement, bytes: usize) {
        self.placements[how as usize] += 1;
        self.placed_bytes[how as usize] += bytes as u64;
    }

    /// Add `o` (another connection's, or the other direction's).
    pub fn merge(&mut self, o: &OffloadCounters) {
        self.digests += o.digests;
        self.digest_bytes += o.digest_bytes;
        for i in 0..PLACEMENTS {
            self.placements[i] += o.placements[i];
            self.placed_bytes[i] += o.placed_bytes[i];
        }
    }

    /// What was added since `earlier` (a copy of these counters taken before).
    pub fn since(&self, earlier: &OffloadCounters) -> OffloadCounters {
        let mut d = OffloadCounters {
            digests: self.digests.wrapping_sub(earlier.digests),
            digest_bytes: self.digest_bytes.wrapping_sub(earlier.digest_bytes),
            ..Default::default()
        };
        for i in 0..PLACEMENTS {
            d.placements[i] = self.placements[i].wrapping_sub(earlier.placements[i]);
            d.placed_bytes[i] = self.placed_bytes[i].wrapping_sub(earlier.placed_bytes[i]);
        }
        d
    }

    pub fn is_zero(&self) -> bool {
        *self == OffloadCounters::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_digest_is_crc32c_and_appends() {
        let data = b"123456789";
        // The CRC32C check value.
        assert_eq!(Crc32c::append(0, data), 0xE306_9283);
        let (a, b) = data.split_at(4);
        assert_eq!(Crc32c::append(Crc32c::append(0, a), b), 0xE306_9283);
        assert_eq!(<Digest as DigestEngine>::NAME, "software");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn this_machine_has_the_instruction_path() {
        // Every x86-64 machine the project runs on has SSE4.2 (CI's and the
        // developers'); a build on one without it would still be correct, only slower.
        assert!(crc32c_hardware());
    }

    #[test]
    fn counters_add_merge_and_diff() {
        let mut c = OffloadCounters::default();
        assert!(c.is_zero());
        c.digest(24);
        c.digest(0);
        c.digest_bytes(4096);
        c.place(Placement::Recv, 8192);
        c.place(Placement::Staged, 100);
        let before = c;
        c.place(Placement::Staged, 28);
        let d = c.since(&before);
        assert_eq!(d.placements[Placement::Staged as usize], 1);
        assert_eq!(d.placed_bytes[Placement::Staged as usize], 28);
        assert_eq!(d.digests, 0);
        let mut sum = before;
        sum.merge(&d);
        assert_eq!(sum, c);
        assert_eq!(c.digests, 2);
        assert_eq!(c.digest_bytes, 24 + 4096);
        assert_eq!(c.placed_bytes[Placement::Recv as usize], 8192);
    }

    #[test]
    fn labels_are_distinct() {
        let names: std::collections::BTreeSet<_> =
            Placement::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), PLACEMENTS);
        for (i, p) in Placement::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
        assert_eq!(
            Work::ALL.map(Work::name),
            ["digest", "placement", "steering"]
        );
    }
}
