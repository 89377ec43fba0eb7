//! The blocking side of a queue pair: TCP connect, ICReq/ICResp, Fabrics Connect,
//! commands waited for one at a time (admin queue), Disconnect.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lightpool_spec::fabrics;
use lightpool_spec::nvme::Sqe;
use lightpool_spec::status::{command_specific as cs, sct};
use lightpool_spec::tcp::{self as pdu, IcReq};

use super::{Completion, Dir, Negotiated, Qpair, QpairConfig, BLOCKING_SLICE, HPDA};
use crate::{
    AdminCommand, AdminQueue, ConnectRequest, HostStream, HostTls, InitiatorError, Stream,
};

impl Qpair<HostStream> {
    /// Opens a TCP connection to `addr` and negotiates digests with ICReq/ICResp.
    /// The socket stays in blocking mode (for Connect and admin commands) until
    /// [`Qpair::set_nonblocking`].
    pub fn connect(
        addr: SocketAddr,
        hdgst: bool,
        ddgst: bool,
        cfg: QpairConfig,
        timeout: Duration,
    ) -> Result<Qpair<HostStream>, InitiatorError> {
        Self::connect_tls(addr, None, hdgst, ddgst, cfg, timeout)
    }

    /// As [`Qpair::connect`], in TLS 1.3 with the PSK `tls` when there is one (the
    /// handshake comes first, then ICReq/ICResp in records), its records handed to
    /// the kernel after the handshake where the flag with it and the kernel allow.
    pub fn connect_tls(
        addr: SocketAddr,
        tls: Option<(&HostTls, bool)>,
        hdgst: bool,
        ddgst: bool,
        cfg: QpairConfig,
        timeout: Duration,
    ) -> Result<Qpair<HostStream>, InitiatorError> {
        let deadline = Instant::now() + timeout;
        let s = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| InitiatorError::Connect { addr, source })?;
        let io = |e| InitiatorError::io(addr, e);
        s.set_nodelay(true).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        s.set_read_timeout(Some(BLOCKING_SLICE)).map_err(io)?;
        let mut s = match tls {
            None => HostStream::Plain(s),
            Some((psk, ktls)) => HostStream::tls(s, psk, deadline, ktls)
                .map_err(|source| InitiatorError::Tls { addr, source })?,
        };
        let req = IcReq {
            pfv: pdu::PFV_1_0,
            hpda: HPDA,
            hdgst,
            ddgst,
            maxr2t: 0,
        };
        let icreq = req.encode();
        let mut sent = 0;
        while sent < icreq.len() {
            match s.writev(&[std::io::IoSlice::new(&icreq[sent..])]) {
                Ok(0) => return Err(io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => sent += n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
                Err(e) => return Err(io(e)),
            }
        }
        // The ICResp (checked against what was asked) comes through the receiver like
        // every other PDU.
        let asked = Negotiated {
            hdgst,
            ddgst,
            ..Negotiated::default()
        };
        let mut q = Qpair::unconnected(s, addr, asked, cfg);
        let mut out = Vec::new();
        while !q.c.negotiated {
            q.poll(&mut out)?;
            if !q.c.negotiated && Instant::now() > deadline {
                return Err(InitiatorError::Timeout {
                    addr,
                    what: "ICResp".to_string(),
                    timeout,
                });
            }
        }
        Ok(q)
    }

