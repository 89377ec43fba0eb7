//! One mapping of DMA memory: a hugetlbfs file or anonymous memory, optionally entered
//! in an IOMMU domain.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use crate::hugetlbfs::{find_hugetlbfs, parse_mounts};
use crate::{DmaError, DmaMapper};

/// Where to take DMA memory from.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum HugePages {
    /// A hugetlbfs mount with free pages if there is one, else ordinary memory.
    #[default]
    Auto,
    /// Ordinary memory (tests, or hosts without hugepages by choice).
    Off,
    /// This hugetlbfs mount; failing to get pages there is an error.
    Mount(PathBuf),
}

/// What a [`DmaMemory`] is made of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backing {
    /// Hugepages of `page_size` bytes from the hugetlbfs mounted at `mount` (empty: an
    /// `MFD_HUGETLB` memfd, which needs no mount).
    Hugepages { mount: PathBuf, page_size: usize },
    /// Ordinary anonymous memory (4 KiB pages), with the reason hugepages were not used.
    Ordinary { reason: String },
}

/// The first fallback to ordinary memory is logged as a warning, later ones quietly.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);
/// Makes hugetlbfs file names unique within the process.
static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// One contiguous mapping of DMA memory. The memory stays mapped (and registered with
/// the mapper, when there is one) until the value is dropped.
pub struct DmaMemory {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
    iova: Option<u64>,
    mapper: Option<Arc<dyn DmaMapper>>,
    /// Whether dropping the memory removes its IOMMU mapping: false for memory adopted
    /// from a predecessor process until [`DmaMemory::take_ownership`], because until
    /// then the predecessor may still be using the mapping.
    unmap_on_drop: AtomicBool,
    /// Owns the mapping that `ptr` points into; never accessed through references.
    _map: MmapMut,
    /// The backing file (unlinked hugetlbfs file, or a memfd for ordinary memory that is
    /// registered with a mapper), kept open so its pages stay ours and so a successor
    /// process can map the same pages (hot upgrade). `None` for private anonymous memory.
    file: Option<File>,
}

// SAFETY: DmaMemory owns its mapping like a Box<[u8]>; the raw pointer is only handed
// out, never dereferenced here, and the mapper is Send + Sync.
unsafe impl Send for DmaMemory {}
// SAFETY: as for Send: no method reads or writes the memory through `&self`.
unsafe impl Sync for DmaMemory {}

impl std::fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaMemory")
            .field("len", &self.len)
            .field("backing", &self.backing)
            .field("iova", &self.iova)
            .finish()
    }
}

impl DmaMemory {
    /// Maps at least `len` bytes (rounded up to the page size of the backing), zeroed,
    /// and registers them with `mapper` when one is given.
    pub fn new(
        len: usize,
        hugepages: &HugePages,
        mapper: Option<Arc<dyn DmaMapper>>,
    ) -> Result<DmaMemory, DmaError> {
        if len == 0 {
            return Err(DmaError::Invalid(
                "a DMA memory region of 0 bytes was asked for".into(),
            ));
        }
        // Memory a device reaches is made shareable (a memfd), so that a successor
        // process can take it over with its IOMMU mapping during a hot upgrade.
        let shareable = mapper.is_some();
        let (map, file, backing) = match hugepages {
            HugePages::Off => anonymous(len, "hugepages are turned off".into(), shareable)?,
            HugePages::Mount(dir) => {
                let page_size = mount_page_size(dir);
                let (m, f) =
                    from_hugetlbfs(dir, page_size, len).map_err(|source| DmaError::Map {
                        len,
                        source: std::io::Error::new(
                            source.kind(),
                            format!("hugetlbfs {}: {source}", dir.display()),
                        ),
                    })?;
                let b = Backing::Hugepages {
                    mount: dir.clone(),
                    page_size,
                };
                (m, Some(f), b)
            }
            HugePages::Auto => match find_hugetlbfs(Path::new("/")) {
                Ok(m) => match from_hugetlbfs(&m.path, m.page_size, len) {
                    Ok((map, f)) => (
                        map,
                        Some(f),
                        Backing::Hugepages {
                            mount: m.path,
                            page_size: m.page_size,
                        },
                    ),
                    Err(e) => anonymous(
                        len,
                        format!(
                            "{} hugepages of {} KiB could not be had from {}: {e}",
                            len.div_ceil(m.page_size),
                            m.page_size >> 10,
                            m.path.display()
                        ),
                        shareable,
                    )?,
                },
                // No mount with free pages: a huge-page memfd needs none.
                Err(reason) => match from_hugetlb_memfd(len) {
                    Ok((map, f)) => (
                        map,
                        Some(f),
                        Backing::Hugepages {
                            mount: PathBuf::new(),
                            page_size: HUGE_MEMFD_PAGE,
                        },
                    ),
                    Err(e) => anonymous(
                        len,
                        format!("{reason}, and no huge-page memfd could be had ({e})"),
                        shareable,
                    )?,
                },
            },
        };
        let mut map = map;
        let len = map.len();
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or_else(|| DmaError::Map {
            len,
            source: std::io::Error::other("the mapping starts at address 0"),
        })?;
        let iova = match &mapper {
            Some(m) => Some(
                m.map(ptr.as_ptr() as usize, len)
                    .map_err(|source| DmaError::Register { len, source })?,
            ),
            None => None,
        };
        Ok(DmaMemory {
            ptr,
            len,
            backing,
            iova,
            mapper,
            unmap_on_drop: AtomicBool::new(true),
            _map: map,
            file,
        })
    }

