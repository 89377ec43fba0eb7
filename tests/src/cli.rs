//! Running `lightpool` (the built release binary) against a standalone instance's data
//! directory, for the control-plane tests.

use std::path::Path;
use std::process::Command;

use crate::release_binary;

/// `lightpool --data-dir DATA ARGS...`: whether it succeeded, and stdout then stderr.
pub fn lp(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(release_binary("lightpool").expect("tests/run.sh builds it"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run lightpool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// As [`lp`], which must succeed: its output.
pub fn ok(data: &Path, args: &[&str]) -> String {
    let (good, out) = lp(data, args);
    assert!(good, "lightpool {args:?}: {out}");
    out
}

/// As [`ok`] with `--json`: the parsed output.
pub fn json(data: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(data, &a)).expect("json")
}

/// `lightpool --socket API --json connection list` against a target's management API
/// socket: its connections as JSON objects.
pub fn connection_list(api: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(release_binary("lightpool").expect("tests/run.sh builds it"))
        .arg("--socket")
        .arg(api)
        .args(["--json", "connection", "list"])
        .output()
        .expect("run lightpool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v.as_array().cloned().unwrap_or_default()
}
