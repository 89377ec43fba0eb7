//! The Linux 6.12 kernel's NVMe/TCP initiator, in the guest, through both packet
//! engines (root): one lightpool-target serves a RAM namespace through three listeners
//! on three veth pairs into the same two namespaces: AF_XDP in native XDP (the kernel's
//! address 10.79.0.1 on its interface), AF_XDP in generic XDP (10.79.0.4) and DPDK
//! (net_af_packet, the userspace stack's own address 10.79.0.3). The peers' ends are
//! ports of a bridge in the other namespace, with a tap device: QEMU runs there, and
//! the guest's second NIC sits on that link as 10.79.0.9. The guest connects through
//! each listener in turn (DPDK with header and data digests) and fio writes and
//! verifies 4 KiB and 128 KiB (R2T) I/O; then all again with netem on the guest's link
//! losing 1 % of its frames and reordering a quarter (the userspace stacks' reassembly
//! and retransmissions). The kernel log shows no reset or timeout, and the target's
//! engine counters say that each interface's queue received at least what fio wrote
//! through it.
#![cfg(all(feature = "e2e", feature = "af_xdp", feature = "dpdk"))]

mod engine;

use std::net::Ipv4Addr;
use std::time::Duration;

use engine::{assert_root, scrape, sum, Served};
use lightpool_e2e::guest_sh::{FIO_VERIFY, NS_DEV};
use lightpool_e2e::{run_guest, GuestConfig};
use lightpool_xdp::testing::VethPair;

const NQN: &str = "nqn.2024-01.io.lightpool:engine-kernel";
const NET: u8 = 79;
const METRICS: &str = "127.0.0.1:9465";
/// The guest's NIC on the bridge.
const MAC: &str = "52:54:00:4c:50:01";
/// What fio writes through each engine (four jobs of 16 MiB).
const WRITTEN: u64 = 64 << 20;

/// One way into the target: its name in the guest's output, the address it connects
/// to, the interface in the target's namespace, the `nvme connect` options.
struct Path {
    name: &'static str,
    addr: Ipv4Addr,
    dev: String,
    connect: &'static str,
}

/// Two more veth pairs between the namespaces (a2: DPDK's port, no kernel ARP on it;
/// a3: the generic AF_XDP interface, 10.N.0.4), a bridge in namespace b with the three
/// peers' ends and the 10.N.0.2 address, and the tap QEMU opens. In namespace a the
/// kernel answers ARP only on the interface that holds the address asked for.
fn plumb(pair: &VethPair) -> (String, String, String) {
    let (a2, b2) = (format!("{}2", pair.a), format!("{}2", pair.b));
    let (a3, b3) = (format!("{}3", pair.a), format!("{}3", pair.b));
    for (a, b) in [(&a2, &b2), (&a3, &b3)] {
        let out = std::process::Command::new("ip")
            .args(["link", "add", a, "netns", &pair.ns_a, "type", "veth"])
            .args(["peer", "name", b, "netns", &pair.ns_b])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "veth pair {a}: {out:?}");
    }
    let a = |argv: &[&str]| {
        pair.exec(&pair.ns_a, argv)
            .unwrap_or_else(|e| panic!("{argv:?} in the target's namespace: {e}"))
    };
    let b = |argv: &[&str]| {
        pair.exec(&pair.ns_b, argv)
            .unwrap_or_else(|e| panic!("{argv:?} in the peer namespace: {e}"))
    };
    // Through /proc (per network namespace) rather than sysctl(8): procps is not among
    // the packages the set-up installs.
    a(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore",
    ]);
    // No ARP from the kernel on DPDK's port (the userspace stack answers for its own).
    a(&["ip", "link", "set", &a2, "arp", "off", "up"]);
    a(&["ip", "addr", "add", &format!("10.{NET}.0.4/24"), "dev", &a3]);
    a(&["ip", "link", "set", &a3, "up"]);
    let addr = format!("{}/24", pair.addr_b);
    b(&["ip", "addr", "del", &addr, "dev", &pair.b]);
    b(&["ip", "link", "add", "br0", "type", "bridge"]);
    b(&["ip", "tuntap", "add", "tap0", "mode", "tap"]);
    for end in [&b2, &b3] {
        b(&[
            "ethtool", "-K", end, "tx", "off", "tso", "off", "gso", "off",
        ]);
    }
    for port in [pair.b.as_str(), b2.as_str(), b3.as_str(), "tap0"] {
        b(&["ip", "link", "set", port, "master", "br0", "up"]);
    }
    b(&["ip", "addr", "add", &addr, "dev", "br0"]);
    b(&["ip", "link", "set", "br0", "up"]);
    (a2, a3, "tap0".to_string())
}

