use std::io::{Read, Write};
use std::net::TcpStream;

use lightpool_nvmf::TargetOptions;
use lightpool_reactor::ReactorConfig;

use super::*;

struct TwoPools;

impl PoolSource for TwoPools {
    fn pools(&self) -> Vec<PoolUsage> {
        vec![
            PoolUsage {
                name: "nvme0".into(),
                capacity_bytes: 1 << 40,
                used_bytes: 3 << 30,
                free_bytes: (1 << 40) - (3 << 30),
                promised_bytes: 5 << 30,
                promise_limit_bytes: 2 << 40,
                volumes: 7,
            },
            PoolUsage {
                name: "nvme1".into(),
                capacity_bytes: 2 << 40,
                used_bytes: 0,
                free_bytes: 2 << 40,
                promised_bytes: 0,
                promise_limit_bytes: 2 << 40,
                volumes: 0,
            },
        ]
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    out
}

#[test]
fn reactors_and_pools_are_reported_and_only_metrics_is_served() {
    let target = Target::new(TargetOptions::default()).expect("target");
    let r = lightpool_reactor::spawn(ReactorConfig::new(3, None)).expect("reactor");
    let ex = Exporter::new(target, vec![r.clone()]);
    ex.add_pool_source(Box::new(TwoPools));
    let listener = http::bind("127.0.0.1:0").expect("bind");
    let addr = http::serve(ex, listener).expect("serve");

    let page = get(addr, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains(http::CONTENT_TYPE), "{page}");
    assert!(
        page.contains("lightpool_pool_capacity_bytes{pool=\"nvme0\"} 1099511627776"),
        "{page}"
    );
    assert!(
        page.contains("lightpool_pool_used_bytes{pool=\"nvme0\"} 3221225472"),
        "{page}"
    );
    assert!(
        page.contains("lightpool_pool_capacity_bytes{pool=\"nvme1\"} 2199023255552"),
        "{page}"
    );
    for line in [
        "lightpool_pool_free_bytes{pool=\"nvme0\"} 1096290402304",
        "lightpool_pool_promised_bytes{pool=\"nvme0\"} 5368709120",
        "lightpool_pool_promise_limit_bytes{pool=\"nvme1\"} 2199023255552",
        "lightpool_pool_volumes{pool=\"nvme0\"} 7",
        "lightpool_pool_volumes{pool=\"nvme1\"} 0",
    ] {
        assert!(page.contains(line), "{line}: {page}");
    }
    for state in ["busy", "idle", "sleep"] {
        assert!(
            page.contains(&format!(
                "lightpool_reactor_seconds_total{{reactor=\"3\",state=\"{state}\"}}"
            )),
            "{state}: {page}"
        );
    }
    assert!(
        page.contains("lightpool_reactor_queues{reactor=\"3\"} 0"),
        "{page}"
    );
    assert!(page.trim_end().ends_with("# EOF"), "{page}");

    let missing = get(addr, "/");
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("/metrics"), "{missing}");
    r.stop();
    r.join().expect("join");
}

#[test]
fn a_bad_address_is_named() {
    let e = http::bind("localhost:x").expect_err("not an address");
    assert!(e.to_string().contains("localhost:x"), "{e}");
}

struct Offloaded;

impl OffloadSource for Offloaded {
    fn offload(&self) -> lightpool_nvmf::OffloadReport {
        use lightpool_nvmf::{OffloadRow, PacketEngineStats, SteeringProgramStats};
        lightpool_nvmf::OffloadReport {
            work: vec![
                OffloadRow {
                    work: "digest",
                    engine: "software",
                    reactor: 1,
                    operations: 3,
                    bytes: 8264,
                },
                OffloadRow {
                    work: "steering",
                    engine: "xdp",
                    reactor: 1,
                    operations: 2,
                    bytes: 9000,
                },
            ],
            engines: vec![PacketEngineStats {
                engine: "af_xdp",
                interface: "veth0".into(),
                reactor: 1,
                rx_frames: 7,
                rx_bytes: 9000,
                tx_frames: 5,
                tx_bytes: 600,
                drops: vec![("rx_ring_full", 0)],
            }],
            programs: vec![SteeringProgramStats {
                interface: "veth0".into(),
                steered: 7,
                passed: 4,
                no_socket: 0,
            }],
        }
    }
}

#[test]
fn offload_work_and_packet_engines_are_reported() {
    let target = Target::new(TargetOptions::default()).expect("target");
    let ex = Exporter::new(target, Vec::new());
    ex.add_offload_source(Box::new(Offloaded));
    let page = ex.render().expect("render");
    for line in [
        "lightpool_offload_operations_total{work=\"digest\",engine=\"software\",reactor=\"1\"} 3",
        "lightpool_offload_bytes_total{work=\"digest\",engine=\"software\",reactor=\"1\"} 8264",
        "lightpool_offload_operations_total{work=\"steering\",engine=\"xdp\",reactor=\"1\"} 2",
        "lightpool_engine_frames_total{engine=\"af_xdp\",interface=\"veth0\",reactor=\"1\",direction=\"rx\"} 7",
        "lightpool_engine_bytes_total{engine=\"af_xdp\",interface=\"veth0\",reactor=\"1\",direction=\"tx\"} 600",
        "lightpool_engine_drops_total{engine=\"af_xdp\",interface=\"veth0\",reactor=\"1\",reason=\"rx_ring_full\"} 0",
        "lightpool_xdp_program_frames_total{interface=\"veth0\",action=\"steered\"} 7",
        "lightpool_xdp_program_frames_total{interface=\"veth0\",action=\"passed\"} 4",
    ] {
        assert!(page.contains(line), "{line}: {page}");
    }
}
