//! What the API tests share: a lightpool-target started for a test, a channel to its
//! API, and a check of refusals.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::upgrade_client::UpgradeClient;
use tonic::transport::Channel;
use tonic::Code;

pub const NQN: &str = "nqn.2024-01.io.lightpool:api";

/// A lightpool-target started for one test, killed when dropped.
pub struct Target {
    pub child: Child,
    pub dir: PathBuf,
    pub api: PathBuf,
    pub listen: SocketAddr,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A successor of an upgrade runs in its own process group: stop it too (asked
        // on a thread of its own: this may run inside a test's runtime).
        let api = self.api.clone();
        let pid = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().ok()?;
            rt.block_on(async move {
                let ch = lightpool_api::connect(api).await.ok()?;
                let s = UpgradeClient::new(ch)
                    .get_status(pb::GetStatusRequest {})
                    .await
                    .ok()?;
                Some(s.into_inner().pid)
            })
        })
        .join()
        .ok()
        .flatten();
        if let Some(pid) = pid {
            // SAFETY: kill(2) on a pid the target just reported for itself.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lp-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Start the target with `args` in `dir`; wait for its API socket and first listener.
pub fn start_in(dir: &Path, args: &[&str]) -> Target {
    let control = dir.join("t.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
        .args(args)
        .arg("--control-socket")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("out.log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("err.log")).expect("log"))
        .spawn()
        .expect("start lightpool-target");
    let api = dir.join("t.api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let listen = loop {
        let out = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
        if let Some(a) = out
            .lines()
            .find_map(|l| l.strip_prefix("lightpool-target: listening on "))
            .and_then(|l| l.split_whitespace().next())
        {
            if api.exists() && out.contains("management API on") {
                break a.parse().expect("address");
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "lightpool-target exited ({st}): {}",
                std::fs::read_to_string(dir.join("err.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "the target did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    Target {
        child,
        dir: dir.to_path_buf(),
        api,
        listen,
    }
}

pub fn start(name: &str) -> Target {
    let d = dir(name);
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n"),
    )
    .expect("config");
    start_in(&d, &["--config", cfg.to_str().expect("utf-8")])
}

pub async fn ch(t: &Target) -> Channel {
    lightpool_api::connect(t.api.clone())
        .await
        .expect("the API answers")
}

/// The call must fail with `code` and a message holding every `want`.
pub fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    want: &[&str],
) {
    let s = r.expect_err("the call must be refused");
    assert_eq!(s.code(), code, "{}", s.message());
    for w in want {
        assert!(
            s.message().contains(w),
            "{w:?} missing from {:?}",
            s.message()
        );
    }
}

pub fn ram(name: &str, size: u64) -> pb::CreateBlockDeviceRequest {
    pb::CreateBlockDeviceRequest {
        name: name.into(),
        kind: Some(pb::create_block_device_request::Kind::Ram(pb::RamDevice {
            size_bytes: size,
            block_size: 512,
            hugepages: Some(false),
        })),
    }
}

pub fn add_ns(nqn: &str, nsid: u32, device: &str) -> pb::AddNamespaceRequest {
    pb::AddNamespaceRequest {
        nqn: nqn.into(),
        nsid,
        device: device.into(),
        ..Default::default()
    }
}

/// A sparse file of `len` bytes at `path`.
pub fn sparse(path: &std::path::Path, len: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(len))
        .expect("sparse file");
}
