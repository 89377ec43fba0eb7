//! NVMe/TCP in TLS 1.3 on lightpool-target with OpenSSL's own client as the peer:
//! `openssl s_client -tls1_3` with the identity and TLS PSK derived as nvme-cli derives
//! them completes the handshake (TLS_AES_128_GCM_SHA256 with `-psk`,
//! TLS_AES_256_GCM_SHA384 with a `-psk_session` file, since s_client's `-psk` is
//! SHA-256 only) and NVMe/TCP runs over it (ICReq in, ICResp out); a wrong key is
//! refused and logged while a plain listener keeps serving; `secure = "required"`
//! refuses a plain ICReq. lightpool-perf --verify over TLS is in perf/tests/tls.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lightpool_nvmf::tls::{ConfiguredPsk, Derivation, IdentityVersion, PskHash, TlsPsk};
use lightpool_spec::tcp::{IcReq, PduType};

mod common;
use common::*;

const H256: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-00000000a256";
const H384: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-00000000a384";

fn k256() -> ConfiguredPsk {
    ConfiguredPsk::new(Some(PskHash::Sha256), &[0x3c; 32]).expect("valid")
}

fn k384() -> ConfiguredPsk {
    ConfiguredPsk::new(Some(PskHash::Sha384), &[0xc3; 48]).expect("valid")
}

fn derived(k: &ConfiguredPsk, host: &str) -> TlsPsk {
    k.tls_psk(host, NQN, IdentityVersion::V1, Derivation::Standard)
        .expect("derives")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn icreq() -> [u8; 128] {
    IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: false,
        ddgst: false,
        maxr2t: 0,
    }
    .encode()
}

/// A target with a plain listener (first) and one that requires TLS on `port`.
fn start_tls(name: &str, port: u16) -> Target {
    let d = dir(name);
    let cfg = d.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\naddress = \"127.0.0.1:{port}\"\nsecure = \"required\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.tls_key]]\nhost = \"{H256}\"\nkey = \"{}\"\n\
             [[subsystem.tls_key]]\nhost = \"{H384}\"\nkey = \"{}\"\n",
            k256().to_interchange(),
            k384().to_interchange()
        ),
    )
    .expect("config");
    start_in(&d, &["--config", cfg.to_str().expect("utf-8")])
}

fn target_log(t: &Target) -> String {
    let mut s = std::fs::read_to_string(t.dir.join("err.log")).unwrap_or_default();
    s.push_str(&std::fs::read_to_string(t.dir.join("out.log")).unwrap_or_default());
    s
}

