//! The VFIO objects the driver needs: the container (one IOMMU domain, shared by every
//! device this process drives), the device's group, the device, its BAR0 and its PCI
//! configuration space. The ioctls are the stable VFIO type1 API (linux/vfio.h); the
//! structures come from vfio-bindings.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use lightpool_dma::DmaMapper;
use vfio_bindings::bindings::vfio as sys;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: VFIO ioctls carry no size in their number.
const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((sys::VFIO_TYPE as u32) << 8 | (sys::VFIO_BASE + nr)) as libc::c_ulong
}
const VFIO_GET_API_VERSION: libc::c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: libc::c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const VFIO_DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const VFIO_IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = vfio_io(14);

/// Where IOVAs start: above 4 GiB, clear of the x86 MSI window (0xfee00000) and of
/// anything a 32-bit device would need; the emulated and real IOMMUs we target give at
/// least 39 address bits.
const IOVA_BASE: u64 = 1 << 32;
/// IOVAs are handed out in steps of this, so a 2 MiB hugepage gets a 2 MiB-aligned IOVA
/// and the IOMMU can use large pages.
const IOVA_ALIGN: u64 = 2 << 20;

/// PCI command register: memory space and bus master enable.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// Errors from VFIO set-up.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {source}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unusable(String),
}

fn ioctl_err(what: &'static str) -> VfioError {
    VfioError::Ioctl {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// The canonical form of a PCI address: "0000:00:04.0" (a missing domain is 0000).
pub fn normalize_pci_address(addr: &str) -> Option<String> {
    let a = addr.trim().to_ascii_lowercase();
    let full = if a.matches(':').count() == 1 {
        format!("0000:{a}")
    } else {
        a
    };
    let (dom, rest) = full.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    (hex(dom, 4) && hex(bus, 2) && hex(dev, 2) && func.len() == 1 && hex(func, 1)).then_some(full)
}

/// The IOMMU group of a PCI device, from sysfs.
pub fn iommu_group_of(sysfs: &Path, addr: &str) -> Result<u32, VfioError> {
    let dev = sysfs.join("bus/pci/devices").join(addr);
    if !dev.exists() {
        return Err(VfioError::Unusable(format!(
            "PCI device {addr} does not exist (no {})",
            dev.display()
        )));
    }
    let link = std::fs::read_link(dev.join("iommu_group")).map_err(|_| {
        VfioError::Unusable(format!(
            "PCI device {addr} has no IOMMU group: the IOMMU is off (boot with intel_iommu=on \
             or amd_iommu=on) or the platform has none"
        ))
    })?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            VfioError::Unusable(format!(
                "cannot read the IOMMU group of {addr} from {}",
                link.display()
            ))
        })
}

/// The driver a PCI device is bound to, if any.
pub fn driver_of(sysfs: &Path, addr: &str) -> Option<String> {
    let link = std::fs::read_link(sysfs.join("bus/pci/devices").join(addr).join("driver")).ok()?;
    link.file_name()?.to_str().map(str::to_string)
}

/// One VFIO container: an IOMMU domain that every attached group shares, so DMA memory
/// mapped once is reachable by every device of the process.
pub struct Container {
    fd: OwnedFd,
    state: Mutex<Inner>,
}

struct Inner {
    groups: HashMap<u32, Arc<File>>,
    iommu_set: bool,
    iovas: IovaAllocator,
}

/// Hands out IOVA ranges: a bump pointer, plus the ranges given back, reused for
/// mappings of the same (aligned) size, so that queue pairs made and dropped as hosts
/// come and go do not walk through the IOMMU's address space.
#[derive(Debug)]
struct IovaAllocator {
    next: u64,
    free: Vec<(u64, u64)>,
}

