//! A hot upgrade asked for through the API: this process starts the new binary (in a
//! process group of its own, so it outlives this one), which takes over through the
//! control socket as `lightpool-target upgrade` has it do; the answer goes out once the
//! new process says it took over, and this process exits after sending it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use lightpool_api::v1 as pb;
use tonic::Status;

use crate::Running;

/// The number after `key ` in `line` ("pause 1.234 ms").
fn number_after(line: &str, key: &str) -> Option<f64> {
    line.split(key)
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_end_matches([',', ';'])
        .parse()
        .ok()
}

pub fn start(run: &Running, r: &pb::StartUpgradeRequest) -> Result<pb::UpgradeResult, Status> {
    if let Some(why) = crate::pod::upgrade_refusal(crate::pod::instance()) {
        return Err(Status::failed_precondition(why));
    }
    let meta = std::fs::metadata(&r.binary)
        .map_err(|e| Status::invalid_argument(format!("new binary {}: {e}", r.binary)))?;
    if !meta.is_file() {
        return Err(Status::invalid_argument(format!(
            "new binary {} is not a file",
            r.binary
        )));
    }
    if !run.mgmt.upgrade.begin() {
        return Err(Status::failed_precondition(
            "an upgrade is under way already: wait for its answer",
        ));
    }
    let log = if r.log.is_empty() {
        crate::logging::get()
    } else {
        r.log.clone()
    };
    let old_pid = std::process::id();
    let res = (|| {
        let mut child = Command::new(&r.binary)
            .arg("--upgrade-from")
            .arg(&run.control_path)
            .arg("--control-socket")
            .arg(&run.control_path)
            .arg("--api-socket")
            .arg(&run.mgmt.api_path)
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| Status::invalid_argument(format!("cannot start {}: {e}", r.binary)))?;
        let out = child.stdout.take().expect("stdout was piped");
        let mut report = None;
        let mut lines = Vec::new();
        // The new process closes this pipe once it took over (it then writes where
        // this process writes) or when it exits.
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains("took over from") {
                report = Some(line);
            } else {
                lines.push(line);
            }
        }
        match report {
            Some(line) => Ok(pb::UpgradeResult {
                old_pid,
                old_version: crate::firmware_revision().to_string(),
                new_pid: child.id(),
                new_version: line
                    .strip_prefix("lightpool-target ")
                    .and_then(|v| v.split(':').next())
                    .unwrap_or("?")
                    .to_string(),
                pause_ms: number_after(&line, "pause ").unwrap_or(f64::NAN),
                report: line,
            }),
            None => {
                let st = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                Err(Status::failed_precondition(format!(
                    "the new binary exited ({st}) without taking over; this target serves on{}",
                    if lines.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", lines.join(" / "))
                    }
                )))
            }
        }
    })();
    if res.is_err() {
        run.mgmt.upgrade.abandon();
    }
    res
}
