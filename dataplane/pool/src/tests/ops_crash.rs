//! Every crash point of every operation: for each pool operation, the power goes at
//! each of the requests the operation makes to the device in turn (with and without a
//! volatile cache). The pool must open, pass its check, show the operation either not
//! done or done (never half), and every volume must hold exactly its data.

use std::collections::BTreeMap;
use std::sync::Arc;

use lightpool_bdev::{Bdev, IoStatus};

use super::fault::FaultBdev;
use super::*;
use crate::PoolError;

const BS: u32 = 512;
const CLUSTER: u32 = 16 << 10;
const CB: u64 = CLUSTER as u64 / BS as u64;
const VOL: u64 = 64 * CB * BS as u64;

/// What a volume holds: (lba, blocks, seed) runs; the rest is zeroes.
type Content = Vec<(u64, u32, u8)>;

fn write_runs(p: &Arc<Pool>, name: &str, runs: &Content) {
    let v = p.open_volume(name).unwrap();
    let mut ch = v.open_channel().unwrap();
    for &(lba, n, seed) in runs {
        assert_eq!(put(ch.as_mut(), BS, lba, n, seed), IoStatus::Success);
    }
    assert_eq!(flush(ch.as_mut()), IoStatus::Success);
}

/// Whether `name` reads exactly `runs` (later runs win), zeroes elsewhere.
fn reads(p: &Arc<Pool>, name: &str, runs: &Content, blocks: u64) -> Result<(), String> {
    let v = p.open_volume(name).map_err(|e| e.to_string())?;
    let mut ch = v.open_channel().unwrap();
    let mut want: BTreeMap<u64, u8> = BTreeMap::new();
    for &(lba, n, seed) in runs {
        for b in lba..lba + u64::from(n) {
            want.insert(b, seed);
        }
    }
    for b in 0..blocks {
        let ok = holds(ch.as_mut(), BS, b, 1, want.get(&b).copied());
        if !ok {
            return Err(format!(
                "{name}: block {b} does not hold {:?}",
                want.get(&b)
            ));
        }
    }
    Ok(())
}

/// The pool every case starts from: `v` (thin, data in a few clusters), `t` (thick),
/// `s0` a snapshot of an old `v`... made as: `o` written, snapshotted as `s0`, `o`
/// written again; `c0` a clone of `s0` with writes of its own.
struct Start {
    v: Content,
    t: Content,
    s0: Content,
    o: Content,
    c0: Content,
}

fn start(dev: &Arc<FaultBdev>) -> (Arc<Pool>, Start) {
    let (p, _) = Pool::open(dev.clone(), "p", &opts(CLUSTER, 400), true).unwrap();
    let v: Content = vec![
        (0, 40, 1),
        (CB + 3, 5, 2),
        (7 * CB, CB as u32, 3),
        (63 * CB, 4, 4),
    ];
    let t: Content = vec![(10, 10, 5)];
    let s0: Content = vec![(0, 2 * CB as u32, 6), (20 * CB, 10, 7)];
    let o_after: Content = vec![(5, 3, 8), (30 * CB, 1, 9)];
    let c0_own: Content = vec![(CB + 1, 2, 10), (40 * CB, 5, 11)];
    p.create("v", VOL, true).unwrap();
    p.create("t", VOL, false).unwrap();
    p.create("o", VOL, true).unwrap();
    write_runs(&p, "v", &v);
    write_runs(&p, "t", &t);
    write_runs(&p, "o", &s0);
    p.snapshot("o", "s0").unwrap();
    write_runs(&p, "o", &o_after);
    p.clone_snapshot("s0", "c0").unwrap();
    write_runs(&p, "c0", &c0_own);
    let mut o = s0.clone();
    o.extend(o_after);
    let mut c0 = s0.clone();
    c0.extend(c0_own);
    (p, Start { v, t, s0, o, c0 })
}

/// The operations, each with what must hold after a crash: `done` says whether it took
/// effect (from the names listed), and the contents each volume must then have.
#[derive(Debug, Clone, Copy)]
enum Case {
    CreateThin,
    CreateThick,
    Delete,
    Snapshot,
    Clone,
    Grow,
    Rename,
    DeleteSnapshotWithClone,
    Inflate,
}

fn run_op(p: &Arc<Pool>, c: Case) -> Result<(), PoolError> {
    match c {
        Case::CreateThin => p.create("n", VOL, true).map(drop),
        Case::CreateThick => p.create("n", 4 * CB * u64::from(BS), false).map(drop),
        Case::Delete => p.delete("v"),
        Case::Snapshot => p.snapshot("v", "s").map(drop),
        Case::Clone => p.clone_snapshot("s0", "c").map(drop),
        Case::Grow => p.grow("v", 2 * VOL).map(drop),
        Case::Rename => p.rename("v", "w").map(drop),
        Case::DeleteSnapshotWithClone => {
            p.delete("o")?;
            p.delete("s0")
        }
        Case::Inflate => p.inflate("c0").map(drop),
    }
}