impl IovaAllocator {
    fn new() -> IovaAllocator {
        IovaAllocator {
            next: IOVA_BASE,
            free: Vec::new(),
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.next_multiple_of(IOVA_ALIGN);
        if let Some(i) = self.free.iter().position(|&(_, l)| l == len) {
            return self.free.swap_remove(i).0;
        }
        let iova = self.next;
        self.next += len;
        iova
    }

    fn release(&mut self, iova: u64, len: u64) {
        self.free.push((iova, len.next_multiple_of(IOVA_ALIGN)));
    }
}

/// What a successor process needs to carry on with a container (hot upgrade): the
/// groups attached to it and the IOVA allocator, so that its own mappings never land
/// on the IOVAs the predecessor's mappings (which stay in place) occupy. The container
/// and group descriptors travel beside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerState {
    /// IOMMU group numbers, in the order of the group descriptors.
    pub groups: Vec<u32>,
    /// Next never-used IOVA.
    pub next_iova: u64,
    /// IOVA ranges given back, (start, length).
    pub free_iovas: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

static SHARED: Mutex<Option<Arc<Container>>> = Mutex::new(None);

impl Container {
    /// Opens /dev/vfio/vfio and checks that it speaks the type1v2 IOMMU API.
    pub fn open() -> Result<Container, VfioError> {
        let path = "/dev/vfio/vfio";
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| VfioError::Open {
                path: format!("{path} (is the vfio module loaded?)"),
                source,
            })?;
        let fd: OwnedFd = f.into();
        // SAFETY: VFIO_GET_API_VERSION takes no argument and only returns a number.
        let v = unsafe { libc::ioctl(fd.as_raw_fd(), VFIO_GET_API_VERSION) };
        if v != sys::VFIO_API_VERSION as i32 {
            return Err(VfioError::Unusable(format!(
                "VFIO API version {v} is not the supported {}",
                sys::VFIO_API_VERSION
            )));
        }
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument and returns a number.
        let ok = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                VFIO_CHECK_EXTENSION,
                sys::VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        };
        if ok <= 0 {
            return Err(VfioError::Unusable(
                "VFIO does not offer the type1v2 IOMMU (is vfio_iommu_type1 loaded?)".into(),
            ));
        }
        Ok(Container {
            fd,
            state: Mutex::new(Inner {
                groups: HashMap::new(),
                iommu_set: false,
                iovas: IovaAllocator::new(),
            }),
        })
    }

    /// The process-wide container, opened on first use.
    pub fn shared() -> Result<Arc<Container>, VfioError> {
        let mut s = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = s.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(Container::open()?);
        *s = Some(c.clone());
        Ok(c)
    }

    /// Hot upgrade, old process: the container's state and descriptors (container
    /// first, then one per group, in the order of `ContainerState::groups`).
    pub fn export(&self) -> Result<(ContainerState, Vec<OwnedFd>), VfioError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|source| VfioError::Ioctl {
                what: "duplicating a VFIO descriptor",
                source,
            })
        };
        let mut fds = vec![dup(self.fd.as_fd())?];
        let mut groups: Vec<u32> = st.groups.keys().copied().collect();
        groups.sort_unstable();
        for g in &groups {
            fds.push(dup(st.groups[g].as_fd())?);
        }
        Ok((
            ContainerState {
                groups,
                next_iova: st.iovas.next,
                free_iovas: st.iovas.free.clone(),
            },
            fds,
        ))
    }

    /// Hot upgrade, new process: the predecessor's container, with its groups attached
    /// and its IOMMU set, and every mapping it made still in place. `fds` as
    /// [`Container::export`] made them.
    pub fn adopt(state: &ContainerState, fds: Vec<OwnedFd>) -> Result<Container, VfioError> {
        if fds.len() != state.groups.len() + 1 {
            return Err(VfioError::Unusable(format!(
                "the VFIO container came with {} descriptors, not {} (the container and {} group(s))",
                fds.len(),
                state.groups.len() + 1,
                state.groups.len()
            )));
        }
        if state.next_iova < IOVA_BASE {
            return Err(VfioError::Unusable(format!(
                "the VFIO container's next IOVA {:#x} lies below {IOVA_BASE:#x}",
                state.next_iova
            )));
        }
        let mut it = fds.into_iter();
        let fd = it.next().expect("length checked above");
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer argument and returns a number; a
        // descriptor that is not a VFIO container fails it.
        let ok = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                VFIO_CHECK_EXTENSION,
                sys::VFIO_TYPE1v2_IOMMU as libc::c_ulong,
            )
        };
        if ok <= 0 {
            return Err(VfioError::Unusable(
                "the descriptor handed over as the VFIO container is not one".into(),
            ));
        }
        let groups = state
            .groups
            .iter()
            .zip(it)
            .map(|(&g, f)| (g, Arc::new(File::from(f))))
            .collect();
        Ok(Container {
            fd,
            state: Mutex::new(Inner {
                groups,
                iommu_set: !state.groups.is_empty(),
                iovas: IovaAllocator {
                    next: state.next_iova,
                    free: state.free_iovas.clone(),
                },
            }),
        })
    }

    /// Makes `c` the process-wide container ([`Container::shared`]), unless there is one
    /// already; returns the one in place.
    pub fn install_shared(c: Container) -> Arc<Container> {
        let mut s = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = s.as_ref() {
            return c.clone();
        }
        let c = Arc::new(c);
        *s = Some(c.clone());
        c
    }

    /// Hot upgrade, new process: the device `addr` of group `group`, from the device
    /// descriptor the predecessor handed over (no reset: the device keeps running).
    pub fn adopt_device(&self, addr: &str, group: u32, fd: OwnedFd) -> Result<Device, VfioError> {
        let gf = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .groups
            .get(&group)
            .cloned()
            .ok_or_else(|| {
                VfioError::Unusable(format!(
                    "{addr}: its IOMMU group {group} was not handed over with the container"
                ))
            })?;
        check_pci_device(&fd, addr, "VFIO_DEVICE_GET_INFO (device handed over)")?;
        Ok(Device {
            addr: addr.to_string(),
            group,
            file: File::from(fd),
            _group: gf,
        })
    }

    /// Whether a group is attached and the IOMMU type set: only then can memory be
    /// mapped.
    pub fn is_ready(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iommu_set
    }

    /// Attaches the group `group` (once) and, for the first group, sets the IOMMU type.
    fn attach_group(&self, group: u32) -> Result<Arc<File>, VfioError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = st.groups.get(&group) {
            return Ok(f.clone());
        }
        let path = format!("/dev/vfio/{group}");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| VfioError::Open {
                path: format!("{path} (is the device bound to vfio-pci?)"),
                source,
            })?;
        let mut status = sys::vfio_group_status {
            argsz: std::mem::size_of::<sys::vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: VFIO_GROUP_GET_STATUS writes one vfio_group_status, whose argsz says
        // how large it is; `status` lives across the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut status) } < 0 {
            return Err(ioctl_err("VFIO_GROUP_GET_STATUS"));
        }
        if status.flags & sys::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::Unusable(format!(
                "IOMMU group {group} is not viable: every device in it must be bound to \
                 vfio-pci or to no driver (see hugepage-setup status)"
            )));
        }
        let cfd: libc::c_int = self.fd.as_raw_fd();
        // SAFETY: VFIO_GROUP_SET_CONTAINER reads one int (the container fd) through the
        // pointer, which stays valid for the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &cfd) } < 0 {
            return Err(ioctl_err("VFIO_GROUP_SET_CONTAINER"));
        }
        if !st.iommu_set {
            // SAFETY: VFIO_SET_IOMMU takes the IOMMU type as an integer argument.
            let rc = unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    VFIO_SET_IOMMU,
                    sys::VFIO_TYPE1v2_IOMMU as libc::c_ulong,
                )
            };
            if rc < 0 {
                return Err(ioctl_err("VFIO_SET_IOMMU (type1v2)"));
            }
            st.iommu_set = true;
        }
        let f = Arc::new(f);
        st.groups.insert(group, f.clone());
        Ok(f)
    }

    /// Opens the PCI device `addr` (bound to vfio-pci) in this container.
    pub fn open_device(&self, addr: &str) -> Result<Device, VfioError> {
        let addr = normalize_pci_address(addr).ok_or_else(|| {
            VfioError::Unusable(format!(
                "{addr:?} is not a PCI address such as 0000:00:04.0"
            ))
        })?;
        let sysfs = Path::new("/sys");
        let group = iommu_group_of(sysfs, &addr)?;
        match driver_of(sysfs, &addr).as_deref() {
            Some("vfio-pci") => {}
            Some(other) => {
                return Err(VfioError::Unusable(format!(
                    "PCI device {addr} is bound to {other}, not vfio-pci (run hugepage-setup \
                     bind {addr})"
                )))
            }
            None => {
                return Err(VfioError::Unusable(format!(
                    "PCI device {addr} is bound to no driver; bind it to vfio-pci first (run \
                     hugepage-setup bind {addr})"
                )))
            }
        }
        let gf = self.attach_group(group)?;
        let name = CString::new(addr.clone())
            .map_err(|_| VfioError::Unusable(format!("{addr:?} contains a NUL byte")))?;
        // SAFETY: VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated name that lives across
        // the call and returns a new fd, which we own from here on.
        let fd = unsafe { libc::ioctl(gf.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) };
        if fd < 0 {
            return Err(ioctl_err("VFIO_GROUP_GET_DEVICE_FD"));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        check_pci_device(&fd, &addr, "VFIO_DEVICE_GET_INFO")?;
        Ok(Device {
            addr,
            group,
            file: File::from(fd),
            _group: gf,
        })
    }
}

