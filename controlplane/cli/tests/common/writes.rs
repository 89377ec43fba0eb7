//! A writer through one path of volume v1 (the project's NVMe/TCP host) that
//! remembers what was acknowledged, and the check that every block read back holds
//! it: for the migration tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lightpool_e2e::nvme_host::{pattern, HostController};

pub const NQN: &str = "nqn.2024-01.io.lightpool:volume:v1";

/// What a writer knows of each block: the last write acknowledged, and one sent
/// whose answer never came (the connection went).
#[derive(Default, Clone)]
pub struct Written {
    pub acked: BTreeMap<u64, u64>,
    pub unknown: BTreeMap<u64, u64>,
    pub writes: u64,
}

/// Writes rounds of `lbas` through `addr` until `stop` or the path refuses (ANA
/// inaccessible) or goes (the subsystem deleted).
pub fn writer(
    addr: SocketAddr,
    lbas: Vec<u64>,
    bs: u32,
    first_gen: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Written> {
    std::thread::spawn(move || {
        let mut w = Written::default();
        let mut h = HostController::connect(addr, NQN, 1).expect("connect the writer");
        let mut gen = first_gen;
        'rounds: while !stop.load(Ordering::Relaxed) {
            for chunk in lbas.chunks(16) {
                let blocks: Vec<(u64, u64)> = chunk.iter().map(|l| (*l, gen)).collect();
                match h.io[0].write_blocks(1, &blocks, bs) {
                    Ok(ok) => {
                        for ((lba, _), ok) in blocks.iter().zip(&ok) {
                            if *ok {
                                w.acked.insert(*lba, gen);
                                w.writes += 1;
                            }
                        }
                        if ok.iter().any(|x| !x) {
                            break 'rounds;
                        }
                    }
                    Err(_) => {
                        for (lba, _) in &blocks {
                            w.unknown.insert(*lba, gen);
                        }
                        break 'rounds;
                    }
                }
            }
            gen += 1;
        }
        w
    })
}

/// Every block read through `addr` holds its last acknowledged write (or the one
/// whose answer was lost).
pub fn verify(addr: SocketAddr, w: &Written, bs: u32, what: &str) {
    let mut h = HostController::connect(addr, NQN, 1).expect("connect the reader");
    let lbas: Vec<u64> = w.acked.keys().copied().collect();
    assert!(!lbas.is_empty(), "{what}: nothing was written");
    for chunk in lbas.chunks(16) {
        let got = h.io[0].read_blocks(1, chunk, bs).expect("read back");
        for (lba, data) in chunk.iter().zip(got) {
            let gen = w.acked[lba];
            let ok = data == pattern(*lba, gen, bs as usize)
                || w.unknown
                    .get(lba)
                    .is_some_and(|g| data == pattern(*lba, *g, bs as usize));
            assert!(ok, "{what}: LBA {lba} does not hold write {gen}");
        }
    }
}
