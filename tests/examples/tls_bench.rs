//! The speed cost of NVMe/TCP TLS (software and kTLS) and of digests, as ratios from one
//! boot of the Linux 6.12 test guest, whose kernel has the tls ULP (this host's has not:
//! perf/tls.sh cannot measure kTLS here). A benchmark, not a test: it asserts nothing
//! but that every run completed.
//!
//! ```sh
//! cargo build --release -p lightpool-daemon --features lightpool-daemon/tls -p lightpool-perf
//! cargo run --release -p lightpool-e2e --example tls_bench -- [ROUNDS [SECONDS]]
//! ```
//!
//! In the guest (2 vCPUs): lightpool-target on vCPU 1 (`taskset -c 1`, one unpinned
//! reactor: `cores` counts the CPUs of the affinity mask) serving a RAM namespace on a
//! plain listener, a TLS listener with `ktls = "off"` and one with `ktls = "auto"`;
//! lightpool-perf pinned to vCPU 0 (`taskset -c 0`, `-c 0`). ROUNDS rounds (default 3)
//! of each workload (4 KiB randread QD32, 4 KiB randwrite QD32, 128 KiB sequential read
//! QD16), each case in turn within a round (plain, plain + digests, software TLS,
//! software TLS + digests, kTLS, kTLS + digests), SECONDS (default 4) each. Per run:
//! perf's IOPS, and the target's CPU per I/O from its /proc/PID/stat utime + stime
//! (clock ticks of 10 ms) read before and after the run (connect and handshake
//! included), with its share of the run's wall time ("target CPU busy": below 100%
//! the target was not what limited the IOPS). Medians over the rounds, ratios to plain;
//! a table and JSON on stdout, the JSON also in target/e2e/tls_bench.json. The guest's
//! CPU flags for AES and carry-less multiply and the kernel's gcm(aes) implementation
//! (/proc/crypto) are printed with the table: QEMU's TCG emulates every instruction, so
//! absolute figures mean nothing and the ratios hold for this emulation only.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lightpool_e2e::{
    assets, binary_with_libraries, e2e_dir, rdma, release_binary, run_guest, GuestConfig,
};
use lightpool_nvmf::tls::{ConfiguredPsk, PskHash};
use serde_json::json;

const NQN: &str = "nqn.2024-01.io.lightpool:tls-bench";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-0000000b7e58";
/// (name, perf -w, -o, -q).
const WORKLOADS: [(&str, &str, u32, u32); 3] = [
    ("randread-4k-qd32", "randread", 4096, 32),
    ("randwrite-4k-qd32", "randwrite", 4096, 32),
    ("read-128k-qd16", "read", 131072, 16),
];
/// (name, port, perf arguments beyond the transport ID).
const CASES: [(&str, u16, &str); 8] = [
    ("plain", 4420, ""),
    ("plain+digests", 4420, "--digest"),
    ("tls", 4421, "$TLS --ktls off"),
    ("tls+digests", 4421, "$TLS --ktls off --digest"),
    ("ktls", 4422, "$TLS --ktls auto"),
    ("ktls+digests", 4422, "$TLS --ktls auto --digest"),
    // kTLS with aesni-intel loaded for the run (its gcm(aes), priority 400, ahead of
    // gcm_base(ctr(aes-generic),ghash-generic)), unloaded after it.
    ("ktls-aesni", 4422, "$TLS --ktls auto"),
    ("ktls-aesni+digests", 4422, "$TLS --ktls auto --digest"),
];
/// What aesni-intel needs beside what the initramfs has (gf128mul), in load order,
/// from the kernel package tests/vm/setup.sh unpacked.
const AESNI: [&str; 3] = [
    "kernel/crypto/cryptd.ko.xz",
    "kernel/crypto/crypto_simd.ko.xz",
    "kernel/arch/x86/crypto/aesni-intel.ko.xz",
];

/// The cases measured: the aesni ones only where the modules were found.
fn cases(aesni: bool) -> impl Iterator<Item = (&'static str, u16, &'static str)> {
    CASES
        .into_iter()
        .filter(move |c| aesni || !c.0.contains("aesni"))
}

