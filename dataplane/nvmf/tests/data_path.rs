//! The target core's one data path, driven through `NvmfQueue` as a transport would:
//! the queue asks the namespace's channel to serve a read by reference or take a write
//! in place, and submits the I/O when it declines. Served here by a device written in
//! this test: a window onto a RAM device at a block offset (what a thin volume does per
//! cluster), which translates the offset and passes in-place I/O through to RAM, or
//! declines it; and which may offer a DMA pool, whose buffers the target then uses for
//! every request it submits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lightpool_bdev::{Bdev, BdevError, BdevInfo, DataRef, IoChannel, IoRequest, IoStatus};
use lightpool_bdev_ram::MallocBdev;
use lightpool_dma::{DmaMapper, DmaPool, HugePages, PoolOptions};
use lightpool_nvmf::queue::Exec;
use lightpool_nvmf::{NamespaceConfig, NvmfQueue, SubsystemConfig, Target, TargetOptions, Xfer};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::nvme::{
    io_opcode, reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{generic, Status};

const NQN: &str = "nqn.2024-01.io.lightpool:data-path";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:data-path-host";
const BS: u32 = 512;
/// Where the window starts on the RAM device, in blocks.
const BASE: u64 = 1000;
const WINDOW: u64 = 2048;

/// Blocks `BASE..BASE+WINDOW` of `inner`, as a device of its own.
struct Window {
    inner: Arc<dyn Bdev>,
    info: BdevInfo,
    /// Whether its channels pass in-place I/O through (else they decline it).
    in_place: bool,
    /// The DMA pool it offers, if any; submitted buffers are checked against it.
    pool: Option<Arc<DmaPool>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    submitted: AtomicU64,
    /// Submitted reads and writes whose buffer lay outside the offered pool: what a
    /// device behind DMA would have to bounce.
    outside_pool: AtomicU64,
}

impl Window {
    fn over(inner: Arc<dyn Bdev>, in_place: bool, pool: Option<Arc<DmaPool>>) -> Arc<Window> {
        let mut info = inner.info().clone();
        info.name = format!("window:{}", info.name);
        info.num_blocks = WINDOW;
        Arc::new(Window {
            inner,
            info,
            in_place,
            pool,
            counts: Arc::default(),
        })
    }
}

impl Bdev for Window {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn kind(&self) -> &'static str {
        "window"
    }
    fn children(&self) -> Vec<Arc<dyn Bdev>> {
        vec![self.inner.clone()]
    }
    fn dma_pool(&self) -> Option<Arc<DmaPool>> {
        self.pool.clone()
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(WindowChannel {
            inner: self.inner.open_channel()?,
            in_place: self.in_place,
            pool: self.pool.clone(),
            counts: self.counts.clone(),
        }))
    }
}

struct WindowChannel {
    inner: Box<dyn IoChannel>,
    in_place: bool,
    pool: Option<Arc<DmaPool>>,
    counts: Arc<Counts>,
}

impl WindowChannel {
    /// The range on the device under it, when it lies inside the window.
    fn translate(offset_blocks: u64, num_blocks: u32) -> Option<u64> {
        let end = offset_blocks.checked_add(u64::from(num_blocks))?;
        (end <= WINDOW).then_some(BASE + offset_blocks)
    }
}

