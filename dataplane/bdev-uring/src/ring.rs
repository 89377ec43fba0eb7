//! How each channel's io_uring is set up: what it registers with the kernel, how its
//! completions are delivered, and when it submits. Each choice is a [`RingOptions`]
//! field so that `lightpool-perf bdev --ring` can measure it against fio
//! (`perf/bench-bdev.sh`); the defaults are the ones that paid there.

use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};

use io_uring::IoUring;
use lightpool_dma::{DmaPool, HugePages, PoolOptions};

/// How a channel's ring is set up. Not part of a device's handed-over state: a
/// successor's channels make their rings anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOptions {
    /// The device's descriptor is registered with the ring (`IOSQE_FIXED_FILE`): no
    /// file reference is taken and dropped per request, which in a process with many
    /// threads is two atomic operations on a shared line.
    pub fixed_file: bool,
    /// The device offers a buffer pool ([`lightpool_bdev::Bdev::dma_pool`]) that every
    /// ring registers (`READ_FIXED`/`WRITE_FIXED` for requests whose buffer is in it):
    /// no page is looked up and pinned per `O_DIRECT` request.
    pub fixed_buffers: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (with `TASKRUN_FLAG`): a completion does not
    /// interrupt the polling thread to post its CQE; the kernel raises a flag in the
    /// ring instead, and the channel's next poll enters the kernel to post it.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (with `SINGLE_ISSUER`): completions are posted only
    /// when the channel asks (every poll with requests in the kernel enters it).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SQPOLL` with the kernel's polling thread pinned to this CPU: no
    /// system call to submit, at the price of that CPU.
    pub sqpoll: Option<u32>,
    /// The completion eventfd is silenced while the channel is being polled busily
    /// (each signal costs the kernel a wake-up walk), and turned on again after a few
    /// empty polls, before a reactor could go to sleep on it.
    pub quiet_eventfd: bool,
    /// Submit when at least this many SQEs wait, or when they are at least as many as
    /// the requests the kernel holds (so a lone request goes at once); 0 or 1: at every
    /// poll that has something to submit.
    pub batch: u32,
}

impl Default for RingOptions {
    fn default() -> Self {
        RingOptions {
            fixed_file: true,
            fixed_buffers: true,
            coop_taskrun: true,
            defer_taskrun: false,
            sqpoll: None,
            quiet_eventfd: true,
            batch: 0,
        }
    }
}

impl RingOptions {
    /// The defaults changed by a comma-separated list: `fixed-file`, `fixed-buffers`,
    /// `coop-taskrun`, `defer-taskrun`, `quiet-eventfd` (each with a `no-` form),
    /// `sqpoll=CPU`, `no-sqpoll`, `batch=N`; `plain` turns everything off first.
    pub fn parse(spec: &str) -> Result<RingOptions, String> {
        let mut o = RingOptions::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (on, name) = match item.strip_prefix("no-") {
                Some(n) => (false, n),
                None => (true, item),
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (name, None),
            };
            let number = |v: Option<&str>| {
                v.and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| format!("ring option {item}: give a number, e.g. {name}=1"))
            };
            match (name, value) {
                ("plain", None) if on => {
                    o = RingOptions {
                        fixed_file: false,
                        fixed_buffers: false,
                        coop_taskrun: false,
                        defer_taskrun: false,
                        sqpoll: None,
                        quiet_eventfd: false,
                        batch: 0,
                    }
                }
                ("fixed-file", None) => o.fixed_file = on,
                ("fixed-buffers", None) => o.fixed_buffers = on,
                ("coop-taskrun", None) => o.coop_taskrun = on,
                ("defer-taskrun", None) => o.defer_taskrun = on,
                ("quiet-eventfd", None) => o.quiet_eventfd = on,
                ("sqpoll", v) if on => o.sqpoll = Some(number(v)?),
                ("sqpoll", None) => o.sqpoll = None,
                ("batch", v) if on => o.batch = number(v)?,
                _ => {
                    return Err(format!(
                        "unknown ring option {item}: use fixed-file, fixed-buffers, \
                         coop-taskrun, defer-taskrun, quiet-eventfd (or no-...), sqpoll=CPU, \
                         batch=N, plain"
                    ))
                }
            }
        }
        Ok(o)
    }
}

