//! The results of a run, for people (a table like spdk_nvme_perf's) and machines
//! (JSON, an HdrHistogram interval log).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use serde::Serialize;

use crate::engine::{core_name, Device, IntervalTotal, Job, RunOutcome};
use crate::stats::{DirStats, Stats, PERCENTILES};
use crate::workload::Op;

/// One device on one core (or the total).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub device: String,
    pub core: String,
    pub ios: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub avg_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Time the worker waited for its CPU while it ran (other work on its core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preempted_ms: Option<f64>,
}

/// Latency of one direction (or both).
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub ios: u64,
    pub avg_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ErrorRow {
    pub status: String,
    pub op: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub blocks_checked: u64,
    pub blocks_unwritten: u64,
    pub mismatches: u64,
    /// The first mismatches, in words (each names its LBA).
    pub first: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IntervalRow {
    /// End of the second, from the start of the measurement.
    pub t_s: f64,
    /// Its length (the last one may be shorter).
    pub len_s: f64,
    pub iops: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub mib_s: f64,
    pub p99_us: f64,
    /// The second's slowest I/O.
    pub max_us: f64,
}

/// The run's settings as the report states them.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub mode: String,
    pub target: String,
    pub workload: String,
    pub read_percent: u8,
    pub io_size: u32,
    pub queue_depth: u16,
    pub cores: Vec<String>,
    pub queues_per_core: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub verify: bool,
    pub digests: String,
}

/// Everything the output shows.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub rows: Vec<Row>,
    pub total: Row,
    pub latency: Option<Latency>,
    pub read: Option<Latency>,
    pub write: Option<Latency>,
    pub errors: Vec<ErrorRow>,
    pub error_total: u64,
    pub verify: Option<VerifyReport>,
    pub intervals: Vec<IntervalRow>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// `limit` only: how long the server thread waited for its CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_preempted_ms: Option<f64>,
    #[serde(skip)]
    pub hist_intervals: Vec<IntervalTotal>,
    #[serde(skip)]
    pub combined: Option<DirStats>,
    /// The reads' and the writes' latencies apart (plots).
    #[serde(skip)]
    pub by_op: Option<(DirStats, DirStats)>,
}

const MIB: f64 = 1024.0 * 1024.0;

fn us(ns: f64) -> f64 {
    ns / 1000.0
}

fn rate(n: f64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n / s
    } else {
        0.0
    }
}

fn row(device: &str, core: String, d: &DirStats, measured: Duration) -> Row {
    Row {
        device: device.to_string(),
        core,
        ios: d.ios,
        iops: rate(d.ios as f64, measured),
        mib_s: rate(d.bytes as f64, measured) / MIB,
        avg_us: us(d.mean_ns()),
        min_us: if d.ios == 0 { 0.0 } else { us(d.min_ns as f64) },
        max_us: us(d.max_ns as f64),
        preempted_ms: None,
    }
}

fn latency(d: &DirStats) -> Option<Latency> {
    if d.ios == 0 {
        return None;
    }
    let q = |p: f64| us(d.hist.value_at_quantile(p / 100.0) as f64);
    Some(Latency {
        ios: d.ios,
        avg_us: us(d.mean_ns()),
        min_us: us(d.min_ns as f64),
        max_us: us(d.max_ns as f64),
        p50_us: q(PERCENTILES[0]),
        p90_us: q(PERCENTILES[1]),
        p99_us: q(PERCENTILES[2]),
        p99_9_us: q(PERCENTILES[3]),
        p99_99_us: q(PERCENTILES[4]),
    })
}

impl Report {
    /// Builds the report of `out`.
    pub fn new(settings: Settings, job: &Job, devices: &[Device], out: &RunOutcome) -> Report {
        let mut rows = Vec::new();
        let mut all = Stats::default();
        let mut total_iops = 0.0;
        let mut total_mib = 0.0;
        for w in &out.workers {
            for (i, st) in w.stats.iter().enumerate() {
                let c = st.combined();
                let name = devices.get(i).map_or("?", |d| d.name.as_str());
                let mut r = row(name, core_name(w.core), &c, w.measured);
                r.preempted_ms = w.preempted.map(|p| p.as_secs_f64() * 1000.0);
                total_iops += r.iops;
                total_mib += r.mib_s;
                rows.push(r);
                all.merge(st);
            }
        }
        let combined = all.combined();
        let mut total = row("Total", String::new(), &combined, Duration::ZERO);
        total.iops = total_iops;
        total.mib_s = total_mib;
        let errors: Vec<ErrorRow> = all
            .errors
            .0
            .iter()
            .map(|(k, op, n)| ErrorRow {
                status: k.to_string(),
                op: if *op == Op::Read { "read" } else { "write" },
                count: *n,
            })
            .collect();
        let verify = job.verify.then(|| VerifyReport {
            blocks_checked: all.verify.good + all.verify.bad + all.verify.unwritten,
            blocks_unwritten: all.verify.unwritten,
            mismatches: all.mismatches_total,
            first: all.mismatches.iter().map(|m| m.to_string()).collect(),
        });
        let intervals = out
            .intervals
            .iter()
            .scan(0.0, |t, iv| {
                *t += iv.len.as_secs_f64();
                Some(IntervalRow {
                    t_s: *t,
                    len_s: iv.len.as_secs_f64(),
                    iops: rate(iv.ios as f64, iv.len),
                    read_iops: rate(iv.reads as f64, iv.len),
                    write_iops: rate((iv.ios - iv.reads) as f64, iv.len),
                    mib_s: rate(iv.bytes as f64, iv.len) / MIB,
                    p99_us: if iv.hist.is_empty() {
                        0.0
                    } else {
                        us(iv.hist.value_at_quantile(0.99) as f64)
                    },
                    max_us: if iv.hist.is_empty() {
                        0.0
                    } else {
                        us(iv.hist.max() as f64)
                    },
                })
            })
            .collect();
        Report {
            settings,
            rows,
            total,
            latency: latency(&combined),
            read: latency(&all.read),
            write: latency(&all.write),
            error_total: all.errors.total(),
            errors,
            verify,
            intervals,
            error: out.error.clone(),
            server_preempted_ms: None,
            hist_intervals: out.intervals.clone(),
            combined: Some(combined),
            by_op: Some((all.read.clone(), all.write.clone())),
        }
    }