/// s_client to `port` with `args` (identity, key, suite), sending an ICReq once
/// connected; what came back within a few seconds (an ICResp when NVMe/TCP runs).
fn s_client_icreq(port: u16, args: &[&str]) -> Vec<u8> {
    let mut child: Child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_3",
        ])
        .args(["-quiet", "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (tests/vm/setup.sh installs openssl)");
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(&icreq())
        .expect("ICReq to s_client");
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = vec![0u8; 128];
        let mut n = 0;
        while n < got.len() {
            match out.read(&mut got[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        got.truncate(n);
        let _ = tx.send(got);
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    got
}

fn assert_icresp(got: &[u8], what: &str, t: &Target) {
    assert_eq!(got.len(), 128, "{what}: no ICResp\n{}", target_log(t));
    assert_eq!(got[0], PduType::IcResp as u8, "{what}");
    assert_eq!(
        u32::from_le_bytes([got[4], got[5], got[6], got[7]]),
        128,
        "{what}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn s_client_handshakes_with_both_suites_and_nvme_tcp_runs_over_it() {
    let port = free_port();
    let t = start_tls("tls-sclient", port);
    // SHA-256: -psk with the derived TLS PSK in hex.
    let p = derived(&k256(), H256);
    let key = hex(&p.key);
    let got = s_client_icreq(
        port,
        &[
            "-psk_identity",
            &p.identity,
            "-psk",
            &key,
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256",
        ],
    );
    assert_icresp(&got, "TLS_AES_128_GCM_SHA256", &t);
    // SHA-384: the PSK as a session file.
    let p = derived(&k384(), H384);
    let pem = lightpool_tcp_framing::tls::psk_session_pem(&lightpool_tcp_framing::tls::Psk {
        identity: p.identity.as_bytes().to_vec(),
        key: p.key.to_vec(),
        suite: lightpool_tcp_framing::tls::Suite::Aes256GcmSha384,
    })
    .expect("session file");
    let sess = t.dir.join("psk384.pem");
    std::fs::write(&sess, pem).expect("write session");
    let got = s_client_icreq(
        port,
        &[
            "-psk_identity",
            &p.identity,
            "-psk_session",
            sess.to_str().expect("utf-8"),
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384",
        ],
    );
    assert_icresp(&got, "TLS_AES_256_GCM_SHA384", &t);
    let log = target_log(&t);
    assert!(log.contains("NVMe/TCP TLS established"), "{log}");
    assert!(log.contains("TLS_AES_128_GCM_SHA256"), "{log}");
    assert!(log.contains("TLS_AES_256_GCM_SHA384"), "{log}");
    assert!(log.contains(&p.identity), "{log}");
}

#[test]
fn a_wrong_key_is_refused_and_logged_while_the_plain_listener_serves() {
    let port = free_port();
    let t = start_tls("tls-wrong", port);
    // The identity of H256 (version 0: it does not depend on the key) with a PSK
    // that is not the one the target derives for it.
    let p = k256()
        .tls_psk(H256, NQN, IdentityVersion::V0, Derivation::Standard)
        .expect("derives");
    let got = s_client_icreq(
        port,
        &[
            "-psk_identity",
            &p.identity,
            "-psk",
            &hex(&[0x42; 32]),
            "-ciphersuites",
            "TLS_AES_128_GCM_SHA256",
        ],
    );
    assert!(got.is_empty(), "a wrong key got an answer: {got:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !target_log(&t).contains("PSK differs") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = target_log(&t);
    assert!(log.contains("NVMe/TCP TLS: connection refused"), "{log}");
    assert!(
        log.contains(&format!("identity \"{}\"", p.identity)),
        "{log}"
    );
    assert!(
        log.contains("the host's PSK differs from the one configured"),
        "{log}"
    );
    // The plain listener answers an ICReq.
    let mut s = TcpStream::connect(t.listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&icreq()).expect("ICReq");
    let mut resp = [0u8; 128];
    s.read_exact(&mut resp)
        .expect("ICResp on the plain listener");
    assert_icresp(&resp, "plain listener", &t);
}

#[test]
fn required_refuses_a_plain_icreq() {
    let port = free_port();
    let t = start_tls("tls-required", port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(&icreq()).expect("ICReq");
    let mut b = [0u8; 128];
    // Closed without an answer (end of stream, or a reset).
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "a plain ICReq was answered on a TLS-only listener");
    let log = target_log(&t);
    assert!(
        log.contains("plain NVMe/TCP on a listener that requires TLS"),
        "{log}"
    );
}

/// A key set through the API opens TLS for its host at once; listed with its identity
/// and never the key; saved with the configuration; refused when malformed; cleared,
/// the host's next handshake is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_set_list_save_and_clear_through_the_api() {
    use lightpool_api::v1 as pb;
    use lightpool_api::v1::{config_client::ConfigClient, subsystems_client::SubsystemsClient};
    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-0000000a0a0a";
    let port = free_port();
    let t = start_tls("tls-api", port);
    let c = ch(&t).await;
    let mut sub = SubsystemsClient::new(c.clone());
    let k = ConfiguredPsk::new(None, &[0x77; 32]).expect("valid");
    let p = k
        .tls_psk(HOST, NQN, IdentityVersion::V1, Derivation::Standard)
        .expect("derives");
    let sclient = move || {
        let p = p.clone();
        std::thread::spawn(move || {
            s_client_icreq(
                port,
                &[
                    "-psk_identity",
                    &p.identity,
                    "-psk",
                    &hex(&p.key),
                    "-ciphersuites",
                    "TLS_AES_128_GCM_SHA256",
                ],
            )
        })
        .join()
        .expect("s_client thread")
    };
    // No key yet: refused.
    assert!(sclient().is_empty());
    let set = |key: &str| pb::SetTlsKeyRequest {
        nqn: NQN.into(),
        host: HOST.into(),
        key: key.into(),
    };
    let shown = sub
        .set_tls_key(set(&k.to_interchange()))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(
        (shown.hash.as_str(), shown.transform.as_str()),
        ("sha256", "none")
    );
    assert!(shown
        .identity
        .starts_with(&format!("NVMe1R01 {HOST} {NQN} ")));
    assert_icresp(&sclient(), "key set through the API", &t);
    let listed = sub
        .list_subsystems(pb::ListSubsystemsRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner();
    assert!(listed.subsystems[0].tls_keys.contains(&shown));
    let text = ConfigClient::new(c.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(text.contains("[[subsystem.tls_key]]"), "{text}");
    assert!(text.contains(&k.to_interchange()), "{text}");
    assert!(text.contains("secure = \"required\""), "{text}");
    refused(
        sub.set_tls_key(set("NVMeTLSkey-1:01:@@@:")).await,
        tonic::Code::InvalidArgument,
        &["base64"],
    );
    sub.clear_tls_key(pb::ClearTlsKeyRequest {
        nqn: NQN.into(),
        host: HOST.into(),
    })
    .await
    .expect("clear");
    assert!(sclient().is_empty(), "a cleared key still opens TLS");
    refused(
        sub.clear_tls_key(pb::ClearTlsKeyRequest {
            nqn: NQN.into(),
            host: HOST.into(),
        })
        .await,
        tonic::Code::NotFound,
        &["no TLS key"],
    );
}
