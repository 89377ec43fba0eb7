//! A block device on a namespace of a remote NVMe/TCP subsystem, driven from a target
//! reactor: the remote device of live migration (the destination a source mirrors
//! writes to and copies into), and of anything else stacked on a device elsewhere.
//!
//! The host side is `lightpool-nvmf-host`, the same initiator `lightpool-perf` runs
//! (and through it the framing the target runs). [`RemoteBdev::connect`] connects the
//! admin queue, identifies the namespace and keeps the controller alive (Keep Alive at
//! half the timeout, on a thread of its own; a controller that is lost is connected
//! again). Each [`lightpool_bdev::IoChannel`] is one I/O queue pair of that controller,
//! opened on the reactor that uses it: submissions are queued and sent with one
//! `writev` per poll, data goes from and into the caller's buffers with no copy, and
//! nothing is allocated on a warm channel.
//!
//! Failures: a queue whose connection breaks, or whose oldest command has waited
//! longer than `io_timeout`, is dropped; its commands go back to the front of the
//! channel's backlog and the queue is connected again on a helper thread (never
//! blocking the reactor), at most once per `reconnect_delay`. A request that has not
//! completed within `io_timeout` of its submission, connected or not, ends with
//! `ETIMEDOUT`; one the device answers with an error ends with that error.
//!
//! A request larger than one command carries (the controller's largest transfer,
//! MDTS, or 65,536 blocks) is split into pieces and completes once every piece has; the
//! first error of a piece is its status. The device has no hot-upgrade export
//! (its connections are this process's): a graph holding one refuses to be handed
//! over.

mod channel;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use lightpool_bdev::{Bdev, BdevError, BdevInfo, IoChannel};
use lightpool_nvmf_host::{ConnectOptions, Controller, InitiatorError, Qpair, QpairConfig};

/// Where the namespace is and how to talk to it.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub nsid: u32,
    /// Our host NQN (the subsystem may allow only some hosts).
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Commands one channel keeps in flight at most (more wait in its backlog).
    pub queue_depth: u16,
    /// I/O queues asked for: channels open at once at most.
    pub max_queues: u16,
    /// Connecting, and each admin command.
    pub connect_timeout: Duration,
    /// How long a request may take from its submission, reconnects included.
    pub io_timeout: Duration,
    /// Least time between two attempts to connect a broken queue again.
    pub reconnect_delay: Duration,
    /// Keep-alive timeout asked for at Connect (zero: none).
    pub keep_alive_timeout: Duration,
}

