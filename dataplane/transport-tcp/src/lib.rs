//! NVMe/TCP over kernel sockets.
//!
//! A listener's accept poller runs on one reactor and hands each new connection to a
//! reactor in turn (round robin, by mailbox); the connection then lives on that reactor
//! for its whole life. Each connection is one queue pair. The connections and listeners
//! of a reactor sit in that reactor's thread-local set, polled by one poller, so that a
//! hot upgrade can reach all of them by mailbox to quiesce, export or adopt them.

mod accept;
mod conn;
#[cfg(feature = "dpdk")]
mod dpdk;
#[cfg(any(feature = "af_xdp", feature = "dpdk"))]
mod engine;
mod kind;
mod offload;
mod ready;
mod sock;
#[cfg(feature = "af_xdp")]
mod xdp;

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use accept::{Acceptor, ACCEPT_INTERVAL};
use lightpool_nvmf::region::Region;
use lightpool_nvmf::restore::RegionImage;
use lightpool_nvmf::{ListenAddr, ListenerInfo, Target};
use lightpool_reactor::{Ctx, Interest, PollStatus, Poller, ReactorHandle};
use ready::{poll_ready_set, Direct, Readiness, LISTENER_TOKEN};

pub use conn::{Conn, ConnSnapshot, Stream, TcpReq, MAXH2CDATA};
pub use kind::{TcpKind, NAME};
pub use lightpool_nvmf::tls::{Ktls, Secure};
pub use sock::Sock;

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
    #[error("reactor {0} did not answer in time")]
    Timeout(usize),
    #[error("cannot duplicate a socket for the handover: {0}")]
    Dup(#[source] std::io::Error),
    #[error("connection state cannot be adopted: {0}")]
    Adopt(String),
    #[error("this build has no TLS (the tls cargo feature): secure = {0:?} cannot be served")]
    NoTls(&'static str),
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] lightpool_tcp_framing::tls::TlsError),
}

static NEXT_PORTID: AtomicU16 = AtomicU16::new(1);

/// What a reactor holds of this transport.
#[derive(Default)]
struct Local {
    conns: Vec<Entry>,
    acceptors: Vec<Acceptor>,
    /// Which sockets have something to read, asked of epoll without blocking once per
    /// pass: a `recv` on every connection every pass mostly returns EAGAIN, and each
    /// such call takes the socket lock the peer's (loopback) delivery needs at that
    /// moment. Separate from the reactor's own epoll set, which is for sleeping.
    ready: Option<Readiness>,
    registered: bool,
    /// Hot upgrade: no new connections are accepted, no new commands are started.
    quiesced: bool,
    /// Hot upgrade: nothing is read or written at all (the state was exported, or is
    /// adopted and not yet released by the previous process).
    frozen: bool,
    /// Hot upgrade: the sockets are not watched while frozen (unread bytes would keep
    /// the reactor from sleeping, and it shares its core with the other process).
    unwatched: bool,
    /// The lone busy connection read without asking the readiness set first.
    direct: Direct,
    /// Hot upgrade: export as soon as every connection has drained, and answer here.
    last_accept: Option<Instant>,
    export_when_drained:
        Option<crossbeam::channel::Sender<(usize, Result<Exported, std::io::Error>)>>,
}

