//! What a run measures: I/O counts, bytes, latencies (exact min/max/mean plus an
//! HdrHistogram for percentiles), errors by kind and verify results. Workers record
//! into their own [`Stats`] and per-second [`Interval`]s; the main thread merges.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use lightpool_bdev::IoStatus;
use lightpool_spec::status::Status;

use crate::verify::{CheckCounts, Mismatch};
use crate::workload::Op;

/// Highest latency the histograms hold; longer ones are counted at this value.
pub const HIST_MAX_NS: u64 = 600 * 1_000_000_000;
/// Mismatches kept with their details (all are counted).
pub const MISMATCHES_KEPT: usize = 32;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("1 ns to 600 s at 3 digits is valid")
}

/// Counts and latencies of one direction.
#[derive(Clone, Debug)]
pub struct DirStats {
    pub ios: u64,
    pub bytes: u64,
    pub sum_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
    pub hist: Histogram<u64>,
}

impl Default for DirStats {
    fn default() -> Self {
        DirStats {
            ios: 0,
            bytes: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            hist: new_hist(),
        }
    }
}

impl DirStats {
    /// Counts one I/O; its latency goes into the histogram separately (see
    /// [`crate::engine`]: per-second histograms are merged in).
    #[inline]
    pub fn count(&mut self, ns: u64, bytes: u64) {
        self.ios += 1;
        self.bytes += bytes;
        self.sum_ns += ns;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, o: &DirStats) {
        self.ios += o.ios;
        self.bytes += o.bytes;
        self.sum_ns += o.sum_ns;
        self.min_ns = self.min_ns.min(o.min_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&o.hist);
    }

    pub fn mean_ns(&self) -> f64 {
        if self.ios == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.ios as f64
        }
    }
}

/// An I/O that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// An NVMe completion status (SCT and SC; DNR/More/CRD left out).
    Nvme(u16),
    /// A C2HData PDU failed its data digest.
    DataDigest,
    /// Block device: range beyond the device.
    OutOfRange,
    /// Block device: write to a read-only device.
    ReadOnly,
    /// Block device: the backend's errno.
    Errno(i32),
}

impl ErrorKind {
    pub fn from_status(s: Status) -> ErrorKind {
        ErrorKind::Nvme(s.0 & 0x7FF)
    }

    pub fn from_bdev(s: IoStatus) -> Option<ErrorKind> {
        match s {
            IoStatus::Success => None,
            IoStatus::OutOfRange => Some(ErrorKind::OutOfRange),
            IoStatus::ReadOnly => Some(ErrorKind::ReadOnly),
            IoStatus::CapacityExceeded => Some(ErrorKind::from_status(Status::generic(
                lightpool_spec::status::generic::CAPACITY_EXCEEDED,
            ))),
            IoStatus::Io(e) => Some(ErrorKind::Errno(e)),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Nvme(s) => write!(f, "{}", Status(*s)),
            ErrorKind::DataDigest => f.write_str("data digest error (C2HData)"),
            ErrorKind::OutOfRange => f.write_str("LBA out of range (block device)"),
            ErrorKind::ReadOnly => f.write_str("write to a read-only block device"),
            ErrorKind::Errno(e) => write!(
                f,
                "block device error: {}",
                std::io::Error::from_raw_os_error(*e)
            ),
        }
    }
}

/// Error counts by kind (a short list: linear search, no hashing on the I/O path).
#[derive(Clone, Debug, Default)]
pub struct ErrorCounts(pub Vec<(ErrorKind, Op, u64)>);

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind, op: Op, n: u64) {
        match self.0.iter_mut().find(|(k, o, _)| *k == kind && *o == op) {
            Some(e) => e.2 += n,
            None => self.0.push((kind, op, n)),
        }
    }

    pub fn merge(&mut self, o: &ErrorCounts) {
        for &(k, op, n) in &o.0 {
            self.add(k, op, n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|e| e.2).sum()
    }
}

/// Everything one device (namespace or bdev) saw on one worker, or merged.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub read: DirStats,
    pub write: DirStats,
    pub errors: ErrorCounts,
    pub verify: CheckCounts,
    pub mismatches: Vec<Mismatch>,
    pub mismatches_total: u64,
}

impl Stats {
    pub fn dir(&mut self, op: Op) -> &mut DirStats {
        match op {
            Op::Read => &mut self.read,
            Op::Write => &mut self.write,
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.read.merge(&o.read);
        self.write.merge(&o.write);
        self.errors.merge(&o.errors);
        self.verify.good += o.verify.good;
        self.verify.unwritten += o.verify.unwritten;
        self.verify.bad += o.verify.bad;
        self.mismatches_total += o.mismatches_total;
        for m in &o.mismatches {
            if self.mismatches.len() < MISMATCHES_KEPT {
                self.mismatches.push(*m);
            }
        }
    }

    /// Reads and writes together.
    pub fn combined(&self) -> DirStats {
        let mut c = self.read.clone();
        c.merge(&self.write);
        c
    }

    pub fn add_mismatch(&mut self, m: Mismatch) {
        self.mismatches_total += 1;
        if self.mismatches.len() < MISMATCHES_KEPT {
            self.mismatches.push(m);
        }
    }
}

/// One second (or the last partial second) of one worker.
#[derive(Clone, Debug)]
pub struct Interval {
    pub worker: usize,
    /// Seconds since the phase began (warm-up or measurement).
    pub index: u64,
    pub warmup: bool,
    pub len: Duration,
    pub ios: u64,
    /// Of `ios`, the reads.
    pub reads: u64,
    pub bytes: u64,
    pub hist: Histogram<u64>,
}

/// Latency percentiles the report shows.
pub const PERCENTILES: &[f64] = &[50.0, 90.0, 99.0, 99.9, 99.99];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_exact_extremes_and_means() {
        let mut a = DirStats::default();
        a.count(1000, 4096);
        a.hist.saturating_record(1000);
        let mut b = DirStats::default();
        b.count(3000, 4096);
        b.hist.saturating_record(3000);
        a.merge(&b);
        assert_eq!((a.ios, a.bytes, a.min_ns, a.max_ns), (2, 8192, 1000, 3000));
        assert_eq!(a.mean_ns(), 2000.0);
        assert_eq!(a.hist.len(), 2);
    }

    #[test]
    fn errors_group_by_status_without_flags() {
        let mut e = ErrorCounts::default();
        let s = Status::generic(0x80);
        e.add(ErrorKind::from_status(s), Op::Read, 1);
        e.add(ErrorKind::from_status(s.with_dnr()), Op::Read, 2);
        e.add(ErrorKind::DataDigest, Op::Read, 1);
        assert_eq!(e.0.len(), 2);
        assert_eq!(e.total(), 4);
        assert!(e.0[0].0.to_string().contains("LBA out of range"));
    }
}
