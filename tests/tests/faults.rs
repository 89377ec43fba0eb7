//! Fault injection through a live target (issue 17): a fault device between a
//! namespace and its RAM, its rules set from the configuration and then through the
//! management API (`lightpool bdev faults`), while a host on the same target
//! and another subsystem keeps working. Asserts the NVMe status each fault reaches
//! the host with (a medium error is Unrecovered Read Error or Write Fault with DNR,
//! a full device Capacity Exceeded with DNR), that a failed write lands nothing and a
//! torn one only a prefix, that a delayed request still completes, that under a mix of
//! failing writes every acknowledged block reads back as acknowledged, and that a bad
//! rule is refused with what to change and leaves the rules as they were.
#![cfg(feature = "e2e")]

use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_e2e::nvme_host::HostController;
use lightpool_e2e::{e2e_dir, free_port, release_binary, HostProcess};
use lightpool_spec::nvme::io_opcode;
use lightpool_spec::status::{generic, media, sct, Status};

const NQN: &str = "nqn.2024-01.io.lightpool:faults";
const OTHER: &str = "nqn.2024-01.io.lightpool:faults-other";
const BS: u32 = 512;

/// `lightpool --socket API bdev faults ARGS`: whether it succeeded, and what it
/// said.
fn faults(api: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(release_binary("lightpool").expect("built"))
        .args(["--socket", api, "bdev", "faults"])
        .args(args)
        .output()
        .expect("run lightpool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn set(api: &str, rules: &[&str]) {
    let mut a = vec!["f"];
    if rules.is_empty() {
        a.push("--clear");
    }
    a.extend_from_slice(rules);
    let (ok, out) = faults(api, &a);
    assert!(ok, "faults {rules:?}: {out}");
}

/// Blocks `lba..lba+n` of round `gen`: each block names itself and the round.
fn blocks(lba: u64, n: u32, gen: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((n * BS) as usize);
    for b in 0..u64::from(n) {
        for i in 0..u64::from(BS) {
            v.push(((lba + b).wrapping_mul(131) ^ i.wrapping_mul(7) ^ (u64::from(gen) * 29)) as u8);
        }
    }
    v
}

fn is(st: Status, sct_want: u8, sc_want: u8, dnr: bool) -> bool {
    st.sct() == sct_want && st.sc() == sc_want && st.dnr() == dnr
}

#[test]
fn faults_reach_the_host_with_the_right_status_and_nothing_acknowledged_is_lost() {
    let dir = e2e_dir().expect("e2e dir");
    let port = free_port().expect("port");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = dir.join("faults.toml");
    let control = dir.join("faults.sock");
    let api = control.with_extension("api.sock").display().to_string();
    let _ = std::fs::remove_file(&control);
    std::fs::write(
        &config,
        format!(
            "[target]\ncores = [0]\n[[listener]]\naddress = \"127.0.0.1:{port}\"\n\
             [[bdev]]\nname = \"r\"\nram = \"16MiB\"\nhugepages = false\n\
             [[bdev]]\nname = \"f\"\nfault = \"r\"\nfaults = [\"read:eio,lba=1000-1000\"]\n\
             [[bdev]]\nname = \"other\"\nram = \"16MiB\"\nhugepages = false\n\
             [[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\nbdev = \"f\"\n\
             [[subsystem]]\nnqn = \"{OTHER}\"\n[[subsystem.namespace]]\nnsid = 1\nbdev = \"other\"\n"
        ),
    )
    .expect("config");
    let mut cmd = Command::new(release_binary("lightpool-target").expect("built"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--control-socket")
        .arg(&control);
    let _target = HostProcess::spawn_listening("faults", cmd, addr, Duration::from_secs(30))
        .expect("the target starts");
    let mut c = HostController::connect(addr, NQN, 1).expect("connect");
    let mut o = HostController::connect(addr, OTHER, 1).expect("connect the other");
    let q = &mut c.io[0];
    // The other subsystem keeps working whatever the fault device does.
    let mut other_round = 0u8;
    let mut other_works = |o: &mut HostController| {
        other_round = other_round.wrapping_add(1);
        let d = blocks(7, 8, other_round);
        let (st, _) = o.io[0]
            .command(1, io_opcode::WRITE, 7, 8, BS, Some(&d))
            .expect("other write");
        assert!(st.is_success(), "the other subsystem's write: {st}");
        let (st, got) = o.io[0]
            .command(1, io_opcode::READ, 7, 8, BS, None)
            .expect("other read");
        assert!(
            st.is_success() && got == d,
            "the other subsystem's read: {st}"
        );
    };

    // The rule from the configuration: one block fails to read, with the media status.
    let (st, _) = q
        .command(1, io_opcode::READ, 1000, 1, BS, None)
        .expect("read");
    assert!(
        is(st, sct::MEDIA, media::UNRECOVERED_READ_ERROR, true),
        "a medium error on read: {st}"
    );
    let (st, _) = q
        .command(1, io_opcode::READ, 992, 8, BS, None)
        .expect("read");
    assert!(st.is_success(), "blocks beside it read: {st}");
    other_works(&mut o);

    // A failed write lands nothing and says Write Fault; the next one lands.
    set(&api, &["write:eio,count=1"]);
    let d = blocks(10, 8, 1);
    let (st, _) = q
        .command(1, io_opcode::WRITE, 10, 8, BS, Some(&d))
        .expect("write");
    assert!(is(st, sct::MEDIA, media::WRITE_FAULT, true), "{st}");
    let (_, got) = q
        .command(1, io_opcode::READ, 10, 8, BS, None)
        .expect("read");
    assert_eq!(
        got,
        vec![0u8; 8 * BS as usize],
        "a failed write landed nothing"
    );
    let (st, _) = q
        .command(1, io_opcode::WRITE, 10, 8, BS, Some(&d))
        .expect("write");
    assert!(st.is_success(), "count=1: the next write lands: {st}");
    let (_, got) = q
        .command(1, io_opcode::READ, 10, 8, BS, None)
        .expect("read");
    assert_eq!(got, d);
    let (_, shown) = faults(&api, &["f"]);
    assert!(
        shown.contains("write:eio,count=1") && shown.contains("fired        1"),
        "{shown}"
    );

    // A full device: Capacity Exceeded with DNR; reads still served.
    set(&api, &["write+zeroes:full"]);
    let (st, _) = q
        .command(1, io_opcode::WRITE, 10, 8, BS, Some(&blocks(10, 8, 2)))
        .expect("write");
    assert!(
        is(st, sct::GENERIC, generic::CAPACITY_EXCEEDED, true),
        "{st}"
    );
    let (st, got) = q
        .command(1, io_opcode::READ, 10, 8, BS, None)
        .expect("read");
    assert!(
        st.is_success() && got == d,
        "a full device still reads: {st}"
    );
    other_works(&mut o);

    // A torn write: Write Fault, and only a prefix of its blocks holds the new data.
    set(&api, &["write:torn"]);
    for round in 3..8u8 {
        let before = q
            .command(1, io_opcode::READ, 10, 8, BS, None)
            .expect("read")
            .1;
        let new = blocks(10, 8, round);
        let (st, _) = q
            .command(1, io_opcode::WRITE, 10, 8, BS, Some(&new))
            .expect("write");
        assert!(is(st, sct::MEDIA, media::WRITE_FAULT, true), "{st}");
        let after = q
            .command(1, io_opcode::READ, 10, 8, BS, None)
            .expect("read")
            .1;
        let landed: Vec<bool> = (0..8)
            .map(|b| {
                let r = b * BS as usize..(b + 1) * BS as usize;
                if after[r.clone()] == new[r.clone()] {
                    true
                } else {
                    assert_eq!(
                        after[r.clone()],
                        before[r],
                        "block {b} is neither old nor new"
                    );
                    false
                }
            })
            .collect();
        let prefix = landed.iter().take_while(|x| **x).count();
        assert!(
            prefix < 8 && landed[prefix..].iter().all(|x| !x),
            "{landed:?}"
        );
    }

    // A delay: the request completes late, and right.
    set(&api, &["read:delay=300ms,count=1"]);
    let t = Instant::now();
    let (st, _) = q
        .command(1, io_opcode::READ, 10, 8, BS, None)
        .expect("read");
    assert!(st.is_success(), "{st}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    other_works(&mut o);

    // A bad rule is refused with what to change; the rules stay as they were.
    let (ok, out) = faults(&api, &["f", "reed:eio"]);
    assert!(!ok && out.contains("unknown operation \"reed\""), "{out}");
    let (ok, out) = faults(&api, &["nosuch", "write:eio"]);
    assert!(!ok && out.contains("no fault device \"nosuch\""), "{out}");
    let (_, shown) = faults(&api, &["f"]);
    assert!(shown.contains("read:delay=300ms,count=1"), "{shown}");

    // Under failing and torn single-block writes, every acknowledged block reads back
    // as acknowledged (a block whose write failed keeps its acknowledged contents).
    set(&api, &["write:eio,every=5", "write:torn,every=3"]);
    let mut acked = [0u8; 64];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut ok_writes, mut failed) = (0, 0);
    for i in 0..600u32 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let lba = 2000 + rng % 64;
        let gen = (i % 250 + 1) as u8;
        let (st, _) = q
            .command(1, io_opcode::WRITE, lba, 1, BS, Some(&blocks(lba, 1, gen)))
            .expect("write");
        if st.is_success() {
            acked[(lba - 2000) as usize] = gen;
            ok_writes += 1;
        } else {
            assert!(is(st, sct::MEDIA, media::WRITE_FAULT, true), "{st}");
            failed += 1;
        }
    }
    assert!(
        ok_writes > 100 && failed > 100,
        "{ok_writes} acknowledged, {failed} failed"
    );
    set(&api, &[]);
    for (i, gen) in acked.iter().enumerate() {
        let lba = 2000 + i as u64;
        let (st, got) = q
            .command(1, io_opcode::READ, lba, 1, BS, None)
            .expect("read");
        assert!(st.is_success(), "{st}");
        let want = if *gen == 0 {
            vec![0u8; BS as usize]
        } else {
            blocks(lba, 1, *gen)
        };
        assert!(
            got == want,
            "block {lba}: not what was acknowledged (round {gen})"
        );
    }
    other_works(&mut o);
}
