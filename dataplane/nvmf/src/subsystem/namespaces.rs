//! Namespaces changed at run time: added, removed, resized, moved to another device. Each change builds a new
//! table, swaps it in and bumps the generation (queues take it at their next command
//! or poll), records the change in the state region, and raises the Namespace
//! Attribute Changed async event on every controller, whose Changed Namespace List log
//! then names the namespace. Control path only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::subsystem::{make_namespace, Namespace, NamespaceConfig, NsTable, Subsystem};
use crate::NvmfError;

impl Subsystem {
    fn swap_namespaces(&self, list: Vec<Arc<Namespace>>, changed: u32) {
        self.swap_table(list);
        for c in self.controllers() {
            c.notify_ns_changed(changed);
        }
    }

    fn swap_table(&self, list: Vec<Arc<Namespace>>) {
        self.ns.store(Arc::new(NsTable::from_list(list)));
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Serves namespace `nsid` from `bdev` from now on (a device stacked on the one it
    /// has, say: live migration's mirror), without telling the hosts: nothing they see
    /// changes (same identifiers, size and block size). Queues take the new device at
    /// their next command or poll and let the old one's channels finish what they run.
    /// Returns the namespace as it was: once no queue holds it (its strong count is 1),
    /// no request reaches the old device through this subsystem any more.
    pub fn replace_namespace_device(
        &self,
        nsid: u32,
        bdev: Arc<dyn lightpool_bdev::Bdev>,
    ) -> Result<Arc<Namespace>, NvmfError> {
        let _w = self
            .ns_writer
            .lock()
            .expect("namespace writer lock poisoned");
        let cur = self.ns.load_full();
        let Some(old) = self.namespace(nsid) else {
            return Err(NvmfError::NoSuchNamespace {
                nqn: self.nqn.clone(),
                nsid,
            });
        };
        let info = bdev.info();
        if info.block_size != old.block_size || info.num_blocks < old.num_blocks {
            return Err(self.invalid(format!(
                "nsid {nsid}: device {} ({} blocks of {} bytes) cannot stand in for {} blocks of {} bytes",
                info.name, info.num_blocks, info.block_size, old.num_blocks, old.block_size
            )));
        }
        let ns = Arc::new(Namespace {
            bdev,
            ..(*old).clone()
        });
        let list = cur
            .list
            .iter()
            .map(|n| {
                if n.nsid == nsid {
                    ns.clone()
                } else {
                    n.clone()
                }
            })
            .collect();
        drop(cur);
        self.swap_table(list);
        Ok(old)
    }

    fn invalid(&self, reason: String) -> NvmfError {
        NvmfError::InvalidSubsystem {
            nqn: self.nqn.clone(),
            reason,
        }
    }

    /// Add a namespace; connected hosts are told (Namespace Attribute Changed).
    pub fn add_namespace(&self, cfg: NamespaceConfig) -> Result<Arc<Namespace>, NvmfError> {
        if self.kind != super::SubsystemKind::Nvm || self.is_removed() {
            return Err(NvmfError::NoSuchSubsystem(self.nqn.clone()));
        }
        let _w = self
            .ns_writer
            .lock()
            .expect("namespace writer lock poisoned");
        let cur = self.ns.load_full();
        let taken = (cfg.nsid as usize)
            .checked_sub(1)
            .and_then(|i| cur.by_idx.get(i))
            .is_some_and(Option::is_some);
        if taken {
            return Err(NvmfError::DuplicateNamespace {
                nqn: self.nqn.clone(),
                nsid: cfg.nsid,
            });
        }
        let ns = make_namespace(&self.nqn, &cfg).map_err(|r| self.invalid(r))?;
        let mut list = cur.list.clone();
        list.push(ns.clone());
        self.record_namespace(&ns)?;
        self.swap_namespaces(list, ns.nsid);
        Ok(ns)
    }

    /// Remove a namespace: hosts are told; queues stop using it at their next command
    /// or poll, and its device is let go once the requests it runs have finished.
    pub fn remove_namespace(&self, nsid: u32) -> Result<Arc<Namespace>, NvmfError> {
        let _w = self
            .ns_writer
            .lock()
            .expect("namespace writer lock poisoned");
        let cur = self.ns.load_full();
        let Some(ns) = self.namespace(nsid) else {
            return Err(NvmfError::NoSuchNamespace {
                nqn: self.nqn.clone(),
                nsid,
            });
        };
        let list = cur
            .list
            .iter()
            .filter(|n| n.nsid != nsid)
            .cloned()
            .collect();
        self.unrecord_namespace(nsid);
        self.swap_namespaces(list, nsid);
        Ok(ns)
    }

    /// Present `num_blocks` blocks of namespace `nsid`'s device (at most all of them;
    /// `None`: all of them, as the device is now). Hosts are told.
    pub fn resize_namespace(
        &self,
        nsid: u32,
        num_blocks: Option<u64>,
    ) -> Result<Arc<Namespace>, NvmfError> {
        self.replace_namespace(nsid, None, |_| num_blocks)
    }

    /// Moves namespace `nsid` to `bdev`, the same data on a device that grew (a pool
    /// volume after a grow): a namespace that presented all of its old device presents
    /// all of the new one, one that presented part keeps that part. Hosts are told
    /// (Namespace Attribute Changed); queues move to the new device at their next
    /// command and let the old one's requests finish.
    pub fn regrow_namespace(
        &self,
        nsid: u32,
        bdev: Arc<dyn lightpool_bdev::Bdev>,
    ) -> Result<Arc<Namespace>, NvmfError> {
        self.replace_namespace(nsid, Some(bdev), |old| {
            (old.num_blocks != old.bdev.info().num_blocks).then_some(old.num_blocks)
        })
    }

    fn replace_namespace(
        &self,
        nsid: u32,
        bdev: Option<Arc<dyn lightpool_bdev::Bdev>>,
        num_blocks: impl FnOnce(&Namespace) -> Option<u64>,
    ) -> Result<Arc<Namespace>, NvmfError> {
        let _w = self
            .ns_writer
            .lock()
            .expect("namespace writer lock poisoned");
        let cur = self.ns.load_full();
        let Some(old) = self.namespace(nsid) else {
            return Err(NvmfError::NoSuchNamespace {
                nqn: self.nqn.clone(),
                nsid,
            });
        };
        let cfg = NamespaceConfig {
            nsid,
            bdev: bdev.unwrap_or_else(|| old.bdev.clone()),
            nguid: Some(old.nguid),
            uuid: Some(old.uuid),
            anagrpid: Some(old.anagrpid),
            num_blocks: num_blocks(&old),
        };
        let ns = make_namespace(&self.nqn, &cfg).map_err(|r| self.invalid(r))?;
        let list = cur
            .list
            .iter()
            .map(|n| {
                if n.nsid == nsid {
                    ns.clone()
                } else {
                    n.clone()
                }
            })
            .collect();
        self.rewrite_namespace(&ns);
        self.swap_namespaces(list, nsid);
        Ok(ns)
    }

    /// The subsystem is deleted: Connect refuses it, every controller fails (its
    /// connections close) and the namespace table empties (queues let go of the devices
    /// once their requests finish). Its records leave the state region once its
    /// controllers are gone ([`Subsystem::unrecord`]).
    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
        let _w = self
            .ns_writer
            .lock()
            .expect("namespace writer lock poisoned");
        self.ns.store(Arc::new(NsTable::from_list(Vec::new())));
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
        for c in self.controllers() {
            c.fail();
        }
    }
}
