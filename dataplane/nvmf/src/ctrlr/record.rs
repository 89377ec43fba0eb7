//! The controller's record in the state region.

use crate::ctrlr::{Controller, CtrlRegs};
use crate::region::{ControllerRec, Str, DISCOVERY_SUBSYS, MAX_AERS, MAX_EVENTS, MAX_IO_QUEUES};

pub(crate) fn controller_rec(
    c: &Controller,
    r: &CtrlRegs,
    events: &std::collections::VecDeque<u32>,
    masked: u32,
    aer_cids: &[u16],
    changed_ns: u32,
) -> ControllerRec {
    let subsys = match c
        .subsys
        .shm
        .lock()
        .expect("subsystem shm lock poisoned")
        .as_ref()
    {
        Some(m) => m.rec,
        None => DISCOVERY_SUBSYS,
    };
    let mut rec = ControllerRec {
        subsys,
        cntlid: c.cntlid,
        num_io_queues: r.num_io_queues,
        // Controller::record refuses a record to a host NQN that does not fit.
        hostnqn: Str::new("host NQN", &c.hostnqn).unwrap_or(Str {
            len: 0,
            bytes: [0; 254],
        }),
        hostid: c.hostid,
        cc: r.cc,
        csts: r.csts,
        aec: r.aec,
        kato_ms: c.kato_ms(),
        masked,
        changed_ns,
        _pad: 0,
        vwce: u8::from(r.vwce),
        failed: u8::from(c.is_failed()),
        n_events: events.len().min(MAX_EVENTS) as u8,
        n_aers: aer_cids.len().min(MAX_AERS) as u8,
        events: [0; MAX_EVENTS],
        aer_cids: [0; MAX_AERS],
        io_queues: [0; MAX_IO_QUEUES / 64],
    };
    for (d, e) in rec.events.iter_mut().zip(events) {
        *d = *e;
    }
    for (d, e) in rec.aer_cids.iter_mut().zip(aer_cids) {
        *d = *e;
    }
    for (q, used) in r.io_queues.iter().enumerate().take(MAX_IO_QUEUES) {
        if *used {
            rec.io_queues[q / 64] |= 1 << (q % 64);
        }
    }
    rec
}
