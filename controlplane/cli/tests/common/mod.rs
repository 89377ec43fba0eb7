//! What the tests of `lightpool` against a running lightpool-target share: the
//! target binary of this build, a target started in a directory of its own (killed
//! and cleaned up when dropped), and `lightpool` run against it.
#![allow(dead_code)]

pub mod standalone;
pub mod writes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// lightpool-target of this build (beside lightpool; built first when missing).
pub fn target_bin() -> PathBuf {
    let me = Path::new(env!("CARGO_BIN_EXE_lightpool"));
    let t = me.with_file_name("lightpool-target");
    if !t.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if me.parent().is_some_and(|p| p.ends_with("release")) {
            vec!["--release"]
        } else {
            vec![]
        };
        let st = Command::new(cargo)
            .args([
                "build",
                "-p",
                "lightpool-daemon",
                "--bin",
                "lightpool-target",
            ])
            .args(profile)
            .status()
            .expect("cargo build");
        assert!(st.success(), "building lightpool-target");
    }
    t
}

pub struct Target {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn start() -> Target {
    start_with("tool", |_| Vec::new())
}

/// A target started with the arguments `args` makes in its directory.
pub fn start_with(name: &str, args: impl FnOnce(&Path) -> Vec<String>) -> Target {
    let dir = std::env::temp_dir().join(format!("lp-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let child = Command::new(target_bin())
        .args(args(&dir))
        .args(["--listen", "127.0.0.1:0", "--control-socket"])
        .arg(dir.join("t.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the target");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("t.api.sock").exists() {
        assert!(Instant::now() < deadline, "the target did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Target { child, dir }
}

pub fn lp(t: &Target, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lightpool"))
        .arg("--control-socket")
        .arg(t.dir.join("t.sock"))
        .args(args)
        .output()
        .expect("run lightpool")
}

pub fn ok(t: &Target, args: &[&str]) -> String {
    let o = lp(t, args);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}
