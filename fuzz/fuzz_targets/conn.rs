//! A real NVMe/TCP connection of the target (`lightpool_transport_tcp::Conn`: the
//! framing's receive state machine, the transport's PDU handling, the NVMe-oF queue
//! with its fabrics, admin and I/O command dispatch, a RAM namespace) fed an arbitrary
//! byte stream in the chunks the input chooses: from the first byte, or after a host
//! has connected and enabled an admin queue, or on an I/O queue, with the digests the
//! input chooses (and, when it asks, every PDU's digests made right); then the peer
//! hangs up.
//!
//! Invariants beyond "no panic":
//! - what the target sends is a well-formed controller-to-host PDU stream: whole PDUs
//!   only, each valid for a host to receive (`validate_header_for`), header and data
//!   digests right when negotiated, C2HData's DATAL agreeing with PLEN, SUCCESS only
//!   with LAST_PDU, one ICResp;
//! - the connection never spins (quiet within a bounded number of polls) and closes
//!   once the peer hangs up;
//! - no allocation follows a length the stream claims (one allocation at most 1 MiB,
//!   32 MiB live).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lightpool_fuzz::host::{admin, io_queue, target, Host};
use lightpool_fuzz::{bounded_allocator, fix_digests, Armed, Choices};

bounded_allocator!();

fuzz_target!(|data: &[u8]| {
    let mut c = Choices::new(data);
    let k = c.byte();
    let (hd, dd) = (k & 1 != 0, k & 2 != 0);
    let nchunks = usize::from(c.byte() % 8);
    let chunks = c.bytes(nchunks).to_vec();
    let mut stream = c.rest().to_vec();
    if k & 0x40 != 0 {
        // Digests made right, so that PDUs with digests on get past their checks.
        fix_digests(&mut stream);
    }
    let t = target();
    let mut admin_queue = None;
    let mut h = match (k >> 2) % 3 {
        0 => Host::new(&t, &chunks, hd, dd),
        1 => admin(&t, &chunks, hd, dd).0,
        _ => {
            let (a, cntlid) = admin(&t, &chunks, hd, dd);
            // The admin queue stays connected while the I/O queue is fuzzed.
            admin_queue = Some(a);
            io_queue(&t, &chunks, hd, dd, cntlid)
        }
    };
    h.track = false;
    let _armed = Armed::new(1 << 20, 32 << 20);
    h.send(&stream, false);
    h.hang_up();
    drop(admin_queue);
});
