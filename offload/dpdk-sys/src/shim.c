/* The parts of DPDK's API that are static inline functions or macros in the headers
 * (the burst calls, the mbuf helpers, the per-lcore errno and lcore id), as real
 * functions Rust can link to, and the expression-macro constants as variables. */
#include "../wrapper.h"

const uint64_t lp_rte_eth_rss_ip_tcp_udp = RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
const uint32_t lp_lcore_id_any = LCORE_ID_ANY;
const uint16_t lp_rte_pktmbuf_headroom = RTE_PKTMBUF_HEADROOM;
const uint16_t lp_rte_mbuf_default_buf_size = RTE_MBUF_DEFAULT_BUF_SIZE;

int lp_rte_errno(void) { return rte_errno; }

unsigned lp_rte_lcore_id(void) { return rte_lcore_id(); }

uint16_t lp_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                             uint16_t nb_pkts) {
    return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t lp_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                             uint16_t nb_pkts) {
    return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *lp_rte_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

int lp_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count) {
    return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void lp_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void lp_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count) {
    rte_pktmbuf_free_bulk(mbufs, count);
}

void *lp_rte_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

char *lp_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

int lp_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }

void lp_rte_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }

uint16_t lp_rte_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t lp_rte_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t lp_rte_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

uint16_t lp_rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

struct rte_mempool *lp_rte_mbuf_pool(const struct rte_mbuf *m) { return m->pool; }