/// `(guest path, contents)`, as [`GuestConfig::extra_files`] takes them.
type GuestFiles = Vec<(String, Vec<u8>)>;

/// The aesni-intel modules and their dependencies, decompressed, as guest files
/// /test/ko/N.ko (N in load order); None when the unpacked kernel package lacks them.
fn aesni_modules() -> Result<Option<GuestFiles>> {
    let a = assets()?;
    let Ok(pkgs) = std::fs::read_dir(a.dir.join("kernel")) else {
        return Ok(None);
    };
    for pkg in pkgs.flatten() {
        let base = pkg.path().join("lib/modules").join(&a.kernel_release);
        if !AESNI.iter().all(|m| base.join(m).is_file()) {
            continue;
        }
        let mut out = Vec::new();
        for (i, m) in AESNI.iter().enumerate() {
            let x = Command::new("xz").arg("-dc").arg(base.join(m)).output()?;
            if !x.status.success() {
                bail!("xz -dc {}: {}", m, String::from_utf8_lossy(&x.stderr));
            }
            out.push((format!("/test/ko/{i}.ko"), x.stdout));
        }
        return Ok(Some(out));
    }
    Ok(None)
}

fn script(rounds: u32, secs: u32, key: &str, aesni: bool) -> String {
    let mut runs = String::new();
    for r in 1..=rounds {
        for (w, rw, o, q) in WORKLOADS {
            for (c, port, args) in cases(aesni) {
                runs += &format!("bench {c} {w} {r} {port} -w {rw} -o {o} -q {q} {args}\n");
            }
        }
    }
    format!(
        r#"
set -eu
say() {{ echo "TLS-BENCH: $*"; }}
fail() {{ say "FAILED: $*"; tail -n 40 /tmp/target.log; exit 1; }}
# Not aesni-intel: the ktls cases are to get the generic gcm(aes), the ktls-aesni ones
# load it for their runs.
for m in tls gcm ghash-generic; do modprobe $m 2>/dev/null || true; done
[ -r /proc/net/tls_stat ] || fail "no /proc/net/tls_stat: the tls module did not load"
say "cpu flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(aes|vaes|pclmulqdq|vpclmulqdq|avx|avx2|sse4_2)$' | tr '\n' ' ')"
say "model: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2)"
cat > /tmp/t.toml <<EOT
[target]
reactors = 1

[[listener]]
address = "127.0.0.1:4420"

[[listener]]
address = "127.0.0.1:4421"
secure = "required"
ktls = "off"

[[listener]]
address = "127.0.0.1:4422"
secure = "required"

[[subsystem]]
nqn = "{NQN}"
allow_any_host = true

[[subsystem.tls_key]]
host = "{HOST}"
key = "{key}"

[[subsystem.namespace]]
nsid = 1
ram = "128MiB"
block_size = 512
EOT
taskset -c 1 /test/lightpool-target --config /tmp/t.toml --control-socket /run/t.sock --log info \
    > /tmp/target.log 2>&1 &
TPID=$!
for i in $(seq 1 300); do [ "$(grep -c 'NVMe/TCP listening' /tmp/target.log)" = 3 ] && break; sleep 0.1; done
[ "$(grep -c 'NVMe/TCP listening' /tmp/target.log)" = 3 ] || fail "the target did not listen"
grep -q "the kernel has the tls ULP" /tmp/target.log || fail "the target found no kernel TLS"
TLS="--tls-key {key}"
trid() {{ echo "trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:$1 subnqn:{NQN}"; }}
ticks() {{ awk '{{ print $14 + $15 }}' /proc/$TPID/stat; }}
# The gcm(aes) implementations registered, highest priority (the one a new kTLS
# socket gets) first.
gcm() {{
    awk '/^name/ {{ n = $3 }} /^driver/ {{ d = $3 }} /^priority/ {{ p = $3 }} /^refcnt/ {{ r = $3 }}
         /^type/ {{ if (n == "gcm(aes)") printf "%s %s=%s(refcnt %s)\n", p, "gcm(aes)", d, r }}' /proc/crypto |
        sort -rn | cut -d' ' -f2- | tr '\n' ' '
}}
aesni_on() {{
    grep -q '^aesni_intel ' /proc/modules && return 0
    for k in /test/ko/0.ko /test/ko/1.ko /test/ko/2.ko; do insmod $k 2>/dev/null || true; done
    grep -q '^aesni_intel ' /proc/modules || fail "aesni-intel did not load"
}}
# The target closes its kTLS sockets (and frees their AEADs) once it sees perf go.
aesni_off() {{
    for i in $(seq 1 50); do rmmod aesni_intel 2>/dev/null && return 0; sleep 0.1; done
    fail "aesni-intel stays in use"
}}
uptime_cs() {{ awk '{{ printf "%d", $1 * 100 }}' /proc/uptime; }}
# bench CASE WORKLOAD ROUND PORT PERF-ARGS...: the lines "TLSCPU CASE/WORKLOAD/ROUND
# TARGET-TICKS WALL-CS" and "PERFJSON CASE/WORKLOAD/ROUND EXIT {{perf json}}".
bench() {{
    c=$1 w=$2 r=$3 port=$4
    shift 4
    case $c in *aesni*) aesni_on;; esac
    t0=$(ticks); u0=$(uptime_cs); rc=0
    taskset -c 0 /test/lightpool-perf --json -r "$(trid $port)" --hostnqn {HOST} -c 0 -t {secs} "$@" \
        > /tmp/perf.json 2> /tmp/perf.err || rc=$?
    t1=$(ticks); u1=$(uptime_cs)
    [ $rc = 0 ] || {{ echo "perf $c $w stderr:"; tail -n 20 /tmp/perf.err; }}
    case $c in ktls*) [ $r != 1 ] || say "$c $w: $(gcm)";; esac
    case $c in *aesni*) aesni_off;; esac
    [ $r != 1 ] || grep "TLS record layer" /tmp/perf.err | sed "s|^|TLS-BENCH: $c $w: |" || true
    echo "TLSCPU $c/$w/$r $((t1 - t0)) $((u1 - u0))"
    echo "PERFJSON $c/$w/$r $rc $(tr -d '\n' < /tmp/perf.json)"
}}
# Every block written once, so that reads find data.
taskset -c 0 /test/lightpool-perf -r "$(trid 4420)" --hostnqn {HOST} -c 0 -w write -o 131072 -q 16 -t 5 \
    > /dev/null 2>&1 || fail "fill"
