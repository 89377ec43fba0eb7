//! `--multipath` against two in-process targets presenting one subsystem on one RAM
//! device (as a live migration's source and destination do once synced): I/O follows
//! the ANA switch (the first path turned inaccessible, the second optimized) and a
//! path whose target goes away, with no I/O error and --verify clean.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{perf, trid, Run, NQN};
use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::{NamespaceConfig, Subsystem, SubsystemConfig, Target, TargetOptions};
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use lightpool_spec::log::ana_state;
use lightpool_transport_tcp::TcpTransport;

/// One path: a target serving `bdev` as namespace 1 of the test subsystem, its ANA
/// group 1 in `state`.
struct Path {
    addr: SocketAddr,
    sub: Arc<Subsystem>,
    reactor: ReactorHandle,
}

impl Path {
    fn start(bdev: &Arc<MallocBdev>, cntlid: (u16, u16), state: u8) -> Path {
        let t = Target::new(TargetOptions::default()).expect("valid options");
        let mut sc = SubsystemConfig::new(NQN);
        (sc.min_cntlid, sc.max_cntlid) = cntlid;
        sc.namespaces.push(NamespaceConfig {
            nsid: 1,
            bdev: bdev.clone(),
            nguid: None,
            uuid: None,
            anagrpid: Some(1),
            num_blocks: None,
        });
        let sub = t.add_subsystem(sc).expect("valid subsystem");
        sub.set_ana_state(1, state).expect("ANA group 1");
        let reactor = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor");
        let tcp = TcpTransport::new(t, vec![reactor.clone()]).expect("transport");
        let addr = tcp
            .listen("127.0.0.1:0".parse().expect("address"))
            .expect("listen");
        Path { addr, sub, reactor }
    }

    fn stop(self) {
        self.reactor.stop();
        let _ = self.reactor.join();
    }
}

/// Runs `--multipath` over `a` then `b` for 3 s in the background.
fn run(a: &Path, b: &Path) -> std::thread::JoinHandle<Run> {
    let (ra, rb) = (trid(a.addr, Some(NQN)), trid(b.addr, Some(NQN)));
    std::thread::spawn(move || {
        perf(&[
            "--multipath",
            "-r",
            &ra,
            "-r",
            &rb,
            "-q",
            "8",
            "-o",
            "4096",
            "-w",
            "randrw",
            "-M",
            "50",
            "-t",
            "3",
            "--verify",
            "--range",
            "0:16384",
            "--json",
            "--kato",
            "0",
        ])
    })
}

fn assert_clean(r: &Run, moved_to: SocketAddr) {
    let what = r.dump();
    assert_eq!(r.code, 0, "{what}");
    assert!(r.total_iops() > 0.0, "{what}");
    assert_eq!(r.field(&["error_total"]), 0, "{what}");
    assert_eq!(r.field(&["verify", "mismatches"]), 0, "{what}");
    assert!(
        r.field(&["verify", "blocks_checked"]).as_u64().unwrap_or(0) > 0,
        "{what}"
    );
    assert!(
        r.stderr.contains(&format!("I/O moves to {moved_to}")),
        "{what}"
    );
}

#[test]
fn io_follows_the_ana_switch_to_the_other_path() {
    let bdev = MallocBdev::new("ram", 16 << 20, 512).expect("RAM device");
    let a = Path::start(&bdev, (1, 0x7fff), ana_state::OPTIMIZED);
    let b = Path::start(&bdev, (0x8000, 0xffef), ana_state::INACCESSIBLE);
    let h = run(&a, &b);
    std::thread::sleep(Duration::from_millis(1000));
    // The switch as a migration makes it: the destination first.
    b.sub.set_ana_state(1, ana_state::OPTIMIZED).expect("b");
    a.sub.set_ana_state(1, ana_state::INACCESSIBLE).expect("a");
    let r = h.join().expect("perf");
    assert_clean(&r, b.addr);
    assert!(
        r.stderr.contains("asymmetric access inaccessible"),
        "{}",
        r.dump()
    );
    a.stop();
    b.stop();
}

#[test]
fn io_leaves_a_path_whose_target_goes_away() {
    let bdev = MallocBdev::new("ram", 16 << 20, 512).expect("RAM device");
    let a = Path::start(&bdev, (1, 0x7fff), ana_state::OPTIMIZED);
    let b = Path::start(&bdev, (0x8000, 0xffef), ana_state::OPTIMIZED);
    let h = run(&a, &b);
    std::thread::sleep(Duration::from_millis(1000));
    a.stop();
    let r = h.join().expect("perf");
    assert_clean(&r, b.addr);
    b.stop();
}