/// Buffers of the pool io_uring devices offer: the largest transfer a target allows
/// by default, 256 of them (32 MiB, 16 huge pages), as a target's own pool.
const POOL_BUF: usize = 128 * 1024;
const POOL_COUNT: usize = 256;

/// The one buffer pool of every io_uring device of the process, made on first use: one
/// region that every ring registers, whichever device it serves, so that a target's
/// request buffers are registered with all of them. `None` when it cannot be made.
pub(crate) fn shared_pool() -> Option<Arc<DmaPool>> {
    static POOL: OnceLock<Option<Arc<DmaPool>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let opts = PoolOptions {
            buf_size: POOL_BUF,
            count: POOL_COUNT,
            cache_size: 32,
            hugepages: HugePages::Auto,
        };
        DmaPool::new(&opts, None)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "io_uring devices: no buffer pool to register; requests use unregistered buffers")
            })
            .ok()
    })
    .clone()
}

/// A channel's ring and what it registered.
pub(crate) struct Ring {
    pub(crate) ring: IoUring,
    /// The device's fd is registered at index 0.
    pub(crate) fixed_file: bool,
    /// The registered buffer (index 0): its first byte's address and its length.
    pub(crate) fixed_buf: Option<(usize, usize)>,
    pub(crate) defer_taskrun: bool,
    /// Completions wait for the channel to enter the kernel when the ring's
    /// `IORING_SQ_TASKRUN` flag says so (cooperative task running).
    pub(crate) taskrun_flag: bool,
    /// Keeps the registered buffer's memory mapped while the ring lives (declared after
    /// `ring`, so dropped after it).
    _pool: Option<Arc<DmaPool>>,
}

/// Warns once that a ring could not be set up as asked.
fn degraded(what: &str, e: &std::io::Error) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(error = %e, "io_uring: {what}; going on without it (said once)");
    }
}

impl Ring {
    /// A ring of `depth` entries for the device `fd`, set up as `o` asks; whatever the
    /// kernel refuses (older kernels, a memory-lock limit) is left out, said once.
    pub(crate) fn new(depth: u32, fd: RawFd, o: &RingOptions) -> std::io::Result<Ring> {
        let mut b = IoUring::builder();
        if o.defer_taskrun {
            b.setup_single_issuer().setup_defer_taskrun();
        } else if o.coop_taskrun {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        if let Some(cpu) = o.sqpoll {
            b.setup_sqpoll(1000).setup_sqpoll_cpu(cpu);
        }
        let (ring, defer_taskrun, taskrun_flag) = match b.build(depth) {
            Ok(r) => (r, o.defer_taskrun, !o.defer_taskrun && o.coop_taskrun),
            Err(e) => {
                degraded("the ring's setup flags were refused", &e);
                (IoUring::new(depth)?, false, false)
            }
        };
        let fixed_file = o.fixed_file
            && ring
                .submitter()
                .register_files(&[fd])
                .inspect_err(|e| degraded("the device's descriptor could not be registered", e))
                .is_ok();
        let mut pool = None;
        let mut fixed_buf = None;
        if o.fixed_buffers {
            if let Some(p) = shared_pool() {
                let mem = p.memory();
                let iov = libc::iovec {
                    iov_base: mem.as_ptr().cast(),
                    iov_len: mem.len(),
                };
                // SAFETY: the iovec is the pool's whole mapping, which stays mapped while
                // `_pool` holds the pool, i.e. for as long as the ring that registered it
                // (dropped first); the kernel pins those pages for the ring.
                match unsafe { ring.submitter().register_buffers(&[iov]) } {
                    Ok(()) => {
                        fixed_buf = Some((mem.as_ptr() as usize, mem.len()));
                        pool = Some(p);
                    }
                    Err(e) => degraded("the buffer pool could not be registered", &e),
                }
            }
        }
        Ok(Ring {
            ring,
            fixed_file,
            fixed_buf,
            defer_taskrun,
            taskrun_flag,
            _pool: pool,
        })
    }

    /// The registered buffer `buf..buf+len` lies in, if any.
    #[inline]
    pub(crate) fn buf_index(&self, buf: *const u8, len: u64) -> Option<u16> {
        let (start, size) = self.fixed_buf?;
        let off = (buf as usize).checked_sub(start)?;
        (off as u64 + len <= size as u64).then_some(0)
    }
}
