//! What a transport tells the target about itself. Transports depend on this crate,
//! never the reverse (as SPDK's nvmf_transport.h): they frame capsules, this crate
//! executes them through [`crate::NvmfQueue`].

use lightpool_spec::log::{adrfam, trtype};

/// An address a transport listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    pub trtype: u8,
    pub adrfam: u8,
    pub traddr: String,
    pub trsvcid: String,
}

impl ListenAddr {
    pub fn tcp(addr: std::net::SocketAddr) -> ListenAddr {
        ListenAddr {
            trtype: trtype::TCP,
            adrfam: if addr.is_ipv4() {
                adrfam::IPV4
            } else {
                adrfam::IPV6
            },
            traddr: addr.ip().to_string(),
            trsvcid: addr.port().to_string(),
        }
    }
}

/// A listener as the discovery log lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    pub addr: ListenAddr,
    pub portid: u16,
}