impl DmaMapper for Container {
    fn map(&self, vaddr: usize, len: usize) -> Result<u64, std::io::Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.iommu_set {
            return Err(std::io::Error::other(
                "the VFIO container has no device yet, so it has no IOMMU to map into",
            ));
        }
        let iova = st.iovas.alloc(len as u64);
        let mut m = sys::vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<sys::vfio_iommu_type1_dma_map>() as u32,
            flags: sys::VFIO_DMA_MAP_FLAG_READ | sys::VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size: len as u64,
        };
        // SAFETY: VFIO_IOMMU_MAP_DMA reads one vfio_iommu_type1_dma_map; the kernel pins
        // and maps the caller's pages, which the caller (DmaMemory) keeps mapped until it
        // calls unmap.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &mut m) } < 0 {
            let e = std::io::Error::last_os_error();
            st.iovas.release(iova, len as u64);
            return Err(e);
        }
        Ok(iova)
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), std::io::Error> {
        let mut u = sys::vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<sys::vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size: len as u64,
            data: Default::default(),
        };
        // SAFETY: VFIO_IOMMU_UNMAP_DMA reads and updates one vfio_iommu_type1_dma_unmap
        // (no trailing data: flags is 0).
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut u) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iovas
            .release(iova, len as u64);
        Ok(())
    }
}

