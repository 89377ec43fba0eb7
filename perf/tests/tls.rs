//! NVMe/TCP in TLS 1.3 with pre-shared keys, end to end between lightpool-perf and an
//! in-process LightPool target (the same transport lightpool-target runs): --verify
//! runs clean with both cipher suites and both identity versions; a wrong or unknown
//! key is refused and the target logs why while a plain listener keeps serving;
//! `secure = required` refuses plain NVMe/TCP, `optional` takes both; the discovery
//! log says which listener wants TLS.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use common::{perf, trid, NQN};
use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::tls::{ConfiguredPsk, PskHash, Secure};
use lightpool_nvmf::transport::{ConnectionInfo, Transport};
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use lightpool_nvmf_host::{discover, ConnectOptions, HostTls};
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use lightpool_transport_tcp::TcpTransport;

const HOST_256: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-000000000256";
const HOST_384: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-000000000384";
const HOST_NONE: &str = "nqn.2014-08.org.nvmexpress:uuid:7e500000-0000-4000-8000-0000000000ff";

/// Everything the target logs, from every test of this binary.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let l = Log::default();
        let w = l.clone();
        tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
        l
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&log().0.lock().expect("log lock")).into_owned()
}

/// The log once it holds `want`, or as it is after 10 s. A refusal is logged by the
/// target's reactor after OpenSSL has sent the host its alert, so the host (and this
/// test) can be done before the line is written.
fn logged_with(want: &str) -> String {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = logged();
        if log.contains(want) || std::time::Instant::now() > until {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A target with one RAM namespace, TLS keys for two hosts and one listener per
/// `secure` given (in that order).
struct TlsTarget {
    addrs: Vec<SocketAddr>,
    reactor: ReactorHandle,
    target: Arc<Target>,
    tcp: TcpTransport,
}

impl Drop for TlsTarget {
    fn drop(&mut self) {
        self.reactor.stop();
        let _ = self.reactor.join();
    }
}

fn k256() -> ConfiguredPsk {
    ConfiguredPsk::new(Some(PskHash::Sha256), &[0x5a; 32]).expect("valid")
}

fn k384() -> ConfiguredPsk {
    ConfiguredPsk::new(Some(PskHash::Sha384), &[0xa5; 48]).expect("valid")
}

fn start(listeners: &[Secure]) -> TlsTarget {
    log();
    let t = Target::new(TargetOptions::default()).expect("valid options");
    let bdev = MallocBdev::new("ram", 32 << 20, 512).expect("RAM device");
    let mut sc = SubsystemConfig::new(NQN);
    sc.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev,
        nguid: None,
        uuid: None,
        anagrpid: None,
        num_blocks: None,
    });
    t.add_subsystem(sc).expect("valid subsystem");
    t.tls.set(HOST_256, NQN, Some(k256())).expect("key");
    t.tls.set(HOST_384, NQN, Some(k384())).expect("key");
    // Discovery over TLS is the discovery subsystem's pair.
    t.tls
        .set(
            HOST_256,
            lightpool_spec::fabrics::DISCOVERY_NQN,
            Some(k256()),
        )
        .expect("key");
    let reactor = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor");
    let tcp = TcpTransport::new(t.clone(), vec![reactor.clone()]).expect("transport");
    let addrs = listeners
        .iter()
        .map(|s| {
            tcp.listen_secure("127.0.0.1:0".parse().expect("address"), *s)
                .expect("listen")
        })
        .collect();
    TlsTarget {
        addrs,
        reactor,
        target: t,
        tcp,
    }
}

fn verify_args<'a>(r: &'a str, host: &'a str) -> Vec<&'a str> {
    vec![
        "-r",
        r,
        "--hostnqn",
        host,
        "-q",
        "8",
        "-o",
        "4096",
        "-w",
        "randrw",
        "-M",
        "50",
        "-t",
        "0.5",
        "--verify",
        "--range",
        "0:8192",
        "--json",
    ]
}

fn assert_clean(run: &common::Run, what: &str) {
    let what = format!("{what}\n{}\ntarget log:\n{}", run.dump(), logged());
    assert_eq!(run.code, 0, "{what}");
    assert!(run.total_iops() > 0.0, "{what}");
    assert_eq!(run.field(&["error_total"]), 0, "{what}");
    assert_eq!(run.field(&["verify", "mismatches"]), 0, "{what}");
    assert!(
        run.field(&["verify", "blocks_checked"])
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{what}"
    );
}

