/* The verbs rdma-core defines as static inline functions in its headers (they call
 * through the provider's ops table): bindgen cannot bind those, so each has a real
 * function here, compiled by build.rs. */
#include <infiniband/verbs.h>

int lp_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr)
{
    return ibv_post_send(qp, wr, bad_wr);
}

int lp_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr)
{
    return ibv_post_recv(qp, wr, bad_wr);
}

int lp_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc)
{
    return ibv_poll_cq(cq, num_entries, wc);
}

int lp_ibv_req_notify_cq(struct ibv_cq *cq, int solicited_only)
{
    return ibv_req_notify_cq(cq, solicited_only);
}

struct ibv_mr *lp_ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access)
{
    return ibv_reg_mr(pd, addr, length, access);
}

int lp_ibv_query_port(struct ibv_context *context, uint8_t port_num, struct ibv_port_attr *port_attr)
{
    return ibv_query_port(context, port_num, port_attr);
}

#include <rdma/rdma_cma.h>

struct sockaddr *lp_rdma_local_addr(struct rdma_cm_id *id)
{
    return rdma_get_local_addr(id);
}

struct sockaddr *lp_rdma_peer_addr(struct rdma_cm_id *id)
{
    return rdma_get_peer_addr(id);
}

int lp_ibv_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr)
{
    return ibv_post_srq_recv(srq, wr, bad_wr);
}
