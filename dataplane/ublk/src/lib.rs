//! A block device served to the Linux kernel of this host as `/dev/ublkbN` (ublk:
//! userspace block devices over io_uring, Linux 6.0+, module `ublk_drv`), so that a
//! program on the same node reaches a pool volume without the network: no NVMe/TCP,
//! no socket, one copy between the kernel's request pages and the queue's buffer.
//!
//! [`UblkDevice::start`] adds the device (control commands on /dev/ublk-control),
//! gives it the block device's geometry (logical block size, size, volatile cache,
//! discard and write zeroes), and builds one ublk queue per reactor given: a poller on
//! that reactor with its own io_uring, the queue's mapped request descriptors, a buffer
//! per tag and the block device's I/O channel of that reactor (module `queue`). Each
//! request goes to the channel with the tag's buffer and its completion back to the
//! kernel as the tag's next fetch; nothing on that path locks, allocates or copies.
//! [`UblkDevice::stop`] (or dropping the device) stops and deletes it; a device a dead
//! LightPool process left behind is deleted by [`remove_stale`].
//!
//! Why not `libublk`: its queues run on a thread-local ring driven by its own loop (or
//! its own async executor), which cannot poll a reactor's per-thread block-device
//! channel without a second thread and a hand-off per request; and its bindings crate
//! generates them at build time (bindgen, libclang). The part of ublk needed here is a
//! few commands and four structures (module `sys`).

mod ctrl;
mod queue;
pub mod sys;

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lightpool_bdev::{Bdev, BdevInfo};
use lightpool_reactor::ReactorHandle;

pub use ctrl::{remove_stale, CONTROL_PATH};
pub use queue::{commit_result, map_request, Mapped};

/// Bytes of each tag's buffer: the largest request the kernel sends (128 KiB, the
/// size of the target's and the io_uring devices' pool buffers).
pub const MAX_IO_BYTES: usize = 128 * 1024;
/// The largest discard or write-zeroes request (they carry no data).
pub const MAX_DISCARD_BYTES: u64 = 1 << 30;
/// Default queue depth of each queue.
pub const DEFAULT_QUEUE_DEPTH: u16 = 64;
/// How long a step of start or stop may take (a device node to appear, the queues to
/// be built or to let go).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    #[error("the ublk driver is not loaded ({CONTROL_PATH} is missing): run `modprobe ublk_drv`")]
    NoDriver,
    #[error("ublk {0}: {1}")]
    Sys(&'static str, #[source] std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("ublk: {0}")]
    Timeout(String),
}

/// How a device is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UblkOptions {
    /// Requests each queue holds at once (1..=4096).
    pub queue_depth: u16,
}

