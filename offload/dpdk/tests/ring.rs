//! The engine on net_ring ports (each queue loops its TX back to its RX): raw bursts,
//! the smoltcp device tokens, several queues, registered and unregistered threads, no
//! mbuf leaked, and the typed errors. One test function: EAL starts once per process.

use std::sync::Arc;

use lightpool_dpdk::{
    register_thread, DpdkError, Eal, EalConfig, Hugepages, Mbuf, Mempool, Port, PortConfig,
};
use smoltcp::phy::{Device, RxToken, TxToken};
use smoltcp::time::Instant;

fn frame(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

#[test]
fn net_ring_engine() {
    let cfg = EalConfig {
        vdevs: vec!["net_ring0".into(), "net_ring1".into()],
        hugepages: Hugepages::NoHuge,
        memory_mb: 256,
        log_level: Some("notice".into()),
        ..EalConfig::default()
    };
    let args = cfg.args();
    assert!(args.contains(&"--no-huge".to_string()), "{args:?}");
    assert!(
        args.iter().any(|a| a.starts_with("--lcores=0@(")),
        "{args:?}"
    );
    let eal = Eal::init(&cfg).expect("EAL init");
    eprintln!("EAL up in {:?}: {:?}", eal.init_time(), eal.args());

    // A second start is refused with a typed error, not a crash.
    match Eal::init(&cfg) {
        Err(DpdkError::EalAlreadyInitialised) => {}
        other => panic!("second EAL init: {:?}", other.map(|_| ())),
    }

    let _reg = register_thread(&eal).expect("register the test thread");
    let pool = Mempool::new(&eal, "ring_pool", 4095, 64, 2048).expect("mempool");
    let before = pool.available();
    assert_eq!(before, 4095);

    // Typed errors that say what to change.
    let e = Port::open(&eal, "net_nope0", &PortConfig::default(), pool.clone())
        .err()
        .expect("no such port");
    assert!(matches!(e, DpdkError::NoSuchPort(_)), "{e}");
    assert!(e.to_string().contains("--vdev"), "{e}");
    let many = PortConfig {
        queues: 64,
        ..PortConfig::default()
    };
    let e = Port::open(&eal, "net_ring1", &many, pool.clone())
        .err()
        .expect("too many queues");
    assert!(matches!(e, DpdkError::TooManyQueues { .. }), "{e}");
    let e = Mempool::new(&eal, "ring_pool", 10, 0, 2048)
        .err()
        .expect("dup name");
    assert!(e.to_string().contains("pick another name"), "{e}");

    {
        let (port, mut queues) = Port::open(
            &eal,
            "net_ring0",
            &PortConfig {
                queues: 2,
                ..PortConfig::default()
            },
            pool.clone(),
        )
        .expect("open net_ring0");
        assert_eq!(port.driver(), "net_ring");
        assert_eq!(queues.len(), 2);
        assert!(port.link().expect("link").up);
        let after_start = pool.available();

        // Raw bursts: queue 0 and queue 1 loop independently.
        for (qi, q) in queues.iter_mut().enumerate() {
            let mut out = Vec::new();
            for i in 0..100u32 {
                let mut m = Mbuf::alloc(&pool).expect("mbuf");
                let f = frame(i + qi as u32 * 1000, 60 + i as usize);
                m.append(f.len()).expect("room").copy_from_slice(&f);
                out.push(m);
            }
            assert_eq!(q.tx_burst(&mut out), 100);
            assert!(out.is_empty());
            let mut back = Vec::new();
            assert_eq!(q.rx_burst(&mut back, 256), 100);
            for (i, m) in back.iter().enumerate() {
                assert_eq!(m.data(), &frame(i as u32 + qi as u32 * 1000, 60 + i)[..]);
            }
        }
        let st = port.stats().expect("stats");
        assert_eq!(st.tx_packets, 200);
        assert_eq!(st.rx_packets, 200);
        assert_eq!(pool.available(), after_start, "raw bursts leaked mbufs");

        // smoltcp tokens: TX in place, batched; RX borrowed then freed.
        let q = &mut queues[0];
        for i in 0..50u32 {
            let tok = q.transmit(Instant::from_millis(0)).expect("tx token");
            tok.consume(1514, |buf| buf.copy_from_slice(&frame(i, 1514)));
        }
        // 50 frames with a burst of 32: one burst went, 18 wait for the flush.
        assert_eq!(q.tx_pending(), 18);
        let mut seen = 0u32;
        while let Some((rx, _tx)) = q.receive(Instant::from_millis(0)) {
            let want = frame(seen, 1514);
            rx.consume(|buf| assert_eq!(buf, &want[..]));
            seen += 1;
        }
        assert_eq!(
            seen, 50,
            "receive flushes the pending TX, then reads it back"
        );
        // A token left unconsumed (it holds no mbuf until consumed) and a frame too
        // big for an mbuf do not leak.
        let _unused = q.transmit(Instant::from_millis(0)).expect("tx token");
        let tok = q.transmit(Instant::from_millis(0)).expect("tx token");
        tok.consume(4000, |buf| buf[0] = 1);
        assert_eq!(q.stats().tx_no_mbuf, 1);
        q.flush();
        let qs = q.stats();
        assert_eq!(qs.tx_packets, 150);
        assert_eq!(qs.rx_packets, 150);
        // An unconsumed RX token is freed too.
        let tok = q.transmit(Instant::from_millis(0)).expect("tx token");
        tok.consume(100, |buf| buf.fill(9));
        q.flush();
        let (rx, _tx) = q.receive(Instant::from_millis(0)).expect("looped frame");
        drop(rx);
        assert_eq!(pool.available(), after_start, "device tokens leaked mbufs");

        // Queue 1 from an unregistered thread: same packets, no cache, no leak.
        let mut q1 = queues.pop().expect("queue 1");
        let pool2 = pool.clone();
        let (registered, moved) = std::thread::spawn(move || {
            let registered = q1.on_registered_thread();
            let mut out: Vec<Mbuf> = (0..64)
                .map(|_| {
                    let mut m = Mbuf::alloc(&pool2).expect("mbuf");
                    m.append(64).expect("room").fill(7);
                    m
                })
                .collect();
            let sent = q1.tx_burst(&mut out);
            let mut back = Vec::new();
            let got = q1.rx_burst(&mut back, 128);
            assert!(back.iter().all(|m| m.data() == [7u8; 64]));
            (registered, (sent, got, q1))
        })
        .join()
        .expect("unregistered thread");
        assert!(!registered);
        assert_eq!((moved.0, moved.1), (64, 64));
        drop(moved.2);
        drop(queues);
        assert_eq!(pool.available(), after_start, "unregistered thread leaked");
        port.stop().expect("stop");
    }
    // The port closed with its last queue; every mbuf is back.
    assert_eq!(pool.available(), before);
    let held = Arc::strong_count(&pool);
    assert_eq!(held, 1, "the closed port let go of the pool");
}
