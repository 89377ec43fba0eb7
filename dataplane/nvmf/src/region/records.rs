//! The fixed-size records of the state region: plain old data (`#[repr(C)]`, integers
//! and byte arrays only, no pointers), so that any process mapping the region can read
//! them and every bit pattern is a value (validation is semantic, after the checksum).

use super::RegionError;

/// Marker for types that may be copied to and from the region byte for byte.
///
/// # Safety
/// The type is `#[repr(C)]`, has no padding bytes, holds no pointers or references, and
/// every bit pattern is a valid value.
pub unsafe trait Pod: Copy + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Pod types have no padding and are plain bytes (trait contract).
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
    fn zeroed() -> Self {
        // SAFETY: every bit pattern, zero included, is a value (trait contract).
        unsafe { std::mem::zeroed() }
    }
}

/// A string field: length, then bytes (UTF-8, not NUL-terminated).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Str<const N: usize> {
    pub len: u16,
    pub bytes: [u8; N],
}

impl<const N: usize> Str<N> {
    pub fn new(field: &str, s: &str) -> Result<Self, RegionError> {
        if s.len() > N {
            return Err(RegionError::TooLong {
                field: field.to_string(),
                max: N,
                len: s.len(),
            });
        }
        let mut bytes = [0u8; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Str {
            len: s.len() as u16,
            bytes,
        })
    }

    pub fn get(&self, what: &str) -> Result<String, RegionError> {
        let n = usize::from(self.len);
        let b = self
            .bytes
            .get(..n)
            .ok_or_else(|| RegionError::Invalid(format!("{what}: string length {n} > {N}")))?;
        String::from_utf8(b.to_vec())
            .map_err(|_| RegionError::Invalid(format!("{what}: string is not UTF-8")))
    }
}

/// Subsystem: written at configuration time; again when its next controller ID or ANA
/// change count moves (control path).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SubsystemRec {
    pub ana_chgcnt: u64,
    pub nqn: Str<254>,
    pub serial: Str<20>,
    pub model: Str<40>,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    pub next_cntlid: u16,
    pub allow_any_host: u8,
    pub _pad: u8,
}

/// A host allowed into a subsystem.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct HostRec {
    pub subsys: u32,
    pub nqn: Str<254>,
}

/// Namespace (its block device is described by the daemon's boot blob).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct NamespaceRec {
    pub subsys: u32,
    pub nsid: u32,
    pub anagrpid: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
}

/// ANA group: written at configuration time and on every `ana` change.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct AnaGroupRec {
    pub subsys: u32,
    pub id: u32,
    pub chgcnt: u64,
    pub state: u8,
    pub _pad: [u8; 7],
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct ListenerRec {
    pub portid: u16,
    pub trtype: u8,
    pub adrfam: u8,
    pub traddr: Str<256>,
    pub trsvcid: Str<32>,
    pub _pad: [u8; 2],
}

/// Discovery controllers name this instead of a subsystem record.
pub const DISCOVERY_SUBSYS: u32 = u32::MAX;
/// Queued async events a controller record holds (one per notice type at most).
pub const MAX_EVENTS: usize = 32;
/// Outstanding Asynchronous Event Requests a controller record holds.
pub const MAX_AERS: usize = 8;
/// I/O queue IDs a controller record tracks.
pub const MAX_IO_QUEUES: usize = 1024;

/// Controller: written by the control/admin path (Connect, property and feature
/// changes, keep-alive timeout, async events, I/O queue claims).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ControllerRec {
    pub subsys: u32,
    pub cntlid: u16,
    pub num_io_queues: u16,
    pub hostnqn: Str<254>,
    pub hostid: [u8; 16],
    pub cc: u32,
    pub csts: u32,
    pub aec: u32,
    pub kato_ms: u32,
    pub masked: u32,
    /// Namespaces changed and not yet read in the Changed Namespace List (bit NSID - 1).
    pub changed_ns: u32,
    pub _pad: u32,
    pub vwce: u8,
    pub failed: u8,
    pub n_events: u8,
    pub n_aers: u8,
    pub events: [u32; MAX_EVENTS],
    pub aer_cids: [u16; MAX_AERS],
    pub io_queues: [u64; MAX_IO_QUEUES / 64],
}