fn script(paths: &[Path]) -> String {
    let mut pings = String::new();
    let mut runs = String::new();
    for p in paths {
        let (n, a, c) = (p.name, p.addr, p.connect);
        pings.push_str(&format!(
            "ping -c 2 -W 5 {a} > /dev/null || fail \"no answer at {a} ({n})\"\n"
        ));
        runs.push_str(&format!("through $1{n} {a} \"{c}\"\n"));
    }
    format!(
        r#"
set -eu
NQN={NQN}
say() {{ echo "ENGINE-KERNEL: $*"; }}
fail() {{ say "FAILED: $*"; dmesg | tail -n 40; exit 1; }}
modprobe nvme-tcp 2>/dev/null || true
IF=
for d in /sys/class/net/*; do [ "$(cat $d/address)" = "{MAC}" ] && IF=${{d##*/}}; done
[ -n "$IF" ] || fail "no NIC with MAC {MAC}"
ip link set $IF up
ip addr add 10.{NET}.0.9/24 dev $IF
{pings}say "link up on $IF"
{NS_DEV}{FIO_VERIFY}through() {{
    nvme connect -t tcp -a $2 -s 4420 -n $NQN --nr-io-queues=2 $3 > /dev/null || fail "connect through $1"
    DEV=$(ns_dev) || fail "no namespace through $1"
    say "connected through $1: $DEV"
    verify $1-4k 4k 16 || fail "fio 4 KiB through $1"
    verify $1-128k 128k 16 || fail "fio 128 KiB through $1"
    nvme disconnect -n $NQN > /dev/null || fail "disconnect from $1"
    sleep 1
}}
# Each path in turn: all() PREFIX
all() {{
{runs}}}
all ""
# Lost and reordered segments toward the userspace stacks: netem on the guest's link
# drops 1 % of what the guest sends and lets a quarter of it overtake the rest (iproute2's
# tc by its path: busybox's shell prefers its own applet, which has no netem).
/sbin/tc qdisc add dev $IF root netem delay 2ms reorder 25% 50% loss 1% || fail "netem"
all netem-
/sbin/tc -s qdisc show dev $IF | sed 's/^/NETEM: /'
/sbin/tc qdisc del dev $IF root
if dmesg | grep -iE 'nvme.*(timeout|resetting|reconnect|I/O error)'; then fail "the kernel log has resets or timeouts"; fi
say "all good"
"#,
    )
}

