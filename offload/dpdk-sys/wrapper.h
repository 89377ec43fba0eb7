/* What lightpool-dpdk uses of DPDK 22.11; bindgen reads this (build.rs). */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_ether.h>

/* src/shim.c: constants that are expression macros bindgen cannot evaluate. */
extern const uint64_t lp_rte_eth_rss_ip_tcp_udp;
extern const uint32_t lp_lcore_id_any;
extern const uint16_t lp_rte_pktmbuf_headroom;
extern const uint16_t lp_rte_mbuf_default_buf_size;

/* src/shim.c: the static inline functions and macros of the headers. */
int lp_rte_errno(void);
unsigned lp_rte_lcore_id(void);
uint16_t lp_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                             uint16_t nb_pkts);
uint16_t lp_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                             uint16_t nb_pkts);
struct rte_mbuf *lp_rte_pktmbuf_alloc(struct rte_mempool *mp);
int lp_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void lp_rte_pktmbuf_free(struct rte_mbuf *m);
void lp_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count);
void *lp_rte_pktmbuf_mtod(struct rte_mbuf *m);
char *lp_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int lp_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void lp_rte_pktmbuf_reset(struct rte_mbuf *m);
uint16_t lp_rte_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t lp_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t lp_rte_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t lp_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
struct rte_mempool *lp_rte_mbuf_pool(const struct rte_mbuf *m);
