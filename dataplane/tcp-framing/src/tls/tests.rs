//! Both ends over loopback TCP, driven nonblocking as the reactors drive them.

use std::io::{ErrorKind, IoSlice};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use super::*;

pub(super) struct One(pub(super) Psk);

impl PskStore for One {
    fn find(&self, identity: &[u8]) -> Option<Psk> {
        (identity == self.0.identity.as_slice()).then(|| self.0.clone())
    }
}

pub(super) fn psk(id: &str, key: u8, suite: Suite) -> Psk {
    let n = match suite {
        Suite::Aes128GcmSha256 => 32,
        Suite::Aes256GcmSha384 => 48,
    };
    Psk {
        identity: id.as_bytes().to_vec(),
        key: vec![key; n],
        suite,
    }
}

pub(super) fn pair() -> (Arc<TcpStream>, Arc<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    for t in [&c, &s] {
        t.set_nonblocking(true).expect("nonblocking");
    }
    (Arc::new(s), Arc::new(c))
}

/// Drive both handshakes until both are done or one fails.
pub(super) fn handshake(
    s: &mut TlsStream,
    c: &mut TlsStream,
) -> (io::Result<bool>, io::Result<bool>) {
    for _ in 0..10_000 {
        let rc = c.handshake();
        let rs = s.handshake();
        let done = matches!((&rs, &rc), (Ok(true), Ok(true)));
        if done || rs.is_err() || rc.is_err() {
            return (rs, rc);
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    panic!("handshake did not finish");
}

pub(super) fn read_all(s: &mut TlsStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    for _ in 0..100_000 {
        match Stream::read(s, &mut out[got..]) {
            Ok(0) => panic!("end of stream after {got} bytes"),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("read: {e}"),
        }
        if got == n {
            return out;
        }
    }
    panic!("only {got} of {n} bytes arrived");
}

#[test]
fn both_suites_carry_bytes_both_ways() {
    for suite in [Suite::Aes128GcmSha256, Suite::Aes256GcmSha384] {
        let p = psk("NVMe0R01 nqn.h nqn.s", 7, suite);
        let sctx = server_context(Arc::new(One(p.clone()))).expect("server context");
        let cctx = client_context(suite).expect("client context");
        let (st, ct) = pair();
        let mut s = TlsStream::accept(&sctx, st).expect("accept");
        let mut c = TlsStream::connect(&cctx, ct, p).expect("connect");
        let (rs, rc) = handshake(&mut s, &mut c);
        assert!(rs.expect("server") && rc.expect("client"));
        assert_eq!(s.suite(), Some(suite.name()));
        assert_eq!(c.suite(), Some(suite.name()));
        assert_eq!(
            s.offered_identity().as_deref(),
            Some("NVMe0R01 nqn.h nqn.s")
        );
        // A header, a payload larger than a record, a digest: several records.
        let head = [1u8; 24];
        let body: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let tail = [9u8; 4];
        let want: Vec<u8> = [&head[..], &body, &tail].concat();
        let mut sent = 0;
        while sent < want.len() {
            match c.writev(&[IoSlice::new(&want[sent..])]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("write: {e}"),
            }
        }
        assert_eq!(read_all(&mut s, want.len()), want);
        let n = s
            .writev(&[IoSlice::new(b"resp"), IoSlice::new(b"onse")])
            .expect("write");
        assert_eq!(n, 8);
        assert_eq!(read_all(&mut c, 8), b"response");
    }
}

#[test]
fn gathered_pieces_arrive_in_order() {
    let p = psk("id", 3, Suite::Aes128GcmSha256);
    let sctx = server_context(Arc::new(One(p.clone()))).expect("server context");
    let (st, ct) = pair();
    let mut s = TlsStream::accept(&sctx, st).expect("accept");
    let mut c = TlsStream::connect(&client_context(Suite::Aes128GcmSha256).expect("ctx"), ct, p)
        .expect("connect");
    let (rs, rc) = handshake(&mut s, &mut c);
    assert!(rs.expect("server") && rc.expect("client"));
    let a = vec![0xAAu8; RECORD - 10];
    let b = vec![0xBBu8; 30];
    let n = c
        .writev(&[IoSlice::new(&a), IoSlice::new(&b)])
        .expect("write");
    assert_eq!(n, a.len() + b.len());
    let got = read_all(&mut s, n);
    assert_eq!(&got[..a.len()], &a[..]);
    assert_eq!(&got[a.len()..], &b[..]);
}

#[test]
fn a_wrong_key_fails_and_says_so() {
    let good = psk("NVMe0R01 nqn.h nqn.s", 1, Suite::Aes128GcmSha256);
    let bad = psk("NVMe0R01 nqn.h nqn.s", 2, Suite::Aes128GcmSha256);
    let sctx = server_context(Arc::new(One(good))).expect("server context");
    let (st, ct) = pair();
    let mut s = TlsStream::accept(&sctx, st).expect("accept");
    let mut c = TlsStream::connect(
        &client_context(Suite::Aes128GcmSha256).expect("ctx"),
        ct,
        bad,
    )
    .expect("connect");
    let (rs, _) = handshake(&mut s, &mut c);
    let e = rs.expect_err("the server refuses");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("PSK differs"), "{e}");
    // Reading afterwards repeats the reason instead of touching the socket.
    let mut buf = [0u8; 8];
    assert!(Stream::read(&mut s, &mut buf)
        .expect_err("failed")
        .to_string()
        .contains("PSK differs"));
}

#[test]
fn an_unknown_identity_fails_and_names_it() {
    let known = psk("NVMe0R01 nqn.h nqn.s", 1, Suite::Aes128GcmSha256);
    let other = psk("NVMe0R01 nqn.other nqn.s", 1, Suite::Aes128GcmSha256);
    let sctx = server_context(Arc::new(One(known))).expect("server context");
    let (st, ct) = pair();
    let mut s = TlsStream::accept(&sctx, st).expect("accept");
    let mut c = TlsStream::connect(
        &client_context(Suite::Aes128GcmSha256).expect("ctx"),
        ct,
        other,
    )
    .expect("connect");
    let (rs, _) = handshake(&mut s, &mut c);
    let e = rs.expect_err("the server refuses").to_string();
    assert!(
        e.contains("no TLS PSK is configured for the identity \"NVMe0R01 nqn.other nqn.s\""),
        "{e}"
    );
}

#[test]
fn a_sha384_key_is_not_offered_for_sha256() {
    // The host's PSK is for the SHA-384 suite, the target's for SHA-256 under the same
    // identity: no suite fits both, the handshake fails.
    let s256 = psk("id", 1, Suite::Aes128GcmSha256);
    let s384 = psk("id", 1, Suite::Aes256GcmSha384);
    let sctx = server_context(Arc::new(One(s256))).expect("server context");
    let (st, ct) = pair();
    let mut s = TlsStream::accept(&sctx, st).expect("accept");
    let mut c = TlsStream::connect(
        &client_context(Suite::Aes256GcmSha384).expect("ctx"),
        ct,
        s384,
    )
    .expect("connect");
    let (rs, rc) = handshake(&mut s, &mut c);
    assert!(rs.is_err() || rc.is_err());
}
