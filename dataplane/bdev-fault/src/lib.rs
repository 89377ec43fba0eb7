//! A block device that injects faults into the device under it: I/O errors, a full
//! device, torn writes and latency spikes, by rules that can be changed while it
//! serves ([`rule`] has their text form). Stacked like any other device (a
//! namespace, a pool's member, a RAID member), it lets tests assert what the host is
//! told when the medium fails and that nothing acknowledged is lost.
//!
//! With no rule set it passes every request through (reads and writes in place
//! included) at the cost of one relaxed atomic load per request. A channel takes a
//! new set of rules (one lock, only when the set changed); counting a matching
//! request is one atomic add per rule on the rule's shared counters, so `count=1`
//! fires once across every reactor.

pub mod rule;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightpool_bdev::{
    Adopter, Adoption, Bdev, BdevError, BdevInfo, DataRef, Export, IoChannel, IoOp, IoRequest,
    IoStats, IoStatus,
};
pub use rule::{Fault, FaultRule, RuleError};
use serde::{Deserialize, Serialize};

/// [`Bdev::kind`] of fault-injecting devices.
pub const KIND: &str = "fault";

/// A rule and how often it has matched and fired, shared by every channel.
#[derive(Debug)]
struct Live {
    rule: FaultRule,
    seen: AtomicU64,
    fired: AtomicU64,
}

impl Live {
    /// Counts a matching request; whether the rule fires on it.
    fn fires(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n < self.rule.skip || !(n - self.rule.skip).is_multiple_of(self.rule.every) {
            return false;
        }
        let f = self.fired.fetch_add(1, Ordering::Relaxed);
        if self.rule.count.is_some_and(|c| f >= c) {
            self.fired.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// What a rule has done, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStats {
    pub rule: FaultRule,
    /// Requests it matched.
    pub seen: u64,
    /// Faults it injected.
    pub fired: u64,
}

/// Every fault device of the process, for [`FaultBdev::find`].
static LIVE: Mutex<Vec<std::sync::Weak<FaultBdev>>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Shared {
    generation: AtomicU64,
    rules: Mutex<Arc<Vec<Live>>>,
}

/// A fault-injecting device over another.
pub struct FaultBdev {
    inner: Arc<dyn Bdev>,
    info: BdevInfo,
    shared: Arc<Shared>,
}

impl FaultBdev {
    /// A device named `name` over `inner`, passing everything through until rules
    /// are set.
    pub fn new(name: &str, inner: Arc<dyn Bdev>) -> Arc<FaultBdev> {
        let mut info = inner.info().clone();
        info.name = name.to_string();
        let d = Arc::new(FaultBdev {
            inner,
            info,
            shared: Arc::default(),
        });
        let mut all = LIVE.lock().expect("fault devices poisoned");
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&d));
        d
    }

    /// The live fault device of this process named `name` (the newest, should two
    /// share it), for a management API that changes its rules.
    pub fn find(name: &str) -> Option<Arc<FaultBdev>> {
        let all = LIVE.lock().expect("fault devices poisoned");
        all.iter()
            .rev()
            .filter_map(std::sync::Weak::upgrade)
            .find(|d| d.info.name == name)
    }

    /// Replaces the rules (their counters start at zero); channels take them at their
    /// next request.
    pub fn set_rules(&self, rules: Vec<FaultRule>) {
        let live = rules
            .into_iter()
            .map(|rule| Live {
                rule,
                seen: AtomicU64::new(0),
                fired: AtomicU64::new(0),
            })
            .collect();
        *self.shared.rules.lock().expect("fault rules poisoned") = Arc::new(live);
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// The rules and what each has done.
    pub fn rules(&self) -> Vec<RuleStats> {
        let live = self
            .shared
            .rules
            .lock()
            .expect("fault rules poisoned")
            .clone();
        live.iter()
            .map(|l| RuleStats {
                rule: l.rule.clone(),
                seen: l.seen.load(Ordering::Relaxed),
                fired: l.fired.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// What a successor needs besides its child: the rules.
#[derive(Serialize, Deserialize)]
struct FaultState {
    rules: Vec<FaultRule>,
}

impl Bdev for FaultBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        vec![self.inner.clone()]
    }

    fn export(&self) -> Result<Export, BdevError> {
        let st = FaultState {
            rules: self.rules().into_iter().map(|s| s.rule).collect(),
        };
        Ok(Export {
            state: postcard::to_stdvec(&st)
                .map_err(|e| BdevError::Invalid(format!("{}: state: {e}", self.info.name)))?,
            fds: Vec::new(),
        })
    }

    fn io_stats(&self) -> Option<IoStats> {
        self.inner.io_stats()
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let inner = self.inner.open_channel()?;
        let rules = self
            .shared
            .rules
            .lock()
            .expect("fault rules poisoned")
            .clone();
        // A different random sequence per channel, the same per run.
        static CHANNELS: AtomicU64 = AtomicU64::new(0);
        let seed = 0x9e37_79b9_7f4a_7c15 ^ CHANNELS.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(FaultChannel {
            inner,
            shared: self.shared.clone(),
            generation: self.shared.generation.load(Ordering::Acquire),
            rules,
            block_size: self.info.block_size,
            rng: seed | 1,
            ready: VecDeque::with_capacity(64),
            marked: Vec::with_capacity(64),
            late: Vec::with_capacity(64),
        }))
    }
}

/// What becomes of a request the device below completes.
#[derive(Clone, Copy)]
enum Mark {
    Torn,
    Delay(Duration),
}

struct FaultChannel {
    inner: Box<dyn IoChannel>,
    shared: Arc<Shared>,
    generation: u64,
    rules: Arc<Vec<Live>>,
    block_size: u32,
    rng: u64,
    /// Completions decided at submission (errors, a full device).
    ready: VecDeque<(u64, IoStatus)>,
    /// Requests below whose completion is changed (torn, delayed).
    marked: Vec<(u64, Mark)>,
    /// Completions held until their time.
    late: Vec<(Instant, u64, IoStatus)>,
}

impl FaultChannel {
    fn refresh(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.rules = self
                .shared
                .rules
                .lock()
                .expect("fault rules poisoned")
                .clone();
            self.generation = g;
        }
    }

    fn random_below(&mut self, n: u64) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n.max(1)
    }

