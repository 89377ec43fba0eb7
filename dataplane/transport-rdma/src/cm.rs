//! The connection manager side: RDMA_CM events on the first reactor. A connect request
//! is checked against the NVMe/RDMA private data (rejected with its status when it is
//! wrong), its queue pair and rings are made and its receives posted, it is accepted,
//! and it is handed to a reactor in turn; a disconnect is routed to the reactor that
//! owns the connection.

use std::sync::Arc;

use lightpool_rdma_sys::ffi::rdma_cm_event_type as ev;
use lightpool_rdma_sys::{
    AcceptParams, CmEvent, CmId, CompChannel, CompletionQueue, MemoryRegion, ProtectionDomain,
    QpSizes, RdmaError,
};
use lightpool_reactor::Ctx;
use lightpool_spec::rdma::{cm_reject, cm_reject_data, CmReply, CmRequest, CM_RECFMT};

use crate::conn::{Conn, Device, RingSizes, Setup};
use crate::srq::{ReactorSrq, SRQ_RECEIVES};
use crate::{add_conn, Shared, LOCAL};

/// Handles the events waiting on the channel; how many.
pub(crate) fn poll_events(ctx: &mut Ctx, shared: &Arc<Shared>) -> usize {
    let mut n = 0;
    loop {
        let e = match shared.channel.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => return n,
            Err(e) => {
                tracing::warn!(error = %e, "RDMA_CM event channel failed");
                return n;
            }
        };
        n += 1;
        match e.kind {
            ev::RDMA_CM_EVENT_CONNECT_REQUEST => connect_request(ctx, shared, &e),
            ev::RDMA_CM_EVENT_ESTABLISHED => {
                tracing::debug!(id = e.id as usize, "NVMe/RDMA connection established")
            }
            ev::RDMA_CM_EVENT_DISCONNECTED
            | ev::RDMA_CM_EVENT_TIMEWAIT_EXIT
            | ev::RDMA_CM_EVENT_CONNECT_ERROR
            | ev::RDMA_CM_EVENT_UNREACHABLE
            | ev::RDMA_CM_EVENT_REJECTED
            | ev::RDMA_CM_EVENT_DEVICE_REMOVAL => {
                tracing::debug!(id = e.id as usize, event = %e.name(), "NVMe/RDMA connection event");
                shared.route_close(e.id as usize, e.name());
            }
            _ => tracing::debug!(event = %e.name(), "RDMA_CM event ignored"),
        }
    }
}

/// Why a connect request is refused: the reject status, and what to log.
fn check_request(e: &CmEvent, shared: &Shared) -> Result<CmRequest, (u16, String)> {
    let req = CmRequest::parse(&e.private_data).map_err(|err| {
        (
            cm_reject::INVALID_LEN,
            format!("private data too short: {err}"),
        )
    })?;
    if req.recfmt != CM_RECFMT {
        return Err((
            cm_reject::INVALID_RECFMT,
            format!("record format {}", req.recfmt),
        ));
    }
    let o = &shared.target.opts;
    if req.qid > o.max_io_queues {
        return Err((cm_reject::INVALID_QID, format!("queue ID {}", req.qid)));
    }
    let max = if req.qid == 0 {
        o.max_admin_queue_depth
    } else {
        o.max_queue_depth
    };
    let size = u32::from(req.hsqsize) + 1;
    if req.hsqsize == 0 || size > u32::from(max) {
        return Err((
            cm_reject::INVALID_HSQSIZE,
            format!("host send queue size {size} (most {max})"),
        ));
    }
    if req.hrqsize == 0 {
        return Err((
            cm_reject::INVALID_HRQSIZE,
            "host receive queue size 0".into(),
        ));
    }
    if shared.quiesced() {
        return Err((cm_reject::NO_RESOURCES, "hot upgrade under way".into()));
    }
    Ok(req)
}

