//! NVMe/TCP through a kernel-bypass packet engine (lightpool-netstack's
//! `PacketEngine`: AF_XDP with the `af_xdp` feature, DPDK with `dpdk`). Each reactor
//! owns queues of its own, runs the userspace TCP stack over each, and serves the
//! connections that arrive there with the same connection code as kernel sockets
//! (`Conn`, over the stack's `TcpConn` streams). Readiness comes from the stack, not
//! epoll: a connection is read when its socket holds bytes.
//!
//! Sleeping: a queue with a descriptor (AF_XDP's socket) is registered with the
//! reactor, which sleeps on it when the stack has nothing unsent and no timer due, so
//! an idle AF_XDP listener costs no CPU. A queue without one (a DPDK queue) can only be
//! polled: while a reactor holds such a queue it never sleeps, and its core is spent
//! on the queue whether traffic comes or not.
//!
//! The engines' listener setup is beside this: `xdp.rs`, `dpdk.rs`. A listener goes
//! ([`TcpTransport::remove_engine`], the management API's listener removal): its
//! queues stop accepting, their connections close once what they run has finished,
//! then the queues, their stacks and the interface hold (XDP program and sockets, DPDK
//! port) go. A hot upgrade does the same at quiesce and the successor listens again at
//! resume (`kind.rs`): the connections do not travel (they live in this process's
//! userspace stack), the hosts reconnect. Not here: TLS on such a listener.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_netstack::{PacketEngine, Stack, StackConfig, TcpConn};
use lightpool_nvmf::{ConnectionInfo, EngineSpec, ListenAddr, Target};
use lightpool_reactor::{Ctx, Interest, PollStatus, Poller};

use crate::conn::Conn;
use crate::offload::{Block, EngineSlot, Publisher, Registry};
use crate::{TcpError, TcpTransport};

/// How often a queue publishes its engine counters for the metrics.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Which engine a queue is and where its counts go.
pub(crate) struct QueueMeta {
    /// "af_xdp" or "dpdk".
    pub(crate) engine: &'static str,
    /// Its steering engine's name (`SteeringEngine::NAME`).
    pub(crate) steering: &'static str,
    pub(crate) interface: String,
    pub(crate) offload: Arc<Registry>,
    /// The listener the queue serves ([`EngineListener::id`]).
    pub(crate) listener: u64,
}

/// Names engine listeners for their removal (a number per listener made here).
pub(crate) static NEXT_ENGINE_LISTENER: AtomicU64 = AtomicU64::new(1);

/// A listener served through a packet engine; `keep` holds what must live as long as
/// it (AF_XDP's attached XDP program, DPDK's port).
pub(crate) struct EngineListener<K> {
    /// Its queues on the reactors carry this ([`QueueMeta::listener`]).
    pub(crate) id: u64,
    pub(crate) addr: ListenAddr,
    pub(crate) spec: EngineSpec,
    pub(crate) keep: K,
}

/// One reactor's queue of some engine: its stack and the connections that came
/// through it.
struct QueueLocal<E: PacketEngine + 'static> {
    stack: Stack<E>,
    port: u16,
    target: Arc<Target>,
    conns: Vec<Conn<TcpConn>>,
    engine: &'static str,
    interface: String,
    /// This reactor's counts of the flows this engine steered here.
    block: Arc<Block>,
    /// This queue's engine counters as the metrics read them, and when next to publish.
    slot: Arc<EngineSlot>,
    next_stats: Option<std::time::Instant>,
    listener: u64,
    /// Its listener is being removed: nothing more is accepted, its connections close.
    ending: bool,
}

impl<E: PacketEngine + 'static> QueueLocal<E> {
    /// Publish the queue's counters for the metrics (at most every `STATS_EVERY`).
    fn publish_stats(&mut self, now: std::time::Instant) {
        if self.next_stats.is_some_and(|t| now < t) {
            return;
        }
        self.next_stats = Some(now + STATS_EVERY);
        let c = self.stack.counters();
        self.slot.set(lightpool_nvmf::PacketEngineStats {
            engine: self.engine,
            interface: self.interface.clone(),
            reactor: 0,
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            tx_frames: c.tx_frames,
            tx_bytes: c.tx_bytes,
            drops: vec![
                ("rx_dropped", c.rx_dropped),
                ("rx_ring_full", c.rx_ring_full),
                ("rx_fill_empty", c.rx_fill_empty),
                ("tx_full", c.tx_full),
                ("tx_invalid", c.tx_invalid),
                ("tx_kick_errors", c.tx_kick_errors),
            ],
        });
    }
}

