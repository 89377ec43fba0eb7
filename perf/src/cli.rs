//! Command line: spdk_nvme_perf's options for NVMe/TCP runs, plus the `bdev` and
//! `limit` subcommands, and the output every mode shares.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};

use crate::engine::{IoQueue, Job, PerfError};
use crate::initiator::Fabric;
use crate::nvme::{NvmeOptions, Prepared, TransportId};
use crate::report::{Report, Settings};
use crate::workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "lightpool-perf",
    version,
    about = "NVMe/TCP initiator and load generator (spdk_nvme_perf-style), block-device runs, and the transport's limit",
    long_about = "Drives NVMe/TCP targets with a userspace initiator and reports IOPS, bandwidth and latency percentiles.\n\n\
        lightpool-perf -r 'trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420 subnqn:NQN' -q 32 -o 4096 -w randread -t 10 -c 1\n\
        lightpool-perf bdev --file /path/img -q 32 -o 4096 -w randread -t 10 -c 1\n\
        lightpool-perf limit -q 32 -o 4096 -w randread -t 10 -c 1 --server-core 0",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub nvme: NvmeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Drive a LightPool block device in-process (RAM or an io_uring file), like
    /// SPDK's bdevperf.
    Bdev(BdevArgs),
    /// Measure the transport's limit: a raw TCP request/response loop with the
    /// message sizes NVMe/TCP exchanges for the workload.
    Limit(crate::limit::LimitArgs),
}

/// Options of NVMe/TCP runs.
#[derive(Args, Debug)]
pub struct NvmeArgs {
    /// Transport ID, e.g. 'trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420
    /// subnqn:NQN [ns:N]'. Without subnqn the discovery controller at the address
    /// (port 8009 unless trsvcid is given) lists the subsystems. Repeatable.
    #[arg(short = 'r', long = "transport-id", value_name = "TRID")]
    pub trid: Vec<String>,
    /// Host NQN (default: a random nqn.2014-08.org.nvmexpress:uuid:...).
    #[arg(long)]
    pub hostnqn: Option<String>,
    /// Header and data digests (CRC32C).
    #[arg(long)]
    pub digest: bool,
    /// Header digests only.
    #[arg(long)]
    pub header_digest: bool,
    /// Data digests only.
    #[arg(long)]
    pub data_digest: bool,
    /// NVMe/TCP in TLS 1.3 with this configured PSK, in the interchange format
    /// `nvme gen-tls-key` writes (NVMeTLSkey-1:HH:...:); the TLS PSK and its identity
    /// are derived from it for the host NQN and each subsystem's NQN, as nvme-cli does.
    #[arg(long, value_name = "NVMeTLSkey-1:..")]
    pub tls_key: Option<String>,
    /// The PSK identity offered with --tls-key: 1 (NVMe1R0x host subsys digest, what
    /// nvme-cli offers by default) or 0 (NVMe0R0x host subsys).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub tls_identity: u8,
    /// With --tls-key: where each queue's TLS records are encrypted once the handshake
    /// is done: auto (in the kernel, kTLS, where it has the tls module; else software)
    /// or off (software, OpenSSL in this process). stderr says which each got.
    #[arg(long, value_name = "auto|off", default_value = "auto", value_parser = ["auto", "off"])]
    pub ktls: String,
    /// Send every write through R2T/H2CData, never as in-capsule data.
    #[arg(long)]
    pub no_in_capsule: bool,
    /// Keep-alive timeout asked for at Connect, milliseconds (0: none); Keep Alive
    /// goes out every half of it.
    #[arg(long, default_value_t = 10_000)]
    pub kato: u32,
    /// The -r transport IDs are paths to one subsystem (same subnqn, on several
    /// targets): I/O goes to the first and moves to the next when a path refuses it
    /// (an ANA state that serves no I/O) or its connection breaks, as Linux native
    /// NVMe multipath does (e.g. across a live migration's switch).
    #[arg(long)]
    pub multipath: bool,
    /// Seconds to wait for a connection or an admin command.
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    pub connect_timeout: Duration,
    #[command(flatten)]
    pub w: WorkloadArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// The workload every mode shares.
#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// Queue depth: I/Os in flight per queue pair.
    #[arg(short = 'q', long = "queue-depth", default_value_t = 32)]
    pub queue_depth: u16,
    /// I/O size in bytes (suffixes k, KiB, m, MiB).
    #[arg(short = 'o', long = "io-size", default_value = "4096", value_parser = parse_size_u32)]
    pub io_size: u32,
    /// read, write, randread, randwrite, rw or randrw.
    #[arg(short = 'w', long = "workload", default_value = "randread")]
    pub workload: Workload,
    /// Percentage of reads for rw and randrw.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Seconds to measure.
    #[arg(short = 't', long = "time", default_value = "10", value_parser = parse_secs)]
    pub time: Duration,
    /// Seconds to run before measuring.
    #[arg(long, default_value = "0", value_parser = parse_secs)]
    pub warmup: Duration,
    /// Cores to run on, one pinned worker each: a list (1,2 or 1-3) or a mask (0x2).
    /// Default: one unpinned worker.
    #[arg(short = 'c', long = "cores", value_parser = parse_cores)]
    pub cores: Option<Cores>,
    /// Queue pairs (or block-device channels) per core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub qpairs: u16,
    /// LBAs to use, START:END (END exclusive). Default: the whole namespace.
    #[arg(long, value_parser = parse_range)]
    pub range: Option<(u64, u64)>,
    /// Stamp every written block (LBA, generation, checksum) and check every read.
    #[arg(long)]
    pub verify: bool,
    /// Seed of the random offsets and mixes (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds an I/O may stay outstanding before the run fails.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub io_timeout: Duration,
}

