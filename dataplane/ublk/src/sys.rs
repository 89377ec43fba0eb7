//! The kernel's ublk interface (include/uapi/linux/ublk_cmd.h), the part LightPool uses:
//! the control commands on /dev/ublk-control, the I/O commands on /dev/ublkcN, the
//! descriptor each request is described by, and the parameters of a device. Layouts are
//! the kernel's (`repr(C)`, sizes asserted in the tests).

/// `_IOC(dir, 'u', nr, size)`: the ioctl-encoded command opcodes the kernel accepts
/// since 6.4 (the plain numbers are a legacy option of its configuration).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}
const IOC_READ: u32 = 2;
const IOC_RW: u32 = 3;

pub const CTRL_CMD_SIZE: usize = std::mem::size_of::<CtrlCmd>();
pub const IO_CMD_SIZE: usize = std::mem::size_of::<IoCmd>();

pub const U_CMD_GET_DEV_INFO: u32 = ioc(IOC_READ, 0x02, CTRL_CMD_SIZE);
pub const U_CMD_ADD_DEV: u32 = ioc(IOC_RW, 0x04, CTRL_CMD_SIZE);
pub const U_CMD_DEL_DEV: u32 = ioc(IOC_RW, 0x05, CTRL_CMD_SIZE);
pub const U_CMD_START_DEV: u32 = ioc(IOC_RW, 0x06, CTRL_CMD_SIZE);
pub const U_CMD_STOP_DEV: u32 = ioc(IOC_RW, 0x07, CTRL_CMD_SIZE);
pub const U_CMD_SET_PARAMS: u32 = ioc(IOC_RW, 0x08, CTRL_CMD_SIZE);

pub const U_IO_FETCH_REQ: u32 = ioc(IOC_RW, 0x20, IO_CMD_SIZE);
pub const U_IO_COMMIT_AND_FETCH_REQ: u32 = ioc(IOC_RW, 0x21, IO_CMD_SIZE);

/// What a FETCH / COMMIT_AND_FETCH completes with: a request is waiting in its tag's
/// descriptor, or the device is going away and the tag is done.
pub const IO_RES_OK: i32 = 0;
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

/// The device takes ioctl-encoded commands (`U_*`).
pub const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;

pub const IO_OP_READ: u8 = 0;
pub const IO_OP_WRITE: u8 = 1;
pub const IO_OP_FLUSH: u8 = 2;
pub const IO_OP_DISCARD: u8 = 3;
pub const IO_OP_WRITE_SAME: u8 = 4;
pub const IO_OP_WRITE_ZEROES: u8 = 5;

pub const ATTR_READ_ONLY: u32 = 1 << 0;
pub const ATTR_VOLATILE_CACHE: u32 = 1 << 2;

pub const PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const PARAM_TYPE_DISCARD: u32 = 1 << 1;

/// Descriptors of queue `q` are mapped from the char device at `q * MAX_CMD_BUF`:
/// room for the largest queue depth, page-rounded.
pub const MAX_QUEUE_DEPTH: u16 = 4096;
pub const MAX_CMD_BUF: usize =
    (MAX_QUEUE_DEPTH as usize * std::mem::size_of::<IoDesc>()).div_ceil(4096) * 4096;

/// `struct ublksrv_ctrl_cmd`: the payload of a control command (an SQE128's command area).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CtrlCmd {
    pub dev_id: u32,
    /// `u16::MAX` for a command that is not about one queue.
    pub queue_id: u16,
    pub len: u16,
    pub addr: u64,
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}

/// `struct ublksrv_ctrl_dev_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DevInfo {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    /// The server's own: the kernel keeps it and hands it back (LightPool marks its
    /// devices here, see `crate::ctrl::MARK`).
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}

/// `struct ublksrv_io_desc`: one request, written by the kernel into the mapped array
/// at its tag before the tag's FETCH completes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoDesc {
    /// Operation in bits 0-7, flags above.
    pub op_flags: u32,
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

/// `struct ublksrv_io_cmd`: the payload of an I/O command (a plain SQE's 16 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct IoCmd {
    pub q_id: u16,
    pub tag: u16,
    /// COMMIT: bytes done (reads, writes), 0, or a negative errno.
    pub result: i32,
    /// The server's buffer for this tag (the kernel copies to and from it).
    pub addr: u64,
}

/// `struct ublk_param_basic`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ParamBasic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}

/// `struct ublk_param_discard`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ParamDiscard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}

/// `struct ublk_params` up to the discard parameters (what SET_PARAMS needs here; the
/// kernel takes `len` bytes and leaves the rest zero).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Params {
    pub len: u32,
    pub types: u32,
    pub basic: ParamBasic,
    pub discard: ParamDiscard,
}

/// The bytes of a plain-old-data command, for an SQE's command area.
pub fn cmd_bytes<T: Copy, const N: usize>(v: &T) -> [u8; N] {
    let mut out = [0u8; N];
    let n = std::mem::size_of::<T>().min(N);
    // SAFETY: `T` is one of this module's repr(C) structs of integers (no padding
    // is read uninitialised: every field is an integer and the structs are laid out
    // without holes, see the size tests); `n` bytes fit both source and destination.
    unsafe { std::ptr::copy_nonoverlapping((v as *const T).cast::<u8>(), out.as_mut_ptr(), n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_are_the_kernels() {
        assert_eq!(size_of::<CtrlCmd>(), 32);
        assert_eq!(size_of::<DevInfo>(), 64);
        assert_eq!(size_of::<IoDesc>(), 24);
        assert_eq!(size_of::<IoCmd>(), 16);
        assert_eq!(size_of::<ParamBasic>(), 32);
        assert_eq!(size_of::<ParamDiscard>(), 20);
        assert_eq!(std::mem::offset_of!(Params, basic), 8);
        assert_eq!(std::mem::offset_of!(Params, discard), 40);
        assert_eq!(MAX_CMD_BUF, 24 * 4096);
    }

    #[test]
    fn opcodes_are_the_kernels() {
        // The values of UBLK_U_CMD_* / UBLK_U_IO_* in the kernel's header.
        assert_eq!(U_CMD_ADD_DEV, 0xc020_7504);
        assert_eq!(U_CMD_GET_DEV_INFO, 0x8020_7502);
        assert_eq!(U_CMD_SET_PARAMS, 0xc020_7508);
        assert_eq!(U_IO_FETCH_REQ, 0xc010_7520);
        assert_eq!(U_IO_COMMIT_AND_FETCH_REQ, 0xc010_7521);
    }

    #[test]
    fn command_bytes_are_little_endian_fields_in_order() {
        let c = IoCmd {
            q_id: 1,
            tag: 2,
            result: -5,
            addr: 0x1122_3344_5566_7788,
        };
        let b: [u8; 16] = cmd_bytes(&c);
        assert_eq!(&b[0..2], &[1, 0]);
        assert_eq!(&b[2..4], &[2, 0]);
        assert_eq!(&b[4..8], &(-5i32).to_le_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    }
}
