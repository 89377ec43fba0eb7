use super::*;

const POOL: [u8; 16] = [7; 16];

fn sb() -> Super {
    Super {
        pool: POOL,
        name: "p0".into(),
        block_size: 512,
        cluster_size: 1 << 20,
        md_pages: 100,
        table_pages: 2,
        first_data_cluster: 1,
        num_clusters: 64,
        device_blocks: 64 << 11,
        overcommit: 150,
        clean: true,
        created: 42,
        log_pages: 4,
    }
}

#[test]
fn superblock_round_trips_and_checks_itself() {
    let mut p = vec![0u8; PAGE];
    sb().encode(9, &mut p);
    let Slot::Valid(h) = check_slot(&p, None, 0) else {
        panic!("valid page")
    };
    assert_eq!((h.kind, h.seq, h.pool), (Kind::Super, 9, POOL));
    assert_eq!(Super::decode(&p, &h, "dev").expect("decodes"), sb());
    // One flipped bit anywhere is caught.
    p[3000] ^= 1;
    assert!(matches!(check_slot(&p, None, 0), Slot::Bad(_)));
}

#[test]
fn a_superblock_whose_data_area_overlaps_metadata_is_refused() {
    let mut s = sb();
    s.md_pages = 1000; // 8 MiB of slots: the data area cannot start at cluster 1
    let mut p = vec![0u8; PAGE];
    s.encode(1, &mut p);
    let Slot::Valid(h) = check_slot(&p, None, 0) else {
        panic!("valid page")
    };
    let e = Super::decode(&p, &h, "dev").unwrap_err().to_string();
    assert!(e.contains("overlaps"), "{e}");
}

/// Found by fuzzing (fuzz target pool_meta): a superblock claiming 16 million clusters
/// on a 4 MiB device had the open allocate a 64 MiB ownership table before any check
/// could fail. The cluster count must fit the device the pool was made on.
#[test]
fn a_superblock_claiming_more_clusters_than_its_device_is_refused() {
    let mut s = sb();
    s.num_clusters = 16 << 20;
    let mut p = vec![0u8; PAGE];
    s.encode(1, &mut p);
    let Slot::Valid(h) = check_slot(&p, None, 0) else {
        panic!("valid page")
    };
    let e = Super::decode(&p, &h, "dev").unwrap_err().to_string();
    assert!(e.contains("do not fit its device"), "{e}");
    // Exactly the device's worth still decodes.
    let mut s = sb();
    s.device_blocks = u64::from(s.cluster_size) / 512 * s.num_clusters;
    s.encode(1, &mut p);
    let Slot::Valid(h) = check_slot(&p, None, 0) else {
        panic!("valid page")
    };
    assert_eq!(Super::decode(&p, &h, "dev").expect("decodes"), s);
}

#[test]
fn the_newer_valid_slot_wins_and_a_torn_one_loses() {
    let mut both = vec![0u8; 2 * PAGE];
    let heads = vec![5u32, 0, 9];
    encode_table(&POOL, 3, 0, 4, &heads, &mut both[..PAGE]);
    encode_table(&POOL, 3, 0, 5, &[6, 0, 9], &mut both[PAGE..]);
    let (slot, h) = pick(&both, Some(&POOL), 3).expect("ok").expect("some");
    assert_eq!((slot, h.seq), (1, 5));
    assert_eq!(decode_table(&both[PAGE..])[0], 6);
    // Slot 1 torn (half old, half new bytes): slot 0 is taken.
    both[PAGE + 2048..].fill(0xAB);
    let (slot, h) = pick(&both, Some(&POOL), 3).expect("ok").expect("some");
    assert_eq!((slot, h.seq), (0, 4));
    // Both bad: an error. Blank and bad (a torn first write): nothing.
    both[100] ^= 0xFF;
    assert!(pick(&both, Some(&POOL), 3).is_err());
    both[..PAGE].fill(0);
    assert_eq!(pick(&both, Some(&POOL), 3), Ok(None));
    both.fill(0);
    assert_eq!(pick(&both, Some(&POOL), 3), Ok(None));
}

