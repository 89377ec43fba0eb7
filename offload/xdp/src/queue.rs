//! One RX/TX queue's AF_XDP socket in copy mode, as a smoltcp device.
//!
//! The socket's memory (UMEM) is one anonymous mapping cut into frames: the first half
//! lent to the kernel for receiving (through the fill ring), the second half kept for
//! sending. A received frame is handed to smoltcp in place and goes back to the fill
//! ring after smoltcp has read it; a frame to send is written in place by smoltcp and
//! queued on the TX ring, coming back through the completion ring once sent. In copy
//! mode the kernel copies frames in and out of that memory; it sends only when told
//! (a `sendto`, made by `flush` after each poll of the stack).

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use lightpool_netstack::{EngineCounters, PacketEngine};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use xdpilone::xdp::XdpDesc;
use xdpilone::{
    DeviceQueue, Errno, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User,
};

/// Frames queued on the TX ring before a kick without waiting for the flush: what
/// the kernel sends per kick in copy mode.
const KICK_BATCH: u32 = 32;

/// How an AF_XDP queue is sized.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Frames in the UMEM (half for receiving, half for sending); a power of two.
    pub frames: u32,
    /// Bytes per frame (2048 or 4096): the largest frame is this.
    pub frame_size: u32,
    /// Check the IPv4 and TCP checksums of received frames. A veth peer with checksum
    /// offload on sends frames whose checksum the kernel never finished (the platform
    /// notes say to switch that offload off on the peer); turn this off where that
    /// cannot be done.
    pub verify_checksums: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            frames: 4096,
            frame_size: 4096,
            verify_checksums: true,
        }
    }
}

fn errno(what: &str, e: Errno) -> io::Error {
    let e = io::Error::from_raw_os_error(e.get_raw());
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// An anonymous mapping, page aligned, unmapped on drop.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Area {
            ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }
}

impl Area {
    /// The bytes of one frame.
    fn frame<'a>(&self, addr: u64, len: usize) -> &'a mut [u8] {
        let off = addr as usize;
        assert!(off + len <= self.len, "frame outside the UMEM");
        // SAFETY: in bounds (checked); the frame is ours alone (on no ring) until the
        // token that holds it is consumed, and tokens borrow the queue, which owns
        // the area.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once, after the socket that used
        // it (fields drop in order: the rings and sockets come before the area).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One queue's AF_XDP socket.
pub struct XskQueue {
    name: String,
    mac: [u8; 6],
    queue_id: u32,
    rx: RingRx,
    txs: TxSide,
    fq_cq: DeviceQueue,
    user: User,
    _sock: Socket,
    _umem: Umem,
    frame_size: u32,
    /// Received frames smoltcp is done with, to go back to the fill ring.
    to_fill: Vec<u64>,
    caps: DeviceCapabilities,
    /// Flushes since the loss counters were last looked at, and what they were.
    flushes: u32,
    losses: u64,
    next_report: std::time::Instant,
    area: Area,
}

/// The sending half, which a transmit token borrows beside a receive token.
struct TxSide {
    tx: RingTx,
    /// Frames free for sending.
    free: Vec<u64>,
    /// Frames queued on the TX ring since the last kick.
    unkicked: u32,
    /// Frames on the TX ring or in the kernel, not yet completed.
    in_flight: u32,
    counters: EngineCounters,
}

// SAFETY: the queue owns its memory area and rings outright (no other handle to them
// exists in this process); it is built on one thread and then used only by the
// reactor it is moved to.
unsafe impl Send for XskQueue {}

/// Run interface ioctls (`SIOCGIF*`) on `interface` through a socket made by this
/// thread, so in this thread's network namespace (/sys/class/net shows the namespace
/// sysfs was mounted in). `f` gets an `ask(op, what)` that fills the `ifreq`.
fn with_ifreq<R>(
    interface: &str,
    f: impl FnOnce(&mut dyn FnMut(libc::Ioctl, &str) -> io::Result<libc::ifreq>) -> io::Result<R>,
) -> io::Result<R> {
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut name: libc::ifreq = unsafe { std::mem::zeroed() };
    if interface.len() >= name.ifr_name.len() {
        return Err(io::Error::other(format!(
            "interface name {interface:?} too long"
        )));
    }
    for (d, s) in name.ifr_name.iter_mut().zip(interface.bytes()) {
        *d = s as libc::c_char;
    }
    let mut ask = |op: libc::Ioctl, what: &str| -> io::Result<libc::ifreq> {
        let mut req = name;
        // SAFETY: the ioctl writes into the ifreq we pass, which outlives the call.
        if unsafe { libc::ioctl(fd, op, &mut req as *mut libc::ifreq) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("{interface}: {what}: {e}"),
            ));
        }
        Ok(req)
    };
    f(&mut ask)
}