    /// Hot upgrade, new process: maps the memory a predecessor exported (`file()`, its
    /// length, IOVA and backing), the same pages at the same IOVA, without registering
    /// them again: the predecessor's IOMMU mapping lives in the container both processes
    /// share. The mapping is left in place when this value is dropped until
    /// [`DmaMemory::take_ownership`] is called.
    pub fn adopt(
        fd: OwnedFd,
        len: usize,
        iova: Option<u64>,
        backing: Backing,
        mapper: Option<Arc<dyn DmaMapper>>,
    ) -> Result<DmaMemory, DmaError> {
        let file = File::from(fd);
        let size = file
            .metadata()
            .map_err(|source| DmaError::Map { len, source })?
            .len();
        if len == 0 || !len.is_multiple_of(4096) || size < len as u64 {
            return Err(DmaError::Invalid(format!(
                "the DMA memory handed over is {size} bytes, not the {len} bytes its state says"
            )));
        }
        if iova.is_some() && mapper.is_none() {
            return Err(DmaError::Invalid(
                "DMA memory with an IOVA was handed over without its IOMMU container".into(),
            ));
        }
        // SAFETY: a shared mapping of a file whose pages the predecessor process (and the
        // IOMMU) use too; nothing but devices and this process write them after the
        // handover, and the length was checked against the file's size above.
        let mut map = unsafe { MmapOptions::new().len(len).map_mut(&file) }
            .map_err(|source| DmaError::Map { len, source })?;
        let ptr = NonNull::new(map.as_mut_ptr()).ok_or_else(|| DmaError::Map {
            len,
            source: std::io::Error::other("the mapping starts at address 0"),
        })?;
        Ok(DmaMemory {
            ptr,
            len,
            backing,
            iova,
            mapper,
            unmap_on_drop: AtomicBool::new(false),
            _map: map,
            file: Some(file),
        })
    }

    /// The predecessor has let go (hot upgrade): dropping this memory now removes its
    /// IOMMU mapping, as for memory made here.
    pub fn take_ownership(&self) {
        self.unmap_on_drop.store(true, Ordering::Relaxed);
    }

    /// The file backing the memory, for a successor process to map (hot upgrade);
    /// `None` for private anonymous memory.
    pub fn file(&self) -> Option<BorrowedFd<'_>> {
        self.file.as_ref().map(|f| f.as_fd())
    }

    /// The IOVA of the first byte, when registered with a mapper.
    pub fn iova(&self) -> Option<u64> {
        self.iova
    }

    /// Start of the memory; valid for `len()` bytes while `self` lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// IOVA of byte `offset`, when the memory is registered with a mapper.
    pub fn iova_at(&self, offset: usize) -> Option<u64> {
        if offset >= self.len {
            return None;
        }
        self.iova.map(|i| i + offset as u64)
    }

    /// The offset of `ptr..ptr+len` in this memory, when the whole range lies inside it.
    pub fn offset_of(&self, ptr: *const u8, len: usize) -> Option<usize> {
        let start = self.ptr.as_ptr() as usize;
        let p = ptr as usize;
        let off = p.checked_sub(start)?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }
}

impl Drop for DmaMemory {
    fn drop(&mut self) {
        if !self.unmap_on_drop.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(m), Some(iova)) = (&self.mapper, self.iova) {
            if let Err(e) = m.unmap(iova, self.len) {
                tracing::warn!(iova, len = self.len, error = %e, "could not unregister DMA memory");
            }
        }
    }
}

fn mount_page_size(dir: &Path) -> usize {
    std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|t| {
            parse_mounts(&t)
                .into_iter()
                .find(|m| m.path == dir)
                .map(|m| m.page_size)
        })
        .unwrap_or(2 << 20)
}

