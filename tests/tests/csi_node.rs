//! The CSI node plugin (`lightpool csi --node`) in the guest, against the Linux 6.12
//! kernel's NVMe/TCP initiator, mkfs and mount, with lightpool-target serving two
//! volumes on the host; a CSI client (csi-client) drives it over its Unix socket.
//!
//! - A file-system volume: staged as ext4 (made because the device was empty),
//!   staged again (idempotent), published into a "pod" directory, files written,
//!   stats read, unpublished and unstaged (the controller gone from the guest);
//!   staged again: the files are there (no second mkfs), a second staging path is
//!   refused, published read-only (a write fails).
//! - A block volume: staged and published as a device file, fio verify through it.
//! - Online expansion through the whole control plane: `lightpool standalone` on
//!   the host (controller, agent, dataplane) holds two volumes made with
//!   `lightpool volume create`; the guest stages one as ext4, publishes it and
//!   writes files, asks the host to grow both (`lightpool volume resize`: the
//!   controller's ledger, the agent's GrowVolume, the namespace's Namespace
//!   Attribute Changed event), then NodeExpandVolume: `df` shows the new size and
//!   the files still verify; the other, in block mode, shows the new size.
//! - Bad input: a context without an NQN, a path that does not answer (nothing
//!   left connected), an xfs request for the ext4 volume, stats of a missing path,
//!   a MustLocal volume held by another node (refused, nothing connected).
#![cfg(feature = "e2e")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::cli::{json, ok};
use lightpool_e2e::{
    e2e_dir, free_port, guest_release_binaries, release_binary, run_guest, GuestConfig, HostProcess,
};

const FS: &str = "nqn.2024-01.io.lightpool:volume:csi-fs";
const BLK: &str = "nqn.2024-01.io.lightpool:volume:csi-blk";