struct Entry {
    conn: Conn<Sock>,
    fd: RawFd,
    watching_write: bool,
    /// The readiness set reported input (or hang-up, or an error) this pass.
    readable: bool,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

fn ensure_poller(ctx: &mut Ctx, l: &mut Local) {
    if !l.registered {
        l.registered = true;
        ctx.add_poller(Box::new(TcpPoller));
    }
}

/// This reactor's readiness set, made on first use. `None` (with the error logged
/// once) if epoll cannot be had: then every socket is read every pass, as before.
fn readiness(l: &mut Local) -> Option<&mut Readiness> {
    if l.ready.is_none() {
        match Readiness::new() {
            Ok(r) => l.ready = Some(r),
            Err(e) => {
                tracing::error!(error = %e, "no readiness set: reading every socket every pass");
                return None;
            }
        }
    }
    l.ready.as_mut()
}

fn push_acceptor(ctx: &mut Ctx, l: &mut Local, acceptor: Acceptor) {
    let fd = acceptor.listener.as_raw_fd();
    // A frozen reactor (a successor adopting a hot upgrade's listeners) watches its
    // sockets only from `rewatch` on, which registers every acceptor: registering it
    // here too would add it to the epoll set twice (EEXIST at release).
    if !l.unwatched {
        if let Err(e) = ctx.register_fd(fd, Interest::READABLE) {
            tracing::error!(error = %e, "cannot watch the listening socket");
        }
    }
    let token = LISTENER_TOKEN | l.acceptors.len() as u64;
    if let Some(r) = readiness(l) {
        if let Err(e) = r.add(fd, token) {
            tracing::error!(error = %e, "cannot watch the listening socket");
        }
    }
    l.acceptors.push(acceptor);
}

/// The NVMe/TCP transport of one target.
pub struct TcpTransport {
    target: Arc<Target>,
    reactors: Vec<ReactorHandle>,
    /// Who did the offloadable work of its connections (`offload`).
    offload: Arc<offload::Registry>,
    /// The OpenSSL context of TLS listeners, made with the first of them.
    #[cfg(feature = "tls")]
    tls: std::sync::OnceLock<openssl::ssl::SslContext>,
    /// Listeners served through AF_XDP (their XDP programs stay attached).
    #[cfg(feature = "af_xdp")]
    xdp: std::sync::Mutex<Vec<xdp::XdpListener>>,
    /// Listeners served through DPDK (their ports stay started).
    #[cfg(feature = "dpdk")]
    dpdk: std::sync::Mutex<Vec<dpdk::DpdkListener>>,
    /// Engine listeners to listen on again at [`Transport::resume`]: in a hot upgrade
    /// the old process ends them at quiesce (their connections close; the hosts
    /// reconnect) and the new one listens again once the old has let go, or the old
    /// one again when the handover failed.
    relisten: std::sync::Mutex<Vec<(String, lightpool_nvmf::EngineSpec)>>,
}

/// Listeners and connections as a hot upgrade carries them, each with the index of its
/// socket in the descriptor list that travels beside it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TcpState {
    pub listeners: Vec<(String, usize)>,
    pub conns: Vec<(ConnSnapshot, usize, usize)>,
    /// The TLS setting of each listener that has one (address as in `listeners`).
    /// Last, so that the state of a build before it still reads (see `kind.rs`).
    pub secure: Vec<(String, Secure)>,
    /// The TLS listeners with `ktls = "off"` (address as in `listeners`). After
    /// `secure`, for the same reason.
    pub ktls_off: Vec<String>,
    /// The connections in kTLS, by the index of their descriptor (as in `conns`): the
    /// kernel holds their keys, they travel as sockets.
    pub ktls_conns: Vec<usize>,
    /// Listeners served through a packet engine: (address, engine, interface, mode).
    /// Their connections do not travel; the successor listens again at resume.
    pub engines: Vec<(String, String, String, String)>,
}

/// What one reactor of the new process takes over: listeners and connections.
type ReactorShare = (
    Vec<(TcpListener, Secure, Ktls, Tls)>,
    Vec<(TcpStream, ConnSnapshot, bool)>,
);

/// One reactor's listeners and connections with their duplicated sockets.
type Exported = (
    Vec<(String, Secure, Ktls, OwnedFd)>,
    Vec<(ConnSnapshot, usize, OwnedFd, bool)>,
);

/// The OpenSSL context of a TLS listener (`None`: plain).
#[cfg(feature = "tls")]
type Tls = Option<openssl::ssl::SslContext>;
#[cfg(not(feature = "tls"))]
type Tls = Option<std::convert::Infallible>;

/// Time a reactor has to answer a control request.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

impl TcpTransport {
    pub fn new(
        target: Arc<Target>,
        reactors: Vec<ReactorHandle>,
    ) -> Result<TcpTransport, TcpError> {
        if reactors.is_empty() {
            return Err(TcpError::NoReactors);
        }
        Ok(TcpTransport {
            target,
            reactors,
            offload: Default::default(),
            #[cfg(feature = "tls")]
            tls: std::sync::OnceLock::new(),
            #[cfg(feature = "af_xdp")]
            xdp: Default::default(),
            #[cfg(feature = "dpdk")]
            dpdk: Default::default(),
            relisten: Default::default(),
        })
    }

