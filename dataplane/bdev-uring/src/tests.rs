use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use lightpool_bdev::testing::*;
use lightpool_bdev::{Adopter, Adoption, Bdev, BdevError, IoOp, IoRequest, IoStatus};

use crate::{UringAdopter, UringBdev, UringOptions};

fn file_of(size: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(size).unwrap();
    f
}

fn open(path: &Path, opts: UringOptions) -> Arc<UringBdev> {
    UringBdev::open(path, opts).unwrap()
}

fn err(path: &Path, opts: UringOptions) -> String {
    UringBdev::open(path, opts).unwrap_err().to_string()
}

fn buffered() -> UringOptions {
    UringOptions {
        direct: false,
        ..UringOptions::default()
    }
}

#[test]
fn defaults() {
    let o = UringOptions::default();
    assert_eq!(o.block_size, None);
    assert!(!o.read_only);
    assert!(o.direct);
    assert_eq!(o.queue_depth, 128);
}

#[test]
fn file_info() {
    let f = file_of(8 << 20);
    let d = open(f.path(), UringOptions::default());
    let info = d.info();
    assert_eq!(info.name, f.path().display().to_string());
    assert_eq!(info.block_size, 4096, "files default to 4096-byte blocks");
    assert_eq!(info.num_blocks, 2048);
    assert!(!info.read_only);
    assert!(info.volatile_write_cache);
    assert!(info.supports_deallocate, "ext4/xfs/tmpfs punch holes");
    assert!(d.is_direct());
    assert!(!d.is_block_device());
}

#[test]
fn round_trip_direct_and_buffered() {
    let f = file_of(8 << 20);
    check_round_trip(&*open(f.path(), UringOptions::default()));
    let f = file_of(8 << 20);
    check_round_trip(&*open(f.path(), buffered()));
    let f = file_of(8 << 20);
    let opts = UringOptions {
        block_size: Some(512),
        ..buffered()
    };
    check_round_trip(&*open(f.path(), opts));
}

#[test]
fn data_reaches_the_file() {
    let f = file_of(1 << 20);
    let d = open(f.path(), UringOptions::default());
    let mut ch = d.open_channel().unwrap();
    let data = pattern(4096, 3, 2, 0x42);
    assert_eq!(write(ch.as_mut(), 4096, 3, &data), IoStatus::Success);
    assert_eq!(
        run1(ch.as_mut(), IoRequest::no_data(IoOp::Flush, 0, 0, 1)),
        IoStatus::Success
    );
    let on_disk = std::fs::read(f.path()).unwrap();
    assert_eq!(&on_disk[3 * 4096..5 * 4096], data.as_slice());
}

#[test]
fn out_of_range() {
    let f = file_of(4 << 20);
    check_out_of_range(&*open(f.path(), UringOptions::default()));
}

#[test]
fn flush() {
    let f = file_of(4 << 20);
    check_flush(&*open(f.path(), UringOptions::default()));
}

#[test]
fn write_zeroes_and_deallocate_read_back_zeroes() {
    let f = file_of(4 << 20);
    check_zeroes_and_deallocate(&*open(f.path(), UringOptions::default()));
    let f = file_of(4 << 20);
    let opts = UringOptions {
        block_size: Some(512),
        ..buffered()
    };
    check_zeroes_and_deallocate(&*open(f.path(), opts));
}

/// Write Zeroes on a file gives the space back: a pool formatted on a sparse file
/// (zeroing its whole data area) must not allocate it.
#[test]
fn write_zeroes_on_a_file_leaves_it_sparse() {
    use std::os::unix::fs::MetadataExt;
    let f = file_of(16 << 20);
    let d = open(f.path(), UringOptions::default());
    let mut ch = d.open_channel().unwrap();
    let data = pattern(4096, 0, 1024, 5);
    assert_eq!(write(ch.as_mut(), 4096, 0, &data), IoStatus::Success);
    let allocated = || f.as_file().metadata().unwrap().blocks() * 512;
    assert!(allocated() >= 4 << 20, "written: {}", allocated());
    let st = run1(
        ch.as_mut(),
        IoRequest::no_data(IoOp::WriteZeroes, 0, 4096, 1),
    );
    assert_eq!(st, IoStatus::Success);
    assert!(
        allocated() < 1 << 20,
        "zeroed but allocated: {}",
        allocated()
    );
    let (_, buf) = read(ch.as_mut(), 4096, 0, 1024);
    assert!(buf.as_slice().iter().all(|&b| b == 0));
}