    /// True when the run found something wrong: I/O errors, verify mismatches, or an
    /// early stop.
    pub fn failed(&self) -> bool {
        self.error.is_some()
            || self.error_total > 0
            || self.verify.as_ref().is_some_and(|v| v.mismatches > 0)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "lightpool-perf {}: {} against {}",
            env!("CARGO_PKG_VERSION"),
            s.mode,
            s.target
        );
        let mix = if s.workload.contains("rw") {
            format!(" ({}% reads)", s.read_percent)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "{}{}, {} bytes per I/O, queue depth {}, {} x {} queue(s), {:.1} s measured after {:.1} s warm-up{}{}",
            s.workload,
            mix,
            s.io_size,
            s.queue_depth,
            s.cores.join(","),
            s.queues_per_core,
            s.duration_s,
            s.warmup_s,
            if s.verify { ", verify" } else { "" },
            if s.digests.is_empty() { String::new() } else { format!(", digests: {}", s.digests) },
        );
        let w = self
            .rows
            .iter()
            .map(|r| r.device.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:w$}  {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "", "", "", "", "", "Latency(us)", "",
        );
        let _ = writeln!(
            o,
            "{:w$}  {:>10} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "Device", "Core", "IOPS", "MiB/s", "Average", "min", "max"
        );
        let line = |r: &Row| {
            format!(
                "{:w$}  {:>10} {:>12.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                r.device, r.core, r.iops, r.mib_s, r.avg_us, r.min_us, r.max_us
            )
        };
        for r in &self.rows {
            let _ = writeln!(o, "{}", line(r));
        }
        let _ = writeln!(o, "{}", "=".repeat(w + 2 + 10 + 13 + 11 * 4));
        let _ = writeln!(o, "{}", line(&self.total));
        let run = s.warmup_s + s.duration_s;
        let mut waits: Vec<(String, f64)> = Vec::new();
        for r in &self.rows {
            if let Some(ms) = r.preempted_ms {
                if !waits.iter().any(|(c, _)| *c == r.core) {
                    waits.push((r.core.clone(), ms));
                }
            }
        }
        if let Some(ms) = self.server_preempted_ms {
            waits.push(("the server".to_string(), ms));
        }
        for (who, ms) in waits {
            // Kernel housekeeping alone (RCU, softirq threads) takes 1-2%.
            if ms > run * 1000.0 * 0.03 {
                let _ = writeln!(
                    o,
                    "warning: {who} waited {ms:.1} ms ({:.1}% of the run) for its CPU: other work shared the core and the figures are low",
                    ms / (run * 10.0)
                );
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Latency(us)  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "I/Os", "p50", "p90", "p99", "p99.9", "p99.99"
        );
        let mut lat = |name: &str, l: &Option<Latency>| {
            if let Some(l) = l {
                let _ = writeln!(
                    o,
                    "{:<12} {:>10} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                    name, l.ios, l.p50_us, l.p90_us, l.p99_us, l.p99_9_us, l.p99_99_us
                );
            }
        };
        if self.read.is_some() && self.write.is_some() {
            lat("read", &self.read);
            lat("write", &self.write);
        }
        lat("all", &self.latency);
        let _ = writeln!(o);
        if self.errors.is_empty() {
            let _ = writeln!(o, "I/O errors: none");
        } else {
            let _ = writeln!(o, "I/O errors: {}", self.error_total);
            for e in &self.errors {
                let _ = writeln!(o, "  {:>10} {:<5} {}", e.count, e.op, e.status);
            }
        }
        if let Some(v) = &self.verify {
            let _ = writeln!(
                o,
                "Verify: {} blocks checked ({} never written), {} mismatch(es)",
                v.blocks_checked, v.blocks_unwritten, v.mismatches
            );
            for m in &v.first {
                let _ = writeln!(o, "  {m}");
            }
            if v.mismatches > v.first.len() as u64 {
                let _ = writeln!(o, "  ... and {} more", v.mismatches - v.first.len() as u64);
            }
        }
        if let Some(e) = &self.error {
            let _ = writeln!(o, "Run stopped early: {e}");
        }
        o
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Writes the per-second histograms as an HdrHistogram interval log (values in
    /// nanoseconds; the max column in microseconds).
    pub fn write_histogram_log(&self, path: &Path, started: SystemTime) -> std::io::Result<()> {
        let mut buf = Vec::new();
        {
            let mut ser = V2DeflateSerializer::new();
            let mut b = IntervalLogWriterBuilder::new();
            b.add_comment("lightpool-perf latency log, values in nanoseconds")
                .add_comment(&format!(
                    "{} {} bytes QD {}",
                    self.settings.workload, self.settings.io_size, self.settings.queue_depth
                ))
                .with_start_time(started)
                .with_base_time(started)
                .with_max_value_divisor(1000.0);
            let mut w = b.begin_log_with(&mut buf, &mut ser)?;
            let mut t = Duration::ZERO;
            for iv in &self.hist_intervals {
                w.write_histogram(&iv.hist, t, iv.len, None)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                t += iv.len;
            }
        }
        std::fs::write(path, buf)
    }
}
