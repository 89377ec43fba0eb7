//! Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/: PDUs built
//! with the project's own encoders (the ones the tests use), command sequences a host
//! sends, pool metadata images the pool's own writer made, RAID superblocks and
//! bitmaps the array's own writer made. fuzz/run.sh seeds; by hand:
//!
//! ```sh
//! cd fuzz && cargo run --example seeds
//! ```

use std::path::Path;

use lightpool_bdev::Bdev;
use lightpool_bdev_ram::MallocBdev;
use lightpool_fuzz::host::Host;
use lightpool_fuzz::pool::{options, records, BLOCK, DEVICE_BYTES, POOL_NAME};
use lightpool_pool::{Pool, PoolOps};
use lightpool_raid::{ArrayOptions, Level, RaidBdev};
use lightpool_spec::nvme::{
    admin_opcode, io_opcode, Cqe, SglDescriptor, Sqe, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::Status;
use lightpool_spec::tcp::{self as spec, DataHeader, IcResp, PduType, R2t, MAX_HEADER_BUF};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seed directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn host(hd: bool, dd: bool) -> Host {
    Host::new(&lightpool_fuzz::host::target(), &[], hd, dd)
}

fn sqe(opcode: u8, nsid: u32, cdw10: u32, cdw12: u32, len: u32) -> Sqe {
    let mut s = Sqe {
        opcode,
        nsid,
        cdw10,
        cdw12,
        ..Default::default()
    };
    s.set_sgl(&SglDescriptor {
        address: 0,
        length: len,
        id: SGL_TRANSPORT_DATA_BLOCK,
    });
    s
}

fn pdus() {
    for (hd, dd) in [(false, false), (true, true)] {
        let h = host(hd, dd);
        let k = u8::from(hd) | u8::from(dd) << 1;
        let pre = |v: &[u8]| {
            let mut s = vec![k];
            s.extend_from_slice(&(128u32 << 10).to_le_bytes());
            s.extend_from_slice(&8192u32.to_le_bytes());
            s.extend_from_slice(v);
            s
        };
        let tag = if hd { "dgst" } else { "plain" };
        write("pdu", "icreq", &pre(&h.icreq()));
        write(
            "pdu",
            &format!("connect-{tag}"),
            &pre(&h.connect_capsule(1, 0, 0xFFFF)),
        );
        write(
            "pdu",
            &format!("h2c-{tag}"),
            &pre(&h.h2c(3, 1, 512, &[0xA5; 512], true)),
        );
        let mut out = [0u8; 28];
        let n = spec::encode_r2t(
            &R2t {
                cccid: 3,
                ttag: 1,
                r2to: 0,
                r2tl: 4096,
            },
            hd,
            &mut out,
        );
        write("pdu", &format!("r2t-{tag}"), &pre(&out[..n]));
        let n = spec::encode_capsule_resp(&Cqe::new(3, Status::SUCCESS), hd, &mut out);
        write("pdu", &format!("resp-{tag}"), &pre(&out[..n]));
        let mut hdr = [0u8; MAX_HEADER_BUF];
        let d = DataHeader {
            cccid: 4,
            ttag: 0,
            datao: 0,
            datal: 512,
        };
        let n = spec::encode_c2h_data_header(&d, true, true, hd, dd, 0, &mut hdr);
        let mut c2h = hdr[..n].to_vec();
        c2h.extend_from_slice(&[0x11; 512]);
        write("pdu", &format!("c2h-{tag}"), &pre(&c2h));
    }
    let mut term = [0u8; 160];
    let n = spec::encode_term_req(PduType::H2CTermReq, 1, 2, &[4; 24], &mut term);
    write(
        "pdu",
        "termreq",
        &[0, 0, 0, 0, 0, 0, 0, 0, 0]
            .iter()
            .chain(&term[..n])
            .copied()
            .collect::<Vec<_>>(),
    );
    let icresp = IcResp {
        pfv: 0,
        cpda: 0,
        hdgst: false,
        ddgst: false,
        maxh2cdata: 131072,
    };
    let mut v = vec![0u8; 9];
    v.extend_from_slice(&icresp.encode());
    write("pdu", "icresp", &v);
}

/// A host's whole conversation: ICReq, admin Connect, enable, Identify.
fn conversation(h: &Host) -> Vec<u8> {
    let mut v = h.icreq();
    v.extend(h.connect_capsule(1, 0, 0xFFFF));
    v.extend(h.enable_capsule(2));
    v.extend(h.capsule(&sqe(admin_opcode::IDENTIFY, 0, 1, 0, 4096), &[]));
    v
}

fn streams() {
    for (hd, dd) in [(false, false), (true, false), (true, true)] {
        let h = host(hd, dd);
        let k = u8::from(hd) | u8::from(dd) << 1;
        let tag = format!("h{}d{}", u8::from(hd), u8::from(dd));
        // recv: controller end, not connected yet; staging 4 KiB; chunks 1 and 7.
        let mut r = vec![0u8, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 2, 0, 6];
        r.extend(conversation(&h));
        r.extend(h.h2c(5, 1, 0, &[0x3C; 1024], true));
        write("recv", &format!("controller-{tag}"), &r);
        // conn: from the first byte; then on an admin queue; then on an I/O queue.
        let mut c = vec![k, 0];
        c.extend(conversation(&h));
        write("conn", &format!("raw-{tag}"), &c);
        let mut c = vec![k | 4, 0];
        c.extend(h.capsule(
            &sqe(
                admin_opcode::GET_LOG_PAGE,
                0xFFFF_FFFF,
                0x00FF_0002,
                0,
                1024,
            ),
            &[],
        ));
        c.extend(h.capsule(&sqe(admin_opcode::GET_FEATURES, 0, 7, 0, 0), &[]));
        write("conn", &format!("admin-{tag}"), &c);
        let mut c = vec![k | 8, 0];
        let w = sqe(io_opcode::WRITE, 1, 8, 0, 512);
        let mut wi = w;
        wi.set_sgl(&SglDescriptor {
            address: 0,
            length: 512,
            id: lightpool_spec::nvme::SGL_DATA_BLOCK_OFFSET,
        });
        c.extend(h.capsule(&wi, &[0x77; 512]));
        c.extend(h.capsule(&sqe(io_opcode::READ, 1, 8, 0, 512), &[]));
        c.extend(h.capsule(&w, &[]));
        c.extend(h.h2c(0, 0, 0, &[0x66; 512], true));
        write("conn", &format!("io-{tag}"), &c);
    }
    // commands: records of (how, SQE, data length, data).
    let rec = |how: u8, s: Sqe, data: &[u8]| {
        let mut v = vec![how];
        v.extend_from_slice(&s.to_bytes());
        v.extend_from_slice(&(data.len() as u16).to_le_bytes());
        v.extend_from_slice(data);
        v
    };
    let mut v = vec![0u8, 0];
    v.extend(rec(4, sqe(admin_opcode::IDENTIFY, 0, 1, 0, 4096), &[]));
    v.extend(rec(4, sqe(admin_opcode::IDENTIFY, 1, 0, 0, 4096), &[]));
    v.extend(rec(
        4,
        sqe(
            admin_opcode::GET_LOG_PAGE,
            0xFFFF_FFFF,
            0x00FF_0002,
            0,
            1024,
        ),
        &[],
    ));
    v.extend(rec(4, sqe(admin_opcode::GET_FEATURES, 0, 7, 0, 0), &[]));
    v.extend(rec(
        0,
        sqe(admin_opcode::ASYNC_EVENT_REQUEST, 0, 0, 0, 0),
        &[],
    ));
    v.extend(rec(0, sqe(admin_opcode::KEEP_ALIVE, 0, 0, 0, 0), &[]));
    write("commands", "admin", &v);
    let mut v = vec![3u8, 0];
    v.extend(rec(
        1 | 2 | 4,
        sqe(io_opcode::WRITE, 1, 8, 0, 512),
        &[0x42; 512],
    ));
    v.extend(rec(1 | 4 | 8, sqe(io_opcode::WRITE, 1, 16, 7, 0), &[]));
    v.extend(rec(1 | 4 | 8, sqe(io_opcode::READ, 1, 8, 15, 0), &[]));
    v.extend(rec(1, sqe(io_opcode::FLUSH, 1, 0, 0, 0), &[]));
    v.extend(rec(1 | 4, sqe(io_opcode::WRITE_ZEROES, 1, 0, 3, 0), &[]));
    write("commands", "io", &v);
}

fn pools() {
    let dev = MallocBdev::new("seed-pool", DEVICE_BYTES, BLOCK).expect("RAM device");
    let bdev: std::sync::Arc<dyn Bdev> = dev.clone();
    let (pool, _) = Pool::open(bdev, POOL_NAME, &options(), true).expect("new pool");
    pool.create("thin", 1 << 20, true).expect("thin volume");
    pool.create("thick", 256 << 10, false)
        .expect("thick volume");
    pool.snapshot("thick", "snap").expect("snapshot");
    pool.clone_snapshot("snap", "clone").expect("clone");
    let mut image = vec![0u8; 256 * 4096];
    dev.read_at(0, &mut image).expect("read back");
    // Open (not closed cleanly): the replay path.
    write("pool_meta", "open", &records(&image, 0));
    write("pool_meta", "open-resealed", &records(&image, 1));
    drop(pool);
    dev.read_at(0, &mut image).expect("read back");
    write("pool_meta", "clean", &records(&image, 0));
}

fn raids() {
    let members: Vec<std::sync::Arc<MallocBdev>> = (0..2)
        .map(|i| MallocBdev::new(&format!("m{i}"), 4 << 20, 512).expect("member"))
        .collect();
    let devs: Vec<std::sync::Arc<dyn Bdev>> = members.iter().map(|m| m.clone() as _).collect();
    let mut opts = ArrayOptions::new("seed", Level::Raid1);
    opts.assume_clean = true;
    let a = RaidBdev::open(devs, &opts).expect("array");
    drop(a);
    let mut b = vec![0u8; 3 * 4096];
    members[0].read_at(0, &mut b).expect("read back");
    let sb = if b[..4096].iter().any(|&x| x != 0) {
        &b[..4096]
    } else {
        &b[4096..8192]
    };
    let mut v = vec![0u8];
    v.extend_from_slice(sb);
    v.extend_from_slice(&b[8192..]);
    write("raid_meta", "raid1", &v);
}

fn main() {
    pdus();
    streams();
    pools();
    raids();
}