fn from_hugetlbfs(dir: &Path, page_size: usize, len: usize) -> std::io::Result<(MmapMut, File)> {
    let len = len.div_ceil(page_size) * page_size;
    let name = dir.join(format!(
        "lightpool-dma.{}.{}",
        std::process::id(),
        FILE_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&name)?;
    let mapped = file.set_len(len as u64).and_then(|()| {
        // SAFETY: the file was created just now with O_EXCL and is unlinked below, so no
        // other process or mapping can change it under us; hugetlbfs reserves every page
        // at mmap time (ENOMEM here, never SIGBUS later), and populate faults them in.
        unsafe { MmapOptions::new().len(len).populate().map_mut(&file) }
    });
    let _ = std::fs::remove_file(&name);
    let mut map = mapped?;
    // Touch every page: populate is advisory on some kernels, and a missing page must
    // fail here, not in the middle of a device transfer.
    for off in (0..len).step_by(page_size) {
        map[off] = 0;
    }
    Ok((map, file))
}

/// Page size of `MFD_HUGETLB` memory: the system's default huge page.
const HUGE_MEMFD_PAGE: usize = 2 << 20;

/// Huge pages from a memfd (`MFD_HUGETLB`): no hugetlbfs mount needed; populated and
/// touched as [`from_hugetlbfs`] does.
fn from_hugetlb_memfd(len: usize) -> std::io::Result<(MmapMut, File)> {
    let len = len.div_ceil(HUGE_MEMFD_PAGE) * HUGE_MEMFD_PAGE;
    let name = std::ffi::CString::new("lightpool-dma").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_HUGETLB) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor nobody else owns.
    let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
    file.set_len(len as u64)?;
    // SAFETY: a shared mapping of a memfd created just now, of exactly its size; huge
    // pages are reserved at mmap time (ENOMEM here, never SIGBUS later).
    let mut map = unsafe { MmapOptions::new().len(len).populate().map_mut(&file) }?;
    for off in (0..len).step_by(HUGE_MEMFD_PAGE) {
        map[off] = 0;
    }
    Ok((map, file))
}

type Mapped = (MmapMut, Option<File>, Backing);