/// tmpfs cannot FALLOC_FL_ZERO_RANGE, so Write Zeroes falls back to writing zeroes.
#[test]
fn write_zeroes_falls_back_where_zero_range_is_refused() {
    if !Path::new("/dev/shm").is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let f = tempfile::Builder::new().tempfile_in("/dev/shm").unwrap();
    // Larger than the zero buffer, so the fallback takes several writes.
    f.as_file().set_len(4 << 20).unwrap();
    let d = open(f.path(), buffered());
    check_zeroes_and_deallocate(&*d);
    let mut ch = d.open_channel().unwrap();
    let data = pattern(4096, 10, 200, 9);
    assert_eq!(write(ch.as_mut(), 4096, 10, &data), IoStatus::Success);
    let st = run1(
        ch.as_mut(),
        IoRequest::no_data(IoOp::WriteZeroes, 11, 198, 3),
    );
    assert_eq!(st, IoStatus::Success);
    let (_, buf) = read(ch.as_mut(), 4096, 10, 200);
    let got = buf.as_slice();
    assert_eq!(&got[..4096], &data[..4096]);
    assert!(got[4096..199 * 4096].iter().all(|&b| b == 0));
    assert_eq!(&got[199 * 4096..], &data[199 * 4096..]);
}

#[test]
fn many_in_flight_more_than_the_queue_depth() {
    let f = file_of(4 << 20);
    check_many_in_flight(&*open(f.path(), UringOptions::default()), 256);
    let f = file_of(4 << 20);
    let opts = UringOptions {
        queue_depth: 4,
        ..UringOptions::default()
    };
    check_many_in_flight(&*open(f.path(), opts), 256);
}

#[test]
fn channels_share_the_file() {
    let f = file_of(4 << 20);
    let d = open(f.path(), UringOptions::default());
    let mut a = d.open_channel().unwrap();
    let mut b = d.open_channel().unwrap();
    let data = pattern(4096, 1, 4, 2);
    assert_eq!(write(a.as_mut(), 4096, 1, &data), IoStatus::Success);
    let (st, buf) = read(b.as_mut(), 4096, 1, 4);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(buf.as_slice(), data.as_slice());
    drop(d); // channels keep the device open
    let (st, _) = read(a.as_mut(), 4096, 1, 4);
    assert_eq!(st, IoStatus::Success);
}

fn readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n == 1
}

/// The completion eventfd wakes a sleeping reactor, and is drained once the channel has
/// nothing left, so it does not keep the reactor awake.
#[test]
fn completion_fd_signals_and_is_drained() {
    let f = file_of(4 << 20);
    let d = open(f.path(), UringOptions::default());
    let mut ch = d.open_channel().unwrap();
    let fd = ch
        .completion_fd()
        .expect("uring channels have a completion fd");
    assert!(!readable(fd, 0));
    let buf = AlignedBuf::new(4096);
    // SAFETY: `buf` outlives the completion below.
    unsafe { ch.submit(IoRequest::rw(IoOp::Read, 0, 1, buf.ptr(), 4096, 77)) };
    // The first poll submits; the completion may already be there.
    let mut got = vec![];
    ch.poll(&mut |t, s| got.push((t, s)));
    if got.is_empty() {
        assert!(
            readable(fd, 5000),
            "the completion did not signal the eventfd"
        );
        ch.poll(&mut |t, s| got.push((t, s)));
    }
    assert_eq!(got, vec![(77, IoStatus::Success)]);
    // Enough empty polls (a reactor spinning before it sleeps) reset it.
    for _ in 0..crate::DRAIN_AFTER_EMPTY_POLLS {
        assert_eq!(ch.poll(&mut |_, _| panic!("nothing left")), 0);
    }
    assert!(
        !readable(fd, 0),
        "eventfd left readable with nothing to reap"
    );
    // And it signals again for the next completion.
    // SAFETY: `buf` outlives the completion below.
    unsafe { ch.submit(IoRequest::rw(IoOp::Read, 1, 1, buf.ptr(), 4096, 78)) };
    ch.poll(&mut |t, s| got.push((t, s)));
    if got.len() == 1 {
        assert!(
            readable(fd, 5000),
            "the second completion did not signal the eventfd"
        );
        ch.poll(&mut |t, s| got.push((t, s)));
    }
    assert_eq!(got[1], (78, IoStatus::Success));
}