/// The interface's MAC and MTU.
fn mac_and_mtu(interface: &str) -> io::Result<([u8; 6], usize)> {
    with_ifreq(interface, |ask| {
        let req = ask(libc::SIOCGIFHWADDR, "MAC address")?;
        let mut mac = [0u8; 6];
        // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *m = *b as u8;
        }
        let req = ask(libc::SIOCGIFMTU, "MTU")?;
        // SAFETY: SIOCGIFMTU filled the MTU member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok((mac, mtu.max(68) as usize))
    })
}

/// The interface's IPv4 address and prefix length (the kernel keeps the address; the
/// userspace stack uses the same one).
pub fn interface_ipv4(interface: &str) -> io::Result<(std::net::Ipv4Addr, u8)> {
    with_ifreq(interface, |ask| {
        let v4 = |req: libc::ifreq| {
            // SAFETY: SIOCGIFADDR/SIOCGIFNETMASK filled the address member with an
            // AF_INET sockaddr (a sockaddr_in, which fits in a sockaddr).
            let sin: libc::sockaddr_in =
                unsafe { std::mem::transmute_copy(&req.ifr_ifru.ifru_addr) };
            std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
        };
        let addr = v4(ask(libc::SIOCGIFADDR, "IPv4 address")?);
        let mask = v4(ask(libc::SIOCGIFNETMASK, "netmask")?);
        Ok((addr, u32::from(mask).count_ones() as u8))
    })
}