/// Output choices every mode shares.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// A line per second on stderr (default when stderr is a terminal).
    #[arg(long)]
    pub progress: bool,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the per-second latency histograms as an HdrHistogram interval log.
    #[arg(long, value_name = "FILE")]
    pub histogram: Option<PathBuf>,
    /// Draw the latency percentile curve and IOPS over time into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Options of `lightpool-perf bdev`.
#[derive(Args, Debug)]
pub struct BdevArgs {
    /// A RAM block device of this size (e.g. 1GiB).
    #[arg(long, value_parser = parse_size_u64, conflicts_with = "file", required_unless_present = "file")]
    pub ram: Option<u64>,
    /// A file or block device through io_uring.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Logical block size (512 or 4096). Default: 512 for RAM; the device's, or
    /// 4096, for files.
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Use the page cache (no O_DIRECT).
    #[arg(long)]
    pub buffered: bool,
    /// How each io_uring ring is set up, as changes to the defaults: fixed-file,
    /// fixed-buffers, coop-taskrun, defer-taskrun, quiet-eventfd (or no-...),
    /// sqpoll=CPU, batch=N, plain (everything off). Default: the target's.
    #[arg(long, value_parser = lightpool_bdev_uring::RingOptions::parse, requires = "file")]
    pub ring: Option<lightpool_bdev_uring::RingOptions>,
    #[command(flatten)]
    pub w: WorkloadArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Worker cores: `None` entries are unpinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cores(pub Vec<usize>);

/// `4096`, `4k`, `4KiB`, `128K`, `1m`, `1GiB`, `512b`.
pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown size unit {unit:?} (use k, m, g)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_size_u32(s: &str) -> Result<u32, String> {
    let v = parse_size_u64(s)?;
    if v == 0 {
        return Err("the I/O size must be at least one byte".into());
    }
    u32::try_from(v).map_err(|_| format!("{s:?} is too large for one I/O"))
}

/// Seconds as a number (fractions allowed) or with ms/s suffix.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=1e7).contains(&v) {
        return Err(format!("{s:?} is not a usable number of seconds"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// `0x6` (mask), `1,2`, `1-3`, `0,2-3`.
pub fn parse_cores(s: &str) -> Result<Cores, String> {
    let mut v = Vec::new();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let m = u128::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not a core mask"))?;
        v.extend((0..128).filter(|b| m & (1 << b) != 0));
    } else {
        for part in s.split(',') {
            let part = part.trim();
            if let Some((a, b)) = part.split_once('-') {
                let a: usize = a
                    .parse()
                    .map_err(|_| format!("{part:?} is not a core range"))?;
                let b: usize = b
                    .parse()
                    .map_err(|_| format!("{part:?} is not a core range"))?;
                if a > b {
                    return Err(format!("{part:?}: the range runs backwards"));
                }
                v.extend(a..=b);
            } else {
                v.push(
                    part.parse()
                        .map_err(|_| format!("{part:?} is not a core number"))?,
                );
            }
        }
    }
    if v.is_empty() {
        return Err(format!("{s:?} names no core"));
    }
    let mut sorted = v.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != v.len() {
        return Err(format!("{s:?} names a core twice"));
    }
    let have = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(bad) = v.iter().find(|c| !have.iter().any(|h| h.id == **c)) {
        return Err(format!(
            "core {bad} is not available to this process (it may use {})",
            have.iter()
                .map(|c| c.id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(Cores(v))
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("--range {s:?}: use START:END in LBAs"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("--range {s:?}: START is not an LBA"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("--range {s:?}: END is not an LBA"))?;
    if a >= b {
        return Err(format!("--range {s:?}: END must be above START"));
    }
    Ok((a, b))
}

impl WorkloadArgs {
    pub fn job(&self, progress: bool) -> Result<Job, String> {
        if self.queue_depth == 0 {
            return Err("-q must be at least 1".into());
        }
        if self.time.is_zero() {
            return Err("-t must be more than 0 seconds".into());
        }
        Ok(Job {
            workload: self.workload,
            mix: self.rwmixread,
            io_size: self.io_size,
            depth: self.queue_depth,
            duration: self.time,
            warmup: self.warmup,
            verify: self.verify,
            io_timeout: self.io_timeout.max(Duration::from_millis(100)),
            progress,
        })
    }

    pub fn core_list(&self) -> Vec<Option<usize>> {
        match &self.cores {
            Some(c) => c.0.iter().map(|&c| Some(c)).collect(),
            None => vec![None],
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED)
        })
    }

    /// The settings a report states.
    pub fn settings(&self, mode: &str, target: String, queues: usize, digests: String) -> Settings {
        Settings {
            mode: mode.to_string(),
            target,
            workload: self.workload.name().to_string(),
            read_percent: self.workload.read_percent(self.rwmixread),
            io_size: self.io_size,
            queue_depth: self.queue_depth,
            cores: self
                .core_list()
                .iter()
                .map(|c| c.map_or("any".to_string(), |c| c.to_string()))
                .collect(),
            queues_per_core: queues,
            duration_s: self.time.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            verify: self.verify,
            digests,
        }
    }
}

impl OutputArgs {
    pub fn progress(&self) -> bool {
        self.progress || std::io::stderr().is_terminal()
    }

    /// Prints and writes the report; returns the exit code.
    pub fn emit(&self, report: &Report, started: SystemTime) -> i32 {
        if self.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.table());
        }
        let mut code = 0;
        if let Some(p) = &self.histogram {
            if let Err(e) = report.write_histogram_log(p, started) {
                eprintln!("lightpool-perf: cannot write {}: {e}", p.display());
                code = 1;
            }
        }
        if let Some(p) = &self.plot {
            if let Err(e) = crate::plot::write_svg(report, p) {
                eprintln!("lightpool-perf: cannot draw the plot: {e}");
                code = 1;
            }
        }
        if let Some(e) = &report.error {
            eprintln!("lightpool-perf: the run stopped early: {e}");
            code = 1;
        }
        if let Some(v) = report.verify.as_ref().filter(|v| v.mismatches > 0) {
            eprintln!(
                "lightpool-perf: verify found {} bad block(s); first: {}",
                v.mismatches,
                v.first.first().map_or("", String::as_str)
            );
            code = 1;
        }
        if report.error_total > 0 {
            eprintln!("lightpool-perf: {} I/O(s) failed", report.error_total);
            code = 1;
        }
        code
    }
}

/// A random host identifier and the NQN made from it.
fn host_identity() -> ([u8; 16], String) {
    let mut id = [0u8; 16];
    let from_urandom = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .is_ok();
    if !from_urandom {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        id = t.to_le_bytes();
    }
    id[6] = (id[6] & 0x0F) | 0x40;
    id[8] = (id[8] & 0x3F) | 0x80;
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    (id, format!("nqn.2014-08.org.nvmexpress:uuid:{uuid}"))
}

pub fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("lightpool-perf: {e}");
    1
}

/// An invalid option: exit code 2 (as clap's own refusals).
fn invalid(e: impl std::fmt::Display) -> i32 {
    eprintln!("lightpool-perf: {e}");
    2
}

/// Parses the command line and runs; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.cmd {
        Some(Cmd::Bdev(a)) => crate::bdev::main(&a),
        Some(Cmd::Limit(a)) => crate::limit::main(&a),
        None => nvme_main(&cli.nvme),
    }
}

