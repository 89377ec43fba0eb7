//! NVMe/TCP over kernel sockets.
//!
//! A listener's accept poller runs on one reactor and hands each new connection to a
//! reactor in turn (round robin, by mailbox); the connection then lives on that reactor
//! as a poller for its whole life. Each connection is one queue pair.

mod conn;
mod tx;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use lightpool_nvmf::{ListenAddr, ListenerInfo, Target};
use lightpool_reactor::{Ctx, Interest, PollStatus, Poller, ReactorHandle};

pub use conn::{Conn, Stream, TcpReq, MAXH2CDATA};

/// Errors setting up the transport.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no reactor to run on")]
    NoReactors,
    #[error(transparent)]
    Reactor(#[from] lightpool_reactor::ReactorError),
}

static NEXT_PORTID: AtomicU16 = AtomicU16::new(1);

/// The NVMe/TCP transport of one target.
pub struct TcpTransport {
    target: Arc<Target>,
    reactors: Vec<ReactorHandle>,
}

impl TcpTransport {
    pub fn new(
        target: Arc<Target>,
        reactors: Vec<ReactorHandle>,
    ) -> Result<TcpTransport, TcpError> {
        if reactors.is_empty() {
            return Err(TcpError::NoReactors);
        }
        Ok(TcpTransport { target, reactors })
    }

    /// Listen on `addr`; returns the bound address (port 0 picks a free port). The
    /// listener is added to the discovery log.
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, TcpError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| TcpError::Listen { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| TcpError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TcpError::Listen { addr, source })?;
        self.target.add_listener(ListenerInfo {
            addr: ListenAddr::tcp(bound),
            portid: NEXT_PORTID.fetch_add(1, Ordering::Relaxed),
        });
        let acceptor = Acceptor {
            listener,
            target: self.target.clone(),
            reactors: self.reactors.clone(),
            next: 0,
        };
        self.reactors[0].send(move |ctx: &mut Ctx| {
            if let Err(e) = ctx.register_fd(acceptor.listener.as_raw_fd(), Interest::READABLE) {
                tracing::error!(error = %e, "cannot watch the listening socket");
            }
            ctx.add_poller(Box::new(acceptor));
        })?;
        tracing::info!(%bound, "NVMe/TCP listening");
        Ok(bound)
    }
}

struct Acceptor {
    listener: TcpListener,
    target: Arc<Target>,
    reactors: Vec<ReactorHandle>,
    next: usize,
}

/// Connections accepted per poll at most.
const ACCEPT_BUDGET: usize = 16;

impl Poller for Acceptor {
    fn poll(&mut self, _ctx: &mut Ctx) -> PollStatus {
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
                    if let Err(e) =
                        r.send(move |ctx: &mut Ctx| start_connection(ctx, stream, target, peer))
                    {
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
        if work {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

fn start_connection(ctx: &mut Ctx, stream: TcpStream, target: Arc<Target>, peer: SocketAddr) {
    let fd = stream.as_raw_fd();
    if let Err(e) = ctx.register_fd(fd, Interest::READABLE) {
        tracing::error!(%peer, error = %e, "cannot watch a connection");
        return;
    }
    let conn = Conn::new(stream, target, peer.to_string());
    ctx.add_poller(Box::new(ConnPoller {
        conn,
        fd,
        watching_write: false,
    }));
}

struct ConnPoller {
    conn: Conn<TcpStream>,
    fd: std::os::fd::RawFd,
    watching_write: bool,
}

impl Poller for ConnPoller {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        let work = self.conn.poll(ctx.now());
        if self.conn.is_closed() {
            ctx.unregister_fd(self.fd);
            tracing::debug!(peer = %self.conn.peer, "connection closed");
            return PollStatus::Finished;
        }
        if self.conn.blocked_on_write != self.watching_write {
            self.watching_write = self.conn.blocked_on_write;
            let interest = Interest {
                readable: true,
                writable: self.watching_write,
            };
            if let Err(e) = ctx.modify_fd(self.fd, interest) {
                tracing::warn!(error = %e, "cannot change the events watched");
            }
        }
        if work > 0 || self.conn.has_pending_work() {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}
