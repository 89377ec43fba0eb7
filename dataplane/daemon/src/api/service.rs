//! The services of the management API, each a thin mapping onto `crate::manage`.

use std::sync::{Arc, Weak};

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    ana_server, block_devices_server, config_server, controllers_server, listeners_server,
    logging_server, namespaces_server, pools_server, statistics_server, subsystems_server,
    upgrade_server,
};
use lightpool_nvmf::SubsystemConfig;
use tokio::sync::watch;
use tonic::transport::server::Router;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::convert::{self, status_of};
use crate::manage::{DeviceSpec, ManageError};
use crate::Running;

type Res<T> = Result<Response<T>, Status>;

/// What every service holds: the target (weakly: it goes when the target stops) and
/// the signal that stops the server after an upgrade has been answered.
#[derive(Clone)]
pub struct Api {
    pub(super) run: Weak<Running>,
    pub(super) stop: Arc<watch::Sender<bool>>,
}

impl Api {
    fn target(&self) -> Result<Arc<Running>, Status> {
        self.run
            .upgrade()
            .ok_or_else(|| Status::unavailable("the target is stopping"))
    }

    /// Run `f` on a blocking thread (changes wait on reactors' answers).
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Running) -> Result<T, ManageError> + Send + 'static,
    ) -> Result<T, Status> {
        let run = self.target()?;
        tokio::task::spawn_blocking(move || f(&run))
            .await
            .map_err(|e| Status::internal(format!("the call failed: {e}")))?
            .map_err(status_of)
    }
}

/// Every service, on the server `b` (plain for the Unix socket, TLS for TCP).
fn routes(mut b: Server, api: &Api) -> Router {
    b.add_service(subsystems_server::SubsystemsServer::new(api.clone()))
        .add_service(namespaces_server::NamespacesServer::new(api.clone()))
        .add_service(block_devices_server::BlockDevicesServer::new(api.clone()))
        .add_service(listeners_server::ListenersServer::new(api.clone()))
        .add_service(ana_server::AnaServer::new(api.clone()))
        .add_service(controllers_server::ControllersServer::new(api.clone()))
        .add_service(statistics_server::StatisticsServer::new(api.clone()))
        .add_service(logging_server::LoggingServer::new(api.clone()))
        .add_service(upgrade_server::UpgradeServer::new(api.clone()))
        .add_service(pools_server::PoolsServer::new(api.clone()))
        .add_service(lightpool_api::v1::raids_server::RaidsServer::new(
            api.clone(),
        ))
        .add_service(lightpool_api::v1::migrations_server::MigrationsServer::new(
            api.clone(),
        ))
        .add_service(config_server::ConfigServer::new(api.clone()))
}

/// Serve every service on `listener`, and on `tcp` with mutual TLS when given, until
/// the target goes or an upgrade answered (on either).
pub async fn serve(
    run: Weak<Running>,
    listener: std::os::unix::net::UnixListener,
    tcp: Option<(std::net::TcpListener, tonic::transport::ServerTlsConfig)>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let (stop, stopped) = watch::channel(false);
    let api = Api {
        run,
        stop: Arc::new(stop),
    };
    let until = |mut rx: watch::Receiver<bool>| async move {
        // An error is the sender gone: stop as well.
        let _ = rx.wait_for(|v| *v).await;
    };
    let unix = routes(Server::builder(), &api).serve_with_incoming_shutdown(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        until(stopped.clone()),
    );
    let Some((tcp, tls)) = tcp else {
        unix.await?;
        return Ok(());
    };
    tcp.set_nonblocking(true)?;
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let tls = routes(Server::builder().tls_config(tls)?, &api).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(tcp),
        until(stopped),
    );
    // One ending (an upgrade answered on either) ends the other: both wait on `stop`.
    let (u, t) = tokio::join!(unix, tls);
    u?;
    t?;
    Ok(())
}

