//! One I/O queue pair of the remote controller, as a block-device channel on a
//! reactor: requests become NVMe commands on the queue (data from and into the
//! caller's buffers), a backlog holds what the queue has no room for, and a broken or
//! stuck queue is connected again off the reactor while its commands wait.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use lightpool_bdev::{check_request, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_nvmf_host::{Completion, Dir, Qpair};
use lightpool_spec::nvme::{io_opcode, Sqe};
use lightpool_spec::status::{command_specific, generic, sct, Status};

use crate::Shared;

/// Most blocks one NVMe command carries (NLB is 16 bits, 0's based).
const MAX_BLOCKS: u32 = 1 << 16;
/// Polls between two looks for commands older than the timeout.
const TIMEOUT_SCAN_EVERY: u32 = 1024;

type Connected = (Qpair, u16, u64);

/// No parent: a request carried by one command.
const WHOLE: u32 = u32::MAX;

/// A request (or a piece of one) on its way: when it was submitted to us, and the
/// request it is a piece of.
#[derive(Clone, Copy)]
struct Entry {
    req: IoRequest,
    t: Instant,
    parent: u32,
}

/// A request larger than one command carries, split into pieces: how many have not
/// ended, and the first error one met.
#[derive(Clone, Copy)]
struct Parent {
    tag: u64,
    left: u32,
    status: IoStatus,
}

pub(crate) struct RemoteChannel {
    sh: Arc<Shared>,
    /// The queue pair, its queue id and the controller generation it belongs to.
    q: Option<Connected>,
    /// A connection being made on a helper thread.
    pending: Option<Receiver<Result<Connected, String>>>,
    next_try: Instant,
    /// Per command id: what it carries.
    cmds: Vec<Option<Entry>>,
    backlog: VecDeque<Entry>,
    /// Split requests, and the free places among them.
    parents: Vec<Parent>,
    free_parents: Vec<u32>,
    /// Completions decided here (refused, timed out), for the next poll.
    done: VecDeque<(u64, IoStatus)>,
    comps: Vec<Completion>,
    polls: u32,
}

fn status_of(s: Status, digest_error: bool) -> IoStatus {
    if digest_error {
        return IoStatus::Io(libc::EIO);
    }
    if s.is_success() {
        return IoStatus::Success;
    }
    match (s.sct(), s.sc()) {
        (sct::GENERIC, generic::LBA_OUT_OF_RANGE) => IoStatus::OutOfRange,
        (sct::GENERIC, generic::CAPACITY_EXCEEDED) => IoStatus::CapacityExceeded,
        (sct::GENERIC, generic::NAMESPACE_WRITE_PROTECTED) => IoStatus::ReadOnly,
        (sct::COMMAND_SPECIFIC, command_specific::ATTEMPTED_WRITE_TO_READ_ONLY_RANGE) => {
            IoStatus::ReadOnly
        }
        _ => IoStatus::Io(libc::EIO),
    }
}

/// The NVMe command for `r` on namespace `nsid`, which way its data goes and how
/// many bytes.
fn command(nsid: u32, r: &IoRequest) -> (Sqe, Dir, u32) {
    let rw = |opcode| Sqe {
        opcode,
        nsid,
        cdw10: r.offset_blocks as u32,
        cdw11: (r.offset_blocks >> 32) as u32,
        cdw12: r.num_blocks.saturating_sub(1),
        ..Sqe::default()
    };
    match r.op {
        IoOp::Read => (rw(io_opcode::READ), Dir::Read, r.len as u32),
        IoOp::Write => (rw(io_opcode::WRITE), Dir::Write, r.len as u32),
        IoOp::WriteZeroes => (rw(io_opcode::WRITE_ZEROES), Dir::None, 0),
        IoOp::Flush => (
            Sqe {
                opcode: io_opcode::FLUSH,
                nsid,
                ..Sqe::default()
            },
            Dir::None,
            0,
        ),
        // One range (NR 0's based), attribute Deallocate; the range is the data.
        IoOp::Deallocate => (
            Sqe {
                opcode: io_opcode::DATASET_MANAGEMENT,
                nsid,
                cdw10: 0,
                cdw11: 1 << 2,
                ..Sqe::default()
            },
            Dir::Write,
            16,
        ),
    }
}

impl RemoteChannel {
    pub(crate) fn new(sh: Arc<Shared>, q: Connected) -> RemoteChannel {
        let depth = usize::from(sh.opts().queue_depth);
        RemoteChannel {
            sh,
            q: Some(q),
            pending: None,
            next_try: Instant::now(),
            cmds: vec![None; depth],
            backlog: VecDeque::with_capacity(4 * depth),
            parents: Vec::with_capacity(depth),
            free_parents: Vec::with_capacity(depth),
            done: VecDeque::with_capacity(4 * depth),
            comps: Vec::with_capacity(depth),
            polls: 0,
        }
    }

