//! NVMe/TCP through AF_XDP (root): lightpool-target in one network namespace serves a
//! RAM namespace through a listener with engine = "af_xdp" on its end of a veth pair;
//! lightpool-perf in the other namespace, over the kernel's TCP, runs verified mixed
//! I/O against it (zero mismatches), and ping to the same address still gets the
//! kernel's answer. Native XDP and generic XDP.
#![cfg(all(feature = "e2e", feature = "af_xdp"))]

mod engine;

use std::time::Duration;

use engine::{assert_root, scrape, sum, Served, PORT};
use lightpool_e2e::perfjson::perf_ok;
use lightpool_xdp::testing::VethPair;

const NQN: &str = "nqn.2024-01.io.lightpool:af-xdp";

/// A target serving a RAM namespace through AF_XDP on its end of a veth pair.
fn start(mode: &str, tag: &str, net: u8) -> Served {
    assert_root();
    let pair = VethPair::new(tag, net).expect("veth pair");
    let listener = format!(
        "engine = \"af_xdp\"\ninterface = \"{}\"\nxdp_mode = \"{mode}\"",
        pair.a
    );
    let addr = pair.addr_a;
    let name = format!("af-xdp-{tag}-{mode}");
    Served::start(
        pair,
        addr,
        &listener,
        &name,
        mode,
        NQN,
        "listening through AF_XDP",
    )
}

/// The kernel still answers ping on the AF_XDP interface; then stop the target.
fn finish(s: Served) {
    let addr = s.pair.addr_a;
    s.finish(&[(addr, "the kernel (on the AF_XDP interface)")]);
}

fn serve_perf_through_af_xdp(mode: &str, tag: &str, net: u8) {
    let s = start(mode, tag, net);
    s.perf_small_and_large();
    finish(s);
}

#[test]
fn perf_verify_through_af_xdp_native() {
    serve_perf_through_af_xdp("native", "en", 73);
}

/// A hot upgrade with an AF_XDP listener: the old process ends the listener at quiesce
/// (its connections close, its XDP program and sockets go) and the successor listens
/// through AF_XDP again once the old one has let go; verified I/O after it. Then the
/// listener is removed through the management API: the XDP program detaches, nothing
/// answers on the port, and the kernel still answers on the interface.
#[test]
fn af_xdp_listener_survives_a_hot_upgrade_and_is_removed_through_the_api() {
    let mode = "native";
    let (tag, net) = ("eu", 78);
    let name = format!("af-xdp-{tag}-{mode}");
    let s = start(mode, tag, net);
    s.perf_ok("4096", "2", "4 KiB before the upgrade");
    let control = lightpool_e2e::e2e_dir()
        .expect("dir")
        .join(format!("{name}.sock"));
    let bin = lightpool_e2e::release_binary("lightpool-target").expect("built");
    let run = |argv: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &s.pair.ns_a])
            .args(argv)
            .output()
            .expect("run");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let (ok, said) = run(&[
        bin.as_os_str(),
        "upgrade".as_ref(),
        "--binary".as_ref(),
        bin.as_os_str(),
        "--control-socket".as_ref(),
        control.as_os_str(),
    ]);
    assert!(ok, "upgrade: {said}\n{}", s.target.log());
    // The successor is not this test's child: its pid, to stop it at the end.
    let pid: i32 = said
        .split("now serving:")
        .nth(1)
        .and_then(|t| t.split("pid=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no successor pid in {said}"));
    let stop = || {
        // SAFETY: kill(2) of the successor this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    };
    // Until it has taken over, the successor logs to the upgrade command's output.
    if !said.contains("NVMe/TCP listening through the engine again") {
        stop();
        panic!("the successor did not listen through AF_XDP again: {said}");
    }
    s.perf_ok("4096", "2", "4 KiB after the upgrade");
    s.perf_ok("131072", "2", "128 KiB after the upgrade");
    let lp = lightpool_e2e::release_binary("lightpool").expect("built");
    let addr = format!("{}:{}", s.addr, engine::PORT);
    let (ok, said) = run(&[
        lp.as_os_str(),
        "--socket".as_ref(),
        s.api.as_os_str(),
        "listener".as_ref(),
        "remove".as_ref(),
        addr.as_ref(),
    ]);
    let (_, link) = run(&[
        "ip".as_ref(),
        "link".as_ref(),
        "show".as_ref(),
        s.pair.a.as_ref(),
    ]);
    let refused = s.perf("4096", "1").wait_with_output().expect("perf");
    let pinged = s.pair.exec(
        &s.pair.ns_b,
        &["ping", "-c", "1", "-W", "2", &s.addr.to_string()],
    );
    stop();
    assert!(ok, "listener remove: {said}\n{}", s.target.log());
    assert!(
        s.target.log().contains("NVMe/TCP listener removed"),
        "{}",
        s.target.log()
    );
    assert!(
        !link.contains("xdp"),
        "an XDP program is still attached: {link}"
    );
    assert!(
        !refused.status.success(),
        "perf connected to a removed listener"
    );
    pinged.expect("the kernel answers ping on the interface after the removal");
    assert!(!s.target.log().contains("ERROR"), "{}", s.target.log());
}

