//! The queue's record in the state region: the checksummed part written at creation,
//! Connect and Disconnect; the rest (SQ head, slot states, receive position) plain
//! stores from the I/O path (`QueueShm`).

use crate::queue::{NvmfQueue, QueueState};
use crate::region::{Kind, QueueRec, QueueShm, NO_CTRL};
use crate::target::Target;
use crate::target::PRECONNECT_SLOTS;

/// A record for a new queue, if the target has a region this process owns.
pub(crate) fn new_queue_record(target: &Target, reactor: u16) -> Option<QueueShm> {
    let region = target.region().filter(|r| r.owned())?;
    match region.alloc(Kind::Queue) {
        Ok(i) => {
            let m = region.queue_handle(i, true);
            m.clear();
            m.write_static(&QueueRec {
                ctrl: NO_CTRL,
                cntlid: 0,
                qid: 0,
                entries: 0,
                nslots: PRECONNECT_SLOTS as u16,
                reactor,
                _pad: 0,
            });
            Some(m)
        }
        Err(e) => {
            tracing::error!(error = %e, "queue not recorded in the state region: it cannot be handed over");
            None
        }
    }
}

pub(crate) fn queue_state_code(s: QueueState) -> u8 {
    match s {
        QueueState::Connecting => 0,
        QueueState::Live => 1,
        QueueState::Disconnecting => 2,
        QueueState::Failed => 3,
    }
}

pub(crate) fn write_queue_static<T: Default>(m: &QueueShm, q: &NvmfQueue<T>) {
    let ctrl = q
        .ctrlr
        .as_ref()
        .and_then(|c| c.shm.get().copied())
        .unwrap_or(NO_CTRL);
    m.write_static(&QueueRec {
        ctrl,
        cntlid: q.ctrlr.as_ref().map_or(0, |c| c.cntlid),
        qid: q.qid,
        entries: q.entries,
        nslots: q.slots.len().min(usize::from(u16::MAX)) as u16,
        reactor: q.reactor,
        _pad: 0,
    });
    m.set_flags(
        queue_state_code(q.state),
        q.sq_flow_disabled,
        q.is_authenticating(),
    );
}
