//! An ethdev port with one RX/TX queue pair per reactor.

use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex};

use lightpool_dpdk_sys::ffi;

use crate::eal::Eal;
use crate::error::{port_error, DpdkError};
use crate::mbuf::Mempool;
use crate::queue::Queue;

/// How [`Port::open`] configures the device.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// Queue pairs: one per reactor.
    pub queues: u16,
    /// Descriptors per RX and per TX queue (the driver may round them).
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// RSS across the queues where the device has it (and queues > 1). Devices without
    /// it spread flows their own way (net_af_packet: the kernel's fanout hash) or not
    /// at all (net_ring: each queue is its own loop).
    pub rss: bool,
    pub promiscuous: bool,
    /// Packets one burst moves.
    pub burst: usize,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            rss: true,
            promiscuous: false,
            burst: 32,
        }
    }
}

/// Link state (`rte_eth_link_get_nowait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub speed_mbps: u32,
}

/// The port's counters (`rte_eth_stats_get`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped by the device for want of RX descriptors.
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_no_mbuf: u64,
}

/// `Ok` for a port call's zero return, else its typed error.
fn check(port: &str, call: &'static str, ret: i32) -> Result<(), DpdkError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(port_error(port, call, ret))
    }
}

pub(crate) struct PortInner {
    pub(crate) id: u16,
    pub(crate) name: String,
    pub(crate) pool: Arc<Mempool>,
    started: Mutex<bool>,
}

impl PortInner {
    fn stop(&self) -> Result<(), DpdkError> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if *started {
            // SAFETY: a configured port.
            let ret = unsafe { ffi::rte_eth_dev_stop(self.id) };
            check(&self.name, "rte_eth_dev_stop", ret)?;
            *started = false;
        }
        Ok(())
    }
}

impl Drop for PortInner {
    fn drop(&mut self) {
        let _ = self.stop();
        // SAFETY: stopped, and no queue is left (they hold this Arc).
        unsafe { ffi::rte_eth_dev_close(self.id) };
    }
}

/// A started port. Its [`Queue`]s (from [`Port::open`]) keep it configured; the port
/// is stopped and closed when it and all its queues are dropped.
pub struct Port {
    inner: Arc<PortInner>,
    driver: String,
    rss: bool,
    mtu: u16,
    queues: u16,
}

