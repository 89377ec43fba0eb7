//! The Linux kernel's NVMe/TCP initiator over TLS against lightpool-target, in the
//! Linux 6.12 guest, with lightpool-tlshd as the kernel's handshake agent: the TLS PSK
//! goes into the .nvme keyring (`lightpool-tlshd insert-key`), `tls,tls_key=<serial>`
//! connects, fio writes and verifies over the namespace; the target logs the TLS
//! connections with the identity and suite, the agent each handshake, the kernel's
//! /proc/net/tls_stat the kernel TLS contexts of the initiator (the target's listener
//! keeps its records in software, so that every context counted is the host's). Then
//! the same against a listener with the target in kTLS too, a wrong PSK (the
//! connect fails, the target says the PSK differs, the agent reports EACCES), a plain
//! connect to the `secure = "required"` listener (refused), and SIGTERM ends the agent.
#![cfg(feature = "e2e")]

use std::time::Duration;

use lightpool_e2e::guest_sh::{FIO_VERIFY, NS_DEV};
use lightpool_e2e::tls::{start_target_shell, tls_target_config, TlsListener};
use lightpool_e2e::{guest_release_binaries, run_guest, GuestConfig};
use lightpool_nvmf::tls::{ConfiguredPsk, Derivation, IdentityVersion, PskHash};

const NQN: &str = "nqn.2024-01.io.lightpool:kernel-tls";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-00000000c7a1";

fn script() -> String {
    let good = ConfiguredPsk::new(Some(PskHash::Sha256), &[0x5a; 32]).expect("key");
    let wrong = ConfiguredPsk::new(Some(PskHash::Sha256), &[0xa5; 32]).expect("key");
    let (good_i, wrong_i) = (good.to_interchange(), wrong.to_interchange());
    // 4420 keeps its records in software (every kernel TLS context is then the host's),
    // 4421 hands them to the kernel.
    let config = tls_target_config(
        2,
        &[TlsListener::software(4420), TlsListener::kernel(4421)],
        NQN,
        &[(HOST, &good_i)],
        "64MiB",
    );
    let start = start_target_shell(&config, 2);
    format!(
        r#"
set -eu
NQN={NQN}
HOST={HOST}
say() {{ echo "KTLSHD-E2E: $*"; }}
fail() {{
    say "FAILED: $*"
    echo "--- target log"; tail -n 40 /tmp/target.log
    echo "--- agent log"; tail -n 40 /tmp/tlshd.log
    echo "--- dmesg"; dmesg | tail -n 30
    exit 1
}}
for m in tls gcm ghash-generic aesni-intel ghash-clmulni-intel nvme-keyring nvme-tcp; do
    modprobe $m 2>/dev/null || true
done
[ -r /proc/net/tls_stat ] || fail "no /proc/net/tls_stat: the tls module did not load"
grep -q ' \.nvme: ' /proc/keys || fail "no .nvme keyring"
stat() {{ awk -v k=$1 '$1 == k {{ print $2 }}' /proc/net/tls_stat; }}
stats() {{ say "tls_stat $1 TlsCurrTxSw=$(stat TlsCurrTxSw) TlsCurrRxSw=$(stat TlsCurrRxSw) TlsTxSw=$(stat TlsTxSw) TlsRxSw=$(stat TlsRxSw)"; }}
{start}/test/lightpool-tlshd --log info > /tmp/tlshd.log 2>&1 &
AGENT=$!
for i in $(seq 1 100); do grep -q 'waiting for handshake requests' /tmp/tlshd.log && break; sleep 0.1; done
grep -q 'waiting for handshake requests' /tmp/tlshd.log || fail "the agent did not start"
say "target and agent up"

KEY=$(/test/lightpool-tlshd insert-key --key "{good_i}" --hostnqn $HOST --subnqn $NQN) || fail "insert-key"
say "inserted key $KEY"
grep "$(printf %08x $KEY)" /proc/keys | sed 's/^/KEYS: /'

# The namespace's block device (the guest has no other NVMe device).
{NS_DEV}# The host ID goes with the host NQN (the kernel refuses the default host's ID with another NQN).
connect() {{ echo "transport=tcp,traddr=127.0.0.1,trsvcid=$1,nqn=$NQN,hostnqn=$HOST,hostid=${{HOST##*:}}$2" > /dev/nvme-fabrics; }}
{FIO_VERIFY}stats start
connect 4420 ",tls,tls_key=$KEY" || fail "the TLS connect to 4420"
DEV=$(ns_dev) || fail "no namespace"
say "connected: $DEV"
stats connected
verify tls-4420 4k || fail "fio over TLS (4420)"
dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
dd if=/tmp/data of=$DEV bs=1M oflag=direct 2>/dev/null
dd if=$DEV of=/tmp/back bs=1M count=4 iflag=direct 2>/dev/null
cmp /tmp/data /tmp/back || fail "dd read back differs"
say "dd verified"
nvme disconnect -n $NQN > /dev/null || fail "disconnect"
sleep 1
stats disconnected

# The target's end in the kernel too (listener 4421, ktls auto).
connect 4421 ",tls,tls_key=$KEY" || fail "the TLS connect to 4421"
DEV=$(ns_dev) || fail "no namespace (4421)"
verify tls-4421 128k || fail "fio over TLS (4421)"
nvme disconnect -n $NQN > /dev/null || fail "disconnect (4421)"
sleep 1
grep "NVMe/TCP TLS established" /tmp/target.log | head -n 1 | sed 's/^/TLOG: /'
say "target tls connections software=$(grep -c 'record_layer=.\?software' /tmp/target.log) kernel=$(grep -c 'record_layer=.\?kernel' /tmp/target.log)"
say "agent handshakes done=$(grep -c 'TLS handshake done' /tmp/tlshd.log)"
grep "TLS handshake done" /tmp/tlshd.log | head -n 1 | sed 's/^/ALOG: /'

# Another PSK (identity version 0, which the target knows for this host, with another
# key): the handshake fails, so does the connect.
WRONG=$(/test/lightpool-tlshd insert-key --key "{wrong_i}" --hostnqn $HOST --subnqn $NQN --identity-version 0) || fail "insert-key (wrong)"
if connect 4420 ",tls,tls_key=$WRONG" 2>/tmp/wrong.err; then fail "connected with the wrong PSK"; fi
say "wrong PSK refused: $(cat /tmp/wrong.err)"
sleep 1
grep "TLS handshake failed" /tmp/tlshd.log | sed 's/^/ALOG: /'
grep "connection refused" /tmp/target.log | sed 's/^/TLOG: /'

# Plain NVMe/TCP to a listener that requires TLS.
if connect 4420 "" 2>/tmp/plain.err; then fail "a plain connect to secure = required connected"; fi
say "plain connect refused: $(cat /tmp/plain.err)"
sleep 1
grep "plain NVMe/TCP" /tmp/target.log | sed 's/^/TLOG: /'

kill -TERM $AGENT
rc=0; wait $AGENT || rc=$?
say "agent exit $rc"
tail -n 1 /tmp/tlshd.log | sed 's/^/ALOG: /'
for p in $(pidof lightpool-target); do kill $p; done
say "all good"
"#,
    )
}

