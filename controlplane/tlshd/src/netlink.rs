//! Generic netlink, as much of it as the kernel's "handshake" family needs: resolve the
//! family and its multicast group (the `nlctrl` family), join the group, send
//! requests, read replies and notifications. Messages are built and read here (pure
//! functions, tested below); [`Genl`] is the socket.
//!
//! The family (include/uapi/linux/handshake.h, Documentation/netlink/specs/handshake.yaml):
//! the kernel multicasts `READY` on group "tlshd" when a socket waits for a handshake;
//! the agent answers `ACCEPT` (handler class TLSHD) and gets the socket, installed as a
//! descriptor of its own, with the request's parameters; it reports `DONE` with a
//! status (0 or a positive errno), the descriptor and, on success, the key serial that
//! authenticated the peer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// <linux/netlink.h>
const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
const NLA_HDRLEN: usize = 4;
/// NLA_F_NESTED | NLA_F_NET_BYTEORDER: flags in an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;

// <linux/genetlink.h>
const GENL_HDRLEN: usize = 4;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;

// <linux/handshake.h>
pub const HANDSHAKE_FAMILY_NAME: &str = "handshake";
pub const HANDSHAKE_FAMILY_VERSION: u8 = 1;
pub const HANDSHAKE_MCGRP_TLSHD: &str = "tlshd";
pub const HANDSHAKE_HANDLER_CLASS_TLSHD: u32 = 1;
pub const HANDSHAKE_MSG_TYPE_CLIENTHELLO: u32 = 1;
pub const HANDSHAKE_MSG_TYPE_SERVERHELLO: u32 = 2;
pub const HANDSHAKE_AUTH_UNAUTH: u32 = 1;
pub const HANDSHAKE_AUTH_PSK: u32 = 2;
pub const HANDSHAKE_AUTH_X509: u32 = 3;
pub const HANDSHAKE_CMD_READY: u8 = 1;
pub const HANDSHAKE_CMD_ACCEPT: u8 = 2;
pub const HANDSHAKE_CMD_DONE: u8 = 3;
const HANDSHAKE_A_ACCEPT_SOCKFD: u16 = 1;
const HANDSHAKE_A_ACCEPT_HANDLER_CLASS: u16 = 2;
const HANDSHAKE_A_ACCEPT_MESSAGE_TYPE: u16 = 3;
const HANDSHAKE_A_ACCEPT_TIMEOUT: u16 = 4;
const HANDSHAKE_A_ACCEPT_AUTH_MODE: u16 = 5;
const HANDSHAKE_A_ACCEPT_PEER_IDENTITY: u16 = 6;
const HANDSHAKE_A_ACCEPT_CERTIFICATE: u16 = 7;
const HANDSHAKE_A_ACCEPT_PEERNAME: u16 = 8;
const HANDSHAKE_A_ACCEPT_KEYRING: u16 = 9;
const HANDSHAKE_A_DONE_STATUS: u16 = 1;
const HANDSHAKE_A_DONE_SOCKFD: u16 = 2;
const HANDSHAKE_A_DONE_REMOTE_AUTH: u16 = 3;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A generic netlink message being built: header, then attributes.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub fn new(family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> MsgBuilder {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's is 0
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        MsgBuilder { buf }
    }

    fn attr(mut self, ty: u16, payload: &[u8]) -> MsgBuilder {
        let len = NLA_HDRLEN + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u32(self, ty: u16, v: u32) -> MsgBuilder {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn string(self, ty: u16, s: &str) -> MsgBuilder {
        let mut p = s.as_bytes().to_vec();
        p.push(0);
        self.attr(ty, &p)
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A generic netlink message: its family (the header's type), command and
    /// attributes (still encoded: [`attrs`]).
    Genl {
        family: u16,
        seq: u32,
        cmd: u8,
        attrs: &'a [u8],
    },
    /// An acknowledgement (0) or an error (a negative errno) for request `seq`.
    Error {
        seq: u32,
        errno: i32,
    },
    Done {
        seq: u32,
    },
    Other {
        ty: u16,
    },
}

/// The messages of a datagram, in order; an error where one is cut short.
pub fn messages(mut buf: &[u8]) -> Result<Vec<Message<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4"));
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(format!(
                "a netlink message of {len} bytes in {} bytes",
                buf.len()
            ));
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32_at(buf, 8);
        let body = &buf[NLMSG_HDRLEN..len];
        out.push(match ty {
            NLMSG_ERROR => {
                if body.len() < 4 {
                    return Err("a netlink error message without its code".into());
                }
                Message::Error {
                    seq,
                    errno: i32::from_ne_bytes(body[..4].try_into().expect("4")),
                }
            }
            NLMSG_DONE => Message::Done { seq },
            t if t >= GENL_ID_CTRL => {
                if body.len() < GENL_HDRLEN {
                    return Err("a generic netlink message without its header".into());
                }
                Message::Genl {
                    family: t,
                    seq,
                    cmd: body[0],
                    attrs: &body[GENL_HDRLEN..],
                }
            }
            t => Message::Other { ty: t },
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The attributes of `buf`: (type without its flags, payload); stops at one cut short.
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > buf.len() {
            break;
        }
        out.push((ty, &buf[NLA_HDRLEN..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn get_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

fn get_string(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

/// A generic netlink family: its id and its multicast groups (name, id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub id: u16,
    pub groups: Vec<(String, u32)>,
}

impl Family {
    pub fn group(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }
}

/// `CTRL_CMD_GETFAMILY` for `name`.
pub fn get_family(seq: u32, name: &str) -> Vec<u8> {
    MsgBuilder::new(GENL_ID_CTRL, NLM_F_REQUEST, seq, CTRL_CMD_GETFAMILY, 1)
        .string(CTRL_ATTR_FAMILY_NAME, name)
        .finish()
}

/// The family in nlctrl's answer to [`get_family`].
pub fn parse_family(attrs_buf: &[u8]) -> Option<Family> {
    let mut id = None;
    let mut groups = Vec::new();
    for (ty, p) in attrs(attrs_buf) {
        match ty {
            CTRL_ATTR_FAMILY_ID if p.len() >= 2 => id = Some(u16::from_ne_bytes([p[0], p[1]])),
            CTRL_ATTR_MCAST_GROUPS => {
                for (_, g) in attrs(p) {
                    let (mut name, mut gid) = (None, None);
                    for (t, v) in attrs(g) {
                        match t {
                            CTRL_ATTR_MCAST_GRP_NAME => name = Some(get_string(v)),
                            CTRL_ATTR_MCAST_GRP_ID => gid = get_u32(v),
                            _ => {}
                        }
                    }
                    if let (Some(n), Some(i)) = (name, gid) {
                        groups.push((n, i));
                    }
                }
            }
            _ => {}
        }
    }
    Some(Family { id: id?, groups })
}

/// `HANDSHAKE_CMD_ACCEPT` for handler class TLSHD.
pub fn accept(family: u16, seq: u32) -> Vec<u8> {
    MsgBuilder::new(
        family,
        NLM_F_REQUEST,
        seq,
        HANDSHAKE_CMD_ACCEPT,
        HANDSHAKE_FAMILY_VERSION,
    )
    .u32(
        HANDSHAKE_A_ACCEPT_HANDLER_CLASS,
        HANDSHAKE_HANDLER_CLASS_TLSHD,
    )
    .finish()
}

/// `HANDSHAKE_CMD_DONE`: `status` 0 or a positive errno; on success the key serials
/// that authenticated the peer (`remote_auth`). Acknowledged, so that a refusal shows.
pub fn done(family: u16, seq: u32, status: u32, sockfd: RawFd, remote_auth: &[i32]) -> Vec<u8> {
    let mut m = MsgBuilder::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        HANDSHAKE_CMD_DONE,
        HANDSHAKE_FAMILY_VERSION,
    )
    .u32(HANDSHAKE_A_DONE_STATUS, status)
    .u32(HANDSHAKE_A_DONE_SOCKFD, sockfd as u32);
    if status == 0 {
        for &k in remote_auth {
            m = m.u32(HANDSHAKE_A_DONE_REMOTE_AUTH, k as u32);
        }
    }
    m.finish()
}

/// A `READY` notification's handler class (absent: None).
pub fn ready_class(attrs_buf: &[u8]) -> Option<u32> {
    attrs(attrs_buf)
        .into_iter()
        .find(|(t, _)| *t == HANDSHAKE_A_ACCEPT_HANDLER_CLASS)
        .and_then(|(_, p)| get_u32(p))
}

/// What the kernel's answer to `ACCEPT` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The socket, a descriptor of this process now.
    pub sockfd: Option<RawFd>,
    pub handler_class: Option<u32>,
    /// ClientHello (we are the client) or ServerHello.
    pub message_type: Option<u32>,
    /// Milliseconds the kernel waits for `DONE` (0: its default).
    pub timeout_ms: Option<u32>,
    pub auth_mode: Option<u32>,
    /// Key serials: the PSKs to offer (PSK mode) or the certificate (x509).
    pub peer_identities: Vec<i32>,
    pub certificate: bool,
    pub peername: Option<String>,
    /// The keyring the keys are in (newer kernels), linked to our session keyring.
    pub keyring: Option<u32>,
}

pub fn parse_accept(attrs_buf: &[u8]) -> Accepted {
    let mut a = Accepted::default();
    for (ty, p) in attrs(attrs_buf) {
        match ty {
            HANDSHAKE_A_ACCEPT_SOCKFD => a.sockfd = get_u32(p).map(|v| v as i32),
            HANDSHAKE_A_ACCEPT_HANDLER_CLASS => a.handler_class = get_u32(p),
            HANDSHAKE_A_ACCEPT_MESSAGE_TYPE => a.message_type = get_u32(p),
            HANDSHAKE_A_ACCEPT_TIMEOUT => a.timeout_ms = get_u32(p),
            HANDSHAKE_A_ACCEPT_AUTH_MODE => a.auth_mode = get_u32(p),
            HANDSHAKE_A_ACCEPT_PEER_IDENTITY => {
                if let Some(v) = get_u32(p) {
                    a.peer_identities.push(v as i32);
                }
            }
            HANDSHAKE_A_ACCEPT_CERTIFICATE => a.certificate = true,
            HANDSHAKE_A_ACCEPT_PEERNAME => a.peername = Some(get_string(p)),
            HANDSHAKE_A_ACCEPT_KEYRING => a.keyring = get_u32(p).filter(|&k| k != 0),
            _ => {}
        }
    }
    a
}

/// A generic netlink socket.
#[derive(Debug)]
pub struct Genl {
    fd: OwnedFd,
    seq: u32,
}

impl AsRawFd for Genl {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Genl {
    pub fn open() -> io::Result<Genl> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is family-less, port 0 (the kernel
        // assigns one), no groups.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `sa` is a valid sockaddr_nl of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Genl { fd, seq: 1 })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: as in `open`.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `msg` is readable for its length; `sa` is a valid address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram into `buf` (its length).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Send `msg` (sequence number `seq`) and hand each message answering it to
    /// `each` until one is final (`each` returns Some); an error message is an error.
    pub fn request<T>(
        &self,
        msg: &[u8],
        seq: u32,
        mut each: impl FnMut(&Message<'_>) -> Option<T>,
    ) -> io::Result<T> {
        self.send(msg)?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            let msgs = messages(&buf[..n]).map_err(io::Error::other)?;
            for m in &msgs {
                match m {
                    Message::Error { seq: s, errno } if *s == seq && *errno != 0 => {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    Message::Genl { seq: s, .. }
                    | Message::Error { seq: s, .. }
                    | Message::Done { seq: s }
                        if *s == seq =>
                    {
                        if let Some(t) = each(m) {
                            return Ok(t);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The family `name` (its id and multicast groups).
    pub fn resolve(&mut self, name: &str) -> io::Result<Family> {
        let seq = self.next_seq();
        self.request(&get_family(seq, name), seq, |m| match m {
            Message::Genl { attrs, .. } => Some(parse_family(attrs)),
            _ => None,
        })?
        .ok_or_else(|| io::Error::other(format!("nlctrl's answer for {name:?} has no family id")))
    }

    pub fn join(&self, group: u32) -> io::Result<()> {
        let g = group as libc::c_int;
        // SAFETY: `g` is a readable int of the length given.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                &g as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute as the kernel lays it out.
    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    fn genl(family: u16, seq: u32, cmd: u8, attrs: &[u8]) -> Vec<u8> {
        let mut v = ((NLMSG_HDRLEN + GENL_HDRLEN + attrs.len()) as u32)
            .to_ne_bytes()
            .to_vec();
        v.extend_from_slice(&family.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&[cmd, 1, 0, 0]);
        v.extend_from_slice(attrs);
        v
    }

    #[test]
    fn accept_request_is_the_handler_class_alone() {
        let m = accept(0x1c, 7);
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x1c);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), NLM_F_REQUEST);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[HANDSHAKE_CMD_ACCEPT, 1, 0, 0]);
        assert_eq!(&m[20..], &nla(2, &1u32.to_ne_bytes())[..]);
    }

    #[test]
    fn done_carries_status_fd_and_remote_auth_only_on_success() {
        let ok = done(0x1c, 9, 0, 5, &[0x1234]);
        let body = match &messages(&ok).unwrap()[0] {
            Message::Genl { cmd, attrs, .. } => {
                assert_eq!(*cmd, HANDSHAKE_CMD_DONE);
                attrs.to_vec()
            }
            m => panic!("{m:?}"),
        };
        let a = attrs(&body);
        assert_eq!(
            a,
            vec![
                (1, &0u32.to_ne_bytes()[..]),
                (2, &5u32.to_ne_bytes()[..]),
                (3, &0x1234u32.to_ne_bytes()[..])
            ]
        );
        assert_eq!(
            u16::from_ne_bytes([ok[6], ok[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        let failed = done(0x1c, 9, libc::EACCES as u32, 5, &[0x1234]);
        let Message::Genl { attrs: fa, .. } = messages(&failed).unwrap()[0].clone() else {
            panic!()
        };
        assert_eq!(attrs(fa).len(), 2, "no remote auth on failure");
        assert_eq!(attrs(fa)[0].1, &(libc::EACCES as u32).to_ne_bytes()[..]);
    }

    #[test]
    fn get_family_names_the_family_nul_terminated() {
        let m = get_family(3, "handshake");
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), GENL_ID_CTRL);
        let Message::Genl { cmd, attrs: a, .. } = messages(&m).unwrap()[0].clone() else {
            panic!()
        };
        assert_eq!(cmd, CTRL_CMD_GETFAMILY);
        assert_eq!(attrs(a), vec![(CTRL_ATTR_FAMILY_NAME, &b"handshake\0"[..])]);
        // 10 bytes of string: padded to 12.
        assert_eq!(m.len(), 16 + 4 + 4 + 12);
    }

    #[test]
    fn family_answer_gives_id_and_groups() {
        let grp = |id: u32, name: &str| {
            let mut g = nla(CTRL_ATTR_MCAST_GRP_ID, &id.to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.push(0);
            g.extend(nla(CTRL_ATTR_MCAST_GRP_NAME, &n));
            g
        };
        let mut groups = nla(1 | 0x8000, &grp(11, "none"));
        groups.extend(nla(2 | 0x8000, &grp(12, "tlshd")));
        let mut a = nla(CTRL_ATTR_FAMILY_NAME, b"handshake\0");
        a.extend(nla(CTRL_ATTR_FAMILY_ID, &0x1du16.to_ne_bytes()));
        a.extend(nla(CTRL_ATTR_MCAST_GROUPS | 0x8000, &groups));
        let f = parse_family(&a).unwrap();
        assert_eq!(f.id, 0x1d);
        assert_eq!(f.group("tlshd"), Some(12));
        assert_eq!(f.group("none"), Some(11));
        assert_eq!(f.group("x"), None);
        assert_eq!(parse_family(&nla(CTRL_ATTR_FAMILY_NAME, b"x\0")), None);
    }

    #[test]
    fn accept_answer_parses_every_attribute() {
        let mut a = Vec::new();
        a.extend(nla(1, &9u32.to_ne_bytes()));
        a.extend(nla(2, &1u32.to_ne_bytes()));
        a.extend(nla(3, &HANDSHAKE_MSG_TYPE_CLIENTHELLO.to_ne_bytes()));
        a.extend(nla(4, &10_000u32.to_ne_bytes()));
        a.extend(nla(5, &HANDSHAKE_AUTH_PSK.to_ne_bytes()));
        a.extend(nla(6, &0x2345_6789u32.to_ne_bytes()));
        a.extend(nla(6, &0x11u32.to_ne_bytes()));
        a.extend(nla(8, b"127.0.0.1\0"));
        a.extend(nla(9, &0x77u32.to_ne_bytes()));
        let m = genl(0x1d, 4, HANDSHAKE_CMD_ACCEPT, &a);
        let Message::Genl {
            family,
            seq,
            cmd,
            attrs,
        } = messages(&m).unwrap()[0].clone()
        else {
            panic!()
        };
        assert_eq!((family, seq, cmd), (0x1d, 4, HANDSHAKE_CMD_ACCEPT));
        assert_eq!(
            parse_accept(attrs),
            Accepted {
                sockfd: Some(9),
                handler_class: Some(1),
                message_type: Some(1),
                timeout_ms: Some(10_000),
                auth_mode: Some(2),
                peer_identities: vec![0x2345_6789, 0x11],
                certificate: false,
                peername: Some("127.0.0.1".into()),
                keyring: Some(0x77),
            }
        );
        assert_eq!(ready_class(&nla(2, &1u32.to_ne_bytes())), Some(1));
        assert_eq!(ready_class(&[]), None);
    }

    #[test]
    fn error_and_several_messages_in_one_datagram() {
        let mut d = genl(0x1d, 1, HANDSHAKE_CMD_READY, &nla(2, &1u32.to_ne_bytes()));
        let mut err = ((NLMSG_HDRLEN + 4 + 16) as u32).to_ne_bytes().to_vec();
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&5u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        err.extend_from_slice(&[0u8; 16]);
        d.extend(err);
        let ms = messages(&d).unwrap();
        assert_eq!(ms.len(), 2);
        assert!(matches!(ms[0], Message::Genl { cmd: 1, .. }));
        assert_eq!(
            ms[1],
            Message::Error {
                seq: 5,
                errno: -libc::ENOENT
            }
        );
        // Cut short: an error, not a panic.
        assert!(messages(&d[..d.len() - 3]).is_err());
        // An attribute cut short is dropped.
        let mut a = nla(1, &9u32.to_ne_bytes());
        a.truncate(6);
        assert!(attrs(&a).is_empty());
    }
}
