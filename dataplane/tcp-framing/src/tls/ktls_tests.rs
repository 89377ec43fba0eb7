//! Key derivation against RFC 8448's vectors and against OpenSSL's own records, and
//! the switch decision (what can run without a kernel that has kTLS; the switch
//! itself is exercised in the guest, tests/tests/ktls.rs).

use std::io::{ErrorKind, IoSlice, Read};
use std::sync::Arc;

use openssl::md::Md;
use openssl::symm::{decrypt_aead, Cipher};

use super::super::tests::{handshake, pair, psk, read_all, One};
use super::super::{client_context, server_context, Suite, TlsStream};
use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// RFC 8448 section 3 (simple 1-RTT handshake, TLS_AES_128_GCM_SHA256): the write
/// key and IV of each traffic secret the trace lists with its derived keys.
#[test]
fn hkdf_expand_label_matches_rfc8448() {
    let cases = [
        (
            // server handshake traffic secret
            "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38",
            "3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc",
            "5d 31 3e b2 67 12 76 ee 13 00 0b 30",
        ),
        (
            // client handshake traffic secret
            "b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21",
            "db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01",
            "5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f",
        ),
        (
            // server application traffic secret
            "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43",
            "9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56",
            "cf 78 2b 88 dd 83 54 9a ad f1 e9 84",
        ),
    ];
    for (secret, key, iv) in cases {
        let secret = unhex(secret);
        let k = hkdf_expand_label(Md::sha256(), &secret, b"key", b"", 16).expect("key");
        let i = hkdf_expand_label(Md::sha256(), &secret, b"iv", b"", 12).expect("iv");
        assert_eq!(k.as_slice(), unhex(key).as_slice());
        assert_eq!(i.as_slice(), unhex(iv).as_slice());
        let t = traffic_keys("TLS_AES_128_GCM_SHA256", &secret).expect("suite");
        assert_eq!(t.key.as_slice(), unhex(key).as_slice());
        assert_eq!(t.iv.as_slice(), unhex(iv).as_slice());
    }
    assert!(traffic_keys("TLS_CHACHA20_POLY1305_SHA256", &[0; 32]).is_err());
}

/// Both ends prepared and through the handshake.
fn prepared(suite: Suite) -> (TlsStream, TlsStream) {
    let p = psk("NVMe0R01 nqn.h nqn.s", 9, suite);
    let sctx = server_context(Arc::new(One(p.clone()))).expect("server context");
    let (st, ct) = pair();
    let mut s = TlsStream::accept(&sctx, st).expect("accept");
    let mut c = TlsStream::connect(&client_context(suite).expect("ctx"), ct, p).expect("connect");
    s.prepare_kernel().expect("prepare");
    c.prepare_kernel().expect("prepare");
    let (rs, rc) = handshake(&mut s, &mut c);
    assert!(rs.expect("server") && rc.expect("client"));
    (s, c)
}

/// One whole record off the socket, undecrypted.
fn raw_record(t: &TlsStream) -> Vec<u8> {
    let mut rec = Vec::new();
    let mut want = 5;
    for _ in 0..100_000 {
        let mut b = vec![0u8; want - rec.len()];
        match t.tcp().read(&mut b) {
            Ok(0) => panic!("end of stream"),
            Ok(n) => rec.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("read: {e}"),
        }
        if rec.len() == 5 && want == 5 {
            want = 5 + u16::from_be_bytes([rec[3], rec[4]]) as usize;
        }
        if rec.len() == want {
            return rec;
        }
    }
    panic!("no whole record");
}

/// The keys derived from what the key log handed over open the records OpenSSL
/// sealed, in both directions and both suites: what the kernel is given is right.
#[test]
fn derived_keys_open_openssl_records() {
    for (suite, cipher) in [
        (Suite::Aes128GcmSha256, Cipher::aes_128_gcm()),
        (Suite::Aes256GcmSha384, Cipher::aes_256_gcm()),
    ] {
        let (mut s, mut c) = prepared(suite);
        let (cs, ss) = s.secrets().expect("the server kept both secrets");
        assert_eq!(
            c.secrets(),
            Some((cs.clone(), ss.clone())),
            "both ends agree"
        );
        sealed_and_opened(&mut c, &s, &cs, suite, cipher);
        sealed_and_opened(&mut s, &c, &ss, suite, cipher);
    }
}

