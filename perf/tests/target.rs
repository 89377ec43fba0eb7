//! lightpool-perf against an in-process LightPool target: every workload with and
//! without digests under --verify, R2T writes, discovery, keep-alive, outputs, and a
//! corrupted block that --verify must name.

mod common;

use common::{perf, trid, TestTarget, NQN};

/// Range used by the matrix: 16 MiB of a 64 MiB namespace.
const RANGE: &str = "0:32768";

#[test]
fn every_workload_with_and_without_digests_verifies_clean() {
    let t = TestTarget::start(64 << 20, 512);
    let r = t.trid();
    for digest in [false, true] {
        for w in ["write", "read", "randwrite", "randread", "rw", "randrw"] {
            let mut args = vec![
                "-r", &r, "-q", "8", "-o", "4096", "-w", w, "-M", "60", "-t", "0.5", "--verify",
                "--range", RANGE, "--json",
            ];
            if digest {
                args.push("--digest");
            }
            let run = perf(&args);
            let what = format!("{w} digest={digest}\n{}", run.dump());
            assert_eq!(run.code, 0, "{what}");
            assert!(run.total_iops() > 0.0, "{what}");
            assert_eq!(run.field(&["error_total"]), 0, "{what}");
            assert_eq!(run.field(&["verify", "mismatches"]), 0, "{what}");
            assert!(run.field(&["error"]).is_null(), "{what}");
            if w.contains("read") || w.contains("rw") {
                assert!(
                    run.field(&["verify", "blocks_checked"])
                        .as_u64()
                        .unwrap_or(0)
                        > 0,
                    "{what}"
                );
            }
            let want_digests = if digest { "header+data" } else { "" };
            assert_eq!(run.field(&["settings", "digests"]), want_digests, "{what}");
        }
    }
}

#[test]
fn r2t_writes_large_transfers_and_many_queues() {
    let t = TestTarget::start(64 << 20, 4096);
    let r = t.trid();
    // 64 KiB writes forced through R2T/H2CData, read back verified; 128 KiB (MDTS)
    // mixed with digests; two queue pairs.
    for args in [
        vec!["-w", "randwrite", "-o", "65536", "--no-in-capsule"],
        vec!["-w", "randread", "-o", "65536"],
        vec!["-w", "randrw", "-o", "131072", "--digest", "--qpairs", "2"],
        vec!["-w", "write", "-o", "16384", "--qpairs", "2"],
    ]
    .into_iter()
    .chain(two_cores())
    {
        let mut a = vec![
            "-r", &r, "-q", "4", "-t", "0.5", "--verify", "--range", "0:4096", "--json",
        ];
        a.extend(args.iter().copied());
        let run = perf(&a);
        assert_eq!(run.code, 0, "{args:?}\n{}", run.dump());
        assert!(run.total_iops() > 0.0, "{args:?}\n{}", run.dump());
        assert_eq!(run.field(&["verify", "mismatches"]), 0, "{}", run.dump());
    }
}

/// Two pinned workers with two queue pairs each, where the machine has two cores.
fn two_cores() -> Option<Vec<&'static str>> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n >= 2).then(|| vec!["-w", "randrw", "-o", "8192", "-c", "0,1", "--qpairs", "2"])
}

#[test]
fn verify_names_the_block_the_target_corrupted() {
    let t = TestTarget::start(8 << 20, 512);
    let r = t.trid();
    // Write pass: every block of LBAs 0..256 gets a stamp.
    let w = perf(&[
        "-r", &r, "-q", "4", "-o", "4096", "-w", "write", "-t", "0.5", "--verify", "--range",
        "0:256", "--json",
    ]);
    assert_eq!(w.code, 0, "{}", w.dump());
    // The target's media goes bad under one block.
    t.bdev
        .write_at(77 * 512 + 100, &[0xDE, 0xAD, 0xBE, 0xEF])
        .expect("in range");
    let rd = perf(&[
        "-r", &r, "-q", "4", "-o", "4096", "-w", "read", "-t", "0.5", "--verify", "--range",
        "0:256", "--json",
    ]);
    assert_ne!(rd.code, 0, "{}", rd.dump());
    let bad = rd.field(&["verify", "mismatches"]).as_u64().unwrap_or(0);
    assert!(bad >= 1, "{}", rd.dump());
    let first = rd.field(&["verify", "first"]);
    let first = first.as_array().expect("a list");
    assert!(!first.is_empty(), "{}", rd.dump());
    for m in first {
        let m = m.as_str().unwrap_or("");
        assert!(m.starts_with("LBA 77: checksum mismatch"), "{m}");
    }
    assert!(rd.stderr.contains("LBA 77"), "{}", rd.dump());
    // Every other block still verifies: one bad block per pass over the 256.
    let checked = rd
        .field(&["verify", "blocks_checked"])
        .as_u64()
        .unwrap_or(0);
    assert!(
        (checked / 256).abs_diff(bad) <= 1,
        "{checked} checked, {bad} bad\n{}",
        rd.dump()
    );
}

