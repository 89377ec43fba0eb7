//! A block device for tests that loses power: writes complete out of order after a
//! random number of polls; with a volatile cache a completed write is durable only
//! once a Flush submitted after its completion completes; without one, once it
//! completes. When the power goes (after a chosen number of requests, or when the test
//! says so), every write that was not durable yet is dropped, applied, or torn (a
//! random subset of its 512-byte sectors lands), and the device fails everything from
//! then on. The image left is what a new device starts from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use lightpool_bdev::{
    check_request, Bdev, BdevError, BdevInfo, IoChannel, IoOp, IoRequest, IoStatus,
};

/// A small deterministic generator (xorshift64*).
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

const SECTOR: usize = 512;

/// A write not durable yet: where, what, and when it completed.
struct Unflushed {
    off: usize,
    data: Vec<u8>,
    /// Completion order; a flush makes durable those completed before it was submitted.
    seq: u64,
}

struct Dev {
    /// What reads see: every completed write.
    live: Vec<u8>,
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    unflushed: Vec<Unflushed>,
    completed: u64,
    /// Requests left before the power goes.
    cut_after: Option<u64>,
    /// Flushes left before the power goes (as the next flush is submitted: the moment
    /// the most writes are in the cache).
    cut_at_flush: Option<u64>,
    /// The image after the cut.
    dead: Option<Vec<u8>>,
    rng: Rng,
    volatile: bool,
    submitted: u64,
    /// Writes submitted, not completed, on any channel (they may land partly at a cut).
    in_flight_writes: Vec<(u64, usize, Vec<u8>)>,
    next_id: u64,
}

impl Dev {
    /// The power goes now: the image that remains.
    fn cut(&mut self) {
        if self.dead.is_some() {
            return;
        }
        let mut img = self.durable.clone();
        let mut pending: Vec<(usize, Vec<u8>)> =
            self.unflushed.drain(..).map(|u| (u.off, u.data)).collect();
        pending.extend(self.in_flight_writes.drain(..).map(|(_, off, d)| (off, d)));
        for (off, data) in pending {
            match self.rng.below(3) {
                0 => {}
                1 => img[off..off + data.len()].copy_from_slice(&data),
                _ => {
                    for s in 0..data.len() / SECTOR {
                        if self.rng.chance(50) {
                            let a = off + s * SECTOR;
                            img[a..a + SECTOR].copy_from_slice(&data[s * SECTOR..(s + 1) * SECTOR]);
                        }
                    }
                }
            }
        }
        self.dead = Some(img);
    }
}

/// The device.
pub struct FaultBdev {
    info: BdevInfo,
    dev: Arc<Mutex<Dev>>,
}

impl FaultBdev {
    pub fn new(image: Vec<u8>, block_size: u32, volatile: bool, seed: u64) -> Arc<FaultBdev> {
        Arc::new(FaultBdev {
            info: BdevInfo {
                name: "faulty".into(),
                block_size,
                num_blocks: (image.len() / block_size as usize) as u64,
                read_only: false,
                volatile_write_cache: volatile,
                supports_deallocate: true,
            },
            dev: Arc::new(Mutex::new(Dev {
                live: image.clone(),
                durable: image,
                unflushed: Vec::new(),
                completed: 0,
                cut_after: None,
                cut_at_flush: None,
                dead: None,
                rng: Rng(seed | 1),
                volatile,
                submitted: 0,
                in_flight_writes: Vec::new(),
                next_id: 0,
            })),
        })
    }

    /// The power goes after `n` more requests.
    pub fn cut_after(&self, n: u64) {
        self.dev.lock().unwrap().cut_after = Some(n);
    }

    /// The power goes as the `n`th flush from now is submitted.
    pub fn cut_at_flush(&self, n: u64) {
        self.dev.lock().unwrap().cut_at_flush = Some(n);
    }

    /// The power goes now.
    pub fn cut_now(&self) {
        self.dev.lock().unwrap().cut();
    }

    /// Requests submitted so far.
    pub fn submitted(&self) -> u64 {
        self.dev.lock().unwrap().submitted
    }

    pub fn is_dead(&self) -> bool {
        self.dev.lock().unwrap().dead.is_some()
    }

    /// What the device holds after the cut (or, alive, what would survive one now
    /// without tearing anything: the durable image).
    pub fn image(&self) -> Vec<u8> {
        let d = self.dev.lock().unwrap();
        d.dead.clone().unwrap_or_else(|| d.durable.clone())
    }
}

impl Bdev for FaultBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn kind(&self) -> &'static str {
        "fault"
    }
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(FaultChannel {
            info: self.info.clone(),
            dev: self.dev.clone(),
            queue: VecDeque::new(),
            rng: Rng(self.dev.lock().unwrap().rng.next() | 1),
        }))
    }
}

struct Queued {
    req: IoRequest,
    polls_left: u32,
    status: IoStatus,
    /// Writes: their id in the device's in-flight list. Flushes: the completion count
    /// at submission.
    id: u64,
}

struct FaultChannel {
    info: BdevInfo,
    dev: Arc<Mutex<Dev>>,
    queue: VecDeque<Queued>,
    rng: Rng,
}

