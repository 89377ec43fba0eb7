//! Each subcommand: one API call, its answer as a table or JSON.

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    ana_client::AnaClient, block_devices_client::BlockDevicesClient, config_client::ConfigClient,
    controllers_client::ControllersClient, listeners_client::ListenersClient,
    logging_client::LoggingClient, namespaces_client::NamespacesClient,
    statistics_client::StatisticsClient, subsystems_client::SubsystemsClient,
    upgrade_client::UpgradeClient,
};
use serde::Serialize;
use tonic::transport::Channel;

use crate::table;
use crate::{
    AnaCmd, BdevCmd, Cli, Cmd, ConfigCmd, ConnectionCmd, ControllerCmd, ListenerCmd, LogCmd,
    NamespaceCmd, SubsystemCmd,
};

/// "1GiB", "512MiB", "4096" (bytes); ambiguous units ("1G", "1GB") are refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1GiB, 512MiB or 4096"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        u => {
            return Err(format!(
                "unknown or ambiguous size unit {u:?}: use KiB, MiB, GiB or TiB, or give bytes"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub fn parse_ana_state(s: &str) -> Result<i32, String> {
    Ok(match s {
        "optimized" => pb::AnaState::Optimized,
        "non-optimized" => pb::AnaState::NonOptimized,
        "inaccessible" => pb::AnaState::Inaccessible,
        "persistent-loss" => pb::AnaState::PersistentLoss,
        "change" => pb::AnaState::Change,
        _ => {
            return Err(format!(
                "{s:?}: give optimized, non-optimized, inaccessible, persistent-loss or change"
            ))
        }
    } as i32)
}

fn ana_name(state: i32) -> &'static str {
    match pb::AnaState::try_from(state) {
        Ok(pb::AnaState::Optimized) => "optimized",
        Ok(pb::AnaState::NonOptimized) => "non-optimized",
        Ok(pb::AnaState::Inaccessible) => "inaccessible",
        Ok(pb::AnaState::PersistentLoss) => "persistent-loss",
        Ok(pb::AnaState::Change) => "change",
        _ => "?",
    }
}

pub(crate) fn size(bytes: u64) -> String {
    for (u, sh) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes != 0 && bytes.trailing_zeros() >= sh {
            return format!("{}{u}", bytes >> sh);
        }
    }
    format!("{bytes}B")
}

/// A gRPC status as the one line the user reads (with the transport's reasons, when
/// the call never reached the target: a TLS refusal reads as one).
pub(crate) fn refused(s: tonic::Status) -> String {
    let mut line = format!("{} ({:?})", s.message(), s.code());
    let mut src = std::error::Error::source(&s);
    while let Some(e) = src {
        line.push_str(&format!(": {e}"));
        src = e.source();
    }
    line
}

pub(crate) fn emit<T: Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
        );
    } else {
        human(v);
    }
    Ok(())
}

/// `target host-key clear` and `target tls-key clear`: `clear` (the kind's call, given
/// the subsystem and host NQNs) removes `host`'s key on `nqn`; `what` names the key.
pub(crate) async fn clear_host_key<T>(
    j: bool,
    nqn: &str,
    host: &str,
    what: &str,
    clear: impl AsyncFnOnce(String, String) -> Result<T, tonic::Status>,
) -> Result<(), String> {
    clear(nqn.to_string(), host.to_string())
        .await
        .map_err(refused)?;
    done(j, &format!("{what} of {host} on {nqn} cleared"));
    Ok(())
}

