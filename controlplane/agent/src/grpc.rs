//! The dataplane through the target's management API (gRPC on its Unix
//! socket), with a file pool: the pool is a directory and a capacity; each pool
//! volume is a sparse file there, served by the target as a file block device
//! named `lpv-<volume>`. (When the target's own pools are in the API, their
//! volumes replace the files behind the same trait.)
//!
//! gRPC's ALREADY_EXISTS on a create and NOT_FOUND on a delete are success:
//! the agent's calls are idempotent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lightpool_api::v1 as pb;
use lightpool_api::v1::{
    block_devices_client::BlockDevicesClient, listeners_client::ListenersClient,
    namespaces_client::NamespacesClient, subsystems_client::SubsystemsClient,
};
use tonic::transport::Channel;
use tonic::Code;

use crate::{Dataplane, DataplaneError, Export, PoolInfo, PoolVolume};

/// Block size of the file devices.
const BLOCK_SIZE: u32 = 4096;

/// A file pool served by a target over its management API.
#[derive(Clone)]
pub struct ApiDataplane {
    channel: Channel,
    dir: PathBuf,
    capacity: u64,
    buffered: bool,
}

fn status(s: tonic::Status) -> DataplaneError {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            DataplaneError::Unavailable(s.message().to_string())
        }
        _ => DataplaneError::Refused(s.message().to_string()),
    }
}

fn io(what: &str, e: std::io::Error) -> DataplaneError {
    DataplaneError::Refused(format!("{what}: {e}"))
}

fn device(name: &str) -> String {
    format!("lpv-{name}")
}