    /// Listen on `addr`; returns the bound address (port 0 picks a free port). The
    /// listener is added to the discovery log.
    pub fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, TcpError> {
        self.listen_secure(addr, Secure::None)
    }

    /// As [`TcpTransport::listen`], with NVMe/TCP in TLS 1.3 required or optional
    /// (`Secure::None`: plain only). The discovery log says which.
    pub fn listen_secure(&self, addr: SocketAddr, secure: Secure) -> Result<SocketAddr, TcpError> {
        self.listen_tls(addr, secure, Ktls::Auto)
    }

    /// As [`TcpTransport::listen_secure`], with where the TLS connections keep their
    /// record layer: the kernel where it can (auto) or software (off).
    pub fn listen_tls(
        &self,
        addr: SocketAddr,
        secure: Secure,
        ktls: Ktls,
    ) -> Result<SocketAddr, TcpError> {
        let tls = self.tls_for(secure)?;
        let listener =
            TcpListener::bind(addr).map_err(|source| TcpError::Listen { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| TcpError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TcpError::Listen { addr, source })?;
        let la = ListenAddr::tcp(bound);
        self.target.tls.set_listener(&la.to_addr_string(), secure);
        self.target
            .tls
            .set_listener_ktls(&la.to_addr_string(), ktls);
        self.target.add_listener(ListenerInfo {
            addr: la,
            portid: NEXT_PORTID.fetch_add(1, Ordering::Relaxed),
        });
        self.start_acceptor(listener, false, secure, ktls, tls)?;
        if secure == Secure::None {
            tracing::info!(%bound, secure = secure.name(), "NVMe/TCP listening");
        } else {
            tracing::info!(%bound, secure = secure.name(), ktls = ktls.name(), "NVMe/TCP listening");
        }
        Ok(bound)
    }

    /// The TLS context a listener with `secure` uses (none for plain ones).
    fn tls_for(&self, secure: Secure) -> Result<Tls, TcpError> {
        if secure == Secure::None {
            return Ok(None);
        }
        #[cfg(feature = "tls")]
        {
            if let Some(c) = self.tls.get() {
                return Ok(Some(c.clone()));
            }
            let c = sock::tls::context(self.target.clone())?;
            Ok(Some(self.tls.get_or_init(|| c).clone()))
        }
        #[cfg(not(feature = "tls"))]
        Err(TcpError::NoTls(secure.name()))
    }

    /// Stop listening on `addr` and close the connections that came in through it;
    /// the listener leaves the discovery log. `false` if nothing listened there.
    pub fn unlisten(&self, addr: SocketAddr) -> Result<bool, TcpError> {
        let removed = self
            .ask(move |ctx, l| {
                let before = l.acceptors.len();
                l.acceptors.retain(|a| {
                    let mine = a.listener.local_addr().is_ok_and(|x| x == addr);
                    if mine {
                        let fd = a.listener.as_raw_fd();
                        if !l.unwatched {
                            ctx.unregister_fd(fd);
                        }
                        if let Some(r) = l.ready.as_mut() {
                            r.remove(fd);
                        }
                    }
                    !mine
                });
                before - l.acceptors.len()
            })?
            .into_iter()
            .sum::<usize>();
        if removed == 0 {
            return Ok(false);
        }
        self.ask(move |_, l| {
            for e in &mut l.conns {
                let came_in = e.conn.stream().tcp().local_addr().is_ok_and(|x| {
                    x.port() == addr.port() && (addr.ip().is_unspecified() || x.ip() == addr.ip())
                });
                if came_in {
                    e.conn.close("its listener was removed");
                    e.readable = true;
                }
            }
        })?;
        self.target.remove_listener(&ListenAddr::tcp(addr));
        self.target
            .tls
            .set_listener(&ListenAddr::tcp(addr).to_addr_string(), Secure::None);
        tracing::info!(%addr, "NVMe/TCP listener removed");
        Ok(true)
    }

    /// Close the connection of `peer` on reactor `reactor`; `false` if there is none.
    pub fn disconnect(&self, reactor: usize, peer: &str) -> Result<bool, TcpError> {
        let r = self.reactors.get(reactor).ok_or(TcpError::NoReactors)?;
        let (tx, rx) = crossbeam::channel::bounded(1);
        let peer = peer.to_string();
        r.send(move |_: &mut Ctx| {
            let found = LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                let mut found = false;
                for e in l.conns.iter_mut().filter(|e| e.conn.peer() == peer) {
                    e.conn.close("disconnected by the operator");
                    e.readable = true;
                    found = true;
                }
                found
            });
            let _ = tx.send(found);
        })?;
        rx.recv_timeout(ASK_TIMEOUT)
            .map_err(|_| TcpError::Timeout(reactor))
    }

    fn start_acceptor(
        &self,
        listener: TcpListener,
        frozen: bool,
        secure: Secure,
        ktls: Ktls,
        tls: Tls,
    ) -> Result<(), TcpError> {
        let acceptor = Acceptor {
            listener,
            target: self.target.clone(),
            reactors: self.reactors.clone(),
            next: 0,
            secure,
            ktls,
            tls,
            offload: self.offload.clone(),
        };
        self.reactors[0].send(move |ctx: &mut Ctx| {
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                l.frozen |= frozen;
                push_acceptor(ctx, &mut l, acceptor);
                ensure_poller(ctx, &mut l);
            });
        })?;
        Ok(())
    }

    /// Run `f` on every reactor and collect the answers.
    fn ask<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Ctx, &mut Local) -> R + Send + Sync + Clone + 'static,
    ) -> Result<Vec<R>, TcpError> {
        let (tx, rx) = crossbeam::channel::unbounded();
        for (i, r) in self.reactors.iter().enumerate() {
            let tx = tx.clone();
            let f = f.clone();
            r.send(move |ctx: &mut Ctx| {
                let out = LOCAL.with(|l| f(ctx, &mut l.borrow_mut()));
                let _ = tx.send((i, out));
            })?;
        }
        let mut out: Vec<Option<R>> = (0..self.reactors.len()).map(|_| None).collect();
        for _ in 0..self.reactors.len() {
            let (i, r) = rx
                .recv_timeout(ASK_TIMEOUT)
                .map_err(|_| TcpError::Timeout(0))?;
            out[i] = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every reactor answered"))
            .collect())
    }

    /// Hot upgrade, step 1: stop accepting connections and starting commands.
    pub fn quiesce(&self) -> Result<(), TcpError> {
        self.ask(|_, l| {
            l.quiesced = true;
            for e in &mut l.conns {
                e.conn.quiesce();
            }
        })?;
        Ok(())
    }

    /// Whether every connection has drained (nothing running, nothing to send).
    pub fn drained(&self) -> Result<bool, TcpError> {
        Ok(self
            .ask(|_, l| l.conns.iter().all(|e| e.conn.is_drained()))?
            .into_iter()
            .all(|d| d))
    }

    /// Hot upgrade, step 2: stop touching the sockets and export every listener and
    /// connection, with duplicates of their descriptors (indices into the returned list
    /// start at `fd_base`).
    pub fn freeze_and_export(&self, fd_base: usize) -> Result<(TcpState, Vec<OwnedFd>), TcpError> {
        let per = self.ask(export_local)?;
        Self::collect(per, fd_base)
    }

    /// Hot upgrade in one step: quiesce every reactor, and have each export (and freeze)
    /// itself the moment its connections have drained, with no round trips in between.
    /// `None` if some reactor did not drain within `timeout` (then everything resumes).
    pub fn quiesce_and_export(
        &self,
        fd_base: usize,
        timeout: Duration,
    ) -> Result<Option<(TcpState, Vec<OwnedFd>)>, TcpError> {
        let (tx, rx) = crossbeam::channel::unbounded();
        for r in &self.reactors {
            let tx = tx.clone();
            r.send(move |ctx: &mut Ctx| {
                LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    l.quiesced = true;
                    for e in &mut l.conns {
                        e.conn.quiesce();
                    }
                    if l.conns.iter().all(|e| e.conn.is_drained()) {
                        let out = export_local(ctx, &mut l);
                        let _ = tx.send((ctx.id(), out));
                    } else {
                        l.export_when_drained = Some(tx);
                        ensure_poller(ctx, &mut l);
                    }
                })
            })?;
        }
        let deadline = Instant::now() + timeout;
        let mut per: Vec<Option<Result<Exported, std::io::Error>>> =
            (0..self.reactors.len()).map(|_| None).collect();
        for _ in 0..self.reactors.len() {
            match rx.recv_deadline(deadline) {
                Ok((i, r)) => per[i] = Some(r),
                Err(_) => {
                    self.ask(|_, l| l.export_when_drained = None)?;
                    self.resume()?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(Self::collect(
            per.into_iter()
                .map(|r| r.expect("every reactor answered"))
                .collect(),
            fd_base,
        )?))
    }

    fn collect(
        per: Vec<Result<Exported, std::io::Error>>,
        fd_base: usize,
    ) -> Result<(TcpState, Vec<OwnedFd>), TcpError> {
        let mut st = TcpState {
            listeners: Vec::new(),
            conns: Vec::new(),
            secure: Vec::new(),
            ktls_off: Vec::new(),
            ktls_conns: Vec::new(),
            engines: Vec::new(),
        };
        let mut fds = Vec::new();
        for r in per {
            let (ls, cs) = r.map_err(TcpError::Dup)?;
            for (addr, secure, ktls, fd) in ls {
                if secure != Secure::None {
                    st.secure.push((addr.clone(), secure));
                }
                if ktls == Ktls::Off {
                    st.ktls_off.push(addr.clone());
                }
                st.listeners.push((addr, fd_base + fds.len()));
                fds.push(fd);
            }
            for (snap, reactor, fd, ktls) in cs {
                if ktls {
                    st.ktls_conns.push(fd_base + fds.len());
                }
                st.conns.push((snap, reactor, fd_base + fds.len()));
                fds.push(fd);
            }
        }
        Ok((st, fds))
    }

    /// The handover failed: serve again as before.
    pub fn resume(&self) -> Result<(), TcpError> {
        self.ask(|ctx, l| {
            l.frozen = false;
            l.quiesced = false;
            rewatch(ctx, l);
            let now = ctx.now();
            for e in &mut l.conns {
                e.conn.resume(now);
            }
        })?;
        Ok(())
    }

    /// In the new process: take over the listeners and connections of `st`, frozen
    /// until [`TcpTransport::release`]. `fds` is the descriptor list that came with it.
    pub fn adopt(
        target: Arc<Target>,
        reactors: Vec<ReactorHandle>,
        region: Arc<Region>,
        image: Arc<RegionImage>,
        st: &TcpState,
        fds: &mut [Option<OwnedFd>],
    ) -> Result<TcpTransport, TcpError> {
        let t = TcpTransport::new(target, reactors)?;
        let secure_of = |addr: &str| {
            st.secure
                .iter()
                .find(|(a, _)| a == addr)
                .map_or(Secure::None, |(_, s)| *s)
        };
        let ktls_of = |addr: &str| {
            if st.ktls_off.iter().any(|a| a == addr) {
                Ktls::Off
            } else {
                Ktls::Auto
            }
        };
        let mut take = |i: usize| {
            fds.get_mut(i)
                .and_then(Option::take)
                .ok_or_else(|| TcpError::Adopt(format!("descriptor {i} is missing")))
        };
        let n = t.reactors.len();
        // One message per reactor, carrying everything it will own: it freezes itself,
        // takes its listeners and rebuilds its connections (a connection is not Send:
        // its block-device channels belong to one thread), then answers once.
        let mut per: Vec<ReactorShare> = (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (addr, i) in &st.listeners {
            let l = TcpListener::from(take(*i)?);
            l.set_nonblocking(true).map_err(TcpError::Dup)?;
            let secure = secure_of(addr);
            let ktls = ktls_of(addr);
            let tls = t.tls_for(secure)?;
            t.target.tls.set_listener(addr, secure);
            t.target.tls.set_listener_ktls(addr, ktls);
            tracing::info!(%addr, secure = secure.name(), "NVMe/TCP listener adopted");
            per[0].0.push((l, secure, ktls, tls));
        }
        for (snap, reactor, i) in &st.conns {
            per[reactor % n].1.push((
                TcpStream::from(take(*i)?),
                snap.clone(),
                st.ktls_conns.contains(i),
            ));
        }
        let (tx, rx) = crossbeam::channel::unbounded();
        for (r, (listeners, conns)) in t.reactors.iter().zip(per) {
            let tx = tx.clone();
            let target = t.target.clone();
            let reactors = t.reactors.clone();
            let region = region.clone();
            let image = image.clone();
            let offload = t.offload.clone();
            r.send(move |ctx: &mut Ctx| {
                LOCAL.with(|l| {
                    let mut l = l.borrow_mut();
                    l.frozen = true;
                    // Sockets are watched from release on (`resume`).
                    unwatch(ctx, &mut l);
                });
                for (listener, secure, ktls, tls) in listeners {
                    let acceptor = Acceptor {
                        listener,
                        target: target.clone(),
                        reactors: reactors.clone(),
                        next: 0,
                        secure,
                        ktls,
                        tls,
                        offload: offload.clone(),
                    };
                    LOCAL.with(|l| push_acceptor(ctx, &mut l.borrow_mut(), acceptor));
                }
                let now = Instant::now();
                let mut res = Ok(());
                for (stream, snap, ktls) in conns {
                    let sock = if ktls {
                        Sock::adopted_ktls(stream)
                    } else {
                        Sock::Plain(stream)
                    };
                    match Conn::import(sock, target.clone(), &region, &image, &snap, now, ctx.id())
                    {
                        Ok(mut conn) => {
                            // Steered by the predecessor: its flow is counted there.
                            let block = offload.block(ctx.id(), <offload::KernelAccept as lightpool_tcp_framing::offload::SteeringEngine>::NAME);
                            conn.set_offload(offload::Publisher::new(block));
                            add_conn(ctx, conn, true)
                        }
                        Err(e) => res = Err(e.to_string()),
                    }
                }
                LOCAL.with(|l| ensure_poller(ctx, &mut l.borrow_mut()));
                let _ = tx.send(res);
            })?;
        }
        for _ in 0..n {
            rx.recv_timeout(ASK_TIMEOUT)
                .map_err(|_| TcpError::Timeout(0))?
                .map_err(TcpError::Adopt)?;
        }
        Ok(t)
    }

    /// In the new process, once the old one has let go: start serving.
    pub fn release(&self) -> Result<(), TcpError> {
        self.resume()
    }
}

/// Freeze this reactor's part of the transport and export it, with duplicated sockets.
fn export_local(ctx: &mut Ctx, l: &mut Local) -> Result<Exported, std::io::Error> {
    l.frozen = true;
    unwatch(ctx, l);
    let now = ctx.now();
    let mut ls = Vec::new();
    for a in &l.acceptors {
        let addr = a.listener.local_addr()?.to_string();
        ls.push((
            addr,
            a.secure,
            a.ktls,
            a.listener.as_fd().try_clone_to_owned()?,
        ));
    }
    let mut cs = Vec::new();
    for e in &l.conns {
        if !e.conn.stream().can_hand_over() {
            // Software TLS: the record keys and sequence numbers live in this
            // process's OpenSSL and cannot travel (kTLS ones can: the kernel holds
            // them). The connection closes with this
            // process; the host reconnects (see docs/architecture.md, hot upgrade).
            tracing::warn!(peer = %e.conn.peer(), "NVMe/TCP TLS connection not handed over: it closes with this process and the host reconnects");
            continue;
        }
        cs.push((
            e.conn.export(now).map_err(std::io::Error::other)?,
            ctx.id(),
            e.conn.stream().tcp().as_fd().try_clone_to_owned()?,
            e.conn.stream().is_ktls(),
        ));
    }
    Ok((ls, cs))
}

/// Stop watching every socket of this reactor (it is frozen).
fn unwatch(ctx: &mut Ctx, l: &mut Local) {
    if !l.unwatched {
        l.unwatched = true;
        for e in &l.conns {
            ctx.unregister_fd(e.fd);
        }
        for a in &l.acceptors {
            ctx.unregister_fd(a.listener.as_raw_fd());
        }
    }
}

/// Watch every socket again (the reactor thaws).
fn rewatch(ctx: &mut Ctx, l: &mut Local) {
    if l.unwatched {
        l.unwatched = false;
        for e in &l.conns {
            let interest = Interest {
                readable: true,
                writable: e.watching_write,
            };
            if let Err(err) = ctx.register_fd(e.fd, interest) {
                tracing::error!(peer = %e.conn.peer(), error = %err, "cannot watch a connection");
            }
        }
        for a in &l.acceptors {
            if let Err(e) = ctx.register_fd(a.listener.as_raw_fd(), Interest::READABLE) {
                tracing::error!(error = %e, "cannot watch the listening socket");
            }
        }
    }
}

pub(crate) fn add_conn(ctx: &mut Ctx, conn: Conn<Sock>, frozen: bool) {
    let fd = conn.stream().tcp().as_raw_fd();
    let unwatched = LOCAL.with(|l| l.borrow().unwatched);
    if !unwatched {
        if let Err(e) = ctx.register_fd(fd, Interest::READABLE) {
            tracing::error!(peer = %conn.peer(), error = %e, "cannot watch a connection");
            return;
        }
    }
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.frozen |= frozen;
        let mut conn = conn;
        if l.quiesced {
            conn.quiesce();
        }
        if let Some(r) = readiness(&mut l) {
            if let Err(e) = r.add(fd, fd as u64) {
                tracing::warn!(peer = %conn.peer(), error = %e, "cannot add a connection to the readiness set");
            }
        }
        let index = l.conns.len();
        if let Some(r) = l.ready.as_mut() {
            r.set_index(fd, index);
        }
        l.conns.push(Entry {
            conn,
            fd,
            watching_write: false,
            // Read at once: data may have come before the socket joined the set.
            readable: true,
        });
        ensure_poller(ctx, &mut l);
    });
}

