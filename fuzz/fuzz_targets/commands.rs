//! The admin, fabrics and I/O command decoders and their execution, driven through a
//! real target queue: a host connects an admin queue (and an I/O queue), then sends
//! the input's commands, well framed, each an arbitrary 64-byte SQE with the CID the
//! host gives it, optionally its SGL set for in-capsule data or an R2T transfer, and
//! in-capsule data; it answers every R2T with H2CData as a host would. The stream moves
//! in chunks of 16 bytes to 4 KiB the input chooses (a PDU still splits anywhere, PDUs
//! being of any length): splits down to one byte are `conn`'s and `recv`'s, and here
//! they made most of each execution (a poll per chunk), four times the time.
//!
//! Invariants beyond "no panic":
//! - every PDU the target sends is well formed and digests are right (as in `conn`);
//! - every answer (response capsule, C2HData with SUCCESS) is for a command that is
//!   outstanding, and answers it once; every R2T and C2HData is for an outstanding
//!   command, an R2T within the data the command's SGL names;
//! - once the queues are quiet, every command has its answer, but for Asynchronous
//!   Event Requests (they wait for an event), unless the target ended the connection;
//! - no allocation follows a length a command claims (one allocation at most 1 MiB,
//!   32 MiB live).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::host::{admin, io_queue, target, Host};
use lightpool_fuzz::{bounded_allocator, Armed, Choices};
use lightpool_spec::nvme::{
    admin_opcode, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK, SQE_SIZE,
};

bounded_allocator!();

/// The most commands of one input.
const MAX_COMMANDS: usize = 64;

fn send(h: &mut Host, cid: u16, mut sqe: Sqe, how: u8, data: &[u8]) {
    sqe.cid = cid;
    let incapsule = how & 2 != 0;
    if how & 4 != 0 {
        let sgl = if incapsule {
            SglDescriptor {
                address: 0,
                length: data.len() as u32,
                id: SGL_DATA_BLOCK_OFFSET,
            }
        } else {
            SglDescriptor {
                address: 0,
                // Blocks of 512 bytes, as many as the command's NLB asks (reads and
                // writes), or the length the input gave.
                length: if how & 8 != 0 {
                    (sqe.cdw12 & 0xFFFF).saturating_add(1).saturating_mul(512)
                } else {
                    u32::from_le_bytes(sqe.dptr[8..12].try_into().expect("4 bytes"))
                },
                id: SGL_TRANSPORT_DATA_BLOCK,
            }
        };
        sqe.set_sgl(&sgl);
    }
    let data = if incapsule { data } else { &[][..] };
    h.outstanding.insert(cid);
    h.write_len.insert(cid, sqe.sgl().length);
    let capsule = h.capsule(&sqe, data);
    h.send(&capsule, true);
}

fuzz_target!(|data: &[u8]| {
    let mut c = Choices::new(data);
    let k = c.byte();
    let (hd, dd) = (k & 1 != 0, k & 2 != 0);
    let nchunks = usize::from(c.byte() % 8);
    let chunks = c.bytes(nchunks).to_vec();
    let t = target();
    let (mut a, cntlid) = admin(&t, &chunks, hd, dd);
    let mut q = io_queue(&t, &chunks, hd, dd, cntlid);
    // Chunks of 16 bytes up: this target is about the commands (see the top).
    a.pipe.set_chunks_in(&chunks, 16);
    q.pipe.set_chunks_in(&chunks, 16);
    let _armed = Armed::new(1 << 20, 32 << 20);
    let mut aers = Vec::new();
    for i in 0..MAX_COMMANDS {
        let how = c.byte();
        let sqe_bytes = c.bytes(SQE_SIZE);
        if sqe_bytes.len() < SQE_SIZE {
            break;
        }
        let sqe = Sqe::from_bytes(sqe_bytes.try_into().expect("64 bytes"));
        let dlen = usize::from(c.u16() % 9000);
        let payload = c.bytes(dlen);
        let cid = i as u16;
        let admin_queue = how & 1 == 0;
        if admin_queue && sqe.opcode == admin_opcode::ASYNC_EVENT_REQUEST {
            aers.push(cid);
        }
        let h = if admin_queue { &mut a } else { &mut q };
        if h.terminated {
            continue;
        }
        send(h, cid, sqe, how, payload);
    }
    for (h, name) in [(&a, "admin"), (&q, "I/O")] {
        if h.terminated {
            continue;
        }
        let left: Vec<u16> = h
            .outstanding
            .iter()
            .copied()
            .filter(|c| !aers.contains(c))
            .collect();
        assert!(
            left.is_empty(),
            "{name} queue: commands {left:?} never answered"
        );
    }
    a.hang_up();
    q.hang_up();
});