    /// Whether `r` can go to the remote device at all; how it ends now if not.
    fn refuse(&self, r: &IoRequest) -> Option<IoStatus> {
        if let Err(s) = check_request(self.sh.info(), r) {
            return Some(s);
        }
        if r.op != IoOp::Flush && r.num_blocks == 0 {
            return Some(IoStatus::Success);
        }
        None
    }

    /// Most blocks one command of `op` carries.
    fn piece_blocks(&self, op: IoOp) -> u32 {
        match op {
            IoOp::Read | IoOp::Write => {
                let bs = self.sh.info().block_size;
                (self.sh.max_transfer() / bs).clamp(1, MAX_BLOCKS)
            }
            _ => MAX_BLOCKS,
        }
    }

    /// Queues `r`, in pieces when one command cannot carry it.
    fn enqueue(&mut self, r: IoRequest, t: Instant) {
        let per = self.piece_blocks(r.op);
        if r.op == IoOp::Flush || r.num_blocks <= per {
            self.backlog.push_back(Entry {
                req: r,
                t,
                parent: WHOLE,
            });
            return;
        }
        let p = Parent {
            tag: r.tag,
            left: r.num_blocks.div_ceil(per),
            status: IoStatus::Success,
        };
        let parent = match self.free_parents.pop() {
            Some(i) => {
                self.parents[i as usize] = p;
                i
            }
            None => {
                self.parents.push(p);
                (self.parents.len() - 1) as u32
            }
        };
        let bs = self.sh.info().block_size as usize;
        let mut done = 0u32;
        while done < r.num_blocks {
            let n = per.min(r.num_blocks - done);
            let mut piece = r;
            piece.offset_blocks = r.offset_blocks + u64::from(done);
            piece.num_blocks = n;
            if matches!(r.op, IoOp::Read | IoOp::Write) {
                // SAFETY: within the caller's buffer of `num_blocks` blocks.
                piece.buf = unsafe { r.buf.add(done as usize * bs) };
                piece.len = n as usize * bs;
            }
            self.backlog.push_back(Entry {
                req: piece,
                t,
                parent,
            });
            done += n;
        }
    }

    /// Entry `e` ended with `st`: its request's completion, now or once its last
    /// piece ends, goes to the done queue.
    fn ended(&mut self, e: Entry, st: IoStatus) {
        if e.parent == WHOLE {
            self.done.push_back((e.req.tag, st));
            return;
        }
        let p = &mut self.parents[e.parent as usize];
        if p.status == IoStatus::Success {
            p.status = st;
        }
        p.left -= 1;
        if p.left == 0 {
            self.done.push_back((p.tag, p.status));
            self.free_parents.push(e.parent);
        }
    }

    /// Moves the backlog onto the queue while it has free command ids.
    fn issue(&mut self) {
        let mut failed: Vec<(Entry, IoStatus)> = Vec::new();
        self.issue_into(&mut failed);
        for (e, st) in failed {
            self.ended(e, st);
        }
    }

    fn issue_into(&mut self, failed: &mut Vec<(Entry, IoStatus)>) {
        let Some((q, _, _)) = self.q.as_mut() else {
            return;
        };
        let nsid = self.sh.opts().nsid;
        while let Some(&e) = self.backlog.front() {
            let r = e.req;
            let Some(cid) = q.alloc() else {
                break;
            };
            self.backlog.pop_front();
            let (sqe, dir, len) = command(nsid, &r);
            let res = match (r.op, NonNull::new(r.buf)) {
                (IoOp::Deallocate, _) => {
                    let b = q.buf_mut(cid);
                    b[..4].copy_from_slice(&0u32.to_le_bytes());
                    b[4..8].copy_from_slice(&r.num_blocks.to_le_bytes());
                    b[8..16].copy_from_slice(&r.offset_blocks.to_le_bytes());
                    q.submit(cid, sqe, dir, len)
                }
                // SAFETY: `IoChannel::submit`'s caller keeps the buffer valid and
                // unshared until this request's completion, which `poll` returns only
                // after the queue pair has completed (or dropped) the command.
                (IoOp::Read | IoOp::Write, Some(buf)) => unsafe {
                    q.submit_external(cid, sqe, dir, len, buf)
                },
                _ => q.submit(cid, sqe, dir, len),
            };
            match res {
                Ok(()) => self.cmds[usize::from(cid)] = Some(e),
                Err(err) => {
                    // Only a programming error gets here (an id not allocated).
                    tracing::error!(error = %err, "remote command not submitted");
                    failed.push((e, IoStatus::Io(libc::EIO)));
                }
            }
        }
    }