impl IoChannel for WindowChannel {
    unsafe fn submit(&mut self, mut req: IoRequest) {
        self.counts.submitted.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.pool {
            if !req.buf.is_null() && p.iova_of(req.buf, req.len).is_none() {
                self.counts.outside_pool.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Out of the window: past the end of the device under it, which refuses it.
        req.offset_blocks = Self::translate(req.offset_blocks, req.num_blocks).unwrap_or(u64::MAX);
        // SAFETY: the caller's contract for the buffer is passed on unchanged.
        unsafe { self.inner.submit(req) }
    }
    fn read_in_place(&mut self, offset_blocks: u64, num_blocks: u32) -> Option<DataRef> {
        if !self.in_place {
            return None;
        }
        self.inner
            .read_in_place(Self::translate(offset_blocks, num_blocks)?, num_blocks)
    }
    fn write_in_place(&mut self, offset_blocks: u64, num_blocks: u32, data: &[u8]) -> bool {
        self.in_place
            && Self::translate(offset_blocks, num_blocks)
                .is_some_and(|at| self.inner.write_in_place(at, num_blocks, data))
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.inner.poll(done)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

/// A DMA pool registered with a mapper that hands out made-up IOVAs, as a VFIO
/// device's pool is registered with the IOMMU.
fn registered_pool() -> Arc<DmaPool> {
    struct Iommu(Mutex<u64>);
    impl DmaMapper for Iommu {
        fn map(&self, _vaddr: usize, len: usize) -> Result<u64, std::io::Error> {
            let mut next = self.0.lock().expect("lock");
            let iova = *next;
            *next += len as u64;
            Ok(iova)
        }
        fn unmap(&self, _iova: u64, _len: usize) -> Result<(), std::io::Error> {
            Ok(())
        }
    }
    DmaPool::new(
        &PoolOptions {
            buf_size: 128 * 1024,
            count: 64,
            cache_size: 8,
            hugepages: HugePages::Off,
        },
        Some(Arc::new(Iommu(Mutex::new(1 << 32)))),
    )
    .expect("pool")
}

fn target(dev: Arc<dyn Bdev>) -> Arc<Target> {
    let t = Target::new(TargetOptions::default()).expect("valid options");
    let mut sc = SubsystemConfig::new(NQN);
    sc.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev: dev,
        nguid: None,
        uuid: None,
        anagrpid: None,
        num_blocks: None,
    });
    t.add_subsystem(sc).expect("valid subsystem");
    t
}

/// How a command went: its completion, its C2H data, and whether `execute` finished it
/// at once (no block-device round trip).
struct Ran {
    cqe: Cqe,
    data: Vec<u8>,
    /// Where the C2H data was sent from.
    data_at: *const u8,
    at_once: bool,
}

/// Runs one command as a transport would; host data in the capsule goes through
/// `execute_write_from` (straight from the "receive buffer") when `direct`.
fn run(q: &mut NvmfQueue<()>, sqe: Sqe, h2c: &[u8], direct: bool) -> Ran {
    let slot = q.alloc(&sqe).expect("free slot");
    let incap = if sqe.sgl().id == SGL_DATA_BLOCK_OFFSET {
        h2c.len() as u32
    } else {
        0
    };
    let now = Instant::now();
    let exec = match q.prepare(slot, incap) {
        Ok(Xfer::H2C { len, .. }) if direct => {
            assert_eq!(len as usize, h2c.len());
            q.execute_write_from(slot, h2c, now)
                .expect("a write on an I/O queue")
        }
        Ok(Xfer::H2C { len, .. }) => {
            q.req(slot).buf_mut(len as usize)[..h2c.len()].copy_from_slice(h2c);
            q.execute(slot, now)
        }
        Ok(_) => q.execute(slot, now),
        Err(_) => Exec::Done,
    };
    let at_once = exec == Exec::Done;
    for _ in 0..1000 {
        if let Some(done) = q.next_done() {
            assert_eq!(done, slot);
            let cqe = q.req(slot).cqe;
            let data = q.c2h_of(slot).to_vec();
            let data_at = q.c2h_of(slot).as_ptr();
            q.free(slot);
            return Ran {
                cqe,
                data,
                data_at,
                at_once,
            };
        }
        q.poll(Instant::now());
    }
    panic!("command did not complete");
}

fn connect(t: &Arc<Target>, qid: u16, cntlid: u16) -> (NvmfQueue<()>, Cqe) {
    let mut q = NvmfQueue::new(t.clone(), 0);
    let mut sqe = ConnectCommand {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr: 0,
        kato: 5000,
    }
    .to_sqe(1);
    sqe.dptr = SglDescriptor {
        address: 0,
        length: 1024,
        id: SGL_DATA_BLOCK_OFFSET,
    }
    .to_bytes();
    let data = ConnectData::new([9; 16], cntlid, NQN, HOST).to_bytes();
    let r = run(&mut q, sqe, &data, false);
    (q, r.cqe)
}

/// An admin queue (controller enabled) and an I/O queue.
fn queues(t: &Arc<Target>) -> (NvmfQueue<()>, NvmfQueue<()>) {
    let (mut a, c) = connect(t, 0, CNTLID_DYNAMIC);
    assert!(c.status.is_success(), "{}", c.status);
    let cc = PropertyCommand {
        size8: false,
        offset: reg::CC,
        value: 0x0046_0001,
    }
    .to_set_sqe(2);
    assert!(run(&mut a, cc, &[], false).cqe.status.is_success());
    let (io, c2) = connect(t, 1, c.dw0 as u16);
    assert!(c2.status.is_success(), "{}", c2.status);
    (a, io)
}

fn rw(opcode: u8, lba: u64, blocks: u32, in_capsule: bool) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        nsid: 1,
        cid: 11,
        cdw10: lba as u32,
        cdw11: (lba >> 32) as u32,
        cdw12: blocks - 1,
        ..Default::default()
    };
    sqe.dptr = SglDescriptor {
        address: 0,
        length: blocks * BS,
        id: if in_capsule {
            SGL_DATA_BLOCK_OFFSET
        } else {
            SGL_TRANSPORT_DATA_BLOCK
        },
    }
    .to_bytes();
    sqe
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}