/// The one poller of this transport on a reactor.
struct TcpPoller;

impl Poller for TcpPoller {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if l.frozen {
                return PollStatus::Idle;
            }
            let mut busy = false;
            let now = ctx.now();
            let l = &mut *l;
            let (listener_ready, all_readable) = match l.ready.as_mut() {
                Some(r) => (poll_ready_set(r, &mut l.direct, &mut l.conns, now), false),
                // No readiness set: every socket every pass, accept at intervals.
                None => (
                    l.last_accept
                        .is_none_or(|t| now.duration_since(t) >= ACCEPT_INTERVAL),
                    true,
                ),
            };
            if listener_ready && !l.quiesced {
                l.last_accept = Some(now);
                for a in &mut l.acceptors {
                    busy |= a.poll();
                }
            }
            let mut i = 0;
            while i < l.conns.len() {
                let e = &mut l.conns[i];
                let readable =
                    std::mem::take(&mut e.readable) || all_readable || e.conn.stream().buffered();
                let work = e.conn.poll_ready(now, readable);
                if readable && work > 0 && l.direct.fd == Some(e.fd) {
                    l.direct.active = true;
                }
                if e.conn.is_closed() {
                    if l.direct.fd == Some(e.fd) {
                        l.direct = Direct::default();
                    }
                    ctx.unregister_fd(e.fd);
                    if let Some(r) = l.ready.as_mut() {
                        r.remove(e.fd);
                    }
                    tracing::debug!(peer = %e.conn.peer(), "connection closed");
                    l.conns.swap_remove(i);
                    if let (Some(r), Some(moved)) = (l.ready.as_mut(), l.conns.get(i)) {
                        r.set_index(moved.fd, i);
                    }
                    busy = true;
                    continue;
                }
                if e.conn.blocked_on_write() != e.watching_write {
                    e.watching_write = e.conn.blocked_on_write();
                    let interest = Interest {
                        readable: true,
                        writable: e.watching_write,
                    };
                    if let Err(err) = ctx.modify_fd(e.fd, interest) {
                        tracing::warn!(error = %err, "cannot change the events watched");
                    }
                }
                busy |= work > 0 || e.conn.has_pending_work();
                i += 1;
            }
            if l.export_when_drained.is_some() && l.conns.iter().all(|e| e.conn.is_drained()) {
                let tx = l.export_when_drained.take().expect("checked above");
                let out = export_local(ctx, l);
                let _ = tx.send((ctx.id(), out));
                return PollStatus::Idle;
            }
            if busy {
                PollStatus::Busy
            } else {
                PollStatus::Idle
            }
        })
    }
}
