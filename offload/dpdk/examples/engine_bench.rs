//! The DPDK engine alone on net_ring (a port whose TX loops back to its RX): packets
//! per second moved rx -> tx, for 64-byte and 4 KiB frames, two ways:
//!
//! - `burst`: `Queue::rx_burst` then `Queue::tx_burst` of the same mbufs, MAC
//!   addresses swapped (what an l2fwd does; the floor cost of the engine; only the
//!   headers are touched, so its Gbit/s for 4 KiB frames is pointer passing, not copying);
//! - `device`: through smoltcp's `phy::Device` tokens, each received frame copied into
//!   a fresh TX mbuf (what the TCP stack's path costs per frame, without TCP).
//!
//! Run (no root needed; virtual devices, --no-huge):
//!   cargo run --release -p lightpool-dpdk --features dpdk --example engine_bench [SECONDS]

use std::time::{Duration, Instant};

use lightpool_dpdk::{Eal, EalConfig, Hugepages, Mbuf, Mempool, Port, PortConfig, Queue};
use smoltcp::phy::{Device, RxToken, TxToken};
use smoltcp::time::Instant as SmolInstant;

/// Frames in flight on the loop.
const INFLIGHT: usize = 512;
const BURST: usize = 32;

fn seed(q: &mut Queue, pool: &Mempool, size: usize) {
    let mut pkts: Vec<Mbuf> = (0..INFLIGHT)
        .map(|i| {
            let mut m = Mbuf::alloc(pool).expect("mbuf for the seed");
            let buf = m.append(size).expect("frame fits the mbuf");
            buf.fill(i as u8);
            buf[12] = 0x08; // EtherType IPv4, for the look of it
            buf[13] = 0x00;
            m
        })
        .collect();
    while !pkts.is_empty() {
        q.tx_burst(&mut pkts);
    }
}

fn drain(q: &mut Queue) {
    let mut v = Vec::new();
    while q.rx_burst(&mut v, 256) > 0 {
        v.clear();
    }
}

fn bench_burst(q: &mut Queue, pool: &Mempool, size: usize, secs: f64) -> u64 {
    seed(q, pool, size);
    let mut v: Vec<Mbuf> = Vec::with_capacity(BURST);
    let mut moved = 0u64;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..1024 {
            q.rx_burst(&mut v, BURST);
            for m in &mut v {
                let d = m.data_mut();
                for i in 0..6 {
                    d.swap(i, i + 6);
                }
            }
            moved += q.tx_burst(&mut v) as u64;
            v.clear(); // none left: net_ring takes what fits its ring
        }
    }
    drain(q);
    moved
}

fn bench_device(q: &mut Queue, pool: &Mempool, size: usize, secs: f64) -> u64 {
    seed(q, pool, size);
    let mut moved = 0u64;
    let t = SmolInstant::from_millis(0);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        for _ in 0..1024 {
            if let Some((rx, tx)) = q.receive(t) {
                rx.consume(|frame| tx.consume(frame.len(), |out| out.copy_from_slice(frame)));
                moved += 1;
            } else {
                q.flush();
            }
        }
    }
    q.flush();
    drain(q);
    moved
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let cfg = EalConfig {
        vdevs: vec!["net_ring0".into()],
        hugepages: Hugepages::Auto,
        memory_mb: 512,
        log_level: Some("warning".into()),
        ..EalConfig::default()
    };
    let eal = match Eal::init(&cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine_bench: {e}");
            std::process::exit(1);
        }
    };
    let run = || -> Result<(), lightpool_dpdk::DpdkError> {
        let pool = Mempool::new(&eal, "bench_pool", 4095, 256, 4096)?;
        let (port, mut queues) = Port::open(
            &eal,
            "net_ring0",
            &PortConfig {
                burst: BURST,
                ..PortConfig::default()
            },
            pool.clone(),
        )?;
        let q = &mut queues[0];
        let start_avail = pool.available();
        println!(
            "DPDK engine on net_ring ({} in flight, bursts of {BURST}, {secs} s each, EAL {:?})",
            INFLIGHT,
            eal.args()
        );
        for size in [64usize, 4096] {
            for (name, f) in [
                (
                    "burst ",
                    bench_burst as fn(&mut Queue, &Mempool, usize, f64) -> u64,
                ),
                ("device", bench_device),
            ] {
                let t0 = Instant::now();
                let n = f(q, &pool, size, secs);
                let dt = t0.elapsed().as_secs_f64();
                let pps = n as f64 / dt;
                println!(
                    "rx->tx {name} {size:>5} B: {:>7.2} Mpps  {:>7.2} Gbit/s",
                    pps / 1e6,
                    pps * size as f64 * 8.0 / 1e9
                );
                assert_eq!(
                    pool.available(),
                    start_avail,
                    "mbufs leaked in {name} {size}"
                );
            }
        }
        let st = port.stats()?;
        println!("port: {} packets out, {} in", st.tx_packets, st.rx_packets);
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("engine_bench: {e}");
        std::process::exit(1);
    }
}