fn nvme_main(a: &NvmeArgs) -> i32 {
    if a.trid.is_empty() {
        return invalid("give the target with -r 'trtype:tcp adrfam:ipv4 traddr:IP trsvcid:PORT subnqn:NQN' (see --help)");
    }
    let trids: Result<Vec<TransportId>, String> = a.trid.iter().map(|s| s.parse()).collect();
    let trids = match trids {
        Ok(t) => t,
        Err(e) => return invalid(format!("-r: {e}")),
    };
    let job = match a.w.job(a.out.progress()) {
        Ok(j) => j,
        Err(e) => return invalid(e),
    };
    if a.kato != 0 && a.kato < 1000 {
        return invalid("--kato must be 0 or at least 1000 ms");
    }
    let (hostid, random_nqn) = host_identity();
    let tls = match &a.tls_key {
        None => None,
        Some(k) => match lightpool_nvmf::tls::ConfiguredPsk::parse(k) {
            Ok(k) => Some((
                k,
                if a.tls_identity == 0 {
                    lightpool_nvmf::tls::IdentityVersion::V0
                } else {
                    lightpool_nvmf::tls::IdentityVersion::V1
                },
            )),
            Err(e) => return invalid(format!("--tls-key: {e}")),
        },
    };
    let o = NvmeOptions {
        trids,
        hostnqn: a.hostnqn.clone().unwrap_or(random_nqn),
        hostid,
        hdgst: a.digest || a.header_digest,
        ddgst: a.digest || a.data_digest,
        kato_ms: a.kato,
        timeout: a.connect_timeout.max(Duration::from_millis(100)),
        force_r2t: a.no_in_capsule,
        cores: a.w.core_list(),
        qpairs: usize::from(a.w.qpairs),
        range: a.w.range,
        seed: a.w.seed(),
        tls,
        ktls: a.ktls == "auto",
    };
    let digests = match (o.hdgst, o.ddgst) {
        (true, true) => "header+data",
        (true, false) => "header",
        (false, true) => "data",
        (false, false) => "",
    }
    .to_string();
    let started = SystemTime::now();
    #[cfg(feature = "rdma")]
    if o.trids.iter().any(|t| t.rdma) {
        if a.multipath || o.tls.is_some() {
            return fail_setup(PerfError::Invalid(
                "trtype:rdma takes neither --tls-key (TLS is NVMe/TCP's) nor --multipath (paths are followed over NVMe/TCP only): drop the option or use trtype:tcp".into(),
            ));
        }
        return crate::rdma::main(a, &job, &o, started);
    }
    if a.multipath {
        let prepared = crate::multipath::prepare(&job, &o);
        return report_run(a, &job, "NVMe/TCP", prepared, digests, started);
    }
    let prepared = crate::nvme::prepare(&job, &o);
    report_run(a, &job, "NVMe/TCP", prepared, digests, started)
}

