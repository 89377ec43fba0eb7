//! The Kubernetes binaries refuse to start without what they need, saying
//! what to set: an identity (node, address) and a reachable API server.

use std::process::Command;

fn run(bin: &str, args: &[&str], home: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("KUBECONFIG", home.join("missing-kubeconfig"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_controller_and_agent_say_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    let controller = env!("CARGO_BIN_EXE_lightpool-controller");
    let agent = env!("CARGO_BIN_EXE_lightpool-agent");
    let (ok, err) = run(controller, &[], home.path());
    assert!(
        !ok && err.contains("--identity is empty: pass it or set $POD_NAME"),
        "{err}"
    );
    let (ok, err) = run(controller, &["--identity", "c-0"], home.path());
    assert!(!ok && err.contains("no Kubernetes API"), "{err}");
    let (ok, err) = run(agent, &["--pool-size", "1Gi"], home.path());
    assert!(
        !ok && err.contains("--node is empty: pass it or set $NODE_NAME"),
        "{err}"
    );
    let args = [
        "--pool-size",
        "1Gi",
        "--node",
        "n1",
        "--address",
        "10.0.0.1",
    ];
    let (ok, err) = run(agent, &args, home.path());
    assert!(!ok && err.contains("no Kubernetes API"), "{err}");
    let (ok, err) = run(
        agent,
        &["--pool-size", "zero", "--node", "n", "--address", "a"],
        home.path(),
    );
    assert!(!ok && err.contains("--pool-size zero"), "{err}");
}

#[test]
fn the_csi_plugin_says_what_is_missing() {
    let home = tempfile::tempdir().unwrap();
    let csi = env!("CARGO_BIN_EXE_lightpool-csi");
    let (ok, err) = run(csi, &[], home.path());
    assert!(
        !ok && err.contains("serves nothing: give --controller, --node NODE"),
        "{err}"
    );
    let (ok, err) = run(csi, &["--node", ""], home.path());
    assert!(
        !ok && err.contains("--node is empty: pass it or set $NODE_NAME"),
        "{err}"
    );
    let (ok, err) = run(csi, &["--controller"], home.path());
    assert!(!ok && err.contains("no Kubernetes API"), "{err}");
}