/// How many receive queues the interface has (one AF_XDP socket each), as this
/// process's sysfs shows them; 1 where it cannot tell.
pub fn rx_queues(interface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{interface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(0)
        .max(1)
}

impl XskQueue {
    /// Open an AF_XDP socket on `interface`'s queue `queue_id` (copy mode). Register
    /// its [`fd`](Self::fd) with the XDP program so that steered frames reach it.
    pub fn open(interface: &str, queue_id: u32, cfg: &QueueConfig) -> io::Result<XskQueue> {
        if !cfg.frames.is_power_of_two() || cfg.frames < 64 {
            return Err(io::Error::other("frames: a power of two, at least 64"));
        }
        let (mac, mtu) = mac_and_mtu(interface)?;
        let name = CString::new(interface).map_err(|_| io::Error::other("interface name"))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(|e| errno(interface, e))?;
        info.set_queue(queue_id);

        let area = Area::new(cfg.frames as usize * cfg.frame_size as usize)?;
        let half = cfg.frames / 2;
        let umem_cfg = UmemConfig {
            fill_size: half,
            complete_size: half,
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, area.len);
        // SAFETY: the area is page aligned and lives in the queue, after the UMEM and
        // every socket on it (field order).
        let umem = unsafe { Umem::new(umem_cfg, slice) }.map_err(|e| errno("UMEM", e))?;
        let sock = Socket::with_shared(&info, &umem).map_err(|e| errno("AF_XDP socket", e))?;
        let mut fq_cq = umem
            .fq_cq(&sock)
            .map_err(|e| errno("fill/completion rings", e))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(half),
                    tx_size: NonZeroU32::new(half),
                    bind_flags: SocketConfig::XDP_BIND_COPY | SocketConfig::XDP_BIND_NEED_WAKEUP,
                },
            )
            .map_err(|e| errno("RX/TX rings", e))?;
        let rx = user.map_rx().map_err(|e| errno("RX ring", e))?;
        let tx = user.map_tx().map_err(|e| errno("TX ring", e))?;
        umem.bind(&user)
            .map_err(|e| errno(&format!("binding to {interface} queue {queue_id}"), e))?;

        let fs = u64::from(cfg.frame_size);
        {
            let mut fill = fq_cq.fill(half);
            let n = fill.insert((0..u64::from(half)).map(|i| i * fs));
            fill.commit();
            if n != half {
                return Err(io::Error::other(format!(
                    "fill ring took {n} of {half} frames"
                )));
            }
        }
        let free_tx = (u64::from(half)..u64::from(cfg.frames))
            .map(|i| i * fs)
            .collect();

        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = (mtu + 14).min(cfg.frame_size as usize);
        caps.max_burst_size = Some(64);
        if !cfg.verify_checksums {
            caps.checksum.ipv4 = Checksum::Tx;
            caps.checksum.tcp = Checksum::Tx;
        }
        Ok(XskQueue {
            name: format!("af_xdp:{interface}:{queue_id}"),
            mac,
            queue_id,
            rx,
            txs: TxSide {
                tx,
                free: free_tx,
                unkicked: 0,
                in_flight: 0,
                counters: EngineCounters::default(),
            },
            fq_cq,
            user,
            _sock: sock,
            _umem: umem,
            frame_size: cfg.frame_size,
            to_fill: Vec::with_capacity(half as usize),
            caps,
            flushes: 0,
            losses: 0,
            next_report: std::time::Instant::now(),
            area,
        })
    }

    /// The socket, for the XDP program's XSKMAP (and to sleep on).
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// Take back the frames the kernel has sent.
    fn reclaim(&mut self) {
        let t = &mut self.txs;
        if t.in_flight == 0 {
            return;
        }
        let mut c = self.fq_cq.complete(t.in_flight);
        while let Some(addr) = c.read() {
            t.free.push(addr);
            t.in_flight -= 1;
        }
        c.release();
    }

    /// Give received frames smoltcp is done with back to the kernel.
    fn refill(&mut self) {
        if self.to_fill.is_empty() {
            return;
        }
        let n = {
            let mut fill = self.fq_cq.fill(self.to_fill.len() as u32);
            let n = fill.insert(self.to_fill.iter().copied()) as usize;
            fill.commit();
            n
        };
        self.to_fill.drain(..n);
        if self.fq_cq.needs_wakeup() {
            self.fq_cq.wake();
        }
    }

    /// A transmit token, with a free frame if there is one.
    fn tx_token(&mut self) -> TxToken<'_> {
        let fs = self.frame_size as usize;
        let frame = self.txs.free.pop().map(|a| (a, self.area.frame(a, fs)));
        TxToken {
            frame,
            side: &mut self.txs,
        }
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
    addr: u64,
    to_fill: &'a mut Vec<u64>,
}

pub struct TxToken<'a> {
    frame: Option<(u64, &'a mut [u8])>,
    side: &'a mut TxSide,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.frame);
        self.to_fill.push(self.addr);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        let frame = self.frame.take();
        let t = &mut *self.side;
        let Some((addr, buf)) = frame else {
            // No frame free (only when handed out beside a received frame): drop
            // this one; TCP sends it again.
            t.counters.tx_full += 1;
            return f(&mut vec![0u8; len]);
        };
        let len = len.min(buf.len());
        let r = f(&mut buf[..len]);
        let queued = {
            let mut w = t.tx.transmit(1);
            let queued = w.insert_once(XdpDesc {
                addr,
                len: len as u32,
                options: 0,
            });
            w.commit();
            queued
        };
        if queued {
            t.unkicked += 1;
            t.in_flight += 1;
            t.counters.tx_frames += 1;
            t.counters.tx_bytes += len as u64;
            if t.unkicked >= KICK_BATCH {
                // Send a kernel batch's worth now rather than all at the flush.
                t.unkicked = 0;
                t.kick();
            }
        } else {
            t.free.push(addr);
            t.counters.tx_full += 1;
        }
        r
    }
}