/// An open VFIO PCI device.
#[derive(Debug)]
pub struct Device {
    addr: String,
    group: u32,
    file: File,
    _group: Arc<File>,
}

impl Device {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn group(&self) -> u32 {
        self.group
    }

    /// The device descriptor (for a hot upgrade's handover).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn region(&self, index: u32) -> Result<sys::vfio_region_info, VfioError> {
        let mut r = sys::vfio_region_info {
            argsz: std::mem::size_of::<sys::vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: VFIO_DEVICE_GET_REGION_INFO writes at most argsz bytes into `r`.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut r) } < 0 {
            return Err(ioctl_err("VFIO_DEVICE_GET_REGION_INFO"));
        }
        Ok(r)
    }

    /// Turns on memory decoding and bus mastering (the device's DMA) in the PCI command
    /// register.
    pub fn enable_bus_master(&self) -> Result<(), VfioError> {
        let cfg = self.region(sys::VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut b = [0u8; 2];
        self.file
            .read_exact_at(&mut b, cfg.offset + PCI_COMMAND)
            .map_err(|source| VfioError::Ioctl {
                what: "reading the PCI command register",
                source,
            })?;
        let cmd = u16::from_le_bytes(b) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.file
            .write_all_at(&cmd.to_le_bytes(), cfg.offset + PCI_COMMAND)
            .map_err(|source| VfioError::Ioctl {
                what: "writing the PCI command register",
                source,
            })
    }

    /// Maps BAR `index` (its first `max_len` bytes at most).
    pub fn map_bar(&self, index: u32, max_len: usize) -> Result<Bar, VfioError> {
        let r = self.region(index)?;
        if r.size == 0 {
            return Err(VfioError::Unusable(format!(
                "{}: BAR{index} is not implemented",
                self.addr
            )));
        }
        if r.flags & sys::VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(VfioError::Unusable(format!(
                "{}: BAR{index} cannot be mapped (VFIO offers no mmap for it)",
                self.addr
            )));
        }
        let len = usize::try_from(r.size).unwrap_or(usize::MAX).min(max_len);
        let offset = libc::off_t::try_from(r.offset).map_err(|_| {
            VfioError::Unusable(format!("{}: BAR{index} offset too large", self.addr))
        })?;
        // SAFETY: a new shared mapping of the device's BAR through its VFIO fd; it does
        // not alias any memory of ours, and Bar unmaps it exactly once on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VfioError::Ioctl {
                what: "mmap of BAR0",
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| VfioError::Unusable("mmap of BAR0 returned address 0".into()))?;
        Ok(Bar { ptr, len })
    }
}

