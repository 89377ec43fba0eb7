//! The Prometheus endpoint of `lightpool-target`: what the reactors and queues count
//! (see [`lightpool_nvmf::metrics`] and [`lightpool_reactor::ReactorStats`]), summed
//! when scraped, in the OpenMetrics text format (crate `prometheus-client`), served
//! over HTTP by a thread of its own ([`http`]), never a reactor.
//!
//! Families (all prefixed `lightpool_`):
//!
//! | Family | Labels | Kind |
//! | --- | --- | --- |
//! | `namespace_commands_total`, `namespace_bytes_total` | subsystem, nsid, op | counter |
//! | `namespace_errors_total` | subsystem, nsid, sct, sc, status | counter |
//! | `namespace_latency_seconds` | subsystem, nsid, op | histogram |
//! | `namespace_capacity_bytes` | subsystem, nsid | gauge |
//! | `subsystem_commands_total`, `subsystem_bytes_total` | subsystem, op | counter |
//! | `subsystem_errors_total` | subsystem, sct, sc, status | counter |
//! | `subsystem_queue_depth`, `subsystem_queues` | subsystem | gauge |
//! | `reactor_commands_total`, `reactor_bytes_total` | reactor, op | counter |
//! | `reactor_seconds_total` | reactor, state (busy, idle, sleep) | counter |
//! | `reactor_loops_total` | reactor | counter |
//! | `reactor_queue_depth`, `reactor_queues` | reactor | gauge |
//! | `pool_capacity_bytes`, `pool_used_bytes`, `pool_free_bytes` | pool | gauge |
//! | `pool_promised_bytes`, `pool_promise_limit_bytes`, `pool_volumes` | pool | gauge |
//! | `offload_operations_total`, `offload_bytes_total` | work (digest, placement, steering), engine, reactor | counter |
//! | `engine_frames_total`, `engine_bytes_total` | engine (af_xdp, dpdk), interface, reactor, direction (rx, tx) | counter |
//! | `engine_drops_total` | engine, interface, reactor, reason | counter |
//! | `xdp_program_frames_total` | interface, action (steered, passed, no_socket) | counter |
//!
//! The offload families say which engine did the per-PDU work a SmartNIC could take
//! (docs/architecture.md, "Offload"): `work="digest"` by `engine="software"` (CRC32C
//! on the CPU); `work="placement"` by `engine="recv"` (read straight into the request
//! buffer by the kernel's recv), `"stack_ring"` (copied straight there from the
//! userspace TCP stack's ring), `"staged_copy"` (copied from the connection's staging
//! buffer) or `"device"`; `work="steering"` by `engine="kernel"` (accept and round
//! robin), `"xdp"` (the XDP program's redirect) or `"dpdk"` (the port's RSS), its
//! operations the flows put on each reactor. Transports report them through
//! [`OffloadSource`] ([`Exporter::add_offload_source`]).
//!
//! `op` is read, write, other (Flush, Write Zeroes, Dataset Management, Compare) or
//! admin (admin and fabrics commands, counted per subsystem and reactor only). Pools
//! report through [`PoolSource`], which the pool's code registers with
//! [`Exporter::add_pool_source`].

pub mod http;
mod offload;

pub use offload::OffloadSource;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lightpool_nvmf::metrics::{bucket_bound_s, BlockSnapshot, OpClass, OP_CLASSES};
use lightpool_nvmf::Target;
use lightpool_reactor::ReactorHandle;
use lightpool_spec::status::Status;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Errors rendering or serving the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot encode the metrics")]
    Encode(#[from] std::fmt::Error),
    #[error("cannot serve metrics on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A pool's size and what of it is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub promised_bytes: u64,
    pub promise_limit_bytes: u64,
    /// Volumes, snapshots and clones.
    pub volumes: u64,
}

/// A pool gauge: its name, its help, and its value.
type PoolFamily = (&'static str, &'static str, fn(&PoolUsage) -> u64);

/// Where pool capacity comes from: the pool crate registers one per pool manager
/// (called at each scrape, on the metrics thread: it must not wait on a reactor).
pub trait PoolSource: Send + Sync {
    fn pools(&self) -> Vec<PoolUsage>;
}

