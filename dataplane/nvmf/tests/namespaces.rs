//! Namespaces changed at run time under connected queues: the controller raises the
//! Namespace Attribute Changed event and its Changed Namespace List names the
//! namespace; queues take the new table without reconnecting; a removed namespace's
//! requests in flight finish and its device is let go only then; other namespaces'
//! I/O goes on; the state region follows every change; a deleted subsystem fails its
//! controllers and leaves the region.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightpool_bdev::{Bdev, BdevError, BdevInfo, IoChannel, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::queue::Exec;
use lightpool_nvmf::region::{Region, LAYOUT};
use lightpool_nvmf::restore::read_image;
use lightpool_nvmf::target::region_params;
use lightpool_nvmf::{NamespaceConfig, NvmfQueue, SubsystemConfig, Target, TargetOptions, Xfer};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::features::{aen, fid};
use lightpool_spec::identify::IdentifyNamespace;
use lightpool_spec::log::{lid, GetLogPage};
use lightpool_spec::nvme::{
    admin_opcode, io_opcode, reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{generic, Status};

const NQN: &str = "nqn.2024-01.io.lightpool:dynamic";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";

/// A device whose requests complete only once its gate is open: requests can be held
/// in flight while the namespace is removed.
struct Gated {
    info: BdevInfo,
    open: Arc<AtomicBool>,
    channels_open: Arc<Mutex<usize>>,
}

struct GatedChannel {
    open: Arc<AtomicBool>,
    held: VecDeque<u64>,
    channels_open: Arc<Mutex<usize>>,
}

impl Bdev for Gated {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn kind(&self) -> &'static str {
        "gated"
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        *self.channels_open.lock().expect("lock") += 1;
        Ok(Box::new(GatedChannel {
            open: self.open.clone(),
            held: VecDeque::new(),
            channels_open: self.channels_open.clone(),
        }))
    }
}

impl IoChannel for GatedChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        self.held.push_back(req.tag);
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        if !self.open.load(Ordering::Acquire) {
            return 0;
        }
        let n = self.held.len();
        while let Some(t) = self.held.pop_front() {
            done(t, IoStatus::Success);
        }
        n
    }
    fn in_flight(&self) -> usize {
        self.held.len()
    }
}

impl Drop for GatedChannel {
    fn drop(&mut self) {
        *self.channels_open.lock().expect("lock") -= 1;
    }
}

fn memfd() -> std::fs::File {
    use std::os::fd::FromRawFd;
    let name = std::ffi::CString::new("ns-test").expect("no NUL");
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a new descriptor we own.
    unsafe { std::fs::File::from_raw_fd(fd) }
}

fn target() -> (Arc<Target>, Arc<Region>) {
    let t = Target::new(TargetOptions::default()).expect("options");
    let (sizes, ropts) = region_params(&t.opts);
    let region = Region::create(memfd(), sizes, ropts, LAYOUT).expect("region");
    t.attach_region(region.clone()).expect("attach");
    let mut sc = SubsystemConfig::new(NQN);
    sc.namespaces.push(NamespaceConfig::new(
        1,
        MallocBdev::new("ram1", 4 << 20, 512).expect("RAM"),
    ));
    t.add_subsystem(sc).expect("subsystem");
    (t, region)
}

fn submit(q: &mut NvmfQueue<()>, sqe: Sqe, h2c: &[u8]) -> u16 {
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
    slot
}