#[test]
fn perf_verify_through_af_xdp_generic() {
    serve_perf_through_af_xdp("generic", "eg", 74);
}

/// The Internet checksum of `data` added onto `sum`.
fn csum(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP segment from `src` to `dst`:PORT with `flags`, a header of `doff`
/// words and `payload`; a correct TCP checksum unless `bad_sum`.
fn segment(
    src: (std::net::Ipv4Addr, u16),
    dst: std::net::Ipv4Addr,
    flags: u8,
    doff: u8,
    payload: &[u8],
    bad_sum: bool,
) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let mut p = vec![0u8; 20 + tcp_len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&PORT.to_be_bytes());
    t[4..8].copy_from_slice(&(u32::from(src.1) * 7919).to_be_bytes());
    t[12] = doff << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t[20..].copy_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let sum = fold(csum(csum(0, &pseudo), t)) ^ u16::from(bad_sum);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    p
}

/// From the peer namespace: a flood of SYNs from addresses that never answer (each
/// holds a listening socket in SYN-RECEIVED until it times out), and malformed
/// segments (bad checksums, header lengths below 20 bytes or past the end, RST and
/// data to no connection).
fn flood(ns: String, dst: std::net::Ipv4Addr, net: u8) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        VethPair::enter(&ns).expect("enter the peer namespace");
        // SAFETY: a plain socket call; the descriptor is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        for i in 0..3000u32 {
            let src = std::net::Ipv4Addr::new(10, net, 0, 100 + (i % 100) as u8);
            let port = 20_000 + i as u16;
            let p = match i % 6 {
                0 => segment((src, port), dst, 0x02, 5, &[], true), // SYN, bad sum
                1 => segment((src, port), dst, 0x02, 2, &[], false), // header too short
                2 => segment((src, port), dst, 0x18, 15, &[0xff; 8], false), // past the end
                3 => segment((src, port), dst, 0x04, 5, &[], false), // RST to nothing
                4 => segment((src, port), dst, 0x18, 5, &[0; 64], false), // data to nothing
                _ => segment((src, port), dst, 0x02, 5, &[], false), // SYN
            };
            // SAFETY: sendto with a buffer and address that outlive the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n > 0 {
                sent += 1;
            }
        }
        // SAFETY: the descriptor opened above, closed once.
        unsafe { libc::close(fd) };
        sent
    })
}

/// From the peer namespace: connections that send an ICReq and part of a command
/// capsule, then close with the target's ICResp unread, which makes the kernel send
/// a reset: the target sees a RST in the middle of a PDU.
fn resets_mid_pdu(ns: String, to: std::net::SocketAddr) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        use std::io::Write;
        VethPair::enter(&ns).expect("enter the peer namespace");
        let mut icreq = [0u8; 128];
        icreq[0] = 0x00; // ICReq
        icreq[2] = 128; // HLEN
        icreq[4..8].copy_from_slice(&128u32.to_le_bytes()); // PLEN
        let mut capsule = [0u8; 72];
        capsule[0] = 0x04; // CapsuleCmd
        capsule[2] = 72;
        capsule[4..8].copy_from_slice(&72u32.to_le_bytes());
        let mut done = 0;
        for i in 0..20 {
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
            else {
                continue;
            };
            let cut = [10, 30, 60][i % 3];
            if s.write_all(&icreq)
                .and_then(|_| s.write_all(&capsule[..cut]))
                .is_ok()
            {
                done += 1;
            }
            // Let the ICResp arrive, unread: closing now resets.
            std::thread::sleep(Duration::from_millis(30));
            drop(s);
        }
        done
    })
}

#[test]
fn af_xdp_survives_resets_mid_pdu_a_syn_flood_and_malformed_segments() {
    let net = 75;
    let s = start("generic", "eh", net);
    // A verified run that must go on serving through all of it.
    let running = s.perf("4096", "10");
    std::thread::sleep(Duration::from_secs(1));
    let to = std::net::SocketAddr::from((s.pair.addr_a, PORT));
    let resets = resets_mid_pdu(s.pair.ns_b.clone(), to);
    let flooded = flood(s.pair.ns_b.clone(), s.pair.addr_a, net);
    let resets = resets.join().expect("resets");
    let flooded = flooded.join().expect("flood");
    assert!(resets > 0, "no connection reached the target to be reset");
    assert_eq!(flooded, 3000, "segments sent");
    let log = || s.target.log();
    let json = perf_ok(running, "generic: through the flood", &log);
    eprintln!("through the flood: {json}");
    // The half-open connections time out (10 s) and free their listening sockets:
    // a new connection gets in.
    let after = s.perf_ok("131072", "3", "after the flood");
    eprintln!("after the flood: {after}");
    finish(s);
}

