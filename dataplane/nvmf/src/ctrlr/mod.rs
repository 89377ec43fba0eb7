//! Controllers: one per host association (admin queue plus its I/O queues), created by
//! Connect on a subsystem (dynamic controller model).

mod record;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lightpool_spec::features::aen;
use lightpool_spec::log::lid;
use lightpool_spec::nvme::csts;

use crate::subsystem::Subsystem;
use crate::target::Target;

/// Async Event Configuration bits (Set Features 0Bh) this target acts on.
pub const AEC_NS_ATTR: u32 = 1 << 8;
pub const AEC_ANA_CHANGE: u32 = 1 << 11;
pub const AEC_DISCOVERY_CHANGE: u32 = 1 << 31;

/// Per-queue counters, written by the queue's reactor only (relaxed), summed for SMART.
#[derive(Default, Debug)]
pub struct QueueStats {
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub blocks_read_512: AtomicU64,
    pub blocks_written_512: AtomicU64,
}

impl QueueStats {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        // Single writer: a plain load+store avoids a locked instruction on the I/O path.
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }
}

/// Controller state changed by admin commands (never touched on the I/O path).
#[derive(Debug)]
pub struct CtrlRegs {
    pub cc: u32,
    pub csts: u32,
    /// I/O queues granted through Set Features Number of Queues.
    pub num_io_queues: u16,
    /// Which I/O queue IDs are connected (index = qid - 1).
    pub io_queues: Vec<bool>,
    pub aec: u32,
    pub vwce: bool,
}

#[derive(Debug, Default)]
struct Events {
    queue: VecDeque<u32>,
    /// Notice events reported and not yet re-armed by reading their log page.
    masked: u32,
    /// Command IDs of the outstanding Asynchronous Event Requests (for the region).
    aer_cids: Vec<u16>,
    /// Namespaces changed since the Changed Namespace List log was last read: bit
    /// NSID - 1 (NSIDs go up to 32).
    changed_ns: u32,
}