/// No controller (a queue before Connect).
pub const NO_CTRL: u32 = u32::MAX;

/// The part of a queue record written when the queue is created and at Connect.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct QueueRec {
    /// Controller record index, or NO_CTRL.
    pub ctrl: u32,
    pub cntlid: u16,
    pub qid: u16,
    pub entries: u16,
    /// Slots the queue uses (at most the table's slots per record).
    pub nslots: u16,
    /// The reactor that owns (and alone writes) this record.
    pub reactor: u16,
    pub _pad: u16,
}

/// Where a connection's receive state machine stands; the transport encodes its own
/// state into these fields (see the TCP transport).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct RxPos {
    pub kind: u8,
    pub sink: u8,
    pub slot: u16,
    pub have: u8,
    pub ddgst: u8,
    pub hdr_have: u16,
    pub off: u32,
    pub left: u32,
    pub data: u32,
    pub end: u32,
    pub crc: u32,
    pub digest: [u8; 4],
    /// Bytes read from the socket and not yet consumed.
    pub staged: u32,
}

/// The part of a queue record the owning reactor stores to as commands come and go:
/// plain stores, no checksum (the successor reads it while the writer is frozen and
/// checks it for sense instead).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct QueueDyn {
    pub sqhd: u16,
    pub sq_flow_disabled: u8,
    pub state: u8,
    pub _pad: u32,
    pub rx: RxPos,
}

/// Slot states as the region records them.
pub mod slot {
    pub const FREE: u8 = 0;
    pub const ALLOCATED: u8 = 1;
    pub const EXECUTING: u8 = 2;
    pub const HELD: u8 = 3;
    pub const PARKED: u8 = 4;
    pub const LAST: u8 = PARKED;
}

/// One slot of a queue: its state and the command ID it holds.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SlotRec {
    pub state: u8,
    pub _pad: u8,
    pub cid: u16,
}

// SAFETY: each is #[repr(C)] of integers and byte arrays laid out without padding (the
// asserts below check the sizes add up); every bit pattern is a value.
unsafe impl<const N: usize> Pod for Str<N> {}
// SAFETY: as above.
unsafe impl Pod for SubsystemRec {}
// SAFETY: as above.
unsafe impl Pod for HostRec {}
// SAFETY: as above.
unsafe impl Pod for NamespaceRec {}
// SAFETY: as above.
unsafe impl Pod for AnaGroupRec {}
// SAFETY: as above.
unsafe impl Pod for ListenerRec {}
// SAFETY: as above.
unsafe impl Pod for ControllerRec {}
// SAFETY: as above.
unsafe impl Pod for QueueRec {}
// SAFETY: as above.
unsafe impl Pod for RxPos {}
// SAFETY: as above.
unsafe impl Pod for QueueDyn {}
// SAFETY: as above.
unsafe impl Pod for SlotRec {}

// No padding anywhere: the sizes are the sums of the fields.
const _: () = assert!(size_of::<Str<254>>() == 256);
const _: () = assert!(size_of::<Str<20>>() == 22);
const _: () = assert!(size_of::<Str<40>>() == 42);
const _: () = assert!(size_of::<Str<256>>() == 258);
const _: () = assert!(size_of::<Str<32>>() == 34);
const _: () = assert!(size_of::<SubsystemRec>() == 8 + 256 + 22 + 42 + 6 + 2);
const _: () = assert!(size_of::<HostRec>() == 4 + 256);
const _: () = assert!(size_of::<NamespaceRec>() == 16 + 8 + 32);
const _: () = assert!(size_of::<AnaGroupRec>() == 24);
const _: () = assert!(size_of::<ListenerRec>() == 4 + 258 + 34 + 2);
const _: () = assert!(
    size_of::<ControllerRec>()
        == 8 + 256 + 16 + 20 + 8 + 4 + MAX_EVENTS * 4 + MAX_AERS * 2 + MAX_IO_QUEUES / 8
);
const _: () = assert!(size_of::<QueueRec>() == 16);
const _: () = assert!(size_of::<RxPos>() == 36);
const _: () = assert!(size_of::<QueueDyn>() == 8 + 36);
const _: () = assert!(size_of::<SlotRec>() == 4);
