//! A receiver carried across a hot upgrade: exported mid-PDU as a plain value, and
//! rebuilt from it in the next binary, which checks it before trusting it.

use lightpool_spec::tcp::{
    self as spec, CommonHeader, PduType, TermError, COMMON_HEADER_SIZE, DIGEST_SIZE, MAX_HEADER_BUF,
};
use serde::{Deserialize, Serialize};

use super::{Digests, Receiver, RxConfig, RxState};

/// Everything a receiver holds: where it stands, what was negotiated, the header bytes
/// gathered and the bytes read from the stream and not consumed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxSnapshot<K> {
    pub state: RxState<K>,
    pub digests: Digests,
    pub connected: bool,
    pub hdr: Vec<u8>,
    pub staged: Vec<u8>,
}

/// Why a snapshot cannot be a receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("{what} of {len} bytes is larger than this binary's {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{have} header bytes gathered while waiting for the common header")]
    CommonHeader { have: usize },
    #[error("a header in progress without its common header")]
    NoCommonHeader,
    #[error("a header in progress that this end refuses (fatal error status {:#x} at byte {})", .0.fes, .0.fei)]
    InvalidHeader(TermError),
    #[error("{have} header bytes gathered of a {need}-byte header")]
    HeaderOverrun { have: usize, need: usize },
    #[error("{0} data digest bytes gathered")]
    Digest(u8),
}

impl<K: Copy> Receiver<K> {
    /// Where the receiver stands, as a plain value.
    pub fn export(&self) -> RxSnapshot<K> {
        RxSnapshot {
            state: self.state,
            digests: self.digests,
            connected: self.connected,
            hdr: self.header().to_vec(),
            staged: self.staged().to_vec(),
        }
    }

    /// A receiver that goes on where `snap` stood. The owner checks its sinks (that
    /// they name what it still has); this checks the framing.
    pub fn import(cfg: RxConfig, snap: &RxSnapshot<K>) -> Result<Receiver<K>, ImportError> {
        let mut r = Receiver::new(cfg);
        let too_large = |what, len, max| ImportError::TooLarge { what, len, max };
        if snap.hdr.len() > MAX_HEADER_BUF {
            return Err(too_large("a header", snap.hdr.len(), MAX_HEADER_BUF));
        }
        if snap.staged.len() > r.buf.len() {
            return Err(too_large("staged input", snap.staged.len(), r.buf.len()));
        }
        let have = snap.hdr.len();
        if let Some(ch) = snap.hdr.get(..COMMON_HEADER_SIZE) {
            r.ch = CommonHeader::parse(ch.try_into().expect("8 bytes"));
            if let Ok(t) = PduType::try_from(r.ch.pdu_type) {
                r.t = t;
            }
        }
        match snap.state {
            RxState::Ch if have > COMMON_HEADER_SIZE => {
                return Err(ImportError::CommonHeader { have })
            }
            RxState::Hdr => {
                if have < COMMON_HEADER_SIZE {
                    return Err(ImportError::NoCommonHeader);
                }
                // Checked again: the bytes come from outside this process.
                let (hd, dd) = if snap.connected {
                    (snap.digests.header, snap.digests.data)
                } else {
                    (false, false)
                };
                r.t = spec::validate_header_for(
                    cfg.role,
                    &r.ch,
                    hd,
                    dd,
                    cfg.maxh2cdata,
                    cfg.in_capsule_max,
                )
                .map_err(ImportError::InvalidHeader)?;
                let need = r.ch.header_end() as usize;
                if have > need {
                    return Err(ImportError::HeaderOverrun { have, need });
                }
            }
            RxState::Ddgst { have, .. } if usize::from(have) >= DIGEST_SIZE => {
                return Err(ImportError::Digest(have))
            }
            _ => {}
        }
        r.state = snap.state;
        r.digests = snap.digests;
        r.connected = snap.connected;
        r.hdr[..have].copy_from_slice(&snap.hdr);
        r.hdr_have = have;
        r.buf[..snap.staged.len()].copy_from_slice(&snap.staged);
        r.end = snap.staged.len();
        Ok(r)
    }
}