/// What a scrape reads.
pub struct Exporter {
    target: Arc<Target>,
    reactors: Vec<ReactorHandle>,
    pools: Mutex<Vec<Box<dyn PoolSource>>>,
    offload: Mutex<Vec<Box<dyn OffloadSource>>>,
    /// The highest reactor times reported so far: a scrape that meets a reactor just
    /// waking up must not see its sleep time go back.
    reactor_seen: Mutex<BTreeMap<usize, [u64; 3]>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("reactors", &self.reactors.len())
            .finish()
    }
}

impl Exporter {
    pub fn new(target: Arc<Target>, reactors: Vec<ReactorHandle>) -> Arc<Exporter> {
        Arc::new(Exporter {
            target,
            reactors,
            pools: Mutex::new(Vec::new()),
            offload: Mutex::new(Vec::new()),
            reactor_seen: Mutex::new(BTreeMap::new()),
        })
    }

    /// Report the pools `s` knows at every scrape.
    pub fn add_pool_source(&self, s: Box<dyn PoolSource>) {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// Report the offload counts `s` gives at every scrape.
    pub fn add_offload_source(&self, s: Box<dyn OffloadSource>) {
        self.offload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
    }

    /// The metrics now, in the OpenMetrics text format.
    pub fn render(self: &Arc<Self>) -> Result<String, MetricsError> {
        let mut reg = Registry::default();
        reg.register_collector(Box::new(Scrape(self.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg)?;
        Ok(out)
    }
}

/// The collector one scrape runs.
#[derive(Debug)]
struct Scrape(Arc<Exporter>);

type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn sct_name(sct: u8) -> String {
    match sct {
        0 => "generic".into(),
        1 => "command-specific".into(),
        2 => "media".into(),
        3 => "path".into(),
        7 => "vendor".into(),
        x => format!("{x:#x}"),
    }
}

fn status_labels(mut l: Labels, st: Option<Status>) -> Labels {
    match st {
        Some(st) => {
            l.push(("sct", sct_name(st.sct())));
            l.push(("sc", format!("{:#04x}", st.sc())));
            l.push(("status", st.name().unwrap_or("unknown").to_string()));
        }
        None => {
            l.push(("sct", "other".into()));
            l.push(("sc", "other".into()));
            l.push(("status", "statuses past the table's room".into()));
        }
    }
    l
}

/// Blocks summed by a key (namespace, subsystem or reactor).
fn sum_by<K: Ord>(
    blocks: &[BlockSnapshot],
    key: impl Fn(&BlockSnapshot) -> Option<K>,
) -> BTreeMap<K, BlockSnapshot> {
    let mut out: BTreeMap<K, BlockSnapshot> = BTreeMap::new();
    for b in blocks {
        let Some(k) = key(b) else { continue };
        match out.get_mut(&k) {
            Some(s) => s.merge(b),
            None => {
                out.insert(k, b.clone());
            }
        }
    }
    out
}

/// Commands, bytes and errors rows of summed blocks, each labelled by `labels`.
#[allow(clippy::type_complexity)]
fn rows<K>(
    sums: &BTreeMap<K, BlockSnapshot>,
    labels: impl Fn(&K) -> Labels,
    classes: &[OpClass],
) -> (Vec<(Labels, u64)>, Vec<(Labels, u64)>, Vec<(Labels, u64)>) {
    let (mut cmds, mut bytes, mut errs) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in sums {
        for &c in classes {
            let o = &s.ops[c as usize];
            let mut l = labels(k);
            l.push(("op", c.name().to_string()));
            cmds.push((l.clone(), o.commands));
            if matches!(c, OpClass::Read | OpClass::Write) {
                bytes.push((l, o.bytes));
            }
        }
        for &(st, n) in &s.errors {
            errs.push((status_labels(labels(k), Some(st)), n));
        }
        if s.errors_other > 0 {
            errs.push((status_labels(labels(k), None), s.errors_other));
        }
    }
    (cmds, bytes, errs)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ex = &self.0;
        let (blocks, queues) = ex.target.metrics.snapshot();
        let io_classes = [OpClass::Read, OpClass::Write, OpClass::Other];
        let all_classes = OpClass::ALL;
        debug_assert_eq!(all_classes.len(), OP_CLASSES);

        // Per namespace (NSID 0 holds commands of no namespace: subsystem totals only).
        let ns = sum_by(&blocks, |b| {
            (b.nsid != 0).then(|| (b.subsystem.clone(), b.nsid))
        });
        let ns_labels = |k: &(Arc<str>, u32)| -> Labels {
            vec![("subsystem", k.0.to_string()), ("nsid", k.1.to_string())]
        };
        let (c, b, e) = rows(&ns, ns_labels, &io_classes);
        counter(
            &mut enc,
            "lightpool_namespace_commands",
            "Commands completed, by namespace and kind.",
            &c,
        )?;
        counter(
            &mut enc,
            "lightpool_namespace_bytes",
            "Bytes read or written, by namespace.",
            &b,
        )?;
        counter(
            &mut enc,
            "lightpool_namespace_errors",
            "Commands that failed, by namespace and NVMe status (SCT, SC).",
            &e,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "lightpool_namespace_latency_seconds",
                "Time from a command's start (its data received) to its completion in the target, on the reactor's loop clock.",
                None,
                MetricType::Histogram,
            )?;
            for (k, s) in &ns {
                for &c in &io_classes {
                    let o = &s.ops[c as usize];
                    let buckets: Vec<(f64, u64)> = o
                        .latency
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| (bucket_bound_s(i).unwrap_or(f64::INFINITY), n))
                        .collect();
                    let mut l = ns_labels(k);
                    l.push(("op", c.name().to_string()));
                    m.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                        o.latency_sum_ns as f64 * 1e-9,
                        o.commands,
                        &buckets,
                        None,
                    )?;
                }
            }
        }
        let mut cap = Vec::new();
        for s in ex.target.subsystems() {
            for n in s.namespaces() {
                let bytes = n.num_blocks.saturating_mul(u64::from(n.block_size));
                cap.push((
                    vec![("subsystem", s.nqn.clone()), ("nsid", n.nsid.to_string())],
                    i64::try_from(bytes).unwrap_or(i64::MAX),
                ));
            }
        }
        gauge(
            &mut enc,
            "lightpool_namespace_capacity_bytes",
            "Size of each namespace.",
            &cap,
        )?;