#[test]
fn read_only_device_refuses_writes() {
    let f = file_of(1 << 20);
    let d = open(
        f.path(),
        UringOptions {
            read_only: true,
            ..UringOptions::default()
        },
    );
    assert!(d.info().read_only);
    assert!(!d.info().supports_deallocate);
    let mut ch = d.open_channel().unwrap();
    let buf = AlignedBuf::new(4096);
    for req in [
        IoRequest::rw(IoOp::Write, 0, 1, buf.ptr(), 4096, 1),
        IoRequest::no_data(IoOp::WriteZeroes, 0, 1, 1),
        IoRequest::no_data(IoOp::Deallocate, 0, 1, 1),
    ] {
        assert_eq!(run1(ch.as_mut(), req), IoStatus::ReadOnly, "{:?}", req.op);
    }
    let (st, _) = read(ch.as_mut(), 4096, 0, 1);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(
        run1(ch.as_mut(), IoRequest::no_data(IoOp::Flush, 0, 0, 1)),
        IoStatus::Success
    );
}

/// Makes a file unwritable even for root (immutable flag), or by mode when not root;
/// undoes the flag on drop so the temp file can be removed.
struct ReadOnlyFile {
    file: tempfile::NamedTempFile,
    immutable: bool,
}

const FS_IMMUTABLE_FL: libc::c_long = 0x10;

fn set_flags(path: &Path, flags: libc::c_long) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut v = flags;
    // SAFETY: FS_IOC_SETFLAGS reads one long from the live local.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &mut v) };
    rc == 0
}

impl ReadOnlyFile {
    fn new(size: u64) -> Option<Self> {
        let file = file_of(size);
        // SAFETY: geteuid takes no arguments.
        if unsafe { libc::geteuid() } == 0 {
            if !set_flags(file.path(), FS_IMMUTABLE_FL) {
                return None;
            }
            Some(ReadOnlyFile {
                file,
                immutable: true,
            })
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o444)).ok()?;
            Some(ReadOnlyFile {
                file,
                immutable: false,
            })
        }
    }
}

impl Drop for ReadOnlyFile {
    fn drop(&mut self) {
        if self.immutable {
            set_flags(self.file.path(), 0);
        }
    }
}