    /// The fault for a request, if a rule fires on it (the first rule that does).
    fn fault_for(&self, op: IoOp, offset: u64, num_blocks: u32) -> Option<Fault> {
        self.rules
            .iter()
            .filter(|l| l.rule.matches(op, offset, num_blocks))
            .find(|l| l.fires())
            .map(|l| l.rule.fault)
    }
}

impl IoChannel for FaultChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        self.refresh();
        let fault = if self.rules.is_empty() {
            None
        } else {
            self.fault_for(req.op, req.offset_blocks, req.num_blocks)
        };
        match fault {
            None => {
                // SAFETY: the caller's contract for `req` is passed on unchanged.
                unsafe { self.inner.submit(req) }
            }
            Some(Fault::Error(errno)) => self.ready.push_back((req.tag, IoStatus::Io(errno))),
            Some(Fault::Full) if matches!(req.op, IoOp::Write | IoOp::WriteZeroes) => {
                self.ready.push_back((req.tag, IoStatus::CapacityExceeded))
            }
            Some(Fault::Torn) if matches!(req.op, IoOp::Write | IoOp::WriteZeroes) => {
                // At least one block short; a one-block write lands nothing.
                let land = self.random_below(u64::from(req.num_blocks)) as u32;
                if land == 0 {
                    self.ready.push_back((req.tag, IoStatus::Io(libc::EIO)));
                    return;
                }
                let mut part = req;
                part.num_blocks = land;
                if !part.buf.is_null() {
                    part.len = land as usize * self.block_size as usize;
                }
                self.marked.push((req.tag, Mark::Torn));
                // SAFETY: a prefix of the caller's buffer, under the caller's contract.
                unsafe { self.inner.submit(part) }
            }
            Some(Fault::Delay(us)) => {
                self.marked
                    .push((req.tag, Mark::Delay(Duration::from_micros(us))));
                // SAFETY: the caller's contract for `req` is passed on unchanged.
                unsafe { self.inner.submit(req) }
            }
            // Full and Torn are refused for other operations by the rule parser;
            // rules built otherwise pass those requests through.
            Some(Fault::Full | Fault::Torn) => {
                // SAFETY: the caller's contract for `req` is passed on unchanged.
                unsafe { self.inner.submit(req) }
            }
        }
    }

    /// Passed on while no rule is set: a fault device over RAM keeps RAM's speed
    /// until a test arms it. With rules, every read goes through `submit`.
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        self.refresh();
        if !self.rules.is_empty() {
            return None;
        }
        self.inner.read_in_place(offset_blocks, num_blocks)
    }

    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        self.refresh();
        if !self.rules.is_empty() {
            return false;
        }
        self.inner.write_in_place(offset_blocks, num_blocks, data)
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = 0;
        while let Some((tag, st)) = self.ready.pop_front() {
            done(tag, st);
            n += 1;
        }
        let FaultChannel {
            inner,
            marked,
            late,
            ..
        } = self;
        let now = Instant::now();
        n += inner.poll(&mut |tag, st| {
            let mark = if marked.is_empty() {
                None
            } else {
                marked
                    .iter()
                    .position(|(t, _)| *t == tag)
                    .map(|i| marked.swap_remove(i).1)
            };
            match mark {
                None => done(tag, st),
                Some(Mark::Torn) => done(
                    tag,
                    if st == IoStatus::Success {
                        IoStatus::Io(libc::EIO)
                    } else {
                        st
                    },
                ),
                Some(Mark::Delay(d)) => late.push((now + d, tag, st)),
            }
        });
        if !self.late.is_empty() {
            let now = Instant::now();
            let mut i = 0;
            while i < self.late.len() {
                if self.late[i].0 <= now {
                    let (_, tag, st) = self.late.swap_remove(i);
                    done(tag, st);
                    n += 1;
                } else {
                    i += 1;
                }
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.ready.len() + self.late.len()
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.completion_fd()
    }
}

/// Rebuilds fault devices over their adopted child, rules included.
pub struct FaultAdopter;

impl Adopter for FaultAdopter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let st: FaultState = postcard::from_bytes(a.state)
            .map_err(|e| BdevError::Invalid(format!("{}: unreadable state: {e}", a.name)))?;
        let mut children = a.children;
        if children.len() != 1 {
            return Err(BdevError::Invalid(format!(
                "{}: a fault device sits on one device, the state names {}",
                a.name,
                children.len()
            )));
        }
        let inner = children.pop().expect("length checked");
        let d = FaultBdev::new(a.name, inner);
        d.set_rules(st.rules);
        Ok(d)
    }
}

#[cfg(test)]
mod tests;