/// A queue whatever its engine, as the poller drives it.
trait EngineQueue {
    /// Moves frames, accepts, serves the connections; whether there was work.
    fn poll(&mut self, ctx: &Ctx) -> bool;
    /// Whether the reactor may sleep on a descriptor for this queue.
    fn can_sleep(&self) -> bool;
    /// Its connections, as the management API lists them.
    fn connections(&self, reactor: usize, out: &mut Vec<ConnectionInfo>);
    /// The listener it serves.
    fn listener(&self) -> u64;
    /// Its listener goes: stop accepting and close the connections (what runs
    /// finishes); whether none is left, so that the queue may be dropped.
    fn end(&mut self) -> bool;
    /// The descriptor the reactor watches for it, if any.
    fn wake_fd(&self) -> Option<RawFd>;
    /// Its listener stays after all (its end timed out): accept again.
    fn keep(&mut self);
}

impl<E: PacketEngine + 'static> EngineQueue for QueueLocal<E> {
    fn poll(&mut self, ctx: &Ctx) -> bool {
        let now = ctx.now();
        let mut busy = self.stack.poll();
        while !self.ending {
            let Some(s) = self.stack.accept(self.port) else {
                break;
            };
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let engine = self.stack.name();
            tracing::debug!(%peer, reactor = ctx.id(), %engine, "connection accepted");
            let mut conn = Conn::new(s, self.target.clone(), peer, ctx.id());
            self.block.flow();
            conn.set_offload(Publisher::new(self.block.clone()));
            self.conns.push(conn);
            busy = true;
        }
        let mut i = 0;
        while i < self.conns.len() {
            let c = &mut self.conns[i];
            let readable = c.stream().readable();
            let work = c.poll_ready(now, readable);
            if c.is_closed() {
                tracing::debug!(peer = %c.peer(), engine = %self.stack.name(), "connection closed");
                self.conns.swap_remove(i);
                busy = true;
                continue;
            }
            busy |= work > 0 || c.has_pending_work();
            i += 1;
        }
        self.publish_stats(now);
        // What the connections wrote went out with their writes; a sleeping reactor is
        // woken only by frames, so stay up while the stack still holds data or a timer
        // is close.
        busy | self.stack.busy()
    }

    fn can_sleep(&self) -> bool {
        self.stack.wake_fd().is_some()
    }

    fn connections(&self, reactor: usize, out: &mut Vec<ConnectionInfo>) {
        for c in &self.conns {
            let local = c.stream().local_addr().map(|a| a.to_string());
            let mut info = ConnectionInfo::of_queue(
                crate::NAME,
                c.queue(),
                reactor,
                c.peer().to_string(),
                local.unwrap_or_default(),
            );
            info.engine = self.engine.to_string();
            out.push(info);
        }
    }

    fn listener(&self) -> u64 {
        self.listener
    }

    fn end(&mut self) -> bool {
        if !self.ending {
            self.ending = true;
            for c in &mut self.conns {
                c.close("its listener was removed");
            }
        }
        if self.conns.is_empty() {
            // The closed connections' FINs go out before the stack goes.
            self.stack.poll();
            return true;
        }
        false
    }

    fn wake_fd(&self) -> Option<RawFd> {
        self.stack.wake_fd()
    }

    fn keep(&mut self) {
        self.ending = false;
    }
}

/// On a reactor: end its queues of listener `id` ([`EngineQueue::end`]), dropping
/// those with no connection left; how many of them are left.
fn end_queues(ctx: &mut Ctx, id: u64) -> usize {
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        let mut left = 0;
        q.retain_mut(|x| {
            if x.listener() != id {
                return true;
            }
            if x.end() {
                if let Some(fd) = x.wake_fd() {
                    ctx.unregister_fd(fd);
                }
                return false;
            }
            left += 1;
            true
        });
        left
    })
}

