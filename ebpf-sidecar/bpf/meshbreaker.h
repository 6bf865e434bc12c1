/* Types shared between the eBPF program (meshbreaker.bpf.c) and user space
 * (src/abi.rs mirrors them as #[repr(C)] structs implementing aya::Pod).
 * This header is the single definition; change both sides together — the
 * `map_layouts_match_rust_types` test compares the compiled object's map key
 * and value sizes with the Rust structs. */
#ifndef MESHBREAKER_H
#define MESHBREAKER_H

#define MB_DEFAULT_MAX_PEERS 16384

/* Remote peer: IPv4 in addr[0..4] (rest zero) or IPv6 in addr[0..16]; IPv4-mapped
 * IPv6 addresses are folded into IPv4 so one upstream is one key. Port in host order. */
struct mb_peer_key {
	__u8 addr[16];
	__u16 family; /* AF_INET (2) or AF_INET6 (10) */
	__u16 port;
};

/* Cumulative counts for one peer since the program was loaded. */
struct mb_peer_counts {
	__u64 resets;
	__u64 refused;
	__u64 timeouts;
	__u64 last_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last counted event */
};

/* Program health, one entry in MB_STATS. */
struct mb_stats {
	__u64 events;          /* counted events, all kinds */
	__u64 update_failures; /* a peer could not be inserted (should stay 0: LRU evicts) */
	__u64 read_failures;   /* socket state or error could not be read */
	__u64 reserved;
};

#endif