        // Per subsystem.
        let subs = sum_by(&blocks, |b| Some(b.subsystem.clone()));
        let sub_labels = |k: &Arc<str>| -> Labels { vec![("subsystem", k.to_string())] };
        let (c, b, e) = rows(&subs, sub_labels, &all_classes);
        counter(
            &mut enc,
            "lightpool_subsystem_commands",
            "Commands completed, by subsystem and kind (admin: admin and fabrics commands).",
            &c,
        )?;
        counter(
            &mut enc,
            "lightpool_subsystem_bytes",
            "Bytes read or written, by subsystem.",
            &b,
        )?;
        counter(
            &mut enc,
            "lightpool_subsystem_errors",
            "Commands that failed, by subsystem and NVMe status (SCT, SC).",
            &e,
        )?;
        let mut depth: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for q in &queues {
            let d = depth.entry(q.subsystem.to_string()).or_default();
            d.0 += i64::try_from(q.depth).unwrap_or(i64::MAX);
            d.1 += 1;
        }
        let (d, n): (Vec<_>, Vec<_>) = depth
            .into_iter()
            .map(|(s, (d, n))| {
                (
                    (vec![("subsystem", s.clone())], d),
                    (vec![("subsystem", s)], n),
                )
            })
            .unzip();
        gauge(
            &mut enc,
            "lightpool_subsystem_queue_depth",
            "Commands started (their data received) and not yet completed, over the subsystem's queues.",
            &d,
        )?;
        gauge(
            &mut enc,
            "lightpool_subsystem_queues",
            "Connected queues (admin and I/O).",
            &n,
        )?;