impl Default for UblkOptions {
    fn default() -> Self {
        UblkOptions {
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }
}

/// Whether the ublk driver is loaded (its control device exists).
pub fn driver_loaded() -> bool {
    Path::new(CONTROL_PATH).exists()
}

/// The parameters a device of `info` gets (SET_PARAMS).
pub fn params_for(info: &BdevInfo) -> sys::Params {
    let bs = info.block_size;
    let shift = bs.trailing_zeros() as u8;
    let mut attrs = 0;
    if info.volatile_write_cache {
        attrs |= sys::ATTR_VOLATILE_CACHE;
    }
    if info.read_only {
        attrs |= sys::ATTR_READ_ONLY;
    }
    let discard_sectors = (MAX_DISCARD_BYTES >> 9) as u32;
    sys::Params {
        len: (std::mem::offset_of!(sys::Params, discard) + std::mem::size_of::<sys::ParamDiscard>())
            as u32,
        types: sys::PARAM_TYPE_BASIC | sys::PARAM_TYPE_DISCARD,
        basic: sys::ParamBasic {
            attrs,
            logical_bs_shift: shift,
            physical_bs_shift: shift,
            io_opt_shift: 0,
            io_min_shift: shift,
            max_sectors: (MAX_IO_BYTES >> 9) as u32,
            chunk_sectors: 0,
            dev_sectors: info.num_blocks * u64::from(bs / 512),
            virt_boundary_mask: 0,
        },
        discard: sys::ParamDiscard {
            discard_alignment: 0,
            discard_granularity: bs,
            max_discard_sectors: if info.supports_deallocate {
                discard_sectors
            } else {
                0
            },
            max_write_zeroes_sectors: if info.read_only { 0 } else { discard_sectors },
            max_discard_segments: 1,
            reserved0: 0,
        },
    }
}

/// Waits for a device node to appear (devtmpfs makes it as the kernel registers it).
fn wait_for(path: &Path) -> Result<(), UblkError> {
    let until = Instant::now() + STEP_TIMEOUT;
    while !path.exists() {
        if Instant::now() > until {
            return Err(UblkError::Timeout(format!(
                "{} did not appear within {STEP_TIMEOUT:?}",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A block device served as /dev/ublkbN. Stopped and deleted by [`UblkDevice::stop`],
/// or when dropped.
pub struct UblkDevice {
    dev_id: u32,
    bdev_name: String,
    stop: Arc<AtomicBool>,
    reactors: Vec<ReactorHandle>,
    /// Queues built (by number), and each one's word that it let go.
    queues: Vec<u16>,
    done: Receiver<u16>,
    cdev: Option<Arc<OwnedFd>>,
    started: bool,
    finished: bool,
}

impl std::fmt::Debug for UblkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UblkDevice")
            .field("dev_id", &self.dev_id)
            .field("bdev", &self.bdev_name)
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl UblkDevice {
    /// Serves `bdev` as a new /dev/ublkbN with one queue per reactor of `reactors`.
    /// Blocking (call it from a management thread, never a reactor); returns once the
    /// block device exists and its partition table has been read through the queues.
    pub fn start(
        bdev: Arc<dyn Bdev>,
        reactors: &[ReactorHandle],
        opts: &UblkOptions,
    ) -> Result<UblkDevice, UblkError> {
        let info = bdev.info().clone();
        if opts.queue_depth == 0 || opts.queue_depth > sys::MAX_QUEUE_DEPTH {
            return Err(UblkError::Invalid(format!(
                "queue depth {}: give 1 to {}",
                opts.queue_depth,
                sys::MAX_QUEUE_DEPTH
            )));
        }
        if reactors.is_empty() || reactors.len() > usize::from(u16::MAX) {
            return Err(UblkError::Invalid("no reactor to serve the queues".into()));
        }
        if !info.block_size.is_power_of_two() || !(512..=4096).contains(&info.block_size) {
            return Err(UblkError::Invalid(format!(
                "{}: block size {} cannot be served by ublk (512 to 4096, a power of two)",
                info.name, info.block_size
            )));
        }
        let mut ctrl = ctrl::Control::open()?;
        let pid = std::process::id();
        let added = ctrl.add(sys::DevInfo {
            nr_hw_queues: reactors.len() as u16,
            queue_depth: opts.queue_depth,
            max_io_buf_bytes: MAX_IO_BYTES as u32,
            dev_id: u32::MAX,
            flags: sys::F_CMD_IOCTL_ENCODE,
            ublksrv_flags: ctrl::mark(pid),
            ..sys::DevInfo::default()
        })?;
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut dev = UblkDevice {
            dev_id: added.dev_id,
            bdev_name: info.name.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            reactors: reactors.to_vec(),
            queues: Vec::new(),
            done,
            cdev: None,
            started: false,
            finished: false,
        };
        // From here on, a failure drops `dev`, which stops and deletes what was made.
        ctrl.set_params(dev.dev_id, &params_for(&info))?;
        let cpath = PathBuf::from(format!("/dev/ublkc{}", dev.dev_id));
        wait_for(&cpath)?;
        let cdev: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&cpath)
            .map_err(|e| UblkError::Sys("opening the device's char node", e))?
            .into();
        let cdev = Arc::new(cdev);
        dev.cdev = Some(cdev.clone());

        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<u16, UblkError>>();
        for (i, r) in reactors.iter().enumerate() {
            let q_id = i as u16;
            let spec = queue::QueueSpec {
                dev_id: dev.dev_id,
                q_id,
                depth: opts.queue_depth,
                max_io: MAX_IO_BYTES,
                cdev: cdev.clone(),
                bdev: bdev.clone(),
                stop: dev.stop.clone(),
                done: done_tx.clone(),
            };
            let tx = ready_tx.clone();
            r.send(move |ctx| match queue::Queue::new(spec, ctx) {
                Ok(q) => {
                    ctx.add_poller(Box::new(q));
                    let _ = tx.send(Ok(q_id));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| UblkError::Invalid(format!("queue {q_id}: {e}")))?;
        }
        drop(ready_tx);
        drop(done_tx);
        let mut first_err = None;
        for _ in reactors {
            match ready.recv_timeout(STEP_TIMEOUT) {
                Ok(Ok(q)) => dev.queues.push(q),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(UblkError::Timeout(
                        "a reactor did not build its queue in time".into(),
                    ));
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        dev.started = true;
        ctrl.start(dev.dev_id, pid)?;
        wait_for(&dev.block_path())?;
        tracing::info!(
            dev = dev.dev_id,
            bdev = info.name,
            queues = reactors.len(),
            depth = opts.queue_depth,
            "{} serves {} through ublk",
            dev.block_path().display(),
            info.name
        );
        Ok(dev)
    }

    /// The device number N of /dev/ublkbN.
    pub fn dev_id(&self) -> u32 {
        self.dev_id
    }

    /// /dev/ublkbN.
    pub fn block_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.dev_id))
    }

    /// Stops the device (requests already sent are served first), lets the queues go
    /// and deletes it. Blocking.
    pub fn stop(mut self) -> Result<(), UblkError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), UblkError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut ctrl = ctrl::Control::open()?;
        if self.started {
            // The queues serve on while the kernel drains the device.
            if let Err(e) = ctrl.stop(self.dev_id) {
                tracing::warn!(dev = self.dev_id, error = %e, "ublk STOP_DEV failed; deleting the device anyway");
            }
        }
        self.stop.store(true, Ordering::Release);
        for r in &self.reactors {
            let _ = r.send(|_| {});
        }
        let until = Instant::now() + STEP_TIMEOUT;
        let mut left = self.queues.clone();
        while !left.is_empty() {
            let wait = until.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(wait) {
                Ok(q) => left.retain(|&x| x != q),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // DEL_DEV would wait for the queues for ever: leave the device to
                    // `remove_stale` of the next start.
                    return Err(UblkError::Timeout(format!(
                        "queues {left:?} of /dev/ublkb{} did not let go within {STEP_TIMEOUT:?}; the device is left",
                        self.dev_id
                    )));
                }
            }
        }
        self.cdev = None;
        ctrl.delete(self.dev_id)?;
        tracing::info!(
            dev = self.dev_id,
            bdev = self.bdev_name,
            "/dev/ublkb{} stopped and deleted",
            self.dev_id
        );
        Ok(())
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(dev = self.dev_id, error = %e, "ublk device not cleaned up");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(bs: u32, blocks: u64) -> BdevInfo {
        BdevInfo {
            name: "v".into(),
            block_size: bs,
            num_blocks: blocks,
            read_only: false,
            volatile_write_cache: true,
            supports_deallocate: true,
        }
    }

    #[test]
    fn parameters_follow_the_device() {
        let p = params_for(&info(4096, 1000));
        assert_eq!(p.len, 60);
        assert_eq!(p.types, sys::PARAM_TYPE_BASIC | sys::PARAM_TYPE_DISCARD);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.dev_sectors, 8000);
        assert_eq!(p.basic.max_sectors, 256);
        assert_eq!(p.basic.attrs, sys::ATTR_VOLATILE_CACHE);
        assert_eq!(p.discard.discard_granularity, 4096);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert!(p.discard.max_discard_sectors > 0);

        let mut i = info(512, 10);
        i.supports_deallocate = false;
        i.volatile_write_cache = false;
        i.read_only = true;
        let p = params_for(&i);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.dev_sectors, 10);
        assert_eq!(p.basic.attrs, sys::ATTR_READ_ONLY);
        assert_eq!(p.discard.max_discard_sectors, 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, 0);
    }

    struct Geometry(BdevInfo);

    impl Bdev for Geometry {
        fn info(&self) -> &BdevInfo {
            &self.0
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn open_channel(
            &self,
        ) -> Result<Box<dyn lightpool_bdev::IoChannel>, lightpool_bdev::BdevError> {
            Err(lightpool_bdev::BdevError::Invalid("geometry only".into()))
        }
    }

    #[test]
    fn bad_input_is_refused_before_the_kernel_is_asked() {
        let reactor =
            lightpool_reactor::spawn(lightpool_reactor::ReactorConfig::default()).unwrap();
        let r = std::slice::from_ref(&reactor);
        let bdev: Arc<dyn Bdev> = Arc::new(Geometry(info(4096, 16)));
        let e = UblkDevice::start(bdev.clone(), &[], &UblkOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no reactor"), "{e}");
        let e = UblkDevice::start(bdev, r, &UblkOptions { queue_depth: 0 }).unwrap_err();
        assert!(e.to_string().contains("queue depth 0"), "{e}");
        let odd: Arc<dyn Bdev> = Arc::new(Geometry(info(520, 16)));
        let e = UblkDevice::start(odd, r, &UblkOptions::default()).unwrap_err();
        assert!(e.to_string().contains("block size 520"), "{e}");
        assert!(UblkError::NoDriver
            .to_string()
            .contains("modprobe ublk_drv"));
        reactor.stop();
        reactor.join().unwrap();
    }
}
