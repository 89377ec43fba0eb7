//! Hot upgrade of block devices, stacked ones included.
//!
//! The block devices of a target form a graph: namespaces (and, later, the management
//! API's registry) hold roots; a device stacked on others names them in
//! [`Bdev::children`]. A device several others stack on (a pool under many volumes) is
//! one node. For a hot upgrade the old process walks that graph ([`DeviceGraph`]),
//! children before the devices stacked on them, and asks each device for its own
//! [`Export`]: the kind of device, its state encoded by the backend (opaque to everyone
//! else), and its descriptors. Descriptors travel beside the records (SCM_RIGHTS); a
//! [`DeviceRecord`] names them by index and its children by id. In the new process an
//! [`Adopter`] registered under each kind rebuilds the device from its record, its
//! descriptors and its already adopted children ([`Adopters::adopt_all`]).
//!
//! Devices whose state changes while serving (a VFIO controller's queues) say so with
//! [`Bdev::export_at_pause`]; they, and every device stacked on them, are exported only
//! on a drained target. The others can be exported (and adopted) before the pause.
//!
//! Recovery (`--recover`, after both processes died) adopts from records without
//! descriptors: a backend that can reopen its device by name does, one that cannot
//! (RAM outside the state directory, a VFIO controller) refuses with the reason.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Bdev, BdevError};

/// What one device hands to its successor: see the module documentation.
#[derive(Debug)]
pub struct Export {
    /// The backend's own state, encoded by it (postcard, say); opaque to the rest.
    pub state: Vec<u8>,
    /// Descriptors, in the order the adopter takes them.
    pub fds: Vec<OwnedFd>,
}

/// One device of the graph as it travels (and as the boot record keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Position in the graph (children have lower ids).
    pub id: u32,
    pub kind: String,
    /// [`crate::BdevInfo::name`], for messages and for adopters that reopen by name.
    pub name: String,
    pub state: Vec<u8>,
    /// Indices of its descriptors in the list that travels beside the records.
    pub fds: Vec<usize>,
    /// Ids of the devices it is stacked on, in [`Bdev::children`] order.
    pub children: Vec<u32>,
    /// Exported only on a drained target (itself or a device under it).
    pub at_pause: bool,
}

/// Errors exporting or adopting a graph of devices.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("block device {name} cannot be handed over: {source}")]
    Export {
        name: String,
        #[source]
        source: BdevError,
    },
    #[error("block device {name} (kind {kind}) cannot be taken over: {source}")]
    Adopt {
        name: String,
        kind: String,
        #[source]
        source: BdevError,
    },
    #[error("block device {name} is of kind {kind}, which this binary does not know")]
    UnknownKind { name: String, kind: String },
    #[error("block device {name}: descriptor {index} did not come with the state")]
    MissingFd { name: String, index: usize },
    #[error("block device {name} names device {child}, which is not in the state before it")]
    MissingChild { name: String, child: u32 },
}

/// Every device reachable from some roots, each once, children first.
pub struct DeviceGraph {
    nodes: Vec<Node>,
}

struct Node {
    dev: Arc<dyn Bdev>,
    children: Vec<u32>,
    at_pause: bool,
}

/// Identity of a device: the address of what the `Arc` points to.
fn key(d: &Arc<dyn Bdev>) -> usize {
    Arc::as_ptr(d) as *const () as usize
}

