use super::*;

const NQN: &str = "nqn.2024-01.io.lightpool:t";

fn parse(text: &str) -> Config {
    toml::from_str(text).expect("parses")
}

fn key_of(text: &str) -> Option<String> {
    parse(text).validate().err().map(|e| e.key)
}

fn ns(body: &str) -> String {
    format!("[[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.namespace]]\nnsid = 1\n{body}\n")
}

#[test]
fn example_config_parses_and_validates() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/examples/target.toml"
    ));
    let (c, _) = load(path).expect("the example is valid");
    assert!(!c.subsystems.is_empty());
}

/// The `target.toml` a deploy/ manifest's ConfigMap carries (the block under
/// `  target.toml: |`, dedented).
fn manifest_config(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    let text = std::fs::read_to_string(&path).expect("manifest");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim_end() == "  target.toml: |" {
            inside = true;
            continue;
        }
        if inside {
            if !line.is_empty() && !line.starts_with("    ") {
                break;
            }
            out.push_str(line.strip_prefix("    ").unwrap_or(""));
            out.push('\n');
        }
    }
    assert!(!out.trim().is_empty(), "{rel} carries no target.toml");
    out
}

#[test]
fn the_deploy_profiles_configs_parse_and_validate() {
    for rel in ["deploy/dataplane/target.yaml", "deploy/dpu/target-dpu.yaml"] {
        let c: Config =
            toml::from_str(&manifest_config(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        if let Err(e) = c.validate() {
            panic!("{rel}: {}: {}", e.key, e.reason);
        }
        assert!(!c.listeners.is_empty(), "{rel}");
    }
    let dpu: Config = toml::from_str(&manifest_config("deploy/dpu/target-dpu.yaml")).expect("dpu");
    assert_eq!(
        dpu.listeners[0].engine, "af_xdp",
        "the DPU profile serves through AF_XDP"
    );
    assert_eq!(
        dpu.target.reactors, 4,
        "a reactor per core the DPU pod gets"
    );
}

#[test]
fn unknown_field_is_named_with_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("lp-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("c.toml");
    std::fs::write(&p, "[target]\nreactors = 1\nreactorz = 2\n").expect("write");
    let e = load(&p).err().expect("refused");
    assert!(
        e.starts_with(&format!("{}:3: target.reactorz: ", p.display())),
        "{e}"
    );
    assert!(e.contains("unknown field `reactorz`"), "{e}");
    // A value the checks refuse: the same form.
    std::fs::write(&p, ns("ram = \"1GiB\"\nblock_size = 1000")).expect("write");
    let e = load(&p).err().expect("refused");
    assert!(
        e.starts_with(&format!(
            "{}:6: subsystem[0].namespace[0].block_size: 1000 is neither",
            p.display()
        )),
        "{e}"
    );
    // A value the parser refuses (a bad unit): the same form.
    std::fs::write(&p, ns("ram = \"64MB\"")).expect("write");
    let e = load(&p).err().expect("refused");
    assert!(
        e.starts_with(&format!(
            "{}:5: subsystem[0].namespace[0].ram: ",
            p.display()
        )) && e.contains("\"64MiB\""),
        "{e}"
    );
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(
        key_of(&ns("ram = \"1GiB\"\nblock_size = 1000")).as_deref(),
        Some("subsystem[0].namespace[0].block_size")
    );
    assert_eq!(
        key_of("[[listener]]\naddress = \"localhost\"\n").as_deref(),
        Some("listener[0].address")
    );
    assert_eq!(
        key_of(&ns("")).as_deref(),
        Some("subsystem[0].namespace[0].bdev")
    );
    let e = parse("[target]\nmetrics_address = \"localhost:9464\"\n")
        .validate()
        .expect_err("not IP:PORT");
    assert_eq!(e.key, "target.metrics_address");
    assert!(e.reason.contains("is not IP:PORT"), "{e}");
    assert!(parse("[target]\nmetrics_address = \"[::1]:9464\"\n")
        .validate()
        .is_ok());
}

#[test]
fn nqns_are_checked() {
    let e = parse("[[subsystem]]\nnqn = \"db1\"\n")
        .validate()
        .expect_err("db1 is no NQN");
    assert_eq!(e.key, "subsystem[0].nqn");
    assert!(e.reason.contains("nqn.2024-01.com.example:db1"), "{e}");
    let e = parse(&format!(
        "[[subsystem]]\nnqn = \"{NQN}\"\nhosts = [\"nqn.2014-08.org.nvmexpress:uuid:x\"]\n"
    ))
    .validate()
    .expect_err("bad host");
    assert_eq!(e.key, "subsystem[0].hosts[0]");
}

#[test]
fn ram_sizes_in_bytes_or_binary_units() {
    assert_eq!(key_of(&ns("ram = 67108864")), None);
    let c = parse(&ns("ram = 67108864"));
    assert_eq!(c.subsystems[0].namespaces[0].ram, Some(Size(64 << 20)));
    assert_eq!(key_of(&ns("ram = \"64MiB\"")), None);
    assert!(toml::from_str::<Config>(&ns("ram = \"64MB\""))
        .expect_err("ambiguous")
        .to_string()
        .contains("ambiguous"));
    assert_eq!(
        key_of(&ns("ram = 1000")).as_deref(),
        Some("subsystem[0].namespace[0].ram"),
        "not whole blocks"
    );
}

#[test]
fn fault_devices_and_their_rules() {
    let ram = "[[bdev]]\nname = \"r\"\nram = \"1MiB\"\n";
    let ok = format!(
        "{ram}[[bdev]]\nname = \"f\"\nfault = \"r\"\nfaults = [\"write:eio,count=1\", \"read:delay=5ms\"]\n{}",
        ns("bdev = \"f\"")
    );
    assert_eq!(key_of(&ok), None);
    let c = parse(&ok);
    assert_eq!(
        crate::manage::DeviceSpec::from_section(&c.bdevs[1]),
        crate::manage::DeviceSpec::Fault {
            base: "r".into(),
            rules: vec!["write:eio,count=1".into(), "read:delay=5ms".into()]
        }
    );
    assert_eq!(
        key_of("[[bdev]]\nname = \"f\"\nfault = \"r\"\n").as_deref(),
        Some("bdev[0].fault"),
        "its base comes first"
    );
    let bad = parse(&format!(
        "{ram}[[bdev]]\nname = \"f\"\nfault = \"r\"\nfaults = [\"write:eio\", \"write:boom\"]\n"
    ))
    .validate()
    .unwrap_err();
    assert_eq!(bad.key, "bdev[1].faults[1]");
    assert!(bad.to_string().contains("unknown fault \"boom\""), "{bad}");
    assert_eq!(
        key_of(&format!(
            "{ram}[[bdev]]\nname = \"p\"\npassthru = \"r\"\nfaults = [\"write:eio\"]\n"
        ))
        .as_deref(),
        Some("bdev[1].faults"),
        "rules without a fault device"
    );
    assert_eq!(
        key_of(&format!(
            "{ram}[[bdev]]\nname = \"f\"\nfault = \"r\"\npassthru = \"r\"\n"
        ))
        .as_deref(),
        Some("bdev[1].fault"),
        "one kind only"
    );
}

#[test]
fn devices_by_name() {
    let ok = format!(
        "[[bdev]]\nname = \"r\"\nram = \"1MiB\"\n[[bdev]]\nname = \"p\"\npassthru = \"r\"\n{}",
        ns("bdev = \"p\"")
    );
    assert_eq!(key_of(&ok), None);
    assert_eq!(
        key_of(&ns("bdev = \"nope\"")).as_deref(),
        Some("subsystem[0].namespace[0].bdev")
    );
    assert_eq!(
        key_of("[[bdev]]\nname = \"p\"\npassthru = \"r\"\n").as_deref(),
        Some("bdev[0].passthru")
    );
    assert_eq!(
        key_of("[[bdev]]\nname = \"a b\"\nram = \"1MiB\"\n").as_deref(),
        Some("bdev[0].name")
    );
    assert_eq!(
        key_of("[[bdev]]\nname = \"a\"\nram = \"1MiB\"\n[[bdev]]\nname = \"a\"\nram = \"1MiB\"\n")
            .as_deref(),
        Some("bdev[1].name")
    );
    assert_eq!(
        key_of(&format!(
            "[[bdev]]\nname = \"r\"\nram = \"1MiB\"\n{}",
            ns("bdev = \"r\"\nram = \"1MiB\"")
        ))
        .as_deref(),
        Some("subsystem[0].namespace[0].bdev")
    );
}

#[test]
fn vfio_namespaces() {
    let k = |body: &str| key_of(&ns(body));
    assert_eq!(k("vfio = \"0000:00:04.0\"\nvfio_nsid = 2"), None);
    assert_eq!(k("vfio = \"00:04.0\""), None);
    let f = |x: &str| Some(format!("subsystem[0].namespace[0].{x}"));
    assert_eq!(k("vfio = \"nvme0\""), f("vfio"));
    assert_eq!(k("vfio = \"0000:00:04.0\"\nram = \"1GiB\""), f("vfio"));
    assert_eq!(k("vfio = \"0000:00:04.0\"\nfile = \"/x\""), f("vfio"));
    assert_eq!(k("ram = \"1GiB\"\nvfio_nsid = 1"), f("vfio_nsid"));
    assert_eq!(k("ram = \"1GiB\"\nhugepages = true"), None);
    assert_eq!(k("file = \"/x\"\nhugepages = true"), f("hugepages"));
    assert_eq!(
        k("vfio = \"0000:00:04.0\"\nhugepages = true"),
        f("hugepages")
    );
    assert_eq!(k("vfio = \"0000:00:04.0\"\nvfio_nsid = 0"), f("vfio_nsid"));
    assert_eq!(
        k("vfio = \"0000:00:04.0\"\nblock_size = 512"),
        f("block_size")
    );
}

#[test]
fn ana_groups_are_checked() {
    let s = |body: &str| {
        key_of(&format!(
            "[[subsystem]]\nnqn = \"{NQN}\"\n[[subsystem.ana_group]]\n{body}\n"
        ))
    };
    assert_eq!(s("group = 2\nstate = \"inaccessible\""), None);
    assert_eq!(
        s("group = 2\nstate = \"gone\"").as_deref(),
        Some("subsystem[0].ana_group[0].state")
    );
    assert_eq!(
        s("group = 33\nstate = \"optimized\"").as_deref(),
        Some("subsystem[0].ana_group[0].group")
    );
}

#[test]
fn a_config_written_back_reads_the_same() {
    let c = parse(&format!(
        "[target]\nreactors = 2\nmetrics_address = \"127.0.0.1:9464\"\n[[listener]]\naddress = \"127.0.0.1:4420\"\n[[bdev]]\nname = \"r\"\nram = 67108864\n{}",
        ns("bdev = \"r\"\nsize = \"32MiB\"\nnguid = \"000102030405060708090a0b0c0d0e0f\"")
    ));
    assert_eq!(c.target.metrics_address.as_deref(), Some("127.0.0.1:9464"));
    let text = toml::to_string(&c).expect("serializes");
    assert_eq!(parse(&text), c, "{text}");
}

#[test]
fn rdma_listeners_need_a_binary_with_the_rdma_feature() {
    let cfg = parse("[[listener]]\ntransport = \"rdma\"\naddress = \"10.0.2.15:4420\"\n");
    #[cfg(feature = "rdma")]
    assert!(cfg.validate().is_ok());
    #[cfg(not(feature = "rdma"))]
    {
        let e = cfg.validate().expect_err("not built in");
        assert_eq!(e.key, "listener[0].transport");
        assert!(
            e.reason.contains("\"rdma\"") && e.reason.contains("tcp"),
            "{e}"
        );
    }
}

#[test]
fn rdma_srq_is_read_and_saved_only_when_given() {
    let c = parse("[target]\nrdma_srq = true\n[[listener]]\naddress = \"127.0.0.1:4420\"\n");
    assert_eq!(c.target.rdma_srq, Some(true));
    let text = toml::to_string(&c).expect("serializes");
    assert_eq!(parse(&text), c, "{text}");
    let d = parse("[[listener]]\naddress = \"127.0.0.1:4420\"\n");
    assert_eq!(d.target.rdma_srq, None);
    assert!(!toml::to_string(&d)
        .expect("serializes")
        .contains("rdma_srq"));
}

#[test]
fn cores_are_checked_against_the_cpu_affinity_not_a_count() {
    let cores = |list: &str| {
        parse(&format!(
            "[target]\ncores = [{list}]\n[[listener]]\naddress = \"127.0.0.1:4420\"\n"
        ))
        .validate()
    };
    let e = cores("100000").expect_err("no such core");
    assert_eq!(e.key, "target.cores[0]");
    assert!(e.reason.contains("may run on"), "{}", e.reason);
    let all: Vec<usize> = core_affinity::get_core_ids()
        .expect("affinity")
        .into_iter()
        .map(|c| c.id)
        .collect();
    // This thread restricted to its highest core (as a cpuset or taskset would): that
    // core is accepted even though its number is not below the count of allowed
    // cores, and any other is refused, naming the allowed ones.
    let last = *all.last().expect("a core");
    assert!(core_affinity::set_for_current(core_affinity::CoreId {
        id: last
    }));
    assert!(cores(&last.to_string()).is_ok());
    if let Some(other) = all.iter().find(|&&c| c != last) {
        let e = cores(&other.to_string()).expect_err("outside the affinity");
        assert!(e.reason.contains(&format!("allows {last}")), "{}", e.reason);
    }
}