/// Checks the reopened pool for case `c`.
fn after(p: &Arc<Pool>, c: Case, s: &Start) -> Result<bool, String> {
    p.check().map_err(|e| format!("check: {e}"))?;
    let names: Vec<String> = p.list().into_iter().map(|v| v.name).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    let base = ["c0", "o", "s0", "t", "v"];
    let done = match c {
        Case::CreateThin | Case::CreateThick => has("n"),
        Case::Delete => !has("v"),
        Case::Snapshot => has("s"),
        Case::Clone => has("c"),
        Case::Grow => p.volume_info("v").map_err(|e| e.to_string())?.size == 2 * VOL,
        Case::Rename => has("w"),
        Case::DeleteSnapshotWithClone => !has("s0"),
        Case::Inflate => p
            .volume_info("c0")
            .map_err(|e| e.to_string())?
            .parent
            .is_none(),
    };
    // The volume set is the one before or the one after.
    let mut want: Vec<&str> = base.to_vec();
    match (c, done) {
        (Case::CreateThin | Case::CreateThick, true) => want.push("n"),
        (Case::Delete, true) => want.retain(|&x| x != "v"),
        (Case::Snapshot, true) => want.push("s"),
        (Case::Clone, true) => want.push("c"),
        (Case::Rename, true) => {
            want.retain(|&x| x != "v");
            want.push("w")
        }
        (Case::DeleteSnapshotWithClone, true) => want.retain(|&x| x != "s0" && x != "o"),
        // "o" may be gone (the first deletion) while "s0" is not.
        (Case::DeleteSnapshotWithClone, false) if !has("o") => want.retain(|&x| x != "o"),
        _ => {}
    }
    want.sort_unstable();
    if names != want {
        return Err(format!(
            "volumes {names:?}, expected {want:?} (done: {done})"
        ));
    }
    let blocks = VOL / u64::from(BS);
    let vname = if matches!(c, Case::Rename) && done {
        "w"
    } else {
        "v"
    };
    if has(vname) {
        reads(p, vname, &s.v, blocks)?;
    }
    reads(p, "t", &s.t, blocks)?;
    reads(p, "c0", &s.c0, blocks)?;
    if has("s0") {
        reads(p, "s0", &s.s0, blocks)?;
    }
    if has("o") {
        reads(p, "o", &s.o, blocks)?;
    }
    if has("s") {
        reads(p, "s", &s.v, blocks)?;
    }
    if has("c") {
        reads(p, "c", &s.s0, blocks)?;
    }
    if has("n") {
        reads(p, "n", &Vec::new(), 4 * CB)?;
    }
    Ok(done)
}

/// Requests case `c` makes to the device when nothing fails.
fn requests(c: Case, volatile: bool) -> u64 {
    let dev = FaultBdev::new(vec![0; 16 << 20], BS, volatile, 1);
    let (p, _) = start(&dev);
    let before = dev.submitted();
    run_op(&p, c).unwrap();
    dev.submitted() - before
}

fn every_cut(c: Case, volatile: bool) -> (u64, u32, u32) {
    let n = requests(c, volatile);
    let (mut done, mut not) = (0, 0);
    for k in 0..=n {
        let dev = FaultBdev::new(vec![0; 16 << 20], BS, volatile, k + 1);
        let (p, s) = start(&dev);
        dev.cut_after(k);
        let res = run_op(&p, c);
        dev.cut_now();
        let image = dev.image();
        crash(p);
        let dev2 = FaultBdev::new(image, BS, volatile, 9);
        let (p, _) = Pool::open(dev2, "p", &PoolOptions::default(), false)
            .unwrap_or_else(|e| panic!("{c:?}, cut at request {k} of {n}: reopen: {e}"));
        match after(&p, c, &s) {
            Ok(true) => done += 1,
            Ok(false) => {
                assert!(
                    res.is_err(),
                    "{c:?}, cut at request {k} of {n}: acknowledged but not done"
                );
                not += 1;
            }
            Err(e) => panic!("{c:?} (volatile cache: {volatile}), cut at request {k} of {n}: {e}"),
        }
    }
    (n, done, not)
}

const CASES: [Case; 9] = [
    Case::CreateThin,
    Case::CreateThick,
    Case::Delete,
    Case::Snapshot,
    Case::Clone,
    Case::Grow,
    Case::Rename,
    Case::DeleteSnapshotWithClone,
    Case::Inflate,
];

#[test]
fn every_crash_point_of_every_operation_leaves_it_done_or_not() {
    for volatile in [false, true] {
        for c in CASES {
            let (n, done, not) = every_cut(c, volatile);
            eprintln!("{c:?} (volatile {volatile}): {n} requests; after a cut: done {done}, not done {not}");
            assert!(
                done > 0 && not > 0,
                "{c:?}: the cuts never fell on both sides of the commit"
            );
        }
    }
}

#[test]
fn the_start_state_reads_back() {
    let dev = FaultBdev::new(vec![0; 16 << 20], BS, true, 1);
    let (p, s) = start(&dev);
    let _: &Arc<dyn Bdev> = &(dev.clone() as Arc<dyn Bdev>);
    assert!(!after(&p, Case::CreateThin, &s).unwrap());
}
