//! NVMe/TCP TLS with the record layer in the kernel (kTLS), in the Linux 6.12 guest
//! (whose kernel has the tls module): lightpool-target with a TLS listener in kTLS
//! (`ktls` auto) and one with `ktls = "off"`, lightpool-perf --verify over 127.0.0.1
//! with both suites. Each end hands its records to the kernel after the handshake
//! (target log `record_layer="kernel"`, perf's "TLS record layer" line, the kernel's
//! /proc/net/tls_stat counters grow); a software perf (`--ktls off`) against the kTLS
//! listener and a kTLS perf against the software one interoperate; peers that send a
//! garbage record, a fatal alert, a KeyUpdate or close_notify after the handshake lose
//! their connection (the reason logged) while a perf beside them verifies on; and a
//! hot upgrade hands the kTLS connections to the successor as sockets (a perf across
//! it verifies with no reconnect).
#![cfg(feature = "e2e")]

use std::time::Duration;

use lightpool_e2e::{guest_release_binaries, rdma, run_guest, GuestConfig};
use lightpool_nvmf::tls::{ConfiguredPsk, Derivation, IdentityVersion, PskHash};

const NQN: &str = "nqn.2024-01.io.lightpool:ktls";
const H256: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-0000000c7256";
const H384: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-0000000c7384";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn script() -> String {
    let k256 = ConfiguredPsk::new(Some(PskHash::Sha256), &[0x6b; 32]).expect("key");
    let k384 = ConfiguredPsk::new(Some(PskHash::Sha384), &[0xb6; 48]).expect("key");
    let (i256, i384) = (k256.to_interchange(), k384.to_interchange());
    // What the hostile peer offers: the TLS PSK nvme-cli derives for H256.
    let p = k256
        .tls_psk(H256, NQN, IdentityVersion::V1, Derivation::Standard)
        .expect("derives");
    let (hid, hkey) = (p.identity.clone(), hex(&p.key));
    format!(
        r#"
set -eu
NQN={NQN}
say() {{ echo "KTLS-E2E: $*"; }}
fail() {{ say "FAILED: $*"; echo "--- target log"; tail -n 60 /tmp/target.log; exit 1; }}
# The tls ULP and the AES-GCM the kernel's record layer asks its crypto for.
for m in tls gcm ghash-generic aesni-intel ghash-clmulni-intel; do modprobe $m 2>/dev/null || true; done
[ -r /proc/net/tls_stat ] || fail "no /proc/net/tls_stat: the tls module did not load"
stat() {{ awk -v k=$1 '$1 == k {{ print $2 }}' /proc/net/tls_stat; }}
stats() {{ say "tls_stat $1 TlsTxSw=$(stat TlsTxSw) TlsRxSw=$(stat TlsRxSw) TlsCurrTxSw=$(stat TlsCurrTxSw) TlsCurrRxSw=$(stat TlsCurrRxSw) TlsDecryptError=$(stat TlsDecryptError)"; }}
cat > /tmp/t.toml <<EOT
[target]
reactors = 2

[[listener]]
address = "127.0.0.1:4420"
secure = "required"

[[listener]]
address = "127.0.0.1:4421"
secure = "required"
ktls = "off"

[[subsystem]]
nqn = "$NQN"
allow_any_host = true

[[subsystem.tls_key]]
host = "{H256}"
key = "{i256}"

[[subsystem.tls_key]]
host = "{H384}"
key = "{i384}"

[[subsystem.namespace]]
nsid = 1
ram = "64MiB"
block_size = 512
EOT
/test/lightpool-target --config /tmp/t.toml --control-socket /run/t.sock --log info \
    > /tmp/target.log 2>&1 &
for i in $(seq 1 200); do [ "$(grep -c 'NVMe/TCP listening' /tmp/target.log)" = 2 ] && break; sleep 0.1; done
[ "$(grep -c 'NVMe/TCP listening' /tmp/target.log)" = 2 ] || fail "the target did not listen"
grep -q "the kernel has the tls ULP" /tmp/target.log || fail "the target found no kernel TLS"
say "target up"
K="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4420 subnqn:$NQN"
S="trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:4421 subnqn:$NQN"
# perf_run NAME ARGS...: a JSON report line (PERFJSON) and perf's record layer line.
perf_run() {{
    name=$1; shift
    rc=0
    /test/lightpool-perf --json "$@" > /tmp/perf.json 2> /tmp/perf.err || rc=$?
    [ $rc = 0 ] || {{ echo "perf $name stderr:"; tail -n 20 /tmp/perf.err; }}
    grep "TLS record layer" /tmp/perf.err | sed "s/^/KTLS-E2E: $name: /" || true
    echo "PERFJSON $name $rc $(tr -d '\n' < /tmp/perf.json)"
}}
A256="--hostnqn {H256} --tls-key {i256}"
A384="--hostnqn {H384} --tls-key {i384}"
stats start
perf_run k256 -r "$K" $A256 -w randrw -o 4096 -q 16 -t 3 --verify --range 0:16384 --connect-timeout 10
stats k256
perf_run k384 -r "$K" $A384 -w randrw -o 131072 -q 8 -t 3 --verify --range 16384:32768 --connect-timeout 10
stats k384
perf_run host-sw -r "$K" $A256 --ktls off -w randrw -o 16384 -q 16 -t 3 --verify --range 32768:49152 --connect-timeout 10
stats host-sw
perf_run target-sw -r "$S" $A384 -w randrw -o 65536 -q 16 -t 3 --verify --range 49152:65536 --connect-timeout 10
stats target-sw
say "target kernel connections: $(grep -c 'record_layer=.\?kernel' /tmp/target.log)"
say "target software connections: $(grep -c 'record_layer=.\?software' /tmp/target.log)"
grep 'record_layer=.\?software' /tmp/target.log | head -n 2 | sed 's/^/TLOG: /'

# Hostile peers beside a verifying perf: each loses its connection, the perf goes on.
/test/lightpool-perf --json -r "$K" $A256 -w randrw -o 4096 -q 16 -t 8 --verify \
    --range 65536:81920 --connect-timeout 10 > /tmp/bg.json 2> /tmp/bg.err &
BG=$!
sleep 2
for m in garbage alert keyupdate close_notify; do
    /test/tls_hostile $m 127.0.0.1:4420 "{hid}" {hkey} 256 > /tmp/h.out 2>&1 || {{ cat /tmp/h.out; fail "hostile $m"; }}
    cat /tmp/h.out
done
rc=0; wait $BG || rc=$?
[ $rc = 0 ] || tail -n 20 /tmp/bg.err
echo "PERFJSON beside-hostile $rc $(tr -d '\n' < /tmp/bg.json)"
grep "NVMe/TCP TLS: connection closed" /tmp/target.log | sed 's/^/TLOG: /'
stats hostile

# Hot upgrade under a kTLS perf: its connections travel as sockets.
/test/lightpool-perf --json -r "$K" $A256 -w randrw -o 4096 -q 16 -t 10 --verify \
    --range 81920:98304 --connect-timeout 10 > /tmp/up.json 2> /tmp/up.err &
UP=$!
sleep 3
/test/lightpool-target upgrade --binary /test/lightpool-target --control-socket /run/t.sock \
    > /tmp/upgrade.out 2>&1 || {{ cat /tmp/upgrade.out; fail "upgrade"; }}
grep "took over" /tmp/upgrade.out || true
say "upgraded"
rc=0; wait $UP || rc=$?
[ $rc = 0 ] || tail -n 20 /tmp/up.err
echo "PERFJSON across-upgrade $rc $(tr -d '\n' < /tmp/up.json)"
say "not handed over: $(grep -c 'TLS connection not handed over' /tmp/target.log)"
stats end
for p in $(pidof lightpool-target); do kill $p; done
sleep 1
grep -E "WARN|ERROR" /tmp/target.log | tail -n 20 || true
say "all good"
"#
    )
}