impl DeviceGraph {
    /// Walks the devices reachable from `roots` (duplicates are one device).
    pub fn walk<'a>(roots: impl IntoIterator<Item = &'a Arc<dyn Bdev>>) -> DeviceGraph {
        let mut g = DeviceGraph { nodes: Vec::new() };
        let mut ids = HashMap::new();
        for r in roots {
            g.visit(r, &mut ids);
        }
        g
    }

    fn visit(&mut self, d: &Arc<dyn Bdev>, ids: &mut HashMap<usize, u32>) -> u32 {
        if let Some(&id) = ids.get(&key(d)) {
            return id;
        }
        let children: Vec<u32> = d.children().iter().map(|c| self.visit(c, ids)).collect();
        let at_pause =
            d.export_at_pause() || children.iter().any(|&c| self.nodes[c as usize].at_pause);
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            dev: d.clone(),
            children,
            at_pause,
        });
        ids.insert(key(d), id);
        id
    }

    /// The id of a device of the graph (a root, say).
    pub fn id_of(&self, d: &Arc<dyn Bdev>) -> Option<u32> {
        self.nodes
            .iter()
            .position(|n| key(&n.dev) == key(d))
            .map(|i| i as u32)
    }

    /// Every device, children first.
    pub fn devices(&self) -> impl Iterator<Item = &Arc<dyn Bdev>> {
        self.nodes.iter().map(|n| &n.dev)
    }

    /// Whether some device must be exported on a drained target.
    pub fn any_at_pause(&self) -> bool {
        self.nodes.iter().any(|n| n.at_pause)
    }

    /// Records of every device, with state only for those that `with_state` selects
    /// (by their at-pause flag); descriptors of those appended to `fds`, which the
    /// records index from `fd_base`. The others are described (kind, name, place in the
    /// graph) without state: a boot record says that much of an at-pause device, so that
    /// a successor knows to wait for the pause and recovery can say why it cannot.
    pub fn export(
        &self,
        with_state: impl Fn(bool) -> bool,
        fds: &mut Vec<OwnedFd>,
        fd_base: usize,
    ) -> Result<Vec<DeviceRecord>, PersistError> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for (id, n) in self.nodes.iter().enumerate() {
            let name = n.dev.info().name.clone();
            let mut rec = DeviceRecord {
                id: id as u32,
                kind: n.dev.kind().to_string(),
                name: name.clone(),
                state: Vec::new(),
                fds: Vec::new(),
                children: n.children.clone(),
                at_pause: n.at_pause,
            };
            if with_state(n.at_pause) {
                let e = n
                    .dev
                    .export()
                    .map_err(|source| PersistError::Export { name, source })?;
                rec.state = e.state;
                for fd in e.fds {
                    rec.fds.push(fd_base + fds.len());
                    fds.push(fd);
                }
            }
            out.push(rec);
        }
        Ok(out)
    }
}

/// What an adopter gets for one device.
pub struct Adoption<'a> {
    pub name: &'a str,
    pub state: &'a [u8],
    /// The descriptors the old process handed over, in its order; `None` when
    /// recovering without it (reopen by name, or refuse).
    pub fds: Option<Vec<OwnedFd>>,
    /// The devices it is stacked on, adopted already, in [`Bdev::children`] order.
    pub children: Vec<Arc<dyn Bdev>>,
}

/// Rebuilds the devices of one kind in a new process.
pub trait Adopter: Send + Sync {
    /// The [`Bdev::kind`] of the devices it rebuilds.
    fn kind(&self) -> &'static str;
    fn adopt(&self, a: Adoption<'_>) -> Result<Arc<dyn Bdev>, BdevError>;
}

/// The adopters a binary knows (the daemon registers one per backend it links).
#[derive(Default)]
pub struct Adopters {
    by_kind: BTreeMap<&'static str, Box<dyn Adopter>>,
}

impl Adopters {
    pub fn new() -> Adopters {
        Adopters::default()
    }

    pub fn register(&mut self, a: Box<dyn Adopter>) -> &mut Self {
        self.by_kind.insert(a.kind(), a);
        self
    }

    /// Adopts `records` in order (children come first) into `devs` (by id; devices
    /// adopted by an earlier call are there already and are skipped). `take` hands out
    /// a descriptor by index; `None` for `take` means recovery (no descriptors).
    pub fn adopt_all(
        &self,
        records: &[DeviceRecord],
        devs: &mut BTreeMap<u32, Arc<dyn Bdev>>,
        mut take: Option<&mut dyn FnMut(usize) -> Option<OwnedFd>>,
    ) -> Result<(), PersistError> {
        for r in records {
            if devs.contains_key(&r.id) {
                continue;
            }
            let adopter =
                self.by_kind
                    .get(r.kind.as_str())
                    .ok_or_else(|| PersistError::UnknownKind {
                        name: r.name.clone(),
                        kind: r.kind.clone(),
                    })?;
            let mut children = Vec::with_capacity(r.children.len());
            for c in &r.children {
                children.push(
                    devs.get(c)
                        .ok_or(PersistError::MissingChild {
                            name: r.name.clone(),
                            child: *c,
                        })?
                        .clone(),
                );
            }
            let fds = match take.as_mut() {
                Some(take) => {
                    let mut v = Vec::with_capacity(r.fds.len());
                    for &i in &r.fds {
                        v.push(take(i).ok_or_else(|| PersistError::MissingFd {
                            name: r.name.clone(),
                            index: i,
                        })?);
                    }
                    Some(v)
                }
                None => None,
            };
            let dev = adopter
                .adopt(Adoption {
                    name: &r.name,
                    state: &r.state,
                    fds,
                    children,
                })
                .map_err(|source| PersistError::Adopt {
                    name: r.name.clone(),
                    kind: r.kind.clone(),
                    source,
                })?;
            devs.insert(r.id, dev);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
