//! Hostile input over real sockets to a real reactor: each bad connection gets the
//! status or termination the specification prescribes, and a well-behaved connection
//! opened before them keeps doing verified I/O throughout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lightpool_bdev_ram::MallocBdev;
use lightpool_nvmf::{NamespaceConfig, SubsystemConfig, Target, TargetOptions};
use lightpool_reactor::{ReactorConfig, ReactorHandle};
use lightpool_spec::fabrics::{ConnectCommand, ConnectData, PropertyCommand, CNTLID_DYNAMIC};
use lightpool_spec::nvme::{
    io_opcode, reg, Cqe, SglDescriptor, Sqe, SGL_DATA_BLOCK_OFFSET, SGL_TRANSPORT_DATA_BLOCK,
};
use lightpool_spec::status::{generic, Status};
use lightpool_spec::tcp::{self as pdu, fes, CommonHeader, DataHeader, IcReq, PduType, TermReq};
use lightpool_transport_tcp::TcpTransport;

const NQN: &str = "nqn.2024-01.io.lightpool:hostile";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:hostile-test";

fn start() -> (SocketAddr, ReactorHandle) {
    let t = Target::new(TargetOptions::default()).expect("valid options");
    let mut sc = SubsystemConfig::new(NQN);
    sc.namespaces.push(NamespaceConfig {
        nsid: 1,
        bdev: MallocBdev::new("ram", 8 << 20, 512).expect("8 MiB RAM"),
        nguid: None,
        uuid: None,
        anagrpid: None,
        num_blocks: None,
    });
    t.add_subsystem(sc).expect("valid subsystem");
    let r = lightpool_reactor::spawn(ReactorConfig::new(0, None)).expect("reactor starts");
    let tcp = TcpTransport::new(t, vec![r.clone()]).expect("transport");
    let addr = tcp
        .listen("127.0.0.1:0".parse().expect("address"))
        .expect("listen");
    (addr, r)
}

/// A minimal blocking NVMe/TCP host.
struct Host {
    s: TcpStream,
}

enum Pdu {
    Resp(Cqe),
    Data(Vec<u8>),
    R2t(pdu::R2t),
    Term(TermReq),
    Other(u8),
}

impl Host {
    fn raw(addr: SocketAddr) -> Host {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Host { s }
    }

    fn icreq(addr: SocketAddr) -> Host {
        let mut h = Host::raw(addr);
        h.s.write_all(
            &IcReq {
                pfv: 0,
                hpda: 0,
                hdgst: false,
                ddgst: false,
                maxr2t: 0,
            }
            .encode(),
        )
        .expect("send");
        match h.recv() {
            Some(Pdu::Other(t)) if t == PduType::IcResp as u8 => {}
            _ => panic!("no ICResp"),
        }
        h
    }

    fn send_capsule(&mut self, sqe: &Sqe, data: &[u8]) {
        let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
        let n = pdu::encode_capsule_cmd_header(sqe, false, false, data.len() as u32, 0, &mut hdr);
        let mut v = hdr[..n].to_vec();
        v.extend_from_slice(data);
        self.s.write_all(&v).expect("send");
    }

    /// The next PDU, or None when the target closed the connection.
    fn recv(&mut self) -> Option<Pdu> {
        let mut ch = [0u8; 8];
        if self.s.read_exact(&mut ch).is_err() {
            return None;
        }
        let c = CommonHeader::parse(&ch);
        let mut rest = vec![0u8; c.plen as usize - 8];
        self.s.read_exact(&mut rest).ok()?;
        let mut p = ch.to_vec();
        p.extend(rest);
        Some(match PduType::try_from(c.pdu_type) {
            Ok(PduType::CapsuleResp) => {
                Pdu::Resp(pdu::capsule_resp_cqe(p[..24].try_into().expect("24")))
            }
            Ok(PduType::C2HData) => {
                let h = DataHeader::parse(&p);
                Pdu::Data(p[usize::from(c.pdo)..usize::from(c.pdo) + h.datal as usize].to_vec())
            }
            Ok(PduType::R2T) => Pdu::R2t(pdu::R2t::parse(&p)),
            Ok(PduType::C2HTermReq) => Pdu::Term(TermReq::parse(&p)),
            _ => Pdu::Other(c.pdu_type),
        })
    }

    fn resp(&mut self) -> Cqe {
        loop {
            match self.recv() {
                Some(Pdu::Resp(c)) => return c,
                Some(Pdu::Data(_)) => continue,
                _ => panic!("expected a response"),
            }
        }
    }

    fn connect(&mut self, qid: u16, cntlid: u16) -> Cqe {
        let mut sqe = ConnectCommand {
            recfmt: 0,
            qid,
            sqsize: 31,
            cattr: 0,
            kato: if qid == 0 { 60_000 } else { 0 },
        }
        .to_sqe(1);
        sqe.dptr = SglDescriptor {
            address: 0,
            length: 1024,
            id: SGL_DATA_BLOCK_OFFSET,
        }
        .to_bytes();
        let data = ConnectData::new([3; 16], cntlid, NQN, HOSTNQN).to_bytes();
        self.send_capsule(&sqe, &data);
        self.resp()
    }

