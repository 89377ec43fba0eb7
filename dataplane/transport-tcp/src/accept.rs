//! A listener's acceptor: on the reactor that owns the listening socket, accepts
//! connections and hands each to a reactor in turn (round robin, by mailbox), where
//! it joins that reactor's set (`add_conn`). This is the kernel-socket path's
//! steering (see `offload`): the kernel's RSS chose the CPU its packets arrive on;
//! this chooses the reactor that serves it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use lightpool_nvmf::Target;
use lightpool_reactor::{Ctx, ReactorHandle};

use crate::offload::{KernelAccept, Registry};
#[cfg(feature = "tls")]
use crate::sock;
use crate::{add_conn, Conn, Ktls, Secure, Sock, Tls};
use lightpool_tcp_framing::offload::SteeringEngine;

pub(crate) struct Acceptor {
    pub(crate) listener: TcpListener,
    pub(crate) target: Arc<Target>,
    pub(crate) reactors: Vec<ReactorHandle>,
    pub(crate) next: usize,
    pub(crate) secure: Secure,
    pub(crate) ktls: Ktls,
    pub(crate) tls: Tls,
    /// Where the connections' offload counts go.
    pub(crate) offload: Arc<Registry>,
}

/// A busy reactor tries accept() at most this often: a connection waits at most this
/// long, and the I/O path does not pay a failing system call every iteration.
pub(crate) const ACCEPT_INTERVAL: Duration = Duration::from_millis(1);

/// Connections accepted per poll at most.
const ACCEPT_BUDGET: usize = 16;

impl Acceptor {
    /// The stream of a connection accepted on this listener.
    fn sock(&self, stream: TcpStream, peer: SocketAddr) -> Sock {
        match &self.tls {
            #[cfg(feature = "tls")]
            Some(ctx) => Sock::Tls(Box::new(sock::tls::Server::new(
                stream,
                ctx.clone(),
                self.secure,
                self.ktls,
                peer.to_string(),
            ))),
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
            None => {
                let _ = peer;
                Sock::Plain(stream)
            }
        }
    }

    pub(crate) fn poll(&mut self) -> bool {
        let mut work = false;
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    work = true;
                    if let Err(e) = stream
                        .set_nodelay(true)
                        .and_then(|_| stream.set_nonblocking(true))
                    {
                        tracing::warn!(%peer, error = %e, "cannot set up an accepted connection");
                        continue;
                    }
                    let r = &self.reactors[self.next % self.reactors.len()];
                    self.next = self.next.wrapping_add(1);
                    let target = self.target.clone();
                    tracing::debug!(%peer, reactor = r.id(), "connection accepted");
                    let sock = self.sock(stream, peer);
                    let offload = self.offload.clone();
                    let res = r.send(move |ctx: &mut Ctx| {
                        let id = ctx.id();
                        let block = offload.block(id, KernelAccept::NAME);
                        block.flow();
                        let mut conn = Conn::new(sock, target, peer.to_string(), id);
                        conn.set_offload(crate::offload::Publisher::new(block));
                        add_conn(ctx, conn, false)
                    });
                    if let Err(e) = res {
                        tracing::error!(%peer, error = %e, "cannot hand a connection to its reactor");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    break;
                }
            }
        }
        work
    }
}
