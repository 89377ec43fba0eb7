//! NVMe/TCP through DPDK (root): lightpool-target in one network namespace serves a RAM
//! namespace through a listener with engine = "dpdk" whose EAL device is
//! net_af_packet on its end of a veth pair; lightpool-perf in the other namespace,
//! over the kernel's TCP, runs verified mixed I/O against it (zero mismatches). The
//! DPDK port has an address of its own (10.N.0.3) beside the kernel's (10.N.0.1) on
//! the same link: the userspace stack answers ping on its address, the kernel still
//! on its own. One queue pair: net_af_packet with two rolls frames over between its
//! sockets when one's ring is full (its fanout's rollover flag), which reset
//! connections here under 128 KiB I/O, so the listener refuses it. Two queue pairs, a
//! reactor each, over net_tap: the tap's kernel side in the target's namespace is the
//! peer.
#![cfg(all(feature = "e2e", feature = "dpdk"))]

mod engine;

use std::net::Ipv4Addr;

use engine::{assert_root, scrape, sum, Served};
use lightpool_xdp::testing::VethPair;

const NQN: &str = "nqn.2024-01.io.lightpool:dpdk";

fn serve_perf_through_dpdk(qpairs: u32, tag: &str, net: u8) {
    assert_root();
    let pair = VethPair::new(tag, net).expect("veth pair");
    // The DPDK port's own address: the kernel in that namespace neither owns it (no
    // reset for its SYNs) nor forwards it.
    let addr = Ipv4Addr::new(10, net, 0, 3);
    let device = format!("net_af_packet0,iface={},qpairs={qpairs}", pair.a);
    let listener = format!("engine = \"dpdk\"\ninterface = \"{device}\"");
    let kernel = pair.addr_a;
    let name = format!("dpdk-{tag}-{qpairs}q");
    let mode = format!("{qpairs} queue pair(s)");
    let s = Served::start(
        pair,
        addr,
        &listener,
        &name,
        &mode,
        NQN,
        "listening through DPDK",
    );
    s.perf_small_and_large();
    upgrade_refused(&s, &name);
    s.perf_ok("4096", "2", "4 KiB after the refused upgrade");
    s.finish(&[
        (addr, "the userspace stack (on the DPDK port)"),
        (kernel, "the kernel (beside the DPDK port)"),
    ]);
}

/// A hot upgrade is refused while the DPDK listener serves (its successor could not
/// take the port or the userspace stack's connections, and would not listen there),
/// saying so; the target serves on.
fn upgrade_refused(s: &Served, name: &str) {
    let control = lightpool_e2e::e2e_dir()
        .expect("dir")
        .join(format!("{name}.sock"));
    let bin = lightpool_e2e::release_binary("lightpool-target").expect("built");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &s.pair.ns_a])
        .arg(&bin)
        .arg("upgrade")
        .arg("--binary")
        .arg(&bin)
        .arg("--control-socket")
        .arg(&control)
        .output()
        .expect("run the upgrade");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the upgrade went through: {said}");
    assert!(
        said.contains("served through DPDK") && said.contains("engine dpdk"),
        "{said}"
    );
    assert!(
        s.target.log().contains("upgrade refused"),
        "{}",
        s.target.log()
    );
}

#[test]
fn perf_verify_through_dpdk() {
    serve_perf_through_dpdk(1, "d1", 76);
}

/// Two reactors, a net_tap port with a queue pair each: the kernel side of the tap (in
/// the target's namespace, with its own MAC and 10.N.1.1) reaches the stack's 10.N.1.3
/// through the tun driver's queues, which put each flow on the queue the stack last
/// sent it from (and a new one by its hash), so a connection stays with the reactor
/// that accepted it. Verified perf over four I/O queues at once, 4 KiB and 128 KiB:
/// connections on both reactors, no I/O error, no mismatch (a segment reaching a
/// reactor without the connection would reset it), nothing dropped.
#[test]
fn perf_verify_through_dpdk_net_tap_with_a_queue_per_reactor() {
    assert_root();
    let net = 77;
    let pair = VethPair::new("dt", net).expect("namespaces");
    let tap = format!("dtap{}", std::process::id() % 100_000);
    // Beside the veth pair's 10.N.0.0/24 (unused here): the tap's link.
    let addr = Ipv4Addr::new(10, net, 1, 3);
    let metrics = "127.0.0.1:9466";
    let listener = format!("engine = \"dpdk\"\ninterface = \"net_tap0,iface={tap}\"");
    let mut s = Served::start_with(
        pair,
        addr,
        &format!("metrics_address = \"{metrics}\""),
        &listener,
        "dpdk-tap-2q",
        "net_tap, 2 queue pairs",
        NQN,
        "listening through DPDK",
    );
    assert!(
        s.target.log().contains("queues=2"),
        "one queue pair per reactor:\n{}",
        s.target.log()
    );
    // The tap's kernel side: a MAC of its own (it starts with the port's), an address.
    let ns = s.pair.ns_a.clone();
    for argv in [
        &["ip", "link", "set", &tap, "address", "02:00:00:00:4d:01"][..],
        &[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.1.1/24"),
            "dev",
            &tap,
        ],
        &["ip", "link", "set", &tap, "up"],
    ] {
        s.pair
            .exec(&ns, argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    }
    s.peer_ns = ns;
    let log = || s.target.log();
    for (size, depth) in [("4096", "16"), ("131072", "4")] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &s.peer_ns])
            .arg(lightpool_e2e::release_binary("lightpool-perf").expect("built"))
            .arg("-r")
            .arg(format!(
                "trtype:tcp adrfam:ipv4 traddr:{addr} trsvcid:{} subnqn:{NQN}",
                engine::PORT
            ))
            .args([
                "-q", depth, "-o", size, "-w", "randrw", "-M", "50", "--qpairs", "4",
            ])
            .args(["--verify", "--json", "-c", "1", "-t", "3"])
            .args(["--range", "0:16384", "--connect-timeout", "20"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start lightpool-perf");
        let json = lightpool_e2e::perfjson::perf_ok(
            out,
            &format!("net_tap, {size} B, 4 I/O queues"),
            &log,
        );
        eprintln!("net_tap 2 queues, {size} B: {json}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let page = scrape(&s, metrics);
    let steering = "lightpool_offload_operations_total";
    for reactor in ["0", "1"] {
        let r = format!("reactor=\"{reactor}\"");
        let flows = sum(&page, steering, &[r#"engine="dpdk""#, &r]);
        assert!(flows > 0, "no connection on reactor {reactor}:\n{page}");
        let rx = sum(
            &page,
            "lightpool_engine_frames_total",
            &[r#"direction="rx""#, &r],
        );
        assert!(rx > 0, "no frame on reactor {reactor}'s queue:\n{page}");
    }
    let drops = sum(&page, "lightpool_engine_drops_total", &[r#"engine="dpdk""#]);
    assert_eq!(drops, 0, "frames dropped:\n{page}");
    s.finish(&[(addr, "the userspace stack (on the tap)")]);
}