/// Reads of the stacked device are sent from the RAM device's own memory, at the
/// translated offset, with no block-device round trip; writes land there in place,
/// from the "receive buffer" or from the request's buffer.
#[test]
fn a_stacked_device_passes_reads_by_reference_and_writes_in_place() {
    let ram = MallocBdev::new("ram", 4 << 20, BS).expect("RAM");
    let win = Window::over(ram.clone(), true, None);
    let t = target(win.clone());
    let (_a, mut io) = queues(&t);

    // In-capsule write, straight from the receive buffer.
    let a = pattern(4096, 1);
    let w = run(&mut io, rw(io_opcode::WRITE, 10, 8, true), &a, true);
    assert!(w.cqe.status.is_success(), "{}", w.cqe.status);
    assert!(w.at_once, "written in place, no round trip");
    // A write whose data came through the request's buffer (R2T).
    let b = pattern(16384, 2);
    let w = run(&mut io, rw(io_opcode::WRITE, 100, 32, false), &b, false);
    assert!(w.cqe.status.is_success() && w.at_once);
    let mut on_ram = vec![0u8; 4096];
    ram.read_at((BASE + 10) * u64::from(BS), &mut on_ram)
        .expect("in range");
    assert_eq!(on_ram, a, "at the translated offset");

    // Reads: by reference to the RAM device's memory, where the data is.
    let r = run(&mut io, rw(io_opcode::READ, 10, 8, false), &[], false);
    assert!(r.cqe.status.is_success() && r.at_once);
    assert_eq!(r.data, a);
    let mut ram_ch = ram.open_channel().expect("channel");
    let there = ram_ch
        .read_in_place(BASE + 10, 8)
        .expect("RAM reads in place");
    // SAFETY: `ram_ch` outlives the slice.
    let there = unsafe { there.as_slice() }.as_ptr();
    assert_eq!(r.data_at, there, "sent from the device's memory itself");
    let r = run(&mut io, rw(io_opcode::READ, 100, 32, false), &[], false);
    assert_eq!(r.data, b);
    assert_eq!(win.counts.submitted.load(Ordering::Relaxed), 0);
    assert_eq!(io.bdev_in_flight(), 0);

    // The window's end holds for in-place I/O as for submitted I/O.
    let r = run(
        &mut io,
        rw(io_opcode::READ, WINDOW - 4, 8, false),
        &[],
        false,
    );
    assert_eq!(
        r.cqe.status,
        Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr()
    );
}

/// The same device declining in-place I/O: the queue submits, and the host sees the
/// same bytes.
#[test]
fn a_device_that_declines_is_submitted_to() {
    let ram = MallocBdev::new("ram", 4 << 20, BS).expect("RAM");
    let win = Window::over(ram.clone(), false, None);
    let t = target(win.clone());
    let (_a, mut io) = queues(&t);
    let a = pattern(4096, 3);
    let w = run(&mut io, rw(io_opcode::WRITE, 7, 8, true), &a, true);
    assert!(w.cqe.status.is_success(), "{}", w.cqe.status);
    assert!(!w.at_once, "submitted");
    let r = run(&mut io, rw(io_opcode::READ, 7, 8, false), &[], false);
    assert!(r.cqe.status.is_success() && !r.at_once);
    assert_eq!(r.data, a);
    let mut on_ram = vec![0u8; 4096];
    ram.read_at((BASE + 7) * u64::from(BS), &mut on_ram)
        .expect("in range");
    assert_eq!(on_ram, a);
    assert_eq!(win.counts.submitted.load(Ordering::Relaxed), 2);
}

