//! The other modes: `bdev` on RAM and on an io_uring file (with --verify), and
//! `limit` for each kind of exchange.

mod common;

use common::perf;

#[test]
fn bdev_ram_runs_every_workload_verified() {
    for w in ["write", "randread", "randrw"] {
        let run = perf(&[
            "bdev", "--ram", "16MiB", "-q", "16", "-o", "4096", "-w", w, "-t", "0.3", "--verify",
            "--qpairs", "2", "--json",
        ]);
        assert_eq!(run.code, 0, "{w}\n{}", run.dump());
        assert!(run.total_iops() > 0.0, "{}", run.dump());
        assert_eq!(run.field(&["verify", "mismatches"]), 0, "{}", run.dump());
        assert_eq!(run.field(&["settings", "mode"]), "block device");
    }
}

#[test]
fn bdev_file_through_io_uring() {
    let path = std::env::temp_dir().join(format!("lightpool-perf-bdev-{}.img", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(32 << 20))
        .expect("scratch file");
    let p = path.to_str().expect("utf-8");
    for w in ["randwrite", "randread"] {
        let run = perf(&[
            "bdev", "--file", p, "-q", "8", "-o", "4096", "-w", w, "-t", "0.5", "--verify",
            "--json",
        ]);
        assert_eq!(run.code, 0, "{w}\n{}", run.dump());
        assert!(run.total_iops() > 0.0, "{}", run.dump());
        assert_eq!(run.field(&["verify", "mismatches"]), 0, "{}", run.dump());
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn limit_measures_reads_writes_and_r2t() {
    for args in [
        vec!["-w", "randread", "-o", "4096", "-q", "8"],
        vec!["-w", "randwrite", "-o", "4096", "-q", "8", "--digest"],
        vec!["-w", "randwrite", "-o", "65536", "-q", "4"],
        vec!["-w", "read", "-o", "131072", "-q", "4", "--digest"],
        vec!["-w", "randrw", "-o", "16384", "-q", "4", "--qpairs", "2"],
        // lightpool-perf's own initiator against the null server.
        vec![
            "--client", "nvme", "-w", "randrw", "-o", "16384", "-q", "4", "--digest",
        ],
        vec![
            "--client", "nvme", "-w", "randread", "-o", "4096", "-q", "8", "--qpairs", "2",
        ],
    ] {
        let mut a = vec!["limit", "-t", "0.3", "--json"];
        a.extend(args.iter().copied());
        let run = perf(&a);
        assert_eq!(run.code, 0, "{args:?}\n{}", run.dump());
        assert!(run.total_iops() > 0.0, "{args:?}\n{}", run.dump());
        assert!(run.field(&["latency", "p50_us"]).as_f64().unwrap_or(0.0) > 0.0);
    }
    let run = perf(&["limit", "--verify", "-t", "0.1"]);
    assert_eq!(run.code, 2, "an invalid option\n{}", run.dump());
    assert!(
        run.stderr.contains("--verify needs storage"),
        "{}",
        run.dump()
    );
}
