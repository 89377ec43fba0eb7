//! NVMe/TCP as one implementation of the NVMe-oF core's transport seam
//! ([`lightpool_nvmf::Transport`], [`lightpool_nvmf::TransportKind`]).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use lightpool_nvmf::region::Region;
use lightpool_nvmf::restore::RegionImage;
use lightpool_nvmf::{
    Adopted, ConnectionInfo, EngineSpec, ListenAddr, Transport, TransportContext, TransportError,
    TransportExport, TransportKind,
};

use crate::{Ktls, Secure, TcpState, TcpTransport};

/// The name configuration gives NVMe/TCP.
pub const NAME: &str = "tcp";

fn encode_err(e: postcard::Error) -> TransportError {
    TransportError::Invalid(format!("NVMe/TCP handover state: {e}"))
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn add_listener(&self, addr: &str) -> Result<ListenAddr, TransportError> {
        self.add_secure_listener(addr, Secure::None)
    }

    fn add_secure_listener(
        &self,
        addr: &str,
        secure: Secure,
    ) -> Result<ListenAddr, TransportError> {
        self.add_tls_listener(addr, secure, Ktls::Auto)
    }

    fn add_tls_listener(
        &self,
        addr: &str,
        secure: Secure,
        ktls: Ktls,
    ) -> Result<ListenAddr, TransportError> {
        let sa: SocketAddr = addr.parse().map_err(|_| {
            TransportError::Invalid(format!(
                "{addr:?} is not an NVMe/TCP address: give IP:PORT, e.g. 0.0.0.0:4420 or [::1]:4420"
            ))
        })?;
        let bound = self
            .listen_tls(sa, secure, ktls)
            .map_err(TransportError::other)?;
        Ok(ListenAddr::tcp(bound))
    }

    fn add_engine_listener(
        &self,
        addr: &str,
        engine: &EngineSpec,
    ) -> Result<ListenAddr, TransportError> {
        let sa: SocketAddr = addr.parse().map_err(|_| {
            TransportError::Invalid(format!(
                "{addr:?} is not an NVMe/TCP address: give IP:PORT, e.g. 0.0.0.0:4420"
            ))
        })?;
        match engine.engine.as_str() {
            "" | "kernel" => self.add_listener(addr),
            #[cfg(feature = "af_xdp")]
            "af_xdp" => {
                let mode = if engine.mode.is_empty() {
                    "native"
                } else {
                    engine.mode.as_str()
                };
                let bound = self
                    .listen_af_xdp(sa, &engine.interface, mode)
                    .map_err(TransportError::other)?;
                Ok(ListenAddr::tcp(bound))
            }
            #[cfg(not(feature = "af_xdp"))]
            "af_xdp" => Err(not_built(sa, "AF_XDP", "af_xdp")),
            #[cfg(feature = "dpdk")]
            "dpdk" => {
                let bound = self
                    .listen_dpdk(sa, &engine.interface)
                    .map_err(TransportError::other)?;
                Ok(ListenAddr::tcp(bound))
            }
            #[cfg(not(feature = "dpdk"))]
            "dpdk" => Err(not_built(sa, "DPDK", "dpdk")),
            other => Err(TransportError::Invalid(format!(
                "engine {other:?}: expected \"kernel\", \"af_xdp\" or \"dpdk\""
            ))),
        }
    }

    fn listener_engine(&self, addr: &ListenAddr) -> Option<EngineSpec> {
        #[cfg(feature = "af_xdp")]
        if let Some(e) = self.xdp_engine(addr) {
            return Some(e);
        }
        #[cfg(feature = "dpdk")]
        if let Some(e) = self.dpdk_engine(addr) {
            return Some(e);
        }
        let _ = addr;
        None
    }

    fn connections(&self) -> Result<Vec<ConnectionInfo>, TransportError> {
        let per = self
            .ask(|ctx, l| {
                l.conns
                    .iter()
                    .map(|e| {
                        let local = e.conn.stream().tcp().local_addr();
                        let mut info = ConnectionInfo::of_queue(
                            NAME,
                            e.conn.queue(),
                            ctx.id(),
                            e.conn.peer().to_string(),
                            local.map(|a| a.to_string()).unwrap_or_default(),
                        );
                        info.tls = e.conn.stream().record_layer().to_string();
                        info.engine = "kernel".to_string();
                        info
                    })
                    .chain(engine_connections(ctx.id()))
                    .collect::<Vec<_>>()
            })
            .map_err(TransportError::other)?;
        Ok(per.into_iter().flatten().collect())
    }

    fn offload(&self) -> lightpool_nvmf::OffloadReport {
        #[cfg_attr(not(feature = "af_xdp"), allow(unused_mut))]
        let mut r = self.offload.report();
        #[cfg(feature = "af_xdp")]
        for (_, interface, c) in self.xdp_counters() {
            r.programs.push(lightpool_nvmf::SteeringProgramStats {
                interface,
                steered: c.steered,
                passed: c.passed,
                no_socket: c.no_socket,
            });
        }
        r
    }

    fn remove_listener(&self, addr: &ListenAddr) -> Result<(), TransportError> {
        let sa: SocketAddr = addr
            .to_addr_string()
            .parse()
            .map_err(|_| TransportError::Invalid(format!("{addr:?} is not an NVMe/TCP address")))?;
        if !self.unlisten(sa).map_err(TransportError::other)? {
            return Err(TransportError::Invalid(format!(
                "NVMe/TCP does not listen on {sa}"
            )));
        }
        Ok(())
    }

    fn disconnect(&self, reactor: usize, peer: &str) -> Result<bool, TransportError> {
        TcpTransport::disconnect(self, reactor, peer).map_err(TransportError::other)
    }

    fn quiesce_and_export(
        &self,
        fd_base: usize,
        timeout: Duration,
    ) -> Result<Option<TransportExport>, TransportError> {
        let Some((st, fds)) = TcpTransport::quiesce_and_export(self, fd_base, timeout)
            .map_err(TransportError::other)?
        else {
            return Ok(None);
        };
        Ok(Some(TransportExport {
            listeners: st.listeners.len(),
            connections: st.conns.len(),
            commands: st.conns.iter().map(|(c, _, _)| c.commands()).sum(),
            state: postcard::to_stdvec(&st).map_err(encode_err)?,
            fds,
        }))
    }

    fn resume(&self) -> Result<(), TransportError> {
        TcpTransport::resume(self).map_err(TransportError::other)
    }
}