/// Ordinary memory: private anonymous, or a memfd when `shareable` (memory a device
/// reaches, which a successor process must be able to map during a hot upgrade).
fn anonymous(len: usize, reason: String, shareable: bool) -> Result<Mapped, DmaError> {
    let page = 4096;
    let len = len.div_ceil(page) * page;
    // Memory no device reaches (buffers for sockets and io_uring) loses little on
    // ordinary pages: only device memory is worth a warning.
    if shareable && !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "DMA memory: using ordinary memory, not hugepages ({reason}); fine for the socket \
             and io_uring paths, slower for VFIO devices (run hugepage-setup to reserve pages)"
        );
    } else {
        tracing::debug!(%reason, "DMA memory: ordinary memory");
    }
    if shareable {
        let name = std::ffi::CString::new("lightpool-dma").expect("no NUL");
        // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            let source = std::io::Error::last_os_error();
            return Err(DmaError::Map { len, source });
        }
        // SAFETY: raw is a new descriptor nobody else owns.
        let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
        file.set_len(len as u64)
            .map_err(|source| DmaError::Map { len, source })?;
        // SAFETY: a shared mapping of a memfd created just now, of exactly its size; only
        // this process (and, after a handover, its successor) maps it.
        let map = unsafe { MmapOptions::new().len(len).populate().map_mut(&file) }
            .map_err(|source| DmaError::Map { len, source })?;
        return Ok((map, Some(file), Backing::Ordinary { reason }));
    }
    // Populated: the I/O path must not meet a page fault in a buffer's first use.
    let map = MmapOptions::new()
        .len(len)
        .populate()
        .map_anon()
        .map_err(|source| DmaError::Map { len, source })?;
    Ok((map, None, Backing::Ordinary { reason }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it was asked and hands out IOVAs from 1 GiB up.
    #[derive(Default)]
    pub(crate) struct FakeMapper {
        pub maps: Mutex<Vec<(usize, usize, u64)>>,
        pub unmaps: Mutex<Vec<(u64, usize)>>,
    }

    impl DmaMapper for FakeMapper {
        fn map(&self, vaddr: usize, len: usize) -> Result<u64, std::io::Error> {
            let mut m = self.maps.lock().expect("lock");
            let iova = (1u64 << 30) + m.iter().map(|x| x.1 as u64).sum::<u64>();
            m.push((vaddr, len, iova));
            Ok(iova)
        }
        fn unmap(&self, iova: u64, len: usize) -> Result<(), std::io::Error> {
            self.unmaps.lock().expect("lock").push((iova, len));
            Ok(())
        }
    }

    #[test]
    fn ordinary_memory_when_hugepages_are_off() {
        let m = DmaMemory::new(5000, &HugePages::Off, None).expect("anonymous memory");
        assert_eq!(m.len(), 8192);
        assert!(matches!(m.backing(), Backing::Ordinary { .. }));
        assert_eq!(m.as_ptr() as usize % 4096, 0);
        assert_eq!(m.iova_at(0), None);
        assert_eq!(m.offset_of(m.as_ptr().wrapping_add(100), 200), Some(100));
        assert_eq!(m.offset_of(m.as_ptr().wrapping_add(8000), 200), None);
    }

    #[test]
    fn registered_with_the_mapper_and_unregistered_on_drop() {
        let mapper = Arc::new(FakeMapper::default());
        let m = DmaMemory::new(4096, &HugePages::Off, Some(mapper.clone())).expect("memory");
        let (vaddr, len, iova) = mapper.maps.lock().expect("lock")[0];
        assert_eq!((vaddr, len), (m.as_ptr() as usize, 4096));
        assert_eq!(m.iova_at(16), Some(iova + 16));
        assert_eq!(m.iova_at(4096), None);
        drop(m);
        assert_eq!(*mapper.unmaps.lock().expect("lock"), vec![(iova, 4096)]);
    }

    /// Hot upgrade: registered memory is a shareable file; a "successor" maps the same
    /// pages at the same IOVA without registering them again, and leaves the mapping in
    /// place when dropped before it takes ownership.
    #[test]
    fn adopted_memory_is_the_same_pages_at_the_same_iova() {
        let mapper = Arc::new(FakeMapper::default());
        let m = DmaMemory::new(8192, &HugePages::Off, Some(mapper.clone())).expect("memory");
        // SAFETY: 8192 bytes of our own mapping.
        unsafe { m.as_ptr().add(5000).write(0x5A) };
        let fd = m.file().expect("a file").try_clone_to_owned().expect("dup");
        let mapper_dyn: Arc<dyn DmaMapper> = mapper.clone();
        let a = DmaMemory::adopt(fd, m.len(), m.iova(), m.backing().clone(), Some(mapper_dyn))
            .expect("adopt");
        assert_eq!(
            mapper.maps.lock().expect("lock").len(),
            1,
            "no second mapping"
        );
        assert_eq!(a.iova_at(0), m.iova_at(0));
        assert_ne!(a.as_ptr(), m.as_ptr());
        // SAFETY: inside both mappings of the same file.
        unsafe {
            assert_eq!(a.as_ptr().add(5000).read(), 0x5A);
            a.as_ptr().add(7).write(9);
            assert_eq!(m.as_ptr().add(7).read(), 9, "the same pages");
        }
        drop(a);
        assert!(mapper.unmaps.lock().expect("lock").is_empty());
        let fd = m.file().expect("a file").try_clone_to_owned().expect("dup");
        let mapper_dyn: Arc<dyn DmaMapper> = mapper.clone();
        let a = DmaMemory::adopt(fd, 8192, m.iova(), m.backing().clone(), Some(mapper_dyn))
            .expect("adopt");
        a.take_ownership();
        drop(a);
        assert_eq!(mapper.unmaps.lock().expect("lock").len(), 1);
        let fd = m.file().expect("a file").try_clone_to_owned().expect("dup");
        let e = DmaMemory::adopt(fd, 1 << 20, m.iova(), m.backing().clone(), None).unwrap_err();
        assert!(e.to_string().contains("not the 1048576 bytes"), "{e}");
        drop(m);
    }

    #[test]
    fn a_named_mount_that_is_not_hugetlbfs_is_an_error() {
        let dir = std::env::temp_dir().join(format!("lp-dma-nothuge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A tmpfs/ext4 directory accepts the file but is not hugetlbfs: the mapping
        // works, so this only checks that a missing directory is refused.
        let missing = dir.join("missing");
        let e = DmaMemory::new(4096, &HugePages::Mount(missing), None).unwrap_err();
        assert!(e.to_string().contains("hugetlbfs"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn auto_falls_back_without_hugetlbfs_mounts() {
        // The build machines mount no hugetlbfs; where one is mounted with free pages
        // this takes hugepages instead, which is as good.
        let m = DmaMemory::new(4096, &HugePages::Auto, None).expect("memory");
        match m.backing() {
            Backing::Ordinary { reason } => assert!(!reason.is_empty()),
            Backing::Hugepages { page_size, .. } => assert!(*page_size >= 2 << 20),
        }
    }
}