#[test]
fn verify_runs_clean_in_tls_with_both_suites_and_identities() {
    let t = start(&[Secure::Required]);
    let r = trid(t.addrs[0], Some(NQN));
    let key256 = k256().to_interchange();
    let key384 = k384().to_interchange();
    for (host, key, identity, digest) in [
        (HOST_256, &key256, "1", false),
        (HOST_256, &key256, "0", true),
        (HOST_384, &key384, "1", true),
        (HOST_384, &key384, "0", false),
    ] {
        let mut args = verify_args(&r, host);
        args.extend(["--tls-key", key, "--tls-identity", identity]);
        if digest {
            args.push("--digest");
        }
        let run = perf(&args);
        assert_clean(
            &run,
            &format!("{host} identity v{identity} digest {digest}"),
        );
    }
    let log = logged();
    assert!(
        log.contains("suite=\"TLS_AES_128_GCM_SHA256\"")
            || log.contains("suite=TLS_AES_128_GCM_SHA256"),
        "{log}"
    );
    assert!(log.contains("TLS_AES_256_GCM_SHA384"), "{log}");
    assert!(
        log.contains("record_layer=\"software\"") || log.contains("record_layer=software"),
        "{log}"
    );
    // Whether or not the kernel has the tls ULP, the target says where records go.
    assert!(log.contains("TLS records in software"), "{log}");
}

