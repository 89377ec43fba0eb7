//! A hostile NVMe/RDMA host, for the guest test (tests/tests/rdma.rs): it connects to a
//! target over rdma_cm and does what a good host never does, printing one line per
//! case with what the target answered:
//!
//! - connect requests with bad private data (too short, another record format, a queue
//!   ID past the I/O queue count, host send queue size 0 or past the admin depth, host
//!   receive queue size 0): each must be rejected with the NVMe/RDMA reject status;
//! - on an accepted admin queue, a Connect whose keyed SGL is longer than MDTS: the
//!   response must be Data SGL Length Invalid;
//! - then a Connect whose keyed SGL names a key the host never registered: the target's
//!   RDMA READ fails and it must end the queue (the host sees a disconnect);
//! - with NQN given: on a controller of that subsystem (lightpool-nvmf-host-rdma's), an
//!   I/O queue whose RDMA_CM request names queue 1 and whose Connect names queue 2:
//!   the target must end that queue, and the host's next call fail at once with the
//!   end its RDMA_CM event channel reports;
//! - with NQN given, hosts that go away mid-transfer ([`teardown`]): Writes the target
//!   must RDMA READ and Reads it must RDMA WRITE back, in flight when the host's memory
//!   region goes (the target's transfer fails remotely), or when its queue pair is
//!   destroyed without a disconnect (only the target's stall bound notices): it must end
//!   that queue, give its queue ID back and keep serving.
//!
//! - `pool` after the NQN: only a host that wants more request buffers at once than
//!   the target's registered pool holds ([`pool`]): the Writes that find none must
//!   end with a status the host retries, and succeed when sent again.
//!
//! `rdma_hostile IP:PORT [NQN [pool]]`

mod pool;
mod teardown;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lightpool_rdma_sys::ffi::{ibv_wc_status, ibv_wr_opcode, rdma_cm_event_type as ev};
use lightpool_rdma_sys::{
    AcceptParams, CmId, CompChannel, CompletionQueue, EventChannel, MemoryRegion, ProtectionDomain,
    QpSizes, WorkCompletion,
};
use lightpool_spec::fabrics::ConnectCommand;
use lightpool_spec::nvme::{Cqe, CQE_SIZE, SQE_SIZE};
use lightpool_spec::rdma::{cm_reject, CmRequest, KeyedSgl, SGL_KEYED_ADDRESS};
use lightpool_spec::status::{generic, Status};

pub(crate) const STEP: Duration = Duration::from_secs(5);
/// How soon a host's call must fail once the target ended its queue (the RDMA_CM
/// DISCONNECTED comes in milliseconds; without watching for it the call times out).
const NEXT_CALL: Duration = Duration::from_secs(1);

/// A client connection's resources (the QP before the CQ before its channel).
struct Client {
    id: CmId,
    cq: CompletionQueue,
    _cc: CompChannel,
    mr: MemoryRegion,
    buf: Box<[u8]>,
    ch: Arc<EventChannel>,
}

pub(crate) fn expect_event(ch: &EventChannel, want: u32) -> Result<lightpool_rdma_sys::CmEvent> {
    let e = ch.wait_event(STEP)?.context("no RDMA_CM event in time")?;
    if e.kind != want {
        bail!(
            "expected event {want}, got {} (status {})",
            e.name(),
            e.status
        );
    }
    Ok(e)
}

/// Resolves, makes a QP, connects with `private_data`; the connect's outcome event.
fn connect(addr: SocketAddr, private_data: &[u8]) -> Result<(Client, lightpool_rdma_sys::CmEvent)> {
    let ch = Arc::new(EventChannel::new()?);
    let mut id = CmId::new(&ch)?;
    id.resolve_addr(addr, 2000)?;
    expect_event(&ch, ev::RDMA_CM_EVENT_ADDR_RESOLVED)?;
    id.resolve_route(2000)?;
    expect_event(&ch, ev::RDMA_CM_EVENT_ROUTE_RESOLVED)?;
    let ctx = id.verbs().context("no device for the address")?;
    let pd = ProtectionDomain::new(ctx)?;
    let cc = CompChannel::new(ctx)?;
    let cq = CompletionQueue::new(ctx, 64, &cc)?;
    id.create_qp(
        &pd,
        &cq,
        QpSizes {
            send_wr: 16,
            recv_wr: 16,
            send_sge: 1,
            recv_sge: 1,
        },
    )?;
    let mut buf = vec![0u8; 8192].into_boxed_slice();
    // SAFETY: the buffer lives in the client beside the region, never moved.
    let mr = unsafe { MemoryRegion::register(&pd, buf.as_mut_ptr(), buf.len())? };
    // The response lands in the second half.
    let p = buf[4096..].as_mut_ptr();
    id.post_recv(1, p, 4096, mr.lkey())?;
    id.connect(
        private_data,
        AcceptParams {
            responder_resources: 4,
            initiator_depth: 4,
        },
    )?;
    let e = ch.wait_event(STEP)?.context("no answer to the connect")?;
    Ok((
        Client {
            id,
            cq,
            _cc: cc,
            mr,
            buf,
            ch,
        },
        e,
    ))
}

