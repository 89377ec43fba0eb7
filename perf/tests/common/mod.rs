//! Shared by the integration tests: an in-process LightPool target on a RAM
//! namespace, and the `lightpool-perf` binary run with JSON output.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;

use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use lightpool_transport_tcp::TcpTransport;

pub const NQN: &str = "nqn.2024-01.io.lightpool:perf-test";

/// A target serving one RAM namespace of `bytes` in `block_size` blocks on
/// 127.0.0.1:<free port>.
pub struct TestTarget {
    pub addr: SocketAddr,
    pub bdev: Arc<MallocBdev>,
    reactor: ReactorHandle,
}

impl TestTarget {
    pub fn start(bytes: u64, block_size: u32) -> TestTarget {
        let t = Target::new(TargetOptions::default()).expect("valid options");
        let bdev = MallocBdev::new("ram", bytes, block_size).expect("RAM device");
        let mut sc = SubsystemConfig::new(NQN);
        sc.namespaces.push(NamespaceConfig {
            nsid: 1,
            bdev: bdev.clone(),
            nguid: None,
            uuid: None,
            anagrpid: None,
            num_blocks: None,
        });
        t.add_subsystem(sc).expect("valid subsystem");
        let reactor = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor");
        let tcp = TcpTransport::new(t, vec![reactor.clone()]).expect("transport");
        let addr = tcp
            .listen("127.0.0.1:0".parse().expect("address"))
            .expect("listen");
        TestTarget {
            addr,
            bdev,
            reactor,
        }
    }

    /// The transport ID of the test subsystem.
    pub fn trid(&self) -> String {
        trid(self.addr, Some(NQN))
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.reactor.stop();
        let _ = self.reactor.join();
    }
}

pub fn trid(addr: SocketAddr, nqn: Option<&str>) -> String {
    let mut s = format!(
        "trtype:tcp adrfam:ipv4 traddr:{} trsvcid:{}",
        addr.ip(),
        addr.port()
    );
    if let Some(n) = nqn {
        s.push_str(&format!(" subnqn:{n}"));
    }
    s
}

/// What one run of the binary gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The JSON report when `--json` was given and printed.
    pub json: Option<serde_json::Value>,
}

impl Run {
    pub fn total_iops(&self) -> f64 {
        self.json
            .as_ref()
            .and_then(|j| j["total"]["iops"].as_f64())
            .unwrap_or(0.0)
    }

    pub fn field(&self, path: &[&str]) -> serde_json::Value {
        let mut v = self.json.clone().unwrap_or(serde_json::Value::Null);
        for p in path {
            v = v[*p].clone();
        }
        v
    }

    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn perf(args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_lightpool-perf"))
        .args(args)
        .output()
        .expect("lightpool-perf runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).ok();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}
