//! What the queue tests share: one command run to completion on a queue.
#![allow(dead_code)]

use std::time::Instant;

use lightpool_nvmf::{NvmfQueue, Xfer};
use lightpool_spec::nvme::{Cqe, Sqe, SGL_DATA_BLOCK_OFFSET};

/// Run one command to completion on a queue; returns the CQE and any C2H data.
pub fn run(q: &mut NvmfQueue<()>, sqe: Sqe, h2c: &[u8]) -> (Cqe, Vec<u8>) {
    let slot = q.alloc(&sqe).expect("free slot");
    let incap = if sqe.sgl().id == SGL_DATA_BLOCK_OFFSET {
        h2c.len() as u32
    } else {
        0
    };
    match q.prepare(slot, incap) {
        Ok(Xfer::H2C { len, .. }) => {
            q.req(slot).buf_mut(len as usize)[..h2c.len()].copy_from_slice(h2c);
            q.execute(slot, Instant::now());
        }
        Ok(_) => {
            q.execute(slot, Instant::now());
        }
        Err(_) => {}
    }
    for _ in 0..1000 {
        if let Some(done) = q.next_done() {
            assert_eq!(done, slot);
            let cqe = q.req(slot).cqe;
            let data = q.c2h_of(slot).to_vec();
            q.free(slot);
            return (cqe, data);
        }
        q.poll(Instant::now());
    }
    panic!("command did not complete");
}