    /// Admin queue connected and enabled, plus an I/O queue.
    fn io_queue(addr: SocketAddr) -> (Host, Host) {
        let mut a = Host::icreq(addr);
        let c = a.connect(0, CNTLID_DYNAMIC);
        assert!(c.status.is_success());
        a.send_capsule(
            &PropertyCommand {
                size8: false,
                offset: reg::CC,
                value: 0x0046_0001,
            }
            .to_set_sqe(2),
            &[],
        );
        assert!(a.resp().status.is_success());
        let mut q = Host::icreq(addr);
        assert!(q.connect(1, c.dw0 as u16).status.is_success());
        (a, q)
    }

    fn write(&mut self, cid: u16, slba: u64, data: &[u8]) -> Status {
        let sqe = rw(
            io_opcode::WRITE,
            cid,
            1,
            slba,
            (data.len() / 512) as u32,
            SGL_DATA_BLOCK_OFFSET,
            data.len() as u32,
        );
        self.send_capsule(&sqe, data);
        self.resp().status
    }

    fn read(&mut self, cid: u16, slba: u64, len: usize) -> (Status, Vec<u8>) {
        let sqe = rw(
            io_opcode::READ,
            cid,
            1,
            slba,
            (len / 512) as u32,
            SGL_TRANSPORT_DATA_BLOCK,
            len as u32,
        );
        self.send_capsule(&sqe, &[]);
        let mut data = Vec::new();
        loop {
            match self.recv() {
                Some(Pdu::Data(d)) => data.extend(d),
                Some(Pdu::Resp(c)) => return (c.status, data),
                _ => panic!("bad read answer"),
            }
        }
    }
}

fn rw(opcode: u8, cid: u16, nsid: u32, slba: u64, nlb: u32, sgl: u8, len: u32) -> Sqe {
    let mut sqe = Sqe {
        opcode,
        cid,
        nsid,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: nlb.saturating_sub(1),
        ..Default::default()
    };
    sqe.dptr = SglDescriptor {
        address: 0,
        length: len,
        id: sgl,
    }
    .to_bytes();
    sqe
}

fn expect_term_and_close(h: &mut Host, want_fes: u16) {
    match h.recv() {
        Some(Pdu::Term(t)) => assert_eq!(t.fes, want_fes),
        _ => panic!("expected a C2HTermReq"),
    }
    assert!(
        h.recv().is_none(),
        "connection should be closed after the termination PDU"
    );
}

