// SPDX-License-Identifier: GPL-2.0
/* meshbreaker sidecar: counts, per remote address and port, TCP connections
 * reset by the peer (`resets`), connects refused (`refused`) and connects
 * abandoned without an answer (`timeouts`).
 *
 * Each kernel event is counted at exactly one tracepoint:
 *   resets:   tcp:tcp_receive_reset on a socket that is neither SYN_SENT nor
 *             CLOSE (an RST on a connected socket).
 *   refused and timeouts: sock:inet_sock_set_state SYN_SENT -> CLOSE, which
 *             every failed connect passes exactly once. The kernel stores the
 *             connect's error in sk->sk_err before it closes the socket
 *             (tcp_reset / tcp_v4_err -> tcp_done_with_error: sk_err, then
 *             tcp_done, then sk_error_report), so ECONNREFUSED (an RST or an
 *             ICMP port-unreachable answered the SYN) is `refused`, anything
 *             else (no error: the application or Envoy's connect timeout
 *             closed the socket; ETIMEDOUT: the kernel gave up; EHOSTUNREACH
 *             and friends: no peer ever answered) is `timeouts`.
 * Counting refusals at tcp_receive_reset and sock:inet_sk_error_report as
 * well would see one RST two or three times, and their order differs
 * between kernels (set_state fires before error_report since tcp_reset
 * became tcp_done_with_error), so neither is used for refusals.
 *
 * The peer map is an LRU hash: more peers than it holds evict the least
 * recently updated one instead of failing. GPL because bpf_probe_read_kernel
 * is a GPL-only helper. */
#include "tracepoints.h"
#include <bpf/bpf_helpers.h>
#include "meshbreaker.h"

_Static_assert(sizeof(struct mb_peer_key) == 20, "mb_peer_key layout");
_Static_assert(sizeof(struct mb_peer_counts) == 32, "mb_peer_counts layout");
_Static_assert(sizeof(struct mb_stats) == 32, "mb_stats layout");
_Static_assert(__builtin_offsetof(struct mb_tp_tcp_event_sk, daddr_v6) == 46, "tcp_receive_reset format");
_Static_assert(__builtin_offsetof(struct mb_tp_inet_sock_set_state, daddr_v6) == 56, "inet_sock_set_state format");

char LICENSE[] SEC("license") = "GPL";

/* max_entries is overridden by user space (--max-peers). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MB_DEFAULT_MAX_PEERS);
	__type(key, struct mb_peer_key);
	__type(value, struct mb_peer_counts);
} MB_PEERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mb_stats);
} MB_STATS SEC(".maps");

enum mb_kind { MB_RESET, MB_REFUSED, MB_TIMEOUT };

static __always_inline struct mb_stats *stats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&MB_STATS, &zero);
}

static __always_inline void read_failed(void)
{
	struct mb_stats *st = stats();
	if (st)
		__sync_fetch_and_add(&st->read_failures, 1);
}

/* Builds the peer key from a tracepoint's remote address fields; IPv4-mapped
 * IPv6 (a dual-stack socket talking IPv4) becomes IPv4. */
static __always_inline void peer_key(struct mb_peer_key *k, __u16 family, const __u8 *daddr,
				     const __u8 *daddr_v6, __u16 dport)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->port = dport;
	if (family == AF_INET6) {
		int mapped = 1;
#pragma unroll
		for (int i = 0; i < 10; i++)
			if (daddr_v6[i] != 0)
				mapped = 0;
		if (daddr_v6[10] != 0xff || daddr_v6[11] != 0xff)
			mapped = 0;
		if (mapped) {
			k->family = AF_INET;
#pragma unroll
			for (int i = 0; i < 4; i++)
				k->addr[i] = daddr_v6[12 + i];
		} else {
			k->family = AF_INET6;
#pragma unroll
			for (int i = 0; i < 16; i++)
				k->addr[i] = daddr_v6[i];
		}
	} else {
		k->family = AF_INET;
#pragma unroll
		for (int i = 0; i < 4; i++)
			k->addr[i] = daddr[i];
	}
}

static __always_inline void count(const struct mb_peer_key *k, enum mb_kind kind)
{
	struct mb_stats *st = stats();
	struct mb_peer_counts *c = bpf_map_lookup_elem(&MB_PEERS, k);
	if (!c) {
		struct mb_peer_counts zero = {};
		/* EEXIST from a racing CPU is fine: look it up again. */
		bpf_map_update_elem(&MB_PEERS, k, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&MB_PEERS, k);
		if (!c) {
			if (st)
				__sync_fetch_and_add(&st->update_failures, 1);
			return;
		}
	}
	switch (kind) {
	case MB_RESET:
		__sync_fetch_and_add(&c->resets, 1);
		break;
	case MB_REFUSED:
		__sync_fetch_and_add(&c->refused, 1);
		break;
	case MB_TIMEOUT:
		__sync_fetch_and_add(&c->timeouts, 1);
		break;
	}
	c->last_ns = bpf_ktime_get_ns();
	if (st)
		__sync_fetch_and_add(&st->events, 1);
}

SEC("tracepoint/tcp/tcp_receive_reset")
int mb_tcp_receive_reset(struct mb_tp_tcp_event_sk *ctx)
{
	__u16 dport = ctx->dport;
	if (dport == 0)
		return 0;

	const struct sock *sk = ctx->skaddr;
	unsigned char state = 0;
	if (bpf_probe_read_kernel(&state, sizeof(state), &sk->__sk_common.skc_state) != 0) {
		read_failed();
		return 0;
	}
	/* SYN_SENT: a refusal, counted when the socket closes (see above).
	 * CLOSE: tcp_reset ignores it. */
	if (state == TCP_SYN_SENT || state == TCP_CLOSE)
		return 0;

	struct mb_peer_key k;
	peer_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, dport);
	count(&k, MB_RESET);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int mb_inet_sock_set_state(struct mb_tp_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP || ctx->oldstate != TCP_SYN_SENT || ctx->newstate != TCP_CLOSE)
		return 0;
	__u16 sport = ctx->sport;
	__u16 dport = ctx->dport;
	/* sport 0: connect() failed before a local port was bound (e.g.
	 * EADDRNOTAVAIL); nothing was sent to the peer. */
	if (dport == 0 || sport == 0)
		return 0;

	const struct sock *sk = ctx->skaddr;
	int err = 0;
	if (bpf_probe_read_kernel(&err, sizeof(err), &sk->sk_err) != 0) {
		read_failed();
		return 0;
	}

	struct mb_peer_key k;
	peer_key(&k, ctx->family, ctx->daddr, ctx->daddr_v6, dport);
	count(&k, err == ECONNREFUSED ? MB_REFUSED : MB_TIMEOUT);
	return 0;
}