/// A device that offers a DMA pool gets every submitted buffer from it: in-capsule
/// writes (through execute_write_from too), R2T writes, reads, Compare's second buffer;
/// and its C2H data is sent from the pool buffer it was read into.
#[test]
fn request_buffers_come_from_the_pool_a_device_offers() {
    let ram = MallocBdev::new("ram", 4 << 20, BS).expect("RAM");
    let pool = registered_pool();
    let win = Window::over(ram, false, Some(pool.clone()));
    let t = target(win.clone());
    assert!(
        t.buffers().is_pool(&pool),
        "the target took the device's pool"
    );
    let (mut adm, mut io) = queues(&t);
    let a = pattern(8192, 4);
    let b = pattern(65536, 5);
    for _ in 0..3 {
        let w = run(&mut io, rw(io_opcode::WRITE, 0, 16, true), &a, true);
        assert!(w.cqe.status.is_success(), "{}", w.cqe.status);
        let w = run(&mut io, rw(io_opcode::WRITE, 16, 16, true), &a, false);
        assert!(w.cqe.status.is_success());
        let w = run(&mut io, rw(io_opcode::WRITE, 64, 128, false), &b, false);
        assert!(w.cqe.status.is_success());
        let r = run(&mut io, rw(io_opcode::READ, 64, 128, false), &[], false);
        assert_eq!(r.data, b);
        assert!(
            pool.iova_of(r.data_at, b.len()).is_some(),
            "read into a pool buffer and sent from it"
        );
        let c = run(&mut io, rw(io_opcode::COMPARE, 0, 16, false), &a, false);
        assert!(c.cqe.status.is_success(), "{}", c.cqe.status);
    }
    assert_eq!(win.counts.submitted.load(Ordering::Relaxed), 15);
    assert_eq!(
        win.counts.outside_pool.load(Ordering::Relaxed),
        0,
        "a buffer the device would have to bounce"
    );
    assert_eq!(t.buffers().overflows(), 0);

    // The slots keep their buffers while the queues are busy, and give them back once
    // the queues have been idle a moment.
    let taken: Vec<_> = std::iter::from_fn(|| pool.get()).collect();
    assert!(taken.len() < pool.count(), "the slots hold some");
    for b in taken {
        pool.put(b);
    }
    let later = Instant::now() + std::time::Duration::from_millis(1);
    for q in [&mut adm, &mut io] {
        q.poll(later);
        q.poll(later + std::time::Duration::from_millis(1));
    }
    let all: Vec<_> = std::iter::from_fn(|| pool.get()).collect();
    assert_eq!(all.len(), pool.count(), "every buffer back in the pool");
    for b in all {
        pool.put(b);
    }
}

/// A command held across a hot upgrade keeps its data, in memory of the new queue's
/// slot's own rather than the device's pool (whose pages the predecessor may still use
/// if the upgrade fails), and runs when the queue resumes.
#[test]
fn held_data_comes_over_in_the_slots_own_memory() {
    let ram = MallocBdev::new("ram", 4 << 20, BS).expect("RAM");
    let pool = registered_pool();
    let win = Window::over(ram.clone(), false, Some(pool.clone()));
    let t = target(win);
    let (_a, mut io) = queues(&t);
    io.quiesce();
    let data = pattern(4096, 6);
    let slot = io
        .alloc(&rw(io_opcode::WRITE, 40, 8, true))
        .expect("free slot");
    io.prepare(slot, data.len() as u32).expect("valid write");
    io.req(slot).buf_mut(data.len()).copy_from_slice(&data);
    assert!(
        io.req_ref(slot).buf_registration().iova.is_some(),
        "a pool buffer"
    );
    assert_eq!(io.execute(slot, Instant::now()), Exec::Pending, "held");
    assert!(io.is_drained());
    let snap = io.export_state(Instant::now(), |_, _| data.len());
    let mut next: NvmfQueue<()> =
        NvmfQueue::import_state(t.clone(), &snap, Instant::now(), 0).expect("import");
    assert_eq!(next.req(slot).buf(data.len()), data.as_slice());
    assert_eq!(
        next.req_ref(slot).buf_registration(),
        Default::default(),
        "not in the pool"
    );
    next.resume(Instant::now());
    let mut done = None;
    for _ in 0..1000 {
        done = next.next_done();
        if done.is_some() {
            break;
        }
        next.poll(Instant::now());
    }
    assert_eq!(done, Some(slot));
    assert!(next.req(slot).cqe.status.is_success());
    let mut on_ram = vec![0u8; data.len()];
    ram.read_at((BASE + 40) * u64::from(BS), &mut on_ram)
        .expect("in range");
    assert_eq!(on_ram, data);
}