#[test]
fn hostile_connections_do_not_disturb_a_good_one() {
    let (addr, reactor) = start();
    let (_good_admin, mut good) = Host::io_queue(addr);
    let mut round = 0u16;
    let mut check_good = |good: &mut Host| {
        round += 1;
        let data: Vec<u8> = (0..4096).map(|i| (i as u16 ^ round) as u8).collect();
        let lba = u64::from(round) * 8;
        assert!(good.write(round * 2, lba, &data).is_success());
        let (st, back) = good.read(round * 2 + 1, lba, 4096);
        assert!(st.is_success());
        assert_eq!(back, data, "good connection read back wrong data");
    };
    check_good(&mut good);

    // Commands before Connect: Command Sequence Error, connection stays up.
    let mut h = Host::icreq(addr);
    h.send_capsule(
        &rw(io_opcode::READ, 9, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    );
    assert_eq!(
        h.resp().status,
        Status::generic(generic::COMMAND_SEQUENCE_ERROR).with_dnr()
    );
    check_good(&mut good);

    // A PDU before ICReq: PDU sequence error.
    let mut h = Host::raw(addr);
    h.send_capsule(
        &rw(io_opcode::READ, 9, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    );
    expect_term_and_close(&mut h, fes::PDU_SEQUENCE_ERROR);
    check_good(&mut good);

    // Truncated PDU then close: the target just drops the connection.
    let mut h = Host::icreq(addr);
    h.s.write_all(&[4, 0, 72, 0]).expect("send");
    drop(h);
    check_good(&mut good);

    // Oversized PDU (PLEN claims 4 GiB of in-capsule data): termination before reading it.
    let (_a, mut h) = Host::io_queue(addr);
    let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
    let sqe = rw(io_opcode::WRITE, 3, 1, 0, 8, SGL_DATA_BLOCK_OFFSET, 4096);
    let n = pdu::encode_capsule_cmd_header(&sqe, false, false, 4096, 0, &mut hdr);
    hdr[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    h.s.write_all(&hdr[..n]).expect("send");
    expect_term_and_close(&mut h, fes::INVALID_HEADER_FIELD);
    check_good(&mut good);

    // Unknown PDU type.
    let mut h = Host::icreq(addr);
    h.s.write_all(&[0x0B, 0, 24, 0, 24, 0, 0, 0]).expect("send");
    h.s.write_all(&[0u8; 16]).expect("send");
    expect_term_and_close(&mut h, fes::INVALID_HEADER_FIELD);
    check_good(&mut good);

    // Header digest negotiated, then a wrong one.
    let mut h = Host::raw(addr);
    h.s.write_all(
        &IcReq {
            pfv: 0,
            hpda: 0,
            hdgst: true,
            ddgst: false,
            maxr2t: 0,
        }
        .encode(),
    )
    .expect("send");
    assert!(matches!(h.recv(), Some(Pdu::Other(1))));
    let mut hdr = [0u8; pdu::MAX_HEADER_BUF];
    let n = pdu::encode_capsule_cmd_header(
        &rw(io_opcode::READ, 1, 1, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        true,
        false,
        0,
        0,
        &mut hdr,
    );
    hdr[n - 1] ^= 0x5A;
    h.s.write_all(&hdr[..n]).expect("send");
    expect_term_and_close(&mut h, fes::HEADER_DIGEST_ERROR);
    check_good(&mut good);

    // H2CData beyond what the R2T asked for.
    let (_a, mut h) = Host::io_queue(addr);
    h.send_capsule(
        &rw(
            io_opcode::WRITE,
            5,
            1,
            0,
            16,
            SGL_TRANSPORT_DATA_BLOCK,
            8192,
        ),
        &[],
    );
    let Some(Pdu::R2t(r2t)) = h.recv() else {
        panic!("expected R2T")
    };
    let mut out = [0u8; pdu::MAX_HEADER_BUF];
    let dh = DataHeader {
        cccid: 5,
        ttag: r2t.ttag,
        datao: 0,
        datal: 12288,
    };
    let n = pdu::encode_h2c_data_header(&dh, true, false, false, 0, &mut out);
    h.s.write_all(&out[..n]).expect("send");
    h.s.write_all(&vec![0u8; 12288]).expect("send");
    expect_term_and_close(&mut h, fes::DATA_TRANSFER_OUT_OF_RANGE);
    check_good(&mut good);

    // I/O to a missing namespace and past the end of the namespace: NVMe status, no close.
    let (_a, mut h) = Host::io_queue(addr);
    h.send_capsule(
        &rw(io_opcode::READ, 1, 77, 0, 1, SGL_TRANSPORT_DATA_BLOCK, 512),
        &[],
    );
    assert_eq!(
        h.resp().status,
        Status::generic(generic::INVALID_NAMESPACE).with_dnr()
    );
    h.send_capsule(
        &rw(
            io_opcode::READ,
            2,
            1,
            (8 << 20) / 512,
            1,
            SGL_TRANSPORT_DATA_BLOCK,
            512,
        ),
        &[],
    );
    assert_eq!(
        h.resp().status,
        Status::generic(generic::LBA_OUT_OF_RANGE).with_dnr()
    );
    // Hostile length: 64 MiB read, beyond MDTS.
    h.send_capsule(
        &rw(
            io_opcode::READ,
            3,
            1,
            0,
            65536,
            SGL_TRANSPORT_DATA_BLOCK,
            64 << 20,
        ),
        &[],
    );
    assert!(!h.resp().status.is_success());
    let (st, _) = h.read(4, 0, 512);
    assert!(st.is_success(), "that connection still serves good I/O");
    check_good(&mut good);

    reactor.stop();
    reactor.join().expect("reactor exits cleanly");
}

/// One connection busy with back-to-back reads (queue depth 1: the reactor reads that
/// socket directly, without asking the readiness set each pass) does not keep the
/// reactor from the others: its idle admin queue answers, a new connection is accepted
/// and gets its ICResp, and the busy one keeps reading correct data throughout.
#[test]
fn a_busy_connection_leaves_the_admin_queue_and_the_listener_served() {
    let (addr, _reactor) = start();
    let (mut admin, mut busy) = Host::io_queue(addr);
    let data: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
    assert!(busy.write(1, 16, &data).is_success());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (st, back) = busy.read((n % 64) as u16 + 2, 16, 4096);
                assert!(st.is_success());
                assert_eq!(back, data, "the busy connection read back wrong data");
                n += 1;
            }
            n
        })
    };
    // Let the busy connection become the only one with input for a while.
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..20u16 {
        // The idle admin queue: a Property Get of CSTS (ready). Answers arrive within
        // the Host's 5 s read timeout, or `resp` panics.
        admin.send_capsule(
            &PropertyCommand {
                size8: false,
                offset: reg::CSTS,
                value: 0,
            }
            .to_get_sqe(100 + i),
            &[],
        );
        let c = admin.resp();
        assert!(c.status.is_success());
        assert_eq!(c.cid, 100 + i);
        assert_eq!(c.dw0 & 1, 1, "CSTS.RDY");
        // The listener: a new connection is accepted and gets its ICResp (or `icreq`
        // panics).
        drop(Host::icreq(addr));
        std::thread::sleep(Duration::from_millis(3));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the busy reader did not panic");
    assert!(reads > 20, "the busy connection did {reads} reads");
}
