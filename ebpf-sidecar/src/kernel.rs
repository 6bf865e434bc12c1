//! Loads the eBPF program, attaches it to the tracepoints and reads its maps.
//! Dropping [`Kernel`] detaches everything (aya owns the links).

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aya::maps::{Array, HashMap, MapData};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};

use crate::abi::{PeerCounts, PeerKey, Stats, MAP_PEERS, MAP_STATS, PROGRAM, TRACEPOINTS};
use crate::report::{PeerRow, Snapshot};

pub struct Kernel {
    // Kept alive for the attached programs; dropped last.
    _ebpf: Ebpf,
    peers: HashMap<MapData, PeerKey, PeerCounts>,
    stats: Array<MapData, Stats>,
    max_peers: u32,
}

/// The error and its sources on one line; a verifier log, if any, follows on
/// the next lines.
fn describe(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Kernel {
    /// Loads and attaches; returns the time that took.
    pub fn load(max_peers: u32) -> Result<(Kernel, Duration), String> {
        let started = Instant::now();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_PEERS, max_peers)
            .load(PROGRAM)
            .map_err(|e| format!("cannot load the eBPF object: {}", describe(&e)))?;
        for (program, category, name) in TRACEPOINTS {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} missing from the eBPF object"))?
                .try_into()
                .map_err(|e| format!("program {program}: {}", describe(&e)))?;
            tp.load()
                .map_err(|e| format!("the kernel refused program {program}: {}", describe(&e)))?;
            tp.attach(category, name).map_err(|e| {
                format!(
                    "cannot attach to tracepoint {category}:{name}: {}",
                    describe(&e)
                )
            })?;
        }
        let peers = ebpf
            .take_map(MAP_PEERS)
            .ok_or_else(|| format!("map {MAP_PEERS} missing"))
            .and_then(|m| {
                HashMap::try_from(m).map_err(|e| format!("map {MAP_PEERS}: {}", describe(&e)))
            })?;
        let stats = ebpf
            .take_map(MAP_STATS)
            .ok_or_else(|| format!("map {MAP_STATS} missing"))
            .and_then(|m| {
                Array::try_from(m).map_err(|e| format!("map {MAP_STATS}: {}", describe(&e)))
            })?;
        Ok((
            Kernel {
                _ebpf: ebpf,
                peers,
                stats,
                max_peers,
            },
            started.elapsed(),
        ))
    }

    /// Reads every peer. The kernel may evict or add peers while we iterate
    /// (an evicted cursor restarts the walk), so rows are deduplicated and the
    /// walk is bounded.
    pub fn snapshot(&self, started_at_ms: u64) -> Snapshot {
        let now_ms = wall_ms();
        let now_ns = monotonic_ns();
        let limit = self.max_peers as usize * 2 + 64;
        let mut rows: BTreeMap<PeerKey, PeerCounts> = BTreeMap::new();
        for entry in self.peers.iter().take(limit) {
            let Ok((key, counts)) = entry else { break };
            rows.insert(key, counts);
        }
        let peers = rows
            .into_iter()
            .filter_map(|(key, c)| {
                let addr = key.ip()?;
                let age_ms = now_ns.saturating_sub(c.last_ns) / 1_000_000;
                Some(PeerRow {
                    addr,
                    port: key.port,
                    resets: c.resets,
                    refused: c.refused,
                    timeouts: c.timeouts,
                    last_ms: now_ms.saturating_sub(age_ms),
                })
            })
            .collect();
        let stats = self.stats.get(&0, 0).unwrap_or_default();
        Snapshot {
            started_at_ms,
            now_ms,
            max_peers: self.max_peers,
            events: stats.events,
            update_failures: stats.update_failures,
            read_failures: stats.read_failures,
            peers,
        }
    }
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
