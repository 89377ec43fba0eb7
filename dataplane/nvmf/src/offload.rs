//! What a transport reports of the offloadable per-PDU work and of its packet
//! engines, for the metrics endpoint ([`crate::Transport::offload`]): read on the
//! metrics thread from counters the reactors publish, never by asking a reactor.

/// One (work, engine, reactor) count: `work` is "digest", "placement" or "steering";
/// `engine` what did it ("software", "recv", "stack_ring", "staged_copy", "kernel",
/// "xdp", "dpdk", ...); `operations` digests computed or checked, reads and copies
/// that placed payload, or flows steered; `bytes` what they covered (for steering,
/// the frames' bytes where the engine knows them, else 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadRow {
    pub work: &'static str,
    pub engine: &'static str,
    pub reactor: usize,
    pub operations: u64,
    pub bytes: u64,
}

/// One reactor's queue of a kernel-bypass packet engine: what it moved and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketEngineStats {
    /// "af_xdp" or "dpdk".
    pub engine: &'static str,
    pub interface: String,
    pub reactor: usize,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Drops and refusals by reason (e.g. "rx_dropped", "rx_ring_full", "tx_full").
    pub drops: Vec<(&'static str, u64)>,
}

/// An XDP steering program's counters on one interface (all CPUs summed): frames
/// redirected to an AF_XDP socket, passed to the kernel, and for a steered port on a
/// queue with no socket (passed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SteeringProgramStats {
    pub interface: String,
    pub steered: u64,
    pub passed: u64,
    pub no_socket: u64,
}

/// Everything a transport reports of offload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffloadReport {
    pub work: Vec<OffloadRow>,
    pub engines: Vec<PacketEngineStats>,
    pub programs: Vec<SteeringProgramStats>,
}

impl OffloadReport {
    /// Add `o`'s rows to these.
    pub fn extend(&mut self, o: OffloadReport) {
        self.work.extend(o.work);
        self.engines.extend(o.engines);
        self.programs.extend(o.programs);
    }
}
