//! Starting a target from its configuration: an empty target, its reactors, transports
//! and sockets first; then the configuration applied as its desired state through the
//! same operations as the management API (`manage::apply`); then the banner.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use lightpool_nvmf::{Target, TargetOptions, TransportContext};

use crate::config::{
    self, at_file, BdevSection, Config, ListenerSection, Locator, NamespaceSection, Size,
    SubsystemSection,
};
use crate::{firmware_revision, manage, transports, upgrade, Running};

/// The subsystem served when no configuration is given.
pub const DEFAULT_NQN: &str = "nqn.2024-01.io.lightpool:default";

/// What `start` takes from the command line.
pub struct StartArgs<'a> {
    pub config: Option<&'a Path>,
    pub listen: &'a [SocketAddr],
    pub state_dir: Option<&'a Path>,
    pub layout: u32,
    pub api_path: &'a str,
}

/// One 1 GiB RAM namespace in subsystem `DEFAULT_NQN` on 127.0.0.1:4420.
fn default_config() -> Config {
    Config {
        target: Default::default(),
        listeners: vec![ListenerSection {
            address: "127.0.0.1:4420".into(),
            transport: "tcp".into(),
            secure: String::new(),
            ktls: String::new(),
            engine: String::new(),
            interface: String::new(),
            xdp_mode: String::new(),
        }],
        bdevs: Vec::<BdevSection>::new(),
        subsystems: vec![SubsystemSection {
            nqn: DEFAULT_NQN.into(),
            serial: "LIGHTPOOL0000001".into(),
            model: "LightPool".into(),
            allow_any_host: true,
            hosts: vec![],
            host_keys: vec![],
            tls_keys: vec![],
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
            namespaces: vec![NamespaceSection {
                nsid: 1,
                ram: Some(Size(1 << 30)),
                block_size: Some(512),
                ..Default::default()
            }],
            ana_groups: vec![],
        }],
        raids: Vec::new(),
        pools: Vec::new(),
        api: None,
    }
}

pub fn start(a: StartArgs<'_>, control_path: &str) -> Result<Running> {
    let (mut cfg, loc) = match a.config {
        Some(path) => {
            let (c, l) = config::load(path).map_err(|e| anyhow!(e))?;
            (c, Some(l))
        }
        None => (default_config(), None),
    };
    if !a.listen.is_empty() {
        cfg.listeners = a
            .listen
            .iter()
            .map(|x| ListenerSection {
                address: x.to_string(),
                transport: "tcp".into(),
                secure: String::new(),
                ktls: String::new(),
                engine: String::new(),
                interface: String::new(),
                xdp_mode: String::new(),
            })
            .collect();
    }
    if cfg.listeners.is_empty() {
        bail!(
            "no listener configured: add a [[listener]] with an address, or pass --listen IP:PORT"
        );
    }
    let state_dir = a
        .state_dir
        .map(Path::to_path_buf)
        .or_else(|| cfg.target.state_dir.clone());
    if let Some(d) = &state_dir {
        std::fs::create_dir_all(d)
            .with_context(|| format!("creating the state directory {}", d.display()))?;
    }
    let t = &cfg.target;
    if let Some(on) = t.rdma_srq {
        crate::transports::set_rdma_srq(on)?;
    }
    let opts = TargetOptions {
        max_queue_depth: t.max_queue_depth,
        max_io_queues: t.max_io_queues,
        in_capsule_data_size: t.in_capsule_data_size,
        max_transfer_size: t.max_transfer_size,
        firmware_revision: firmware_revision().to_string(),
        ..TargetOptions::default()
    };
    let target = Target::new(opts).map_err(|e| anyhow!("target: {e}"))?;
    let region = upgrade::create_region(&target.opts, state_dir.as_deref(), a.layout)?;
    target
        .attach_region(region.clone())
        .map_err(|e| anyhow!("state region: {e}"))?;
    crate::instance::prepare_dir(control_path)?;
    let control = crate::control::bind(control_path)?;
    // Until the target serves, a failure removes the socket it bound (the API's goes
    // with `Mgmt`).
    let unbind = crate::control::Unbind::new(control_path);
    let api = crate::api::bind(a.api_path)?;
    let unbind_api = crate::control::Unbind::new(a.api_path);
    let metrics = cfg
        .target
        .metrics_address
        .as_deref()
        .map(crate::metrics::bind)
        .transpose()?;
    let api_tcp = match cfg.api.as_ref().map(|a| a.check()).transpose() {
        Ok(t) => t.flatten().map(crate::api::tcp::ApiTcp::bind).transpose()?,
        Err(e) => bail!(describe(a.config, loc.as_ref(), a.listen, &e)),
    };
    let cores: Vec<Option<usize>> = if cfg.target.cores.is_empty() {
        vec![None; cfg.target.reactors]
    } else {
        cfg.target.cores.iter().map(|&c| Some(c)).collect()
    };
    let reactors = crate::spawn_reactors(&cores, cfg.target.idle_spin_us)?;
    let transports = transports::Transports::new(TransportContext {
        target: target.clone(),
        reactors: reactors.clone(),
    });
    let run = Running {
        target,
        reactors,
        transports,
        cores,
        idle_spin_us: cfg.target.idle_spin_us,
        control,
        control_path: control_path.to_string(),
        layout: a.layout,
        state_dir,
        region,
        mgmt: manage::Mgmt::new(manage::Registry::default(), 0, a.api_path.to_string(), api),
        metrics,
        api_tcp,
    };
    // From here the API socket goes with `run.mgmt`.
    unbind_api.keep();
    let fail = |e: config::FieldError| -> anyhow::Error {
        for r in &run.reactors {
            r.stop();
        }
        anyhow!(describe(a.config, loc.as_ref(), a.listen, &e))
    };
    manage::apply::apply(&run, &cfg).map_err(fail)?;
    banner(&run);
    upgrade::write_boot(&run)?;
    unbind.keep();
    Ok(run)
}