impl Port {
    /// Configures and starts the port EAL made for `name` (its `--vdev` name, e.g.
    /// `net_tap0`), with `config.queues` queue pairs whose RX side fills from `pool`;
    /// returns the port and its queues, queue i for reactor i.
    pub fn open(
        _eal: &Eal,
        name: &str,
        config: &PortConfig,
        pool: Arc<Mempool>,
    ) -> Result<(Port, Vec<Queue>), DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::BadArgument(name.to_string()))?;
        let mut id = 0u16;
        // SAFETY: EAL runs; the name is NUL-terminated; id is written on success.
        if unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) } != 0 {
            return Err(DpdkError::NoSuchPort(name.to_string()));
        }
        let mut info = ffi::rte_eth_dev_info::default();
        // SAFETY: a valid port id; info is written.
        let ret = unsafe { ffi::rte_eth_dev_info_get(id, &mut info) };
        check(name, "rte_eth_dev_info_get", ret)?;
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string owned by the driver, static.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        let max = info.max_rx_queues.min(info.max_tx_queues);
        if config.queues == 0 || config.queues > max {
            return Err(DpdkError::TooManyQueues {
                port: name.to_string(),
                asked: config.queues,
                max,
            });
        }
        let mut conf = ffi::rte_eth_conf::default();
        // SAFETY: plain read of a constant the shim exports.
        let want_hf = unsafe { ffi::lp_rte_eth_rss_ip_tcp_udp } & info.flow_type_rss_offloads;
        let rss = config.rss && config.queues > 1 && want_hf != 0;
        if rss {
            conf.rxmode.mq_mode = ffi::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = want_hf;
        }
        // SAFETY: a valid port; conf outlives the call.
        let ret = unsafe { ffi::rte_eth_dev_configure(id, config.queues, config.queues, &conf) };
        check(name, "rte_eth_dev_configure", ret)?;
        // From here the port is configured: PortInner closes it on any error below.
        let inner = Arc::new(PortInner {
            id,
            name: name.to_string(),
            pool,
            started: Mutex::new(false),
        });
        let (mut rx_desc, mut tx_desc) = (config.rx_desc, config.tx_desc);
        // SAFETY: a configured port; both are read and written.
        let ret = unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc) };
        check(name, "rte_eth_dev_adjust_nb_rx_tx_desc", ret)?;
        // SAFETY: a valid port id.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(id) }.max(0) as u32;
        for q in 0..config.queues {
            // SAFETY: a configured port, q < queues, a valid mempool that outlives the
            // port (PortInner holds it); NULL conf = the driver's defaults.
            let ret = unsafe {
                ffi::rte_eth_rx_queue_setup(
                    id,
                    q,
                    rx_desc,
                    socket,
                    std::ptr::null(),
                    inner.pool.as_ptr(),
                )
            };
            check(name, "rte_eth_rx_queue_setup", ret)?;
            // SAFETY: as above.
            let ret =
                unsafe { ffi::rte_eth_tx_queue_setup(id, q, tx_desc, socket, std::ptr::null()) };
            check(name, "rte_eth_tx_queue_setup", ret)?;
        }
        if config.promiscuous {
            // SAFETY: a configured port. Not every virtual device can; not fatal.
            unsafe { ffi::rte_eth_promiscuous_enable(id) };
        }
        let mut mtu = 1500u16;
        // SAFETY: a valid port; mtu is written on success.
        unsafe { ffi::rte_eth_dev_get_mtu(id, &mut mtu) };
        let port = Port {
            inner,
            driver,
            rss,
            mtu,
            queues: config.queues,
        };
        port.start()?;
        let mac = port.mac();
        let queues = (0..config.queues)
            .map(|q| Queue::new(port.inner.clone(), q, config.burst, usize::from(mtu), mac))
            .collect();
        Ok((port, queues))
    }

    /// Starts the port (after [`Port::stop`]); [`Port::open`] starts it.
    pub fn start(&self) -> Result<(), DpdkError> {
        let mut started = self.inner.started.lock().unwrap_or_else(|e| e.into_inner());
        if !*started {
            // SAFETY: a configured port with all its queues set up.
            let ret = unsafe { ffi::rte_eth_dev_start(self.inner.id) };
            check(&self.inner.name, "rte_eth_dev_start", ret)?;
            *started = true;
        }
        Ok(())
    }

    /// Stops the port: its queues receive nothing and send nothing until [`Port::start`].
    pub fn stop(&self) -> Result<(), DpdkError> {
        self.inner.stop()
    }

    pub fn id(&self) -> u16 {
        self.inner.id
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The driver (`net_tap`, `net_af_packet`, `net_ring`, ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Whether the device spreads flows over the queues by RSS.
    pub fn rss(&self) -> bool {
        self.rss
    }

    pub fn queues(&self) -> u16 {
        self.queues
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn mac(&self) -> [u8; 6] {
        let mut a = ffi::rte_ether_addr::default();
        // SAFETY: a valid port; a is written.
        unsafe { ffi::rte_eth_macaddr_get(self.inner.id, &mut a) };
        a.addr_bytes
    }

    pub fn link(&self) -> Result<Link, DpdkError> {
        let mut l = ffi::rte_eth_link::default();
        // SAFETY: a valid port; l is written.
        let ret = unsafe { ffi::rte_eth_link_get_nowait(self.inner.id, &mut l) };
        check(&self.inner.name, "rte_eth_link_get_nowait", ret)?;
        Ok(Link {
            up: l.link_status() != 0,
            speed_mbps: l.link_speed,
        })
    }

    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: a valid port; s is written.
        let ret = unsafe { ffi::rte_eth_stats_get(self.inner.id, &mut s) };
        check(&self.inner.name, "rte_eth_stats_get", ret)?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
        })
    }

    pub fn reset_stats(&self) -> Result<(), DpdkError> {
        // SAFETY: a valid port.
        let ret = unsafe { ffi::rte_eth_stats_reset(self.inner.id) };
        check(&self.inner.name, "rte_eth_stats_reset", ret)?;
        Ok(())
    }

    /// The pool the port receives into.
    pub fn mempool(&self) -> &Arc<Mempool> {
        &self.inner.pool
    }
}