impl ApiDataplane {
    /// The target behind `channel`; pool files in `dir`, `capacity` bytes in all.
    pub fn new(
        channel: Channel,
        dir: impl Into<PathBuf>,
        capacity: u64,
    ) -> Result<Self, DataplaneError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| io(&format!("pool directory {}", dir.display()), e))?;
        Ok(ApiDataplane {
            channel,
            dir,
            capacity,
            buffered: false,
        })
    }

    /// Pool files through the page cache rather than O_DIRECT (file systems
    /// without O_DIRECT, such as tmpfs).
    pub fn buffered(mut self, buffered: bool) -> Self {
        self.buffered = buffered;
        self
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    /// The pool files: (volume, size).
    fn files(&self) -> Result<BTreeMap<String, u64>, DataplaneError> {
        let mut out = BTreeMap::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io("pool directory", e))?;
        for e in rd {
            let e = e.map_err(|e| io("pool directory", e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_suffix(".img") {
                let len = e.metadata().map_err(|e| io(&name, e))?.len();
                out.insert(v.to_string(), len);
            }
        }
        Ok(out)
    }

    async fn devices(&self) -> Result<Vec<pb::BlockDevice>, DataplaneError> {
        Ok(BlockDevicesClient::new(self.channel.clone())
            .list_block_devices(pb::ListBlockDevicesRequest {})
            .await
            .map_err(status)?
            .into_inner()
            .devices)
    }
}

impl Dataplane for ApiDataplane {
    async fn pool(&self) -> Result<PoolInfo, DataplaneError> {
        let used: u64 = self.files()?.values().sum();
        Ok(PoolInfo {
            capacity: self.capacity,
            free: self.capacity.saturating_sub(used),
        })
    }

    async fn create_volume(
        &self,
        name: &str,
        size: u64,
        _thin: bool,
    ) -> Result<PoolVolume, DataplaneError> {
        let path = self.file(name);
        let files = self.files()?;
        match files.get(name) {
            Some(&len) if len != size => {
                return Err(DataplaneError::Mismatch(format!(
                    "pool file {} holds {len} bytes, not {size}",
                    path.display()
                )))
            }
            Some(_) => {}
            None => {
                let used: u64 = files.values().sum();
                let free = self.capacity.saturating_sub(used);
                if size > free {
                    return Err(DataplaneError::NoSpace { needed: size, free });
                }
                // Sparse: blocks are taken as hosts write.
                let f =
                    std::fs::File::create(&path).map_err(|e| io(&path.display().to_string(), e))?;
                f.set_len(size)
                    .map_err(|e| io(&path.display().to_string(), e))?;
            }
        }
        let r = BlockDevicesClient::new(self.channel.clone())
            .create_block_device(pb::CreateBlockDeviceRequest {
                name: device(name),
                kind: Some(pb::create_block_device_request::Kind::File(
                    pb::FileDevice {
                        path: path.display().to_string(),
                        block_size: BLOCK_SIZE,
                        read_only: false,
                        direct: Some(!self.buffered),
                    },
                )),
            })
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(status(s)),
        }
        Ok(PoolVolume {
            name: name.into(),
            device: device(name),
            size,
        })
    }

    async fn delete_volume(&self, name: &str) -> Result<(), DataplaneError> {
        let r = BlockDevicesClient::new(self.channel.clone())
            .delete_block_device(pb::DeleteBlockDeviceRequest { name: device(name) })
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status(s)),
        }
        match std::fs::remove_file(self.file(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("pool file", e)),
        }
    }

    async fn volumes(&self) -> Result<Vec<PoolVolume>, DataplaneError> {
        let files = self.files()?;
        let devices = self.devices().await?;
        // A pool volume is its file and its device; a file alone (the target
        // restarted) counts as missing and is recreated.
        Ok(files
            .into_iter()
            .filter(|(n, _)| devices.iter().any(|d| d.name == device(n)))
            .map(|(n, size)| PoolVolume {
                device: device(&n),
                name: n,
                size,
            })
            .collect())
    }

    async fn exports(&self) -> Result<BTreeMap<String, Export>, DataplaneError> {
        let subs = SubsystemsClient::new(self.channel.clone())
            .list_subsystems(pb::ListSubsystemsRequest { nqn: String::new() })
            .await
            .map_err(status)?
            .into_inner()
            .subsystems;
        Ok(subs
            .into_iter()
            .map(|s| {
                let namespaces = s
                    .namespaces
                    .into_iter()
                    .map(|n| (n.nsid, n.device))
                    .collect();
                (s.nqn, Export { namespaces })
            })
            .collect())
    }

    async fn create_subsystem(&self, nqn: &str) -> Result<(), DataplaneError> {
        let r = SubsystemsClient::new(self.channel.clone())
            .create_subsystem(pb::CreateSubsystemRequest {
                nqn: nqn.into(),
                serial: None,
                model: Some("LightPool volume".into()),
                allow_any_host: Some(true),
                hosts: vec![],
                min_cntlid: None,
                max_cntlid: None,
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(status(s)),
        }
    }

    async fn delete_subsystem(&self, nqn: &str) -> Result<(), DataplaneError> {
        let r = SubsystemsClient::new(self.channel.clone())
            .delete_subsystem(pb::DeleteSubsystemRequest { nqn: nqn.into() })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status(s)),
        }
    }

    async fn add_namespace(
        &self,
        nqn: &str,
        nsid: u32,
        device: &str,
    ) -> Result<(), DataplaneError> {
        let r = NamespacesClient::new(self.channel.clone())
            .add_namespace(pb::AddNamespaceRequest {
                nqn: nqn.into(),
                nsid,
                device: device.into(),
                nguid: None,
                uuid: None,
                ana_group: Some(1),
                size_bytes: None,
                volume: String::new(),
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let have = self.exports().await?;
                match have.get(nqn).and_then(|e| e.namespaces.get(&nsid)) {
                    Some(d) if d == device => Ok(()),
                    _ => Err(status(s)),
                }
            }
            Err(s) => Err(status(s)),
        }
    }

    async fn ensure_listener(&self, address: &str, port: u16) -> Result<(), DataplaneError> {
        let addr = if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        let mut api = ListenersClient::new(self.channel.clone());
        let have = api
            .list_listeners(pb::ListListenersRequest {})
            .await
            .map_err(status)?
            .into_inner()
            .listeners;
        if have
            .iter()
            .any(|l| l.transport == "tcp" && l.address == addr)
        {
            return Ok(());
        }
        match api
            .add_listener(pb::AddListenerRequest {
                transport: "tcp".into(),
                address: addr,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(status(s)),
        }
    }
}
