use super::*;

fn key_of(text: &str) -> Option<String> {
    let c: Config = toml::from_str(text).expect("parses");
    c.validate().err().map(|e| e.key)
}

fn ns(pool: &str, body: &str) -> String {
    format!("{pool}[[subsystem]]\nnqn = \"nqn.2024-01.io.lightpool:t\"\n[[subsystem.namespace]]\nnsid = 1\n{body}\n")
}

#[test]
fn pools_and_volume_namespaces() {
    let pool = "[[pool]]\nname = \"p0\"\nram = \"1GiB\"\ncluster_size = \"1MiB\"\novercommit = 200\n\
                [[pool.volume]]\nname = \"v1\"\nsize = \"100MiB\"\n[[pool.volume]]\nname = \"v2\"\nsize = \"1GiB\"\nthin = false\n";
    assert_eq!(key_of(&ns(pool, "volume = \"p0/v1\"")), None);
    let c: Config = toml::from_str(&ns(pool, "volume = \"p0/v1\"")).expect("parses");
    assert_eq!(c.pools[0].volumes.len(), 2);
    assert!(!c.pools[0].volumes[1].thin && c.pools[0].volumes[0].thin);
    assert!(
        c.pools[0].create,
        "a blank device becomes a pool by default"
    );
    // What `config save` writes reads back the same.
    let text = toml::to_string(&c).expect("serializes");
    assert_eq!(toml::from_str::<Config>(&text).expect("parses back"), c);
    let f = |x: &str| Some(format!("subsystem[0].namespace[0].{x}"));
    assert_eq!(key_of(&ns(pool, "volume = \"p1/v1\"")), f("volume"));
    assert_eq!(key_of(&ns(pool, "volume = \"v1\"")), f("volume"));
    assert_eq!(
        key_of(&ns(pool, "volume = \"p0/v1\"\nram = \"1GiB\"")),
        f("volume")
    );
    assert_eq!(
        key_of(&ns(pool, "volume = \"p0/v1\"\nblock_size = 512")),
        f("block_size")
    );
    let p = |extra: &str| key_of(&format!("[[pool]]\nname = \"p\"\n{extra}\n"));
    assert_eq!(p("device = \"/dev/x\""), None);
    assert_eq!(p(""), Some("pool[0].device".into()));
    assert_eq!(
        p("device = \"/x\"\nram = \"1GiB\""),
        Some("pool[0].device".into())
    );
    assert_eq!(
        p("ram = \"1GiB\"\ncluster_size = \"3MiB\""),
        Some("pool[0].cluster_size".into())
    );
    assert_eq!(
        p("ram = \"1GiB\"\ncluster_size = \"4KiB\""),
        Some("pool[0].cluster_size".into())
    );
    assert_eq!(
        p("ram = \"1GiB\"\n[[pool.volume]]\nname = \"a\"\nsize = 1000"),
        Some("pool[0].volume[0].size".into())
    );
    assert_eq!(
        p("ram = \"1GiB\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1MiB\"\n[[pool.volume]]\nname = \"a\"\nsize = \"1MiB\""),
        Some("pool[0].volume[1].name".into())
    );
    assert_eq!(
        key_of("[[pool]]\nname = \"a/b\"\nram = \"1GiB\"\n"),
        Some("pool[0].name".into())
    );
    // A pool shares its name with the target's other block devices.
    assert_eq!(
        key_of("[[bdev]]\nname = \"p\"\nram = \"1GiB\"\n[[pool]]\nname = \"p\"\nram = \"1GiB\"\n"),
        Some("pool[0].name".into())
    );
    let e = toml::from_str::<Config>("[[pool]]\nname = \"p\"\nram = \"1GiB\"\nlayoutt = 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("layoutt"), "{e}");
}

#[test]
fn pools_on_arrays_and_named_devices() {
    let md = "[[raid]]\nname = \"md0\"\nlevel = \"raid1\"\ndevices = [\"/a\", \"/b\"]\n\
              [[bdev]]\nname = \"disk\"\nfile = \"/c\"\n";
    let pool = |extra: &str| {
        format!(
            "{md}[[pool]]\nname = \"p\"\n{extra}\n[[pool.volume]]\nname = \"v\"\nsize = \"1GiB\"\n"
        )
    };
    assert_eq!(key_of(&pool("raid = \"md0\"")), None);
    assert_eq!(key_of(&pool("bdev = \"disk\"")), None);
    let c: Config = toml::from_str(&pool("raid = \"md0\"")).expect("parses");
    assert_eq!(c.pools[0].device_name().map(String::as_str), Some("md0"));
    let f = |x: &str| Some(format!("pool[0].{x}"));
    assert_eq!(key_of(&pool("raid = \"md1\"")), f("raid"), "no such array");
    assert_eq!(key_of(&pool("bdev = \"nope\"")), f("bdev"), "no such bdev");
    assert_eq!(
        key_of(&pool("raid = \"md0\"\ndevice = \"/x\"")),
        f("device"),
        "two devices"
    );
    assert_eq!(
        key_of(&pool("raid = \"md0\"\nblock_size = 4096")),
        f("block_size"),
        "the array's block size"
    );
    // Two pools on one device, or a namespace or pass-through on a pool's device, would
    // write over each other.
    assert_eq!(
        key_of(&format!(
            "{}[[pool]]\nname = \"q\"\nraid = \"md0\"\n",
            pool("raid = \"md0\"")
        )),
        Some("pool[1].raid".into())
    );
    assert_eq!(
        key_of(&ns(&pool("raid = \"md0\""), "volume = \"p/v\"")),
        None
    );
    assert_eq!(
        key_of(&ns(&pool("raid = \"md0\""), "raid = \"md0\"")),
        Some("subsystem[0].namespace[0].raid".into())
    );
    assert_eq!(
        key_of(&ns(&pool("bdev = \"disk\""), "bdev = \"disk\"")),
        Some("subsystem[0].namespace[0].bdev".into())
    );
    assert_eq!(
        key_of(&ns(
            &pool("raid = \"md0\""),
            "raid = \"md0\"\nvolume = \"p/v\""
        )),
        Some("subsystem[0].namespace[0].volume".into())
    );
}

/// A pool's registry description travels in the boot blob (postcard) at a hot upgrade.
#[test]
fn a_pool_description_survives_the_boot_blob_encoding() {
    let c: Config = toml::from_str(
        "[[pool]]\nname = \"p\"\nram = \"1GiB\"\ncluster_size = \"64KiB\"\n[[pool.volume]]\nname = \"v\"\nsize = \"1GiB\"\nthin = false\n",
    )
    .expect("parses");
    let spec = crate::pools::spec(&c.pools[0]).expect("spec");
    let bytes = postcard::to_stdvec(&spec).expect("encodes");
    let back: crate::manage::DeviceSpec = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back, spec);
    let crate::manage::DeviceSpec::Pool(text) = back else {
        panic!("not a pool: {back:?}");
    };
    assert_eq!(crate::pools::section(&text).expect("section"), c.pools[0]);
}
