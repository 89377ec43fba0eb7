//! NVMe/TCP through DPDK (root): lightpool-target in one network namespace serves a RAM
//! namespace through a listener with engine = "dpdk" whose EAL device is
//! net_af_packet on its end of a veth pair; lightpool-perf in the other namespace,
//! over the kernel's TCP, runs verified mixed I/O against it (zero mismatches). The
//! DPDK port has an address of its own (10.N.0.3) beside the kernel's (10.N.0.1) on
//! the same link: the userspace stack answers ping on its address, the kernel still
//! on its own. One queue pair: net_af_packet with two rolls frames over between its
//! sockets when one's ring is full (its fanout's rollover flag), which reset
//! connections here under 128 KiB I/O, so the listener refuses it.
#![cfg(all(feature = "e2e", feature = "dpdk"))]

mod engine;

use std::net::Ipv4Addr;

use engine::{assert_root, Served};
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
