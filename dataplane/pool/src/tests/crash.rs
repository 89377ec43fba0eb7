//! Crash safety on a device that loses power: random writes to several volumes on
//! several channels, flushes, deallocations, and volumes created, deleted, snapshotted,
//! cloned and grown, until the power goes after a random number of requests (in the
//! middle of any of them); unflushed writes are then dropped, applied or torn. The
//! pool is reopened from what remains: it must open (no cluster owned twice, no
//! unreadable metadata), pass its check, hold every volume whose creation was
//! acknowledged and none whose deletion was, and every block must hold a value it may
//! hold: the last one made durable (acknowledged, and flushed when the device has a
//! volatile cache) or one written after it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use lightpool_bdev::testing::AlignedBuf;
use lightpool_bdev::{Bdev, IoChannel, IoOp, IoRequest, IoStatus};

use super::fault::{FaultBdev, Rng};
use super::*;

const BS: usize = 512;
const DEV: usize = 24 << 20;
const CLUSTER: u32 = 16 << 10;
const CB: u64 = (CLUSTER as u64) / BS as u64;

/// What one block may hold: `vals[floor..]`.
#[derive(Clone, Debug)]
struct Hist {
    vals: Vec<u32>,
    floor: usize,
    /// Index of the last acknowledged value.
    acked: usize,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            vals: vec![0],
            floor: 0,
            acked: 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct VolModel {
    blocks: u64,
    hist: BTreeMap<u64, Hist>,
}

impl VolModel {
    fn new(blocks: u64) -> VolModel {
        VolModel {
            blocks,
            hist: BTreeMap::new(),
        }
    }
    /// A copy holding exactly the last acknowledged values (a snapshot's).
    fn frozen(&self) -> VolModel {
        let mut m = VolModel::new(self.blocks);
        for (&lba, h) in &self.hist {
            m.hist.insert(
                lba,
                Hist {
                    vals: vec![h.vals[h.acked]],
                    floor: 0,
                    acked: 0,
                },
            );
        }
        m
    }
}

fn stamp(lba: u64, gen: u32, b: &mut [u8]) {
    b.fill(0);
    if gen == 0 {
        return;
    }
    b[..8].copy_from_slice(b"LPCRASH1");
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..20].copy_from_slice(&gen.to_le_bytes());
    for (i, x) in b[24..].iter_mut().enumerate() {
        *x = (u64::from(gen).wrapping_mul(31) ^ lba ^ i as u64) as u8;
    }
    let crc = crc32c::crc32c(&b[24..]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
}

fn parse(lba: u64, b: &[u8]) -> Result<u32, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    if &b[..8] != b"LPCRASH1" {
        return Err(format!("block {lba}: neither zeroes nor a stamped block"));
    }
    let at = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let gen = u32::from_le_bytes(b[16..20].try_into().unwrap());
    let crc = u32::from_le_bytes(b[20..24].try_into().unwrap());
    if crc != crc32c::crc32c(&b[24..]) {
        return Err(format!("block {lba}: torn inside a block (gen {gen})"));
    }
    if at != lba {
        return Err(format!("block {lba}: holds block {at}'s data (gen {gen})"));
    }
    Ok(gen)
}

/// A write in flight: volume, channel, tag, lba, blocks, history indices, buffer.
type Pending = (String, usize, u64, u64, u32, Vec<usize>, AlignedBuf);

struct Served {
    _dev: Arc<VolumeBdev>,
    chans: Vec<Box<dyn IoChannel>>,
}

struct Run {
    rng: Rng,
    p: Arc<Pool>,
    dev: Arc<FaultBdev>,
    volatile: bool,
    model: BTreeMap<String, VolModel>,
    maybe: BTreeSet<String>,
    served: BTreeMap<String, Served>,
    gen: u32,
    names: u32,
}

impl Run {
    fn serve(&mut self, name: &str) {
        if let Ok(v) = self.p.open_volume(name) {
            let chans = (0..2).map(|_| v.open_channel().unwrap()).collect();
            self.served
                .insert(name.to_string(), Served { _dev: v, chans });
        }
    }

    fn writable(&self) -> Vec<String> {
        self.served.keys().cloned().collect()
    }

