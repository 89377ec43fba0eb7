//! NVMe/TCP through AF_XDP (root): lightpool-target in one network namespace serves a
//! RAM namespace through a listener with engine = "af_xdp" on its end of a veth pair;
//! lightpool-perf in the other namespace, over the kernel's TCP, runs verified mixed
//! I/O against it (zero mismatches), and ping to the same address still gets the
//! kernel's answer. Native XDP and generic XDP.
#![cfg(all(feature = "e2e", feature = "af_xdp"))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lightpool_e2e::perfjson::perf_ok;
use lightpool_e2e::{e2e_dir, release_binary, HostProcess};
use lightpool_xdp::testing::VethPair;

const NQN: &str = "nqn.2024-01.io.lightpool:af-xdp";
const PORT: u16 = 4420;

fn serve_perf_through_af_xdp(mode: &str, tag: &str, net: u8) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test needs root (netns, XDP)");
    let pair = VethPair::new(tag, net).expect("veth pair");
    let dir = e2e_dir().expect("dir");
    let name = format!("af-xdp-{mode}");
    let cfg = dir.join(format!("{name}.toml"));
    let control = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&control);
    std::fs::write(
        &cfg,
        format!(
            "[target]\nreactors = 2\n\
             [[listener]]\naddress = \"{}:{PORT}\"\nengine = \"af_xdp\"\ninterface = \"{}\"\nxdp_mode = \"{mode}\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\nram = \"64MiB\"\nblock_size = 512\n",
            pair.addr_a, pair.a
        ),
    )
    .expect("config");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pair.ns_a])
        .arg(release_binary("lightpool-target").expect("built"))
        .arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(&control);
    let mut target = HostProcess::spawn(&name, cmd).expect("start the target");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !target.log().contains("listening through AF_XDP") {
        if let Some(st) = target.try_wait().expect("wait") {
            panic!("the target exited ({st}):\n{}", target.log());
        }
        assert!(
            Instant::now() < deadline,
            "no AF_XDP listener:\n{}",
            target.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let perf = |size: &str, secs: &str| {
        Command::new("ip")
            .args(["netns", "exec", &pair.ns_b])
            .arg(release_binary("lightpool-perf").expect("built"))
            .arg("-r")
            .arg(format!(
                "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{PORT} subnqn:{NQN}",
                pair.addr_a
            ))
            .args(["-q", "16", "-o", size, "-w", "randrw", "-M", "50"])
            .args(["--verify", "--json", "-c", "1", "-t", secs])
            .args(["--range", "0:16384", "--connect-timeout", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lightpool-perf")
    };
    let log = || target.log();
    // 4 KiB I/O (in-capsule writes), then 128 KiB (R2T and H2C data, C2H over many
    // segments).
    let small = perf_ok(perf("4096", "4"), &format!("{mode}: 4 KiB"), &log);
    let large = perf_ok(perf("131072", "4"), &format!("{mode}: 128 KiB"), &log);
    eprintln!("{mode}: 4 KiB {small}\n{mode}: 128 KiB {large}");

    pair.exec(
        &pair.ns_b,
        &["ping", "-c", "2", "-W", "2", &pair.addr_a.to_string()],
    )
    .expect("the kernel still answers ping on the AF_XDP interface");
    assert!(
        !target.log().contains("ERROR"),
        "errors in the target log:\n{}",
        target.log()
    );
    target
        .stop(Duration::from_secs(10))
        .expect("stop the target");
}

#[test]
fn perf_verify_through_af_xdp_native() {
    serve_perf_through_af_xdp("native", "en", 73);
}

#[test]
fn perf_verify_through_af_xdp_generic() {
    serve_perf_through_af_xdp("generic", "eg", 74);
}
