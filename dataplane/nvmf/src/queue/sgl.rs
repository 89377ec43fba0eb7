//! What data a command moves, decided from its opcode and SGL before any buffer is
//! used: the unkeyed descriptors of NVMe/TCP (in-capsule offset, transport data block)
//! and the keyed data blocks of NVMe/RDMA.

use lightpool_spec::nvme::{
    self, DataDirection, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{generic, Status};

use super::Xfer;

/// The direction a command moves data in, from its opcode (and fabrics type).
fn direction(sqe: &Sqe) -> DataDirection {
    if sqe.opcode == nvme::admin_opcode::FABRICS {
        match lightpool_spec::fabrics::fctype(sqe) {
            lightpool_spec::fabrics::fctype::CONNECT
            | lightpool_spec::fabrics::fctype::AUTH_SEND => DataDirection::HostToController,
            lightpool_spec::fabrics::fctype::AUTH_RECV => DataDirection::ControllerToHost,
            _ => DataDirection::None,
        }
    } else {
        nvme::data_transfer(sqe.opcode)
    }
}

/// As [`classify`], for a fabric of keyed SGL data blocks (NVMe/RDMA 1.0, "SGL
/// descriptors"): in-capsule data by a Data Block (Offset) descriptor, data in the
/// host's memory by a Keyed SGL Data Block (Address, or Invalidate Key), whose length
/// is 24 bits; any other descriptor type is invalid for the transport, and a transfer
/// longer than MDTS has an invalid length.
pub(super) fn classify_keyed(
    sqe: &Sqe,
    incapsule_len: u32,
    in_capsule_max: u32,
    max_transfer: u32,
) -> Result<Xfer, Status> {
    use lightpool_spec::rdma::KeyedSgl;
    let invalid_len = || Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr();
    let dptr = &sqe.dptr;
    let id = dptr[15];
    if id == SGL_DATA_BLOCK_OFFSET {
        // In-capsule data: the unkeyed checks are the same.
        return classify(sqe, incapsule_len, in_capsule_max, max_transfer);
    }
    let dir = direction(sqe);
    if dir == DataDirection::None {
        if incapsule_len != 0 {
            return Err(invalid_len());
        }
        return Ok(Xfer::None);
    }
    if !KeyedSgl::is_keyed(id)
        || !matches!(
            id & 0x0F,
            nvme::sgl_subtype::ADDRESS | lightpool_spec::rdma::SGL_SUBTYPE_INVALIDATE_KEY
        )
    {
        return Err(Status::generic(generic::SGL_DESCRIPTOR_TYPE_INVALID).with_dnr());
    }
    if incapsule_len != 0 {
        return Err(invalid_len());
    }
    let sgl = KeyedSgl::from_bytes(dptr);
    if sgl.length == 0 {
        return Ok(Xfer::None);
    }
    if sgl.length > max_transfer {
        return Err(invalid_len());
    }
    match dir {
        DataDirection::HostToController => Ok(Xfer::H2C {
            len: sgl.length,
            in_capsule: false,
        }),
        DataDirection::ControllerToHost => Ok(Xfer::C2H { len: sgl.length }),
        _ => Err(Status::generic(generic::INVALID_FIELD).with_dnr()),
    }
}

/// What data an SQE moves: direction from the opcode (fabrics commands by fctype),
/// length and placement from the SGL.
pub(super) fn classify(
    sqe: &Sqe,
    incapsule_len: u32,
    in_capsule_max: u32,
    max_transfer: u32,
) -> Result<Xfer, Status> {
    let dir = direction(sqe);
    let sgl = sqe.sgl();
    let invalid_len = || Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr();
    match dir {
        DataDirection::None => {
            if incapsule_len != 0 {
                return Err(invalid_len());
            }
            Ok(Xfer::None)
        }
        DataDirection::Bidirectional => Err(Status::generic(generic::INVALID_FIELD).with_dnr()),
        DataDirection::HostToController => {
            if sgl.length == 0 {
                if incapsule_len != 0 {
                    return Err(invalid_len());
                }
                return Ok(Xfer::None);
            }
            if sgl.length > max_transfer.max(in_capsule_max) {
                return Err(invalid_len());
            }
            match sgl.id {
                SGL_DATA_BLOCK_OFFSET => {
                    if sgl.address != 0 {
                        return Err(Status::generic(generic::INVALID_SGL_OFFSET).with_dnr());
                    }
                    if sgl.length > in_capsule_max || sgl.length != incapsule_len {
                        return Err(invalid_len());
                    }
                    Ok(Xfer::H2C {
                        len: sgl.length,
                        in_capsule: true,
                    })
                }
                SGL_TRANSPORT_DATA_BLOCK => {
                    if incapsule_len != 0 {
                        return Err(invalid_len());
                    }
                    Ok(Xfer::H2C {
                        len: sgl.length,
                        in_capsule: false,
                    })
                }
                _ => Err(Status::generic(generic::SGL_DESCRIPTOR_TYPE_INVALID).with_dnr()),
            }
        }
        DataDirection::ControllerToHost => {
            if incapsule_len != 0 {
                return Err(invalid_len());
            }
            if sgl.length == 0 {
                return Ok(Xfer::None);
            }
            if sgl.id != SGL_TRANSPORT_DATA_BLOCK {
                return Err(Status::generic(generic::SGL_DESCRIPTOR_TYPE_INVALID).with_dnr());
            }
            if sgl.length > max_transfer {
                return Err(invalid_len());
            }
            Ok(Xfer::C2H { len: sgl.length })
        }
    }
}
