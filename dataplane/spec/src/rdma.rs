//! NVMe/RDMA wire types (NVMe over Fabrics 1.1, "RDMA Transport Binding" and the
//! NVMe/RDMA transport specification 1.0): the private data of the RDMA_CM connect
//! exchange, keyed SGL data block descriptors, and the discovery log's transport
//! specific address subtype (TSAS) for RDMA.

use crate::bytes::{put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::nvme::{sgl_subtype, sgl_type, SGL_DESCRIPTOR_SIZE};
use crate::SpecError;

/// Bytes of the host's RDMA_CM REQUEST private data (NVMe/RDMA 1.0, figure 3).
pub const CM_REQ_SIZE: usize = 32;
/// Bytes of the controller's RDMA_CM ACCEPT private data.
pub const CM_REP_SIZE: usize = 32;
/// Bytes of the controller's RDMA_CM REJECT private data.
pub const CM_REJ_SIZE: usize = 4;
/// The one record format defined (RECFMT).
pub const CM_RECFMT: u16 = 0;

/// Reject status codes (STS) of the REJECT private data.
pub mod cm_reject {
    /// The private data is shorter than the record format needs.
    pub const INVALID_LEN: u16 = 0x01;
    pub const INVALID_RECFMT: u16 = 0x02;
    pub const INVALID_QID: u16 = 0x03;
    pub const INVALID_HSQSIZE: u16 = 0x04;
    pub const INVALID_HRQSIZE: u16 = 0x05;
    pub const NO_RESOURCES: u16 = 0x06;
    pub const INVALID_IRD: u16 = 0x07;
    pub const INVALID_ORD: u16 = 0x08;
}

/// The host's connect request: record format, queue ID, host receive queue size and
/// host send queue size (both 0's based in hsqsize, as the Connect command's SQSIZE;
/// hrqsize is the count of receives the host posted), controller ID (admin queue:
/// 0xFFFF, dynamic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CmRequest {
    pub recfmt: u16,
    pub qid: u16,
    pub hrqsize: u16,
    pub hsqsize: u16,
    pub cntlid: u16,
}

impl CmRequest {
    /// Parses the private data of a connect request; shorter than the fields it needs
    /// is an error (rejected with [`cm_reject::INVALID_LEN`]).
    pub fn parse(b: &[u8]) -> Result<CmRequest, SpecError> {
        if b.len() < 10 {
            return Err(SpecError::TooShort {
                need: 10,
                got: b.len(),
            });
        }
        Ok(CmRequest {
            recfmt: u16_at(b, 0),
            qid: u16_at(b, 2),
            hrqsize: u16_at(b, 4),
            hsqsize: u16_at(b, 6),
            cntlid: u16_at(b, 8),
        })
    }

    pub fn encode(&self) -> [u8; CM_REQ_SIZE] {
        let mut b = [0u8; CM_REQ_SIZE];
        put_u16(&mut b, 0, self.recfmt);
        put_u16(&mut b, 2, self.qid);
        put_u16(&mut b, 4, self.hrqsize);
        put_u16(&mut b, 6, self.hsqsize);
        put_u16(&mut b, 8, self.cntlid);
        b
    }
}

/// The controller's accept: record format and controller receive queue size (how many
/// capsules it has receives posted for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CmReply {
    pub recfmt: u16,
    pub crqsize: u16,
}

impl CmReply {
    pub fn encode(&self) -> [u8; CM_REP_SIZE] {
        let mut b = [0u8; CM_REP_SIZE];
        put_u16(&mut b, 0, self.recfmt);
        put_u16(&mut b, 2, self.crqsize);
        b
    }

    pub fn parse(b: &[u8]) -> Result<CmReply, SpecError> {
        if b.len() < 4 {
            return Err(SpecError::TooShort {
                need: 4,
                got: b.len(),
            });
        }
        Ok(CmReply {
            recfmt: u16_at(b, 0),
            crqsize: u16_at(b, 2),
        })
    }
}

/// The controller's reject: record format and a [`cm_reject`] status.
pub fn cm_reject_data(status: u16) -> [u8; CM_REJ_SIZE] {
    let mut b = [0u8; CM_REJ_SIZE];
    put_u16(&mut b, 0, CM_RECFMT);
    put_u16(&mut b, 2, status);
    b
}

/// Sub type of a keyed SGL data block that asks the target to invalidate the key with
/// its response (Send with Invalidate).
pub const SGL_SUBTYPE_INVALIDATE_KEY: u8 = 0xF;
/// Identifier byte: Keyed SGL Data Block, sub type Address.
pub const SGL_KEYED_ADDRESS: u8 = (sgl_type::KEYED_DATA_BLOCK << 4) | sgl_subtype::ADDRESS;
/// Identifier byte: Keyed SGL Data Block, sub type Invalidate Key.
pub const SGL_KEYED_INVALIDATE: u8 = (sgl_type::KEYED_DATA_BLOCK << 4) | SGL_SUBTYPE_INVALIDATE_KEY;