impl IoChannel for FaultChannel {
    unsafe fn submit(&mut self, req: IoRequest) {
        let mut d = self.dev.lock().unwrap();
        d.submitted += 1;
        if let Some(n) = d.cut_after.as_mut() {
            if *n == 0 {
                d.cut();
            } else {
                *n -= 1;
            }
        }
        if req.op == IoOp::Flush {
            if let Some(n) = d.cut_at_flush.as_mut() {
                if *n == 0 {
                    d.cut();
                } else {
                    *n -= 1;
                }
            }
        }
        let status = if d.dead.is_some() {
            IoStatus::Io(libc::EIO)
        } else {
            match check_request(&self.info, &req) {
                Ok(_) => IoStatus::Success,
                Err(s) => s,
            }
        };
        let mut id = 0;
        if status == IoStatus::Success {
            match req.op {
                IoOp::Write | IoOp::WriteZeroes | IoOp::Deallocate => {
                    let off = (req.offset_blocks * u64::from(self.info.block_size)) as usize;
                    let len = req.num_blocks as usize * self.info.block_size as usize;
                    let data = if req.op == IoOp::Write {
                        // SAFETY: the caller keeps the buffer valid until completion;
                        // it is copied now, as a device would DMA it at some point.
                        unsafe { std::slice::from_raw_parts(req.buf, len) }.to_vec()
                    } else {
                        vec![0; len]
                    };
                    d.next_id += 1;
                    id = d.next_id;
                    d.in_flight_writes.push((id, off, data));
                }
                IoOp::Flush => id = d.completed,
                IoOp::Read => {}
            }
        }
        let polls_left = self.rng.below(4) as u32;
        self.queue.push_back(Queued {
            req,
            polls_left,
            status,
            id,
        });
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = 0;
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].polls_left > 0 {
                self.queue[i].polls_left -= 1;
                i += 1;
                continue;
            }
            let q = self.queue.remove(i).expect("index checked");
            let mut st = q.status;
            {
                let mut d = self.dev.lock().unwrap();
                if d.dead.is_some() {
                    st = IoStatus::Io(libc::EIO);
                }
                if st == IoStatus::Success {
                    let bs = self.info.block_size as usize;
                    let off = q.req.offset_blocks as usize * bs;
                    let len = q.req.num_blocks as usize * bs;
                    match q.req.op {
                        IoOp::Read => {
                            // SAFETY: the caller's buffer holds `len` bytes until now.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    d.live[off..].as_ptr(),
                                    q.req.buf,
                                    len,
                                )
                            };
                        }
                        IoOp::Write | IoOp::WriteZeroes | IoOp::Deallocate => {
                            let pos = d
                                .in_flight_writes
                                .iter()
                                .position(|w| w.0 == q.id)
                                .expect("write in flight");
                            let (_, off, data) = d.in_flight_writes.remove(pos);
                            d.live[off..off + data.len()].copy_from_slice(&data);
                            d.completed += 1;
                            if d.volatile {
                                let seq = d.completed;
                                d.unflushed.push(Unflushed { off, data, seq });
                            } else {
                                d.durable[off..off + data.len()].copy_from_slice(&data);
                            }
                        }
                        IoOp::Flush => {
                            let upto = q.id;
                            let (now, later): (Vec<_>, Vec<_>) =
                                d.unflushed.drain(..).partition(|u| u.seq <= upto);
                            for u in now {
                                d.durable[u.off..u.off + u.data.len()].copy_from_slice(&u.data);
                            }
                            d.unflushed = later;
                        }
                    }
                }
            }
            done(q.req.tag, st);
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

/// The device's checks as a plain device (it must behave before it misbehaves).
#[test]
fn the_fault_device_is_a_block_device_until_the_power_goes() {
    let d = FaultBdev::new(vec![0; 1 << 20], 512, true, 7);
    lightpool_bdev::testing::check_round_trip(d.as_ref());
    lightpool_bdev::testing::check_many_in_flight(d.as_ref(), 64);
    // Nothing was flushed: a cut may lose all of it, and never invents data.
    d.cut_now();
    let img = d.image();
    let live_nonzero = img.iter().filter(|&&b| b != 0).count();
    assert!(live_nonzero <= 1 << 20);
    let mut ch = d.open_channel().unwrap();
    let (st, _) = lightpool_bdev::testing::read(ch.as_mut(), 512, 0, 1);
    assert_eq!(st, IoStatus::Io(libc::EIO));
}

/// A flushed write survives any cut; an unflushed one may not.
#[test]
fn flushed_writes_survive_the_cut() {
    for seed in 1..20 {
        let d = FaultBdev::new(vec![0; 64 << 10], 512, true, seed);
        let mut ch = d.open_channel().unwrap();
        let a = lightpool_bdev::testing::pattern(512, 0, 4, 1);
        assert_eq!(
            lightpool_bdev::testing::write(ch.as_mut(), 512, 0, &a),
            IoStatus::Success
        );
        let f = IoRequest::no_data(IoOp::Flush, 0, 0, 9);
        assert_eq!(
            lightpool_bdev::testing::run1(ch.as_mut(), f),
            IoStatus::Success
        );
        let b = lightpool_bdev::testing::pattern(512, 8, 4, 2);
        assert_eq!(
            lightpool_bdev::testing::write(ch.as_mut(), 512, 8, &b),
            IoStatus::Success
        );
        d.cut_now();
        let img = d.image();
        assert_eq!(&img[..2048], &a[..]);
        for s in 0..4 {
            let got = &img[(8 + s) * 512..(9 + s) * 512];
            assert!(got == &b[s * 512..(s + 1) * 512] || got.iter().all(|&x| x == 0));
        }
    }
}