    /// A batch of writes over the served volumes' channels, all polled to completion.
    fn writes(&mut self) {
        let names = self.writable();
        if names.is_empty() {
            return;
        }
        // (volume, channel, tag, lba, blocks, history indices, buffer)
        let mut pending: Vec<Pending> = Vec::new();
        let mut busy: BTreeSet<(String, u64)> = BTreeSet::new();
        for tag in 0..self.rng.below(24) + 1 {
            let name = names[self.rng.below(names.len() as u64) as usize].clone();
            let m = self.model.get_mut(&name).unwrap();
            let n = self.rng.below(8) + 1;
            let lba = self.rng.below(m.blocks - n);
            if (lba..lba + n).any(|b| busy.contains(&(name.clone(), b))) {
                continue;
            }
            self.gen += 1;
            let gen = self.gen;
            let mut buf = AlignedBuf::new(n as usize * BS);
            let mut idxs = Vec::new();
            for i in 0..n {
                stamp(
                    lba + i,
                    gen,
                    &mut buf.as_mut_slice()[i as usize * BS..(i as usize + 1) * BS],
                );
                busy.insert((name.clone(), lba + i));
                let h = m.hist.entry(lba + i).or_default();
                h.vals.push(gen);
                idxs.push(h.vals.len() - 1);
            }
            let c = self.rng.below(2) as usize;
            let req = IoRequest::rw(IoOp::Write, lba, n as u32, buf.ptr(), buf.len(), tag);
            // SAFETY: the buffer is kept in `pending` until every completion is in.
            unsafe { self.served.get_mut(&name).unwrap().chans[c].submit(req) };
            pending.push((name, c, tag, lba, n as u32, idxs, buf));
        }
        // Poll every channel (as reactors would) until all are done.
        let mut results: BTreeMap<(String, usize, u64), IoStatus> = BTreeMap::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while results.len() < pending.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "writes never completed"
            );
            for (name, s) in self.served.iter_mut() {
                for (c, ch) in s.chans.iter_mut().enumerate() {
                    ch.poll(&mut |tag, st| {
                        assert!(results.insert((name.clone(), c, tag), st).is_none());
                    });
                }
            }
        }
        for (name, c, tag, lba, n, idxs, _buf) in &pending {
            let st = results[&(name.clone(), *c, *tag)];
            if st == IoStatus::Success {
                let m = self.model.get_mut(name).unwrap();
                for i in 0..u64::from(*n) {
                    let h = m.hist.get_mut(&(lba + i)).unwrap();
                    h.acked = idxs[i as usize];
                    if !self.volatile {
                        h.floor = h.floor.max(idxs[i as usize]);
                    }
                }
            }
        }
    }

    /// A flush on one channel; on success, every write acknowledged before it is
    /// durable.
    fn flush(&mut self) {
        let names = self.writable();
        if names.is_empty() {
            return;
        }
        let name = names[self.rng.below(names.len() as u64) as usize].clone();
        let snap: Vec<(String, u64, usize)> = self
            .model
            .iter()
            .flat_map(|(n, m)| m.hist.iter().map(move |(&l, h)| (n.clone(), l, h.acked)))
            .collect();
        let ch = &mut self.served.get_mut(&name).unwrap().chans[0];
        if flush(ch.as_mut()) == IoStatus::Success {
            // A flush of the pool device covers every volume of the pool.
            for (n, l, a) in snap {
                if let Some(h) = self.model.get_mut(&n).and_then(|m| m.hist.get_mut(&l)) {
                    h.floor = h.floor.max(a);
                }
            }
        }
    }

    /// Deallocates a whole cluster of a served volume.
    fn deallocate(&mut self) {
        let names = self.writable();
        if names.is_empty() {
            return;
        }
        let name = names[self.rng.below(names.len() as u64) as usize].clone();
        let m = self.model.get_mut(&name).unwrap();
        let c = self.rng.below(m.blocks / CB);
        let mut idxs = Vec::new();
        for b in c * CB..(c + 1) * CB {
            let h = m.hist.entry(b).or_default();
            h.vals.push(0);
            idxs.push(h.vals.len() - 1);
        }
        let ch = &mut self.served.get_mut(&name).unwrap().chans[1];
        let st = zeroes(ch.as_mut(), IoOp::Deallocate, c * CB, CB as u32);
        if st == IoStatus::Success {
            let m = self.model.get_mut(&name).unwrap();
            for (k, b) in (c * CB..(c + 1) * CB).enumerate() {
                let h = m.hist.get_mut(&b).unwrap();
                h.acked = idxs[k];
                if !self.volatile {
                    h.floor = h.floor.max(idxs[k]);
                }
            }
        }
    }

    fn control(&mut self) {
        self.names += 1;
        let fresh = format!("n{}", self.names);
        let names: Vec<String> = self.model.keys().cloned().collect();
        let pick = |r: &mut Rng| names[r.below(names.len() as u64) as usize].clone();
        match self.rng.below(6) {
            0 | 1 => {
                let blocks = (self.rng.below(8) + 2) * CB * 8;
                match self
                    .p
                    .create(&fresh, blocks * BS as u64, self.rng.chance(80))
                {
                    Ok(_) => {
                        self.model.insert(fresh.clone(), VolModel::new(blocks));
                        self.serve(&fresh);
                    }
                    Err(_) => {
                        self.maybe.insert(fresh);
                    }
                }
            }
            2 if !names.is_empty() => {
                let v = pick(&mut self.rng);
                if !self.served.contains_key(&v) {
                    return;
                }
                match self.p.snapshot(&v, &fresh) {
                    Ok(_) => {
                        let f = self.model[&v].frozen();
                        self.model.insert(fresh, f);
                    }
                    Err(_) => {
                        self.maybe.insert(fresh);
                    }
                }
            }
            3 if !names.is_empty() => {
                let s = pick(&mut self.rng);
                if self.served.contains_key(&s) {
                    return;
                }
                match self.p.clone_snapshot(&s, &fresh) {
                    Ok(_) => {
                        let f = self.model[&s].clone();
                        self.model.insert(fresh.clone(), f);
                        self.serve(&fresh);
                    }
                    Err(_) => {
                        self.maybe.insert(fresh);
                    }
                }
            }
            4 if names.len() > 1 => {
                let v = pick(&mut self.rng);
                self.served.remove(&v);
                let m = self.model.remove(&v).expect("modelled");
                match self.p.delete(&v) {
                    Ok(()) => {}
                    Err(crate::PoolError::HasClones { .. }) => {
                        self.model.insert(v, m);
                    }
                    Err(_) => {
                        self.maybe.insert(v);
                    }
                }
            }
            5 if !names.is_empty() => {
                let v = pick(&mut self.rng);
                if !self.served.contains_key(&v) {
                    return;
                }
                let blocks = self.model[&v].blocks + CB * 8;
                if self.p.grow(&v, blocks * BS as u64).is_ok() {
                    self.model.get_mut(&v).unwrap().blocks = blocks;
                }
            }
            _ => {}
        }
    }
}

