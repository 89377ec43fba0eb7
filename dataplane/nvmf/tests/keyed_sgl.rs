//! A queue of a fabric that moves data by keyed SGL data blocks (NVMe/RDMA,
//! `NvmfQueue::use_keyed_sgl`): which descriptors it takes and what it answers to the
//! others, and reads that land in the request's buffer (registered memory) rather than
//! being lent by reference from a RAM device.

mod common;

use std::sync::Arc;
use std::time::Instant;

use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::{NamespaceConfig, NvmfQueue, SubsystemConfig, Target, TargetOptions, Xfer};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::nvme::{
    io_opcode, reg, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::rdma::{KeyedSgl, SGL_KEYED_ADDRESS, SGL_KEYED_INVALIDATE};
use lightpool_spec::status::{generic, Status};

const NQN: &str = "nqn.2024-01.io.lightpool:keyed";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:keyed-host";

fn target() -> Arc<Target> {
    let t = Target::new(TargetOptions::default()).expect("valid options");
    let mut sc = SubsystemConfig::new(NQN);
    sc.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev: MallocBdev::new("ram", 4 << 20, 512).expect("ram"),
        nguid: None,
        uuid: None,
        anagrpid: None,
        num_blocks: None,
    });
    t.add_subsystem(sc).expect("valid subsystem");
    t
}

fn connect(t: &Arc<Target>, qid: u16, cntlid: u16) -> NvmfQueue<()> {
    let mut q = NvmfQueue::new(t.clone(), 0);
    q.use_keyed_sgl();
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato: 5000,
    }
    .to_sqe(1);
    sqe.dptr = SglDescriptor::in_capsule(0, 1024).to_bytes();
    let data = ConnectData::new([9; 16], cntlid, NQN, HOST).to_bytes();
    let (cqe, _) = common::run(&mut q, sqe, &data);
    assert!(cqe.status.is_success(), "{}", cqe.status);
    if qid == 0 {
        let cc = PropertyCommand {
            size8: false,
            offset: reg::CC,
            value: 0x0046_0001,
        }
        .to_set_sqe(2);
        assert!(common::run(&mut q, cc, &[]).0.status.is_success());
    }
    q
}

fn io_queue(t: &Arc<Target>) -> (NvmfQueue<()>, NvmfQueue<()>) {
    let admin = connect(t, 0, CNTLID_DYNAMIC);
    let cntlid = admin.controller().expect("connected").cntlid;
    (admin, connect(t, 1, cntlid))
}

fn rw(opcode: u8, blocks: u32, dptr: [u8; 16]) -> Sqe {
    Sqe {
        opcode,
        nsid: 1,
        cid: 7,
        cdw12: blocks - 1,
        dptr,
        ..Default::default()
    }
}

fn keyed(len: u32, id: u8) -> [u8; 16] {
    KeyedSgl {
        address: 0x7000_0000,
        length: len,
        key: 0x1234_5678,
        id,
    }
    .to_bytes()
}

/// Prepares one command; returns what it moves, or the status it finished with.
fn prepare(q: &mut NvmfQueue<()>, sqe: Sqe, incapsule: u32) -> Result<Xfer, Status> {
    let slot = q.alloc(&sqe).expect("free slot");
    let r = q.prepare(slot, incapsule);
    if r.is_err() {
        let done = q.next_done().expect("finished at once");
        assert_eq!(done, slot);
        assert_eq!(q.req_ref(slot).cqe.status, r.expect_err("checked"));
    }
    q.free(slot);
    r
}

#[test]
fn keyed_data_blocks_and_in_capsule_data_are_taken() {
    let t = target();
    let (_a, mut q) = io_queue(&t);
    for id in [SGL_KEYED_ADDRESS, SGL_KEYED_INVALIDATE] {
        assert_eq!(
            prepare(&mut q, rw(io_opcode::WRITE, 8, keyed(4096, id)), 0),
            Ok(Xfer::H2C {
                len: 4096,
                in_capsule: false
            })
        );
        assert_eq!(
            prepare(&mut q, rw(io_opcode::READ, 256, keyed(128 * 1024, id)), 0),
            Ok(Xfer::C2H { len: 128 * 1024 })
        );
    }
    assert_eq!(
        prepare(
            &mut q,
            rw(
                io_opcode::WRITE,
                8,
                SglDescriptor::in_capsule(0, 4096).to_bytes()
            ),
            4096
        ),
        Ok(Xfer::H2C {
            len: 4096,
            in_capsule: true
        })
    );
}

#[test]
fn other_descriptors_and_oversized_transfers_get_the_specs_status() {
    let t = target();
    let (_a, mut q) = io_queue(&t);
    let mdts = TargetOptions::default().max_transfer_size;
    // NVMe/TCP's transport data block is not an RDMA descriptor.
    let tcp = SglDescriptor::transport(4096);
    assert_eq!(tcp.id, SGL_TRANSPORT_DATA_BLOCK);
    assert_eq!(
        prepare(&mut q, rw(io_opcode::WRITE, 8, tcp.to_bytes()), 0),
        Err(Status::generic(generic::SGL_DESCRIPTOR_TYPE_INVALID).with_dnr())
    );
    // A keyed descriptor of a sub type that is neither address nor invalidate.
    assert_eq!(
        prepare(&mut q, rw(io_opcode::READ, 8, keyed(4096, 0x41)), 0),
        Err(Status::generic(generic::SGL_DESCRIPTOR_TYPE_INVALID).with_dnr())
    );
    // Longer than MDTS, either way.
    for op in [io_opcode::READ, io_opcode::WRITE] {
        assert_eq!(
            prepare(&mut q, rw(op, 8, keyed(mdts + 4096, SGL_KEYED_ADDRESS)), 0),
            Err(Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr())
        );
    }
    // Keyed data with bytes in the capsule too.
    assert_eq!(
        prepare(
            &mut q,
            rw(io_opcode::WRITE, 8, keyed(4096, SGL_KEYED_ADDRESS)),
            512
        ),
        Err(Status::generic(generic::DATA_SGL_LENGTH_INVALID).with_dnr())
    );
    assert_eq!(SGL_DATA_BLOCK_OFFSET, 0x01);
}

#[test]
fn reads_land_in_the_requests_buffer() {
    let t = target();
    let (_a, mut q) = io_queue(&t);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let w = rw(
        io_opcode::WRITE,
        8,
        SglDescriptor::in_capsule(0, 4096).to_bytes(),
    );
    assert!(common::run(&mut q, w, &data).0.status.is_success());
    let sqe = rw(io_opcode::READ, 8, keyed(4096, SGL_KEYED_ADDRESS));
    let slot = q.alloc(&sqe).expect("free slot");
    assert_eq!(q.prepare(slot, 0), Ok(Xfer::C2H { len: 4096 }));
    let buf = q.req(slot).buf_mut(4096).as_ptr();
    q.execute(slot, Instant::now());
    let mut done = None;
    for _ in 0..1000 {
        done = q.next_done();
        if done.is_some() {
            break;
        }
        q.poll(Instant::now());
    }
    assert_eq!(done, Some(slot));
    assert!(q.req_ref(slot).cqe.status.is_success());
    // The RAM device would lend its own memory; a keyed-SGL queue reads into the buffer
    // the transport registered.
    assert_eq!(q.c2h_of(slot).as_ptr(), buf);
    assert_eq!(q.c2h_of(slot), &data[..]);
    q.free(slot);
}
