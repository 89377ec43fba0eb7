//! A byte relay for the guest tests, both directions, one thread pair a connection:
//!
//! - `lp-relay unix PATH ADDR`: connections to the Unix socket PATH go on to TCP ADDR
//!   (the guest's CSI node plugin reaches the host's control-plane store, which
//!   listens on a Unix socket, through a TCP port the test relays on the host);
//! - `lp-relay tcp LISTEN ADDR`: connections to LISTEN go on to ADDR (the guest reaches
//!   a host target at the address the control plane lists for it, 127.0.0.1:PORT,
//!   which in the guest is the guest's own loopback).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};

use anyhow::{bail, Context, Result};

/// A stream both ways: half-closed when its reader ends.
trait Half: Read + Write + Send + 'static {
    fn close_write(&self);
}

impl Half for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Half for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

fn pump(mut from: impl Half, mut to: impl Half) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    to.close_write();
}

fn relay<A: Half>(a: A, a2: A, to: &str) -> Result<()> {
    let b = TcpStream::connect(to).with_context(|| format!("connect {to}"))?;
    b.set_nodelay(true)?;
    let b2 = b.try_clone()?;
    std::thread::spawn(move || pump(a, b));
    std::thread::spawn(move || pump(b2, a2));
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["unix", path, to] => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).with_context(|| format!("bind {path}"))?;
            for s in l.incoming() {
                let s = s?;
                let s2 = s.try_clone()?;
                if let Err(e) = relay(s, s2, to) {
                    eprintln!("lp-relay: {e:#}");
                }
            }
        }
        ["tcp", listen, to] => {
            let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
            for s in l.incoming() {
                let s = s?;
                s.set_nodelay(true)?;
                let s2 = s.try_clone()?;
                if let Err(e) = relay(s, s2, to) {
                    eprintln!("lp-relay: {e:#}");
                }
            }
        }
        _ => bail!("usage: lp-relay unix PATH HOST:PORT | lp-relay tcp LISTEN HOST:PORT"),
    }
    Ok(())
}
