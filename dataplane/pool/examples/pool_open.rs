//! How long opening a pool of many volumes takes, closed cleanly and after a crash
//! (the replay reads every head and map page, checks every cluster's owner, and zeroes
//! the free clusters). perf/bench-pool.sh runs it; by hand:
//!
//! ```sh
//! cargo run --release -p lightpool-pool --example pool_open -- --volumes 10000
//! cargo run --release -p lightpool-pool --example pool_open -- --volumes 10000 --file /var/tmp/pool.img
//! ```
//!
//! The pool: a sparse device of `--gib` GiB (RAM, or a file through io_uring),
//! 1 MiB clusters, `--volumes` thin volumes of 1 GiB, one block written in each of
//! `--written` of them.

use std::sync::Arc;
use std::time::Instant;

use lightpool_bdev::{Bdev, IoChannel, IoOp, IoRequest, IoStatus};
use lightpool_pool::{OpenReport, Pool, PoolOps, PoolOptions};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn file_arg() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--file")
        .and_then(|i| args.get(i + 1).cloned())
}

fn device(gib: u64) -> Arc<dyn Bdev> {
    match file_arg() {
        Some(path) => {
            let _ = std::fs::remove_file(&path);
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(gib << 30))
                .expect("create the pool file");
            lightpool_bdev_uring::UringBdev::open(
                std::path::Path::new(&path),
                lightpool_bdev_uring::UringOptions::default(),
            )
            .expect("open the pool file")
        }
        None => lightpool_bdev_ram::MallocBdev::new("bench", gib << 30, 4096).expect("RAM device"),
    }
}

/// Submits one request and waits for it.
fn run(ch: &mut dyn IoChannel, req: IoRequest) -> IoStatus {
    // SAFETY: callers keep the buffer alive across this call, which waits for the
    // completion.
    unsafe { ch.submit(req) };
    let mut st = None;
    while st.is_none() {
        ch.poll(&mut |_, s| st = Some(s));
    }
    st.expect("completed")
}

fn main() {
    let volumes = arg("--volumes", 10_000);
    let written = arg("--written", volumes / 5);
    let gib = arg("--gib", 64);
    let dev = device(gib);
    let opts = PoolOptions {
        cluster_size: 1 << 20,
        overcommit: 100_000,
        max_volumes: volumes as u32 + 100,
        md_pages: Some((4 * volumes + 4096) as u32),
    };
    let t = Instant::now();
    let (pool, r) = Pool::open(dev.clone(), "bench", &opts, true).expect("make the pool");
    assert_eq!(r, OpenReport::Created);
    for i in 0..volumes {
        pool.create(&format!("v{i}"), 1 << 30, true)
            .expect("create");
    }
    let made = t.elapsed();
    let buf = vec![7u8; 4096];
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
    // SAFETY: a 4096-byte aligned allocation, freed below.
    let p = unsafe { std::alloc::alloc(layout) };
    // SAFETY: `p` holds 4096 bytes.
    unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), p, 4096) };
    for i in 0..written {
        let v = pool.open_volume(&format!("v{i}")).expect("open");
        let mut ch = v.open_channel().expect("channel");
        let st = run(
            ch.as_mut(),
            IoRequest::rw(IoOp::Write, (i * 37) % 262_144, 1, p, 4096, 1),
        );
        assert_eq!(st, IoStatus::Success);
    }
    // SAFETY: allocated above with this layout; no request uses it any more.
    unsafe { std::alloc::dealloc(p, layout) };
    println!(
        "pool of {volumes} thin volumes of 1 GiB ({written} with a written cluster) on a {gib} GiB {} device: made in {:.2} s",
        if file_arg().is_some() { "file" } else { "RAM" },
        made.as_secs_f64()
    );
    drop(pool);
    // Closed cleanly: open again.
    let t = Instant::now();
    let (pool, r) = Pool::open(dev.clone(), "bench", &PoolOptions::default(), false).expect("open");
    let clean = t.elapsed();
    assert_eq!(
        r,
        OpenReport::Clean {
            volumes: volumes as usize
        }
    );
    let info = pool.pool_info();
    println!(
        "open after a clean close: {:.3} s ({} volumes, {} metadata pages in use)",
        clean.as_secs_f64(),
        info.volumes,
        info.md_pages - info.md_pages_free
    );
    // A crash: the pool is never closed.
    std::mem::forget(pool);
    let t = Instant::now();
    let (pool, r) =
        Pool::open(dev.clone(), "bench", &PoolOptions::default(), false).expect("recover");
    let recovered = t.elapsed();
    let OpenReport::Recovered {
        volumes: n,
        zeroed_clusters,
        ..
    } = r
    else {
        panic!("expected a replay, got {r:?}");
    };
    println!(
        "open after a crash (replay, {zeroed_clusters} free clusters zeroed): {:.3} s ({n} volumes)",
        recovered.as_secs_f64()
    );
    let check = pool.check().expect("check");
    println!(
        "check: {} volumes, {} clusters owned, {} free",
        check.volumes, check.clusters_owned, check.free_clusters
    );
    if let Some(path) = file_arg() {
        drop(pool);
        let _ = std::fs::remove_file(path);
    }
}
