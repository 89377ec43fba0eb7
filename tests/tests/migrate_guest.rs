//! Live migration under the control plane with the stock Linux initiator (issue 14):
//! two nodes on the host (node-a: `lightpool standalone`; node-b: `lightpool agent`,
//! each with its own lightpool-target), a volume made with `lightpool volume create`,
//! and in the guest the CSI node plugin (`lightpool csi --node`) staging it as a
//! block device over the kernel's NVMe/TCP initiator, its path follower connecting
//! the destination's path before the switch and dropping the source's after. fio
//! writes with verify in the guest while the host moves the volume to node-b and
//! back with `lightpool volume migrate --wait`: no I/O error, every pass verified,
//! one path left (the volume's node's) after each move, no reset or timeout in the
//! kernel log.
//!
//! What differs from a real host: the guest reaches the host through QEMU's user
//! network (the host's 127.0.0.1 is 10.0.2.2 there), while the control plane lists
//! the targets at 127.0.0.1:PORT. Relays in the guest (`lp-relay`) make those
//! addresses answer there: 127.0.0.1:PORT in the guest goes on to 10.0.2.2:PORT, and
//! the store's Unix socket (which the plugin reads the Volumes from) goes on to a
//! TCP port this test relays to the host's socket. The plugin, the follower, the
//! kernel initiator and its multipath run unchanged.
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::cli::{json, lp, ok};
use lightpool_e2e::{
    e2e_dir, free_port, guest_release_binaries, release_binary, run_guest, GuestConfig, HostProcess,
};