/// The state as a build before `TcpState::secure` wrote it.
#[derive(serde::Deserialize)]
struct TcpStateNoTls {
    listeners: Vec<(String, usize)>,
    conns: Vec<(crate::ConnSnapshot, usize, usize)>,
}

/// The state as a build before kTLS wrote it (`ktls_off`, `ktls_conns`).
#[derive(serde::Deserialize)]
struct TcpStateNoKtls {
    listeners: Vec<(String, usize)>,
    conns: Vec<(crate::ConnSnapshot, usize, usize)>,
    secure: Vec<(String, Secure)>,
}

/// A predecessor's state: this build's, one from before kTLS (every listener auto,
/// no connection in kTLS), or one from before TLS (no listener had it).
fn decode_state(state: &[u8]) -> Result<TcpState, TransportError> {
    let e = match postcard::from_bytes::<TcpState>(state) {
        Ok(st) => return Ok(st),
        Err(e) => e,
    };
    if let Ok(old) = postcard::from_bytes::<TcpStateNoKtls>(state) {
        return Ok(TcpState {
            listeners: old.listeners,
            conns: old.conns,
            secure: old.secure,
            ktls_off: Vec::new(),
            ktls_conns: Vec::new(),
        });
    }
    match postcard::from_bytes::<TcpStateNoTls>(state) {
        Ok(old) => Ok(TcpState {
            listeners: old.listeners,
            conns: old.conns,
            secure: Vec::new(),
            ktls_off: Vec::new(),
            ktls_conns: Vec::new(),
        }),
        Err(_) => Err(encode_err(e)),
    }
}

/// Makes and adopts NVMe/TCP transports.
pub struct TcpKind;

impl TransportKind for TcpKind {
    fn name(&self) -> &'static str {
        NAME
    }

    fn trtype(&self) -> u8 {
        lightpool_spec::log::trtype::TCP
    }

    fn create(&self, ctx: TransportContext) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(Arc::new(
            TcpTransport::new(ctx.target, ctx.reactors).map_err(TransportError::other)?,
        ))
    }

    fn adopt(
        &self,
        ctx: TransportContext,
        region: Arc<Region>,
        image: Arc<RegionImage>,
        state: &[u8],
        fds: &mut [Option<OwnedFd>],
    ) -> Result<(Arc<dyn Transport>, Adopted), TransportError> {
        let st = decode_state(state)?;
        let t = TcpTransport::adopt(ctx.target, ctx.reactors, region, image, &st, fds)
            .map_err(TransportError::other)?;
        let adopted = Adopted {
            listeners: st.listeners.len(),
            connections: st.conns.len(),
            commands: st.conns.iter().map(|(c, _, _)| c.commands()).sum(),
            queue_records: st.conns.iter().map(|(c, _, _)| c.queue_record()).collect(),
        };
        Ok((Arc::new(t), adopted))
    }
}

/// The connections a packet engine's queues on this reactor carry.
#[cfg(any(feature = "af_xdp", feature = "dpdk"))]
fn engine_connections(reactor: usize) -> Vec<ConnectionInfo> {
    crate::engine::connections(reactor)
}

#[cfg(not(any(feature = "af_xdp", feature = "dpdk")))]
fn engine_connections(_reactor: usize) -> Vec<ConnectionInfo> {
    Vec::new()
}

/// A listener of an engine this build lacks (its cargo feature `feature`).
#[cfg(any(not(feature = "af_xdp"), not(feature = "dpdk")))]
fn not_built(_addr: SocketAddr, engine: &str, feature: &str) -> TransportError {
    TransportError::Invalid(format!(
        "this build has no {engine} engine (the {feature} cargo feature): engine = \"{feature}\" cannot be served"
    ))
}