#[test]
fn read_only_file_opened_read_write_is_refused_with_advice() {
    let Some(ro) = ReadOnlyFile::new(1 << 20) else {
        eprintln!("skipped: cannot make a read-only file here");
        return;
    };
    let path = ro.file.path();
    let msg = err(path, UringOptions::default());
    assert!(
        msg.starts_with(&format!(
            "{}: opened read-write but the file is read-only (",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.ends_with("); set read_only = true"), "{msg}");
    // As advised, it opens read-only.
    let d = open(
        path,
        UringOptions {
            read_only: true,
            ..UringOptions::default()
        },
    );
    assert!(d.info().read_only);
}

#[test]
fn start_up_errors_are_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let m = err(&missing, UringOptions::default());
    assert_eq!(
        m,
        format!(
            "{}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert!(matches!(
        UringBdev::open(&missing, UringOptions::default()),
        Err(BdevError::Open { .. })
    ));

    assert_eq!(
        err(dir.path(), UringOptions::default()),
        format!(
            "{} is a directory; give a regular file or a block device",
            dir.path().display()
        )
    );

    let f = file_of(1000);
    assert_eq!(
        err(f.path(), UringOptions::default()),
        format!(
            "{}: size 1000 bytes is not a multiple of the 4096-byte block size",
            f.path().display()
        )
    );
    let f = file_of(0);
    assert_eq!(
        err(f.path(), UringOptions::default()),
        format!(
            "{}: size is 0 bytes; it must hold at least one 4096-byte block",
            f.path().display()
        )
    );
    let f = file_of(4096);
    let bad_bs = UringOptions {
        block_size: Some(1000),
        ..UringOptions::default()
    };
    assert_eq!(
        err(f.path(), bad_bs),
        format!(
            "{}: block size 1000 is not supported; use 512 or 4096",
            f.path().display()
        )
    );
    let bad_qd = UringOptions {
        queue_depth: 0,
        ..UringOptions::default()
    };
    assert_eq!(
        err(f.path(), bad_qd),
        format!(
            "{}: queue depth 0 is out of range; use 1 to 4096",
            f.path().display()
        )
    );
    assert_eq!(
        err(Path::new("/dev/null"), UringOptions::default()),
        "/dev/null is neither a regular file nor a block device"
    );
}

/// A file truncated under the device makes reads come up short and then hit the end:
/// the request ends with EIO rather than hanging or returning partial data as success.
#[test]
fn short_read_after_truncation_is_an_error_not_a_hang() {
    let f = file_of(1 << 20);
    let d = open(f.path(), buffered());
    let mut ch = d.open_channel().unwrap();
    f.as_file().set_len(8192 + 4096 / 2).unwrap();
    let (st, _) = read(ch.as_mut(), 4096, 1, 4);
    assert_eq!(st, IoStatus::Io(libc::EIO));
    let (st, _) = read(ch.as_mut(), 4096, 0, 2);
    assert_eq!(st, IoStatus::Success);
}

#[test]
fn dropping_a_channel_with_requests_in_flight_waits_for_them() {
    let f = file_of(4 << 20);
    let d = open(f.path(), UringOptions::default());
    let bufs: Vec<AlignedBuf> = (0..64).map(|_| AlignedBuf::new(4096)).collect();
    {
        let mut ch = d.open_channel().unwrap();
        for (i, b) in bufs.iter().enumerate() {
            // SAFETY: `bufs` outlives the channel, whose drop waits for the kernel.
            unsafe {
                ch.submit(IoRequest::rw(
                    IoOp::Read,
                    i as u64,
                    1,
                    b.ptr(),
                    4096,
                    i as u64,
                ))
            };
        }
        ch.poll(&mut |_, _| {});
    }
    drop(bufs);
}

/// Attaches a file to a loop device for the life of the value.
struct Loop {
    dev: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new(size: u64, sector: u32) -> Option<Loop> {
        let file = file_of(size);
        let out = Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &sector.to_string()])
            .arg(file.path())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let dev = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        Some(Loop { dev, _file: file })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn block_device_size_and_block_size_come_from_the_device() {
    for sector in [512u32, 4096] {
        let Some(lo) = Loop::new(16 << 20, sector) else {
            eprintln!("skipped: no loop device (needs root and losetup)");
            return;
        };
        let d = open(&lo.dev, UringOptions::default());
        assert!(d.is_block_device());
        assert_eq!(d.info().block_size, sector);
        assert_eq!(d.info().num_blocks, (16 << 20) / u64::from(sector));
        check_round_trip(&*d);
        check_out_of_range(&*d);
        check_flush(&*d);
        check_zeroes_and_deallocate(&*d);
        check_many_in_flight(&*d, 256);
        if sector == 4096 {
            let small = UringOptions {
                block_size: Some(512),
                ..UringOptions::default()
            };
            assert_eq!(
                err(&lo.dev, small),
                format!(
                    "{}: block size 512 is smaller than the device's 4096-byte logical block",
                    lo.dev.display()
                )
            );
        }
    }
}

/// The way the target uses a channel: a poller on a reactor that sleeps when idle, with
/// the completion fd registered. A completion must wake it (with `idle_spin` zero and no
/// timer, nothing else would), and once the channel is quiet the reactor must be able to
/// sleep again (no stale readiness keeping it awake).
#[test]
fn a_sleeping_reactor_wakes_for_completions_and_sleeps_again() {
    use lightpool_reactor::{Ctx, Interest, PollStatus, ReactorConfig};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let f = file_of(4 << 20);
    let d = open(f.path(), UringOptions::default());
    let r = lightpool_reactor::spawn(ReactorConfig {
        id: 0,
        core: None,
        idle_spin: Duration::ZERO,
    })
    .unwrap();
    let (done_tx, done_rx) = mpsc::channel::<(u64, IoStatus)>();
    // Requests travel to the reactor as (lba, buffer address, tag).
    let (req_tx, req_rx) = mpsc::channel::<(u64, usize, u64)>();
    r.send(move |ctx: &mut Ctx| {
        let mut ch = d.open_channel().unwrap();
        let fd = ch.completion_fd().unwrap();
        ctx.register_fd(fd, Interest::READABLE).unwrap();
        ctx.add_poller(Box::new(move |_: &mut Ctx| {
            let mut busy = false;
            while let Ok((lba, addr, tag)) = req_rx.try_recv() {
                let req = IoRequest::rw(IoOp::Write, lba, 1, addr as *mut u8, 4096, tag);
                // SAFETY: the test keeps the buffer alive until every completion.
                unsafe { ch.submit(req) };
                busy = true;
            }
            let n = ch.poll(&mut |tag, st| done_tx.send((tag, st)).unwrap());
            if busy || n > 0 {
                PollStatus::Busy
            } else {
                PollStatus::Idle
            }
        }));
    })
    .unwrap();

    let wait_asleep = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let a = r.stats();
            if a.sleeping {
                std::thread::sleep(Duration::from_millis(20));
                let b = r.stats();
                if b.sleeping && b.loops == a.loops {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "reactor never settled asleep {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_asleep("before I/O");

    let buf = AlignedBuf::new(4096 * 8);
    for round in 0..3u64 {
        for i in 0..8u64 {
            let addr = buf.ptr() as usize + i as usize * 4096;
            req_tx.send((i, addr, round * 100 + i)).unwrap();
        }
        // Wake the reactor so the poller picks the requests up; it then falls asleep
        // again while the writes are in flight.
        r.send(|_| ()).unwrap();
        let mut tags: Vec<u64> = (0..8)
            .map(|_| {
                let (tag, st) = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
                assert_eq!(st, IoStatus::Success);
                tag
            })
            .collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..8).map(|i| round * 100 + i).collect::<Vec<_>>());
        wait_asleep("after the completions");
    }
    r.stop();
    r.join().unwrap();
    // The reactor dropped the poller, and with it the channel, before `buf` goes.
    drop(buf);
}

/// The adopter serves the very file that was handed over, even after the path was
/// unlinked and another file put there; recovery (no descriptor) opens the path.
#[test]
fn adopter_keeps_the_open_file_and_recovery_reopens_the_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("create");
    let a = open(&path, buffered());
    let mut ch = a.open_channel().expect("channel");
    assert_eq!(
        write(ch.as_mut(), 4096, 3, &pattern(4096, 3, 1, 9)),
        IoStatus::Success
    );
    drop(ch);
    let e = a.export().expect("export");
    std::fs::remove_file(&path).expect("unlink");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("decoy");
    let b = UringAdopter
        .adopt(Adoption {
            name: "disk",
            state: &e.state,
            fds: Some(e.fds),
            children: Vec::new(),
        })
        .expect("adopt");
    assert_eq!(b.kind(), "uring");
    let mut ch = b.open_channel().expect("channel");
    let (st, buf) = read(ch.as_mut(), 4096, 3, 1);
    assert_eq!(st, IoStatus::Success);
    assert_eq!(buf.as_slice(), pattern(4096, 3, 1, 9).as_slice());

    let e = b.export().expect("export");
    let r = UringAdopter
        .adopt(Adoption {
            name: "disk",
            state: &e.state,
            fds: None,
            children: Vec::new(),
        })
        .expect("recovered by path");
    let mut ch = r.open_channel().expect("channel");
    let (_, buf) = read(ch.as_mut(), 4096, 3, 1);
    assert!(
        buf.as_slice().iter().all(|&x| x == 0),
        "the path names the decoy now"
    );
}