fn connect_request(ctx: &mut Ctx, shared: &Arc<Shared>, e: &CmEvent) {
    // SAFETY: a connect request's new identifier is ours from here; nothing else
    // destroys it (the event was acknowledged, and `Setup` or the drop below does).
    let Some(id) = (unsafe { CmId::from_request(e.id) }) else {
        return;
    };
    let peer = id.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let req = match check_request(e, shared) {
        Ok(r) => r,
        Err((status, why)) => {
            tracing::warn!(%peer, status, why, "NVMe/RDMA connect request rejected");
            if let Err(err) = id.reject(&cm_reject_data(status)) {
                tracing::warn!(%peer, error = %err, "cannot reject a connect request");
            }
            return;
        }
    };
    // The reactor is chosen first: with shared receive queues the queue pair is made
    // on that reactor's.
    let reactors = &shared.reactors;
    let r = &reactors[shared.next_reactor() % reactors.len()];
    let Some(setup) = build(shared, id, &req, &peer, r.id()) else {
        return;
    };
    let params = AcceptParams {
        responder_resources: e
            .initiator_depth
            .min(setup.dev.limits.max_qp_rd_atom)
            .max(1),
        initiator_depth: e
            .responder_resources
            .min(setup.dev.limits.max_qp_init_rd_atom)
            .max(1),
    };
    let rep = CmReply {
        recfmt: CM_RECFMT,
        crqsize: setup.nrecv as u16,
    };
    if let Err(err) = setup.id.accept(&rep.encode(), params) {
        tracing::warn!(%peer, error = %err, "cannot accept an NVMe/RDMA connection");
        return;
    }
    let key = setup.id.as_ptr() as usize;
    shared.owners_insert(key, r.id());
    tracing::debug!(%peer, qid = req.qid, size = setup.nrecv, reactor = r.id(), recv_bytes = if setup.srq.is_some() { 0 } else { setup.recv_size * setup.nrecv }, srq = setup.srq.is_some(), "NVMe/RDMA connection accepted");
    let target = shared.target.clone();
    let here = ctx.id();
    let res = if r.id() == here {
        add_conn(ctx, Conn::new(setup, target, here));
        Ok(())
    } else {
        r.send(move |ctx: &mut Ctx| {
            let id = ctx.id();
            add_conn(ctx, Conn::new(setup, target, id));
        })
    };
    if let Err(err) = res {
        tracing::error!(%peer, error = %err, "cannot hand a connection to its reactor");
    }
}

/// The device of `id` with the target's current buffer pool registered in it (made on
/// first use; the target's pool changes when a block device offers its own, and queues
/// made after that take their buffers there).
fn device(shared: &Shared, id: &CmId) -> Result<Arc<Device>, RdmaError> {
    let ctx = id.verbs().ok_or(RdmaError::NoDevice("connect request"))?;
    let bufs = shared.target.buffers();
    let pool = bufs.pool();
    let pool_id = pool.map_or(0, |p| Arc::as_ptr(p) as usize);
    let mut devs = shared.devices.lock().expect("device list poisoned");
    if let Some(d) = devs
        .iter()
        .find(|d| d.pd.context() == ctx && d.pool_id == pool_id)
    {
        return Ok(d.clone());
    }
    let pd = match devs.iter().find(|d| d.pd.context() == ctx) {
        Some(d) => d.pd.clone(),
        None => ProtectionDomain::new(ctx)?,
    };
    let limits = pd.limits()?;
    let pool_mr = match pool {
        Some(pool) => {
            let mem = pool.memory();
            // SAFETY: the pool's memory stays mapped while the pool lives, and the
            // device holds the pool (`_pool`) as long as the region.
            Some(unsafe { MemoryRegion::register(&pd, mem.as_ptr(), mem.len())? })
        }
        None => {
            tracing::warn!("the target has no buffer pool: NVMe/RDMA data transfers will fail");
            None
        }
    };
    let d = Arc::new(Device {
        pool_mr,
        pd,
        limits,
        pool_id,
        _pool: pool.cloned(),
    });
    devs.push(d.clone());
    Ok(d)
}

/// Refuses a connection it has no resources for.
fn no_resources(id: &CmId, peer: &str, err: &RdmaError) {
    tracing::warn!(%peer, error = %err, "no resources for an NVMe/RDMA queue");
    if let Err(err) = id.reject(&cm_reject_data(cm_reject::NO_RESOURCES)) {
        tracing::warn!(%peer, error = %err, "cannot reject a connect request");
    }
}

