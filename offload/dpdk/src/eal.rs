//! EAL: started once per process from an argument list; reactor threads register.

use std::ffi::{c_char, CString};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lightpool_dpdk_sys::ffi;

use crate::error::{rte_errno, strerror, DpdkError};

static STARTED: AtomicBool = AtomicBool::new(false);

/// Whether EAL maps its memory from hugepages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hugepages {
    /// Hugepages when enough are free and hugetlbfs is mounted, else `--no-huge`.
    Auto,
    /// Always hugepages (IOVA as physical addresses when root).
    Use,
    /// `--no-huge`: anonymous memory, IOVA as virtual addresses (virtual devices only).
    NoHuge,
}

/// What [`Eal::init`] starts EAL with; [`EalConfig::args`] is the argument list.
#[derive(Clone, Debug)]
pub struct EalConfig {
    /// Virtual devices, one `--vdev` each: `net_ring0`, `net_tap0,iface=tap0`,
    /// `net_af_packet0,iface=veth0,qpairs=2`.
    pub vdevs: Vec<String>,
    /// The reactors' cores: EAL's main lcore (the thread calling [`Eal::init`]) is
    /// pinned to this set and no worker lcores are started (the reactors are the
    /// workers; they [`register_thread`]). Empty: the caller's current affinity.
    pub cores: Vec<usize>,
    /// MiB of memory EAL reserves (`-m`).
    pub memory_mb: u32,
    pub hugepages: Hugepages,
    /// Probe PCI devices (a real NIC bound to vfio-pci); off: `--no-pci`.
    pub pci: bool,
    /// `--log-level` (e.g. `notice`, `lib.eal:debug`).
    pub log_level: Option<String>,
    /// Anything else, appended as given.
    pub extra: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            vdevs: Vec::new(),
            cores: Vec::new(),
            memory_mb: 512,
            hugepages: Hugepages::Auto,
            pci: false,
            log_level: None,
            extra: Vec::new(),
        }
    }
}

impl EalConfig {
    /// The EAL argument list (argv[0] included).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["lightpool".to_string()];
        if !self.pci {
            a.push("--no-pci".into());
        }
        let huge = match self.hugepages {
            Hugepages::Use => true,
            Hugepages::NoHuge => false,
            Hugepages::Auto => hugepages_available(u64::from(self.memory_mb) << 20),
        };
        // Nothing shared with other DPDK processes: --in-memory (no files in hugetlbfs or
        // /var/run/dpdk). EAL treats --no-huge as legacy memory, which it refuses to
        // combine with --in-memory; there --no-shconf and a per-process prefix do it.
        if huge {
            a.push("--in-memory".into());
        } else {
            a.push("--no-huge".into());
            a.push("--no-shconf".into());
            a.push(format!("--file-prefix=lightpool{}", std::process::id()));
        }
        a.push("-m".into());
        a.push(self.memory_mb.to_string());
        let cores = if self.cores.is_empty() {
            current_affinity()
        } else {
            self.cores.clone()
        };
        if !cores.is_empty() {
            let set: Vec<String> = cores.iter().map(usize::to_string).collect();
            a.push(format!("--lcores=0@({})", set.join(",")));
        }
        for v in &self.vdevs {
            a.push(format!("--vdev={v}"));
        }
        if let Some(l) = &self.log_level {
            a.push(format!("--log-level={l}"));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// Whether hugetlbfs is mounted and at least `bytes` of hugepages are free.
fn hugepages_available(bytes: u64) -> bool {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
        })
        .unwrap_or(false);
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let free = field("HugePages_Free:") * field("Hugepagesize:") * 1024;
    mounted && free >= bytes
}

/// The CPUs the calling thread may run on (empty if they cannot be read).
pub fn current_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Proof that EAL runs in this process. Cheap to clone; EAL is never torn down
/// (DPDK cannot start it again in the same process).
#[derive(Clone, Debug)]
pub struct Eal {
    args: Vec<String>,
    init_time: std::time::Duration,
}

impl Eal {
    /// Starts EAL with `config`'s arguments. The calling thread becomes EAL's main
    /// lcore (pinned to `config.cores`).
    pub fn init(config: &EalConfig) -> Result<Eal, DpdkError> {
        Eal::init_args(&config.args())
    }