/// One controller.
pub struct Controller {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub target: Arc<Target>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub(crate) regs: Mutex<CtrlRegs>,
    kato_ms: AtomicU32,
    failed: AtomicBool,
    events_pending: AtomicBool,
    events: Mutex<Events>,
    stats: Mutex<Vec<Arc<QueueStats>>>,
    /// Counts Keep Alive commands (a test can see the host is alive).
    pub keep_alives: AtomicU64,
    /// Its record in the state region, if the target has one.
    pub(crate) shm: OnceLock<u32>,
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        target: Arc<Target>,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
    ) -> Arc<Controller> {
        let max_q = target.opts.max_io_queues;
        Arc::new(Controller {
            cntlid,
            subsys,
            target,
            hostnqn,
            hostid,
            regs: Mutex::new(CtrlRegs {
                cc: 0,
                csts: 0,
                num_io_queues: max_q,
                io_queues: vec![false; usize::from(max_q)],
                aec: 0,
                vwce: true,
            }),
            kato_ms: AtomicU32::new(kato_ms),
            failed: AtomicBool::new(false),
            events_pending: AtomicBool::new(false),
            events: Mutex::new(Events::default()),
            stats: Mutex::new(Vec::new()),
            keep_alives: AtomicU64::new(0),
            shm: OnceLock::new(),
        })
    }

    /// Give a controller created by Connect its record in the state region (if the
    /// target has one this process owns) and write it.
    pub(crate) fn record(&self) {
        let Some(region) = self.target.region().filter(|r| r.owned()) else {
            return;
        };
        if let Err(e) = crate::region::Str::<254>::new("host NQN", &self.hostnqn) {
            tracing::error!(cntlid = self.cntlid, error = %e, "controller not recorded in the state region: it cannot be handed over");
            return;
        }
        match region.alloc(crate::region::Kind::Controller) {
            Ok(i) => {
                let _ = self.shm.set(i);
                self.publish();
            }
            Err(e) => {
                tracing::error!(cntlid = self.cntlid, error = %e, "controller not recorded in the state region: it cannot be handed over")
            }
        }
    }

    /// Rewrite this controller's record (control and admin paths only: it takes the
    /// register and event locks, which also keep two writers of the record apart).
    pub(crate) fn publish(&self) {
        let (Some(region), Some(&i)) = (self.target.region(), self.shm.get()) else {
            return;
        };
        let r = self.regs.lock().expect("ctrlr regs lock poisoned");
        let ev = self.events.lock().expect("events lock poisoned");
        let rec =
            record::controller_rec(self, &r, &ev.queue, ev.masked, &ev.aer_cids, ev.changed_ns);
        region.write(crate::region::Kind::Controller, i, &rec);
    }

    /// The admin queue's outstanding Asynchronous Event Requests changed.
    pub(crate) fn set_aer_cids(&self, cids: impl Iterator<Item = u16>) {
        let mut ev = self.events.lock().expect("events lock poisoned");
        ev.aer_cids.clear();
        ev.aer_cids.extend(cids);
    }

    pub fn is_discovery(&self) -> bool {
        self.subsys.kind == crate::subsystem::SubsystemKind::Discovery
    }

    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Acquire)
    }

    pub(crate) fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(ms, Ordering::Release);
    }

    /// The controller is dead (keep-alive expired, fatal status, admin queue gone): every
    /// queue of it closes its connection.
    pub fn fail(&self) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            let mut r = self.regs.lock().expect("ctrlr regs lock poisoned");
            r.csts |= csts::CFS;
            drop(r);
            self.publish();
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.regs.lock().expect("ctrlr regs lock poisoned").csts & csts::RDY != 0
    }

    pub(crate) fn register_stats(&self, s: Arc<QueueStats>) {
        self.stats.lock().expect("stats lock poisoned").push(s);
    }

    /// Commands and 512-byte blocks its queues served: reads, writes, blocks read,
    /// blocks written (what the SMART log reports).
    pub fn stats(&self) -> [u64; 4] {
        self.stats_sum()
    }

    /// I/O queues connected now.
    pub fn io_queues_connected(&self) -> u32 {
        let r = self.regs.lock().expect("ctrlr regs lock poisoned");
        r.io_queues.iter().filter(|q| **q).count() as u32
    }

    pub(crate) fn stats_sum(&self) -> [u64; 4] {
        let mut out = [0u64; 4];
        for s in self.stats.lock().expect("stats lock poisoned").iter() {
            out[0] += s.read_cmds.load(Ordering::Relaxed);
            out[1] += s.write_cmds.load(Ordering::Relaxed);
            out[2] += s.blocks_read_512.load(Ordering::Relaxed);
            out[3] += s.blocks_written_512.load(Ordering::Relaxed);
        }
        out
    }

    fn post_notice(&self, aec_bit: u32, info: u8, log_page: u8) {
        let aec = self.regs.lock().expect("ctrlr regs lock poisoned").aec;
        if aec & aec_bit == 0 {
            return;
        }
        let mut ev = self.events.lock().expect("events lock poisoned");
        let mask = 1u32 << (info & 31);
        if ev.masked & mask != 0 {
            return;
        }
        ev.masked |= mask;
        ev.queue.push_back(aen::dw0(aen::NOTICE, info, log_page));
        self.events_pending.store(true, Ordering::Release);
        drop(ev);
        self.publish();
    }

    pub fn notify_ana_change(&self) {
        self.post_notice(AEC_ANA_CHANGE, aen::ANA_CHANGE, lid::ANA);
    }

    pub fn notify_discovery_change(&self) {
        self.post_notice(
            AEC_DISCOVERY_CHANGE,
            aen::DISCOVERY_LOG_CHANGE,
            lid::DISCOVERY,
        );
    }

    /// Namespace `nsid` was added, removed or resized: it joins the Changed Namespace
    /// List, and hosts that asked for it get a Namespace Attribute Changed event.
    pub fn notify_ns_changed(&self, nsid: u32) {
        if let Some(bit) = nsid.checked_sub(1).filter(|b| *b < 32) {
            self.events.lock().expect("events lock poisoned").changed_ns |= 1 << bit;
        }
        self.post_notice(AEC_NS_ATTR, aen::NS_ATTR_CHANGED, lid::CHANGED_NS_LIST);
        self.publish();
    }

    /// The Changed Namespace List: NSIDs changed since it was last read and cleared
    /// (`clear`, a read without Retain Asynchronous Event).
    pub(crate) fn changed_namespaces(&self, clear: bool) -> Vec<u32> {
        let mut ev = self.events.lock().expect("events lock poisoned");
        let bits = ev.changed_ns;
        if clear {
            ev.changed_ns = 0;
        }
        (0..32)
            .filter(|b| bits & (1 << b) != 0)
            .map(|b| b + 1)
            .collect()
    }

    /// A log page was read without Retain Asynchronous Event: re-arm its notice.
    pub(crate) fn log_read(&self, log_page: u8) {
        let info = match log_page {
            lid::ANA => aen::ANA_CHANGE,
            lid::DISCOVERY => aen::DISCOVERY_LOG_CHANGE,
            lid::CHANGED_NS_LIST => aen::NS_ATTR_CHANGED,
            _ => return,
        };
        let mut ev = self.events.lock().expect("events lock poisoned");
        ev.masked &= !(1u32 << (info & 31));
    }

    pub(crate) fn events_snapshot(&self) -> (Vec<u32>, u32, u32) {
        let ev = self.events.lock().expect("events lock poisoned");
        (ev.queue.iter().copied().collect(), ev.masked, ev.changed_ns)
    }

    pub(crate) fn restore_events(&self, events: &[u32], masked: u32, changed_ns: u32) {
        let mut ev = self.events.lock().expect("events lock poisoned");
        ev.queue = events.iter().copied().collect();
        ev.masked = masked;
        ev.changed_ns = changed_ns;
        self.events_pending
            .store(!ev.queue.is_empty(), Ordering::Release);
    }

    pub(crate) fn has_events(&self) -> bool {
        self.events_pending.load(Ordering::Acquire)
    }

    pub(crate) fn take_event(&self) -> Option<u32> {
        let mut ev = self.events.lock().expect("events lock poisoned");
        let e = ev.queue.pop_front();
        if ev.queue.is_empty() {
            self.events_pending.store(false, Ordering::Release);
        }
        e
    }

    /// Claim an I/O queue ID for a connecting queue.
    pub(crate) fn claim_io_queue(&self, qid: u16) -> bool {
        let mut r = self.regs.lock().expect("ctrlr regs lock poisoned");
        if qid == 0 || qid > r.num_io_queues {
            return false;
        }
        let slot = &mut r.io_queues[usize::from(qid - 1)];
        if *slot {
            return false;
        }
        *slot = true;
        true
    }

    pub(crate) fn release_io_queue(&self, qid: u16) {
        let mut r = self.regs.lock().expect("ctrlr regs lock poisoned");
        if let Some(s) = r.io_queues.get_mut(usize::from(qid).wrapping_sub(1)) {
            *s = false;
        }
        drop(r);
        self.publish();
    }

    pub(crate) fn unregister(&self) {
        self.subsys.unregister_controller(self.cntlid);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let (Some(region), Some(&i)) = (self.target.region(), self.shm.get()) {
            // A no-op in a successor that does not own the region yet.
            region.free(crate::region::Kind::Controller, i);
        }
    }
}