impl Client {
    /// Sends one command capsule and waits for its response.
    fn command(&mut self, sqe: &lightpool_spec::nvme::Sqe) -> Result<Cqe> {
        self.buf[..SQE_SIZE].copy_from_slice(&sqe.to_bytes());
        self.id.post_send(
            2,
            ibv_wr_opcode::IBV_WR_SEND,
            self.buf.as_ptr(),
            SQE_SIZE as u32,
            self.mr.lkey(),
            (0, 0),
            0,
            true,
        )?;
        let mut wcs = vec![WorkCompletion::default(); 4];
        let deadline = std::time::Instant::now() + STEP;
        while std::time::Instant::now() < deadline {
            let n = self.cq.poll(&mut wcs)?;
            for wc in &wcs[..n] {
                if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
                    bail!("work request {} failed: status {}", wc.wr_id, wc.status);
                }
                if wc.wr_id == 1 {
                    let b: &[u8; CQE_SIZE] = self.buf[4096..4096 + CQE_SIZE]
                        .try_into()
                        .context("a response")?;
                    return Ok(Cqe::from_bytes(b));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!("no response in time")
    }
}

fn connect_sqe(len: u32, key: u32) -> lightpool_spec::nvme::Sqe {
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(7);
    sqe.dptr = KeyedSgl {
        address: 0x1000,
        length: len,
        key,
        id: SGL_KEYED_ADDRESS,
    }
    .to_bytes();
    sqe
}

/// A controller of subsystem `nqn` (lightpool-nvmf-host-rdma's), no keep-alive.
pub(crate) fn controller(
    addr: SocketAddr,
    nqn: &str,
    hostnqn: &str,
    hostid: [u8; 16],
) -> Result<lightpool_nvmf_host_rdma::RdmaController> {
    Ok(lightpool_nvmf_host_rdma::RdmaController::connect(
        lightpool_nvmf_host_rdma::RdmaConnectOptions {
            addr,
            subnqn: nqn.to_string(),
            hostnqn: hostnqn.to_string(),
            hostid,
            kato_ms: 0,
            timeout: STEP,
        },
    )?)
}

/// An I/O queue connected as queue 1 by RDMA_CM whose Connect command names queue 2.
fn mismatched_qid(addr: SocketAddr, nqn: &str) -> Result<()> {
    use lightpool_nvmf_host::Dir;
    use lightpool_nvmf_host_rdma::{RdmaQpair, RdmaQueueConfig};
    let hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000beef";
    let hostid = [0xBE; 16];
    let mut c = controller(addr, nqn, hostnqn, hostid)?;
    c.request_io_queues(2)?;
    let cfg = RdmaQueueConfig {
        depth: 4,
        buf_len: 4096,
        in_capsule_max: 0,
    };
    let mut q = RdmaQpair::connect(addr, 1, 8, c.info.cntlid, cfg, STEP)?;
    let sqe = ConnectCommand {
        recfmt: 0,
        qid: 2,
        sqsize: 7,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(0);
    let data =
        lightpool_spec::fabrics::ConnectData::new(hostid, c.info.cntlid, nqn, hostnqn).to_bytes();
    // The Connect may be answered (the queue goes live, then the target checks it
    // against the request) or not; either way the queue must end.
    let answer = q.execute(
        sqe,
        Dir::Write,
        Some(&data),
        data.len() as u32,
        STEP,
        "Connect",
    );
    // The host's next call must fail at once with the end the RDMA_CM reports (the
    // host watches its event channel), not wait out its timeout.
    let t = std::time::Instant::now();
    let flush = lightpool_spec::nvme::Sqe {
        opcode: lightpool_spec::nvme::io_opcode::FLUSH,
        nsid: 1,
        ..Default::default()
    };
    let next = q.execute(flush, Dir::None, None, 0, STEP, "Flush");
    let took = t.elapsed();
    let ended = answer.is_err() || next.is_err() || q.wait_disconnected(STEP)?;
    println!(
        "HOSTILE: connect qid mismatch: {}",
        if ended {
            "ended ok"
        } else {
            "WRONG: still connected"
        }
    );
    let seen = match &next {
        Err(lightpool_nvmf_host::InitiatorError::Closed { .. }) if took < NEXT_CALL => "ok",
        _ => "WRONG",
    };
    println!(
        "HOSTILE: the host's next call: {} after {} ms {seen}",
        match &next {
            Ok(c) => format!("answered {}", c.status),
            Err(e) => e.to_string(),
        },
        took.as_millis()
    );
    c.shutdown()?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .context("usage: rdma_hostile IP:PORT [NQN [pool]]")?
        .parse()
        .context("IP:PORT")?;
    if let Some(nqn) = args.next() {
        if args.next().as_deref() == Some("pool") {
            return pool::case(addr, &nqn);
        }
        mismatched_qid(addr, &nqn)?;
        use lightpool_spec::nvme::io_opcode::{READ, WRITE};
        use teardown::Gone;
        teardown::case(addr, &nqn, "write, region gone", WRITE, Gone::Region)?;
        teardown::case(addr, &nqn, "read, region gone", READ, Gone::Region)?;
        // The QP destroyed without a disconnect: only the target's own bound ends it.
        teardown::case(addr, &nqn, "write, queue pair gone", WRITE, Gone::QueuePair)?;
        teardown::case(addr, &nqn, "read, queue pair gone", READ, Gone::QueuePair)?;
    }
    let good = CmRequest {
        recfmt: 0,
        qid: 0,
        hrqsize: 32,
        hsqsize: 31,
        cntlid: 0xFFFF,
    };
    let cases: [(&str, Vec<u8>, u16); 6] = [
        // On RoCE and InfiniBand the CM carries private data in a fixed-size field,
        // zero-padded: a short request arrives long enough, its missing HSQSIZE reads
        // as 0 (iWARP carries the length, and gets INVALID_LEN).
        (
            "short",
            good.encode()[..6].to_vec(),
            cm_reject::INVALID_HSQSIZE,
        ),
        (
            "recfmt",
            CmRequest { recfmt: 1, ..good }.encode().to_vec(),
            cm_reject::INVALID_RECFMT,
        ),
        (
            "qid",
            CmRequest { qid: 5000, ..good }.encode().to_vec(),
            cm_reject::INVALID_QID,
        ),
        (
            "hsqsize0",
            CmRequest { hsqsize: 0, ..good }.encode().to_vec(),
            cm_reject::INVALID_HSQSIZE,
        ),
        (
            "hsqsize-big",
            CmRequest {
                hsqsize: 4095,
                ..good
            }
            .encode()
            .to_vec(),
            cm_reject::INVALID_HSQSIZE,
        ),
        (
            "hrqsize0",
            CmRequest { hrqsize: 0, ..good }.encode().to_vec(),
            cm_reject::INVALID_HRQSIZE,
        ),
    ];
    for (name, data, want) in cases {
        let (_c, e) = connect(addr, &data)?;
        let sts = (e.private_data.len() >= 4)
            .then(|| u16::from_le_bytes([e.private_data[2], e.private_data[3]]));
        let ok = e.kind == ev::RDMA_CM_EVENT_REJECTED && sts == Some(want);
        println!(
            "HOSTILE: reject {name}: {} sts={sts:?} {}",
            e.name(),
            if ok { "ok" } else { "WRONG" }
        );
    }

    let (mut c, e) = connect(addr, &good.encode())?;
    if e.kind != ev::RDMA_CM_EVENT_ESTABLISHED {
        bail!("a good connect request was answered {}", e.name());
    }
    let cqe = c.command(&connect_sqe(1 << 20, 0x1234))?;
    let want = Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr();
    println!(
        "HOSTILE: oversized: {} {}",
        cqe.status,
        if cqe.status == want { "ok" } else { "WRONG" }
    );
    // A key this host never registered: the target's RDMA READ fails, and it ends the
    // queue. Whatever the send does, the host must then see the disconnect.
    let _ = c.command(&connect_sqe(1024, 0xDEAD_BEEF));
    let mut ended = false;
    while let Some(e) = c.ch.wait_event(STEP)? {
        if e.kind == ev::RDMA_CM_EVENT_DISCONNECTED {
            ended = true;
            break;
        }
    }
    println!(
        "HOSTILE: bad key: {}",
        if ended {
            "disconnected ok"
        } else {
            "WRONG: still connected"
        }
    );
    Ok(())
}
