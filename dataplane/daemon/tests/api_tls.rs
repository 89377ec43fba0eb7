//! The management API on TCP with mutual TLS (`[api]`): clients with a certificate the
//! target's client CA signed are served; clients without one, with one from another
//! CA, or speaking plain text are refused, and the target goes on serving; the TCP API
//! outlives a hot upgrade started through it; `config save` writes `[api]` back; and a
//! bad `[api]` section stops the target with the key and what to change.

use std::process::Command;
use std::time::{Duration, Instant};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    block_devices_client::BlockDevicesClient, config_client::ConfigClient,
    subsystems_client::SubsystemsClient, upgrade_client::UpgradeClient,
};
use lightpool_api::ClientTls;
use lightpool_e2e::certs::{self, Pki};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

mod common;
use common::*;

/// Start a target whose API also listens on an ephemeral TCP port; returns the port's
/// address (read back through `config save` on the Unix socket).
async fn start_tls(name: &str) -> (Target, Pki, String) {
    let d = dir(name);
    let pki = certs::make(&d.join("pki"));
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n{}",
            pki.api_section("127.0.0.1:0")
        ),
    )
    .expect("config");
    let t = start_in(&d, &["--config", cfg.to_str().expect("utf-8")]);
    let saved = ConfigClient::new(ch(&t).await)
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    let addr = saved
        .lines()
        .skip_while(|l| l.trim() != "[api]")
        .find_map(|l| l.strip_prefix("address = "))
        .expect("[api] address saved")
        .trim_matches('"')
        .to_string();
    assert!(!addr.ends_with(":0"), "the bound port is saved: {addr}");
    for f in [&pki.server_cert, &pki.server_key, &pki.ca] {
        assert!(
            saved.contains(&*f.to_string_lossy()),
            "{f:?} saved: {saved}"
        );
    }
    (t, pki, addr)
}

fn client(pki: &Pki) -> ClientTls {
    ClientTls {
        ca: pki.ca.clone(),
        cert: pki.client_cert.clone(),
        key: pki.client_key.clone(),
        domain: None,
    }
}

/// A call through `cfg` (HTTPS to `addr`) must fail.
async fn must_refuse(addr: &str, cfg: Option<ClientTlsConfig>, what: &str) {
    let scheme = if cfg.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(c) = cfg {
        ep = ep.tls_config(c).expect("tls config");
    }
    let r = match ep.connect().await {
        Ok(c) => SubsystemsClient::new(c)
            .list_subsystems(pb::ListSubsystemsRequest::default())
            .await
            .map(|_| ()),
        Err(_) => return,
    };
    assert!(r.is_err(), "{what}: must be refused, was served");
}