/// The connections the target holds while a perf run (2 s) is connected, and the
/// run's outcome.
fn connections_during(t: &TlsTarget, args: Vec<String>) -> (Vec<ConnectionInfo>, common::Run) {
    let run = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        perf(&args)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline && !run.is_finished() {
        let cs = t.tcp.connections().expect("connections");
        // The admin queue and the I/O queue, both connected to the subsystem.
        if cs.len() >= 2 && cs.iter().all(|c| c.subnqn.is_some()) {
            seen = cs;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (seen, run.join().expect("perf thread"))
}

#[test]
fn the_management_view_says_who_carries_each_connections_records() {
    let t = start(&[Secure::Required, Secure::None]);
    let key = k256().to_interchange();
    let r = trid(t.addrs[0], Some(NQN));
    let mut args = verify_args(&r, HOST_256);
    args.extend(["--tls-key", &key]);
    let args: Vec<String> = args.iter().map(|a| a.replace("0.5", "2")).collect();
    let (cs, run) = connections_during(&t, args);
    assert_clean(&run, "TLS");
    assert!(!cs.is_empty(), "no connection seen during the run");
    // The target logs where records go (kernel when it has the tls ULP, else software);
    // the management view must say the same for every queue.
    let want = if logged().contains("TLS records in software") {
        "software"
    } else {
        "kernel"
    };
    for c in &cs {
        assert_eq!(c.tls, want, "{c:?}");
        assert!(!c.authenticated, "no DH-HMAC-CHAP key: {c:?}");
    }
    let r = trid(t.addrs[1], Some(NQN));
    let args = verify_args(&r, HOST_NONE);
    let args: Vec<String> = args.iter().map(|a| a.replace("0.5", "2")).collect();
    let (cs, run) = connections_during(&t, args);
    assert_clean(&run, "plain");
    assert!(!cs.is_empty(), "no connection seen during the plain run");
    for c in &cs {
        assert_eq!(c.tls, "off", "{c:?}");
    }
}

#[test]
fn a_wrong_or_missing_key_is_refused_and_logged_while_plain_serves() {
    let t = start(&[Secure::Required, Secure::None]);
    let tls = trid(t.addrs[0], Some(NQN));
    let plain = trid(t.addrs[1], Some(NQN));
    // The right identity (same NQNs) with another key: the PSK binder does not verify.
    let wrong = ConfiguredPsk::new(Some(PskHash::Sha256), &[0x11; 32])
        .expect("valid")
        .to_interchange();
    // Version-0 identities do not depend on the key: the target knows the identity
    // and the handshake fails on the key.
    let mut args = verify_args(&tls, HOST_256);
    args.extend(["--tls-key", &wrong, "--tls-identity", "0"]);
    let run = perf(&args);
    assert_ne!(run.code, 0, "{}", run.dump());
    assert!(run.stderr.contains("TLS"), "{}", run.dump());
    // A host with no key at all: its identity is unknown.
    let key = k256().to_interchange();
    let mut args = verify_args(&tls, HOST_NONE);
    args.extend(["--tls-key", &key]);
    let run = perf(&args);
    assert_ne!(run.code, 0, "{}", run.dump());
    let log = logged_with("the host's PSK differs from the one configured");
    assert!(
        log.contains("the host's PSK differs from the one configured"),
        "{log}"
    );
    let unknown =
        format!("no TLS PSK is configured for the identity \"NVMe1R01 {HOST_NONE} {NQN} ");
    let log = logged_with(&unknown);
    assert!(log.contains(&unknown), "{log}");
    // Meanwhile the plain listener of the same target serves.
    assert_clean(&perf(&verify_args(&plain, HOST_NONE)), "plain beside TLS");
}

#[test]
fn required_refuses_plain_and_optional_takes_both() {
    let t = start(&[Secure::Required, Secure::Optional]);
    let required = trid(t.addrs[0], Some(NQN));
    let optional = trid(t.addrs[1], Some(NQN));
    let run = perf(&verify_args(&required, HOST_256));
    assert_ne!(run.code, 0, "{}", run.dump());
    let log = logged_with("plain NVMe/TCP on a listener that requires TLS");
    assert!(
        log.contains("plain NVMe/TCP on a listener that requires TLS"),
        "{log}"
    );
    assert_clean(
        &perf(&verify_args(&optional, HOST_256)),
        "plain on optional",
    );
    let key = k256().to_interchange();
    let mut args = verify_args(&optional, HOST_256);
    args.extend(["--tls-key", &key]);
    assert_clean(&perf(&args), "TLS on optional");
}

#[test]
fn discovery_says_which_listener_wants_tls() {
    let t = start(&[Secure::Required, Secure::Optional, Secure::None]);
    let p = k256()
        .tls_psk(
            HOST_256,
            lightpool_spec::fabrics::DISCOVERY_NQN,
            lightpool_nvmf::tls::IdentityVersion::V1,
            lightpool_nvmf::tls::Derivation::Standard,
        )
        .expect("derives");
    let log = discover(ConnectOptions {
        addr: t.addrs[0],
        subnqn: String::new(),
        hostnqn: HOST_256.to_string(),
        hostid: [7; 16],
        hdgst: false,
        ddgst: false,
        kato_ms: 0,
        timeout: std::time::Duration::from_secs(5),
        tls: Some(HostTls {
            identity: p.identity.clone(),
            key: p.key.to_vec(),
            sha384: false,
        }),
        ktls: true,
    })
    .expect("discovery over TLS");
    let entry = |port: u16| {
        log.iter()
            .find(|e| e.subnqn == NQN && e.trsvcid == port.to_string())
            .unwrap_or_else(|| panic!("no entry for port {port}: {log:?}"))
    };
    use lightpool_spec::log::{tcp_sectype, treq};
    let req = entry(t.addrs[0].port());
    assert_eq!(
        (req.treq & 3, req.sectype),
        (treq::REQUIRED, tcp_sectype::TLS_1_3)
    );
    let opt = entry(t.addrs[1].port());
    assert_eq!(
        (opt.treq & 3, opt.sectype),
        (treq::NOT_REQUIRED, tcp_sectype::TLS_1_3)
    );
    let none = entry(t.addrs[2].port());
    assert_eq!(
        (none.treq & 3, none.sectype),
        (treq::NOT_REQUIRED, tcp_sectype::NONE)
    );
    assert_eq!(
        t.target.tls.listener(&t.addrs[0].to_string()),
        Secure::Required
    );
}

/// A hot upgrade's export: the plain connection travels, the TLS one (its keys live in
/// this process's OpenSSL) does not, and the listener's setting travels with it.
#[test]
fn a_handover_carries_plain_connections_and_the_listener_setting_not_tls_ones() {
    let t = start(&[Secure::Optional]);
    // Queues are exported from their records in a state region.
    let name = std::ffi::CString::new("tls-handover-test").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: a new descriptor we own.
    let memfd = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (sizes, ropts) = lightpool_nvmf::target::region_params(&t.target.opts);
    let region =
        lightpool_nvmf::region::Region::create(memfd, sizes, ropts, lightpool_nvmf::region::LAYOUT)
            .expect("region");
    t.target.attach_region(region).expect("attach");
    let opts = |tls: Option<HostTls>| ConnectOptions {
        addr: t.addrs[0],
        subnqn: NQN.to_string(),
        hostnqn: HOST_256.to_string(),
        hostid: [9; 16],
        hdgst: false,
        ddgst: false,
        kato_ms: 0,
        timeout: std::time::Duration::from_secs(5),
        tls,
        ktls: true,
    };
    let p = k256()
        .tls_psk(
            HOST_256,
            NQN,
            lightpool_nvmf::tls::IdentityVersion::V1,
            lightpool_nvmf::tls::Derivation::Standard,
        )
        .expect("derives");
    let _plain = lightpool_nvmf_host::Controller::connect(opts(None)).expect("plain");
    let _tls = lightpool_nvmf_host::Controller::connect(opts(Some(HostTls {
        identity: p.identity.clone(),
        key: p.key.to_vec(),
        sha384: false,
    })))
    .expect("TLS");
    let (st, fds) = t
        .tcp
        .quiesce_and_export(0, std::time::Duration::from_secs(5))
        .expect("export")
        .expect("drained");
    // One listener, and of the two admin queues only the plain one.
    assert_eq!(st.listeners.len(), 1);
    assert_eq!(st.conns.len(), 1, "{st:?}");
    assert_eq!(fds.len(), 2);
    assert_eq!(
        st.secure,
        vec![(t.addrs[0].to_string(), Secure::Optional)],
        "{st:?}"
    );
    let log = logged();
    assert!(
        log.contains("NVMe/TCP TLS connection not handed over"),
        "{log}"
    );
}