/// A keyed SGL data block descriptor (NVMe Base 2.0, "Keyed SGL Data Block"): address
/// 0..8, length 8..11 (24 bits), key 11..15, identifier at byte 15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyedSgl {
    pub address: u64,
    pub length: u32,
    pub key: u32,
    pub id: u8,
}

impl KeyedSgl {
    pub fn from_bytes(b: &[u8; SGL_DESCRIPTOR_SIZE]) -> KeyedSgl {
        KeyedSgl {
            address: u64_at(b, 0),
            length: u32_at(b, 8) & 0x00FF_FFFF,
            key: u32_at(b, 11),
            id: b[15],
        }
    }

    pub fn to_bytes(&self) -> [u8; SGL_DESCRIPTOR_SIZE] {
        let mut b = [0u8; SGL_DESCRIPTOR_SIZE];
        put_u64(&mut b, 0, self.address);
        put_u32(&mut b, 11, self.key);
        // The key's low bytes overlap nothing: length takes bytes 8..11 only.
        b[8..11].copy_from_slice(&self.length.to_le_bytes()[..3]);
        b[15] = self.id;
        b
    }

    /// Whether the identifier says keyed data block (any sub type).
    pub fn is_keyed(id: u8) -> bool {
        id >> 4 == sgl_type::KEYED_DATA_BLOCK
    }

    /// Whether the host asks for the key to be invalidated with the response.
    pub fn invalidate(&self) -> bool {
        self.id & 0x0F == SGL_SUBTYPE_INVALIDATE_KEY
    }
}

/// The RDMA TSAS of a discovery log entry: QP service type, provider type, connection
/// management service, partition key.
pub mod tsas {
    /// Byte 0, RDMA_QPTYPE: reliable connected.
    pub const QPTYPE_CONNECTED: u8 = 1;
    /// Byte 1, RDMA_PRTYPE: no provider specified.
    pub const PRTYPE_NOT_SPECIFIED: u8 = 1;
    /// Byte 2, RDMA_CMS: RDMA_CM.
    pub const CMS_RDMA_CM: u8 = 1;

    /// The 256-byte TSAS for an RDMA listener served through rdma_cm, partition key 0.
    pub fn rdma_cm() -> [u8; crate::log::TSAS_SIZE] {
        let mut t = [0u8; crate::log::TSAS_SIZE];
        t[0] = QPTYPE_CONNECTED;
        t[1] = PRTYPE_NOT_SPECIFIED;
        t[2] = CMS_RDMA_CM;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cm_request_layout() {
        // As the Linux host builds it for an I/O queue: recfmt 0, qid 1, hrqsize 128,
        // hsqsize 127 (0's based), cntlid 5.
        let b = [0, 0, 1, 0, 128, 0, 127, 0, 5, 0, 0, 0];
        let r = CmRequest::parse(&b).expect("long enough");
        assert_eq!(
            r,
            CmRequest {
                recfmt: 0,
                qid: 1,
                hrqsize: 128,
                hsqsize: 127,
                cntlid: 5
            }
        );
        assert_eq!(CmRequest::parse(&r.encode()).expect("round trip"), r);
        assert!(CmRequest::parse(&b[..9]).is_err());
    }

    #[test]
    fn cm_reply_and_reject_layout() {
        let rep = CmReply {
            recfmt: 0,
            crqsize: 128,
        };
        let b = rep.encode();
        assert_eq!(&b[..4], &[0, 0, 128, 0]);
        assert_eq!(CmReply::parse(&b).expect("parse"), rep);
        assert_eq!(
            cm_reject_data(cm_reject::INVALID_HSQSIZE),
            [0, 0, 0x04, 0x00]
        );
    }

    #[test]
    fn keyed_sgl_layout() {
        let mut b = [0u8; SGL_DESCRIPTOR_SIZE];
        b[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        b[8..11].copy_from_slice(&[0x00, 0x00, 0x02]); // 128 KiB
        b[11..15].copy_from_slice(&0xAABB_CCDDu32.to_le_bytes());
        b[15] = 0x4F;
        let s = KeyedSgl::from_bytes(&b);
        assert_eq!(s.address, 0x1122_3344_5566_7788);
        assert_eq!(s.length, 128 * 1024);
        assert_eq!(s.key, 0xAABB_CCDD);
        assert!(KeyedSgl::is_keyed(s.id));
        assert!(s.invalidate());
        assert_eq!(s.to_bytes(), b);
        assert_eq!(SGL_KEYED_ADDRESS, 0x40);
        assert_eq!(SGL_KEYED_INVALIDATE, 0x4F);
    }

    #[test]
    fn tsas_for_rdma_cm() {
        let t = tsas::rdma_cm();
        assert_eq!(&t[..4], &[1, 1, 1, 0]);
        assert!(t[3..].iter().all(|&b| b == 0));
    }
}