fn wait(q: &mut NvmfQueue<()>, slot: u16) -> (Cqe, Vec<u8>) {
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

fn run(q: &mut NvmfQueue<()>, sqe: Sqe, h2c: &[u8]) -> (Cqe, Vec<u8>) {
    let slot = submit(q, sqe, h2c);
    wait(q, slot)
}

fn sgl(sqe: &mut Sqe, len: u32, in_capsule: bool) {
    sqe.dptr = SglDescriptor {
        address: 0,
        length: len,
        id: if in_capsule {
            SGL_DATA_BLOCK_OFFSET
        } else {
            SGL_TRANSPORT_DATA_BLOCK
        },
    }
    .to_bytes();
}

fn connect(t: &Arc<Target>, qid: u16, cntlid: u16) -> (NvmfQueue<()>, Cqe) {
    let mut q = NvmfQueue::new(t.clone(), 0);
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(1);
    sgl(&mut sqe, 1024, true);
    let data = ConnectData::new([9; 16], cntlid, NQN, HOST).to_bytes();
    let (c, _) = run(&mut q, sqe, &data);
    (q, c)
}

/// An enabled controller asking for namespace notices, with one AER parked, and an I/O
/// queue.
fn queues(t: &Arc<Target>) -> (NvmfQueue<()>, NvmfQueue<()>, u16) {
    let (mut a, c) = connect(t, 0, CNTLID_DYNAMIC);
    assert!(c.status.is_success(), "{}", c.status);
    let cc = PropertyCommand {
        size8: false,
        offset: reg::CC,
        value: 0x0046_0001,
    }
    .to_set_sqe(2);
    assert!(run(&mut a, cc, &[]).0.status.is_success());
    let mut sf = Sqe {
        opcode: admin_opcode::SET_FEATURES,
        cid: 3,
        cdw10: u32::from(fid::ASYNC_EVENT_CONFIG),
        cdw11: 1 << 8,
        ..Default::default()
    };
    sgl(&mut sf, 0, false);
    assert!(run(&mut a, sf, &[]).0.status.is_success());
    let (io, c2) = connect(t, 1, c.dw0 as u16);
    assert!(c2.status.is_success(), "{}", c2.status);
    (a, io, c.dw0 as u16)
}

fn aer(a: &mut NvmfQueue<()>) -> u16 {
    let mut sqe = Sqe {
        opcode: admin_opcode::ASYNC_EVENT_REQUEST,
        cid: 40,
        ..Default::default()
    };
    sgl(&mut sqe, 0, false);
    let slot = submit(a, sqe, &[]);
    a.poll(Instant::now());
    assert!(a.next_done().is_none(), "no event yet");
    slot
}

fn changed_list(a: &mut NvmfQueue<()>) -> Vec<u32> {
    let mut sqe = GetLogPage {
        lid: lid::CHANGED_NS_LIST,
        lsp: 0,
        rae: false,
        numd: 4096 / 4,
        lpo: 0,
        lsi: 0,
    }
    .to_sqe(41, 0xFFFF_FFFF);
    sgl(&mut sqe, 4096, false);
    let (c, d) = run(a, sqe, &[]);
    assert!(c.status.is_success());
    d.chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .take_while(|&n| n != 0)
        .collect()
}

fn nsze(a: &mut NvmfQueue<()>, nsid: u32) -> u64 {
    let mut sqe = Sqe {
        opcode: admin_opcode::IDENTIFY,
        nsid,
        cid: 42,
        cdw10: 0,
        ..Default::default()
    };
    sgl(&mut sqe, 4096, false);
    let (c, d) = run(a, sqe, &[]);
    assert!(c.status.is_success());
    IdentifyNamespace::parse(d.as_slice().try_into().expect("4096 bytes")).nsze
}

fn rw(opcode: u8, nsid: u32, lba: u64, blocks: u32) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        nsid,
        cid: 11,
        cdw10: lba as u32,
        cdw11: (lba >> 32) as u32,
        cdw12: blocks - 1,
        ..Default::default()
    };
    sgl(
        &mut sqe,
        blocks * 512,
        opcode == io_opcode::WRITE && blocks <= 8,
    );
    sqe
}

fn expect_event(a: &mut NvmfQueue<()>, slot: u16) {
    let mut got = None;
    for _ in 0..100 {
        a.poll(Instant::now());
        if let Some(s) = a.next_done() {
            got = Some(s);
            break;
        }
    }
    assert_eq!(got, Some(slot), "the AER completed");
    let dw0 = a.req(slot).cqe.dw0;
    a.free(slot);
    assert_eq!(
        dw0,
        aen::dw0(aen::NOTICE, aen::NS_ATTR_CHANGED, lid::CHANGED_NS_LIST)
    );
}

#[test]
fn add_resize_remove_under_connected_queues() {
    let (t, region) = target();
    let s = t.subsystems()[0].clone();
    let (mut a, mut io, _) = queues(&t);
    // I/O to a namespace not there yet.
    let (c, _) = run(&mut io, rw(io_opcode::READ, 2, 0, 1), &[]);
    assert_eq!(
        c.status,
        Status::generic(generic::INVALID_NAMESPACE).with_dnr()
    );

    // Added: event, changed list, identify, and I/O on the same I/O queue.
    let ev = aer(&mut a);
    let dev2: Arc<dyn Bdev> = MallocBdev::new("ram2", 2 << 20, 512).expect("RAM");
    let mut cfg = NamespaceConfig::new(2, dev2.clone());
    cfg.num_blocks = Some(1024);
    s.add_namespace(cfg).expect("add");
    expect_event(&mut a, ev);
    assert_eq!(changed_list(&mut a), vec![2]);
    assert_eq!(changed_list(&mut a), Vec::<u32>::new(), "read clears it");
    assert_eq!(nsze(&mut a, 2), 1024);
    let data = vec![0x5a; 4096];
    assert!(run(&mut io, rw(io_opcode::WRITE, 2, 8, 8), &data)
        .0
        .status
        .is_success());
    let (c, d) = run(&mut io, rw(io_opcode::READ, 2, 8, 8), &[]);
    assert!(c.status.is_success());
    assert_eq!(d, data);
    // NSID 0 or past 32, and a second add of the same NSID, are refused.
    assert!(s
        .add_namespace(NamespaceConfig::new(0, dev2.clone()))
        .is_err());
    assert!(s
        .add_namespace(NamespaceConfig::new(33, dev2.clone()))
        .is_err());
    assert!(s
        .add_namespace(NamespaceConfig::new(2, dev2.clone()))
        .is_err());

    // Resized to all of its device: the host sees the new size; LBAs past it fail.
    let ev = aer(&mut a);
    s.resize_namespace(2, None).expect("resize");
    expect_event(&mut a, ev);
    assert_eq!(changed_list(&mut a), vec![2]);
    assert_eq!(nsze(&mut a, 2), 4096);
    assert!(run(&mut io, rw(io_opcode::READ, 2, 4000, 8), &[])
        .0
        .status
        .is_success());
    let (c, d) = run(&mut io, rw(io_opcode::READ, 2, 8, 8), &[]);
    assert!(c.status.is_success());
    assert_eq!(d, data, "same device, same data");
    assert!(
        s.resize_namespace(2, Some(5000)).is_err(),
        "past the device"
    );

    // Region records follow.
    let img = read_image(&region, false).expect("image");
    let ns: Vec<(u32, u64)> = img.target.subsystems[0]
        .namespaces
        .iter()
        .map(|n| (n.nsid, n.num_blocks))
        .collect();
    assert_eq!(ns, vec![(1, 8192), (2, 4096)]);

    // Removed: event, I/O refused, namespace 1 untouched; device let go.
    let ev = aer(&mut a);
    s.remove_namespace(2).expect("remove");
    expect_event(&mut a, ev);
    assert_eq!(changed_list(&mut a), vec![2]);
    let (c, _) = run(&mut io, rw(io_opcode::READ, 2, 0, 1), &[]);
    assert_eq!(
        c.status,
        Status::generic(generic::INVALID_NAMESPACE).with_dnr()
    );
    assert!(run(&mut io, rw(io_opcode::READ, 1, 0, 8), &[])
        .0
        .status
        .is_success());
    assert_eq!(
        Arc::strong_count(&dev2),
        1,
        "nothing but this test holds the removed device"
    );
    let img = read_image(&region, false).expect("image");
    assert_eq!(img.target.subsystems[0].namespaces.len(), 1);
}

