//! One RX/TX queue pair of a port, owned by one reactor: raw bursts and smoltcp's
//! `phy::Device`.

use std::ptr::NonNull;
use std::sync::Arc;

use lightpool_dpdk_sys::ffi;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::eal::lcore_id;
use crate::mbuf::{Mbuf, Mempool};
use crate::port::PortInner;

/// What one queue moved, counted by the queue itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Accepted by the device's TX burst.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames smoltcp wrote that were not sent: no mbuf free, or larger than an mbuf.
    pub tx_no_mbuf: u64,
    /// Frames the device would not take while [`Queue`] held its TX backlog full.
    pub tx_dropped: u64,
    /// Received frames in several segments (the stack takes single-segment frames only).
    pub rx_dropped_segmented: u64,
}

/// The TX half: frames waiting for the next burst.
struct TxState {
    port: Arc<PortInner>,
    qid: u16,
    burst: usize,
    pending: Vec<Mbuf>,
    scratch: Vec<u8>,
    stats: QueueStats,
}

impl TxState {
    /// Most frames held back when the device does not take them; beyond it the oldest
    /// are freed (and counted), and `transmit` says no until there is room.
    fn backlog_cap(&self) -> usize {
        self.burst * 4
    }

    fn flush(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let n = tx_burst(&self.port, self.qid, &mut self.pending, &mut self.stats);
        let cap = self.backlog_cap();
        if self.pending.len() > cap {
            let over = self.pending.len() - cap;
            self.pending.drain(..over);
            self.stats.tx_dropped += over as u64;
        }
        n
    }
}

/// Sends from the front of `pkts`; what the device took leaves the vector (the
/// device frees it after sending), the rest stays, in order.
fn tx_burst(port: &PortInner, qid: u16, pkts: &mut Vec<Mbuf>, stats: &mut QueueStats) -> usize {
    let mut sent = 0usize;
    while sent < pkts.len() {
        let want = (pkts.len() - sent).min(u16::MAX as usize) as u16;
        let bytes: u64 = pkts[sent..sent + usize::from(want)]
            .iter()
            .map(|m| m.len() as u64)
            .sum();
        // SAFETY: Mbuf is repr(transparent) over a non-null rte_mbuf pointer, so the
        // slice is an array of `want` valid mbuf pointers; the device takes ownership of
        // the first n it returns, which leave the vector below without being freed.
        let n = unsafe {
            ffi::lp_rte_eth_tx_burst(
                port.id,
                qid,
                pkts.as_mut_ptr().add(sent) as *mut *mut ffi::rte_mbuf,
                want,
            )
        };
        let n = usize::from(n);
        if n == usize::from(want) {
            stats.tx_bytes += bytes;
        } else {
            stats.tx_bytes += pkts[sent..sent + n]
                .iter()
                .map(|m| m.len() as u64)
                .sum::<u64>();
        }
        stats.tx_packets += n as u64;
        sent += n;
        if n < usize::from(want) {
            break;
        }
    }
    pkts.drain(..sent).for_each(|m| {
        m.into_raw();
    });
    sent
}

/// One queue pair. `Send` (hand it to its reactor), not `Sync`: DPDK's bursts on one
/// queue must come from one thread at a time, which `&mut self` ensures.
///
/// Use it from a thread that called [`crate::register_thread`]: an unregistered
/// thread works too (same packets, same counts) but every mbuf alloc and free then
/// bypasses the mempool's per-lcore cache and pays its shared ring's atomics.
pub struct Queue {
    qid: u16,
    /// `dpdk:<port name>:<queue>`, for logs.
    name: String,
    mac: [u8; 6],
    rx: Vec<Mbuf>,
    tx: TxState,
    mtu: usize,
}

impl Queue {
    pub(crate) fn new(
        port: Arc<PortInner>,
        qid: u16,
        burst: usize,
        mtu: usize,
        mac: [u8; 6],
    ) -> Queue {
        let burst = burst.clamp(1, 512);
        Queue {
            qid,
            name: format!("dpdk:{}:{qid}", port.name),
            mac,
            rx: Vec::with_capacity(burst),
            tx: TxState {
                port,
                qid,
                burst,
                pending: Vec::with_capacity(burst * 4 + 1),
                scratch: Vec::new(),
                stats: QueueStats::default(),
            },
            mtu,
        }
    }

    pub fn id(&self) -> u16 {
        self.qid
    }

    pub fn port_id(&self) -> u16 {
        self.tx.port.id
    }

    pub fn mempool(&self) -> &Arc<Mempool> {
        &self.tx.port.pool
    }

    pub fn stats(&self) -> QueueStats {
        self.tx.stats
    }

