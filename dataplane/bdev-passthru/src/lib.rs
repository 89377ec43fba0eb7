//! A pass-through block device that counts the I/O it passes to the device under it.
//!
//! The smallest device built on another device, written only against the
//! `lightpool-bdev` interface: it names its child ([`Bdev::children`]), exports its own
//! state (its counts) and is rebuilt over its adopted child by [`PassthruAdopter`] in a
//! hot upgrade, exactly as pool volumes, RAID and the remote device of migration will
//! be. Counting costs the I/O path two plain stores per request: each channel has its
//! own counters, written only by the reactor that owns the channel and summed when
//! read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lightpool_bdev::{
    Adopter, Adoption, Bdev, BdevError, BdevInfo, DataRef, Export, IoChannel, IoOp, IoRequest,
    IoStats, IoStatus,
};
use serde::{Deserialize, Serialize};

/// [`Bdev::kind`] of pass-through devices.
pub const KIND: &str = "passthru";

/// A pass-through over another device.
pub struct PassthruBdev {
    inner: Arc<dyn Bdev>,
    info: BdevInfo,
    counts: Arc<Counts>,
}

/// Counts of closed channels (and of predecessors), and the live channels' counters:
/// both locked only when a channel opens or closes and when the counts are read.
#[derive(Default)]
struct Counts {
    retired: Mutex<IoStats>,
    live: Mutex<Vec<Arc<ChannelCounts>>>,
}

impl Counts {
    fn total(&self) -> IoStats {
        let live = self.live.lock().expect("counts poisoned");
        let mut t = *self.retired.lock().expect("counts poisoned");
        for c in live.iter() {
            t = t.plus(&c.snapshot());
        }
        t
    }
}

/// One channel's counters: stored by its reactor only, so a plain load and store is
/// enough (no locked read-modify-write); readers on other threads see recent values.
#[derive(Default)]
struct ChannelCounts {
    reads: AtomicU64,
    writes: AtomicU64,
    other: AtomicU64,
    blocks_read: AtomicU64,
    blocks_written: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl ChannelCounts {
    fn count(&self, req: &IoRequest) {
        let n = u64::from(req.num_blocks);
        match req.op {
            IoOp::Read => {
                bump(&self.reads, 1);
                bump(&self.blocks_read, n);
            }
            IoOp::Write => {
                bump(&self.writes, 1);
                bump(&self.blocks_written, n);
            }
            IoOp::Flush | IoOp::WriteZeroes | IoOp::Deallocate => bump(&self.other, 1),
        }
    }

    fn snapshot(&self) -> IoStats {
        IoStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            blocks_read: self.blocks_read.load(Ordering::Relaxed),
            blocks_written: self.blocks_written.load(Ordering::Relaxed),
        }
    }
}

impl PassthruBdev {
    /// A pass-through over `inner`, named `passthru:<inner's name>`.
    pub fn new(inner: Arc<dyn Bdev>) -> Arc<PassthruBdev> {
        Self::with_counts(inner, IoStats::default())
    }

    fn with_counts(inner: Arc<dyn Bdev>, start: IoStats) -> Arc<PassthruBdev> {
        let mut info = inner.info().clone();
        info.name = format!("passthru:{}", info.name);
        let counts = Counts::default();
        *counts.retired.lock().expect("new") = start;
        Arc::new(PassthruBdev {
            inner,
            info,
            counts: Arc::new(counts),
        })
    }
}

/// What a successor needs besides its child: the counts so far.
#[derive(Debug, Serialize, Deserialize)]
struct PassthruState {
    counts: IoStats,
}

impl Bdev for PassthruBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        vec![self.inner.clone()]
    }

    /// Only its counts: the device under it exports itself. Channels hold no request on
    /// a drained target, so the counts are final for this process.
    fn export(&self) -> Result<Export, BdevError> {
        let st = PassthruState {
            counts: self.counts.total(),
        };
        Ok(Export {
            state: postcard::to_stdvec(&st)
                .map_err(|e| BdevError::Invalid(format!("{}: state: {e}", self.info.name)))?,
            fds: Vec::new(),
        })
    }

    /// Its counts change with every request, so they are taken on the drained target:
    /// exported before the pause, the requests served between the export and the pause
    /// would be lost to the successor's counts (the hot-upgrade test caught exactly
    /// that).
    fn export_at_pause(&self) -> bool {
        true
    }

    fn io_stats(&self) -> Option<IoStats> {
        Some(self.counts.total())
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let inner = self.inner.open_channel()?;
        let mine = Arc::new(ChannelCounts::default());
        self.counts
            .live
            .lock()
            .expect("counts poisoned")
            .push(mine.clone());
        Ok(Box::new(PassthruChannel {
            inner,
            mine,
            counts: self.counts.clone(),
        }))
    }
}

struct PassthruChannel {
    inner: Box<dyn IoChannel>,
    mine: Arc<ChannelCounts>,
    counts: Arc<Counts>,
}

impl IoChannel for PassthruChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        self.mine.count(&req);
        // SAFETY: the caller's contract for `req` is passed on unchanged: the same
        // buffer, valid until the same tag comes back from `poll`.
        unsafe { self.inner.submit(req) }
    }

    /// Passed on (and counted when served), so a pass-through over RAM keeps RAM's
    /// reads by reference.
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        let r = self.inner.read_in_place(offset_blocks, num_blocks)?;
        self.mine.count(&IoRequest::no_data(
            IoOp::Read,
            offset_blocks,
            num_blocks,
            0,
        ));
        Some(r)
    }

    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        let done = self.inner.write_in_place(offset_blocks, num_blocks, data);
        if done {
            self.mine.count(&IoRequest::no_data(
                IoOp::Write,
                offset_blocks,
                num_blocks,
                0,
            ));
        }
        done
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.inner.poll(done)
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.completion_fd()
    }
}

impl Drop for PassthruChannel {
    /// Its counts move to the device's retired total.
    fn drop(&mut self) {
        let mut live = self.counts.live.lock().expect("counts poisoned");
        live.retain(|c| !Arc::ptr_eq(c, &self.mine));
        let mut r = self.counts.retired.lock().expect("counts poisoned");
        *r = r.plus(&self.mine.snapshot());
    }
}

/// Rebuilds pass-through devices over their adopted child, counts included.
pub struct PassthruAdopter;

impl Adopter for PassthruAdopter {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError> {
        let st: PassthruState = postcard::from_bytes(a.state)
            .map_err(|e| BdevError::Invalid(format!("{}: unreadable state: {e}", a.name)))?;
        let mut children = a.children;
        if children.len() != 1 {
            return Err(BdevError::Invalid(format!(
                "{}: a pass-through sits on one device, the state names {}",
                a.name,
                children.len()
            )));
        }
        let inner = children.pop().expect("length checked");
        Ok(PassthruBdev::with_counts(inner, st.counts))
    }
}

#[cfg(test)]
mod tests;
