//! `--recover`: start from the region a hot upgrade left in the state directory.

use anyhow::{Context, Result};
use lightpool_nvmf::region::Region;
use lightpool_nvmf::restore;
use lightpool_nvmf::{Target, TransportContext};

use crate::Running;

use super::*;

/// Start from the region in `dir` after the processes that wrote it died: the same
/// subsystems, namespaces (RAM data from the state directory's files), ANA states and
/// listeners, in a fresh region. Controllers and queues are read, checked and reported,
/// then dropped: their connections died with the processes, and hosts reconnect.
/// Without a `control_path` (or `api_path`) it binds the one the processes that wrote
/// it used. The metrics endpoint is not in the region: a recovered target serves none.
pub fn recover(
    dir: &std::path::Path,
    control_path: Option<&str>,
    api_path: Option<&str>,
) -> Result<Running> {
    let path = dir.join(REGION_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("no state region to recover from at {}", path.display()))?;
    let old = Region::open(f).with_context(|| format!("reading {}", path.display()))?;
    let boot = read_boot(&old).with_context(|| format!("reading {}", path.display()))?;
    let mut image = restore::read_image(&old, true)
        .with_context(|| format!("reading the records of {}", path.display()))?;
    let in_flight: usize = image.queues.iter().map(|q| q.busy.len()).sum();
    let dropped = (image.controllers.len(), image.queues.len());
    tracing::info!(
        controllers = image.controllers.len(),
        queues = image.queues.len(),
        commands_in_flight = in_flight,
        writer_pid = old.owner_pid(),
        "recovery: controller and queue records read and checked; dropped (their connections died with the processes)"
    );
    for q in &image.queues {
        tracing::info!(
            record = q.rec,
            cntlid = q.stat.cntlid,
            qid = q.stat.qid,
            entries = q.stat.entries,
            sqhd = q.sqhd,
            in_flight = q.busy.len(),
            rx_state = q.rx.kind,
            "recovery: dropped queue"
        );
    }
    let mut devs = Devices::new();
    adopt_devices(&boot.devices, &mut devs, None)?;
    image.controllers.clear();
    let listeners = std::mem::take(&mut image.target.listeners);
    let (target, _) =
        Target::import_state(&image.target, crate::firmware_revision(), |nqn, nsid| {
            namespace_bdev(&boot.namespaces, &devs, nqn, nsid)
        })?;
    let registry = rebuild_registry(&boot.registry, &devs)?;
    super::restore_host_keys(&old, &target)?;
    let region = create_region(&target.opts, Some(dir), STATE_LAYOUT)?;
    drop(old);
    target.attach_region(region.clone())?;
    let control_path = control_path.unwrap_or(&boot.control_path).to_string();
    let api_path = api_path.unwrap_or(&boot.api_path).to_string();
    crate::instance::prepare_dir(&control_path)?;
    let control = crate::control::bind(&control_path)?;
    let api = crate::api::bind(&api_path)?;
    let reactors = crate::spawn_reactors(&boot.cores, boot.idle_spin_us)?;
    let transports = crate::transports::Transports::new(TransportContext {
        target: target.clone(),
        reactors: reactors.clone(),
    });
    let kinds = crate::transports::kinds();
    for l in &listeners {
        let addr = lightpool_nvmf::ListenAddr {
            trtype: l.trtype,
            adrfam: l.adrfam,
            traddr: l.traddr.clone(),
            trsvcid: l.trsvcid.clone(),
        }
        .to_addr_string();
        let kind = kinds.by_trtype(l.trtype).with_context(|| {
            format!(
                "listener {addr} has transport type {}, which this binary does not serve",
                l.trtype
            )
        })?;
        transports
            .get_or_create(kind.name())?
            .add_listener(&addr)
            .with_context(|| format!("listener {addr}"))?;
    }
    println!(
        "lightpool-target {}: recovered {} subsystem(s) from {} (left by {} pid {}); dropped {} controller(s) and {} queue(s)",
        crate::firmware_revision(),
        image.target.subsystems.len(),
        path.display(),
        boot.version,
        boot.pid,
        dropped.0,
        dropped.1,
    );
    let run = Running {
        target,
        reactors,
        transports,
        cores: boot.cores,
        idle_spin_us: boot.idle_spin_us,
        control,
        control_path,
        layout: STATE_LAYOUT,
        state_dir: Some(dir.to_path_buf()),
        region,
        mgmt: crate::manage::Mgmt::new(registry, boot.changes, api_path, api),
        metrics: None,
        api_tcp: None,
    };
    write_boot(&run)?;
    Ok(run)
}