/// Checks the reopened pool against the model.
fn verify(
    p: &Arc<Pool>,
    model: &BTreeMap<String, VolModel>,
    maybe: &BTreeSet<String>,
) -> Result<u64, String> {
    let mut written = 0u64;
    p.check().map_err(|e| format!("check: {e}"))?;
    let listed: BTreeSet<String> = p.list().into_iter().map(|v| v.name).collect();
    for name in model.keys() {
        if !listed.contains(name) {
            return Err(format!("volume {name:?} was acknowledged and is gone"));
        }
    }
    for name in &listed {
        if !model.contains_key(name) && !maybe.contains(name) {
            return Err(format!(
                "volume {name:?} was deleted (or never made) and is there"
            ));
        }
    }
    for (name, m) in model {
        let v = p.open_volume(name).map_err(|e| e.to_string())?;
        let mut ch = v.open_channel().unwrap();
        let chunk = 256u64;
        let mut lba = 0;
        while lba < m.blocks {
            let n = chunk.min(m.blocks - lba);
            let buf = AlignedBuf::new(n as usize * BS);
            let st = run1(
                ch.as_mut(),
                IoRequest::rw(IoOp::Read, lba, n as u32, buf.ptr(), buf.len(), 1),
            );
            if st != IoStatus::Success {
                return Err(format!("{name}: read {lba}+{n}: {st:?}"));
            }
            for i in 0..n {
                let b = lba + i;
                let got = parse(b, &buf.as_slice()[i as usize * BS..(i as usize + 1) * BS])
                    .map_err(|e| format!("{name}: {e}"))?;
                let ok = match m.hist.get(&b) {
                    Some(h) => h.vals[h.floor..].contains(&got),
                    None => got == 0,
                };
                if got != 0 {
                    written += 1;
                }
                if !ok {
                    return Err(format!(
                        "{name}: block {b} holds gen {got}, may hold only {:?}",
                        m.hist.get(&b).map(|h| h.vals[h.floor..].to_vec())
                    ));
                }
            }
            lba += n;
        }
    }
    Ok(written)
}

