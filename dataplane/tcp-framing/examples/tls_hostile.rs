//! A TLS 1.3 PSK peer that completes the handshake with an NVMe/TCP target and then
//! misbehaves, for the kTLS guest test (tests/tests/ktls.rs):
//!
//!   tls_hostile MODE ADDR IDENTITY KEY_HEX 256|384
//!
//! MODE: `garbage` (a record of random bytes written past OpenSSL: it fails
//! authentication), `alert` (a fatal handshake_failure alert), `close_notify`, or
//! `keyupdate` (a KeyUpdate handshake message, which a kTLS target does not take); the
//! last three are sent through this end's own kTLS. Then it waits for the target to
//! close the connection and prints `HOSTILE: MODE: closed by the target ok`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_tcp_framing::tls::{client_context, Psk, Suite, Switch, TlsStream};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("key in hex"))
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!(
            "usage: tls_hostile garbage|alert|close_notify|keyupdate ADDR IDENTITY KEY_HEX 256|384"
        );
        std::process::exit(2);
    }
    let mode = a[1].as_str();
    let suite = if a[5] == "384" {
        Suite::Aes256GcmSha384
    } else {
        Suite::Aes128GcmSha256
    };
    let tcp = TcpStream::connect(&a[2]).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_nonblocking(true).expect("nonblocking");
    let tcp = Arc::new(tcp);
    let psk = Psk {
        identity: a[3].as_bytes().to_vec(),
        key: unhex(&a[4]),
        suite,
    };
    let ctx = client_context(suite).expect("context");
    let mut t = TlsStream::connect(&ctx, tcp.clone(), psk).expect("TLS");
    let kernel = mode != "garbage";
    if kernel {
        t.prepare_kernel().expect("prepare kTLS");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.handshake().expect("handshake") {
        assert!(Instant::now() < deadline, "the handshake did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "HOSTILE: {mode}: handshake done ({})",
        t.suite().unwrap_or("?")
    );
    if kernel {
        let Switch::Kernel(k) = t.to_kernel(true).expect("switch") else {
            println!("HOSTILE: {mode}: this end got no kTLS");
            std::process::exit(1);
        };
        let (kind, body): (u8, &[u8]) = match mode {
            "alert" => (21, &[2, 40]),
            "close_notify" => (21, &[1, 0]),
            "keyupdate" => (22, &[24, 0, 0, 1, 0]),
            m => panic!("unknown mode {m}"),
        };
        k.send_record(kind, body).expect("send the record");
    } else {
        // Past OpenSSL: an application data record of random bytes.
        let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        rec.extend((0..0x40u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        (&*tcp).write_all(&rec).expect("write");
    }
    // The target closes the connection: end of stream (or a reset).
    let mut buf = [0u8; 256];
    loop {
        match (&*tcp).read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    println!("HOSTILE: {mode}: the target kept the connection open");
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                println!("HOSTILE: {mode}: read ended with {e}");
                break;
            }
        }
    }
    println!("HOSTILE: {mode}: closed by the target ok");
}