async fn subsystems(addr: &str, tls: &ClientTls) -> Vec<String> {
    let c = lightpool_api::connect_tls(addr, tls)
        .await
        .expect("mutual TLS connects");
    SubsystemsClient::new(c)
        .list_subsystems(pb::ListSubsystemsRequest::default())
        .await
        .expect("served over mutual TLS")
        .into_inner()
        .subsystems
        .into_iter()
        .map(|s| s.nqn)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_certificate_from_the_client_ca_are_served() {
    let (t, pki, addr) = start_tls("tls-clients").await;
    let good = client(&pki);
    assert_eq!(subsystems(&addr, &good).await, vec![NQN.to_string()]);
    // A change over TCP is the same target's: seen on the Unix socket.
    let c = lightpool_api::connect_tls(&addr, &good).await.expect("tls");
    BlockDevicesClient::new(c)
        .create_block_device(ram("over-tls", 4 << 20))
        .await
        .expect("create over TLS");
    let devs = BlockDevicesClient::new(ch(&t).await)
        .list_block_devices(pb::ListBlockDevicesRequest {})
        .await
        .expect("list")
        .into_inner()
        .devices;
    assert!(devs.iter().any(|d| d.name == "over-tls"), "{devs:?}");

    let ca = || Certificate::from_pem(std::fs::read(&pki.ca).expect("ca"));
    let id = |c: &std::path::Path, k: &std::path::Path| {
        Identity::from_pem(
            std::fs::read(c).expect("cert"),
            std::fs::read(k).expect("key"),
        )
    };
    // No client certificate.
    must_refuse(
        &addr,
        Some(ClientTlsConfig::new().ca_certificate(ca())),
        "no client certificate",
    )
    .await;
    // A client certificate from another CA.
    must_refuse(
        &addr,
        Some(
            ClientTlsConfig::new()
                .ca_certificate(ca())
                .identity(id(&pki.rogue_cert, &pki.rogue_key)),
        ),
        "a certificate another CA signed",
    )
    .await;
    // A client that does not trust the target's certificate refuses it.
    let distrust = ClientTls {
        ca: pki.rogue_ca.clone(),
        ..good.clone()
    };
    let r = lightpool_api::connect_tls(&addr, &distrust).await;
    let served = match r {
        Ok(c) => SubsystemsClient::new(c)
            .list_subsystems(pb::ListSubsystemsRequest::default())
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!served, "a target certificate the client's CA did not sign");
    // Plain-text HTTP/2 to the TLS port.
    must_refuse(&addr, None, "plain text").await;
    // Raw garbage on the port, then a hang-up.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).expect("tcp");
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n\x16\x03\x01\x00\x05hello");
    }
    // Every refusal left the target serving, on TCP and on the Unix socket.
    assert_eq!(subsystems(&addr, &good).await, vec![NQN.to_string()]);
    SubsystemsClient::new(ch(&t).await)
        .list_subsystems(pb::ListSubsystemsRequest::default())
        .await
        .expect("the Unix socket still serves");
    // A client missing its key file says which file.
    let e = lightpool_api::connect_tls(
        &addr,
        &ClientTls {
            key: pki.ca.clone(),
            ..good
        },
    )
    .await
    .expect_err("a certificate is not a key");
    assert!(
        e.to_string().contains("PRIVATE KEY") && e.to_string().contains("ca.crt"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_api_survives_a_hot_upgrade_started_through_it() {
    let (t, pki, addr) = start_tls("tls-upgrade").await;
    let tls = client(&pki);
    let c = lightpool_api::connect_tls(&addr, &tls).await.expect("tls");
    let mut up = UpgradeClient::new(c);
    let old = up
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let r = up
        .start_upgrade(pb::StartUpgradeRequest {
            binary: env!("CARGO_BIN_EXE_lightpool-target").into(),
            log: "info".into(),
        })
        .await
        .expect("upgrade over TLS")
        .into_inner();
    assert_eq!(r.old_pid, old.pid);
    assert_ne!(r.new_pid, old.pid);
    // The successor serves the same port, with the same certificates.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pid = match lightpool_api::connect_tls(&addr, &tls).await {
            Ok(c) => UpgradeClient::new(c)
                .get_status(pb::GetStatusRequest {})
                .await
                .ok()
                .map(|s| s.into_inner().pid),
            Err(_) => None,
        };
        if pid == Some(r.new_pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new process serves the TCP API (last pid {pid:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subsystems(&addr, &tls).await, vec![NQN.to_string()]);
    must_refuse(&addr, None, "plain text after the upgrade").await;
    drop(t);
}

fn fails_with(name: &str, api: &str, want: &[&str]) {
    let d = dir(name);
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\n{api}"),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
        .arg("--config")
        .arg(&cfg)
        .arg("--control-socket")
        .arg(d.join("t.sock"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert!(!d.join("t.sock").exists(), "no control socket left behind");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_bad_api_section_names_the_key_and_what_to_change() {
    let d = dir("tls-bad-pki");
    let pki = certs::make(&d);
    fails_with(
        "tls-no-files",
        "[api]\naddress = \"127.0.0.1:0\"\n",
        &["c.toml:", "api.tls_cert", "only with mutual TLS"],
    );
    fails_with(
        "tls-no-address",
        &pki.api_section("127.0.0.1:0")
            .replace("address = \"127.0.0.1:0\"\n", ""),
        &["api.address", "no address"],
    );
    fails_with(
        "tls-bad-address",
        &pki.api_section("localhost:9440"),
        &["api.address", "is not IP:PORT"],
    );
    // A key where the certificate belongs, and a missing CA file.
    let swapped = pki
        .api_section("127.0.0.1:0")
        .replace("server.crt", "server.key");
    fails_with(
        "tls-swapped",
        &swapped,
        &["api.tls_cert", "no PEM CERTIFICATE", "server.key"],
    );
    let missing = pki.api_section("127.0.0.1:0").replace("ca.crt", "nope.crt");
    fails_with(
        "tls-missing",
        &missing,
        &["api.client_ca", "cannot read", "nope.crt"],
    );
    // An address in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = busy.local_addr().expect("addr").to_string();
    fails_with(
        "tls-busy",
        &pki.api_section(&a),
        &["api.address", "cannot listen", &a],
    );
    let _ = std::fs::remove_dir_all(&d);
}