/// An error applying the configuration, in the one form (`FILE:LINE: KEY: reason`).
fn describe(
    file: Option<&Path>,
    loc: Option<&Locator>,
    listen: &[SocketAddr],
    e: &config::FieldError,
) -> String {
    if !listen.is_empty() && e.key.starts_with("listener[") {
        let i: usize = e.key["listener[".len()..]
            .split(']')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return format!(
            "--listen {}: {}",
            listen.get(i).map_or_else(String::new, |a| a.to_string()),
            e.reason
        );
    }
    match (file, loc) {
        (Some(f), Some(l)) => at_file(f, l, e),
        _ => format!("built-in configuration: {e}"),
    }
}

fn banner(run: &Running) {
    for s in run.target.subsystems() {
        let ns: Vec<String> = s
            .namespaces()
            .iter()
            .map(|n| {
                format!(
                    "nsid {} ({} x {} B, {})",
                    n.nsid,
                    n.num_blocks,
                    n.block_size,
                    n.bdev.info().name
                )
            })
            .collect();
        if ns.is_empty() {
            println!(
                "lightpool-target {}: subsystem {} has no namespace yet (add one: lightpool namespace add --nqn {} --device DEVICE)",
                firmware_revision(),
                s.nqn,
                s.nqn
            );
        } else {
            println!(
                "lightpool-target {}: subsystem {} with {}",
                firmware_revision(),
                s.nqn,
                ns.join(", ")
            );
        }
    }
    let kinds = transports::kinds();
    let listeners = run.target.listeners();
    for l in &listeners {
        let name = kinds.by_trtype(l.addr.trtype).map_or("?", |k| k.name());
        println!(
            "lightpool-target: listening on {} ({}, discovery included)",
            l.addr.to_addr_string(),
            transports::label(name)
        );
    }
    let first_ns = run
        .target
        .subsystems()
        .into_iter()
        .find(|s| !s.namespaces().is_empty());
    if let (Some(l), Some(s)) = (listeners.first(), first_ns) {
        let name = kinds.by_trtype(l.addr.trtype).map_or("tcp", |k| k.name());
        println!(
            "Connect a Linux host with: nvme connect -t {name} -a {} -s {} -n {}",
            l.addr.traddr, l.addr.trsvcid, s.nqn
        );
    }
    println!(
        "lightpool-target: control socket {} (upgrade with: lightpool-target upgrade --binary NEW --control-socket {}); management API on {} (lightpool --socket {})",
        run.control_path, run.control_path, run.mgmt.api_path, run.mgmt.api_path
    );
}
