//! In-band authentication keys through the management API and the configuration file:
//! set and rotate a host's keys, list them (never the secrets), clear them, save them
//! back; bad input refused with INVALID_ARGUMENT naming what to change; the secrets
//! appear in no log.

use lightpool_api::v1 as pb;
use std::time::{Duration, Instant};

use lightpool_api::v1::{
    config_client::ConfigClient, subsystems_client::SubsystemsClient, upgrade_client::UpgradeClient,
};
use tonic::Code;

mod common;
use common::*;

const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000c1";
/// nvme-connect(1)'s example secret.
const KEY: &str = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
/// The same with one character changed: its CRC no longer matches.
const BAD_CRC: &str = "DHHC-1:00:ja6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
const KEY2: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";

fn set(host: &str, key: &str) -> pb::SetHostKeyRequest {
    pb::SetHostKeyRequest {
        nqn: NQN.into(),
        host: host.into(),
        key: key.into(),
        ..Default::default()
    }
}

fn logs(t: &Target) -> String {
    ["out.log", "err.log"]
        .iter()
        .map(|f| std::fs::read_to_string(t.dir.join(f)).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_set_rotate_list_clear_and_refusals() {
    let t = start("auth");
    let c = ch(&t).await;
    let mut sub = SubsystemsClient::new(c.clone());

    let k = sub
        .set_host_key(set(HOST, KEY))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(
        (
            k.host.as_str(),
            k.bidirectional,
            k.hash.as_str(),
            k.dhgroup.as_str()
        ),
        (HOST, false, "sha256", "null")
    );
    // Rotation: a new key, bidirectional, other parameters.
    let k = sub
        .set_host_key(pb::SetHostKeyRequest {
            ctrl_key: KEY.into(),
            hash: "sha512".into(),
            dhgroup: "ffdhe4096".into(),
            ..set(HOST, KEY2)
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(
        (k.bidirectional, k.hash.as_str(), k.dhgroup.as_str()),
        (true, "sha512", "ffdhe4096")
    );
    let s = sub
        .list_subsystems(pb::ListSubsystemsRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(s.subsystems[0].host_keys, vec![k.clone()]);

    // Refusals, each naming what to change.
    refused(
        sub.set_host_key(set(HOST, "DHHC-1:00:@@@:")).await,
        Code::InvalidArgument,
        &["key", "base64"],
    );
    refused(
        sub.set_host_key(set(HOST, BAD_CRC)).await,
        Code::InvalidArgument,
        &["CRC-32"],
    );
    refused(
        sub.set_host_key(set(HOST, &KEY.replace(":00:", ":07:")))
            .await,
        Code::InvalidArgument,
        &["\"07\"", "01 (SHA-256)"],
    );
    refused(
        sub.set_host_key(set(HOST, "secret")).await,
        Code::InvalidArgument,
        &["DHHC-1:"],
    );
    refused(
        sub.set_host_key(pb::SetHostKeyRequest {
            hash: "md5".into(),
            ..set(HOST, KEY)
        })
        .await,
        Code::InvalidArgument,
        &["md5", "sha384"],
    );
    refused(
        sub.set_host_key(pb::SetHostKeyRequest {
            dhgroup: "modp".into(),
            ..set(HOST, KEY)
        })
        .await,
        Code::InvalidArgument,
        &["modp", "ffdhe2048"],
    );
    refused(
        sub.set_host_key(pb::SetHostKeyRequest {
            ctrl_key: BAD_CRC.into(),
            ..set(HOST, KEY)
        })
        .await,
        Code::InvalidArgument,
        &["ctrl_key", "CRC-32"],
    );
    refused(
        sub.set_host_key(set("not-an-nqn", KEY)).await,
        Code::InvalidArgument,
        &["host"],
    );
    refused(
        sub.set_host_key(pb::SetHostKeyRequest {
            nqn: "nqn.2024-01.io.x:none".into(),
            ..set(HOST, KEY)
        })
        .await,
        Code::NotFound,
        &["no subsystem"],
    );
    // The refused calls changed nothing.
    let s = sub
        .list_subsystems(pb::ListSubsystemsRequest { nqn: NQN.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.subsystems[0].host_keys, vec![k]);

    // Saved configuration carries the keys, so a restart keeps them.
    let text = ConfigClient::new(c.clone())
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(text.contains("[[subsystem.host_key]]"), "{text}");
    assert!(text.contains(KEY2) && text.contains(KEY), "{text}");
    assert!(text.contains("dhgroup = \"ffdhe4096\""), "{text}");

    sub.clear_host_key(pb::ClearHostKeyRequest {
        nqn: NQN.into(),
        host: HOST.into(),
    })
    .await
    .expect("clear");
    refused(
        sub.clear_host_key(pb::ClearHostKeyRequest {
            nqn: NQN.into(),
            host: HOST.into(),
        })
        .await,
        Code::NotFound,
        &["no keys"],
    );
    let s = sub
        .list_subsystems(pb::ListSubsystemsRequest { nqn: NQN.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(s.subsystems[0].host_keys.is_empty());

    let log = logs(&t);
    assert!(log.contains("host authentication keys changed"), "{log}");
    for secret in ["ia6zGodOr4", "AAECAwQF", "ja6zGodOr4"] {
        assert!(!log.contains(secret), "a secret in the log:\n{log}");
    }
}

#[test]
fn config_file_keys_are_checked_and_loaded() {
    let d = dir("authcfg");
    let cfg = d.join("c.toml");
    let body = |key: &str| {
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
             [[subsystem.host_key]]\nhost = \"{HOST}\"\nkey = \"{key}\"\ndhgroup = \"ffdhe2048\"\n"
        )
    };
    std::fs::write(&cfg, body(BAD_CRC)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lightpool-target"))
        .args(["--config", cfg.to_str().unwrap(), "--control-socket"])
        .arg(d.join("x.sock"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("subsystem[0].host_key[0].key") && err.contains("CRC-32"),
        "{err}"
    );
    assert!(!err.contains("ja6zGodOr4"), "{err}");

    std::fs::write(&cfg, body(KEY)).unwrap();
    let t = start_in(&d, &["--config", cfg.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(async {
        SubsystemsClient::new(ch(&t).await)
            .list_subsystems(pb::ListSubsystemsRequest { nqn: NQN.into() })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(s.subsystems[0].host_keys.len(), 1);
    assert_eq!(s.subsystems[0].host_keys[0].dhgroup, "ffdhe2048");
    assert!(!logs(&t).contains("ia6zGodOr4"));
}

/// The keys survive a hot upgrade (they travel in the boot blob of the state region).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_survive_a_hot_upgrade() {
    let t = start("authup");
    let c = ch(&t).await;
    let want = SubsystemsClient::new(c.clone())
        .set_host_key(pb::SetHostKeyRequest {
            ctrl_key: KEY2.into(),
            dhgroup: "ffdhe6144".into(),
            hash: "sha384".into(),
            ..set(HOST, KEY)
        })
        .await
        .expect("set")
        .into_inner();
    let r = UpgradeClient::new(c.clone())
        .start_upgrade(pb::StartUpgradeRequest {
            binary: env!("CARGO_BIN_EXE_lightpool-target").into(),
            log: "info".into(),
        })
        .await
        .expect("upgrade")
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    let c2 = loop {
        let c2 = ch(&t).await;
        if let Ok(s) = UpgradeClient::new(c2.clone())
            .get_status(pb::GetStatusRequest {})
            .await
        {
            if s.get_ref().pid == r.new_pid {
                break c2;
            }
        }
        assert!(Instant::now() < deadline, "the new process answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let s = SubsystemsClient::new(c2.clone())
        .list_subsystems(pb::ListSubsystemsRequest { nqn: NQN.into() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(s.subsystems[0].host_keys, vec![want]);
    // And the secrets themselves came over: the saved configuration holds them.
    let text = ConfigClient::new(c2)
        .save_config(pb::SaveConfigRequest {})
        .await
        .expect("save")
        .into_inner()
        .toml;
    assert!(text.contains(KEY) && text.contains(KEY2), "{text}");
}