#[test]
fn kernel_initiator_over_tls_with_lightpool_tlshd() {
    let files = guest_release_binaries(&[
        ("lightpool-target", "/test/lightpool-target"),
        ("lightpool-tlshd", "/test/lightpool-tlshd"),
    ]);
    let cfg = GuestConfig {
        timeout: Duration::from_secs(300),
        mem_mb: 2048,
        extra_files: files,
        ..GuestConfig::new("kernel_tls", &script())
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(150);
    assert_eq!(out.exit_code, 0, "{tail}");
    let c = &out.console;
    let id = ConfiguredPsk::new(Some(PskHash::Sha256), &[0x5a; 32])
        .expect("key")
        .tls_psk(HOST, NQN, IdentityVersion::V1, Derivation::Standard)
        .expect("derives")
        .identity;
    for want in [
        "KTLSHD-E2E: target and agent up",
        "KTLSHD-E2E: dd verified",
        "KTLSHD-E2E: fio tls-4420 errors=0",
        "KTLSHD-E2E: fio tls-4421 errors=0",
        "KTLSHD-E2E: agent exit 0",
        "lightpool-tlshd: signalled, exiting",
        "KTLSHD-E2E: all good",
        // The target: the identity the kernel offered, the suite of its hash.
        "TLS_AES_128_GCM_SHA256",
        id.as_str(),
        // The wrong PSK: the target knows the identity, not the key; the agent says so.
        "the host's PSK differs",
        // Plain NVMe/TCP on the secure listener.
        "plain NVMe/TCP on a listener that requires TLS",
    ] {
        assert!(c.contains(want), "{want:?} missing from:\n{tail}");
    }
    let line = |p: &str| {
        c.lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no {p:?} line in:\n{tail}"))
    };
    assert!(
        line("TLOG: ").contains(&id) && line("TLOG: ").contains("TLS_AES_128_GCM_SHA256"),
        "{tail}"
    );
    assert!(line("ALOG: ").contains("TLS handshake done"), "{tail}");
    assert!(
        c.lines().any(|l| l.starts_with("ALOG: ")
            && l.contains("TLS handshake failed")
            && l.contains("EACCES")),
        "the agent did not report EACCES: {tail}"
    );
    // The kernel's TLS contexts while connected to the software listener: the host's
    // sockets alone (admin queue and I/O queues, at least 2), both directions.
    let stat = |name: &str, key: &str| -> u64 {
        line(&format!("KTLSHD-E2E: tls_stat {name} "))
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in tls_stat {name}: {tail}"))
    };
    let queues = stat("connected", "TlsCurrTxSw") - stat("start", "TlsCurrTxSw");
    assert!(queues >= 2, "{queues} kernel TLS contexts: {tail}");
    assert_eq!(
        stat("connected", "TlsCurrRxSw") - stat("start", "TlsCurrRxSw"),
        queues,
        "{tail}"
    );
    assert_eq!(
        stat("disconnected", "TlsCurrTxSw"),
        stat("start", "TlsCurrTxSw"),
        "{tail}"
    );
    // Every queue's handshake went through the agent; the target kept 4420's records
    // in software and put 4421's in the kernel.
    let count = |p: &str| -> u64 {
        line(p)
            .split_whitespace()
            .find_map(|f| f.strip_prefix("done=").or(f.strip_prefix("kernel=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("KTLSHD-E2E: agent handshakes"), 2 * queues, "{tail}");
    assert_eq!(
        count("KTLSHD-E2E: target tls connections"),
        queues,
        "{tail}"
    );
    assert!(
        line("KTLSHD-E2E: target tls connections").contains(&format!("software={queues} ")),
        "{tail}"
    );
}
