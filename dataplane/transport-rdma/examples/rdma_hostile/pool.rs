//! A host that wants more request buffers at once than the target's registered pool
//! holds: every tag of a few I/O queues carries an MDTS-size Write, all sent before
//! any is answered. A request whose slot finds the pool empty takes memory of its own,
//! which is not registered, so the target cannot RDMA READ into it: the command must
//! end with Command Interrupted, without Do Not Retry (the host may retry it), and not
//! end the queue. Each interrupted Write is then sent again until it succeeds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lightpool_nvmf_host::{Completion, Dir};
use lightpool_nvmf_host_rdma::RdmaQueueConfig;
use lightpool_spec::nvme::{io_opcode, Sqe};
use lightpool_spec::status::{generic, Status};

/// I/O queues, each filled to its depth.
const QUEUES: u16 = 3;
/// Where the Writes go (512-byte LBAs past what the other hosts use), wrapping within
/// `SPAN` blocks: what they write does not matter.
const SLBA: u64 = 100_000;
const SPAN: u64 = 24_576;
/// How long all the Writes (and their retries) may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs the case and prints one line.
pub fn case(addr: SocketAddr, nqn: &str) -> Result<()> {
    let hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000d0001";
    let mut c = crate::controller(addr, nqn, hostnqn, [0xD0; 16])?;
    let len = c.info.max_transfer.unwrap_or(128 * 1024).min(1 << 20) as usize;
    // Three times the default pool (256 buffers of 128 KiB) when the target allows it.
    let entries = c.info.max_queue_entries.min(256) as u16;
    let got = c.request_io_queues(QUEUES)?;
    let cfg = RdmaQueueConfig {
        depth: entries - 1,
        buf_len: len,
        in_capsule_max: 0,
    };
    let mut qs = Vec::new();
    for qid in 1..=got.min(QUEUES) {
        qs.push(c.connect_io_queue_at(qid, entries, cfg)?);
    }
    let nlb = (len / 512) as u64;
    let write = |n: u64| {
        let slba = SLBA + (n * nlb) % SPAN;
        Sqe {
            opcode: io_opcode::WRITE,
            nsid: 1,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: (nlb - 1) as u32,
            ..Sqe::default()
        }
    };
    // Every tag of every queue, sent before any answer is read.
    let mut sent = 0u64;
    for q in &mut qs {
        while let Some(tag) = q.alloc() {
            q.submit(tag, write(sent), Dir::Write, len as u32)?;
            sent += 1;
        }
    }
    let interrupted = Status::generic(generic::COMMAND_INTERRUPTED);
    let (mut ok, mut retried, mut other) = (0u64, 0u64, Vec::new());
    // Per queue: interrupted Writes waiting for a free tag to go again.
    let mut again = vec![0u32; qs.len()];
    let deadline = Instant::now() + LIMIT;
    let mut done: Vec<Completion> = Vec::new();
    let mut n = sent;
    while ok < sent {
        if Instant::now() > deadline {
            bail!("{ok} of {sent} Writes succeeded in {LIMIT:?}");
        }
        for (q, again) in qs.iter_mut().zip(again.iter_mut()) {
            done.clear();
            q.poll(&mut done).context("polling a queue")?;
            for d in &done {
                if d.status.is_success() {
                    ok += 1;
                } else if d.status == interrupted {
                    // Equal to the whole status: no DNR, no retry delay.
                    retried += 1;
                    *again += 1;
                } else {
                    other.push(d.status);
                    ok += 1;
                }
            }
            while *again > 0 {
                let Some(tag) = q.alloc() else { break };
                q.submit(tag, write(n), Dir::Write, len as u32)?;
                n += 1;
                *again -= 1;
            }
        }
        std::thread::yield_now();
    }
    let verdict = if !other.is_empty() {
        format!("WRONG: other statuses: {:?}", &other[..other.len().min(4)])
    } else if retried == 0 {
        "WRONG: the pool never ran dry".to_string()
    } else {
        "ok".to_string()
    };
    println!(
        "HOSTILE: pool dry: {sent} Writes of {len} bytes on {} queues, {retried} answered Command Interrupted without DNR and succeeded when sent again {verdict}",
        qs.len()
    );
    for q in qs {
        let _ = q.disconnect(true, crate::STEP);
    }
    c.shutdown()?;
    Ok(())
}
