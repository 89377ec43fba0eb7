//! Network faults through a live target on one reactor (issue 17): a network shim
//! between one host and the target drops the connection exactly when the target asks
//! for a write's data (R2T), twenty times, and later stops reading from the target
//! (a stalled host whose responses fill the socket buffers). Meanwhile a host
//! connected directly keeps writing and reading through R2Ts on the same reactor.
//! Asserts: the other host is served throughout; a write cut before its data landed
//! changed nothing (what was acknowledged before reads back); the cut connections are
//! gone from the target's list (nothing leaks); the stalled host gets every answer
//! once it reads again.
#![cfg(feature = "e2e")]

use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::netshim::{Mode, NetShim};
use lightpool_e2e::nvme_host::HostController;
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};
use lightpool_spec::nvme::io_opcode;

const NQN: &str = "nqn.2024-01.io.lightpool:netfaults";
const BS: u32 = 512;
/// Blocks of one write (64 KiB: more than fits in a capsule, so the target sends R2Ts).
const BLOCKS: u32 = 128;

fn data(lba: u64, gen: u8) -> Vec<u8> {
    (0..BLOCKS as usize * BS as usize)
        .map(|i| ((lba as usize * 7 + i * 13) ^ (usize::from(gen) * 101)) as u8)
        .collect()
}

/// A write through R2Ts and its read back on the direct host: the target serves it.
fn served(h: &mut HostController, lba: u64, gen: u8) {
    let d = data(lba, gen);
    let st = h.io[0].write_r2t(1, lba, BS, &d).expect("write");
    assert!(st.is_success(), "the direct host's write: {st}");
    let (st, got) = h.io[0]
        .command(1, io_opcode::READ, lba, BLOCKS, BS, None)
        .expect("read");
    assert!(st.is_success() && got == d, "the direct host's read: {st}");
}

/// The target's connections (`lightpool target connection list`).
fn connections(api: &str) -> usize {
    lightpool_e2e::cli::connection_list(std::path::Path::new(api)).len()
}

#[test]
fn a_host_cut_mid_r2t_or_stalled_does_not_hold_up_the_others_and_loses_nothing() {
    let dir = e2e_dir().expect("e2e dir");
    let port = free_port().expect("port");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = dir.join("netfaults.toml");
    let control = dir.join("netfaults.sock");
    let api = control.with_extension("api.sock").display().to_string();
    let _ = std::fs::remove_file(&control);
    std::fs::write(
        &config,
        format!(
            "[target]\ncores = [0]\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\nram = \"32MiB\"\nhugepages = false\n"
        ),
    )
    .expect("config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--control-socket")
        .arg(&control);
    let _target = HostProcess::spawn_listening("netfaults", cmd, addr, Duration::from_secs(30))
        .expect("the target starts");
    let shim = NetShim::start(addr).expect("shim");
    let mut direct = HostController::connect(addr, NQN, 1).expect("connect directly");
    let mut far = HostController::connect(shim.addr, NQN, 1).expect("connect through the shim");

    // Through the shim, a write through R2Ts is acknowledged.
    let acked = data(0, 1);
    let st = far.io[0].write_r2t(1, 0, BS, &acked).expect("write");
    assert!(st.is_success(), "{st}");
    served(&mut direct, 4096, 1);
    drop(far);
    let baseline = {
        // Both hosts' admin and I/O queues, once the shim's closed ones are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = connections(&api);
            if n == 2 || Instant::now() > deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(baseline, 2, "the direct host's two queues");

    // Twenty writes cut when the target asks for their data.
    for round in 0..20u8 {
        shim.set(Mode::Forward);
        let mut far = HostController::connect(shim.addr, NQN, 1).expect("reconnect");
        shim.set(Mode::CutAtR2t);
        far.io[0]
            .send_write_r2t(1, 0, BLOCKS, BS)
            .expect("the command goes out");
        let r = far.io[0].command(1, io_opcode::READ, 0, 1, BS, None);
        assert!(
            r.is_err(),
            "round {round}: the connection was cut, yet: {r:?}"
        );
        served(
            &mut direct,
            4096 + u64::from(round) * u64::from(BLOCKS),
            round,
        );
    }
    assert_eq!(shim.cuts(), 20);
    shim.set(Mode::Forward);
    // What was acknowledged before is what reads back: no cut write landed.
    let mut far = HostController::connect(shim.addr, NQN, 1).expect("reconnect");
    let (st, got) = far.io[0]
        .command(1, io_opcode::READ, 0, BLOCKS, BS, None)
        .expect("read");
    assert!(
        st.is_success() && got == acked,
        "blocks 0..128 after the cuts: {st}"
    );
    drop(far);
    // The cut connections are gone: no slot, buffer or queue held for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections(&api) != 2 {
        assert!(
            Instant::now() < deadline,
            "connections left behind: {}",
            connections(&api)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A stalled host: 120 reads of 128 KiB sent, their data not read (15 MiB, more
    // than the socket buffers hold), while the direct host is served.
    let mut far = HostController::connect(shim.addr, NQN, 1).expect("reconnect");
    shim.set(Mode::Stall);
    far.io[0]
        .send_reads(1, 0, 256, BS, 120)
        .expect("the reads go out");
    for round in 0..30u8 {
        served(
            &mut direct,
            16384 + u64::from(round) * u64::from(BLOCKS),
            round,
        );
    }
    shim.set(Mode::Forward);
    let (ok, bytes) = far.io[0].recv_reads(120).expect("the answers come");
    assert_eq!((ok, bytes), (120, 120 * 256 * BS as usize));
    served(&mut direct, 0, 9);
}
