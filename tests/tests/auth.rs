//! In-band authentication (DH-HMAC-CHAP) with the guest's stock Linux 6.12 initiator
//! and nvme-cli, in one guest boot:
//! - nvme-cli's gen-dhchap-key writes the same DHHC-1 string as ours for the same key;
//! - a keyed host without a key, and with a wrong key, is refused (nvme connect
//!   fails; the target logs why, naming host and subsystem), while another host's
//!   fio verify goes on with zero errors;
//! - unidirectional (SHA-256, ffdhe2048) and bidirectional (--dhchap-ctrl-secret,
//!   SHA-384, ffdhe3072) connects succeed and fio --verify runs clean;
//! - the host's key is rotated through `lightpool target host-key set`, the guest
//!   writes the new one to sysfs (dhchap_secret) and the kernel re-authenticates every
//!   queue under fio verify load: zero errors, no reset, and the target logs each
//!   queue's re-authentication.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};
use lightpool_nvmf::auth::{HashFn, Secret};

const NQN1: &str = "nqn.2024-01.io.lightpool:e2e-auth1";
const NQN2: &str = "nqn.2024-01.io.lightpool:e2e-auth2";
const H1: &str = "nqn.2014-08.org.nvmexpress:uuid:6c700000-0000-4000-8000-0000000000a1";
const H2: &str = "nqn.2014-08.org.nvmexpress:uuid:6c700000-0000-4000-8000-0000000000a2";
const H3: &str = "nqn.2014-08.org.nvmexpress:uuid:6c700000-0000-4000-8000-0000000000a3";

fn key(h: Option<HashFn>, len: usize) -> String {
    Secret::generate(h, len).expect("random key").to_dhhc1()
}

/// Runs `lightpool target host-key set` for the guest: one line `rotate KEY`, answered
/// `ok ...` or `FAILED ...`; `done` ends.
fn key_agent(listener: TcpListener, api: PathBuf) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut log = Vec::new();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            let words: Vec<&str> = b.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["rotate", key] => {
                    let out = Command::new(release_binary("lightpool").expect("built"))
                        .arg("--socket")
                        .arg(&api)
                        .args(["target", "host-key", "set", "--nqn", NQN1, "--host", H1])
                        .args(["--key", key, "--dhgroup", "ffdhe2048"])
                        .output()
                        .expect("lightpool target host-key set");
                    let line = format!(
                        "{}{}{}",
                        if out.status.success() {
                            "ok "
                        } else {
                            "FAILED "
                        },
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    log.push(line.clone());
                    line
                }
                ["done"] => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => format!("FAILED unknown request {b:?}"),
            };
            let _ = s.write_all(format!("{answer}\n").as_bytes());
        }
        log
    })
}

