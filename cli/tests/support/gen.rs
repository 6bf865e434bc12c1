//! A synthetic access log in the shipped format, for the replay benchmark and tests (test
//! support, included by `#[path]`, not part of the CLI's library): `keys`
//! clusters, 2,000 requests per second of log time, durations of 1–200 ms, written in completion
//! order as Envoy writes them, with a failing phase per key (half the requests 503 or reset for
//! 20 seconds every 200 seconds, staggered per key).

use std::io::Write;

use policy_core::breaker::SplitMix64;

pub fn write_log<W: Write>(out: &mut W, lines: u64, keys: u32) -> std::io::Result<()> {
    let mut rng = SplitMix64(42);
    let t0: u64 = 1_700_000_000_000;
    // Requests are generated in start order and written in end order through a small buffer.
    let mut pending: std::collections::BinaryHeap<std::cmp::Reverse<(u64, String)>> =
        std::collections::BinaryHeap::new();
    for i in 0..lines {
        let start = t0 + i / 2;
        let key = (rng.next_u64() % u64::from(keys.max(1))) as u32;
        let duration = 1 + rng.next_u64() % 200;
        let phase = ((start - t0) / 1000 + u64::from(key) * 13) % 200;
        let failing = phase < 20 && rng.next_u64().is_multiple_of(2);
        let (status, flags, host) = if failing && rng.next_u64().is_multiple_of(4) {
            (503, "UF", "\"-\"")
        } else if failing {
            (503, "-", "\"10.0.0.1:8080\"")
        } else {
            (200, "-", "\"10.0.0.1:8080\"")
        };
        let attempts = if failing { 1 + rng.next_u64() % 3 } else { 1 };
        let line = format!(
            "{{\"start_time\":\"{start}\",\"duration_ms\":{duration},\"cluster\":\"svc-{key}\",\"route\":\"route-{key}\",\"authority\":\"svc-{key}.example:8080\",\"status\":{status},\"grpc_status\":null,\"response_flags\":\"{flags}\",\"attempts\":{attempts},\"upstream_host\":{host}}}\n"
        );
        pending.push(std::cmp::Reverse((start + duration, line)));
        while let Some(std::cmp::Reverse((end, _))) = pending.peek() {
            if *end > start {
                break;
            }
            if let Some(std::cmp::Reverse((_, l))) = pending.pop() {
                out.write_all(l.as_bytes())?;
            }
        }
    }
    while let Some(std::cmp::Reverse((_, l))) = pending.pop() {
        out.write_all(l.as_bytes())?;
    }
    Ok(())
}