fn start_target(port: u16) -> HostProcess {
    let cfg = format!(
        r#"
[[listener]]
address = "127.0.0.1:{port}"

[[subsystem]]
nqn = "{FS}"
[[subsystem.namespace]]
nsid = 1
ram = "256MiB"

[[subsystem]]
nqn = "{BLK}"
[[subsystem.namespace]]
nsid = 1
ram = "128MiB"
"#
    );
    let dir = e2e_dir().expect("e2e dir");
    let path = dir.join("csi-node.toml");
    std::fs::write(&path, cfg).expect("config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--control-socket")
        .arg(dir.join("csi-node.sock"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    HostProcess::spawn_listening("csi-node-target", cmd, addr, Duration::from_secs(20))
        .expect("target starts")
}

/// `lightpool standalone` (node host-a: controller, agent, dataplane) on `port`, its
/// pool Ready.
fn start_standalone(data: &Path, port: u16) -> HostProcess {
    let mut cmd = Command::new(release_binary("lightpool").expect("built"));
    cmd.arg("--data-dir")
        .arg(data)
        .args([
            "standalone",
            "--node",
            "host-a",
            "--pool-size",
            "1GiB",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--target-binary")
        .arg(release_binary("lightpool-target").expect("built"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let p = HostProcess::spawn_listening("csi-node-standalone", cmd, addr, Duration::from_secs(30))
        .expect("standalone starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while json(data, &["pool", "list"])
        .as_array()
        .is_none_or(|ps| !ps.iter().any(|p| p["status"]["health"] == "Ready"))
    {
        assert!(Instant::now() < deadline, "host-a's pool not Ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    p
}

/// A volume made through the control plane, and the stage context CreateVolume
/// would give for it (`KEY=VALUE` words for csi-client).
fn control_plane_volume(data: &Path, name: &str, size: &str) -> String {
    ok(
        data,
        &[
            "volume",
            "create",
            name,
            "--size",
            size,
            "--consumer",
            "guest-1",
        ],
    );
    let v = json(data, &["volume", "show", name]);
    let t = &v["status"]["target"];
    let p = &t["paths"][0];
    format!(
        "nqn={} nsid=1 uuid={} node=host-a placement=PreferLocal 'paths=tcp ipv4 10.0.2.2 {}'",
        t["nqn"].as_str().expect("nqn"),
        t["uuid"].as_str().expect("uuid"),
        p["trsvcid"]
    )
}

/// Answers the guest (one line per connection, answered "ok"): `grow` grows both
/// control-plane volumes with `lightpool volume resize`; `done` ends. Returns
/// what `lightpool` said.
fn host_agent(listener: TcpListener, data: PathBuf) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut said = Vec::new();
        while let Ok((mut s, _)) = listener.accept() {
            let mut b = String::new();
            if s.read_to_string(&mut b).is_err() {
                continue;
            }
            match b.trim() {
                "grow" => {
                    for (v, size) in [("grow", "384MiB"), ("growblk", "192MiB")] {
                        let (good, out) =
                            lightpool_e2e::cli::lp(&data, &["volume", "resize", v, "--size", size]);
                        said.push(format!("{}{out}", if good { "" } else { "FAILED: " }));
                    }
                }
                "done" => {
                    let _ = s.write_all(b"ok\n");
                    break;
                }
                _ => {}
            }
            let _ = s.write_all(b"ok\n");
        }
        said
    })
}

#[test]
fn node_plugin_stages_publishes_and_unstages_through_the_kernel_initiator() {
    let port = free_port().expect("port");
    let target = start_target(port);
    let data = e2e_dir().expect("e2e dir").join("csi-node-standalone");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("data dir");
    let standalone = start_standalone(&data, free_port().expect("port"));
    let grow_ctx = control_plane_volume(&data, "grow", "256MiB");
    let growblk_ctx = control_plane_volume(&data, "growblk", "128MiB");
    let agent_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let agent_port = agent_listener.local_addr().expect("addr").port();
    let agent = host_agent(agent_listener, data.clone());
    let files = guest_release_binaries(&[
        ("lightpool", "/test/lightpool"),
        ("csi-client", "/test/csi-client"),
    ]);
    let script = format!(
        r#"set -eu
say() {{ echo "E2E: $*"; }}
modprobe nvme-tcp
mkdir -p /run/csi
/test/lightpool csi --node guest-1 --endpoint unix:///run/csi/csi.sock --state-dir /run/csi/state > /tmp/csi.log 2>&1 &
for i in $(seq 1 100); do [ -S /run/csi/csi.sock ] && break; sleep 0.1; done
C="/test/csi-client /run/csi/csi.sock"
ok() {{ out=$($C "$@") || {{ say "FAILED: $* -> $out"; cat /tmp/csi.log; exit 1; }}; say "$1: $out"; }}
refused() {{ code=$1; shift; if out=$($C "$@"); then say "NOT REFUSED: $* -> $out"; exit 1; fi
  case "$out" in "ERR $code "*) say "refused $1: $out" ;; *) say "WRONG REFUSAL: $* -> $out"; exit 1 ;; esac; }}
controllers() {{ ls /sys/class/nvme 2>/dev/null | wc -l; }}
FSCTX="nqn={FS} nsid=1"
P="paths=tcp ipv4 10.0.2.2 {port}"

ok info
say "file system volume"
ok stage fs /stage/fs ext4 $FSCTX "$P"
[ "$(blkid -p -o value -s TYPE $(sed -n 2p /run/csi/state/fs.stage))" = ext4 ]
ok stage fs /stage/fs ext4 $FSCTX "$P"
[ $(controllers) = 1 ] || {{ say "staging twice connected twice"; exit 1; }}
ok publish fs /stage/fs /pods/p1/data ext4
echo "written through the pod" > /pods/p1/data/hello
dd if=/dev/urandom of=/pods/p1/data/blob bs=1M count=8 2>/dev/null
sha=$(sha256sum /pods/p1/data/blob | cut -d' ' -f1)
sync
ok stats fs /pods/p1/data
ok unpublish fs /pods/p1/data
[ ! -e /pods/p1/data ] || {{ say "target path left behind"; exit 1; }}
ok unstage fs /stage/fs
[ $(controllers) = 0 ] || {{ say "unstage left a controller"; exit 1; }}
grep -q " /stage/fs " /proc/self/mountinfo && {{ say "unstage left a mount"; exit 1; }}
say "staged again: the same files"
ok stage fs /stage/fs ext4 $FSCTX "$P"
refused FailedPrecondition stage fs /stage/other ext4 $FSCTX "$P"
ok publish fs /stage/fs /pods/p2/data ext4 ro
[ "$(cat /pods/p2/data/hello)" = "written through the pod" ]
[ "$(sha256sum /pods/p2/data/blob | cut -d' ' -f1)" = "$sha" ]
if touch /pods/p2/data/nope 2>/dev/null; then say "a read-only publish took a write"; exit 1; fi
ok unpublish fs /pods/p2/data
ok unstage fs /stage/fs
ok unstage fs /stage/fs

say "block volume"
ok stage blk /stage/blk block nqn={BLK} nsid=1 "$P"
ok publish blk /stage/blk /pods/p3/dev block
fio --name=blk --filename=/pods/p3/dev --ioengine=libaio --direct=1 --iodepth=8 --rw=randwrite \
    --bs=4k --size=32m --verify=crc32c --verify_fatal=1 --randrepeat=1 --output-format=terse --terse-version=3 > /tmp/fio.out
say "fio errors=$(cut -d';' -f5 /tmp/fio.out)"
ok stats blk /pods/p3/dev
ok unpublish blk /pods/p3/dev
ok unstage blk /stage/blk

say "bad input"
refused InvalidArgument stage bad /stage/bad ext4 nsid=1 "$P"
refused Unavailable stage fs /stage/fs ext4 $FSCTX "paths=tcp ipv4 10.0.2.2 1"
[ $(controllers) = 0 ] || {{ say "a failed stage left a controller"; exit 1; }}
ok stage fs /stage/fs ext4 $FSCTX "$P"
ok unstage fs /stage/fs
refused FailedPrecondition stage fs /stage/fs xfs $FSCTX "$P"
[ $(controllers) = 0 ] || {{ say "a refused stage left a controller"; exit 1; }}
refused NotFound stats fs /no/such/path
refused FailedPrecondition stage fs /stage/fs ext4 $FSCTX "$P" node=node-x placement=MustLocal
[ $(controllers) = 0 ] || {{ say "a refused stage left a controller"; exit 1; }}
say "a volume attached to another node, or to none, is not staged here"
refused FailedPrecondition stage fs /stage/fs ext4 $FSCTX "$P" pub:publishedNode=node-x
refused FailedPrecondition stage fs /stage/fs ext4 $FSCTX "$P" pub:-
[ $(controllers) = 0 ] || {{ say "a refused stage left a controller"; exit 1; }}

say "online expansion through the control plane"
ok stage grow /stage/grow ext4 {grow_ctx}
ok publish grow /stage/grow /pods/p4/data ext4
dd if=/dev/urandom of=/pods/p4/data/blob bs=1M count=16 2>/dev/null
echo "before the grow" > /pods/p4/data/hello
gsha=$(sha256sum /pods/p4/data/blob | cut -d' ' -f1)
sync
before=$(df -k /pods/p4/data | awk 'NR==2 {{print $2}}')
ok stage growblk /stage/growblk block {growblk_ctx}
ok publish growblk /stage/growblk /pods/p5/dev block
dd if=/dev/urandom of=/tmp/blkhead bs=4096 count=64 2>/dev/null
dd if=/tmp/blkhead of=/pods/p5/dev bs=4096 count=64 oflag=direct 2>/dev/null
[ "$(blockdev --getsize64 /pods/p5/dev)" = 134217728 ]
echo grow | nc 10.0.2.2 {agent_port}
ok expand grow /pods/p4/data ext4 402653184
after=$(df -k /pods/p4/data | awk 'NR==2 {{print $2}}')
say "df grew: $before KiB to $after KiB"
[ "$after" -gt $((before + 100000)) ] || {{ say "the file system did not grow"; exit 1; }}
[ "$(cat /pods/p4/data/hello)" = "before the grow" ]
[ "$(sha256sum /pods/p4/data/blob | cut -d' ' -f1)" = "$gsha" ]
dd if=/dev/urandom of=/pods/p4/data/after bs=1M count=8 2>/dev/null
sync
ok stats grow /pods/p4/data
ok expand growblk /pods/p5/dev block 201326592
say "block device size $(blockdev --getsize64 /pods/p5/dev)"
[ "$(blockdev --getsize64 /pods/p5/dev)" = 201326592 ]
dd if=/pods/p5/dev of=/tmp/blkback bs=4096 count=64 iflag=direct 2>/dev/null
cmp /tmp/blkhead /tmp/blkback
dd if=/tmp/blkhead of=/pods/p5/dev bs=4096 count=64 seek=49000 oflag=direct 2>/dev/null
ok unpublish grow /pods/p4/data
ok unstage grow /stage/grow
ok unpublish growblk /pods/p5/dev
ok unstage growblk /stage/growblk
[ $(controllers) = 0 ] || {{ say "unstage left a controller"; exit 1; }}
echo done | nc 10.0.2.2 {agent_port}
say "all good"
"#
    );
    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        extra_files: files,
        ..GuestConfig::new("csi-node", &script)
    };
    let out = run_guest(&cfg).expect("guest run");
    let tail = out.tail(80);
    assert_eq!(
        out.exit_code,
        0,
        "guest:\n{tail}\ntarget log:\n{}",
        target.log()
    );
    assert!(out.console.contains("E2E: all good"), "{tail}");
    assert!(out.console.contains("E2E: fio errors=0"), "{tail}");
    assert!(
        out.console.contains("E2E: block device size 201326592"),
        "{tail}"
    );
    let said = agent.join().expect("host agent");
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].contains("serves:    384 MiB") && said[1].contains("serves:    192 MiB"),
        "lightpool volume resize: {said:?}"
    );
    let v = json(&data, &["volume", "show", "grow"]);
    assert_eq!(v["status"]["capacityBytes"], 384u64 << 20, "{v}");
    assert!(v["events"].to_string().contains("Resized"), "{v}");
    let stats = out
        .console
        .lines()
        .find(|l| l.contains("E2E: stats: OK unit=1 total="))
        .unwrap_or_else(|| panic!("file system stats: {tail}"));
    assert!(!stats.contains("total=0 "), "{stats}");
    for bad in ["I/O Error", "resetting controller", "EXT4-fs error"] {
        assert!(
            !out.console.contains(bad),
            "guest kernel logged {bad:?}:\n{tail}"
        );
    }
    let status = target.stop(Duration::from_secs(5)).expect("stop");
    assert!(status.success(), "target exit status {status}");
    let status = standalone.stop(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "standalone exit status {status}");
}
