//! NVMe/RDMA over rdma-core (libibverbs, librdmacm): the second implementation of the
//! NVMe-oF core's transport seam.
//!
//! One RDMA_CM event channel per transport, read without blocking on the first reactor
//! (its descriptor wakes that reactor from sleep): it carries the listeners' connect
//! requests and every connection's disconnects ([`cm`]). Each accepted connection is one
//! NVMe queue and one reliable-connected queue pair with its own completion queue,
//! owned by one reactor (round robin) for its whole life, which polls that CQ
//! ([`conn`]). Receives are per queue pair, or from one shared receive queue per reactor
//! and device (`[target] rdma_srq`, [`srq`]).
//!
//! Hot upgrade: RDMA queue pairs cannot be handed to another process, so the old
//! process ends its RDMA connections cleanly and stops listening (its
//! `quiesce_and_export` exports only the listener addresses); the successor listens
//! again when it starts serving, and the hosts reconnect (the Linux host within its
//! reconnect delay, I/O held meanwhile). See docs/architecture.md.

mod cm;
pub mod conn;
mod kind;
pub mod srq;
pub mod stall;
mod warn_limit;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightpool_nvmf::{ListenAddr, ListenerInfo, Target};
use lightpool_rdma_sys::{CmId, EventChannel, RdmaError};
use lightpool_reactor::{Ctx, Interest, PollStatus, Poller, ReactorHandle};

pub use conn::Conn;
pub use kind::{RdmaKind, NAME};
pub use srq::{set_shared_receive_queue, shared_receive_queue};