impl TxSide {
    /// Copy mode sends only inside a syscall on the socket, and each such call sends
    /// a bounded batch (32 frames in Linux 6.x) and leaves the rest on the TX ring:
    /// kick until the ring is empty, else what is left waits for the next frame the
    /// stack sends (a retransmission timeout when the stack is waiting for an ACK of
    /// those very frames). A few tries at most: a device that refuses frames (busy)
    /// gets them again at the next flush.
    fn kick(&mut self) {
        for _ in 0..64 {
            self.counters.tx_kicks += 1;
            // SAFETY: a zero-length sendto on our own socket, no buffers.
            let r = unsafe {
                libc::sendto(
                    self.tx.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    // More left (EAGAIN) or the device was busy (EBUSY, ENOBUFS):
                    // go on while the ring holds frames.
                    Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) => {}
                    _ => {
                        self.counters.tx_kick_errors += 1;
                        return;
                    }
                }
            }
            if self.tx.pending() == 0 {
                return;
            }
            self.counters.tx_kick_again += 1;
        }
    }
}

/// smoltcp drops the transmit token that comes with a received frame when it has
/// nothing to answer: its frame goes back to the free list.
impl Drop for TxToken<'_> {
    fn drop(&mut self) {
        if let Some((addr, _)) = self.frame.take() {
            self.side.free.push(addr);
        }
    }
}

impl phy::Device for XskQueue {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.to_fill.len() >= 16 {
            self.refill();
        }
        let desc = {
            let mut r = self.rx.receive(1);
            let d = r.read();
            r.release();
            d?
        };
        self.txs.counters.rx_frames += 1;
        self.txs.counters.rx_bytes += u64::from(desc.len);
        if self.txs.free.is_empty() {
            self.reclaim();
        }
        let fs = u64::from(self.frame_size);
        let frame = self.area.frame(desc.addr, desc.len as usize);
        let tx_frame = self
            .txs
            .free
            .pop()
            .map(|a| (a, self.area.frame(a, fs as usize)));
        Some((
            RxToken {
                frame,
                addr: desc.addr & !(fs - 1),
                to_fill: &mut self.to_fill,
            },
            TxToken {
                frame: tx_frame,
                side: &mut self.txs,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.txs.free.is_empty() {
            self.reclaim();
            if self.txs.free.is_empty() {
                self.txs.counters.tx_full += 1;
                return None;
            }
        }
        Some(self.tx_token())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

impl PacketEngine for XskQueue {
    fn name(&self) -> &str {
        &self.name
    }
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn counters(&self) -> EngineCounters {
        let mut c = self.txs.counters;
        if let Ok(s) = self.user.statistics_v2() {
            c.rx_dropped = s.rx_dropped;
            c.rx_ring_full = s.rx_ring_full;
            c.rx_fill_empty = s.rx_fill_ring_empty_descs;
            c.tx_invalid = s.tx_invalid_descs;
        }
        c
    }
    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.fd())
    }
    fn flush(&mut self) {
        if self.txs.unkicked > 0 || self.txs.tx.pending() > 0 {
            self.txs.unkicked = 0;
            self.txs.kick();
        }
        self.reclaim();
        self.refill();
        self.flushes += 1;
        if self.flushes >= 1 << 10 {
            self.flushes = 0;
            self.report_losses();
        }
    }
}

impl XskQueue {
    /// Warn when frames were lost since the last look (each loss costs TCP a
    /// retransmission, a timeout when it is the last segment of a burst).
    fn report_losses(&mut self) {
        let now = std::time::Instant::now();
        if now < self.next_report {
            return;
        }
        self.next_report = now + std::time::Duration::from_secs(1);
        let c = self.counters();
        let losses = c.rx_dropped
            + c.rx_ring_full
            + c.rx_fill_empty
            + c.tx_invalid
            + c.tx_full
            + c.tx_kick_errors;
        if losses > self.losses {
            self.losses = losses;
            tracing::warn!(queue = %self.name, counters = ?c, "AF_XDP queue lost frames");
        }
    }
}
