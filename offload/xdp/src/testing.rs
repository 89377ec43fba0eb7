//! Test support: two network namespaces joined by a veth pair, made with `ip` (root),
//! removed on drop. The target's end is `a` (namespace `ns_a`), the peer's `b`.

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Two namespaces, a veth pair between them, IPv4 addresses 10.N.0.1 (a) and
/// 10.N.0.2 (b), both up; the peer's checksum and segmentation offloads are off
/// (frames reach AF_XDP finished and no larger than the MTU).
pub struct VethPair {
    pub ns_a: String,
    pub ns_b: String,
    pub a: String,
    pub b: String,
    pub addr_a: std::net::Ipv4Addr,
    pub addr_b: std::net::Ipv4Addr,
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl VethPair {
    /// `tag` keeps parallel tests apart (the pid is added); `net` picks 10.`net`.0.0/24.
    pub fn new(tag: &str, net: u8) -> io::Result<VethPair> {
        let id = std::process::id() % 100_000;
        let p = VethPair {
            ns_a: format!("lpx-{tag}-{id}-a"),
            ns_b: format!("lpx-{tag}-{id}-b"),
            // Interface names: at most 15 bytes.
            a: format!("x{tag}{id}a"),
            b: format!("x{tag}{id}b"),
            addr_a: std::net::Ipv4Addr::new(10, net, 0, 1),
            addr_b: std::net::Ipv4Addr::new(10, net, 0, 2),
        };
        for ns in [&p.ns_a, &p.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        run(Command::new("ip").args([
            "link", "add", &p.a, "netns", &p.ns_a, "type", "veth", "peer", "name", &p.b, "netns",
            &p.ns_b,
        ]))?;
        for (ns, dev, addr) in [(&p.ns_a, &p.a, p.addr_a), (&p.ns_b, &p.b, p.addr_b)] {
            p.exec(
                ns,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", dev],
            )?;
            p.exec(ns, &["ip", "link", "set", dev, "up"])?;
            p.exec(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        p.exec(
            &p.ns_b,
            &[
                "ethtool", "-K", &p.b, "tx", "off", "tso", "off", "gso", "off",
            ],
        )?;
        Ok(p)
    }

    /// Run a command in namespace `ns`, failing with its stderr.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> io::Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(argv))
    }

    /// Move the calling thread into namespace `ns` (other threads stay where they are).
    pub fn enter(ns: &str) -> io::Result<()> {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
        // SAFETY: setns on a descriptor we hold open; it affects this thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