/// The page has a sample of `family` with `labels` above zero (else: `what`).
fn positive(page: &str, family: &str, labels: &[&str], what: &str) {
    assert!(sum(page, family, labels) > 0, "{what}:\n{page}");
}

/// The engine of each connection `lightpool connection list` shows.
fn connection_engines(s: &engine::Served) -> Vec<String> {
    lightpool_e2e::cli::connection_list(&s.api)
        .iter()
        .map(|c| c["engine"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The offload and engine lines of a metrics page, for the test's log.
fn offload_lines(page: &str) -> String {
    page.lines()
        .filter(|l| {
            ["lightpool_offload_", "lightpool_engine_", "lightpool_xdp_"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// NVMe/TCP with header and data digests through AF_XDP, then through kernel sockets on
/// the same target (a second listener, on a port the XDP program passes to the
/// kernel): the metrics say the software engine computed the digests both times, the
/// XDP program steered the AF_XDP flows (and the kernel's accept the others), and the
/// H2C data reached request buffers from the userspace stack's ring in the first case
/// and by recv(2) in the second.
#[test]
fn digests_placement_and_steering_are_counted_by_engine() {
    let pair = VethPair::new("eo", 76).expect("veth pair");
    let addr = pair.addr_a;
    let metrics = "127.0.0.1:9464";
    let kernel_port = PORT + 1;
    let listener = format!(
        "engine = \"af_xdp\"\ninterface = \"{}\"\nxdp_mode = \"generic\"\n\
         [[listener]]\naddress = \"{addr}:{kernel_port}\"",
        pair.a
    );
    assert_root();
    let s = Served::start_with(
        pair,
        addr,
        &format!("metrics_address = \"{metrics}\""),
        &listener,
        "af-xdp-offload",
        "generic",
        NQN,
        "listening through AF_XDP",
    );
    let log = || s.target.log();
    let run = |port: u16, what: &str| {
        let j = perf_ok(
            s.perf_to(port, "131072", "3", &["--digest"]),
            &format!("{what}, 128 KiB with digests"),
            &log,
        );
        eprintln!("{what}: {j}");
    };
    let ops = "lightpool_offload_operations_total";
    let bytes = "lightpool_offload_bytes_total";
    let digest = [r#"work="digest""#, r#"engine="software""#];
    let xdp = [r#"work="steering""#, r#"engine="xdp""#];
    let kernel = [r#"work="steering""#, r#"engine="kernel""#];
    let placed = |page: &str, engine: &str| {
        let e = format!("engine=\"{engine}\"");
        sum(page, bytes, &[r#"work="placement""#, &e])
    };

    // While it runs, the management API lists its connections with their engine.
    let running = s.perf_to(PORT, "131072", "3", &["--digest"]);
    std::thread::sleep(Duration::from_millis(1500));
    let engines = connection_engines(&s);
    perf_ok(running, "AF_XDP, 128 KiB with digests, listed", &log);
    assert!(
        !engines.is_empty() && engines.iter().all(|e| e == "af_xdp"),
        "connections through AF_XDP listed as {engines:?}"
    );
    run(PORT, "AF_XDP");
    // Counts are published every 10 ms and when a connection closes.
    std::thread::sleep(Duration::from_millis(300));
    let p = scrape(&s, metrics);
    eprintln!("after AF_XDP:\n{}", offload_lines(&p));
    positive(&p, bytes, &digest, "no digest bytes by the software engine");
    positive(&p, ops, &digest, "no digests by the software engine");
    positive(&p, ops, &xdp, "no flow steered by XDP");
    positive(&p, bytes, &xdp, "no frames on the steered queues");
    let steered = [r#"action="steered""#];
    positive(
        &p,
        "lightpool_xdp_program_frames_total",
        &steered,
        "the XDP program steered nothing",
    );
    let rx = [r#"engine="af_xdp""#, r#"direction="rx""#];
    positive(
        &p,
        "lightpool_engine_frames_total",
        &rx,
        "no AF_XDP frames received",
    );
    assert!(
        placed(&p, "stack_ring") > 0,
        "nothing placed from the stack's ring:\n{p}"
    );
    assert_eq!(placed(&p, "recv"), 0, "{p}");
    assert_eq!(sum(&p, ops, &kernel), 0, "{p}");
    let (digest_bytes, ring) = (sum(&p, bytes, &digest), placed(&p, "stack_ring"));

    run(kernel_port, "kernel sockets");
    std::thread::sleep(Duration::from_millis(300));
    let p = scrape(&s, metrics);
    eprintln!("after kernel sockets:\n{}", offload_lines(&p));
    assert!(
        sum(&p, bytes, &digest) > digest_bytes,
        "no digest for kernel sockets:\n{p}"
    );
    assert!(
        placed(&p, "recv") > 0,
        "nothing received into request buffers:\n{p}"
    );
    assert_eq!(
        placed(&p, "stack_ring"),
        ring,
        "kernel sockets through the ring:\n{p}"
    );
    positive(&p, ops, &kernel, "no flow steered by the kernel's accept");
    finish(s);
}
