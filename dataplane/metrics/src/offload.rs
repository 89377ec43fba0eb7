//! The offload families: who did the per-PDU work a SmartNIC could take (digests,
//! placement, steering) and what the packet engines moved, as the transports report
//! them through an [`OffloadSource`] (counters their reactors publish; a scrape never
//! waits on a reactor).

use lightpool_nvmf::OffloadReport;
use prometheus_client::encoding::DescriptorEncoder;

use crate::{counter, Labels};

/// Where offload counts come from: the daemon registers one over its transports
/// (called at each scrape, on the metrics thread).
pub trait OffloadSource: Send + Sync {
    fn offload(&self) -> OffloadReport;
}

/// Encode `r` as the offload and packet-engine families.
pub(crate) fn encode(
    enc: &mut DescriptorEncoder,
    r: &OffloadReport,
) -> Result<(), std::fmt::Error> {
    let work_labels = |w: &lightpool_nvmf::OffloadRow| -> Labels {
        vec![
            ("work", w.work.to_string()),
            ("engine", w.engine.to_string()),
            ("reactor", w.reactor.to_string()),
        ]
    };
    let ops: Vec<(Labels, u64)> = r
        .work
        .iter()
        .map(|w| (work_labels(w), w.operations))
        .collect();
    let bytes: Vec<(Labels, u64)> = r.work.iter().map(|w| (work_labels(w), w.bytes)).collect();
    counter(
        enc,
        "lightpool_offload_operations",
        "Offloadable per-PDU work by the engine that did it, per reactor: digests computed or checked (work=digest), reads and copies that put received payload into request buffers (work=placement), flows put on the reactor (work=steering).",
        &ops,
    )?;
    counter(
        enc,
        "lightpool_offload_bytes",
        "Bytes of that work: covered by digests, placed into request buffers, and received on a packet engine's queue its steering fed (0 for kernel sockets: the kernel has those).",
        &bytes,
    )?;
    let engine_labels = |e: &lightpool_nvmf::PacketEngineStats| -> Labels {
        vec![
            ("engine", e.engine.to_string()),
            ("interface", e.interface.clone()),
            ("reactor", e.reactor.to_string()),
        ]
    };
    let dir = |mut l: Labels, d: &str| {
        l.push(("direction", d.to_string()));
        l
    };
    let mut frames = Vec::new();
    let mut ebytes = Vec::new();
    let mut drops = Vec::new();
    for e in &r.engines {
        let l = engine_labels(e);
        frames.push((dir(l.clone(), "rx"), e.rx_frames));
        frames.push((dir(l.clone(), "tx"), e.tx_frames));
        ebytes.push((dir(l.clone(), "rx"), e.rx_bytes));
        ebytes.push((dir(l.clone(), "tx"), e.tx_bytes));
        for (reason, n) in &e.drops {
            let mut l = l.clone();
            l.push(("reason", reason.to_string()));
            drops.push((l, *n));
        }
    }
    counter(
        enc,
        "lightpool_engine_frames",
        "Ethernet frames each reactor's packet-engine queue (AF_XDP, DPDK) received and sent.",
        &frames,
    )?;
    counter(
        enc,
        "lightpool_engine_bytes",
        "Bytes of those frames.",
        &ebytes,
    )?;
    counter(
        enc,
        "lightpool_engine_drops",
        "Frames a packet-engine queue dropped or could not send, by reason.",
        &drops,
    )?;
    let mut prog = Vec::new();
    for p in &r.programs {
        for (action, n) in [
            ("steered", p.steered),
            ("passed", p.passed),
            ("no_socket", p.no_socket),
        ] {
            prog.push((
                vec![
                    ("interface", p.interface.clone()),
                    ("action", action.to_string()),
                ],
                n,
            ));
        }
    }
    counter(
        enc,
        "lightpool_xdp_program_frames",
        "Frames the XDP steering program saw on an AF_XDP listener's interface: redirected to an AF_XDP socket (steered), passed to the kernel (passed), or for the NVMe/TCP port on a queue with no socket (no_socket, passed).",
        &prog,
    )
}