#[test]
fn a_removed_namespace_lets_go_of_its_device_after_its_last_request() {
    let (t, _) = target();
    let s = t.subsystems()[0].clone();
    let open = Arc::new(AtomicBool::new(false));
    let channels = Arc::new(Mutex::new(0));
    let gated: Arc<dyn Bdev> = Arc::new(Gated {
        info: BdevInfo {
            name: "gated".into(),
            block_size: 512,
            num_blocks: 1024,
            read_only: false,
            volatile_write_cache: false,
            supports_deallocate: false,
        },
        open: open.clone(),
        channels_open: channels.clone(),
    });
    s.add_namespace(NamespaceConfig::new(3, gated.clone()))
        .expect("add");
    let (mut a, mut io, _) = queues(&t);
    // Two reads held in flight on namespace 3.
    let held: Vec<u16> = (0..2)
        .map(|i| {
            let mut sqe = rw(io_opcode::READ, 3, i * 8, 8);
            sqe.cid = 60 + i as u16;
            submit(&mut io, sqe, &[])
        })
        .collect();
    assert_eq!(io.bdev_in_flight(), 2);
    s.remove_namespace(3).expect("remove while in flight");
    // Namespace 1 serves on meanwhile.
    assert!(run(&mut io, rw(io_opcode::READ, 1, 0, 8), &[])
        .0
        .status
        .is_success());
    assert_eq!(
        *channels.lock().expect("lock"),
        1,
        "channel kept for its requests"
    );
    assert!(Arc::strong_count(&gated) > 1, "device still held");
    open.store(true, Ordering::Release);
    for slot in held {
        let (c, _) = wait(&mut io, slot);
        assert!(c.status.is_success(), "{}", c.status);
    }
    io.poll(Instant::now());
    // Every queue (the admin queue too) lets go of the table at its next poll.
    a.poll(Instant::now());
    assert_eq!(io.bdev_in_flight(), 0);
    assert_eq!(*channels.lock().expect("lock"), 0, "channel closed");
    assert_eq!(Arc::strong_count(&gated), 1, "device let go");
}

#[test]
fn a_deleted_subsystem_fails_its_controllers_and_leaves_the_region() {
    let (t, region) = target();
    let (mut a, mut io, _) = queues(&t);
    let s = t
        .remove_subsystem(NQN, Duration::from_millis(50), || {})
        .expect("remove");
    assert!(s.is_removed());
    a.poll(Instant::now());
    io.poll(Instant::now());
    assert_eq!(a.state(), lightpool_nvmf::queue::QueueState::Failed);
    assert_eq!(io.state(), lightpool_nvmf::queue::QueueState::Failed);
    a.close();
    io.close();
    assert!(t.find_subsystem(NQN).is_none());
    assert!(t.remove_subsystem(NQN, Duration::ZERO, || {}).is_err());
    let img = read_image(&region, false).expect("image");
    assert!(img.target.subsystems.is_empty());
    // Connect to it is refused.
    let (_, c) = connect(&t, 0, CNTLID_DYNAMIC);
    assert!(!c.status.is_success());
    // A subsystem of the same name can be made again.
    t.add_subsystem(SubsystemConfig::new(NQN)).expect("again");
    assert_eq!(
        read_image(&region, false)
            .expect("image")
            .target
            .subsystems
            .len(),
        1
    );
    let _ = Exec::Done;
}