    /// The queue broke (or is stuck): its commands go back to the front of the backlog
    /// (each keeps its submission time), and it is connected again later.
    fn lose_queue(&mut self, why: &str) {
        let Some((q, qid, gen)) = self.q.take() else {
            return;
        };
        tracing::warn!(
            name = self.sh.info().name,
            qid,
            in_flight = q.in_flight(),
            why,
            "remote queue lost; its commands wait for a new connection"
        );
        // Dropping the queue pair closes its socket: nothing refers to the callers'
        // buffers any more.
        drop(q);
        self.sh.release_qid(qid, gen);
        let mut back: Vec<Entry> = self.cmds.iter_mut().filter_map(Option::take).collect();
        back.sort_by_key(|e| e.t);
        for x in back.into_iter().rev() {
            self.backlog.push_front(x);
        }
        self.next_try = Instant::now() + self.sh.opts().reconnect_delay;
    }

    /// Connects again on a helper thread (never on the reactor), once due.
    fn reconnect(&mut self, now: Instant) {
        if let Some(rx) = &self.pending {
            match rx.try_recv() {
                Ok(Ok(q)) => {
                    self.sh.reconnects.fetch_add(1, Relaxed);
                    tracing::info!(
                        name = self.sh.info().name,
                        qid = q.1,
                        "remote queue connected again"
                    );
                    self.q = Some(q);
                    self.pending = None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(name = self.sh.info().name, error = %e, "remote queue not connected");
                    self.pending = None;
                    self.next_try = now + self.sh.opts().reconnect_delay;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.pending = None,
            }
            return;
        }
        if now < self.next_try || (self.backlog.is_empty() && self.done.is_empty()) {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let sh = self.sh.clone();
        let spawned = std::thread::Builder::new()
            .name("lp-remote-conn".into())
            .spawn(move || {
                let _ = tx.send(sh.connect_queue());
            });
        match spawned {
            Ok(_) => self.pending = Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to connect a remote queue");
                self.next_try = now + self.sh.opts().reconnect_delay;
            }
        }
    }

    /// Requests waiting longer than the timeout end with ETIMEDOUT; a queue whose
    /// oldest command is that old is taken for stuck.
    fn expire(&mut self, now: Instant) {
        let limit = self.sh.opts().io_timeout;
        if self
            .cmds
            .iter()
            .flatten()
            .any(|e| now.duration_since(e.t) > limit)
        {
            self.lose_queue("a command got no answer within the I/O timeout");
        }
        while let Some(&e) = self.backlog.front() {
            if now.duration_since(e.t) <= limit {
                break;
            }
            self.backlog.pop_front();
            self.ended(e, IoStatus::Io(libc::ETIMEDOUT));
        }
    }
}

impl IoChannel for RemoteChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        match self.refuse(&req) {
            Some(s) => self.done.push_back((req.tag, s)),
            None => self.enqueue(req, Instant::now()),
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = 0;
        self.polls = self.polls.wrapping_add(1);
        if self.q.is_none() || self.polls.is_multiple_of(TIMEOUT_SCAN_EVERY) {
            let now = Instant::now();
            self.expire(now);
            if self.q.is_none() {
                self.reconnect(now);
            }
        }
        self.issue();
        if let Some((q, _, _)) = self.q.as_mut() {
            let mut res = q.flush();
            if res.is_ok() {
                res = q.poll(&mut self.comps);
            }
            let mut comps = std::mem::take(&mut self.comps);
            for c in comps.drain(..) {
                let Some(e) = self.cmds.get_mut(usize::from(c.cid)).and_then(Option::take) else {
                    continue;
                };
                let st = status_of(c.status, c.digest_error);
                if e.parent == WHOLE {
                    done(e.req.tag, st);
                    n += 1;
                } else {
                    self.ended(e, st);
                }
            }
            self.comps = comps;
            if let Err(e) = res {
                self.lose_queue(&e.to_string());
            }
        }
        while let Some((tag, s)) = self.done.pop_front() {
            done(tag, s);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        // Requests, not pieces: a split request counts once, until its last piece ends.
        let whole = |e: &Entry| e.parent == WHOLE;
        self.cmds.iter().flatten().filter(|e| whole(e)).count()
            + self.backlog.iter().filter(|e| whole(e)).count()
            + self.done.len()
            + (self.parents.len() - self.free_parents.len())
    }
}

impl Drop for RemoteChannel {
    fn drop(&mut self) {
        if let Some((q, qid, gen)) = self.q.take() {
            drop(q);
            self.sh.release_qid(qid, gen);
        }
    }
}
