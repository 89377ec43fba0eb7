// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
// LightPool's XDP steering: TCP segments to a steered port (the NVMe/TCP listener's,
// which the loader writes into `ports`) go to the AF_XDP socket of the queue they
// arrived on; everything else (ARP, ICMP, other ports, IPv6) goes on to the kernel.
// Counters per CPU: [0] steered, [1] passed, [2] steered but no socket on the queue
// (passed to the kernel, which answers with a reset: the engine is not running).
//
// Built by build.rs: clang -O2 -g -target bpf (the -g gives the BTF that describes
// the maps to the loader).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Steered TCP destination ports, in host byte order; the value is unused (1).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

enum { STEERED = 0, PASSED = 1, NO_SOCKET = 2, NCOUNTERS = 3 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NCOUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 which, int action)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
	return action;
}

SEC("xdp")
int lightpool_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return count(PASSED, XDP_PASS);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
		return count(PASSED, XDP_PASS);
	// Fragments (other than the first) carry no TCP header: leave them to the kernel.
	if (ip->frag_off & bpf_htons(0x1fff))
		return count(PASSED, XDP_PASS);
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > end)
		return count(PASSED, XDP_PASS);
	__u16 port = bpf_ntohs(tcp->dest);
	if (!bpf_map_lookup_elem(&ports, &port))
		return count(PASSED, XDP_PASS);
	int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		return count(STEERED, action);
	return count(NO_SOCKET, action);
}
