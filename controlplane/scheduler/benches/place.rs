//! 10,000 volumes placed onto 1,000 pools, one thread (goal: under 1 s in all).
//! Before criterion's runs, one pass times each decision and prints p50, p99 and
//! the maximum per decision.
//!
//! cargo bench -p lightpool-scheduler --bench place

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use lightpool_model::labels::ZONE_LABEL;
use lightpool_model::quantity::{GIB, TIB};
use lightpool_model::{PlacementHint, PoolHealth, Provisioning};
use lightpool_scheduler::{PoolState, Scheduler, SchedulerConfig, VolumeRequest};

const POOLS: usize = 1_000;
const VOLUMES: usize = 10_000;

/// xorshift64*: a fixed, dependency-free stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cluster() -> Scheduler {
    let s = Scheduler::new(&SchedulerConfig::default()).expect("default profile builds");
    let mut rng = Rng(0x5EED);
    for i in 0..POOLS {
        s.upsert_pool(PoolState {
            name: format!("node-{i:04}"),
            node: format!("node-{i:04}"),
            node_labels: [(ZONE_LABEL.to_string(), format!("zone-{}", i % 10))].into(),
            pool_labels: Default::default(),
            health: if rng.below(50) == 0 {
                PoolHealth::Unknown
            } else {
                PoolHealth::Ready
            },
            unschedulable: false,
            capacity: (4 + rng.below(12)) * TIB,
            over_commit_percent: 150,
            max_remote_volumes: None,
        });
    }
    s
}

fn requests() -> Vec<VolumeRequest> {
    let mut rng = Rng(0xC0FFEE);
    (0..VOLUMES)
        .map(|i| {
            let mut r = VolumeRequest::new(format!("vol-{i:05}"), (10 + rng.below(490)) * GIB);
            r.consumer_node = Some(format!("node-{:04}", rng.below(POOLS as u64)));
            r.placement = match rng.below(10) {
                0 => PlacementHint::MustLocal,
                1 => PlacementHint::MustRemote,
                2 => PlacementHint::PreferRemote,
                _ => PlacementHint::PreferLocal,
            };
            if rng.below(2) == 0 {
                r.provisioning = Provisioning::Thin;
            }
            if i % 3 == 0 {
                r.spread_group = Some(format!("db-{}", i / 9));
            }
            r
        })
        .collect()
}

fn place_all(s: &Scheduler, reqs: &[VolumeRequest]) -> usize {
    reqs.iter()
        .filter_map(|r| s.schedule(r).ok().map(|res| res.commit()))
        .count()
}

fn report_percentiles(reqs: &[VolumeRequest]) {
    let s = cluster();
    let mut times: Vec<Duration> = Vec::with_capacity(reqs.len());
    let start = Instant::now();
    let mut placed = 0;
    for r in reqs {
        let t = Instant::now();
        if let Ok(res) = s.schedule(r) {
            res.commit();
            placed += 1;
        }
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "place {VOLUMES} volumes on {POOLS} pools: {placed} placed, total {total:?}, per decision p50 {:?} p99 {:?} max {:?}",
        pct(0.50),
        pct(0.99),
        times[times.len() - 1]
    );
}

fn bench(c: &mut Criterion) {
    let reqs = requests();
    report_percentiles(&reqs);
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    g.bench_function("place_10k_volumes_on_1k_pools", |b| {
        b.iter_batched(cluster, |s| place_all(&s, &reqs), BatchSize::PerIteration)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
