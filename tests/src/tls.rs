//! NVMe/TCP TLS in guest tests: lightpool-target's configuration for a subsystem whose
//! hosts connect in TLS with PSKs, and the shell that starts it in the guest.

/// A listener on 127.0.0.1:`port` that requires TLS; its records stay in software
/// (`ktls = "off"`) when `software`, else go to the kernel where it can.
#[derive(Debug, Clone, Copy)]
pub struct TlsListener {
    pub port: u16,
    pub software: bool,
}

impl TlsListener {
    /// Records in software (`ktls = "off"`).
    pub fn software(port: u16) -> TlsListener {
        TlsListener {
            port,
            software: true,
        }
    }

    /// Records in the kernel where it can (`ktls` auto).
    pub fn kernel(port: u16) -> TlsListener {
        TlsListener {
            port,
            software: false,
        }
    }
}

/// lightpool-target's TOML: `reactors`, the `listeners`, subsystem `nqn` open to any
/// host with a `[[subsystem.tls_key]]` per (host NQN, interchange key), and one RAM
/// namespace of `ram` (e.g. "64MiB") in 512-byte blocks.
pub fn tls_target_config(
    reactors: u32,
    listeners: &[TlsListener],
    nqn: &str,
    keys: &[(&str, &str)],
    ram: &str,
) -> String {
    let mut t = format!("[target]\nreactors = {reactors}\n");
    for l in listeners {
        t += &format!(
            "\n[[listener]]\naddress = \"127.0.0.1:{}\"\nsecure = \"required\"\n",
            l.port
        );
        if l.software {
            t += "ktls = \"off\"\n";
        }
    }
    t += &format!("\n[[subsystem]]\nnqn = \"{nqn}\"\nallow_any_host = true\n");
    for (host, key) in keys {
        t += &format!("\n[[subsystem.tls_key]]\nhost = \"{host}\"\nkey = \"{key}\"\n");
    }
    t += &format!("\n[[subsystem.namespace]]\nnsid = 1\nram = \"{ram}\"\nblock_size = 512\n");
    t
}

/// Guest shell: write `config` to /tmp/t.toml, start /test/lightpool-target on it
/// (log: /tmp/target.log, control socket /run/t.sock) and wait until it listens on
/// `listeners` addresses; else call the script's `fail`.
pub fn start_target_shell(config: &str, listeners: usize) -> String {
    [
        "cat > /tmp/t.toml <<'EOT'".to_string(),
        config.trim_end().to_string(),
        "EOT".to_string(),
        "/test/lightpool-target --config /tmp/t.toml --control-socket /run/t.sock --log info > /tmp/target.log 2>&1 &".to_string(),
        "n_listening() { grep -c 'NVMe/TCP listening' /tmp/target.log; }".to_string(),
        format!("for i in $(seq 1 200); do [ \"$(n_listening)\" = {listeners} ] && break; sleep 0.1; done"),
        format!("[ \"$(n_listening)\" = {listeners} ] || fail \"the target did not listen\""),
    ]
    .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_every_listener_key_and_the_namespace() {
        let c = tls_target_config(
            2,
            &[TlsListener::software(4420), TlsListener::kernel(4421)],
            "nqn.x",
            &[("h1", "k1"), ("h2", "k2")],
            "64MiB",
        );
        let v: toml::Value = toml::from_str(&c).expect("TOML");
        let l = v["listener"].as_array().expect("listeners");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0]["ktls"].as_str(), Some("off"));
        assert!(l[1].get("ktls").is_none());
        assert_eq!(l[1]["address"].as_str(), Some("127.0.0.1:4421"));
        let s = &v["subsystem"].as_array().expect("subsystems")[0];
        assert_eq!(s["tls_key"].as_array().expect("keys").len(), 2);
        assert_eq!(s["namespace"][0]["ram"].as_str(), Some("64MiB"));
        let sh = start_target_shell(&c, 2);
        assert!(sh.starts_with("cat > /tmp/t.toml <<'EOT'\n[target]"));
        assert!(sh.contains("block_size = 512\nEOT\n"));
    }
}