say "start"
{runs}
say "record layers (target log): $(grep -o 'record_layer=.\?[a-z]*' /tmp/target.log | tr -d '"' | sort | uniq -c | tr -s ' \n' ' ')"
say "tls_stat: $(awk '$1 ~ /^TlsCurr|^Tls(Tx|Rx)Sw|DecryptError/ {{ printf "%s=%s ", $1, $2 }}' /proc/net/tls_stat)"
# The kernel's AES-GCM: each gcm(aes) implementation registered (the template
# instance kTLS allocated among them), highest priority first is the one used.
awk '/^name/ {{ n = $3 }} /^driver/ {{ d = $3 }} /^module/ {{ m = $3 }} /^priority/ {{ p = $3 }}
     /^refcnt/ {{ rc = $3 }}
     /^type/ {{ if (n == "gcm(aes)" || n == "aes" || n == "ctr(aes)" || n == "ghash")
                   printf "TLS-BENCH: crypto %s driver=%s module=%s priority=%s refcnt=%s\n", n, d, m, p, rc }}' /proc/crypto
kill $TPID
say "done"
"#
    )
}

/// (case, workload) -> per round (IOPS, target µs of CPU per I/O, target CPU busy).
type Runs = BTreeMap<(String, String), Vec<(f64, f64, f64)>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() -> Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("usage: tls_bench [ROUNDS [SECONDS]]"))
        .collect::<Result<_>>()?;
    let rounds = args.first().copied().unwrap_or(3);
    let secs = args.get(1).copied().unwrap_or(4);
    let aesni = aesni_modules()?;
    let key = ConfiguredPsk::new(Some(PskHash::Sha256), &[0x5a; 32])?.to_interchange();
    let mut files = Vec::new();
    for (bin, at) in [
        ("lightpool-target", "/test/lightpool-target"),
        ("lightpool-perf", "/test/lightpool-perf"),
    ] {
        files.extend(binary_with_libraries(&release_binary(bin)?, at)?);
    }
    if aesni.is_none() {
        eprintln!("tls_bench: no aesni-intel module in the unpacked kernel package (.cache/vm/kernel): no ktls-aesni cases");
    }
    let has_aesni = aesni.is_some();
    files.extend(aesni.unwrap_or_default());
    let runs = u64::from(rounds) * (WORKLOADS.len() * cases(has_aesni).count()) as u64;
    let cfg = GuestConfig {
        timeout: Duration::from_secs(120 + runs * (u64::from(secs) + 8)),
        mem_mb: 1024,
        extra_files: files,
        ..GuestConfig::new("tls_bench", &script(rounds, secs, &key, has_aesni))
    };
    let out = run_guest(&cfg)?;
    let c = &out.console;
    if out.exit_code != 0 || !c.contains("TLS-BENCH: done") {
        bail!(
            "the guest failed (exit {}):\n{}",
            out.exit_code,
            out.tail(60)
        );
    }
    let info: Vec<&str> = c
        .lines()
        .filter_map(|l| l.strip_prefix("TLS-BENCH: "))
        .collect();
    let mut m = Runs::new();
    let reports = rdma::perf_reports(c);
    for line in c.lines().filter_map(|l| l.strip_prefix("TLSCPU ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let key: Vec<&str> = f[0].split('/').collect();
        let rep = reports
            .get(f[0])
            .context("a run without its PERFJSON line")?;
        let (ticks, wall): (f64, f64) = (f[1].parse()?, f[2].parse()?);
        if rep.code != 0 || rep.ios() == 0 {
            bail!("{line}: the run failed\n{}", out.tail(60));
        }
        m.entry((key[0].to_string(), key[1].to_string()))
            .or_default()
            .push((
                rep.iops(),
                ticks * 10_000.0 / rep.ios() as f64,
                ticks / wall.max(1.0),
            ));
    }
    let mut rows = Vec::new();
    println!("| workload | case | IOPS | target CPU µs/I/O | IOPS / plain | CPU per I/O / plain | target CPU busy |");
    println!("|---|---|---|---|---|---|---|");
    for (w, ..) in WORKLOADS {
        let med = |case: &str, i: usize| {
            let v = m.get(&(case.to_string(), w.to_string())).cloned();
            median(
                v.unwrap_or_default()
                    .iter()
                    .map(|t| [t.0, t.1, t.2][i])
                    .collect(),
            )
        };
        let (p_iops, p_cpu) = (med("plain", 0), med("plain", 1));
        for (case, ..) in cases(has_aesni) {
            let (iops, cpu, busy) = (med(case, 0), med(case, 1), med(case, 2));
            println!(
                "| {w} | {case} | {iops:.0} | {cpu:.1} | {:.3} | {:.3} | {:.0}% |",
                iops / p_iops,
                cpu / p_cpu,
                busy * 100.0
            );
            rows.push(json!({
                "workload": w, "case": case, "iops": iops, "target_cpu_us_per_io": cpu,
                "iops_ratio": iops / p_iops, "cpu_per_io_ratio": cpu / p_cpu,
                "target_cpu_busy": busy,
                "rounds": m.get(&(case.to_string(), w.to_string())),
            }));
        }
    }
    let doc = json!({ "rounds": rounds, "seconds": secs, "guest": info, "results": rows });
    println!("\n{}", serde_json::to_string(&doc)?);
    println!();
    for l in &info {
        println!("{l}");
    }
    let path = e2e_dir()?.join("tls_bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    eprintln!(
        "boot {:.1?}, total {:.1?}, console {}, JSON {}",
        out.boot_time,
        out.total_time,
        out.console_log.display(),
        path.display()
    );
    Ok(())
}
