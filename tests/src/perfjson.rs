//! Reading what `lightpool-perf --json` printed, for the tests that drive it.

use std::process::Child;

/// The number after `"key":` in lightpool-perf's JSON (the first occurrence); panics
/// when the key is missing, NaN when its value is not a number.
pub fn json_num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing from {json}"))
        + pat.len();
    json[at..]
        .trim_start()
        .split([',', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits for lightpool-perf; panics unless it verified blocks without an error or a
/// mismatch. Returns its JSON.
pub fn perf_ok(child: Child, what: &str, log: &dyn Fn() -> String) -> String {
    let out = child.wait_with_output().expect("lightpool-perf finishes");
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what}: lightpool-perf failed: {}\n{json}\ntarget log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    for key in ["error_total", "mismatches"] {
        assert_eq!(json_num(&json, key), 0.0, "{what}: {key}\n{json}");
    }
    assert!(json_num(&json, "blocks_checked") > 0.0, "{what}: {json}");
    json
}