impl TcpTransport {
    /// Ends the queues of engine listener `id` on every reactor: its connections close
    /// once what they run has finished (at most `timeout`), then the queues and their
    /// stacks go. The caller then drops the listener's interface hold.
    pub(crate) fn end_engine_queues(&self, id: u64, timeout: Duration) -> Result<(), TcpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left: usize = self
                .ask(move |ctx, _| end_queues(ctx, id))?
                .into_iter()
                .sum();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                // The listener stays: its queues accept again (the connections asked
                // to close still close).
                self.ask(move |_, _| {
                    QUEUES.with(|q| {
                        for x in q.borrow_mut().iter_mut().filter(|x| x.listener() == id) {
                            x.keep();
                        }
                    })
                })?;
                return Err(TcpError::Timeout(0));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the engine listener at `addr` from `list` (AF_XDP's or DPDK's): its
    /// connections close once what they run has finished (at most `timeout`), its
    /// queues go, then its hold on the interface (XDP program and sockets, DPDK port)
    /// and its discovery entry. Its engine, or `None` when `list` has no such listener.
    pub(crate) fn remove_engine<K>(
        &self,
        list: &std::sync::Mutex<Vec<EngineListener<K>>>,
        addr: &ListenAddr,
        timeout: Duration,
    ) -> Result<Option<EngineSpec>, TcpError> {
        let id = {
            let l = list.lock().expect("engine listeners");
            l.iter().find(|l| &l.addr == addr).map(|l| l.id)
        };
        let Some(id) = id else {
            return Ok(None);
        };
        self.end_engine_queues(id, timeout)?;
        let gone = {
            let mut l = list.lock().expect("engine listeners");
            l.iter().position(|l| l.id == id).map(|i| l.remove(i))
        };
        let Some(gone) = gone else {
            return Ok(None);
        };
        self.target.remove_listener(addr);
        let spec = gone.spec.clone();
        // The XDP program detaches, the sockets or the port close.
        drop(gone);
        tracing::info!(addr = %addr.to_addr_string(), engine = %spec.engine,
            interface = %spec.interface, "NVMe/TCP listener removed");
        Ok(Some(spec))
    }
}

/// The connections of this reactor's engine queues (called on the reactor).
pub(crate) fn connections(reactor: usize) -> Vec<ConnectionInfo> {
    let mut out = Vec::new();
    QUEUES.with(|q| {
        for q in q.borrow().iter() {
            q.connections(reactor, &mut out);
        }
    });
    out
}

thread_local! {
    static QUEUES: RefCell<Vec<Box<dyn EngineQueue>>> = const { RefCell::new(Vec::new()) };
    /// Whether this reactor runs the engine poller already.
    static POLLER: Cell<bool> = const { Cell::new(false) };
}

pub(crate) fn listen_err(addr: SocketAddr, e: impl std::fmt::Display) -> TcpError {
    TcpError::Listen {
        addr,
        source: std::io::Error::other(e.to_string()),
    }
}

/// On the reactor that owns `queue`: its stack, listening on `port`, watched for
/// frames (on its descriptor, where it has one; else polled without pause).
pub(crate) fn start_queue<E: PacketEngine + 'static>(
    ctx: &mut Ctx,
    queue: E,
    cfg: StackConfig,
    port: u16,
    target: Arc<Target>,
    meta: QueueMeta,
) -> std::io::Result<()> {
    let fd = queue.wake_fd();
    let mut stack = Stack::new(queue, cfg)?;
    stack.listen(port)?;
    if let Some(fd) = fd {
        ctx.register_fd(fd, Interest::READABLE)?;
    }
    QUEUES.with(|q| {
        let mut q = q.borrow_mut();
        q.push(Box::new(QueueLocal {
            stack,
            port,
            target,
            conns: Vec::new(),
            engine: meta.engine,
            interface: meta.interface,
            block: meta.offload.block(ctx.id(), meta.steering),
            slot: meta.offload.engine_slot(ctx.id(), meta.steering),
            next_stats: None,
            listener: meta.listener,
            ending: false,
        }));
    });
    // One poller per reactor, for all its queues, whatever came and went.
    if !POLLER.get() {
        POLLER.set(true);
        ctx.add_poller(Box::new(EnginePoller));
    }
    Ok(())
}

/// Polls this reactor's engine queues, their stacks and connections.
struct EnginePoller;

impl Poller for EnginePoller {
    fn poll(&mut self, ctx: &mut Ctx) -> PollStatus {
        let busy = QUEUES.with(|q| {
            let mut busy = false;
            for q in q.borrow_mut().iter_mut() {
                busy |= q.poll(ctx);
                // Nothing wakes the reactor for a queue it cannot sleep on.
                busy |= !q.can_sleep();
            }
            busy
        });
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}
