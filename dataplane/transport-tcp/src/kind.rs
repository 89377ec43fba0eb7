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
        if self
            .remove_engine_listener(addr, ENGINE_END_TIMEOUT)
            .map_err(TransportError::other)?
            .is_some()
        {
            return Ok(());
        }
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
        // Engine listeners end first: their connections close once what they run has
        // finished (the hosts reconnect to the successor), and the interface is let go
        // so that the successor can take it.
        let ended = self
            .end_engine_listeners(timeout)
            .map_err(TransportError::other)?;
        let Some((mut st, fds)) = TcpTransport::quiesce_and_export(self, fd_base, timeout)
            .map_err(TransportError::other)?
        else {
            self.listen_again(ended);
            return Ok(None);
        };
        st.engines = ended
            .iter()
            .map(|(a, e)| {
                (
                    a.clone(),
                    e.engine.clone(),
                    e.interface.clone(),
                    e.mode.clone(),
                )
            })
            .collect();
        *self.relisten.lock().expect("relisten") = ended;
        Ok(Some(TransportExport {
            listeners: st.listeners.len() + st.engines.len(),
            connections: st.conns.len(),
            commands: st.conns.iter().map(|(c, _, _)| c.commands()).sum(),
            state: postcard::to_stdvec(&st).map_err(encode_err)?,
            fds,
        }))
    }

    fn resume(&self) -> Result<(), TransportError> {
        TcpTransport::resume(self).map_err(TransportError::other)?;
        let again = std::mem::take(&mut *self.relisten.lock().expect("relisten"));
        self.listen_again(again);
        Ok(())
    }
}

/// How long a hot upgrade's resume tries to listen through an engine again.
const RELISTEN_FOR: Duration = Duration::from_secs(3);

/// How long the connections of an engine listener that goes may take to finish what
/// they run (the commands' block I/O, then the linger of the close).
const ENGINE_END_TIMEOUT: Duration = Duration::from_secs(10);