#[test]
fn pages_of_another_pool_or_another_page_number_are_not_taken() {
    let mut p = vec![0u8; PAGE];
    encode_table(&POOL, 3, 0, 1, &[1], &mut p);
    assert!(matches!(check_slot(&p, Some(&[8; 16]), 3), Slot::Bad(_)));
    assert!(matches!(check_slot(&p, Some(&POOL), 4), Slot::Bad(_)));
    assert!(matches!(check_slot(&p, Some(&POOL), 3), Slot::Valid(_)));
}

#[test]
fn heads_with_continuation_pages_round_trip() {
    let map_pages: Vec<u32> = (0..(HEAD_REFS + EXT_REFS + 10) as u32)
        .map(|i| 1000 + i)
        .collect();
    let h = Head {
        id: 0xdead_beef,
        parent: 77,
        size: 123 << 30,
        flags: flags::THIN | flags::SNAPSHOT,
        transfer_to: 0,
        created: 5,
        uuid: [3; 16],
        name: "volume-one".into(),
        map_pages: map_pages.clone(),
    };
    let ext = Head::ext_pages_needed(map_pages.len());
    assert_eq!(ext, 2);
    let pages = [10u32, 11, 12];
    let enc = h.encode(&POOL, &pages, &[1, 2, 3]);
    assert_eq!(enc.len(), 3);
    let Slot::Valid(hh) = check_slot(&enc[0], Some(&POOL), 10) else {
        panic!("valid head")
    };
    assert_eq!((hh.kind, hh.owner), (Kind::Head, h.id));
    let (mut got, total, mut next) = Head::decode(&enc[0]);
    assert_eq!(total, map_pages.len());
    for (k, &page) in pages.iter().enumerate().skip(1) {
        assert_eq!(next, page);
        let Slot::Valid(eh) = check_slot(&enc[k], Some(&POOL), page) else {
            panic!("valid continuation")
        };
        assert_eq!((eh.kind, eh.owner, eh.aux), (Kind::Ext, h.id, k as u32));
        let (refs, n) = Head::decode_ext(&enc[k], total - got.map_pages.len());
        got.map_pages.extend(refs);
        next = n;
    }
    assert_eq!(next, 0);
    assert_eq!(got, h);
}

#[test]
fn map_pages_drop_the_in_memory_flags() {
    let mut p = vec![0u8; PAGE];
    let entries = [5 | PENDING, 7 | BUSY, ZERO, 0];
    encode_map(&POOL, 20, 99, 3, 1, 0, entries.iter().copied(), &mut p);
    let Slot::Valid(h) = check_slot(&p, Some(&POOL), 20) else {
        panic!("valid map page")
    };
    assert_eq!((h.kind, h.owner, h.aux), (Kind::Map, 99, 3));
    assert_eq!(
        (0..5).map(|i| map_entry(&p, i)).collect::<Vec<_>>(),
        vec![5, 7, ZERO, 0, 0]
    );
}

#[test]
fn blank_means_every_byte_zero_across_pages_and_short_tails() {
    let mut b = vec![0u8; 2 * PAGE + 100];
    assert!(is_blank(&b));
    assert!(is_blank(&b[..0]));
    assert!(is_blank(&b[..17]));
    for at in [0, 1, PAGE - 1, PAGE, PAGE + 2049, 2 * PAGE, 2 * PAGE + 99] {
        b[at] = 0x80;
        assert!(!is_blank(&b), "a byte set at {at} is not blank");
        b[at] = 0;
    }
    let mut p = vec![0u8; PAGE];
    p[PAGE - 1] = 1;
    assert_eq!(
        check_slot(&p, None, 0),
        Slot::Bad("it does not start with the pool metadata magic")
    );
    p[PAGE - 1] = 0;
    assert_eq!(check_slot(&p, None, 0), Slot::Blank);
}