/// `from` writes two records, `to`'s socket reads them raw, `secret`'s keys open them.
fn sealed_and_opened(
    from: &mut TlsStream,
    to: &TlsStream,
    secret: &[u8],
    suite: Suite,
    cipher: Cipher,
) {
    let keys = traffic_keys(suite.name(), secret).expect("keys");
    for n in 0..2u8 {
        let msg = [b'a' + n; 40];
        assert_eq!(from.writev(&[IoSlice::new(&msg)]).expect("write"), 40);
        let rec = raw_record(to);
        assert_eq!(rec[0], RECORD_APPLICATION_DATA);
        // The nonce: the IV XOR the record's sequence number (RFC 8446 5.3).
        let mut nonce = keys.iv.to_vec();
        nonce[11] ^= n;
        let body = &rec[5..];
        let (ct, tag) = body.split_at(body.len() - 16);
        let plain = decrypt_aead(cipher, &keys.key, Some(&nonce), &rec[..5], ct, tag)
            .expect("the derived key opens the record");
        assert_eq!(&plain[..40], &msg[..]);
        assert_eq!(plain[40], RECORD_APPLICATION_DATA, "inner content type");
    }
}

#[test]
fn the_first_obstacle_keeps_software() {
    assert_eq!(may_switch(true, Ok(()), false, true), Ok(()));
    assert_eq!(may_switch(false, Ok(()), false, true), Err(Software::Off));
    assert_eq!(
        may_switch(true, Err("no kernel TLS (ENOENT)"), false, true),
        Err(Software::NoKernel("no kernel TLS (ENOENT)".into()))
    );
    // Record bytes in OpenSSL's buffer: the kernel would never see them.
    assert_eq!(
        may_switch(true, Ok(()), true, true),
        Err(Software::Buffered)
    );
    assert_eq!(
        may_switch(true, Ok(()), false, false),
        Err(Software::NoSecrets)
    );
    assert!(Software::Buffered
        .to_string()
        .contains("buffered in OpenSSL"));
}

/// The host's first record follows its Finished at once: with read-ahead (software
/// connections) the target's handshake pulls it into OpenSSL's buffer, which rules a
/// switch out; a prepared connection reads the handshake record by record and leaves
/// it in the socket.
#[test]
fn prepared_handshakes_leave_the_first_record_in_the_socket() {
    for prepare in [false, true] {
        let suite = Suite::Aes128GcmSha256;
        let p = psk("id", 4, suite);
        let sctx = server_context(Arc::new(One(p.clone()))).expect("server context");
        let (st, ct) = pair();
        ct.set_nodelay(true).expect("nodelay");
        let mut s = TlsStream::accept(&sctx, st).expect("accept");
        let mut c =
            TlsStream::connect(&client_context(suite).expect("ctx"), ct, p).expect("connect");
        if prepare {
            s.prepare_kernel().expect("prepare");
            c.prepare_kernel().expect("prepare");
        }
        // The client finishes first (its Finished is its last flight), and writes.
        let mut done = false;
        for _ in 0..10_000 {
            done = c.handshake().expect("client");
            if done {
                break;
            }
            assert!(!s.handshake().expect("server"));
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        assert!(done);
        assert_eq!(c.writev(&[IoSlice::new(b"icreq")]).expect("write"), 5);
        // Both records in the server's socket: the client's last flight (a CCS and
        // its Finished, 64 bytes) and the application record (27).
        let mut peek = [0u8; 256];
        for _ in 0..2000 {
            if s.tcp().peek(&mut peek).unwrap_or(0) >= 64 + 27 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        while !s.handshake().expect("server") {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        assert_eq!(s.buffered(), !prepare, "prepared: {prepare}");
        // Whatever the switch decides here (this kernel may have no kTLS), software
        // goes on where it stays.
        match s.to_kernel(true).expect("switch") {
            Switch::Software(why) => {
                if !prepare {
                    assert!(
                        matches!(why, Software::Buffered | Software::NoKernel(_)),
                        "{why}"
                    );
                }
                assert_eq!(read_all(&mut s, 5), b"icreq");
            }
            Switch::Kernel(mut k) => {
                assert!(prepare, "an unprepared connection switched");
                let mut b = [0u8; 5];
                let mut got = 0;
                while got < 5 {
                    match Stream::read(&mut k, &mut b[got..]) {
                        Ok(n) => got += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
                assert_eq!(&b, b"icreq");
            }
        }
        assert!(s.secrets().is_none(), "the switch took the secrets");
    }
}

/// The decision on a connection that did not ask: software, secrets never kept.
#[test]
fn unprepared_connections_keep_no_secrets() {
    let suite = Suite::Aes256GcmSha384;
    let p = psk("id", 5, suite);
    let sctx = server_context(Arc::new(One(p.clone()))).expect("server context");
    let (st, ct) = pair();
    let mut s = TlsStream::accept(&sctx, st).expect("accept");
    let mut c = TlsStream::connect(&client_context(suite).expect("ctx"), ct, p).expect("connect");
    let (rs, rc) = handshake(&mut s, &mut c);
    assert!(rs.expect("server") && rc.expect("client"));
    assert!(s.secrets().is_none() && c.secrets().is_none());
    assert!(matches!(
        s.to_kernel(false).expect("switch"),
        Switch::Software(Software::Off)
    ));
}
