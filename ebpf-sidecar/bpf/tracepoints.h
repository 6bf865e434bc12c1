/* The few kernel definitions the program needs, written by hand so the build
 * needs neither the build machine's BTF nor bpftool: only clang and libbpf-dev.
 *
 * struct sock is read with CO-RE (preserve_access_index): aya relocates the
 * field offset against the running kernel's /sys/kernel/btf/vmlinux.
 *
 * The tracepoint records are the stable layouts of the tracepoint `format`
 * files (include/trace/events/{tcp,sock}.h, unchanged up to their fixed
 * prefix since 5.15); tracepoint programs must read the context at constant
 * offsets, so these are plain structs. */
#ifndef MESHBREAKER_TRACEPOINTS_H
#define MESHBREAKER_TRACEPOINTS_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef short __s16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

enum bpf_map_type_mb {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_LRU_HASH = 9,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ECONNREFUSED 111

/* enum tcp_state values (include/net/tcp_states.h), part of the UAPI of the tracepoints */
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

struct sock_common {
	unsigned char skc_state;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	int sk_err;
} __attribute__((preserve_access_index));

struct mb_trace_entry {
	__u16 type;
	__u8 flags;
	__u8 preempt_count;
	__s32 pid;
};

/* tcp:tcp_receive_reset (event class tcp_event_sk) */
struct mb_tp_tcp_event_sk {
	struct mb_trace_entry ent;
	const void *skaddr;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

/* sock:inet_sock_set_state */
struct mb_tp_inet_sock_set_state {
	struct mb_trace_entry ent;
	const void *skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

#endif