/// A mapped BAR: device registers, accessed only with 32-bit volatile loads and stores.
#[derive(Debug)]
pub struct Bar {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the BAR is device memory; every access is a single aligned volatile 32-bit
// load or store, which the device serialises, so sharing it between threads is safe.
unsafe impl Send for Bar {}
// SAFETY: as for Send.
unsafe impl Sync for Bar {}

impl Bar {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn reg(&self, off: usize) -> *mut u32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "register offset {off:#x} outside the {}-byte BAR",
            self.len
        );
        self.ptr.as_ptr().wrapping_add(off).cast::<u32>()
    }

    pub fn read32(&self, off: usize) -> u32 {
        let r = self.reg(off);
        // SAFETY: `reg` checked that the 4 aligned bytes lie inside the mapping.
        unsafe { std::ptr::read_volatile(r) }
    }

    pub fn write32(&self, off: usize, v: u32) {
        let r = self.reg(off);
        // SAFETY: as in read32.
        unsafe { std::ptr::write_volatile(r, v) }
    }

    /// A 64-bit register as two 32-bit reads, low half first.
    pub fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | (u64::from(self.read32(off + 4)) << 32)
    }

    /// A 64-bit register as two 32-bit writes, low half first.
    pub fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in map_bar.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The VFIO device `fd` is a PCI device (what an NVMe controller must be); `call`
/// names the ioctl in the error.
fn check_pci_device(fd: &OwnedFd, addr: &str, call: &'static str) -> Result<(), VfioError> {
    let mut info = sys::vfio_device_info {
        argsz: std::mem::size_of::<sys::vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: VFIO_DEVICE_GET_INFO writes at most argsz bytes into `info`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), VFIO_DEVICE_GET_INFO, &mut info) } < 0 {
        return Err(ioctl_err(call));
    }
    if info.flags & sys::VFIO_DEVICE_FLAGS_PCI == 0 {
        return Err(VfioError::Unusable(format!("{addr} is not a PCI device")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(
            normalize_pci_address("00:04.0").as_deref(),
            Some("0000:00:04.0")
        );
        assert_eq!(
            normalize_pci_address("0000:AF:00.1").as_deref(),
            Some("0000:af:00.1")
        );
        assert_eq!(normalize_pci_address("0000:00:04"), None);
        assert_eq!(normalize_pci_address("nvme0"), None);
        assert_eq!(
            normalize_pci_address("0000:00:04.8").as_deref(),
            Some("0000:00:04.8")
        );
    }

    #[test]
    fn ioctl_numbers_match_linux() {
        // From linux/vfio.h: _IO(';', 100 + n).
        assert_eq!(VFIO_GET_API_VERSION, 0x3B64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3B6A);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3B71);
    }

    #[test]
    fn iovas_are_aligned_and_reused() {
        let mut a = IovaAllocator::new();
        let x = a.alloc(4096);
        let y = a.alloc(3 << 20);
        assert_eq!(x, IOVA_BASE);
        assert_eq!(y, IOVA_BASE + IOVA_ALIGN, "2 MiB aligned");
        let z = a.alloc(1);
        assert_eq!(z, IOVA_BASE + 3 * IOVA_ALIGN);
        a.release(y, 3 << 20);
        assert_eq!(
            a.alloc(4096),
            IOVA_BASE + 4 * IOVA_ALIGN,
            "a different size is not reused"
        );
        assert_eq!(a.alloc(4 << 20), y, "the same aligned size is");
        assert!(a.free.is_empty());
    }

    #[test]
    fn adopting_a_container_checks_what_came_with_it() {
        let st = ContainerState {
            groups: vec![3, 9],
            next_iova: IOVA_BASE + (8 << 20),
            free_iovas: vec![(IOVA_BASE, 2 << 20)],
        };
        let e = Container::adopt(&st, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("not 3"), "{e}");
        let low = ContainerState {
            next_iova: 4096,
            ..st.clone()
        };
        let fds = (0..3)
            .map(|_| std::fs::File::open("/dev/null").expect("/dev/null").into())
            .collect();
        let e = Container::adopt(&low, fds).unwrap_err();
        assert!(e.to_string().contains("lies below"), "{e}");
        let fds = (0..3)
            .map(|_| std::fs::File::open("/dev/null").expect("/dev/null").into())
            .collect();
        let e = Container::adopt(&st, fds).unwrap_err();
        assert!(e.to_string().contains("is not one"), "{e}");
    }

    #[test]
    fn group_of_a_missing_device_is_a_clear_error() {
        let e = iommu_group_of(Path::new("/nonexistent-sysfs"), "0000:00:04.0").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