#[test]
fn kernel_initiator_through_af_xdp_and_dpdk() {
    assert_root();
    let pair = VethPair::new("ek", NET).expect("veth pair");
    let (a2, a3, tap) = plumb(&pair);
    let paths = [
        Path {
            name: "af_xdp",
            addr: pair.addr_a,
            dev: pair.a.clone(),
            connect: "",
        },
        Path {
            name: "af_xdp_generic",
            addr: Ipv4Addr::new(10, NET, 0, 4),
            dev: a3.clone(),
            connect: "",
        },
        Path {
            name: "dpdk",
            addr: Ipv4Addr::new(10, NET, 0, 3),
            dev: format!("net_af_packet0,iface={a2},qpairs=1"),
            connect: "--hdr-digest --data-digest",
        },
    ];
    let port = engine::PORT;
    let listener = format!(
        "engine = \"af_xdp\"\ninterface = \"{}\"\nxdp_mode = \"native\"\n\
         [[listener]]\naddress = \"{}:{port}\"\nengine = \"af_xdp\"\n\
         interface = \"{a3}\"\nxdp_mode = \"generic\"\n\
         [[listener]]\naddress = \"{}:{port}\"\nengine = \"dpdk\"\ninterface = \"{}\"",
        paths[0].dev, paths[1].addr, paths[2].addr, paths[2].dev
    );
    let ns_b = pair.ns_b.clone();
    let s = Served::start_with(
        pair,
        paths[0].addr,
        &format!("metrics_address = \"{METRICS}\""),
        &listener,
        "engine-kernel",
        "AF_XDP (native and generic) and DPDK",
        NQN,
        "listening through DPDK",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.target.log().matches("listening through AF_XDP").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not both AF_XDP listeners:\n{}",
            s.target.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // What each path's queue received.
    let rx = |page: &str| -> Vec<u64> {
        paths
            .iter()
            .map(|p| {
                let i = format!("interface=\"{}\"", p.dev);
                sum(
                    page,
                    "lightpool_engine_bytes_total",
                    &[&i, r#"direction="rx""#],
                )
            })
            .collect()
    };
    let before = rx(&scrape(&s, METRICS));

    let cfg = GuestConfig {
        timeout: Duration::from_secs(600),
        netns: Some(ns_b.clone()),
        qemu_args: vec![
            "-netdev".into(),
            format!("tap,id=n1,ifname={tap},script=no,downscript=no,vnet_hdr=off"),
            "-device".into(),
            // No checksum or segmentation offload: the guest sends finished frames of
            // at most the MTU, as the engines take them.
            format!(
                "virtio-net-pci,netdev=n1,mac={MAC},romfile=,csum=off,guest_csum=off,gso=off,\
                 host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off"
            ),
        ],
        ..GuestConfig::new("engine_kernel", &script(&paths))
    };
    let out = run_guest(&cfg);
    let _ = s.pair.exec(&ns_b, &["ip", "link", "del", &tap]);
    let out = out.expect("guest run");
    let tail = out.tail(80);
    assert_eq!(
        out.exit_code,
        0,
        "{tail}\n--- target log:\n{}",
        s.target.log()
    );
    assert!(out.console.contains("ENGINE-KERNEL: all good"), "{tail}");
    for p in &paths {
        for job in ["", "netem-"].map(|n| format!("{n}{}", p.name)) {
            for size in ["4k", "128k"] {
                let line = format!("ENGINE-KERNEL: fio {job}-{size} errors=0");
                assert!(out.console.contains(&line), "no {line:?}:\n{tail}");
            }
        }
    }
    // netem dropped some of what the guest sent (its qdisc's "dropped" count).
    let dropped: u64 = out
        .console
        .lines()
        .filter_map(|l| l.split("(dropped ").nth(1))
        .filter_map(|r| r.split(',').next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "netem dropped nothing:\n{tail}");
    eprintln!("netem dropped {dropped} frames of the guest's");
    // Counts are published every 10 ms and when a connection closes.
    std::thread::sleep(Duration::from_millis(300));
    let page = scrape(&s, METRICS);
    for ((p, after), before) in paths.iter().zip(rx(&page)).zip(before) {
        let got = after - before;
        eprintln!("received through {} ({}): {got} bytes", p.name, p.dev);
        assert!(got >= WRITTEN, "{} received {got} bytes:\n{page}", p.name);
    }
    // Only the DPDK connections asked for digests: the software engine computed them.
    let digests = [r#"work="digest""#, r#"engine="software""#];
    assert!(
        sum(&page, "lightpool_offload_bytes_total", &digests) >= WRITTEN,
        "no digests over what was written through DPDK:\n{page}"
    );
    let pings: Vec<(Ipv4Addr, &str)> = paths.iter().map(|p| (p.addr, p.name)).collect();
    s.finish(&pings);
}
