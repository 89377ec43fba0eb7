//! The NVMe status of what a block device answered: a compare's outcome, and an
//! error of the device as the status of the command it failed.

use lightpool_bdev::IoStatus;
use lightpool_spec::nvme;
use lightpool_spec::status::{generic, Status};

use super::{Request, Xfer};

pub(super) fn compare_result<T>(r: &Request<T>) -> Status {
    let (Some(host), Some(media)) = (r.buf.get(), r.aux.get()) else {
        return Status::generic(generic::INTERNAL_ERROR);
    };
    let len = match r.xfer {
        Xfer::H2C { len, .. } => len as usize,
        _ => 0,
    };
    if host.as_slice()[..len] == media.as_slice()[..len] {
        Status::SUCCESS
    } else {
        Status::media(lightpool_spec::status::media::COMPARE_FAILURE).with_dnr()
    }
}

/// The NVMe status of a block device's answer to command `opcode`. A medium error
/// (EIO) is the media status of the command (Unrecovered Read Error for a read or
/// compare, Write Fault for a write), with DNR: the same blocks fail again, and the
/// host reports it instead of retrying. No space left (ENOSPC) is Capacity Exceeded,
/// as a thin device's own refusal. Any other error (a lost path, a timeout of a
/// device behind the network) is Internal Error without DNR: a retry may succeed.
pub(super) fn bdev_status(st: IoStatus, opcode: u8) -> Status {
    use lightpool_spec::status::media;
    match st {
        IoStatus::Success => Status::SUCCESS,
        IoStatus::OutOfRange => Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr(),
        IoStatus::ReadOnly => Status::generic(NAMESPACE_WRITE_PROTECTED).with_dnr(),
        IoStatus::CapacityExceeded | IoStatus::Io(libc::ENOSPC) => {
            Status::generic(generic::CAPACITY_EXCEEDED).with_dnr()
        }
        IoStatus::Io(libc::EIO) => match opcode {
            nvme::io_opcode::READ | nvme::io_opcode::COMPARE => {
                Status::media(media::UNRECOVERED_READ_ERROR).with_dnr()
            }
            nvme::io_opcode::WRITE | nvme::io_opcode::WRITE_ZEROES => {
                Status::media(media::WRITE_FAULT).with_dnr()
            }
            _ => Status::generic(generic::INTERNAL_ERROR),
        },
        IoStatus::Io(_) => Status::generic(generic::INTERNAL_ERROR),
    }
}

/// Generic status 20h (NVMe 1.4+): Namespace is Write Protected.
pub(crate) const NAMESPACE_WRITE_PROTECTED: u8 = 0x20;

#[cfg(test)]
mod tests {
    use super::*;

    /// A thin device out of space answers Capacity Exceeded (generic 81h) with DNR: the
    /// host must not retry the same write blindly.
    #[test]
    fn capacity_exceeded_is_generic_81h() {
        let s = bdev_status(IoStatus::CapacityExceeded, nvme::io_opcode::WRITE);
        assert_eq!(s, Status::generic(0x81).with_dnr());
        assert_eq!(s, Status::generic(generic::CAPACITY_EXCEEDED).with_dnr());
        // A backend's ENOSPC (a file on a full file system) is the same.
        assert_eq!(
            bdev_status(IoStatus::Io(libc::ENOSPC), nvme::io_opcode::WRITE),
            s
        );
    }

    /// A medium error is the command's media status (SCT 2) with DNR; other errors
    /// are Internal Error, retryable.
    #[test]
    fn medium_errors_are_media_statuses_of_the_command() {
        use lightpool_spec::status::media;
        let eio = IoStatus::Io(libc::EIO);
        for op in [nvme::io_opcode::READ, nvme::io_opcode::COMPARE] {
            assert_eq!(
                bdev_status(eio, op),
                Status::media(media::UNRECOVERED_READ_ERROR).with_dnr()
            );
        }
        for op in [nvme::io_opcode::WRITE, nvme::io_opcode::WRITE_ZEROES] {
            assert_eq!(
                bdev_status(eio, op),
                Status::media(media::WRITE_FAULT).with_dnr()
            );
        }
        assert_eq!(
            bdev_status(eio, nvme::io_opcode::FLUSH),
            Status::generic(generic::INTERNAL_ERROR)
        );
        assert_eq!(
            bdev_status(IoStatus::Io(libc::ETIMEDOUT), nvme::io_opcode::READ),
            Status::generic(generic::INTERNAL_ERROR)
        );
    }
}
