//! The control side of ublk: commands on /dev/ublk-control through an io_uring of
//! 128-byte SQEs (a control command's payload does not fit a plain SQE). Blocking;
//! used from the management thread, never from a reactor.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::sys::{self, CtrlCmd, DevInfo, Params};
use crate::UblkError;

pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// What LightPool writes in the upper half of a device's `ublksrv_flags` (the kernel
/// keeps it for the server), with its process id in the lower half: a device whose
/// mark is this and whose process is gone was left by a LightPool that died.
pub const MARK: u64 = 0x4c50_0b1c << 32;

/// The mark of a device made by process `pid`.
pub fn mark(pid: u32) -> u64 {
    MARK | u64::from(pid)
}

/// The process that made a device, if LightPool made it.
pub fn marked_by(ublksrv_flags: u64) -> Option<u32> {
    (ublksrv_flags & 0xffff_ffff_0000_0000 == MARK).then_some(ublksrv_flags as u32)
}

/// /dev/ublk-control and a ring to send it commands.
pub struct Control {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fd: OwnedFd,
}

impl Control {
    /// Opens the control device; [`UblkError::NoDriver`] when ublk_drv is not loaded.
    pub fn open() -> Result<Control, UblkError> {
        if !Path::new(CONTROL_PATH).exists() {
            return Err(UblkError::NoDriver);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|e| UblkError::Sys("opening /dev/ublk-control", e))?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(4)
            .map_err(|e| UblkError::Sys("creating the control ring", e))?;
        Ok(Control { ring, fd: f.into() })
    }

    /// Sends one command and waits for its answer (the kernel's result, >= 0).
    fn cmd(&mut self, op: u32, c: &CtrlCmd, what: &'static str) -> Result<i32, UblkError> {
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), op)
            .cmd(sys::cmd_bytes(c))
            .build()
            .user_data(1);
        // SAFETY: the buffer a command points at (`c.addr`, `c.len` bytes) is borrowed
        // by the caller for the whole of this call, which waits for the command's
        // completion before it returns.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| UblkError::Sys(what, std::io::Error::other("control ring full")))?;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(UblkError::Sys(what, e)),
            }
        }
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| UblkError::Sys(what, std::io::Error::other("no completion")))?;
        let res = cqe.result();
        if res < 0 {
            return Err(UblkError::Sys(
                what,
                std::io::Error::from_raw_os_error(-res),
            ));
        }
        Ok(res)
    }

    fn dev_cmd(dev_id: u32) -> CtrlCmd {
        CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            ..CtrlCmd::default()
        }
    }

    /// ADD_DEV: a new device (`info.dev_id` u32::MAX: the kernel picks the number);
    /// returns what the kernel made of it.
    pub fn add(&mut self, mut info: DevInfo) -> Result<DevInfo, UblkError> {
        let mut c = Self::dev_cmd(info.dev_id);
        c.addr = &mut info as *mut DevInfo as u64;
        c.len = std::mem::size_of::<DevInfo>() as u16;
        self.cmd(sys::U_CMD_ADD_DEV, &c, "ADD_DEV")?;
        Ok(info)
    }

    /// GET_DEV_INFO of device `dev_id`.
    pub fn info(&mut self, dev_id: u32) -> Result<DevInfo, UblkError> {
        let mut info = DevInfo::default();
        let mut c = Self::dev_cmd(dev_id);
        c.addr = &mut info as *mut DevInfo as u64;
        c.len = std::mem::size_of::<DevInfo>() as u16;
        self.cmd(sys::U_CMD_GET_DEV_INFO, &c, "GET_DEV_INFO")?;
        Ok(info)
    }

    pub fn set_params(&mut self, dev_id: u32, p: &Params) -> Result<(), UblkError> {
        let mut c = Self::dev_cmd(dev_id);
        c.addr = p as *const Params as u64;
        c.len = p.len as u16;
        self.cmd(sys::U_CMD_SET_PARAMS, &c, "SET_PARAMS").map(drop)
    }

    /// START_DEV: returns once every queue has fetched and the disk is added (its
    /// partition table read through the queues).
    pub fn start(&mut self, dev_id: u32, pid: u32) -> Result<(), UblkError> {
        let mut c = Self::dev_cmd(dev_id);
        c.data[0] = u64::from(pid);
        self.cmd(sys::U_CMD_START_DEV, &c, "START_DEV").map(drop)
    }

    /// STOP_DEV: the block device goes (outstanding requests are served first).
    pub fn stop(&mut self, dev_id: u32) -> Result<(), UblkError> {
        self.cmd(sys::U_CMD_STOP_DEV, &Self::dev_cmd(dev_id), "STOP_DEV")
            .map(drop)
    }

    /// DEL_DEV: the device number is freed; waits for /dev/ublkcN to be closed.
    pub fn delete(&mut self, dev_id: u32) -> Result<(), UblkError> {
        self.cmd(sys::U_CMD_DEL_DEV, &Self::dev_cmd(dev_id), "DEL_DEV")
            .map(drop)
    }
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The numbers of the ublk devices that exist (from /sys/class/ublk-char).
fn device_ids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/sys/class/ublk-char") else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("ublkc"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Deletes the devices a LightPool process that is gone left behind (it crashed, or was
/// killed, before it could stop them): their /dev/ublkbN would otherwise stay, failing
/// every I/O. Returns the numbers deleted. Nothing to do without the driver.
pub fn remove_stale() -> Result<Vec<u32>, UblkError> {
    let mut ctrl = match Control::open() {
        Ok(c) => c,
        Err(UblkError::NoDriver) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut gone = Vec::new();
    for id in device_ids() {
        let Ok(info) = ctrl.info(id) else { continue };
        let Some(pid) = marked_by(info.ublksrv_flags) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        tracing::warn!(
            dev_id = id,
            pid,
            "ublk device /dev/ublkb{id} was left by LightPool process {pid}, which is gone: deleting it"
        );
        // A device that was never started, or that the kernel stopped already, refuses
        // STOP_DEV; DEL_DEV is what frees it.
        let _ = ctrl.stop(id);
        ctrl.delete(id)?;
        gone.push(id);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_name_their_process() {
        assert_eq!(marked_by(mark(4242)), Some(4242));
        assert_eq!(marked_by(0), None);
        // Another server's flags are not ours, whatever their low half says.
        assert_eq!(marked_by(0x1234_5678_0000_0001), None);
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