impl RemoteOptions {
    pub fn new(addr: SocketAddr, subnqn: &str, nsid: u32) -> RemoteOptions {
        RemoteOptions {
            addr,
            subnqn: subnqn.to_string(),
            nsid,
            hostnqn: "nqn.2024-01.io.lightpool:remote-bdev".to_string(),
            hostid: [0x1b; 16],
            queue_depth: 128,
            max_queues: 64,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            reconnect_delay: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Initiator(#[from] InitiatorError),
    #[error("{0}")]
    Invalid(String),
}

impl From<RemoteError> for BdevError {
    fn from(e: RemoteError) -> BdevError {
        BdevError::Invalid(e.to_string())
    }
}

/// The controller and the I/O queue ids it has free. A controller connected again
/// starts a new generation: queue ids of an older one are not given back.
struct Ctl {
    ctrl: Controller,
    gen: u64,
    free_qids: VecDeque<u16>,
}

pub(crate) struct Shared {
    name: String,
    info: BdevInfo,
    opts: RemoteOptions,
    max_transfer: u32,
    ctl: Mutex<Ctl>,
    stop: AtomicBool,
    /// A queue could not be connected: the keeper checks the controller now.
    suspect: AtomicBool,
    wake: Condvar,
    /// Queues connected again after a failure, and controllers.
    pub(crate) reconnects: AtomicU64,
    pub(crate) controller_reconnects: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects a free I/O queue of the current controller (blocking: call it off the
    /// reactor, or at channel open).
    pub(crate) fn connect_queue(&self) -> Result<(Qpair, u16, u64), String> {
        let mut c = self.lock();
        let gen = c.gen;
        let qid = c.free_qids.pop_front().ok_or_else(|| {
            format!(
                "{}: all {} I/O queues of {} are in use",
                self.name, self.opts.max_queues, self.opts.subnqn
            )
        })?;
        let cfg = QpairConfig {
            depth: self.opts.queue_depth,
            // Only Dataset Management ranges use the queue's own buffers.
            buf_len: 4096,
            in_capsule_max: 0,
            force_r2t: false,
        };
        match c
            .ctrl
            .connect_io_queue_at(qid, self.opts.queue_depth.saturating_add(1), cfg)
        {
            Ok(mut q) => {
                q.set_nonblocking().map_err(|e| e.to_string())?;
                Ok((q, qid, gen))
            }
            Err(e) => {
                c.free_qids.push_back(qid);
                self.suspect.store(true, Release);
                self.wake.notify_all();
                Err(e.to_string())
            }
        }
    }

    /// A queue id no channel uses any more.
    pub(crate) fn release_qid(&self, qid: u16, gen: u64) {
        let mut c = self.lock();
        if c.gen == gen && !c.free_qids.contains(&qid) {
            c.free_qids.push_back(qid);
        }
    }

    pub(crate) fn opts(&self) -> &RemoteOptions {
        &self.opts
    }

    pub(crate) fn max_transfer(&self) -> u32 {
        self.max_transfer
    }

    pub(crate) fn info(&self) -> &BdevInfo {
        &self.info
    }
}

/// A namespace of a remote subsystem as a block device.
pub struct RemoteBdev {
    sh: Arc<Shared>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

fn connect_controller(o: &RemoteOptions) -> Result<(Controller, u16), InitiatorError> {
    let mut c = Controller::connect(ConnectOptions {
        addr: o.addr,
        subnqn: o.subnqn.clone(),
        hostnqn: o.hostnqn.clone(),
        hostid: o.hostid,
        hdgst: false,
        ddgst: false,
        kato_ms: u32::try_from(o.keep_alive_timeout.as_millis()).unwrap_or(u32::MAX),
        timeout: o.connect_timeout,
        tls: None,
        ktls: false,
    })?;
    let queues = c.request_io_queues(o.max_queues.max(1))?;
    Ok((c, queues))
}

impl RemoteBdev {
    /// Connects to namespace `opts.nsid` of `opts.subnqn` at `opts.addr`; `name` is what
    /// listings call the device.
    pub fn connect(name: &str, opts: RemoteOptions) -> Result<Arc<RemoteBdev>, RemoteError> {
        if opts.queue_depth == 0 {
            return Err(RemoteError::Invalid(format!(
                "{name}: a queue depth of 0 carries nothing"
            )));
        }
        let (mut ctrl, queues) = connect_controller(&opts)?;
        let ns = ctrl.identify_namespace(opts.nsid)?;
        let max_transfer = ctrl.info.max_transfer.unwrap_or(u32::MAX);
        let info = BdevInfo {
            name: name.to_string(),
            block_size: ns.block_size,
            num_blocks: ns.num_blocks,
            read_only: false,
            // Flush is passed on: the remote end decides what it drains.
            volatile_write_cache: true,
            supports_deallocate: false,
        };
        tracing::info!(
            name,
            addr = %opts.addr,
            subnqn = opts.subnqn,
            nsid = opts.nsid,
            cntlid = ctrl.info.cntlid,
            blocks = ns.num_blocks,
            block_size = ns.block_size,
            queues,
            "remote namespace connected"
        );
        let sh = Arc::new(Shared {
            name: name.to_string(),
            info,
            max_transfer,
            ctl: Mutex::new(Ctl {
                ctrl,
                gen: 0,
                free_qids: (1..=queues).collect(),
            }),
            opts,
            stop: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            wake: Condvar::new(),
            reconnects: AtomicU64::new(0),
            controller_reconnects: AtomicU64::new(0),
        });
        let k = sh.clone();
        let keeper = std::thread::Builder::new()
            .name(format!(
                "lp-remote-{}",
                name.chars().take(5).collect::<String>()
            ))
            .spawn(move || keep_alive(&k))
            .map_err(|e| RemoteError::Invalid(format!("{name}: no keep-alive thread: {e}")))?;
        Ok(Arc::new(RemoteBdev {
            sh,
            keeper: Mutex::new(Some(keeper)),
        }))
    }

    /// Queues connected again after they broke, and controllers connected again.
    pub fn reconnects(&self) -> (u64, u64) {
        (
            self.sh.reconnects.load(Relaxed),
            self.sh.controller_reconnects.load(Relaxed),
        )
    }

    /// The remote controller's ID (changes when it is connected again).
    pub fn cntlid(&self) -> u16 {
        self.sh.lock().ctrl.info.cntlid
    }
}

/// Keep Alive at half the timeout (and when a channel could not connect a queue); a
/// controller that does not answer is connected again (a new generation: its queues
/// are connected again by their channels).
fn keep_alive(sh: &Shared) {
    let every = if sh.opts.keep_alive_timeout.is_zero() {
        Duration::from_secs(1)
    } else {
        (sh.opts.keep_alive_timeout / 2).max(Duration::from_millis(100))
    };
    let mut c = sh.lock();
    loop {
        if !sh.suspect.load(Acquire) {
            let (g, _) = sh
                .wake
                .wait_timeout(c, every)
                .unwrap_or_else(|e| e.into_inner());
            c = g;
        }
        if sh.stop.load(Acquire) {
            return;
        }
        let suspect = sh.suspect.swap(false, AcqRel);
        if sh.opts.keep_alive_timeout.is_zero() && !suspect {
            continue;
        }
        let Err(e) = c.ctrl.keep_alive() else {
            continue;
        };
        tracing::warn!(name = sh.name, error = %e, "remote controller lost; connecting again");
        drop(c);
        let fresh = loop {
            match connect_controller(&sh.opts) {
                Ok(x) => break Some(x),
                Err(e) => {
                    tracing::warn!(name = sh.name, error = %e, "remote controller still unreachable");
                    let g = sh.lock();
                    let (g, _) = sh
                        .wake
                        .wait_timeout(g, sh.opts.reconnect_delay.max(Duration::from_millis(100)))
                        .unwrap_or_else(|e| e.into_inner());
                    drop(g);
                    if sh.stop.load(Acquire) {
                        break None;
                    }
                }
            }
        };
        c = sh.lock();
        let Some((ctrl, queues)) = fresh else {
            return;
        };
        c.ctrl = ctrl;
        c.gen += 1;
        c.free_qids = (1..=queues).collect();
        sh.suspect.store(false, Release);
        sh.controller_reconnects.fetch_add(1, Relaxed);
    }
}

impl Drop for RemoteBdev {
    fn drop(&mut self) {
        self.sh.stop.store(true, Release);
        self.sh.wake.notify_all();
        let k = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(k) = k {
            let _ = k.join();
        }
    }
}

impl Bdev for RemoteBdev {
    fn info(&self) -> &BdevInfo {
        &self.sh.info
    }

    fn kind(&self) -> &'static str {
        "nvmf-tcp"
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let q = self.sh.connect_queue().map_err(BdevError::Invalid)?;
        Ok(Box::new(channel::RemoteChannel::new(self.sh.clone(), q)))
    }
}
