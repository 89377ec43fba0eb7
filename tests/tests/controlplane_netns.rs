//! Three storage nodes on one machine, each a dataplane and an agent: node-a is
//! `lightpool standalone` (with the controller and the store) in the host's
//! network namespace, node-b and node-c are `lightpool agent` each in a network
//! namespace of its own (reached over a veth pair; the store over the
//! instance's Unix socket). Twenty volumes with mixed hints land where the hints
//! say, each served where its status says; node-c's agent killed, its pool is
//! Unknown within 15 s of the kill and gets nothing, and Ready when it returns; the whole
//! standalone instance killed right after a create and started again finishes
//! that create without leaking or duplicating anything. Needs root (ip netns).
#![cfg(feature = "e2e")]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::cli::{json, lp, ok};
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

/// A network namespace with a veth pair to the host: host 10.231.N.1, inside
/// 10.231.N.2. Removed when dropped.
struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn new(n: u8) -> Netns {
        let tag = std::process::id() % 10_000;
        let name = format!("lp-cp-{tag}-{n}");
        let host_if = format!("lp{tag}h{n}");
        let inner = format!("lp{tag}n{n}");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("10.231.{n}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inner_addr = format!("10.231.{n}.2/24");
        for args in [
            ["addr", "add", inner_addr.as_str(), "dev", inner.as_str()].as_slice(),
            ["link", "set", inner.as_str(), "up"].as_slice(),
            ["link", "set", "lo", "up"].as_slice(),
        ] {
            let mut a = vec!["netns", "exec", name.as_str(), "ip"];
            a.extend_from_slice(args);
            ip(&a);
        }
        Netns { name, host_if }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn health(data: &Path, pool: &str) -> String {
    json(data, &["pool", "list"])
        .as_array()
        .expect("list")
        .iter()
        .find(|p| p["metadata"]["name"] == pool)
        .map(|p| p["status"]["health"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn wait_for(what: &str, secs: u64, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

fn standalone(data: &Path, port: u16) -> HostProcess {
    let mut cmd = Command::new(release_binary("lightpool").expect("built"));
    cmd.arg("--data-dir")
        .arg(data)
        .args([
            "standalone",
            "--node",
            "node-a",
            "--pool-size",
            "2GiB",
            "--port",
        ])
        .arg(port.to_string())
        .arg("--target-binary")
        .arg(release_binary("lightpool-target").expect("built"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    HostProcess::spawn_listening("netns-node-a", cmd, addr, Duration::from_secs(30))
        .expect("node-a starts")
}

fn agent(data: &Path, ns: &Netns, n: u8, node: &str, dir: &Path) -> HostProcess {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(release_binary("lightpool").expect("built"))
        .arg("--data-dir")
        .arg(data)
        .args([
            "agent",
            "--node",
            node,
            "--pool-size",
            "2GiB",
            "--port",
            "4420",
        ])
        .args(["--address", &format!("10.231.{n}.2")])
        .arg("--node-dir")
        .arg(dir)
        .arg("--target-binary")
        .arg(release_binary("lightpool-target").expect("built"));
    let addr: SocketAddr = format!("10.231.{n}.2:4420").parse().expect("addr");
    HostProcess::spawn_listening(&format!("netns-{node}"), cmd, addr, Duration::from_secs(30))
        .expect("agent starts")
}

#[test]
fn three_nodes_in_network_namespaces() {
    let dir = e2e_dir().expect("dir").join("controlplane-netns");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let data = dir.join("a");
    let (nb, nc) = (Netns::new(1), Netns::new(2));
    let pa = free_port().expect("port");
    let a = standalone(&data, pa);
    let _b = agent(&data, &nb, 1, "node-b", &dir.join("b"));
    let c = agent(&data, &nc, 2, "node-c", &dir.join("c"));
    wait_for("three pools Ready", 30, || {
        ["node-a", "node-b", "node-c"]
            .iter()
            .all(|p| health(&data, p) == "Ready")
    });

    // Twenty volumes: local hints on every node, remote ones from every node.
    let nodes = ["node-a", "node-b", "node-c"];
    let hints = [
        "must-local",
        "prefer-local",
        "must-remote",
        "must-local",
        "prefer-local",
        "prefer-remote",
        "prefer-local",
    ];
    for i in 0..20 {
        let (hint, consumer) = (hints[i % hints.len()], nodes[i % 3]);
        let name = format!("v{i:02}");
        ok(
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
        let v = json(&data, &["volume", "show", &name]);
        let on = v["status"]["node"].as_str().expect("placed").to_string();
        if hint.ends_with("local") {
            assert_eq!(on, consumer, "{name} {hint} from {consumer}");
        } else {
            assert_ne!(on, consumer, "{name} {hint} from {consumer}");
        }
        // Served where the status says: the path's address accepts connections.
        let path = &v["status"]["target"]["paths"][0];
        let addr: SocketAddr = format!(
            "{}:{}",
            path["traddr"].as_str().expect("traddr"),
            path["trsvcid"]
        )
        .parse()
        .expect("addr");
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name} on {on} at {addr}: {e}"));
    }
    let pools = json(&data, &["pool", "list"]);
    for p in pools.as_array().expect("list") {
        assert!(
            p["status"]["remoteVolumes"].as_u64().expect("count") <= 3,
            "{p}"
        );
    }

    // node-c's agent killed (its dataplane goes with it): Unknown within 15 s
    // of the kill (the controller: 14 s of silence, looked at every 250 ms).
    let killed = Instant::now();
    drop(c);
    wait_for("node-c Unknown", 20, || {
        health(&data, "node-c") == "Unknown"
    });
    let took = killed.elapsed();
    eprintln!("node-c Unknown {took:?} after its agent was killed");
    assert!(
        took <= Duration::from_secs(15),
        "Unknown {took:?} after the kill"
    );
    let (placed, said) = lp(
        &data,
        &[
            "volume",
            "create",
            "onc",
            "--size",
            "16MiB",
            "--placement",
            "must-local",
            "--consumer",
            "node-c",
            "--wait",
            "3",
        ],
    );
    assert!(!placed && said.contains("node-c"), "{said}");
    let _c = agent(&data, &nc, 2, "node-c", &dir.join("c"));
    wait_for("node-c Ready again", 30, || {
        health(&data, "node-c") == "Ready"
    });
    wait_for("onc placed on node-c", 30, || {
        json(&data, &["volume", "show", "onc"])["status"]["phase"] == "Ready"
    });

    // The instance killed right after a create was accepted, then restarted:
    // the create finishes, once.
    let (_, _) = lp(
        &data,
        &[
            "volume",
            "create",
            "late",
            "--size",
            "16MiB",
            "--placement",
            "must-remote",
            "--consumer",
            "node-a",
            "--wait",
            "0",
        ],
    );
    drop(a); // SIGKILL: no lease released, nothing finished
    let _a = standalone(&data, pa);
    // The restarted instance's dataplane listens before its control plane answers:
    // a refused call is "not yet".
    wait_for(
        "late Ready and its operation done after the restart",
        60,
        || {
            let (answered, out) = lp(&data, &["volume", "show", "late", "--json"]);
            let Some(v) = answered
                .then(|| serde_json::from_str::<serde_json::Value>(&out).ok())
                .flatten()
            else {
                return false;
            };
            v["status"]["phase"] == "Ready" && v["status"]["operation"].is_null()
        },
    );
    // Made once: a volume of one node's pool only.
    let holders: Vec<_> = ["a", "b", "c"]
        .iter()
        .filter(|n| {
            let api = dir.join(n).join("target.api.sock");
            json(
                &data,
                &[
                    "target",
                    "volume",
                    "list",
                    "--socket",
                    api.to_str().expect("utf-8"),
                ],
            )
            .as_array()
            .expect("list")
            .iter()
            .any(|v| v["name"] == "late")
        })
        .collect();
    assert_eq!(holders.len(), 1, "late made once: {holders:?}");
    let volumes = json(&data, &["volume", "list"]);
    let n = volumes.as_array().expect("list").len() as u64;
    wait_for("pools count every volume once", 20, || {
        json(&data, &["pool", "list"])
            .as_array()
            .expect("list")
            .iter()
            .map(|p| p["status"]["volumes"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == n
    });
}