/// Runs what was prepared (`mode`: the fabric, as the report names it) and reports it;
/// the exit code.
pub(crate) fn report_run<Q: IoQueue + 'static, O: Fabric>(
    a: &NvmeArgs,
    job: &Job,
    mode: &str,
    prepared: Result<Prepared<Q, O>, PerfError>,
    digests: String,
    started: SystemTime,
) -> i32 {
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return fail_setup(e),
    };
    if a.tls_key.is_some() {
        say_record_layers();
    }
    let qpairs = usize::from(a.w.qpairs);
    let settings = a.w.settings(mode, prepared.target.clone(), qpairs, digests);
    match crate::nvme::run(job, prepared) {
        Ok((out, devices)) => {
            let report = Report::new(settings, job, &devices, &out);
            a.out.emit(&report, started)
        }
        Err(e) => fail(e),
    }
}

/// The record layers the TLS queue pairs got, on stderr (kTLS or software, and why).
fn say_record_layers() {
    let l = lightpool_nvmf_host::record_layers();
    eprintln!(
        "TLS record layer: {} queue pairs in the kernel (kTLS), {} in software{}",
        l.kernel,
        l.software,
        l.software_reason
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
}

/// A setup error as an exit code: 2 for an option the target (or device) cannot take,
/// 1 otherwise.
pub fn fail_setup(e: PerfError) -> i32 {
    match e {
        PerfError::Invalid(m) => invalid(m),
        e => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(parse_size_u64("4096"), Ok(4096));
        assert_eq!(parse_size_u64("4k"), Ok(4096));
        assert_eq!(parse_size_u64("128KiB"), Ok(131072));
        assert_eq!(parse_size_u64("1GiB"), Ok(1 << 30));
        assert!(parse_size_u64("12q").is_err());
        assert!(parse_size_u32("0").is_err());
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn core_lists_and_masks() {
        assert_eq!(parse_cores("0"), Ok(Cores(vec![0])));
        assert_eq!(parse_cores("0x1"), Ok(Cores(vec![0])));
        assert!(parse_cores("0,0").is_err());
        assert!(parse_cores("4096").is_err());
        assert!(parse_cores("x").is_err());
        assert_eq!(parse_range("10:20"), Ok((10, 20)));
        assert!(parse_range("20:10").is_err());
    }
}
