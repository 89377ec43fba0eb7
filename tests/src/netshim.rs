//! A network shim between an NVMe/TCP host and the target, for fault tests: it relays
//! both directions and, on the target's side, reads whole PDUs, so that it can drop a
//! connection at an exact point of the protocol (when the target asks for a write's
//! data with an R2T) or stop reading from the target altogether (a host that does not
//! read: the target's socket buffer fills).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use lightpool_spec::tcp::{CommonHeader, PduType};

/// What the shim does to the target's PDUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Relays everything.
    Forward = 0,
    /// Drops the connection (both sides) when the next R2T arrives from the target,
    /// before the host sees it.
    CutAtR2t = 1,
    /// Stops reading from the target (a stalled host).
    Stall = 2,
    /// The network between them is cut: every connection drops (each at its next
    /// read, either way) and new ones are closed as they come.
    Partition = 3,
}

/// The shim: listens on [`NetShim::addr`], connects each host to the target.
pub struct NetShim {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    cuts: Arc<AtomicUsize>,
}

impl NetShim {
    /// A shim in front of the target at `to`, forwarding.
    pub fn start(to: SocketAddr) -> Result<NetShim> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let mode = Arc::new(AtomicU8::new(Mode::Forward as u8));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (m, c) = (mode.clone(), cuts.clone());
        std::thread::spawn(move || {
            for host in l.incoming() {
                let Ok(host) = host else { return };
                if m.load(Ordering::SeqCst) == Mode::Partition as u8 {
                    let _ = host.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(target) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = (host.set_nodelay(true), target.set_nodelay(true));
                let (Ok(h2), Ok(t2)) = (host.try_clone(), target.try_clone()) else {
                    continue;
                };
                // Host to target: bytes as they come.
                let m2 = m.clone();
                std::thread::spawn(move || {
                    let (mut from, mut to) = (h2, t2);
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0
                            || m2.load(Ordering::SeqCst) == Mode::Partition as u8
                            || to.write_all(&buf[..n]).is_err()
                        {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                    let _ = from.shutdown(Shutdown::Both);
                });
                let (m, c) = (m.clone(), c.clone());
                // Target to host: PDU by PDU.
                std::thread::spawn(move || {
                    let _ = relay_pdus(target, host, &m, &c);
                });
            }
        });
        Ok(NetShim { addr, mode, cuts })
    }

    pub fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }

    /// Connections dropped at an R2T so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn relay_pdus(
    mut target: TcpStream,
    mut host: TcpStream,
    mode: &AtomicU8,
    cuts: &AtomicUsize,
) -> std::io::Result<()> {
    let mut pdu = Vec::with_capacity(64 << 10);
    loop {
        while mode.load(Ordering::SeqCst) == Mode::Stall as u8 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut ch = [0u8; 8];
        if target.read_exact(&mut ch).is_err() {
            break;
        }
        let h = CommonHeader::parse(&ch);
        pdu.clear();
        pdu.extend_from_slice(&ch);
        pdu.resize((h.plen as usize).max(8), 0);
        target.read_exact(&mut pdu[8..])?;
        if mode.load(Ordering::SeqCst) == Mode::Partition as u8 {
            break;
        }
        if h.pdu_type == PduType::R2T as u8 && mode.load(Ordering::SeqCst) == Mode::CutAtR2t as u8 {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        host.write_all(&pdu)?;
    }
    let _ = target.shutdown(Shutdown::Both);
    let _ = host.shutdown(Shutdown::Both);
    Ok(())
}