/// The `tls_stat NAME` line's counter `key`.
fn stat(console: &str, name: &str, key: &str) -> Option<u64> {
    let line = console
        .lines()
        .find(|l| l.starts_with(&format!("KTLS-E2E: tls_stat {name} ")))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

#[test]
fn ktls_records_in_the_kernel_on_both_ends() {
    let files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("lightpool-perf", "/test/lightpool-perf"),
        ("examples/tls_hostile", "/test/tls_hostile"),
    ]);
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        mem_mb: 2048,
        extra_files: files,
        ..GuestConfig::new("ktls", &script())
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(120);
    assert_eq!(out.exit_code, 0, "{tail}");
    let c = &out.console;
    for want in [
        "KTLS-E2E: target up",
        "HOSTILE: garbage: closed by the target ok",
        "HOSTILE: alert: closed by the target ok",
        "HOSTILE: keyupdate: closed by the target ok",
        "HOSTILE: close_notify: closed by the target ok",
        "failed authentication (EBADMSG)",
        "the peer sent a TLS alert (handshake_failure, level 2)",
        "the peer sent a TLS handshake message (type 24)",
        "KTLS-E2E: upgraded",
        "KTLS-E2E: not handed over: 0",
        "KTLS-E2E: all good",
    ] {
        assert!(c.contains(want), "{want:?} missing from:\n{tail}");
    }
    // perf's queue pairs: (in the kernel, in software), as its stderr line says.
    let layer = |name: &str| -> (u64, u64) {
        let l = c
            .lines()
            .find_map(|l| {
                l.split(&format!("KTLS-E2E: {name}: TLS record layer: "))
                    .nth(1)
            })
            .unwrap_or_else(|| panic!("no record layer line of {name}: {tail}"));
        let n: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (n[0], n[1])
    };
    // Both ends in the kernel with both suites; each end alone where the other is off.
    let (k256, _) = layer("k256");
    assert!(k256 >= 2, "{tail}");
    assert_eq!(layer("k256"), (k256, 0), "{tail}");
    assert_eq!(layer("k384"), (k256, 0), "{tail}");
    assert_eq!(layer("host-sw"), (0, k256), "{tail}");
    assert!(
        c.contains("KTLS-E2E: host-sw: TLS record layer: 0 queue pairs in the kernel (kTLS), ")
            && c.contains("in software (kTLS is off for this connection)"),
        "{tail}"
    );
    assert_eq!(layer("target-sw"), (k256, 0), "{tail}");
    // The target, before the hostile peers: kernel for everything on 4420 (k256,
    // k384, host-sw), software (ktls off) for target-sw's queues on 4421.
    let count = |what: &str| -> u32 {
        c.lines()
            .find_map(|l| {
                l.split(&format!("KTLS-E2E: target {what} connections: "))
                    .nth(1)
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(u64::from(count("kernel")), 3 * k256, "{tail}");
    assert_eq!(u64::from(count("software")), k256, "{tail}");
    assert!(
        c.contains("reason=kTLS is off for this connection") || c.contains("reason=\"kTLS is off"),
        "{tail}"
    );
    // The kernel's own count of kTLS sockets set up grew with every case.
    let mut last = (0, 0);
    for name in [
        "start",
        "k256",
        "k384",
        "host-sw",
        "target-sw",
        "hostile",
        "end",
    ] {
        let tx = stat(c, name, "TlsTxSw").unwrap_or_else(|| panic!("no tls_stat {name}: {tail}"));
        let rx = stat(c, name, "TlsRxSw").unwrap_or_else(|| panic!("no tls_stat {name}: {tail}"));
        if name != "start" {
            assert!(
                tx > last.0 && rx > last.1,
                "{name}: {tx} {rx} after {last:?}: {tail}"
            );
        }
        last = (tx, rx);
    }
    // k256: each queue pair's socket on both ends.
    assert_eq!(
        stat(c, "k256", "TlsTxSw").unwrap_or(0) - stat(c, "start", "TlsTxSw").unwrap_or(0),
        2 * k256,
        "{tail}"
    );
    let perf = rdma::perf_reports(c);
    for name in [
        "k256",
        "k384",
        "host-sw",
        "target-sw",
        "beside-hostile",
        "across-upgrade",
    ] {
        perf.get(name)
            .unwrap_or_else(|| panic!("no perf run {name} in:\n{tail}"))
            .assert_clean(name, true);
    }
}
