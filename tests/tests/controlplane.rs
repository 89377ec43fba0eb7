//! The control plane end to end: `lightpool standalone` (node-a: dataplane,
//! controller, agent) and `lightpool agent` (node-b: a second dataplane and
//! agent) on the host. Twenty volumes with mixed placement hints land where the
//! hints and the limit of 3 remote volumes per pool say; the Linux kernel
//! initiator in the guest connects to a volume the
//! scheduler placed on the remote node (MustRemote for a consumer on node-a)
//! and runs fio with verification on it; deleted, it is gone from that node.
//!
//! Both nodes listen on the host's loopback (the guest reaches it as 10.0.2.2),
//! on ports of their own, rather than in network namespaces: QEMU's user
//! network reaches only the host's own.
#![cfg(feature = "e2e")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::cli::{json, lp, ok};
use lightpool_e2e::{e2e_dir, free_port, release_binary, run_guest, GuestConfig, HostProcess};

fn node(data: &Path, args: &[&str], name: &str, port: u16) -> HostProcess {
    let mut cmd = Command::new(release_binary("lightpool").expect("built"));
    cmd.arg("--data-dir")
        .arg(data)
        .args(args)
        .args(["--node", name, "--pool-size", "2GiB", "--port"])
        .arg(port.to_string())
        .arg("--target-binary")
        .arg(release_binary("lightpool-target").expect("built"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    HostProcess::spawn_listening(
        &format!("controlplane-{name}"),
        cmd,
        addr,
        Duration::from_secs(30),
    )
    .expect("node starts")
}

#[test]
fn volumes_land_by_their_hints_and_a_remote_one_serves_the_kernel_host() {
    let dir: PathBuf = e2e_dir().expect("dir").join("controlplane");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let data = dir.join("a");
    let (pa, pb) = (free_port().expect("port"), free_port().expect("port"));
    let a = node(&data, &["standalone"], "node-a", pa);
    let node_b = dir.join("b");
    let b = node(
        &data,
        &["agent", "--node-dir", node_b.to_str().expect("utf-8")],
        "node-b",
        pb,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pools = json(&data, &["pool", "list"]);
        let ready = pools
            .as_array()
            .expect("list")
            .iter()
            .filter(|p| p["status"]["health"] == "Ready")
            .count();
        if ready == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "pools not Ready: {pools}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A volume for a consumer on node-a that must be remote: on node-b.
    let out = ok(
        &data,
        &[
            "volume",
            "create",
            "db",
            "--size",
            "256MiB",
            "--placement",
            "must-remote",
            "--consumer",
            "node-a",
        ],
    );

    // Twenty volumes, every hint from either side. Each pool takes at most 3
    // remote volumes (LiteIO's limit): MustRemote beyond it is refused with that
    // reason, PreferRemote falls back to the consumer's node.
    let hints = ["must-local", "must-remote", "prefer-local", "prefer-remote"];
    let mut remote = std::collections::HashMap::from([("node-a", 0), ("node-b", 1)]);
    for i in 0..20 {
        let hint = hints[i % 4];
        let (consumer, other) = if i % 8 < 4 {
            ("node-a", "node-b")
        } else {
            ("node-b", "node-a")
        };
        let name = format!("v{i:02}");
        let (placed, said) = lp(
            &data,
            &[
                "volume",
                "create",
                &name,
                "--size",
                "16MiB",
                "--placement",
                hint,
                "--consumer",
                consumer,
            ],
        );
        let room = remote[other] < 3;
        let expect = match hint {
            "must-local" | "prefer-local" => Some(consumer),
            "must-remote" if room => Some(other),
            "must-remote" => None,
            _ if room => Some(other),
            _ => Some(consumer),
        };
        match expect {
            Some(node) => {
                assert!(placed, "{name} ({hint} from {consumer}): {said}");
                let v = json(&data, &["volume", "show", &name]);
                assert_eq!(
                    v["status"]["node"], node,
                    "{name} ({hint} from {consumer}): {v}"
                );
                assert_eq!(v["status"]["phase"], "Ready", "{name}");
                if node == other {
                    *remote.get_mut(other).expect("node") += 1;
                }
            }
            None => {
                assert!(!placed, "{name} placed beyond the remote limit: {said}");
                assert!(
                    said.contains(&format!("{other} has 3 remote volumes (at most 3)")),
                    "{said}"
                );
                ok(&data, &["volume", "delete", &name]);
            }
        }
    }
    assert_eq!(remote["node-a"], 3);
    assert_eq!(remote["node-b"], 3);

    // The kernel initiator writes and verifies db on node-b.
    let nqn = "nqn.2024-01.io.lightpool:volume:db";
    assert!(
        out.contains(&format!(
            "nvme connect -t tcp -a 127.0.0.1 -s {pb} -n {nqn}"
        )),
        "{out}"
    );
    // A volume of node-b's pool (one of its target's own pools), served.
    let api_b = node_b.join("target.api.sock");
    let api_b = api_b.to_str().expect("utf-8");
    let db = json(
        &data,
        &["target", "volume", "show", "node/db", "--socket", api_b],
    );
    assert_eq!(db["size_bytes"], 256 << 20, "{db}");
    assert_eq!(
        db["namespaces"],
        serde_json::json!([format!("{nqn}/1")]),
        "{db}"
    );
    let script = format!(
        r#"set -eu
say() {{ echo "E2E: $*"; }}
nvme connect -t tcp -a 10.0.2.2 -s {pb} -n {nqn}
for i in $(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
say "size $(cat /sys/block/nvme0n1/size) sectors"
fio --name=db --filename=/dev/nvme0n1 --ioengine=libaio --direct=1 --iodepth=16 \
    --rw=randwrite --bs=4k --size=128m --verify=crc32c --verify_fatal=1 \
    --output-format=terse --terse-version=3 > /tmp/fio.out 2>/tmp/fio.err || {{ say "fio failed: $(cat /tmp/fio.err)"; exit 1; }}
say "fio errors=$(cut -d';' -f5 /tmp/fio.out)"
[ "$(cut -d';' -f5 /tmp/fio.out)" = 0 ]
nvme disconnect -n {nqn}
say "all good"
"#
    );
    let run = run_guest(&GuestConfig {
        timeout: Duration::from_secs(900),
        ..GuestConfig::new("controlplane", &script)
    })
    .expect("guest run");
    let tail = run.tail(40);
    assert_eq!(run.exit_code, 0, "guest:\n{tail}\nnode-b:\n{}", b.log());
    for w in [
        "E2E: size 524288 sectors",
        "E2E: fio errors=0",
        "E2E: all good",
    ] {
        assert!(run.console.contains(w), "{w:?} missing:\n{tail}");
    }

    // Deleted: gone from node-b's pool and dataplane.
    ok(&data, &["volume", "delete", "db"]);
    let left = ok(&data, &["target", "volume", "list", "--socket", api_b]);
    assert!(!left.contains("node/db "), "{left}");
    let subs = ok(
        &data,
        &[
            "subsystem",
            "list",
            "--socket",
            node_b.join("target.api.sock").to_str().expect("utf-8"),
        ],
    );
    assert!(!subs.contains(nqn), "{subs}");
    let sb = b.stop(Duration::from_secs(15)).expect("stop node-b");
    let sa = a.stop(Duration::from_secs(15)).expect("stop node-a");
    assert!(sa.success() && sb.success(), "{sa} {sb}");
}
