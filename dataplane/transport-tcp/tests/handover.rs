//! A listener handed over in a hot upgrade: the successor's reactor watches it once
//! (no "cannot watch the listening socket" error at release, as when the adopted
//! listener was registered with the reactor's epoll set twice) and new connections are
//! accepted after the release.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lightpool_nvmf::region::{Region, LAYOUT};
use lightpool_nvmf::target::region_params;
use lightpool_nvmf::{Target, TargetOptions};
use lightpool_reactor::ReactorConfig;
use lightpool_spec::tcp::{CommonHeader, IcReq, PduType};
use lightpool_transport_tcp::TcpTransport;

/// Everything logged, from every thread.
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

fn memfd() -> File {
    let name = std::ffi::CString::new("handover-test").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: a new descriptor we own.
    unsafe { File::from_raw_fd(fd) }
}

/// ICReq, then the ICResp's PDU type.
fn handshake(addr: std::net::SocketAddr) -> u8 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let icreq = IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: false,
        ddgst: false,
        maxr2t: 0,
    };
    s.write_all(&icreq.encode()).expect("send ICReq");
    let mut ch = [0u8; 8];
    s.read_exact(&mut ch).expect("ICResp");
    CommonHeader::parse(&ch).pdu_type
}

#[test]
fn adopted_listener_is_watched_once_and_accepts() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let opts = TargetOptions::default();
    let (sizes, ropts) = region_params(&opts);
    let region = Region::create(memfd(), sizes, ropts, LAYOUT).expect("region");
    let old_target = Target::new(opts.clone()).expect("target");
    old_target.attach_region(region.clone()).expect("attach");
    let old_reactor = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor");
    let old = TcpTransport::new(old_target, vec![old_reactor.clone()]).expect("transport");
    let addr = old
        .listen("127.0.0.1:0".parse().expect("address"))
        .expect("listen");
    assert_eq!(
        handshake(addr),
        PduType::IcResp as u8,
        "the old side serves"
    );

    let (state, fds) = old
        .quiesce_and_export(0, Duration::from_secs(5))
        .expect("export")
        .expect("drained at once: no connection is busy");
    assert_eq!(state.listeners.len(), 1);
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();

    // The successor: its own target and reactor; the old side stays frozen.
    let image = Arc::new(lightpool_nvmf::restore::read_image(&region, true).expect("image"));
    let new_target = Target::new(opts).expect("target");
    let new_reactor = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor");
    let new = TcpTransport::adopt(
        new_target,
        vec![new_reactor.clone()],
        region,
        image,
        &state,
        &mut fds,
    )
    .expect("adopt");
    new.release().expect("release");
    old_reactor.stop();
    old_reactor.join().expect("old reactor");

    assert_eq!(
        handshake(addr),
        PduType::IcResp as u8,
        "the successor accepts"
    );
    new_reactor.stop();
    new_reactor.join().expect("new reactor");
    let text = String::from_utf8_lossy(&log.0.lock().expect("log lock")).to_string();
    assert!(
        text.contains("NVMe/TCP listener adopted"),
        "the log is captured: {text}"
    );
    assert!(
        !text.contains("cannot watch"),
        "the adopted listener was watched twice:\n{text}"
    );
}
