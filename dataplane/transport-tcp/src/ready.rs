//! Which sockets of a reactor to read in a pass: the transport's readiness set (an
//! epoll set asked with a zero timeout) and direct reading of a lone busy connection.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::Entry;

/// Reading a lone busy connection directly.
///
/// Through the readiness set a command costs two system calls before it is read: the
/// `epoll_wait` that finds its socket ready, then the `recv`. When one connection
/// carries all of a reactor's input (a queue-depth-1 workload, its admin queue idle
/// beside it), a `recv` on that socket every pass reads the command in one (and returns
/// EAGAIN otherwise, for about what an empty `epoll_wait` costs), and the readiness set
/// is asked once per [`DIRECT_INTERVAL`] for everything else: listeners, the other
/// connections. Which connection that is, is decided at the end of each interval from
/// what was readable during it.
///
/// Measured (perf stat, system calls of the target per 4 KiB random read, default
/// configuration): 6.3 instead of 10.6 at queue depth 1 (an empty `recv` replaces an
/// empty `epoll_wait` between commands, and the one before each command is gone), 0.17
/// instead of 0.25 at queue depth 32.
#[derive(Default)]
pub(crate) struct Direct {
    /// The connection read directly, by fd.
    pub(crate) fd: Option<RawFd>,
    /// When the current interval ends (the readiness set is asked then in any case).
    pub(crate) until: Option<Instant>,
    /// Sockets found readable by the readiness set during the interval.
    pub(crate) seen: Seen,
    /// The direct connection received something during the interval.
    pub(crate) active: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    #[default]
    Nothing,
    One(RawFd),
    Several,
}

impl Seen {
    fn add(&mut self, fd: RawFd) {
        *self = match *self {
            Seen::Nothing => Seen::One(fd),
            Seen::One(f) if f == fd => Seen::One(f),
            _ => Seen::Several,
        }
    }
}

/// How long a connection is read directly before the readiness set is asked again:
/// the longest another socket of the reactor (a listener, an idle admin queue) waits.
const DIRECT_INTERVAL: Duration = Duration::from_millis(1);

/// Token of a listening socket in the readiness set (connections use their fd).
pub(crate) const LISTENER_TOKEN: u64 = 1 << 32;
/// Events collected per pass at most; the rest stay ready for the next.
const READY_EVENTS: usize = 64;

/// The readiness set of this transport on a reactor ([`lightpool_reactor::readiness`]),
/// and which connection each fd is.
pub(crate) struct Readiness {
    pub(crate) set: lightpool_reactor::readiness::Readiness,
    /// Entry index + 1 of the connection with each fd (0: none).
    pub(crate) by_fd: Vec<u32>,
}

impl Readiness {
    pub(crate) fn new() -> std::io::Result<Readiness> {
        Ok(Readiness {
            set: lightpool_reactor::readiness::Readiness::new(READY_EVENTS)?,
            by_fd: Vec::new(),
        })
    }

    pub(crate) fn add(&mut self, fd: RawFd, token: u64) -> std::io::Result<()> {
        self.set.add(fd, token)
    }

    pub(crate) fn remove(&mut self, fd: RawFd) {
        self.set.remove(fd);
        if let Some(i) = self.by_fd.get_mut(fd as usize) {
            *i = 0;
        }
    }

    pub(crate) fn set_index(&mut self, fd: RawFd, index: usize) {
        let fd = fd as usize;
        if self.by_fd.len() <= fd {
            self.by_fd.resize(fd + 1, 0);
        }
        self.by_fd[fd] = index as u32 + 1;
    }

    /// Marks the ready connections; true if a listener is ready.
    pub(crate) fn poll(&mut self, conns: &mut [Entry]) -> bool {
        // An error (none is expected of a zero-timeout wait) reads as nothing ready.
        let _ = self.set.poll();
        let mut listener = false;
        for token in self.set.tokens() {
            if token & LISTENER_TOKEN != 0 {
                listener = true;
            } else if let Some(&i) = self.by_fd.get(token as usize) {
                if let Some(e) = conns.get_mut((i as usize).wrapping_sub(1)) {
                    e.readable = true;
                }
            }
        }
        listener
    }
}

/// Marks the connections to read this pass; true if a listener is ready. Between the
/// ends of [`DIRECT_INTERVAL`]s with a direct connection, that one only, without
/// asking the readiness set; else what the readiness set says (see [`Direct`]).
pub(crate) fn poll_ready_set(
    r: &mut Readiness,
    d: &mut Direct,
    conns: &mut [Entry],
    now: Instant,
) -> bool {
    let interval_over = d.until.is_none_or(|t| now >= t);
    if let (Some(fd), false) = (d.fd, interval_over) {
        if let Some(&i) = r.by_fd.get(fd as usize) {
            if let Some(e) = conns.get_mut((i as usize).wrapping_sub(1)) {
                e.readable = true;
            }
        }
        return false;
    }
    let listener = r.poll(conns);
    for token in r.set.tokens() {
        if token & LISTENER_TOKEN != 0 {
            d.seen = Seen::Several;
        } else {
            d.seen.add(token as RawFd);
        }
    }
    if interval_over {
        d.fd = match (d.fd, d.seen) {
            // Direct: it stays so while it alone has input.
            (Some(fd), Seen::Nothing) if d.active => Some(fd),
            (Some(fd), Seen::One(f)) if f == fd && d.active => Some(fd),
            (Some(_), _) => None,
            // Through the readiness set: one connection alone had input.
            (None, Seen::One(fd)) if DIRECT_ENABLED.with(|e| *e) => Some(fd),
            (None, _) => None,
        };
        d.seen = Seen::Nothing;
        d.active = false;
        d.until = Some(now + DIRECT_INTERVAL);
    }
    listener
}

thread_local! {
    /// `LIGHTPOOL_TCP_DIRECT=0` in the environment switches direct reading off (every
    /// socket through the readiness set, as before it existed): for A/B measurements
    /// of one build, e.g. `perf/bench.sh` with a `COMPARE_BIN` wrapper that sets it.
    static DIRECT_ENABLED: bool = std::env::var_os("LIGHTPOOL_TCP_DIRECT").is_none_or(|v| v != "0");
}