#[tonic::async_trait]
impl subsystems_server::Subsystems for Api {
    async fn create_subsystem(&self, r: Request<pb::CreateSubsystemRequest>) -> Res<pb::Subsystem> {
        let r = r.into_inner();
        let mut sc = SubsystemConfig::new(&r.nqn);
        if let Some(v) = r.serial {
            sc.serial = v;
        }
        if let Some(v) = r.model {
            sc.model = v;
        }
        sc.allow_any_host = r.allow_any_host.unwrap_or(r.hosts.is_empty());
        sc.hosts = r.hosts;
        let cntlid = |v: Option<u32>, d: u16, what: &str| {
            v.map_or(Ok(d), |v| {
                u16::try_from(v).map_err(|_| {
                    Status::invalid_argument(format!("{what} {v} is not within 1..=65519"))
                })
            })
        };
        sc.min_cntlid = cntlid(r.min_cntlid, 1, "min_cntlid")?;
        sc.max_cntlid = cntlid(r.max_cntlid, 0xFFEF, "max_cntlid")?;
        let out = self
            .blocking(move |run| {
                let s = run.create_subsystem(sc)?;
                Ok(convert::subsystem(run, &s))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn delete_subsystem(
        &self,
        r: Request<pb::DeleteSubsystemRequest>,
    ) -> Res<pb::DeleteSubsystemResponse> {
        let nqn = r.into_inner().nqn;
        self.blocking(move |run| run.delete_subsystem(&nqn)).await?;
        Ok(Response::new(pb::DeleteSubsystemResponse {}))
    }

    async fn list_subsystems(
        &self,
        r: Request<pb::ListSubsystemsRequest>,
    ) -> Res<pb::ListSubsystemsResponse> {
        let nqn = r.into_inner().nqn;
        let run = self.target()?;
        let subs: Vec<pb::Subsystem> = run
            .target
            .subsystems()
            .iter()
            .filter(|s| nqn.is_empty() || s.nqn == nqn)
            .map(|s| convert::subsystem(&run, s))
            .collect();
        if !nqn.is_empty() && subs.is_empty() {
            return Err(Status::not_found(format!("no subsystem {nqn}")));
        }
        Ok(Response::new(pb::ListSubsystemsResponse {
            subsystems: subs,
        }))
    }

    async fn set_host_key(&self, r: Request<pb::SetHostKeyRequest>) -> Res<pb::HostKey> {
        let r = r.into_inner();
        let text = lightpool_nvmf::auth::HostKeysText {
            key: r.key,
            ctrl_key: r.ctrl_key,
            hash: r.hash,
            dhgroup: r.dhgroup,
        };
        let keys = text
            .parse()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let out = self
            .blocking(move |run| {
                run.set_host_keys(&r.nqn, &r.host, Some(keys.clone()))?;
                Ok(convert::host_key(&r.host, &keys))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn set_tls_key(&self, r: Request<pb::SetTlsKeyRequest>) -> Res<pb::TlsKey> {
        let r = r.into_inner();
        let key = lightpool_nvmf::tls::ConfiguredPsk::parse(&r.key)
            .map_err(|e| Status::invalid_argument(format!("key: {e}")))?;
        let out = self
            .blocking(move |run| {
                run.set_tls_key(&r.nqn, &r.host, Some(&r.key))?;
                Ok(convert::tls_key(&r.host, &r.nqn, &key))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn clear_tls_key(
        &self,
        r: Request<pb::ClearTlsKeyRequest>,
    ) -> Res<pb::ClearTlsKeyResponse> {
        let r = r.into_inner();
        self.blocking(move |run| run.set_tls_key(&r.nqn, &r.host, None))
            .await?;
        Ok(Response::new(pb::ClearTlsKeyResponse {}))
    }

    async fn clear_host_key(
        &self,
        r: Request<pb::ClearHostKeyRequest>,
    ) -> Res<pb::ClearHostKeyResponse> {
        let r = r.into_inner();
        self.blocking(move |run| run.set_host_keys(&r.nqn, &r.host, None))
            .await?;
        Ok(Response::new(pb::ClearHostKeyResponse {}))
    }
}

#[tonic::async_trait]
impl namespaces_server::Namespaces for Api {
    async fn add_namespace(&self, r: Request<pb::AddNamespaceRequest>) -> Res<pb::Namespace> {
        let r = r.into_inner();
        let nguid = convert::parse_id("nguid", &r.nguid)?;
        let uuid = convert::parse_id("uuid", &r.uuid)?;
        if !r.volume.is_empty() && !r.device.is_empty() {
            return Err(Status::invalid_argument(
                "give a block device or a pool's volume (\"POOL/VOLUME\"), not both",
            ));
        }
        let out = self
            .blocking(move |run| {
                let device = if r.volume.is_empty() {
                    r.device
                } else {
                    crate::pools::volume_device(run, &r.volume)?
                };
                let ns = run.add_namespace(
                    &r.nqn,
                    r.nsid,
                    &device,
                    nguid,
                    uuid,
                    r.ana_group,
                    r.size_bytes,
                );
                let ns = match ns {
                    Ok(ns) => ns,
                    Err(e) => {
                        // The volume's device, registered for it, goes again.
                        if !r.volume.is_empty() {
                            let _ = run.release_volumes();
                        }
                        return Err(e);
                    }
                };
                Ok(convert::namespace(&crate::manage::NsView {
                    nqn: r.nqn,
                    ns,
                    device,
                }))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn remove_namespace(
        &self,
        r: Request<pb::RemoveNamespaceRequest>,
    ) -> Res<pb::RemoveNamespaceResponse> {
        let r = r.into_inner();
        self.blocking(move |run| run.remove_namespace(&r.nqn, r.nsid))
            .await?;
        Ok(Response::new(pb::RemoveNamespaceResponse {}))
    }

    async fn resize_namespace(&self, r: Request<pb::ResizeNamespaceRequest>) -> Res<pb::Namespace> {
        let r = r.into_inner();
        let out = self
            .blocking(move |run| {
                let ns = run.resize_namespace(&r.nqn, r.nsid, r.size_bytes)?;
                let device = run.mgmt.registry.name_of(&ns.bdev).unwrap_or_default();
                Ok(convert::namespace(&crate::manage::NsView {
                    nqn: r.nqn,
                    ns,
                    device,
                }))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_namespaces(
        &self,
        r: Request<pb::ListNamespacesRequest>,
    ) -> Res<pb::ListNamespacesResponse> {
        let nqn = r.into_inner().nqn;
        let run = self.target()?;
        if !nqn.is_empty() && run.target.find_subsystem(&nqn).is_none() {
            return Err(Status::not_found(format!("no subsystem {nqn}")));
        }
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: run
                .namespaces()
                .iter()
                .filter(|v| nqn.is_empty() || v.nqn == nqn)
                .map(convert::namespace)
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl block_devices_server::BlockDevices for Api {
    async fn create_block_device(
        &self,
        r: Request<pb::CreateBlockDeviceRequest>,
    ) -> Res<pb::BlockDevice> {
        use pb::create_block_device_request::Kind;
        let r = r.into_inner();
        let spec = match r.kind {
            Some(Kind::Ram(x)) => DeviceSpec::Ram {
                size: x.size_bytes,
                block_size: if x.block_size == 0 { 512 } else { x.block_size },
                hugepages: x.hugepages,
            },
            Some(Kind::File(x)) => DeviceSpec::File {
                path: x.path.into(),
                block_size: (x.block_size != 0).then_some(x.block_size),
                read_only: x.read_only,
                direct: x.direct.unwrap_or(true),
            },
            Some(Kind::Vfio(x)) => DeviceSpec::Vfio {
                address: x.pci_address,
                nsid: if x.nsid == 0 { 1 } else { x.nsid },
            },
            Some(Kind::Passthru(x)) => DeviceSpec::Passthru { base: x.base },
            Some(Kind::Fault(x)) => {
                crate::manage::parse_rules(&x.rules).map_err(status_of)?;
                DeviceSpec::Fault {
                    base: x.base,
                    rules: x.rules,
                }
            }
            None => {
                return Err(Status::invalid_argument(
                    "say what device to create: ram, file, vfio, passthru or fault",
                ))
            }
        };
        if let DeviceSpec::Ram { block_size, .. }
        | DeviceSpec::File {
            block_size: Some(block_size),
            ..
        } = &spec
        {
            if *block_size != 512 && *block_size != 4096 {
                return Err(Status::invalid_argument(format!(
                    "block size {block_size} is neither 512 nor 4096"
                )));
            }
        }
        let name = r.name;
        let out = self
            .blocking(move |run| {
                run.create_bdev(&name, spec)?;
                Ok(convert::devices(run)
                    .into_iter()
                    .find(|d| d.name == name)
                    .expect("just created"))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn delete_block_device(
        &self,
        r: Request<pb::DeleteBlockDeviceRequest>,
    ) -> Res<pb::DeleteBlockDeviceResponse> {
        let name = r.into_inner().name;
        self.blocking(move |run| run.delete_bdev(&name)).await?;
        Ok(Response::new(pb::DeleteBlockDeviceResponse {}))
    }

    async fn set_fault_rules(&self, r: Request<pb::SetFaultRulesRequest>) -> Res<pb::FaultRules> {
        let r = r.into_inner();
        let rules = crate::manage::parse_rules(&r.rules).map_err(status_of)?;
        let out = self
            .blocking(move |run| run.set_fault_rules(&r.name, rules, r.rules))
            .await?;
        Ok(Response::new(out))
    }

    async fn get_fault_rules(&self, r: Request<pb::GetFaultRulesRequest>) -> Res<pb::FaultRules> {
        let name = r.into_inner().name;
        let d = crate::manage::fault_device(&name).map_err(status_of)?;
        Ok(Response::new(convert::fault_rules(&name, &d)))
    }

    async fn list_block_devices(
        &self,
        _: Request<pb::ListBlockDevicesRequest>,
    ) -> Res<pb::ListBlockDevicesResponse> {
        let run = self.target()?;
        Ok(Response::new(pb::ListBlockDevicesResponse {
            devices: convert::devices(&run),
        }))
    }
}

fn transport_name(t: &str) -> String {
    if t.is_empty() {
        "tcp".to_string()
    } else {
        t.to_string()
    }
}

fn listeners(run: &Running) -> Vec<pb::Listener> {
    let kinds = crate::transports::kinds();
    run.target
        .listeners()
        .into_iter()
        .map(|l| pb::Listener {
            transport: kinds
                .by_trtype(l.addr.trtype)
                .map_or("?", |k| k.name())
                .to_string(),
            address: l.addr.to_addr_string(),
            port_id: u32::from(l.portid),
        })
        .collect()
}

#[tonic::async_trait]
impl listeners_server::Listeners for Api {
    async fn add_listener(&self, r: Request<pb::AddListenerRequest>) -> Res<pb::Listener> {
        let r = r.into_inner();
        let t = transport_name(&r.transport);
        let out = self
            .blocking(move |run| {
                let a = run.add_listener(&t, &r.address)?;
                Ok(listeners(run)
                    .into_iter()
                    .find(|l| l.address == a.to_addr_string())
                    .unwrap_or(pb::Listener {
                        transport: t,
                        address: a.to_addr_string(),
                        port_id: 0,
                    }))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn remove_listener(
        &self,
        r: Request<pb::RemoveListenerRequest>,
    ) -> Res<pb::RemoveListenerResponse> {
        let r = r.into_inner();
        let t = transport_name(&r.transport);
        self.blocking(move |run| run.remove_listener(&t, &r.address))
            .await?;
        Ok(Response::new(pb::RemoveListenerResponse {}))
    }

    async fn list_listeners(
        &self,
        _: Request<pb::ListListenersRequest>,
    ) -> Res<pb::ListListenersResponse> {
        let run = self.target()?;
        Ok(Response::new(pb::ListListenersResponse {
            listeners: listeners(&run),
        }))
    }
}

#[tonic::async_trait]
impl ana_server::Ana for Api {
    async fn set_ana_state(&self, r: Request<pb::SetAnaStateRequest>) -> Res<pb::AnaGroup> {
        let r = r.into_inner();
        let state = pb::AnaState::try_from(r.state)
            .ok()
            .and_then(convert::ana_code)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "give a state: optimized, non-optimized, inaccessible, persistent-loss or change",
                )
            })?;
        let out = self
            .blocking(move |run| {
                run.set_ana(&r.nqn, r.group, state)?;
                let s = run
                    .target
                    .find_subsystem(&r.nqn)
                    .ok_or_else(|| ManageError::NotFound(format!("no subsystem {}", r.nqn)))?;
                Ok(convert::ana_groups(run, &s)
                    .into_iter()
                    .find(|g| g.group == r.group)
                    .expect("a group just set is listed"))
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_ana_groups(
        &self,
        r: Request<pb::ListAnaGroupsRequest>,
    ) -> Res<pb::ListAnaGroupsResponse> {
        let nqn = r.into_inner().nqn;
        let run = self.target()?;
        let subs: Vec<_> = run
            .target
            .subsystems()
            .into_iter()
            .filter(|s| nqn.is_empty() || s.nqn == nqn)
            .collect();
        if !nqn.is_empty() && subs.is_empty() {
            return Err(Status::not_found(format!("no subsystem {nqn}")));
        }
        Ok(Response::new(pb::ListAnaGroupsResponse {
            groups: subs
                .iter()
                .flat_map(|s| convert::ana_groups(&run, s))
                .collect(),
        }))
    }
}

fn all_subsystems(run: &Running) -> Vec<Arc<lightpool_nvmf::Subsystem>> {
    let mut v = run.target.subsystems();
    v.push(run.target.discovery_subsystem());
    v
}

#[tonic::async_trait]
impl controllers_server::Controllers for Api {
    async fn list_controllers(
        &self,
        r: Request<pb::ListControllersRequest>,
    ) -> Res<pb::ListControllersResponse> {
        let nqn = r.into_inner().nqn;
        let run = self.target()?;
        let subs: Vec<_> = all_subsystems(&run)
            .into_iter()
            .filter(|s| nqn.is_empty() || s.nqn == nqn)
            .collect();
        if !nqn.is_empty() && subs.is_empty() {
            return Err(Status::not_found(format!("no subsystem {nqn}")));
        }
        Ok(Response::new(pb::ListControllersResponse {
            controllers: subs
                .iter()
                .flat_map(|s| {
                    s.controllers()
                        .iter()
                        .map(|c| convert::controller(s, c))
                        .collect::<Vec<_>>()
                })
                .collect(),
        }))
    }

    async fn list_connections(
        &self,
        _: Request<pb::ListConnectionsRequest>,
    ) -> Res<pb::ListConnectionsResponse> {
        let out = self
            .blocking(|run| {
                let mut out = Vec::new();
                for t in run.transports.all() {
                    let cs = t
                        .connections()
                        .map_err(|e| ManageError::Failed(crate::manage::error_chain(&e)))?;
                    out.extend(cs.into_iter().map(|c| pb::Connection {
                        transport: c.transport,
                        peer: c.peer,
                        local: c.local,
                        reactor: c.reactor as u32,
                        qid: u32::from(c.qid),
                        cntlid: c.cntlid.map(u32::from),
                        host_nqn: c.hostnqn,
                        nqn: c.subnqn,
                        tls: c.tls,
                        authenticated: c.authenticated,
                        engine: c.engine,
                    }));
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: out,
        }))
    }

    async fn disconnect_connection(
        &self,
        r: Request<pb::DisconnectConnectionRequest>,
    ) -> Res<pb::DisconnectResponse> {
        let r = r.into_inner();
        let t = transport_name(&r.transport);
        self.blocking(move |run| {
            let tr = run
                .transports
                .all()
                .into_iter()
                .find(|x| x.name() == t)
                .ok_or_else(|| ManageError::NotFound(format!("no transport {t} runs")))?;
            let found = tr
                .disconnect(r.reactor as usize, &r.peer)
                .map_err(|e| ManageError::Failed(crate::manage::error_chain(&e)))?;
            if !found {
                return Err(ManageError::NotFound(format!(
                    "no {t} connection from {} on reactor {}: list them with `lightpool connection list`",
                    r.peer, r.reactor
                )));
            }
            tracing::info!(peer = %r.peer, reactor = r.reactor, "connection closed by the operator");
            Ok(())
        })
        .await?;
        Ok(Response::new(pb::DisconnectResponse {}))
    }

    async fn disconnect_controller(
        &self,
        r: Request<pb::DisconnectControllerRequest>,
    ) -> Res<pb::DisconnectResponse> {
        let r = r.into_inner();
        let run = self.target()?;
        let s = all_subsystems(&run)
            .into_iter()
            .find(|s| s.nqn == r.nqn)
            .ok_or_else(|| Status::not_found(format!("no subsystem {}", r.nqn)))?;
        let c = u16::try_from(r.cntlid)
            .ok()
            .and_then(|id| s.controller(id))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "subsystem {} has no controller {}: list them with `lightpool controller list`",
                    r.nqn, r.cntlid
                ))
            })?;
        c.fail();
        run.wake_reactors();
        tracing::info!(nqn = %r.nqn, cntlid = r.cntlid, "controller failed by the operator");
        Ok(Response::new(pb::DisconnectResponse {}))
    }
}

#[tonic::async_trait]
impl statistics_server::Statistics for Api {
    async fn get_statistics(
        &self,
        _: Request<pb::GetStatisticsRequest>,
    ) -> Res<pb::GetStatisticsResponse> {
        let run = self.target()?;
        let subsystems = run
            .target
            .subsystems()
            .iter()
            .map(|s| {
                let ctrls: Vec<pb::Controller> = s
                    .controllers()
                    .iter()
                    .map(|c| convert::controller(s, c))
                    .collect();
                pb::SubsystemStatistics {
                    nqn: s.nqn.clone(),
                    read_commands: ctrls.iter().map(|c| c.read_commands).sum(),
                    write_commands: ctrls.iter().map(|c| c.write_commands).sum(),
                    blocks_read_512: ctrls.iter().map(|c| c.blocks_read_512).sum(),
                    blocks_written_512: ctrls.iter().map(|c| c.blocks_written_512).sum(),
                    controllers: ctrls,
                }
            })
            .collect();
        Ok(Response::new(pb::GetStatisticsResponse {
            subsystems,
            devices: convert::devices(&run)
                .into_iter()
                .filter(|d| d.io.is_some())
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl logging_server::Logging for Api {
    async fn set_log_level(&self, r: Request<pb::SetLogLevelRequest>) -> Res<pb::LogLevel> {
        let f = r.into_inner().filter;
        crate::logging::set(&f).map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::LogLevel { filter: f }))
    }

    async fn get_log_level(&self, _: Request<pb::GetLogLevelRequest>) -> Res<pb::LogLevel> {
        Ok(Response::new(pb::LogLevel {
            filter: crate::logging::get(),
        }))
    }
}

#[tonic::async_trait]
impl config_server::Config for Api {
    async fn save_config(&self, _: Request<pb::SaveConfigRequest>) -> Res<pb::SaveConfigResponse> {
        let run = self.target()?;
        let cfg = crate::manage::save::save(&run);
        let toml = toml::to_string(&cfg)
            .map_err(|e| Status::internal(format!("cannot write the configuration: {e}")))?;
        Ok(Response::new(pb::SaveConfigResponse {
            toml: format!(
                "# lightpool-target configuration saved from the running target (pid {}).\n{toml}",
                std::process::id()
            ),
        }))
    }
}

#[tonic::async_trait]
impl upgrade_server::Upgrade for Api {
    async fn get_status(&self, _: Request<pb::GetStatusRequest>) -> Res<pb::TargetStatus> {
        let run = self.target()?;
        Ok(Response::new(pb::TargetStatus {
            version: crate::firmware_revision().to_string(),
            pid: std::process::id(),
            layout: run.layout,
            control_socket: run.control_path.clone(),
            api_socket: run.mgmt.api_path.clone(),
        }))
    }

    async fn start_upgrade(&self, r: Request<pb::StartUpgradeRequest>) -> Res<pb::UpgradeResult> {
        let r = r.into_inner();
        let run = self.target()?;
        let stop = self.stop.clone();
        let out = tokio::task::spawn_blocking(move || super::upgrade::start(&run, &r))
            .await
            .map_err(|e| Status::internal(format!("the call failed: {e}")))??;
        // Answered: stop the server (once this answer is out) so that the handover can
        // let this process exit.
        stop.send_replace(true);
        Ok(Response::new(out))
    }
}