#[test]
fn discovery_finds_the_subsystem_when_subnqn_is_left_out() {
    let t = TestTarget::start(8 << 20, 512);
    let d = trid(t.addr, None);
    let run = perf(&["-r", &d, "-q", "4", "-t", "0.3", "--json"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(
        run.stderr.contains(&format!("discovered {NQN}")),
        "{}",
        run.dump()
    );
    assert!(run.total_iops() > 0.0);
    // Each worker says how long it waited for its CPU (Linux schedstat).
    let rows = run.field(&["rows"]);
    assert!(rows[0]["preempted_ms"].is_number(), "{}", run.dump());
}

#[test]
fn keep_alive_holds_the_controller_past_its_timeout() {
    let t = TestTarget::start(8 << 20, 512);
    let r = t.trid();
    // A 1 s keep-alive timeout (the target allows 2.5 s with its grace): without Keep
    // Alive the controller would fail during the 3.5 s run.
    let run = perf(&["-r", &r, "-q", "2", "-t", "3.5", "--kato", "1000", "--json"]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(run.field(&["error"]).is_null(), "{}", run.dump());
}

#[test]
fn outputs_table_progress_histogram_log_and_plot() {
    let t = TestTarget::start(8 << 20, 512);
    let r = t.trid();
    let dir = std::env::temp_dir().join(format!("lightpool-perf-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let hlog = dir.join("lat.hlog");
    let svg = dir.join("run.svg");
    let run = perf(&[
        "-r",
        &r,
        "-q",
        "4",
        "-t",
        "2",
        "--warmup",
        "0.5",
        "--progress",
        "--histogram",
        hlog.to_str().expect("utf-8"),
        "--plot",
        svg.to_str().expect("utf-8"),
        "-c",
        "0",
    ]);
    assert_eq!(run.code, 0, "{}", run.dump());
    for want in [
        "IOPS",
        "MiB/s",
        "Average",
        "p99.99",
        "Total",
        "I/O errors: none",
    ] {
        assert!(run.stdout.contains(want), "{want}\n{}", run.dump());
    }
    // One progress line per second, warm-up marked.
    assert!(run.stderr.contains("[warm-up"), "{}", run.dump());
    assert!(run.stderr.contains("[   2 s]"), "{}", run.dump());
    let log = std::fs::read_to_string(&hlog).expect("histogram log written");
    assert!(log.contains("#[BaseTime:"), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('"'))
        .collect();
    assert_eq!(lines.len(), 2, "one histogram per second:\n{log}");
    assert!(lines[0].starts_with("0.000,1.000,"), "{log}");
    let plot = std::fs::read_to_string(&svg).expect("plot written");
    assert!(plot.contains("<svg") && plot.contains("polyline"), "{plot}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn discovery_without_trsvcid_reaches_a_target_on_the_io_port() {
    // A target on the NVMe/TCP I/O port (4420) of an address of its own (127.0.0.4),
    // nothing on the discovery port: discovery asks the I/O port, and says so.
    let t = TestTarget::start_at("127.0.0.4:4420", 8 << 20, 512);
    let run = perf(&[
        "-r",
        "trtype:tcp adrfam:ipv4 traddr:127.0.0.4",
        "-q",
        "4",
        "-t",
        "0.3",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(
        run.stderr.contains("nothing listens on 127.0.0.4:8009")
            && run
                .stderr
                .contains(&format!("discovered {NQN} at 127.0.0.4:4420")),
        "{}",
        run.dump()
    );
    assert!(run.total_iops() > 0.0);
    drop(t);
}