#[test]
fn ring_options_parse_as_changes_to_the_defaults() {
    use crate::RingOptions;
    let d = RingOptions::default();
    assert!(d.fixed_file && d.fixed_buffers && d.coop_taskrun && d.quiet_eventfd);
    assert!(!d.defer_taskrun && d.sqpoll.is_none() && d.batch == 0);
    assert_eq!(RingOptions::parse("").unwrap(), d);
    let o = RingOptions::parse("no-fixed-file, defer-taskrun,sqpoll=1,batch=8").unwrap();
    assert!(!o.fixed_file && o.fixed_buffers && o.defer_taskrun);
    assert_eq!((o.sqpoll, o.batch), (Some(1), 8));
    let p = RingOptions::parse("plain,fixed-buffers").unwrap();
    assert!(p.fixed_buffers && !p.fixed_file && !p.coop_taskrun && !p.quiet_eventfd);
    assert!(RingOptions::parse("turbo")
        .unwrap_err()
        .contains("unknown ring option turbo"));
    assert!(RingOptions::parse("sqpoll=x")
        .unwrap_err()
        .contains("give a number"));
}

/// Every ring set-up serves the same I/O: registered file or not, the offered pool's
/// (registered) buffers and buffers of the caller's own, cooperative or deferred
/// completions, a kernel polling thread, batched submissions.
#[test]
fn every_ring_set_up_round_trips_pool_and_own_buffers() {
    use crate::RingOptions;
    for spec in [
        "",
        "plain",
        "no-fixed-buffers",
        "defer-taskrun",
        "no-coop-taskrun,no-quiet-eventfd",
        "batch=4",
        "sqpoll=0",
    ] {
        let f = file_of(8 << 20);
        let ring = RingOptions::parse(spec).unwrap();
        let d = UringBdev::open_with(f.path(), UringOptions::default(), ring).unwrap();
        check_round_trip(&*d);
        assert_eq!(d.dma_pool().is_some(), ring.fixed_buffers, "{spec}");
        let Some(pool) = d.dma_pool() else { continue };
        // Pool buffers (registered with the ring): written, read back into another.
        let mut ch = d.open_channel().unwrap();
        let (mut a, b) = (pool.get().unwrap(), pool.get().unwrap());
        let data = pattern(4096, 5, 8, 3);
        a.as_mut_slice()[..data.len()].copy_from_slice(&data);
        let w = IoRequest::rw(IoOp::Write, 5, 8, a.as_ptr(), data.len(), 1);
        assert_eq!(run1(ch.as_mut(), w), IoStatus::Success, "{spec}");
        let r = IoRequest::rw(IoOp::Read, 5, 8, b.as_ptr(), data.len(), 2);
        assert_eq!(run1(ch.as_mut(), r), IoStatus::Success, "{spec}");
        assert_eq!(&b.as_slice()[..data.len()], &data[..], "{spec}");
        // Many at once, more than the ring holds, half in pool buffers.
        let mut own = AlignedBuf::new(4096 * 64);
        let bufs: Vec<_> = (0..64).map(|_| pool.get().unwrap()).collect();
        for i in 0..128u64 {
            let ptr = if i % 2 == 0 {
                bufs[i as usize / 2].as_ptr()
            } else {
                // SAFETY: inside `own`, 4096 bytes per request.
                unsafe { own.as_mut_slice().as_mut_ptr().add(4096 * (i as usize / 2)) }
            };
            // SAFETY: every buffer outlives the completions polled below.
            unsafe { ch.submit(IoRequest::rw(IoOp::Read, i, 1, ptr, 4096, 100 + i)) };
        }
        let mut done = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done < 128 {
            ch.poll(&mut |_, st| {
                assert_eq!(st, IoStatus::Success, "{spec}");
                done += 1;
            });
            assert!(
                std::time::Instant::now() < deadline,
                "{spec}: {done} of 128 done"
            );
        }
        drop(ch);
        for x in bufs.into_iter().chain([a, b]) {
            pool.put(x);
        }
    }
}

/// The default ring registers the device's descriptor and the shared pool, and knows
/// which buffers are the pool's.
#[test]
fn a_default_ring_registers_the_file_and_the_pool() {
    let f = file_of(1 << 20);
    let r =
        crate::ring::Ring::new(8, f.as_file().as_raw_fd(), &crate::RingOptions::default()).unwrap();
    assert!(r.fixed_file, "the descriptor is registered");
    let pool = crate::ring::shared_pool().expect("a pool");
    let b = pool.get().unwrap();
    assert_eq!(r.buf_index(b.as_ptr(), 4096), Some(0));
    let own = AlignedBuf::new(4096);
    assert_eq!(r.buf_index(own.ptr(), 4096), None);
    // A range that runs past the pool's end is not the pool's.
    let end = pool.memory().as_ptr() as usize + pool.memory().len();
    assert_eq!(r.buf_index((end - 4096) as *const u8, 8192), None);
    pool.put(b);
}