    /// The socket, for readiness polling.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.c.s.tcp().as_raw_fd()
    }

    /// Switches to non-blocking I/O for the load loop.
    pub fn set_nonblocking(&mut self) -> Result<(), InitiatorError> {
        self.c
            .s
            .tcp()
            .set_nonblocking(true)
            .map_err(|e| InitiatorError::io(self.c.peer, e))
    }

    /// Back to blocking I/O (with a short read timeout) for admin-style waits.
    pub fn set_blocking(&mut self) -> Result<(), InitiatorError> {
        let io = |e| InitiatorError::io(self.c.peer, e);
        self.c.s.tcp().set_nonblocking(false).map_err(io)?;
        self.c
            .s
            .tcp()
            .set_read_timeout(Some(BLOCKING_SLICE))
            .map_err(io)
    }

    /// Submits `sqe` and waits for its completion (blocking mode only). `data` is
    /// copied in for a write; a read's data is in [`Qpair::buf`] of the returned CID.
    pub fn execute(
        &mut self,
        sqe: Sqe,
        dir: Dir,
        len: u32,
        data: Option<&[u8]>,
        timeout: Duration,
        what: &str,
    ) -> Result<Completion, InitiatorError> {
        let cid = self.alloc().ok_or_else(|| {
            self.c
                .err_protocol(format!("no free command slot for {what}"))
        })?;
        if let Some(d) = data {
            self.buf_mut(cid)[..d.len()].copy_from_slice(d);
        }
        self.submit(cid, sqe, dir, len)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(4);
        loop {
            self.flush()?;
            out.clear();
            self.poll(&mut out)?;
            if let Some(c) = out.iter().find(|c| c.cid == cid) {
                return Ok(*c);
            }
            if Instant::now() > deadline {
                return Err(InitiatorError::Timeout {
                    addr: self.c.peer,
                    what: what.to_string(),
                    timeout,
                });
            }
        }
    }

    /// Fabrics Connect `req` on this queue (in-capsule Connect data); returns the
    /// controller ID.
    pub fn fabric_connect(
        &mut self,
        req: &ConnectRequest<'_>,
        timeout: Duration,
    ) -> Result<u16, InitiatorError> {
        let (sqe, data, what) = (req.sqe(), req.data(), req.what());
        // Connect data always travels in the capsule (targets such as Linux nvmet
        // serve no R2T before the queue is connected), whatever writes do later.
        let force_r2t = std::mem::replace(&mut self.c.cfg.force_r2t, false);
        let res = self.execute(
            sqe,
            Dir::Write,
            data.len() as u32,
            Some(&data),
            timeout,
            &what,
        );
        self.c.cfg.force_r2t = force_r2t;
        let c = res?;
        if !c.status.is_success() {
            return Err(InitiatorError::Refused {
                addr: self.c.peer,
                subnqn: req.subnqn.to_string(),
                why: connect_failure(c, req),
            });
        }
        self.c.qid = req.qid;
        Ok((c.dw0 & 0xFFFF) as u16)
    }

    /// Disconnect (when the controller supports it) and close.
    pub fn disconnect(
        mut self,
        send_disconnect: bool,
        timeout: Duration,
    ) -> Result<(), InitiatorError> {
        self.set_blocking()?;
        if send_disconnect && self.c.slab.in_flight == 0 {
            let c = self.execute(
                fabrics::disconnect_sqe(0),
                Dir::None,
                0,
                None,
                timeout,
                "Disconnect",
            )?;
            if !c.status.is_success() {
                return Err(InitiatorError::Command {
                    addr: self.c.peer,
                    what: format!("Disconnect of queue {}", self.c.qid),
                    status: c.status,
                });
            }
        }
        let _ = self.c.s.tcp().shutdown(std::net::Shutdown::Both);
        Ok(())
    }
}

/// The admin queue of an NVMe/TCP controller.
impl AdminQueue for Qpair {
    fn exec(&mut self, c: AdminCommand<'_>) -> Result<Completion, InitiatorError> {
        self.execute(c.sqe, c.dir, c.len, None, c.timeout, c.what)
    }

    fn data(&self, cid: u16) -> &[u8] {
        self.buf(cid)
    }

    fn close(self, send_disconnect: bool, timeout: Duration) -> Result<(), InitiatorError> {
        self.disconnect(send_disconnect, timeout)
    }
}

/// Why a Connect was refused, in words.
fn connect_failure(c: Completion, req: &ConnectRequest<'_>) -> String {
    let ConnectRequest {
        qid,
        entries,
        cntlid,
        subnqn,
        hostnqn,
        ..
    } = *req;
    let st = c.status;
    if st.sct() == sct::COMMAND_SPECIFIC {
        match st.sc() {
            cs::CONNECT_INVALID_PARAMETERS => {
                let (ipo, iattr) = fabrics::parse_connect_invalid_param_dw0(c.dw0);
                let field = match (iattr, ipo) {
                    (1, 256) => format!("the target has no subsystem named {subnqn:?}"),
                    (1, 512) => format!("the target refused host NQN {hostnqn:?}"),
                    (1, 16) => format!("controller ID {cntlid:#x} is not valid for queue {qid}"),
                    (1, 0) => "the host identifier was refused".to_string(),
                    (0, 42) => format!("queue ID {qid} was refused (too many I/O queues?)"),
                    (0, 44) => {
                        format!("a queue of {entries} entries was refused (use a smaller -q)")
                    }
                    (0, 48) => "the keep-alive timeout was refused".to_string(),
                    (a, o) => format!(
                        "invalid parameter at byte {o} of the {}",
                        if a == 1 { "Connect data" } else { "command" }
                    ),
                };
                return format!("{field} ({st})");
            }
            cs::CONNECT_INVALID_HOST => {
                return format!("host {hostnqn:?} is not allowed to use {subnqn:?} ({st})")
            }
            cs::CONNECT_CONTROLLER_BUSY => {
                return format!("the controller is busy or out of controller IDs ({st})")
            }
            _ => {}
        }
    }
    format!("{st}")
}