    /// Starts EAL with a literal argument list (argv[0] first).
    pub fn init_args(args: &[String]) -> Result<Eal, DpdkError> {
        let cargs = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::BadArgument(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalAlreadyInitialised);
        }
        // EAL may keep pointers into argv (and reorders it): the strings live for the
        // process, like EAL.
        let cargs: &'static [CString] = Box::leak(cargs.into_boxed_slice());
        let argv: &'static mut [*mut c_char] = Box::leak(
            cargs
                .iter()
                .map(|c| c.as_ptr() as *mut c_char)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let start = Instant::now();
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the process's
        // use of them (leaked above); EAL is started once (STARTED).
        let ret = unsafe { ffi::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if ret < 0 {
            let errno = rte_errno();
            let hint = match errno {
                libc::EACCES => {
                    "no usable hugepages (none reserved or mounted, or not root); pass \
                     --no-huge (Hugepages::NoHuge) or reserve 2 MiB hugepages"
                }
                libc::ENOMEM => {
                    "not enough memory: lower -m (memory_mb), reserve more hugepages, or \
                     pass --no-huge"
                }
                libc::EALREADY => "EAL runs already in this process: reuse it",
                libc::EINVAL => {
                    "an argument was refused (EAL's log above says which): check --vdev, \
                     --lcores, -m"
                }
                libc::ENODEV => "no device or bus could be probed: check --vdev and --no-pci",
                libc::EPROTO => "the service cores could not start: check --lcores",
                _ => "see EAL's log above",
            };
            // EAL refuses a second try in the same process after most failures.
            return Err(DpdkError::EalInit {
                errno,
                reason: strerror(errno),
                hint,
            });
        }
        Ok(Eal {
            args: args.to_vec(),
            init_time: start.elapsed(),
        })
    }

    /// The arguments EAL was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// How long `rte_eal_init` took.
    pub fn init_time(&self) -> std::time::Duration {
        self.init_time
    }
}

/// The calling thread as an EAL thread (a non-EAL lcore) until the guard drops.
///
/// Why: DPDK's per-lcore state (above all each mempool's per-lcore cache) is indexed by
/// `rte_lcore_id()`. A thread that is neither an EAL lcore nor registered has
/// `LCORE_ID_ANY`: everything still works and stays correct (mbuf alloc/free go
/// straight to the mempool's shared multi-producer/consumer ring, which is thread
/// safe), but every alloc and free pays the ring's atomics instead of a local cache.
/// [`crate::Queue::on_registered_thread`] tells which case a thread is in.
pub struct ThreadRegistration {
    unregister: bool,
    lcore: u32,
    _not_send: PhantomData<*const ()>,
}

impl ThreadRegistration {
    /// The lcore id EAL gave this thread.
    pub fn lcore(&self) -> u32 {
        self.lcore
    }
}

/// Registers the calling thread with EAL (see [`ThreadRegistration`]). On a thread that
/// is already an lcore it returns a guard that does nothing.
pub fn register_thread(_eal: &Eal) -> Result<ThreadRegistration, DpdkError> {
    let current = lcore_id();
    // SAFETY: plain read of a constant the shim exports.
    if current != unsafe { ffi::lp_lcore_id_any } {
        return Ok(ThreadRegistration {
            unregister: false,
            lcore: current,
            _not_send: PhantomData,
        });
    }
    // SAFETY: EAL is initialised (the &Eal proves it); registers this thread.
    if unsafe { ffi::rte_thread_register() } != 0 {
        return Err(DpdkError::ThreadRegister {
            reason: strerror(rte_errno()),
            max: ffi::RTE_MAX_LCORE,
        });
    }
    Ok(ThreadRegistration {
        unregister: true,
        lcore: lcore_id(),
        _not_send: PhantomData,
    })
}

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        if self.unregister {
            // SAFETY: this thread registered itself (the guard is not Send).
            unsafe { ffi::rte_thread_unregister() };
        }
    }
}

/// This thread's lcore id (`LCORE_ID_ANY` when not an EAL thread).
pub(crate) fn lcore_id() -> u32 {
    // SAFETY: reads a per-thread variable.
    unsafe { ffi::lp_rte_lcore_id() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_without_hugepages() {
        let c = EalConfig {
            vdevs: vec!["net_ring0".into()],
            cores: vec![2, 3],
            hugepages: Hugepages::NoHuge,
            ..EalConfig::default()
        };
        let a = c.args();
        for want in [
            "--no-pci",
            "--no-huge",
            "--no-shconf",
            "--lcores=0@(2,3)",
            "--vdev=net_ring0",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(!a.iter().any(|x| x == "--in-memory"), "{a:?}");
        let m = a.iter().position(|x| x == "-m").expect("-m");
        assert_eq!(a[m + 1], "512");
    }

    #[test]
    fn args_with_hugepages() {
        let c = EalConfig {
            hugepages: Hugepages::Use,
            pci: true,
            log_level: Some("lib.eal:debug".into()),
            ..EalConfig::default()
        };
        let a = c.args();
        assert!(a.iter().any(|x| x == "--in-memory"), "{a:?}");
        assert!(
            !a.iter().any(|x| x == "--no-huge" || x == "--no-pci"),
            "{a:?}"
        );
        assert!(a.iter().any(|x| x == "--log-level=lib.eal:debug"), "{a:?}");
        // No cores given: the caller's affinity.
        assert!(a.iter().any(|x| x.starts_with("--lcores=0@(")), "{a:?}");
    }

    #[test]
    fn hugepages_for_more_than_any_machine_has() {
        assert!(!hugepages_available(1 << 50));
    }
}