/// What a round did.
#[derive(Debug, Default)]
struct Stats {
    /// The power went during the workload (not after it).
    cut_mid: bool,
    steps: u32,
    volumes: usize,
    blocks_with_data: u64,
}

/// One round: a pool, a workload, a power cut, a reopen, the checks.
fn round(seed: u64, volatile: bool) -> Result<Stats, String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let dev = FaultBdev::new(vec![0; DEV], BS as u32, volatile, rng.next());
    // The mapping log: a ring of 2 or 3 pages (it wraps and fills, and the checkpoint
    // thread folds it during the round), the default, or none (a version 1 pool).
    crate::log::test_pages::set(match seed % 4 {
        0 => Some(0),
        1 => Some(2),
        2 => Some(3),
        _ => None,
    });
    let opened = Pool::open(dev.clone(), "p", &opts(CLUSTER, 300), true);
    crate::log::test_pages::set(None);
    let (p, _) = opened.map_err(|e| e.to_string())?;
    let mut run = Run {
        rng: rng.clone(),
        p,
        dev: dev.clone(),
        volatile,
        model: BTreeMap::new(),
        maybe: BTreeSet::new(),
        served: BTreeMap::new(),
        gen: 0,
        names: 0,
    };
    for name in ["a", "b"] {
        run.p
            .create(name, 8 * CB * 8 * BS as u64, name == "a")
            .map_err(|e| e.to_string())?;
        run.model.insert(name.into(), VolModel::new(8 * CB * 8));
        run.serve(name);
    }
    if volatile && seed.is_multiple_of(2) {
        run.dev.cut_at_flush(rng.below(300));
    } else {
        run.dev.cut_after(rng.below(3000) + 1);
    }
    let mut steps = 0;
    while !run.dev.is_dead() && steps < 400 {
        match run.rng.below(20) {
            0 => run.flush(),
            1 => run.deallocate(),
            2 | 3 => run.control(),
            _ => run.writes(),
        }
        steps += 1;
    }
    let cut_mid = run.dev.is_dead();
    run.dev.cut_now();
    let image = run.dev.image();
    let Run {
        p,
        served,
        model,
        maybe,
        ..
    } = run;
    drop(served);
    crash(p);
    let dev2 = FaultBdev::new(image, BS as u32, volatile, seed);
    let (p, _) = Pool::open(dev2, "p", &PoolOptions::default(), false)
        .map_err(|e| format!("reopen: {e}"))?;
    let blocks_with_data = verify(&p, &model, &maybe)?;
    Ok(Stats {
        cut_mid,
        steps,
        volumes: model.len(),
        blocks_with_data,
    })
}

/// `n` rounds, or `LIGHTPOOL_POOL_FAULT_ROUNDS` (a longer run by hand).
fn rounds(volatile: bool, n: u64) {
    let n = std::env::var("LIGHTPOOL_POOL_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    let mut failed = Vec::new();
    let (mut mid, mut blocks, mut vols) = (0, 0, 0);
    for seed in 1..=n {
        match round(seed, volatile) {
            Ok(s) => {
                mid += u32::from(s.cut_mid);
                blocks += s.blocks_with_data;
                vols += s.volumes;
                let _ = s.steps;
            }
            Err(e) => failed.push(format!("seed {seed}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {n} rounds failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{n} rounds (volatile cache: {volatile}): {mid} cut during the workload, {vols} volumes and {blocks} written blocks checked after the cut");
    // The rounds must exercise what they claim to.
    assert!(
        mid >= n as u32 / 2,
        "only {mid} of {n} rounds lost power mid-workload"
    );
    assert!(
        blocks > 1000 * n,
        "only {blocks} blocks with data were checked"
    );
}

/// A device whose completed writes are durable (RAM, or a SIGKILL of the target):
/// only writes in flight at the cut are lost or torn.
#[test]
fn power_cuts_without_a_volatile_cache_lose_no_acknowledged_write() {
    rounds(false, 40);
}

/// A device with a volatile cache: everything not flushed may be lost or torn.
#[test]
fn power_cuts_with_a_volatile_cache_lose_no_flushed_write() {
    rounds(true, 40);
}

#[test]
fn stamps_round_trip() {
    let mut b = vec![0u8; BS];
    stamp(9, 4, &mut b);
    assert_eq!(parse(9, &b), Ok(4));
    assert!(parse(8, &b).is_err());
    b[300] ^= 1;
    assert!(parse(9, &b).is_err());
    assert_eq!(parse(1, &[0; BS]), Ok(0));
    let _: Option<Arc<dyn Bdev>> = None;
}
