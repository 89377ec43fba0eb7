//! Loading the XDP program, telling it the port and the queues' sockets, reading its
//! counters.

use std::io;
use std::os::fd::RawFd;

use aya::maps::{HashMap, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::Ebpf;

static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.o"));

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the driver (xdpdrv); veth and most physical NICs' drivers have it.
    Native,
    /// In the kernel's receive path after the socket buffer is made (xdpgeneric):
    /// any interface, slower.
    Generic,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Mode::Native),
            "generic" => Ok(Mode::Generic),
            _ => Err(format!(
                "xdp_mode {s:?}: expected \"native\" or \"generic\""
            )),
        }
    }
}

/// The program's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteeringCounters {
    /// Frames redirected to an AF_XDP socket.
    pub steered: u64,
    /// Frames passed to the kernel (not for a steered port).
    pub passed: u64,
    /// Frames for a steered port on a queue with no socket (passed to the kernel).
    pub no_socket: u64,
}

/// The XDP program attached to one interface. Dropping it detaches the program.
pub struct Steering {
    ebpf: Ebpf,
    interface: String,
    mode: Mode,
}

fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

impl Steering {
    /// Load the program and attach it to `interface` in `mode`.
    pub fn attach(interface: &str, mode: Mode) -> io::Result<Self> {
        let mut ebpf = Ebpf::load(PROGRAM).map_err(|e| err("loading the XDP program", e))?;
        let prog: &mut Xdp = ebpf
            .program_mut("lightpool_steer")
            .ok_or_else(|| err("XDP program", "lightpool_steer missing"))?
            .try_into()
            .map_err(|e| err("XDP program", e))?;
        prog.load()
            .map_err(|e| err("verifying the XDP program", e))?;
        let flags = match mode {
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        };
        prog.attach(interface, flags)
            .map_err(|e| err(&format!("attaching XDP ({mode:?}) to {interface}"), e))?;
        Ok(Steering {
            ebpf,
            interface: interface.to_string(),
            mode,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Steer TCP segments to `port` to the queues' sockets.
    pub fn steer_port(&mut self, port: u16) -> io::Result<()> {
        let map = self
            .ebpf
            .map_mut("ports")
            .ok_or_else(|| err("map", "ports missing"))?;
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(map).map_err(|e| err("ports", e))?;
        ports.insert(port, 1, 0).map_err(|e| err("ports", e))
    }

    /// Send queue `queue`'s steered frames to the AF_XDP socket `fd`.
    pub fn register(&mut self, queue: u32, fd: RawFd) -> io::Result<()> {
        let map = self
            .ebpf
            .map_mut("xsks")
            .ok_or_else(|| err("map", "xsks missing"))?;
        let mut xsks = XskMap::try_from(map).map_err(|e| err("xsks", e))?;
        xsks.set(queue, fd, 0)
            .map_err(|e| err(&format!("xsks[{queue}]"), e))
    }

    pub fn counters(&self) -> io::Result<SteeringCounters> {
        let map = self
            .ebpf
            .map("counters")
            .ok_or_else(|| err("map", "counters missing"))?;
        let c: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(|e| err("counters", e))?;
        let sum = |i: u32| -> io::Result<u64> {
            Ok(c.get(&i, 0).map_err(|e| err("counters", e))?.iter().sum())
        };
        Ok(SteeringCounters {
            steered: sum(0)?,
            passed: sum(1)?,
            no_socket: sum(2)?,
        })
    }
}
