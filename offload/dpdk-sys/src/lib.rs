//! DPDK 22.11 for LightPool. With the `dpdk` feature: [`ffi`], the bindings bindgen
//! makes from Debian's libdpdk-dev headers at build time (an allowlist of what
//! lightpool-dpdk uses), and the `lp_*` functions of a C shim (src/shim.c) for what
//! the headers define as static inline functions or macros: the RX/TX bursts, the
//! mbuf helpers (`rte_pktmbuf_mtod` is a macro), `rte_errno` and `rte_lcore_id`.
//! Linked against the shared libraries pkg-config `libdpdk` names; the drivers (net_ring,
//! net_tap, net_af_packet, the mempool ring) are plugins EAL loads from Debian's
//! `dpdk` package at run time.
//!
//! Without the feature the crate is empty, so a workspace build needs no DPDK.
//! The safe layer is lightpool-dpdk.

#[cfg(feature = "dpdk")]
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
pub mod ffi {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}
