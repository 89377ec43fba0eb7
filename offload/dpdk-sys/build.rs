//! With the `dpdk` feature: bindings from Debian's DPDK 22.11 headers (libdpdk-dev,
//! found through pkg-config `libdpdk`), made by bindgen at build time (it reads them
//! through libclang: libclang-dev), and the C shim (src/shim.c) for what the headers
//! define inline. tests/vm/setup.sh installs all of them. Without the feature: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;

    pub fn build() {
        println!("cargo:rerun-if-changed=wrapper.h");
        println!("cargo:rerun-if-changed=src/shim.c");
        let lib = pkg_config::Config::new()
            .atleast_version("22.11")
            .probe("libdpdk")
            .unwrap_or_else(|e| {
                panic!(
                    "pkg-config libdpdk: {e}\n(install Debian's libdpdk-dev and dpdk: \
                     tests/vm/setup.sh does, or build without the dpdk feature)"
                )
            });
        // pkg-config's cflags also carry `-include rte_config.h` and `-march=...`, which
        // the inline burst functions need; pass them to both cc and clang.
        let cflags: Vec<String> = std::process::Command::new("pkg-config")
            .args(["--cflags", "libdpdk"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .expect("pkg-config --cflags libdpdk");

        let mut cc = cc::Build::new();
        cc.file("src/shim.c").warnings(true);
        for p in &lib.include_paths {
            cc.include(p);
        }
        // "-include rte_config.h" arrives as two words, kept in order.
        for f in cflags.iter().filter(|f| !f.starts_with("-I")) {
            cc.flag(f);
        }
        cc.compile("lightpool_dpdk_shim");

        let bindings = bindgen::Builder::default()
            .header("wrapper.h")
            .clang_args(&cflags)
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_socket_id")
            .allowlist_function("rte_thread_register")
            .allowlist_function("rte_thread_unregister")
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_mempool_free")
            .allowlist_function("rte_mempool_avail_count")
            .allowlist_function("rte_mempool_in_use_count")
            .allowlist_function("rte_eth_dev_count_avail")
            .allowlist_function("rte_eth_dev_get_port_by_name")
            .allowlist_function("rte_eth_dev_socket_id")
            .allowlist_function("rte_eth_dev_info_get")
            .allowlist_function("rte_eth_dev_configure")
            .allowlist_function("rte_eth_dev_adjust_nb_rx_tx_desc")
            .allowlist_function("rte_eth_rx_queue_setup")
            .allowlist_function("rte_eth_tx_queue_setup")
            .allowlist_function("rte_eth_dev_start")
            .allowlist_function("rte_eth_dev_stop")
            .allowlist_function("rte_eth_dev_close")
            .allowlist_function("rte_eth_dev_get_mtu")
            .allowlist_function("rte_eth_link_get_nowait")
            .allowlist_function("rte_eth_macaddr_get")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_function("rte_eth_stats_reset")
            .allowlist_function("rte_eth_promiscuous_enable")
            .allowlist_function("lp_.*")
            .allowlist_var("lp_.*")
            .allowlist_var("RTE_ETH_LINK_.*")
            .allowlist_var("RTE_ETHER_.*")
            .allowlist_var("RTE_MEMPOOL_CACHE_MAX_SIZE")
            .allowlist_var("RTE_MAX_LCORE")
            .allowlist_type("rte_eth_conf")
            .allowlist_type("rte_eth_dev_info")
            .allowlist_type("rte_eth_link")
            .allowlist_type("rte_eth_stats")
            .allowlist_type("rte_ether_addr")
            .opaque_type("rte_mbuf")
            .opaque_type("rte_mempool")
            .rustified_enum("rte_eth_rx_mq_mode")
            .rustified_enum("rte_eth_tx_mq_mode")
            // Layout checks (compile-time asserts) hold the Rust structs to the C ones;
            // Debug where bindgen can derive it.
            .derive_default(true)
            .generate_comments(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .generate()
            .expect(
                "bindgen over DPDK's headers (libdpdk-dev, libclang-dev: tests/vm/setup.sh \
                 installs them)",
            );
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        bindings
            .write_to_file(out.join("bindings.rs"))
            .expect("writing bindings.rs");
    }
}