    /// Whether the calling thread is an EAL thread (registered or an lcore), so that
    /// mbufs go through its mempool cache.
    pub fn on_registered_thread(&self) -> bool {
        // SAFETY: plain read of a constant the shim exports.
        lcore_id() != unsafe { ffi::lp_lcore_id_any }
    }

    /// Receives up to `max` packets, appended to `out`; returns how many.
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut slots = [std::ptr::null_mut::<ffi::rte_mbuf>(); 64];
        let mut total = 0;
        while total < max {
            let want = (max - total).min(slots.len());
            // SAFETY: slots has room for `want` pointers; the device writes n of them,
            // each a packet now owned by us.
            let n = unsafe {
                ffi::lp_rte_eth_rx_burst(self.tx.port.id, self.qid, slots.as_mut_ptr(), want as u16)
            };
            let n = usize::from(n);
            for &p in &slots[..n] {
                if let Some(p) = NonNull::new(p) {
                    // SAFETY: the device handed us this mbuf.
                    let m = unsafe { Mbuf::from_raw(p) };
                    self.tx.stats.rx_packets += 1;
                    self.tx.stats.rx_bytes += m.len() as u64;
                    out.push(m);
                }
            }
            total += n;
            if n < want {
                break;
            }
        }
        total
    }

    /// Sends from the front of `pkts`; sent ones leave the vector, the rest stay (drop
    /// them to free them, or try again). Returns how many were sent.
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        tx_burst(&self.tx.port, self.qid, pkts, &mut self.tx.stats)
    }

    /// Sends what smoltcp's TX tokens queued. Call it after each `Interface::poll`;
    /// `receive` also flushes before it asks the device for more.
    pub fn flush(&mut self) -> usize {
        self.tx.flush()
    }

    /// Frames queued for the next burst.
    pub fn tx_pending(&self) -> usize {
        self.tx.pending.len()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.tx.flush();
        // Unsent frames and unconsumed received ones are Mbufs: freed as the vectors drop.
    }
}

/// A received frame, borrowed from the device until consumed; its mbuf is freed then
/// (or when the token is dropped unconsumed).
pub struct RxToken {
    mbuf: Mbuf,
}

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.mbuf.data())
    }
}

/// Room for one frame: a fresh mbuf filled in place and queued for the next burst.
pub struct TxToken<'a> {
    tx: &'a mut TxState,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let tx = self.tx;
        let mut m = Mbuf::alloc(&tx.port.pool);
        if let Some(mb) = m.as_mut() {
            if let Some(buf) = mb.append(len) {
                let r = f(buf);
                if let Some(mb) = m.take() {
                    tx.pending.push(mb);
                }
                if tx.pending.len() >= tx.burst {
                    tx.flush();
                }
                return r;
            }
        }
        // No mbuf (or the frame does not fit one): let smoltcp write it somewhere and
        // drop it; TCP sends it again. The mbuf, if any, is freed here.
        drop(m);
        tx.stats.tx_no_mbuf += 1;
        tx.scratch.resize(len, 0);
        f(&mut tx.scratch[..len])
    }
}

impl phy::Device for Queue {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        loop {
            if self.rx.is_empty() {
                // Send what is waiting first: the peer's next packets may depend on it.
                self.tx.flush();
                let mut got = Vec::with_capacity(self.tx.burst);
                let burst = self.tx.burst;
                if self.rx_burst(&mut got, burst) == 0 {
                    return None;
                }
                got.reverse();
                self.rx = got;
            }
            let mbuf = self.rx.pop()?;
            if mbuf.segments() != 1 {
                self.tx.stats.rx_dropped_segmented += 1;
                continue;
            }
            return Some((RxToken { mbuf }, TxToken { tx: &mut self.tx }));
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.tx.pending.len() >= self.tx.backlog_cap() {
            self.tx.flush();
            if self.tx.pending.len() >= self.tx.backlog_cap() {
                return None;
            }
        }
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps.max_burst_size = Some(self.tx.burst);
        caps
    }
}

/// A queue as the userspace TCP stack's packet engine. It has no descriptor to sleep
/// on: a reactor serving one polls it without pause (the core is spent on it).
impl lightpool_netstack::PacketEngine for Queue {
    fn name(&self) -> &str {
        &self.name
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn counters(&self) -> lightpool_netstack::EngineCounters {
        let s = self.tx.stats;
        lightpool_netstack::EngineCounters {
            rx_frames: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_frames: s.tx_packets,
            tx_bytes: s.tx_bytes,
            rx_dropped: s.rx_dropped_segmented,
            tx_full: s.tx_no_mbuf + s.tx_dropped,
            // AF_XDP's ring and kick counters have no DPDK counterpart.
            ..Default::default()
        }
    }

    fn flush(&mut self) {
        Queue::flush(self);
    }
}