        // Per reactor.
        let per_reactor = sum_by(&blocks, |b| Some(b.reactor));
        let r_labels = |k: &usize| -> Labels { vec![("reactor", k.to_string())] };
        let (c, b, _) = rows(&per_reactor, r_labels, &all_classes);
        counter(
            &mut enc,
            "lightpool_reactor_commands",
            "Commands completed on each reactor.",
            &c,
        )?;
        counter(
            &mut enc,
            "lightpool_reactor_bytes",
            "Bytes read or written on each reactor.",
            &b,
        )?;
        let mut secs = Vec::new();
        let mut loops = Vec::new();
        {
            let mut seen = ex.reactor_seen.lock().unwrap_or_else(|e| e.into_inner());
            for r in &ex.reactors {
                let s = r.stats();
                let last = seen.entry(r.id()).or_default();
                let now = [s.busy_ns, s.idle_ns, s.sleep_ns];
                for (l, n) in last.iter_mut().zip(now) {
                    *l = (*l).max(n);
                }
                for (state, ns) in ["busy", "idle", "sleep"].iter().zip(*last) {
                    secs.push((
                        vec![
                            ("reactor", r.id().to_string()),
                            ("state", state.to_string()),
                        ],
                        ns,
                    ));
                }
                loops.push((vec![("reactor", r.id().to_string())], s.loops));
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "lightpool_reactor_seconds",
                "Time each reactor spent doing work (busy), polling with nothing to do (idle) and asleep in epoll_wait (sleep).",
                None,
                MetricType::Counter,
            )?;
            for (l, ns) in &secs {
                ConstCounter::new(*ns as f64 * 1e-9).encode(m.encode_family(l)?)?;
            }
        }
        counter(
            &mut enc,
            "lightpool_reactor_loops",
            "Poll-loop iterations of each reactor.",
            &loops,
        )?;
        let mut rdepth: BTreeMap<usize, (i64, i64)> =
            ex.reactors.iter().map(|r| (r.id(), (0, 0))).collect();
        for q in &queues {
            let d = rdepth.entry(q.reactor).or_default();
            d.0 += i64::try_from(q.depth).unwrap_or(i64::MAX);
            d.1 += 1;
        }
        let (d, n): (Vec<_>, Vec<_>) = rdepth
            .into_iter()
            .map(|(r, (d, n))| ((r_labels(&r), d), (r_labels(&r), n)))
            .unzip();
        gauge(
            &mut enc,
            "lightpool_reactor_queue_depth",
            "Commands started (their data received) and not yet completed, over each reactor's queues.",
            &d,
        )?;
        gauge(
            &mut enc,
            "lightpool_reactor_queues",
            "Connected queues on each reactor.",
            &n,
        )?;

        // Pools (none until a pool source is registered).
        let pools: Vec<PoolUsage> = ex
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|p| p.pools())
            .collect();
        let families: [PoolFamily; 6] = [
            (
                "lightpool_pool_capacity_bytes",
                "Data space of each storage pool (its metadata excluded).",
                |p| p.capacity_bytes,
            ),
            (
                "lightpool_pool_used_bytes",
                "Bytes of each storage pool given to volumes and snapshots.",
                |p| p.used_bytes,
            ),
            (
                "lightpool_pool_free_bytes",
                "Bytes of each storage pool not given to any volume.",
                |p| p.free_bytes,
            ),
            (
                "lightpool_pool_promised_bytes",
                "Sum of the sizes of each pool's writable volumes (thin ones over-commit).",
                |p| p.promised_bytes,
            ),
            (
                "lightpool_pool_promise_limit_bytes",
                "What each pool's writable volumes may promise at most (its over-commit limit).",
                |p| p.promise_limit_bytes,
            ),
            (
                "lightpool_pool_volumes",
                "Volumes, snapshots and clones in each pool.",
                |p| p.volumes,
            ),
        ];
        for (name, help, value) in families {
            let rows: Vec<_> = pools
                .iter()
                .map(|p| {
                    (
                        vec![("pool", p.name.clone())],
                        i64::try_from(value(p)).unwrap_or(i64::MAX),
                    )
                })
                .collect();
            gauge(&mut enc, name, help, &rows)?;
        }

        // Offload and packet engines (nothing until a source is registered).
        let mut report = lightpool_nvmf::OffloadReport::default();
        for s in ex.offload.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            report.extend(s.offload());
        }
        offload::encode(&mut enc, &report)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