/// `lightpool --data-dir DATA ARGS` as a node of the cluster, listening on `port`.
fn node(data: &Path, name: &str, args: &[&str], port: u16) -> HostProcess {
    let mut cmd = Command::new(release_binary("lightpool").expect("built"));
    cmd.arg("--data-dir")
        .arg(data)
        .args(args)
        .args(["--node", name, "--pool-size", "1GiB", "--port"])
        .arg(port.to_string())
        .arg("--target-binary")
        .arg(release_binary("lightpool-target").expect("built"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    HostProcess::spawn_listening(name, cmd, addr, Duration::from_secs(30)).expect("node starts")
}

fn wait_ready(data: &Path, pool: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !json(data, &["pool", "list"]).as_array().is_some_and(|ps| {
        ps.iter()
            .any(|p| p["metadata"]["name"] == pool && p["status"]["health"] == "Ready")
    }) {
        assert!(Instant::now() < deadline, "{pool}'s pool not Ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Relays TCP connections on the returned port to the store's Unix socket.
fn store_relay(sock: PathBuf) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for t in l.incoming().flatten() {
            let Ok(u) = UnixStream::connect(&sock) else {
                continue;
            };
            let (Ok(t2), Ok(u2)) = (t.try_clone(), u.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || pump(t, u));
            std::thread::spawn(move || pump(u2, t2));
        }
    });
    port
}

fn pump(mut from: impl Read, mut to: impl Write + Shut) {
    let _ = std::io::copy(&mut from, &mut to);
    to.shut();
}

trait Shut {
    fn shut(&self);
}

impl Shut for TcpStream {
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Shut for UnixStream {
    fn shut(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Answers the guest (one line per connection): `to NODE` migrates v1 there with
/// `lightpool volume migrate --wait` and answers when it ended; `done` ends. Returns
/// what `lightpool` said, each.
fn host_agent(listener: TcpListener, data: PathBuf) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut said = Vec::new();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            let words: Vec<&str> = b.split_whitespace().collect();
            match words[..] {
                ["to", to] => {
                    let (good, out) = lp(
                        &data,
                        &["volume", "migrate", "v1", "--to", to, "--wait", "300"],
                    );
                    said.push(format!("{}{out}", if good { "" } else { "FAILED: " }));
                    let _ = s.write_all(if good { b"ok\n" } else { b"failed\n" });
                }
                ["done"] => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => {
                    let _ = s.write_all(b"what?\n");
                }
            }
        }
        said
    })
}

#[test]
fn a_staged_volume_moves_and_back_under_fio_verify_following_its_paths() {
    let data = e2e_dir().expect("e2e dir").join("migrate-guest");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("data dir");
    let (pa, pb) = (free_port().expect("port"), free_port().expect("port"));
    let a = node(&data, "node-a", &["standalone"], pa);
    wait_ready(&data, "node-a");
    let b_dir = data.join("b");
    let b = node(
        &data,
        "node-b",
        &["agent", "--node-dir", b_dir.to_str().expect("utf-8")],
        pb,
    );
    wait_ready(&data, "node-b");
    ok(
        &data,
        &[
            "volume",
            "create",
            "v1",
            "--size",
            "128MiB",
            "--consumer",
            "guest-1",
        ],
    );
    let v = json(&data, &["volume", "show", "v1"]);
    assert_eq!(v["status"]["node"], "node-a", "{v}");
    let t = &v["status"]["target"];
    let nqn = t["nqn"].as_str().expect("nqn").to_string();
    let ctx = format!(
        "nqn={nqn} nsid=1 uuid={} node=node-a placement=PreferLocal 'paths=tcp ipv4 127.0.0.1 {}'",
        t["uuid"].as_str().expect("uuid"),
        t["paths"][0]["trsvcid"]
    );
    let store = store_relay(lightpool_standalone_socket(&data));
    let agent_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = agent_listener.local_addr().expect("addr").port();
    let agent = host_agent(agent_listener, data.clone());
    let files = guest_release_binaries(&[
        ("lightpool", "/test/lightpool"),
        ("csi-client", "/test/csi-client"),
        ("lp-relay", "/test/lp-relay"),
    ]);
    let script = format!(
        r#"set -eu
say() {{ echo "E2E: $*"; }}
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
modprobe nvme-tcp
mkdir -p /run/csi /run/lp
/test/lp-relay unix /run/lp/controlplane.sock 10.0.2.2:{store} 2>/tmp/relay.log &
/test/lp-relay tcp 127.0.0.1:{pa} 10.0.2.2:{pa} 2>>/tmp/relay.log &
/test/lp-relay tcp 127.0.0.1:{pb} 10.0.2.2:{pb} 2>>/tmp/relay.log &
/test/lightpool --data-dir /run/lp csi --node guest-1 --endpoint unix:///run/csi/csi.sock --state-dir /run/csi/state > /tmp/csi.log 2>&1 &
for i in $(seq 1 100); do [ -S /run/csi/csi.sock ] && [ -S /run/lp/controlplane.sock ] && break; sleep 0.1; done
C="/test/csi-client /run/csi/csi.sock"
ok() {{ out=$($C "$@") || {{ say "FAILED: $* -> $out"; cat /tmp/csi.log; exit 1; }}; say "$1: $out"; }}
paths() {{ for c in /sys/class/nvme/nvme*; do [ "$(cat $c/subsysnqn 2>/dev/null)" = "{nqn}" ] && echo "$(cat $c/address)"; done; true; }}
# Waits (60 s at most) until the volume's one path is the one on PORT.
one_path() {{ for i in $(seq 1 600); do
    p=$(paths); [ "$(echo "$p" | grep -c trsvcid)" = 1 ] && echo "$p" | grep -q "trsvcid=$1" && {{ say "one path: $p ($((i / 10)) s)"; return 0; }}
    sleep 0.1; done; say "PATHS: $(paths | tr '\n' ' ')"; cat /tmp/csi.log; exit 1; }}

ok stage v1 /stage/v1 block {ctx}
ok publish v1 /stage/v1 /pods/p/dev block
one_path {pa}
# fio passes until told to stop: each writes 32 MiB at random with a checksum in
# every block and reads it all back, reading back as it goes (verify_backlog), so
# writes and reads both run during a move (verify_fatal: a mismatch fails the pass).
(i=0; while [ ! -e /tmp/stop ]; do i=$((i + 1))
    if fio --name=p$i --filename=/pods/p/dev --ioengine=libaio --direct=1 --iodepth=8 \
        --rw=randwrite --bs=4k --size=32m --offset=$(( (i % 3) * 32 ))m --verify=crc32c \
        --verify_backlog=64 --verify_fatal=1 --output-format=terse --terse-version=3 > /tmp/fio.$i 2>&1; then
        echo "pass $i errors=$(cut -d';' -f5 /tmp/fio.$i)" >> /tmp/passes
    else echo "pass $i FAILED $(tail -3 /tmp/fio.$i | tr '\n' ' ')" >> /tmp/passes; fi
done) &
fio_loop=$!
sleep 2
running() {{ pidof fio > /dev/null || {{ say "FIO NOT RUNNING $1"; exit 1; }}; }}
for to in node-b:{pb} node-a:{pa}; do
    running "before the move to ${{to%:*}}"
    say "migrating to ${{to%:*}}"
    r=$(echo "to ${{to%:*}}" | nc 10.0.2.2 {agent_port})
    [ "$r" = ok ] || {{ say "MIGRATION FAILED: $r"; exit 1; }}
    running "after the move to ${{to%:*}}"
    one_path ${{to#*:}}
    sleep 2
done
say "fio ran through both moves"
touch /tmp/stop
wait $fio_loop
cat /tmp/passes | while read l; do say "$l"; done
say "passes $(grep -c 'errors=0$' /tmp/passes) of $(wc -l < /tmp/passes)"
grep -q FAILED /tmp/passes && {{ say "A FIO PASS FAILED"; exit 1; }}
say "kernel: $(dmesg | grep -ciE 'resetting|timeout|I/O error|blk_update_request') resets, timeouts or I/O errors"
dmesg | grep -iE 'nvme' | tail -20
ok unpublish v1 /pods/p/dev
ok unstage v1 /stage/v1
[ -z "$(paths)" ] || {{ say "unstage left a path"; exit 1; }}
echo done | nc 10.0.2.2 {agent_port}
say "all good"
"#
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(900),
        extra_files: files,
        ..GuestConfig::new("migrate-guest", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(100);
    assert_eq!(
        out.exit_code,
        0,
        "guest:\n{tail}\nnode-a:\n{}\nnode-b:\n{}",
        a.log(),
        b.log()
    );
    assert!(out.console.contains("E2E: all good"), "{tail}");
    let passes = out
        .console
        .lines()
        .find_map(|l| l.split("E2E: passes ").nth(1))
        .unwrap_or_else(|| panic!("no fio passes: {tail}"));
    let (good, all) = passes.split_once(" of ").expect("N of M");
    assert_eq!(good.trim(), all.trim(), "{tail}");
    assert!(good.trim().parse::<u32>().expect("count") >= 1, "{tail}");
    assert!(
        out.console.contains("E2E: fio ran through both moves"),
        "{tail}"
    );
    // The follower connected the destination's path before the source's went, each
    // way (the kernel's own log: "new ctrl" on the new port, then "Removing ctrl").
    let at = |what: &str, from: usize| {
        out.console[from..]
            .find(what)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("{what:?} not in the kernel log: {tail}"))
    };
    let first = at("Removing ctrl", 0);
    assert!(at(&format!("addr 127.0.0.1:{pb}"), 0) < first, "{tail}");
    let second = at("Removing ctrl", first + 1);
    let back = at(&format!("addr 127.0.0.1:{pa}"), first);
    assert!(back < second, "{tail}");
    assert!(
        out.console
            .contains("E2E: kernel: 0 resets, timeouts or I/O errors"),
        "{tail}"
    );
    let said = agent.join().expect("host agent");
    assert_eq!(said.len(), 2, "{said:?}");
    for s in &said {
        assert!(!s.starts_with("FAILED") && s.contains("Succeeded"), "{s}");
    }
    assert_eq!(
        json(&data, &["volume", "show", "v1"])["status"]["node"],
        "node-a"
    );
    for p in [b, a] {
        let status = p.stop(Duration::from_secs(10)).expect("stop");
        assert!(status.success(), "exit status {status}");
    }
}

/// The standalone instance's store socket in `data` (`lightpool_standalone::control_socket`).
fn lightpool_standalone_socket(data: &Path) -> PathBuf {
    data.join("controlplane.sock")
}
