//! The transports this binary links, wired by configuration: a listener names its
//! transport (`transport = "tcp"`), and the first listener of a kind makes that
//! transport.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use lightpool_nvmf::{Transport, TransportContext, TransportKinds};

/// Every transport kind this binary links.
pub fn kinds() -> TransportKinds {
    let mut k = TransportKinds::new();
    k.register(Box::new(lightpool_transport_tcp::TcpKind));
    #[cfg(feature = "rdma")]
    k.register(Box::new(lightpool_transport_rdma::RdmaKind));
    k
}

/// `[target] rdma_srq`: NVMe/RDMA connections accepted from now on receive from one
/// shared receive queue per reactor (`true`) or each from its own (`false`).
pub fn set_rdma_srq(on: bool) -> Result<()> {
    #[cfg(feature = "rdma")]
    lightpool_transport_rdma::set_shared_receive_queue(on);
    #[cfg(not(feature = "rdma"))]
    if on {
        anyhow::bail!("rdma_srq = true needs a binary built with the rdma feature");
    }
    Ok(())
}

/// The `[target] rdma_srq` in effect, for a saved configuration (`None`: the default).
pub fn rdma_srq() -> Option<bool> {
    #[cfg(feature = "rdma")]
    return lightpool_transport_rdma::shared_receive_queue().then_some(true);
    #[cfg(not(feature = "rdma"))]
    None
}

/// How listings and the start-up banner name a transport.
pub fn label(name: &str) -> String {
    format!("NVMe/{}", name.to_uppercase())
}

/// The transports a target runs: one per kind in use.
pub struct Transports {
    ctx: TransportContext,
    list: Mutex<Vec<Arc<dyn Transport>>>,
}

impl Transports {
    pub fn new(ctx: TransportContext) -> Transports {
        Transports::with(ctx, Vec::new())
    }

    /// Transports taken over from a predecessor.
    pub fn with(ctx: TransportContext, list: Vec<Arc<dyn Transport>>) -> Transports {
        Transports {
            ctx,
            list: Mutex::new(list),
        }
    }

    /// The transport named `name`, made on first use.
    pub fn get_or_create(&self, name: &str) -> Result<Arc<dyn Transport>> {
        let mut list = self.list.lock().expect("transport list poisoned");
        if let Some(t) = list.iter().find(|t| t.name() == name) {
            return Ok(t.clone());
        }
        let t = kinds()
            .get(name)?
            .create(self.ctx.clone())
            .with_context(|| format!("starting transport {name}"))?;
        list.push(t.clone());
        Ok(t)
    }

    /// Every transport running.
    pub fn all(&self) -> Vec<Arc<dyn Transport>> {
        self.list.lock().expect("transport list poisoned").clone()
    }

    /// Serve on every transport (after a failed handover, or once a predecessor let go).
    pub fn resume_all(&self) -> Result<()> {
        for t in self.all() {
            t.resume()
                .with_context(|| format!("resuming transport {}", t.name()))?;
        }
        Ok(())
    }
}
