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
//! - Bad input: a context without an NQN, a path that does not answer (nothing
//!   left connected), an xfs request for the ext4 volume, stats of a missing path.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use lightpool_e2e::{
    binary_with_libraries, e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess,
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

#[test]
fn node_plugin_stages_publishes_and_unstages_through_the_kernel_initiator() {
    let port = free_port().expect("port");
    let target = start_target(port);
    let mut files = Vec::new();
    for (bin, at) in [
        ("lightpool", "/test/lightpool"),
        ("csi-client", "/test/csi-client"),
    ] {
        let p = release_binary(bin).expect("built by tests/run.sh");
        files.extend(binary_with_libraries(&p, at).expect("binary and libraries"));
    }
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
}