/// The queue pair, rings and receives of a new connection; `None` when it was refused
/// for want of them.
fn build(
    shared: &Arc<Shared>,
    id: CmId,
    req: &CmRequest,
    peer: &str,
    reactor: usize,
) -> Option<Setup> {
    match try_build(shared, id, req, peer, reactor) {
        Ok(s) => Some(s),
        Err((Some(id), e)) => {
            no_resources(&id, peer, &e);
            None
        }
        Err((None, _)) => None,
    }
}

fn try_build(
    shared: &Arc<Shared>,
    mut id: CmId,
    req: &CmRequest,
    peer: &str,
    reactor: usize,
) -> Result<Setup, (Option<CmId>, RdmaError)> {
    let dev = match device(shared, &id) {
        Ok(d) => d,
        Err(e) => return Err((Some(id), e)),
    };
    let sizes = RingSizes::new(&shared.target, req.hsqsize + 1);
    let srq = if crate::srq::shared_receive_queue() {
        match reactor_srq(shared, &dev, reactor, sizes.recv_size) {
            Ok(s) => Some(s),
            Err(e) => return Err((Some(id), e)),
        }
    } else {
        None
    };
    let send_wr = 2 * sizes.nrsp as u32 + 1;
    let recv_wr = sizes.nrecv as u32;
    let res = (|| {
        let ch = CompChannel::new(dev.pd.context())?;
        let cq = CompletionQueue::new(dev.pd.context(), send_wr + recv_wr, &ch)?;
        let mut ring = vec![0u8; sizes.bytes(srq.is_some())].into_boxed_slice();
        // SAFETY: the ring is a heap allocation that `Setup` keeps (and never moves or
        // resizes) for as long as the region.
        let ring_mr = unsafe { MemoryRegion::register(&dev.pd, ring.as_mut_ptr(), ring.len())? };
        Ok::<_, RdmaError>((ch, cq, ring, ring_mr))
    })();
    let (ch, cq, ring, ring_mr) = match res {
        Ok(x) => x,
        Err(e) => return Err((Some(id), e)),
    };
    if let Err(e) = id.create_qp_srq(
        &dev.pd,
        &cq,
        QpSizes {
            send_wr,
            recv_wr,
            send_sge: 1,
            recv_sge: 1,
        },
        srq.as_ref().map(|s| s.as_srq()),
    ) {
        return Err((Some(id), e));
    }
    let local = id.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut s = Setup {
        id,
        srq,
        cq,
        ch,
        ring_mr,
        ring,
        dev,
        shared: shared.clone(),
        recv_size: sizes.recv_size,
        nrecv: sizes.nrecv,
        nrsp: sizes.nrsp,
        qid: req.qid,
        peer: peer.to_string(),
        local,
    };
    if let Err(e) = s.post_receives() {
        // Refused here, and the whole setup goes (the QP before its CQ).
        no_resources(&s.id, peer, &e);
        return Err((None, e));
    }
    Ok(s)
}

/// The shared receive queue of `reactor` on `dev`'s protection domain, made (its
/// buffers posted) on first use.
fn reactor_srq(
    shared: &Shared,
    dev: &Device,
    reactor: usize,
    recv_size: usize,
) -> Result<Arc<ReactorSrq>, RdmaError> {
    let key = (Arc::as_ptr(&dev.pd) as usize, reactor);
    let mut srqs = shared.srqs.lock().expect("SRQ list poisoned");
    if let Some((_, s)) = srqs
        .iter()
        .find(|(k, s)| *k == key && s.recv_size == recv_size)
    {
        return Ok(s.clone());
    }
    let n = SRQ_RECEIVES.min(dev.limits.max_srq_wr).max(1);
    let s = Arc::new(ReactorSrq::new(&dev.pd, n, recv_size)?);
    tracing::info!(
        reactor,
        receives = n,
        bytes = s.bytes(),
        "NVMe/RDMA shared receive queue made"
    );
    srqs.push((key, s.clone()));
    Ok(s)
}

/// Closes the connection keyed `key` if this reactor owns it.
pub(crate) fn close_local(key: usize, why: &str) {
    LOCAL.with(|l| {
        for c in l.borrow_mut().conns.iter_mut().filter(|c| c.key() == key) {
            c.close(why);
        }
    });
}