#[test]
fn dhchap_with_the_kernel_initiator_refusals_bidirectional_and_reauth_under_fio() {
    let dir = e2e_dir().expect("e2e dir");
    let port = free_port().expect("port");
    let (k1, k1b, k2, c2, k3, c3) = (
        key(Some(HashFn::Sha256), 32),
        key(Some(HashFn::Sha256), 32),
        key(None, 48),
        key(Some(HashFn::Sha384), 48),
        key(None, 32),
        key(Some(HashFn::Sha512), 64),
    );
    let wrong = key(Some(HashFn::Sha256), 32);
    // The DHHC-1 string of bytes 00..1f, as ours writes it; the guest's nvme-cli must
    // write the same.
    let fixed: Vec<u8> = (0u8..32).collect();
    let fixed_dhhc1 = Secret::new(None, &fixed).expect("32 bytes").to_dhhc1();
    let fixed_hex: String = fixed.iter().map(|b| format!("{b:02x}")).collect();
    let cfg = format!(
        r#"
[target]
reactors = 1

[[listener]]
address = "127.0.0.1:{port}"

[[subsystem]]
nqn = "{NQN1}"
allow_any_host = false
hosts = ["{H1}", "{H3}"]
[[subsystem.namespace]]
nsid = 1
ram = "64MiB"
block_size = 512
[[subsystem.host_key]]
host = "{H1}"
key = "{k1}"
dhgroup = "ffdhe2048"
[[subsystem.host_key]]
host = "{H3}"
key = "{k3}"
ctrl_key = "{c3}"

[[subsystem]]
nqn = "{NQN2}"
allow_any_host = false
hosts = ["{H2}"]
[[subsystem.namespace]]
nsid = 1
ram = "64MiB"
block_size = 512
[[subsystem.host_key]]
host = "{H2}"
key = "{k2}"
ctrl_key = "{c2}"
hash = "sha384"
dhgroup = "ffdhe3072"
"#
    );
    let path = dir.join("e2e-auth.toml");
    std::fs::write(&path, cfg).expect("write config");
    let control = dir.join("e2e-auth.sock");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--control-socket")
        .arg(&control);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let target = HostProcess::spawn_listening("e2e-auth", cmd, addr, Duration::from_secs(20))
        .expect("target starts");
    let api = dir.join("e2e-auth.api.sock");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = listener.local_addr().expect("addr").port();
    let agent = key_agent(listener, api);

    let script = format!(
        r#"set -eu
say() {{ echo "E2E: $*"; }}
ask() {{ r=$(echo "$*" | nc 10.0.2.2 {agent_port}); say "agent: $r"; case "$r" in FAILED*) exit 1;; esac; }}
conn() {{ nvme connect -t tcp -a 10.0.2.2 -s {port} --nr-io-queues=2 "$@"; }}
ctrl_of() {{
    for c in /sys/class/nvme/nvme*; do
        grep -q "$1" $c/subsysnqn 2>/dev/null && {{ echo ${{c##*/}}; return 0; }}
    done
    return 1
}}
SEEN=""
new_head() {{
    for i in $(seq 1 100); do
        for d in $(ls /sys/block | grep -E '^nvme[0-9]+n1$'); do
            echo " $SEEN " | grep -q " $d " || {{ echo $d; return 0; }}
        done
        sleep 0.1
    done
    return 1
}}
FIO="fio --ioengine=libaio --direct=1 --iodepth=8 --bs=4k --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3"
modprobe nvme-tcp

say "gen $(nvme gen-dhchap-key --secret={fixed_hex} --hmac=0 --key-length=32 --nqn={H1} 2>&1)"

if conn -n {NQN1} --hostnqn={H1} --hostid=6c700000-0000-4000-8000-0000000000a1 > /tmp/c0 2>&1; then say "no-key connect succeeded"; exit 1; fi
say "no key: refused: $(tr '\n' ' ' < /tmp/c0)"
if conn -n {NQN1} --hostnqn={H1} --hostid=6c700000-0000-4000-8000-0000000000a1 --dhchap-secret={wrong} > /tmp/c1 2>&1; then say "wrong-key connect succeeded"; exit 1; fi
say "wrong key: refused: $(tr '\n' ' ' < /tmp/c1)"

# Bidirectional: H2 proves its key, the controller proves its own.
conn -n {NQN2} --hostnqn={H2} --hostid=6c700000-0000-4000-8000-0000000000a2 --dhchap-secret={k2} --dhchap-ctrl-secret={c2}
C2=$(ctrl_of {NQN2}); D2=$(new_head); SEEN="$SEEN $D2"
say "bidirectional connected $C2 $D2"
$FIO --name=bidi --filename=/dev/$D2 --rw=randwrite --size=24m --do_verify=1 > /tmp/f2.out 2>&1 &
P2=$!
# Meanwhile another host with a wrong key is refused; H2 goes on.
if conn -n {NQN1} --hostnqn={H3} --hostid=6c700000-0000-4000-8000-0000000000a3 --dhchap-secret={wrong} > /tmp/c3 2>&1; then say "H3 wrong-key connect succeeded"; exit 1; fi
say "concurrent wrong key: refused"
wait $P2 || {{ cat /tmp/f2.out; exit 1; }}
say "bidirectional fio errors=$(cut -d';' -f5 /tmp/f2.out)"
[ "$(cut -d';' -f5 /tmp/f2.out)" = 0 ]
# The right host key, a wrong controller secret: the host refuses the controller.
if conn -n {NQN1} --hostnqn={H3} --hostid=6c700000-0000-4000-8000-0000000000a3 --dhchap-secret={k3} --dhchap-ctrl-secret={c2} > /tmp/c4 2>&1; then say "bad ctrl key accepted"; exit 1; fi
say "wrong controller key: refused by the host"
say "quiet from here"

# Unidirectional, then re-authentication with a rotated key under fio verify.
conn -n {NQN1} --hostnqn={H1} --hostid=6c700000-0000-4000-8000-0000000000a1 --dhchap-secret={k1}
C1=$(ctrl_of {NQN1}); D1=$(new_head)
say "unidirectional connected $C1 $D1"
$FIO --name=reauth --filename=/dev/$D1 --rw=randwrite --size=32m --do_verify=1 > /tmp/f1.out 2>&1 &
P1=$!
sleep 2
ask rotate {k1b}
echo "{k1b}" > /sys/class/nvme/$C1/dhchap_secret
sleep 3
say "rotated key written: $(cat /sys/class/nvme/$C1/dhchap_secret | cut -c1-10)"
wait $P1 || {{ cat /tmp/f1.out; exit 1; }}
say "reauth fio errors=$(cut -d';' -f5 /tmp/f1.out)"
[ "$(cut -d';' -f5 /tmp/f1.out)" = 0 ]
$FIO --name=reauth --filename=/dev/$D1 --rw=randwrite --size=32m --verify_only > /tmp/v1.out
say "verify errors=$(cut -d';' -f5 /tmp/v1.out)"
[ "$(cut -d';' -f5 /tmp/v1.out)" = 0 ]
nvme disconnect-all > /dev/null
echo done | nc 10.0.2.2 {agent_port} > /dev/null
dmesg | grep -iE 'auth|reset|timeout|I/O error' || true
say "all good"
"#
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        ..GuestConfig::new("e2e-auth", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(80);
    let log = target.log();
    assert_eq!(out.exit_code, 0, "guest:\n{tail}\ntarget:\n{log}");
    for want in [
        format!("E2E: gen {fixed_dhhc1}"),
        "E2E: no key: refused".into(),
        "E2E: wrong key: refused".into(),
        "E2E: concurrent wrong key: refused".into(),
        "E2E: bidirectional fio errors=0".into(),
        "E2E: wrong controller key: refused by the host".into(),
        "E2E: reauth fio errors=0".into(),
        "E2E: verify errors=0".into(),
        "E2E: all good".into(),
    ] {
        assert!(out.console.contains(&want), "{want:?} missing:\n{tail}");
    }
    let quiet = out
        .console
        .split("E2E: quiet from here")
        .nth(1)
        .expect("marker");
    lightpool_e2e::paths::assert_kernel_quiet(quiet, &tail);
    // The target said why it refused, naming host and subsystem, and never a secret.
    let refusal = log
        .lines()
        .find(|l| l.contains("authentication failed") && l.contains(H1))
        .unwrap_or_else(|| panic!("no refusal logged for H1:\n{log}"));
    assert!(refusal.contains(NQN1), "{refusal}");
    assert!(
        log.lines()
            .any(|l| l.contains("authentication failed") && l.contains(H3)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("closed before the host authenticated") && l.contains(H1)),
        "{log}"
    );
    // The host refused the controller's proof: its AUTH_Failure2 reached the target.
    assert!(
        log.lines()
            .any(|l| l.contains("AUTH_Failure2") && l.contains(H3)),
        "{log}"
    );
    let reauths = log
        .lines()
        .filter(|l| l.contains("host authenticated") && l.contains("reauth=true") && l.contains(H1))
        .count();
    assert!(
        reauths >= 3,
        "admin and both I/O queues re-authenticate: {reauths}\n{log}"
    );
    for k in [&k1, &k1b, &k2, &c2, &k3, &c3, &wrong] {
        let b64 = &k[10..30];
        assert!(!log.contains(b64), "a secret in the target log");
    }
    let rot = agent.join().expect("agent");
    assert_eq!(rot.len(), 1, "{rot:?}");
    assert!(rot[0].starts_with("ok "), "{rot:?}");
}
