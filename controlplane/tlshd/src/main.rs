//! lightpool-tlshd: the TLS handshake agent of the Linux kernel's NVMe/TCP host, in
//! PSK mode: what ktls-utils' `tlshd` does for `nvme connect --tls`, for systems that
//! do not package it (Debian bookworm).
//!
//! The kernel runs no TLS handshake of its own: a socket that needs one is announced on
//! the generic netlink family "handshake" (multicast group "tlshd", `READY`); the
//! agent takes it (`ACCEPT`: the socket arrives as a descriptor of the agent, with the
//! key serials of the PSKs to offer and a timeout), runs the TLS 1.3 client handshake
//! with the external PSK the keyring holds (description: the PSK identity,
//! `NVMe1R01 <hostnqn> <subnqn> <digest>` or `NVMe0R0x <hostnqn> <subnqn>`; payload:
//! the TLS PSK; suite by the identity's hash, 01 TLS_AES_128_GCM_SHA256, 02
//! TLS_AES_256_GCM_SHA384), hands the record layer to the kernel (kTLS, both
//! directions) and reports `DONE` with status 0 and the key serial used, or an errno
//! (EACCES: the target refused the PSK; ETIMEDOUT; ENOKEY: no usable key;
//! EOPNOTSUPP: x509, unauthenticated and server handshakes, which are not
//! implemented). Each handshake runs on a thread of its own; SIGTERM or SIGINT ends
//! the agent.
//!
//! `lightpool-tlshd insert-key` puts the TLS PSK of a configured PSK (interchange
//! format `NVMeTLSkey-1:01:...:`) for a host and subsystem into the kernel's `.nvme`
//! keyring as a key of type `psk`, described by the identity nvme-cli would use, and
//! prints its serial: `tls_key=<serial>` in the connect options (bookworm's nvme-cli
//! 2.3 has no `gen-tls-key --insert`).

mod handshake;
mod keys;
mod netlink;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lightpool_nvmf::tls::{ConfiguredPsk, Derivation, IdentityVersion};

use crate::netlink::{Genl, Message};

#[derive(Parser, Debug)]
#[command(
    name = "lightpool-tlshd",
    version,
    about = "TLS handshake agent of the kernel's NVMe/TCP host (PSK mode)"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax: info, debug, lightpool_tlshd=debug).
    #[arg(long, default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Insert the TLS PSK for HOSTNQN and SUBNQN into the kernel keyring; print its serial.
    InsertKey {
        /// The configured PSK in the interchange format (NVMeTLSkey-1:01:...:).
        #[arg(long)]
        key: String,
        #[arg(long)]
        hostnqn: String,
        #[arg(long)]
        subnqn: String,
        /// PSK identity version: 1 (NVMe1R0x ... digest, nvme-cli's default) or 0.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
        identity_version: u8,
        /// libnvme's earlier HKDF label layout (nvme-cli --compat).
        #[arg(long)]
        compat: bool,
        /// The keyring's serial (default: the kernel's .nvme keyring).
        #[arg(long)]
        keyring: Option<i32>,
    },
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let r = match cli.cmd {
        None => run(),
        Some(Cmd::InsertKey {
            key,
            hostnqn,
            subnqn,
            identity_version,
            compat,
            keyring,
        }) => insert_key(&key, &hostnqn, &subnqn, identity_version, compat, keyring),
    };
    if let Err(e) = r {
        eprintln!("lightpool-tlshd: {e:#}");
        std::process::exit(1);
    }
}

fn insert_key(
    key: &str,
    hostnqn: &str,
    subnqn: &str,
    version: u8,
    compat: bool,
    keyring: Option<i32>,
) -> Result<()> {
    let configured = ConfiguredPsk::parse(key).context("the configured PSK")?;
    let v = if version == 0 {
        IdentityVersion::V0
    } else {
        IdentityVersion::V1
    };
    let d = if compat {
        Derivation::Compat
    } else {
        Derivation::Standard
    };
    let p = configured
        .tls_psk(hostnqn, subnqn, v, d)
        .context("deriving the TLS PSK")?;
    let keyring = match keyring {
        Some(k) => k,
        None => {
            let t = std::fs::read_to_string("/proc/keys").context("reading /proc/keys")?;
            keys::find_keyring(&t, ".nvme").context(
                "no .nvme keyring in /proc/keys: load the nvme-tcp module (its nvme-keyring makes it)",
            )?
        }
    };
    // Made in our process keyring (so that we possess it and may set its permissions),
    // readable by its owner, then linked where the kernel looks.
    let serial = keys::add_key("psk", &p.identity, &p.key, keys::KEY_SPEC_PROCESS_KEYRING)
        .context("add_key(psk)")?;
    keys::setperm(serial, keys::PSK_PERM).context("keyctl setperm")?;
    keys::link(serial, keyring)
        .with_context(|| format!("linking the key into keyring {keyring:08x}"))?;
    let _ = keys::unlink(serial, keys::KEY_SPEC_PROCESS_KEYRING);
    tracing::info!(
        identity = p.identity,
        key = format!("{serial:08x}"),
        keyring = format!("{keyring:08x}"),
        "TLS PSK inserted"
    );
    println!("{serial}");
    Ok(())
}

/// SIGTERM and SIGINT as a descriptor (blocked for every thread, read in the loop).
fn signals() -> Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the
    // calls take valid pointers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("pthread_sigmask failed");
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("signalfd");
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn run() -> Result<()> {
    let sig = signals()?;
    let mut mon = Genl::open().context("opening a generic netlink socket")?;
    let family = mon.resolve(netlink::HANDSHAKE_FAMILY_NAME).context(
        "the kernel has no \"handshake\" netlink family (CONFIG_NET_HANDSHAKE, Linux 6.5 and later)",
    )?;
    let group = family
        .group(netlink::HANDSHAKE_MCGRP_TLSHD)
        .context("the handshake family has no \"tlshd\" multicast group")?;
    mon.join(group)
        .context("joining the tlshd multicast group (needs CAP_NET_ADMIN)")?;
    tracing::info!(
        family = family.id,
        group,
        "lightpool-tlshd: waiting for handshake requests"
    );
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut p = [
            libc::pollfd {
                fd: mon.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sig.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(p.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if p[1].revents != 0 {
            tracing::info!("lightpool-tlshd: signalled, exiting");
            return Ok(());
        }
        if p[0].revents == 0 {
            continue;
        }
        let n = match mon.recv(&mut buf) {
            Ok(n) => n,
            // Notifications were lost (the socket's buffer overran): the requests
            // they announced time out in the kernel.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("netlink notifications lost (ENOBUFS)");
                continue;
            }
            Err(e) => return Err(e).context("reading the netlink socket"),
        };
        let msgs = match netlink::messages(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = e, "unreadable netlink datagram");
                continue;
            }
        };
        for m in msgs {
            let Message::Genl {
                family: f,
                cmd,
                attrs,
                ..
            } = m
            else {
                continue;
            };
            if f != family.id || cmd != netlink::HANDSHAKE_CMD_READY {
                continue;
            }
            match netlink::ready_class(attrs) {
                Some(netlink::HANDSHAKE_HANDLER_CLASS_TLSHD) => {}
                c => {
                    tracing::debug!(class = ?c, "READY for another handler class");
                    continue;
                }
            }
            let fid = family.id;
            std::thread::Builder::new()
                .name("handshake".into())
                .spawn(move || handshake::accept_and_serve(fid))
                .context("spawning a handshake thread")?;
        }
    }
}