/// A column of a table of keys: its header and its cell of each key.
pub(crate) type Column<K> = (&'static str, fn(&K) -> String);

/// `target host-key list` and `target tls-key list`: the keys each subsystem (`nqn`'s
/// alone, when given) holds per host, never the secrets. `keys` takes a subsystem's
/// NQN and keys; the table has a SUBSYSTEM column, then `columns` (header, cell).
pub(crate) async fn list_host_keys<K: Serialize>(
    j: bool,
    api: &mut SubsystemsClient<Channel>,
    nqn: &Option<String>,
    keys: fn(pb::Subsystem) -> (String, Vec<K>),
    columns: &[Column<K>],
) -> Result<(), String> {
    let subs = api
        .list_subsystems(pb::ListSubsystemsRequest {
            nqn: nqn.clone().unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner()
        .subsystems;
    let rows: Vec<(String, K)> = subs
        .into_iter()
        .flat_map(|s| {
            let (nqn, keys) = keys(s);
            keys.into_iter().map(move |k| (nqn.clone(), k))
        })
        .collect();
    let keys: Vec<&K> = rows.iter().map(|(_, k)| k).collect();
    emit(j, &keys, |_| {
        let header: Vec<&str> = ["SUBSYSTEM"]
            .into_iter()
            .chain(columns.iter().map(|c| c.0))
            .collect();
        let cells = |(n, k): &(String, K)| {
            let rest = columns.iter().map(|c| c.1(k));
            [n.clone()].into_iter().chain(rest).collect()
        };
        table::print(&header, &rows.iter().map(cells).collect::<Vec<_>>())
    })
}

fn namespaces_table(ns: &[pb::Namespace]) {
    table::print(
        &[
            "NQN",
            "NSID",
            "DEVICE",
            "SIZE",
            "BLOCK",
            "ANA GROUP",
            "NGUID",
        ],
        &ns.iter()
            .map(|n| {
                vec![
                    n.nqn.clone(),
                    n.nsid.to_string(),
                    n.device.clone(),
                    size(n.num_blocks * u64::from(n.block_size)),
                    n.block_size.to_string(),
                    n.ana_group.to_string(),
                    n.nguid.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn devices_table(ds: &[pb::BlockDevice]) {
    table::print(
        &[
            "NAME",
            "KIND",
            "SIZE",
            "BLOCK",
            "CHILDREN",
            "NAMESPACES",
            "READS",
            "WRITES",
            "BACKEND",
        ],
        &ds.iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.kind.clone(),
                    size(d.num_blocks * u64::from(d.block_size)),
                    d.block_size.to_string(),
                    d.children.join(","),
                    d.namespaces.join(","),
                    d.io.as_ref().map_or("-".into(), |i| i.reads.to_string()),
                    d.io.as_ref().map_or("-".into(), |i| i.writes.to_string()),
                    d.backend_name.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn controllers_table(cs: &[pb::Controller]) {
    table::print(
        &[
            "NQN",
            "CNTLID",
            "HOST",
            "IO QUEUES",
            "READS",
            "WRITES",
            "FAILED",
        ],
        &cs.iter()
            .map(|c| {
                vec![
                    c.nqn.clone(),
                    c.cntlid.to_string(),
                    c.host_nqn.clone(),
                    c.io_queues.to_string(),
                    c.read_commands.to_string(),
                    c.write_commands.to_string(),
                    c.failed.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

#[derive(Serialize)]
struct AnaView {
    nqn: String,
    group: u32,
    state: &'static str,
    change_count: u64,
    nsids: Vec<u32>,
}

fn ana_view(g: &pb::AnaGroup) -> AnaView {
    AnaView {
        nqn: g.nqn.clone(),
        group: g.group,
        state: ana_name(g.state),
        change_count: g.change_count,
        nsids: g.nsids.clone(),
    }
}

fn ana_table(gs: &[AnaView]) {
    table::print(
        &["NQN", "GROUP", "STATE", "CHANGES", "NSIDS"],
        &gs.iter()
            .map(|g| {
                vec![
                    g.nqn.clone(),
                    g.group.to_string(),
                    g.state.to_string(),
                    g.change_count.to_string(),
                    g.nsids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

pub(crate) fn done(json: bool, what: &str) {
    if json {
        println!("{{}}");
    } else {
        println!("{what}");
    }
}

/// Where the API is: the target's Unix socket, or TCP with mutual TLS.
pub enum Dest {
    Unix(std::path::PathBuf),
    Tls(String, lightpool_api::ClientTls),
}

async fn channel(dest: &Dest) -> Result<Channel, String> {
    match dest {
        Dest::Unix(path) => lightpool_api::connect(path).await.map_err(|e| {
            format!(
                "no lightpool-target answers on {} ({e}): start one, or name its socket with --socket or --control-socket",
                path.display()
            )
        }),
        Dest::Tls(addr, tls) => {
            let advice = |why: String| {
                format!(
                    "cannot reach the API at {addr} over mutual TLS ({why}): check --api, and that --tls-ca signed the target's certificate and the target's client_ca signed --tls-cert"
                )
            };
            let ch = lightpool_api::connect_tls(addr, tls).await.map_err(|e| {
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    why.push_str(&format!(": {s}"));
                    src = s.source();
                }
                advice(why)
            })?;
            // A target that refuses this client's certificate says so only once a
            // request goes out (TLS 1.3): ask for its status first.
            UpgradeClient::new(ch.clone())
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(|s| advice(refused(s)))?;
            Ok(ch)
        }
    }
}

pub async fn run(cli: &Cli, dest: &Dest) -> Result<(), String> {
    let ch: Channel = channel(dest).await?;
    let j = cli.json;
    match &cli.cmd {
        Cmd::Subsystem(c) => {
            let mut api = SubsystemsClient::new(ch);
            match c {
                SubsystemCmd::Create {
                    nqn,
                    serial,
                    model,
                    hosts,
                    allow_any_host,
                    min_cntlid,
                    max_cntlid,
                } => {
                    let s = api
                        .create_subsystem(pb::CreateSubsystemRequest {
                            nqn: nqn.clone(),
                            serial: serial.clone(),
                            model: model.clone(),
                            allow_any_host: allow_any_host.then_some(true),
                            hosts: hosts.clone(),
                            min_cntlid: *min_cntlid,
                            max_cntlid: *max_cntlid,
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &s, |s| println!("subsystem {} created", s.nqn))
                }
                SubsystemCmd::Delete { nqn } => {
                    api.delete_subsystem(pb::DeleteSubsystemRequest { nqn: nqn.clone() })
                        .await
                        .map_err(refused)?;
                    done(j, &format!("subsystem {nqn} deleted"));
                    Ok(())
                }
                SubsystemCmd::List { nqn } => {
                    let l = api
                        .list_subsystems(pb::ListSubsystemsRequest {
                            nqn: nqn.clone().unwrap_or_default(),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l.subsystems, |subs| {
                        table::print(
                            &[
                                "NQN",
                                "NAMESPACES",
                                "CONTROLLERS",
                                "HOSTS",
                                "SERIAL",
                                "MODEL",
                                "CNTLID",
                            ],
                            &subs
                                .iter()
                                .map(|s| {
                                    vec![
                                        s.nqn.clone(),
                                        s.namespaces.len().to_string(),
                                        s.controllers.to_string(),
                                        if s.allow_any_host {
                                            "any".into()
                                        } else {
                                            s.hosts.join(",")
                                        },
                                        s.serial.clone(),
                                        s.model.clone(),
                                        format!("{}-{}", s.min_cntlid, s.max_cntlid),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                }
            }
        }
        Cmd::Namespace(c) => {
            let mut api = NamespacesClient::new(ch);
            match c {
                NamespaceCmd::Add {
                    nqn,
                    device,
                    volume,
                    nsid,
                    size,
                    nguid,
                    uuid,
                    ana_group,
                } => {
                    let n = api
                        .add_namespace(pb::AddNamespaceRequest {
                            nqn: nqn.clone(),
                            nsid: *nsid,
                            device: device.clone().unwrap_or_default(),
                            volume: volume.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                            nguid: nguid.clone(),
                            uuid: uuid.clone(),
                            ana_group: *ana_group,
                            size_bytes: *size,
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &n, |n| {
                        println!("namespace {}/{} added ({})", n.nqn, n.nsid, n.device)
                    })
                }
                NamespaceCmd::Remove { nqn, nsid } => {
                    api.remove_namespace(pb::RemoveNamespaceRequest {
                        nqn: nqn.clone(),
                        nsid: *nsid,
                    })
                    .await
                    .map_err(refused)?;
                    done(j, &format!("namespace {nqn}/{nsid} removed"));
                    Ok(())
                }
                NamespaceCmd::Resize {
                    nqn,
                    nsid,
                    size: sz,
                } => {
                    let n = api
                        .resize_namespace(pb::ResizeNamespaceRequest {
                            nqn: nqn.clone(),
                            nsid: *nsid,
                            size_bytes: sz.unwrap_or(0),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &n, |n| {
                        println!(
                            "namespace {}/{} is now {}",
                            n.nqn,
                            n.nsid,
                            size(n.num_blocks * u64::from(n.block_size))
                        )
                    })
                }
                NamespaceCmd::List { nqn } => {
                    let l = api
                        .list_namespaces(pb::ListNamespacesRequest {
                            nqn: nqn.clone().unwrap_or_default(),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l.namespaces, |n| namespaces_table(n))
                }
            }
        }
        Cmd::Bdev(c) => {
            let mut api = BlockDevicesClient::new(ch);
            match c {
                BdevCmd::Create {
                    name,
                    kind,
                    block_size,
                    hugepages,
                    read_only,
                    buffered,
                    vfio_nsid,
                    rules,
                } => {
                    use pb::create_block_device_request::Kind;
                    let k = if let Some(b) = kind.ram {
                        Kind::Ram(pb::RamDevice {
                            size_bytes: b,
                            block_size: block_size.unwrap_or(0),
                            hugepages: *hugepages,
                        })
                    } else if let Some(p) = &kind.file {
                        Kind::File(pb::FileDevice {
                            path: p.display().to_string(),
                            block_size: block_size.unwrap_or(0),
                            read_only: *read_only,
                            direct: Some(!buffered),
                        })
                    } else if let Some(a) = &kind.vfio {
                        Kind::Vfio(pb::VfioDevice {
                            pci_address: a.clone(),
                            nsid: vfio_nsid.unwrap_or(1),
                        })
                    } else if let Some(base) = &kind.fault {
                        Kind::Fault(pb::FaultDevice {
                            base: base.clone(),
                            rules: rules.clone(),
                        })
                    } else {
                        Kind::Passthru(pb::PassthruDevice {
                            base: kind.passthru.clone().unwrap_or_default(),
                        })
                    };
                    if !rules.is_empty() && kind.fault.is_none() {
                        return Err("--rule is for a fault device: add --fault DEVICE".into());
                    }
                    let d = api
                        .create_block_device(pb::CreateBlockDeviceRequest {
                            name: name.clone(),
                            kind: Some(k),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &d, |d| {
                        println!(
                            "block device {} created ({}, {})",
                            d.name,
                            d.kind,
                            size(d.num_blocks * u64::from(d.block_size))
                        )
                    })
                }
                BdevCmd::Delete { name } => {
                    api.delete_block_device(pb::DeleteBlockDeviceRequest { name: name.clone() })
                        .await
                        .map_err(refused)?;
                    done(j, &format!("block device {name} deleted"));
                    Ok(())
                }
                BdevCmd::List => {
                    let l = api
                        .list_block_devices(pb::ListBlockDevicesRequest {})
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l.devices, |d| devices_table(d))
                }
                BdevCmd::Faults { name, rules, clear } => {
                    let f = if rules.is_empty() && !clear {
                        api.get_fault_rules(pb::GetFaultRulesRequest { name: name.clone() })
                            .await
                    } else {
                        api.set_fault_rules(pb::SetFaultRulesRequest {
                            name: name.clone(),
                            rules: rules.clone(),
                        })
                        .await
                    }
                    .map_err(refused)?
                    .into_inner();
                    emit(j, &f, |f| {
                        if f.rules.is_empty() {
                            println!("fault device {}: no rules (everything passes)", f.name);
                        }
                        for r in &f.rules {
                            println!("{:<40} matched {:>8}  fired {:>8}", r.rule, r.seen, r.fired);
                        }
                    })
                }
            }
        }
        Cmd::Listener(c) => {
            let mut api = ListenersClient::new(ch);
            match c {
                ListenerCmd::Add { address, transport } => {
                    let l = api
                        .add_listener(pb::AddListenerRequest {
                            transport: transport.clone(),
                            address: address.clone(),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l, |l| {
                        println!("listening on {} ({})", l.address, l.transport)
                    })
                }
                ListenerCmd::Remove { address, transport } => {
                    api.remove_listener(pb::RemoveListenerRequest {
                        transport: transport.clone(),
                        address: address.clone(),
                    })
                    .await
                    .map_err(refused)?;
                    done(j, &format!("listener {address} removed"));
                    Ok(())
                }
                ListenerCmd::List => {
                    let l = api
                        .list_listeners(pb::ListListenersRequest {})
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l.listeners, |ls| {
                        table::print(
                            &["TRANSPORT", "ADDRESS", "PORT ID"],
                            &ls.iter()
                                .map(|l| {
                                    vec![
                                        l.transport.clone(),
                                        l.address.clone(),
                                        l.port_id.to_string(),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                }
            }
        }
        Cmd::Ana(c) => {
            let mut api = AnaClient::new(ch);
            match c {
                AnaCmd::Set { nqn, group, state } => {
                    let g = api
                        .set_ana_state(pb::SetAnaStateRequest {
                            nqn: nqn.clone(),
                            group: *group,
                            state: *state,
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &ana_view(&g), |g| {
                        println!("{}: ANA group {} is now {}", g.nqn, g.group, g.state)
                    })
                }
                AnaCmd::List { nqn } => {
                    let l = api
                        .list_ana_groups(pb::ListAnaGroupsRequest {
                            nqn: nqn.clone().unwrap_or_default(),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    let v: Vec<AnaView> = l.groups.iter().map(ana_view).collect();
                    emit(j, &v, |v| ana_table(v))
                }
            }
        }
        Cmd::Controller(c) => {
            let mut api = ControllersClient::new(ch);
            match c {
                ControllerCmd::List { nqn } => {
                    let l = api
                        .list_controllers(pb::ListControllersRequest {
                            nqn: nqn.clone().unwrap_or_default(),
                        })
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l.controllers, |c| controllers_table(c))
                }
                ControllerCmd::Disconnect { nqn, cntlid } => {
                    api.disconnect_controller(pb::DisconnectControllerRequest {
                        nqn: nqn.clone(),
                        cntlid: *cntlid,
                    })
                    .await
                    .map_err(refused)?;
                    done(j, &format!("controller {cntlid} of {nqn} disconnected"));
                    Ok(())
                }
            }
        }
        Cmd::Connection(c) => {
            let mut api = ControllersClient::new(ch);
            match c {
                ConnectionCmd::List => {
                    let l = api
                        .list_connections(pb::ListConnectionsRequest {})
                        .await
                        .map_err(refused)?
                        .into_inner();
                    emit(j, &l.connections, |cs| {
                        table::print(
                            &[
                                "TRANSPORT",
                                "PEER",
                                "LOCAL",
                                "REACTOR",
                                "QID",
                                "CNTLID",
                                "NQN",
                                "HOST",
                                "TLS",
                                "AUTH",
                                "ENGINE",
                            ],
                            &cs.iter()
                                .map(|c| {
                                    vec![
                                        c.transport.clone(),
                                        c.peer.clone(),
                                        c.local.clone(),
                                        c.reactor.to_string(),
                                        c.qid.to_string(),
                                        c.cntlid.map_or("-".into(), |x| x.to_string()),
                                        c.nqn.clone().unwrap_or_else(|| "-".into()),
                                        c.host_nqn.clone().unwrap_or_else(|| "-".into()),
                                        c.tls.clone(),
                                        if c.authenticated { "yes" } else { "no" }.into(),
                                        if c.engine.is_empty() {
                                            "-".into()
                                        } else {
                                            c.engine.clone()
                                        },
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        )
                    })
                }
                ConnectionCmd::Disconnect {
                    reactor,
                    peer,
                    transport,
                } => {
                    api.disconnect_connection(pb::DisconnectConnectionRequest {
                        transport: transport.clone(),
                        reactor: *reactor,
                        peer: peer.clone(),
                    })
                    .await
                    .map_err(refused)?;
                    done(j, &format!("connection from {peer} closed"));
                    Ok(())
                }
            }
        }
        Cmd::Stats => {
            let s = StatisticsClient::new(ch)
                .get_statistics(pb::GetStatisticsRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &s, |s| {
                table::print(
                    &[
                        "NQN",
                        "READS",
                        "WRITES",
                        "BLOCKS READ (512 B)",
                        "BLOCKS WRITTEN (512 B)",
                        "CONTROLLERS",
                    ],
                    &s.subsystems
                        .iter()
                        .map(|x| {
                            vec![
                                x.nqn.clone(),
                                x.read_commands.to_string(),
                                x.write_commands.to_string(),
                                x.blocks_read_512.to_string(),
                                x.blocks_written_512.to_string(),
                                x.controllers.len().to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                );
                if !s.devices.is_empty() {
                    println!();
                    devices_table(&s.devices);
                }
            })
        }
        Cmd::Log(c) => {
            let mut api = LoggingClient::new(ch);
            let l = match c {
                LogCmd::Get => api.get_log_level(pb::GetLogLevelRequest {}).await,
                LogCmd::Set { filter } => {
                    api.set_log_level(pb::SetLogLevelRequest {
                        filter: filter.clone(),
                    })
                    .await
                }
            }
            .map_err(refused)?
            .into_inner();
            emit(j, &l, |l| println!("{}", l.filter))
        }
        Cmd::Status => {
            let s = UpgradeClient::new(ch)
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &s, |s| {
                println!(
                    "lightpool-target {} pid {} (state layout {}); control socket {}, API socket {}",
                    s.version, s.pid, s.layout, s.control_socket, s.api_socket
                )
            })
        }
        Cmd::Upgrade { binary, log } => {
            let binary = std::fs::canonicalize(binary)
                .map_err(|e| format!("new binary {}: {e}", binary.display()))?;
            let r = UpgradeClient::new(ch)
                .start_upgrade(pb::StartUpgradeRequest {
                    binary: binary.display().to_string(),
                    log: log.clone().unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            emit(j, &r, |r| {
                println!("{}", r.report);
                println!(
                    "upgrade complete: pid {} ({}) -> pid {} ({}), pause {:.3} ms",
                    r.old_pid, r.old_version, r.new_pid, r.new_version, r.pause_ms
                )
            })
        }
        Cmd::Config(ConfigCmd::Save { output }) => {
            let c = ConfigClient::new(ch)
                .save_config(pb::SaveConfigRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            match output {
                Some(p) => {
                    std::fs::write(p, &c.toml).map_err(|e| format!("{}: {e}", p.display()))?;
                    done(j, &format!("configuration written to {}", p.display()));
                }
                None => print!("{}", c.toml),
            }
            Ok(())
        }
        Cmd::Target(c) => crate::target::run(j, ch, c).await,
        // Dispatched before a target is dialled (main).
        Cmd::Standalone(_)
        | Cmd::Agent(_)
        | Cmd::Volume(_)
        | Cmd::Snapshot(_)
        | Cmd::Pool(_)
        | Cmd::Node(_)
        | Cmd::Csi(_) => Err("a control-plane command reached the target's client".into()),
    }
}
