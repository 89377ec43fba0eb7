//! NVMe/RDMA as an implementation of the NVMe-oF core's transport seam
//! ([`lightpool_nvmf::Transport`], [`lightpool_nvmf::TransportKind`]).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use lightpool_nvmf::region::Region;
use lightpool_nvmf::restore::RegionImage;
use lightpool_nvmf::{
    Adopted, ConnectionInfo, ListenAddr, Transport, TransportContext, TransportError,
    TransportExport, TransportKind,
};

use crate::RdmaTransport;

/// The name configuration gives NVMe/RDMA.
pub const NAME: &str = "rdma";

/// The NVMe/TCP and NVMe/RDMA well-known port, taken when an address names none.
pub const DEFAULT_PORT: u16 = 4420;

fn encode_err(e: postcard::Error) -> TransportError {
    TransportError::Invalid(format!("NVMe/RDMA handover state: {e}"))
}

/// The handover state: the listeners, then whether connections receive from shared
/// receive queues (`[target] rdma_srq`), so that the successor keeps the setting. A
/// predecessor that wrote only the listeners leaves the successor's default; one that
/// reads only the listeners ignores the trailing flag (postcard reads what it needs).
fn encode_state(listeners: &[String]) -> Result<Vec<u8>, TransportError> {
    let mut state = postcard::to_stdvec(listeners).map_err(encode_err)?;
    state.extend(postcard::to_stdvec(&crate::srq::shared_receive_queue()).map_err(encode_err)?);
    Ok(state)
}

fn decode_state(state: &[u8]) -> Result<Vec<String>, TransportError> {
    let (listeners, rest): (Vec<String>, &[u8]) =
        postcard::take_from_bytes(state).map_err(encode_err)?;
    if !rest.is_empty() {
        let srq: bool = postcard::from_bytes(rest).map_err(encode_err)?;
        crate::srq::set_shared_receive_queue(srq);
    }
    Ok(listeners)
}

/// `IP:PORT`, or a bare IP (port 4420).
pub fn parse_addr(addr: &str) -> Result<SocketAddr, TransportError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let ip = addr.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .map_err(|_| {
            TransportError::Invalid(format!(
                "{addr:?} is not an NVMe/RDMA address: give IP:PORT (or IP, port 4420) of an \
                 RDMA device's interface, e.g. 192.168.1.5:4420"
            ))
        })
}

impl Transport for RdmaTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn add_listener(&self, addr: &str) -> Result<ListenAddr, TransportError> {
        let sa = parse_addr(addr)?;
        let bound = self.listen(sa, true).map_err(TransportError::other)?;
        Ok(ListenAddr::rdma(bound))
    }

    fn remove_listener(&self, addr: &ListenAddr) -> Result<(), TransportError> {
        let sa = parse_addr(&addr.to_addr_string())?;
        if !self.unlisten(sa).map_err(TransportError::other)? {
            return Err(TransportError::Invalid(format!(
                "NVMe/RDMA does not listen on {sa}"
            )));
        }
        Ok(())
    }

    fn connections(&self) -> Result<Vec<ConnectionInfo>, TransportError> {
        let per = self
            .ask(|ctx, l| {
                l.conns
                    .iter()
                    .map(|c| {
                        ConnectionInfo::of_queue(
                            NAME,
                            c.queue(),
                            ctx.id(),
                            c.peer().to_string(),
                            c.local().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(TransportError::other)?;
        Ok(per.into_iter().flatten().collect())
    }

    fn disconnect(&self, reactor: usize, peer: &str) -> Result<bool, TransportError> {
        RdmaTransport::disconnect(self, reactor, peer).map_err(TransportError::other)
    }

    /// RDMA connections do not travel: they end here (the hosts reconnect to the
    /// successor), and only the listener addresses are exported.
    fn quiesce_and_export(
        &self,
        _fd_base: usize,
        timeout: Duration,
    ) -> Result<Option<TransportExport>, TransportError> {
        let Some(addrs) = self
            .quiesce_and_end(timeout)
            .map_err(TransportError::other)?
        else {
            return Ok(None);
        };
        let listeners: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        Ok(Some(TransportExport {
            listeners: listeners.len(),
            connections: 0,
            commands: 0,
            state: encode_state(&listeners)?,
            fds: Vec::new(),
        }))
    }

    fn resume(&self) -> Result<(), TransportError> {
        RdmaTransport::resume(self).map_err(TransportError::other)
    }
}

/// Makes and adopts NVMe/RDMA transports.
pub struct RdmaKind;

impl TransportKind for RdmaKind {
    fn name(&self) -> &'static str {
        NAME
    }

    fn trtype(&self) -> u8 {
        lightpool_spec::log::trtype::RDMA
    }

    fn create(&self, ctx: TransportContext) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(Arc::new(
            RdmaTransport::new(ctx.target, ctx.reactors).map_err(TransportError::other)?,
        ))
    }

    /// The predecessor's listener addresses: listened on again at `resume` (the
    /// predecessor holds them until it lets go); no connection comes along.
    fn adopt(
        &self,
        ctx: TransportContext,
        _region: Arc<Region>,
        _image: Arc<RegionImage>,
        state: &[u8],
        _fds: &mut [Option<OwnedFd>],
    ) -> Result<(Arc<dyn Transport>, Adopted), TransportError> {
        let listeners = decode_state(state)?;
        let addrs = listeners
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let t = RdmaTransport::new(ctx.target, ctx.reactors).map_err(TransportError::other)?;
        t.set_relisten(addrs);
        let adopted = Adopted {
            listeners: listeners.len(),
            ..Adopted::default()
        };
        Ok((Arc::new(t), adopted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_default_port() {
        assert_eq!(
            parse_addr("10.0.2.15").expect("bare IPv4"),
            "10.0.2.15:4420".parse().expect("literal")
        );
        assert_eq!(
            parse_addr("10.0.2.15:4421").expect("IP:PORT"),
            "10.0.2.15:4421".parse().expect("literal")
        );
        assert_eq!(
            parse_addr("[fd00::1]").expect("bare IPv6"),
            "[fd00::1]:4420".parse().expect("literal")
        );
        assert!(parse_addr("rxe0").is_err());
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn the_handover_state_carries_the_srq_setting_and_reads_the_old_form() {
        let l = vec!["10.0.0.1:4420".to_string()];
        crate::srq::set_shared_receive_queue(true);
        let state = encode_state(&l).expect("encodes");
        crate::srq::set_shared_receive_queue(false);
        assert_eq!(decode_state(&state).expect("decodes"), l);
        assert!(
            crate::srq::shared_receive_queue(),
            "the successor takes the setting"
        );
        // A predecessor's state without the flag: the listeners, the setting untouched.
        let old = postcard::to_stdvec(&l).expect("old form");
        crate::srq::set_shared_receive_queue(false);
        assert_eq!(decode_state(&old).expect("decodes"), l);
        assert!(!crate::srq::shared_receive_queue());
        // An older binary reads only the listeners from the new form.
        let back: Vec<String> = postcard::from_bytes(&state).expect("old reader");
        assert_eq!(back, l);
    }
}