/// Errors of the transport's control side.
#[derive(Debug, thiserror::Error)]
pub enum RdmaTransportError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: RdmaError,
    },
    #[error(transparent)]
    Rdma(#[from] RdmaError),
    #[error("no reactor to run on")]
    NoReactors,
    #[error(transparent)]
    Reactor(#[from] lightpool_reactor::ReactorError),
    #[error("reactor {0} did not answer in time")]
    Timeout(usize),
}

static NEXT_PORTID: AtomicU16 = AtomicU16::new(0x100);

/// Time a reactor has to answer a control request.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the first reactor reads the event channel while it is busy (a ready
/// channel also wakes it from sleep).
const CM_INTERVAL: Duration = Duration::from_millis(1);

/// What every reactor and the control side share.
pub(crate) struct Shared {
    pub(crate) target: Arc<Target>,
    pub(crate) reactors: Vec<ReactorHandle>,
    pub(crate) channel: Arc<EventChannel>,
    pub(crate) devices: Mutex<Vec<Arc<conn::Device>>>,
    /// Each reactor's shared receive queue per protection domain (`[target] rdma_srq`),
    /// made with the first connection it owns on that device.
    pub(crate) srqs: Mutex<Vec<(srq::SrqKey, Arc<srq::ReactorSrq>)>>,
    /// Which reactor owns each connection, by identifier address (control path only).
    owners: Mutex<HashMap<usize, usize>>,
    next: AtomicUsize,
    quiesced: AtomicBool,
}

impl Shared {
    pub(crate) fn next_reactor(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn quiesced(&self) -> bool {
        self.quiesced.load(Ordering::Relaxed)
    }

    pub(crate) fn owners_insert(&self, key: usize, reactor: usize) {
        self.owners
            .lock()
            .expect("owner map poisoned")
            .insert(key, reactor);
    }

    pub(crate) fn owners_remove(&self, key: usize) {
        self.owners.lock().expect("owner map poisoned").remove(&key);
    }

    /// A disconnect (or error) event for a connection: its reactor closes it.
    pub(crate) fn route_close(&self, key: usize, why: String) {
        let owner = self
            .owners
            .lock()
            .expect("owner map poisoned")
            .get(&key)
            .copied();
        let Some(r) = owner.and_then(|o| self.reactors.iter().find(|r| r.id() == o)) else {
            return;
        };
        if let Err(e) = r.send(move |_: &mut Ctx| cm::close_local(key, &why)) {
            tracing::warn!(error = %e, "cannot reach a connection's reactor");
        }
    }
}

/// What a reactor holds of this transport.
#[derive(Default)]
pub(crate) struct Local {
    pub(crate) conns: Vec<Conn>,
    /// The first reactor: listeners, and the shared state to read the channel with.
    listeners: Vec<(SocketAddr, CmId)>,
    cm: Option<Arc<Shared>>,
    last_cm: Option<Instant>,
    registered: bool,
    quiesced: bool,
    /// The timer that wakes this reactor at the earliest stall deadline of its
    /// connections ([`stall`]): a reactor asleep on quiet completion queues must still
    /// notice that nothing completes.
    stall_timer: Option<(Instant, lightpool_reactor::TimerId)>,
}

thread_local! {
    pub(crate) static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

fn ensure_poller(ctx: &mut Ctx, l: &mut Local) {
    if !l.registered {
        l.registered = true;
        ctx.add_poller(Box::new(RdmaPoller));
    }
}

/// A new connection joins its reactor.
pub(crate) fn add_conn(ctx: &mut Ctx, mut conn: Conn) {
    if let Err(e) = ctx.register_fd(conn.fd(), Interest::READABLE) {
        tracing::error!(peer = %conn.peer(), error = %e, "cannot watch a connection's completions");
    }
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if l.quiesced {
            conn.close("hot upgrade under way");
        }
        l.conns.push(conn);
        ensure_poller(ctx, &mut l);
    });
}

/// The NVMe/RDMA transport of one target.
pub struct RdmaTransport {
    shared: Arc<Shared>,
    /// Listeners to bind again when serving resumes (hot upgrade: the predecessor's,
    /// or this process's own after a failed handover).
    relisten: Mutex<Vec<SocketAddr>>,
}

impl RdmaTransport {
    pub fn new(
        target: Arc<Target>,
        reactors: Vec<ReactorHandle>,
    ) -> Result<RdmaTransport, RdmaTransportError> {
        if reactors.is_empty() {
            return Err(RdmaTransportError::NoReactors);
        }
        let channel = Arc::new(EventChannel::new()?);
        let shared = Arc::new(Shared {
            target,
            reactors,
            channel,
            devices: Mutex::new(Vec::new()),
            srqs: Mutex::new(Vec::new()),
            owners: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            quiesced: AtomicBool::new(false),
        });
        let s = shared.clone();
        let fd = shared.channel.fd();
        shared.reactors[0].send(move |ctx: &mut Ctx| {
            if let Err(e) = ctx.register_fd(fd, Interest::READABLE) {
                tracing::error!(error = %e, "cannot watch the RDMA_CM event channel");
            }
            LOCAL.with(|l| {
                let mut l = l.borrow_mut();
                l.cm = Some(s);
                ensure_poller(ctx, &mut l);
            });
        })?;
        Ok(RdmaTransport {
            shared,
            relisten: Mutex::new(Vec::new()),
        })
    }

    /// Listen on `addr` (rdma_cm binds it to the RDMA device of that address); the
    /// listener joins the discovery log when `announce`.
    pub fn listen(
        &self,
        addr: SocketAddr,
        announce: bool,
    ) -> Result<SocketAddr, RdmaTransportError> {
        let id = CmId::listen(&self.shared.channel, addr, 128)
            .map_err(|source| RdmaTransportError::Listen { addr, source })?;
        let bound = id.local_addr().unwrap_or(addr);
        if announce {
            self.shared.target.add_listener(ListenerInfo {
                addr: ListenAddr::rdma(bound),
                portid: NEXT_PORTID.fetch_add(1, Ordering::Relaxed),
            });
        }
        self.shared.reactors[0].send(move |_: &mut Ctx| {
            LOCAL.with(|l| l.borrow_mut().listeners.push((bound, id)));
        })?;
        tracing::info!(%bound, "NVMe/RDMA listening");
        Ok(bound)
    }

    /// Stop listening on `addr` and close the connections that came in through it.
    pub fn unlisten(&self, addr: SocketAddr) -> Result<bool, RdmaTransportError> {
        let removed: usize = self
            .ask(move |_, l| {
                let before = l.listeners.len();
                l.listeners.retain(|(a, _)| *a != addr);
                before - l.listeners.len()
            })?
            .into_iter()
            .sum();
        if removed == 0 {
            return Ok(false);
        }
        self.ask(move |_, l| {
            for c in &mut l.conns {
                let came_in = c.local().parse::<SocketAddr>().is_ok_and(|x| {
                    x.port() == addr.port() && (addr.ip().is_unspecified() || x.ip() == addr.ip())
                });
                if came_in {
                    c.close("its listener was removed");
                }
            }
        })?;
        self.shared.target.remove_listener(&ListenAddr::rdma(addr));
        tracing::info!(%addr, "NVMe/RDMA listener removed");
        Ok(true)
    }

    /// Run `f` on every reactor and collect the answers.
    pub(crate) fn ask<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Ctx, &mut Local) -> R + Send + Sync + Clone + 'static,
    ) -> Result<Vec<R>, RdmaTransportError> {
        let (tx, rx) = crossbeam::channel::unbounded();
        let n = self.shared.reactors.len();
        for (i, r) in self.shared.reactors.iter().enumerate() {
            let tx = tx.clone();
            let f = f.clone();
            r.send(move |ctx: &mut Ctx| {
                let out = LOCAL.with(|l| f(ctx, &mut l.borrow_mut()));
                let _ = tx.send((i, out));
            })?;
        }
        let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            let (i, r) = rx
                .recv_timeout(ASK_TIMEOUT)
                .map_err(|_| RdmaTransportError::Timeout(0))?;
            out[i] = Some(r);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every reactor answered"))
            .collect())
    }

    /// Close the connection of `peer` on reactor `reactor`; `false` if there is none.
    pub fn disconnect(&self, reactor: usize, peer: &str) -> Result<bool, RdmaTransportError> {
        let r = self
            .shared
            .reactors
            .get(reactor)
            .ok_or(RdmaTransportError::NoReactors)?;
        let (tx, rx) = crossbeam::channel::bounded(1);
        let peer = peer.to_string();
        r.send(move |_: &mut Ctx| {
            let found = LOCAL.with(|l| {
                let mut found = false;
                for c in l.borrow_mut().conns.iter_mut().filter(|c| c.peer() == peer) {
                    c.close("disconnected by the operator");
                    found = true;
                }
                found
            });
            let _ = tx.send(found);
        })?;
        rx.recv_timeout(ASK_TIMEOUT)
            .map_err(|_| RdmaTransportError::Timeout(reactor))
    }

    /// Hot upgrade, old process: refuse new connections, stop listening, end every
    /// connection, and wait (at most `timeout`) for them to close. Returns the listener
    /// addresses (for the successor to listen on again), or `None` if some connection
    /// did not close in time (then everything serves again).
    pub fn quiesce_and_end(
        &self,
        timeout: Duration,
    ) -> Result<Option<Vec<SocketAddr>>, RdmaTransportError> {
        self.shared.quiesced.store(true, Ordering::Relaxed);
        let per = self.ask(|_, l| {
            l.quiesced = true;
            for c in &mut l.conns {
                c.close("hot upgrade: the host reconnects to the successor");
            }
            std::mem::take(&mut l.listeners)
                .into_iter()
                .map(|(a, _)| a)
                .collect::<Vec<_>>()
        })?;
        let addrs: Vec<SocketAddr> = per.into_iter().flatten().collect();
        *self.relisten.lock().expect("relisten poisoned") = addrs.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let open: usize = self.ask(|_, l| l.conns.len())?.into_iter().sum();
            if open == 0 {
                return Ok(Some(addrs));
            }
            if Instant::now() > deadline {
                self.resume()?;
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Serve (again): accept connections, and listen on what a hot upgrade left to
    /// listen on (already in the discovery log).
    pub fn resume(&self) -> Result<(), RdmaTransportError> {
        self.shared.quiesced.store(false, Ordering::Relaxed);
        self.ask(|ctx, l| {
            l.quiesced = false;
            let now = ctx.now();
            for c in &mut l.conns {
                c.resume(now);
            }
        })?;
        let addrs = std::mem::take(&mut *self.relisten.lock().expect("relisten poisoned"));
        for a in addrs {
            self.listen(a, false)?;
        }
        Ok(())
    }

    /// In a successor: the listeners to bind once the predecessor has let go.
    pub(crate) fn set_relisten(&self, addrs: Vec<SocketAddr>) {
        *self.relisten.lock().expect("relisten poisoned") = addrs;
    }
}

/// Makes sure the reactor wakes by `next` (the earliest stall deadline of its
/// connections): a timer that fires sooner than needed only makes one more poll.
fn arm_stall_timer(ctx: &mut Ctx, l: &mut Local, next: Option<Instant>) {
    let Some(at) = next else { return };
    if l.stall_timer.is_some_and(|(t, _)| t <= at) {
        return;
    }
    if let Some((_, id)) = l.stall_timer.take() {
        ctx.cancel_timer(id);
    }
    let id = ctx.add_timer(
        at,
        Box::new(|_: &mut Ctx| LOCAL.with(|l| l.borrow_mut().stall_timer = None)),
    );
    l.stall_timer = Some((at, id));
}

/// The one poller of this transport on a reactor.
struct RdmaPoller;

impl Poller for RdmaPoller {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        let now = ctx.now();
        let cm = LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let due = l
                .last_cm
                .is_none_or(|t| now.duration_since(t) >= CM_INTERVAL);
            if due && l.cm.is_some() {
                l.last_cm = Some(now);
                l.cm.clone()
            } else {
                None
            }
        });
        let mut busy = false;
        // Outside the borrow: accepting may add a connection to this reactor.
        if let Some(shared) = cm {
            busy |= cm::poll_events(ctx, &shared) > 0;
        }
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let mut i = 0;
            while i < l.conns.len() {
                let c = &mut l.conns[i];
                let work = c.poll(now);
                busy |= work > 0 || c.has_pending_work();
                if c.is_closed() {
                    let c = l.conns.swap_remove(i);
                    ctx.unregister_fd(c.fd());
                    c.shared().owners_remove(c.key());
                    tracing::debug!(peer = %c.peer(), "NVMe/RDMA connection closed");
                    continue;
                }
                i += 1;
            }
            let next = l.conns.iter().filter_map(Conn::stall_deadline).min();
            arm_stall_timer(ctx, &mut l, next);
        });
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}
