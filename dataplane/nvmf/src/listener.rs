//! Listener addresses as the discovery log and the state region know them.

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
    /// `traddr:trsvcid`, with brackets around an IPv6 address: what a transport's
    /// [`crate::Transport::add_listener`] takes back.
    pub fn to_addr_string(&self) -> String {
        if self.adrfam == adrfam::IPV6 {
            format!("[{}]:{}", self.traddr, self.trsvcid)
        } else {
            format!("{}:{}", self.traddr, self.trsvcid)
        }
    }

    pub fn tcp(addr: std::net::SocketAddr) -> ListenAddr {
        ListenAddr::ip(trtype::TCP, addr)
    }

    /// An NVMe/RDMA listener (RDMA_CM over IP: RoCEv2, iWARP).
    pub fn rdma(addr: std::net::SocketAddr) -> ListenAddr {
        ListenAddr::ip(trtype::RDMA, addr)
    }

    fn ip(trtype: u8, addr: std::net::SocketAddr) -> ListenAddr {
        ListenAddr {
            trtype,
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