impl TcpTransport {
    /// Hot upgrade, old process: ends every engine listener (see
    /// [`TcpTransport::remove_engine`]) and says what they were.
    fn end_engine_listeners(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(String, EngineSpec)>, crate::TcpError> {
        let addrs: Vec<ListenAddr> = self
            .target
            .listeners()
            .into_iter()
            .map(|l| l.addr)
            .filter(|a| self.listener_engine(a).is_some())
            .collect();
        let mut ended = Vec::new();
        for a in addrs {
            match self.remove_engine_listener(&a, timeout) {
                Ok(Some(e)) => ended.push((a.to_addr_string(), e)),
                Ok(None) => {}
                Err(err) => {
                    // Those ended so far listen again: the upgrade does not happen.
                    self.listen_again(ended);
                    return Err(err);
                }
            }
        }
        Ok(ended)
    }

    /// Listens through each engine again (a hot upgrade's resume); a failure is
    /// logged, the others still listen.
    fn listen_again(&self, listeners: Vec<(String, EngineSpec)>) {
        for (addr, e) in listeners {
            // The kernel may still be tearing down the sockets the last holder closed
            // (an AF_XDP queue is busy until then): tried again for a while.
            let deadline = std::time::Instant::now() + RELISTEN_FOR;
            let r = loop {
                match self.add_engine_listener(&addr, &e) {
                    Err(err) if std::time::Instant::now() < deadline => {
                        tracing::debug!(%addr, error = %err, "engine listener not back yet");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    r => break r,
                }
            };
            match r {
                Ok(_) => tracing::info!(%addr, engine = %e.engine, interface = %e.interface,
                    "NVMe/TCP listening through the engine again"),
                Err(err) => tracing::error!(%addr, engine = %e.engine, interface = %e.interface,
                    error = %err, "cannot listen through the engine again: this address is not served"),
            }
        }
    }

    /// Removes the AF_XDP or DPDK listener at `addr` (see
    /// [`TcpTransport::remove_engine`]); its engine, `None` when none listens there.
    pub fn remove_engine_listener(
        &self,
        addr: &ListenAddr,
        timeout: Duration,
    ) -> Result<Option<EngineSpec>, crate::TcpError> {
        #[cfg(feature = "af_xdp")]
        if let Some(e) = self.remove_engine(&self.xdp, addr, timeout)? {
            return Ok(Some(e));
        }
        #[cfg(feature = "dpdk")]
        if let Some(e) = self.remove_engine(&self.dpdk, addr, timeout)? {
            return Ok(Some(e));
        }
        let _ = (addr, timeout);
        Ok(None)
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

/// The state as a build before engine listeners were carried wrote it.
#[derive(serde::Deserialize)]
struct TcpStateNoEngines {
    listeners: Vec<(String, usize)>,
    conns: Vec<(crate::ConnSnapshot, usize, usize)>,
    secure: Vec<(String, Secure)>,
    ktls_off: Vec<String>,
    ktls_conns: Vec<usize>,
}

/// A predecessor's state: this build's, one from before engine listeners were
/// carried (none), one from before kTLS (every listener auto, no connection in
/// kTLS), or one from before TLS (no listener had it).
fn decode_state(state: &[u8]) -> Result<TcpState, TransportError> {
    let e = match postcard::from_bytes::<TcpState>(state) {
        Ok(st) => return Ok(st),
        Err(e) => e,
    };
    if let Ok(old) = postcard::from_bytes::<TcpStateNoEngines>(state) {
        return Ok(TcpState {
            listeners: old.listeners,
            conns: old.conns,
            secure: old.secure,
            ktls_off: old.ktls_off,
            ktls_conns: old.ktls_conns,
            engines: Vec::new(),
        });
    }
    if let Ok(old) = postcard::from_bytes::<TcpStateNoKtls>(state) {
        return Ok(TcpState {
            listeners: old.listeners,
            conns: old.conns,
            secure: old.secure,
            ktls_off: Vec::new(),
            ktls_conns: Vec::new(),
            engines: Vec::new(),
        });
    }
    match postcard::from_bytes::<TcpStateNoTls>(state) {
        Ok(old) => Ok(TcpState {
            listeners: old.listeners,
            conns: old.conns,
            secure: Vec::new(),
            ktls_off: Vec::new(),
            ktls_conns: Vec::new(),
            engines: Vec::new(),
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
        let engines: Vec<(String, EngineSpec)> = st
            .engines
            .iter()
            .map(|(a, engine, interface, mode)| {
                let e = EngineSpec {
                    engine: engine.clone(),
                    interface: interface.clone(),
                    mode: mode.clone(),
                };
                (a.clone(), e)
            })
            .collect();
        // An engine this build lacks fails the handover (the old process listens
        // again and serves on) rather than leaving the address unserved.
        for (a, e) in &engines {
            if !engine_built(&e.engine) {
                return Err(TransportError::Invalid(format!(
                    "the running target serves {a} through engine {:?}, which this build lacks (its cargo feature): build the new binary with it",
                    e.engine
                )));
            }
        }
        let t = TcpTransport::adopt(ctx.target, ctx.reactors, region, image, &st, fds)
            .map_err(TransportError::other)?;
        *t.relisten.lock().expect("relisten") = engines;
        let adopted = Adopted {
            listeners: st.listeners.len() + st.engines.len(),
            connections: st.conns.len(),
            commands: st.conns.iter().map(|(c, _, _)| c.commands()).sum(),
            queue_records: st.conns.iter().map(|(c, _, _)| c.queue_record()).collect(),
        };
        Ok((Arc::new(t), adopted))
    }
}

/// Whether this build serves `engine` (its cargo feature).
fn engine_built(engine: &str) -> bool {
    engine.is_empty()
        || engine == "kernel"
        || (engine == "af_xdp" && cfg!(feature = "af_xdp"))
        || (engine == "dpdk" && cfg!(feature = "dpdk"))
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

#[cfg(test)]
mod state_tests {
    use super::*;

    /// The handover state as a build before `TcpState::engines` wrote it (no
    /// connection, so any element type encodes the empty list alike).
    #[derive(serde::Serialize)]
    struct Before {
        listeners: Vec<(String, usize)>,
        conns: Vec<u8>,
        secure: Vec<(String, Secure)>,
        ktls_off: Vec<String>,
        ktls_conns: Vec<usize>,
    }

    #[test]
    fn engine_listeners_travel_and_a_predecessor_without_them_still_reads() {
        let before = Before {
            listeners: vec![("10.0.0.1:4420".into(), 0)],
            conns: Vec::new(),
            secure: Vec::new(),
            ktls_off: vec!["10.0.0.1:4420".into()],
            ktls_conns: Vec::new(),
        };
        let st = decode_state(&postcard::to_stdvec(&before).expect("encodes")).expect("reads");
        assert_eq!(st.listeners, before.listeners);
        assert_eq!(st.ktls_off, before.ktls_off);
        assert!(st.engines.is_empty());

        let mut now = st.clone();
        now.engines = vec![(
            "10.0.0.2:4420".into(),
            "af_xdp".into(),
            "veth0".into(),
            "native".into(),
        )];
        let bytes = postcard::to_stdvec(&now).expect("encodes");
        let back = decode_state(&bytes).expect("reads");
        assert_eq!(back.engines, now.engines);
        assert_eq!(back.listeners, now.listeners);
        // A build before engines reads the rest and skips them (postcard leaves the
        // trailing bytes unread).
        let old: TcpStateNoKtls = postcard::from_bytes(&bytes).expect("an older reader");
        assert_eq!(old.listeners, now.listeners);
    }

    #[test]
    fn engines_this_build_lacks_are_known() {
        assert!(engine_built("kernel") && engine_built(""));
        assert_eq!(engine_built("af_xdp"), cfg!(feature = "af_xdp"));
        assert_eq!(engine_built("dpdk"), cfg!(feature = "dpdk"));
        assert!(!engine_built("rdma"));
    }
}
