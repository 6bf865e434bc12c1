//! What a run's raw results say: per system, the requests kept away, errors, trips and flapping.

use policy_core::breaker::State;
use std::collections::HashSet;

use super::model::*;

#[derive(Clone, Debug, Default)]
pub(super) struct Metrics {
    /// Client requests sent while the fault was on.
    pub(super) offered: usize,
    /// Requests that reached (or, port closed, were sent to) the bad host while it failed.
    pub(super) reached: usize,
    /// What would have reached it with no protection and no retries: offered / hosts.
    pub(super) unprotected: f64,
    /// From the fault to the first request kept away from the bad host.
    pub(super) protect_ms: Option<u64>,
    /// Client requests that got no 2xx, local rejections included, sent during the fault and
    /// after it; of them, the local rejections.
    pub(super) failed_fault: usize,
    pub(super) shed_fault: usize,
    pub(super) failed_after: usize,
    pub(super) shed_after: usize,
    /// From the heal until the bad host gets its full share again for good.
    pub(super) recover_ms: Option<u64>,
    /// Retries made for requests sent during the fault (x-envoy-attempt-count − 1).
    pub(super) retries: u64,
    pub(super) p95_fault_ms: f64,
    /// meshbreaker/admission control: first local rejection after the fault, and of the requests
    /// sent from then until the heal, how many still reached the bad host.
    pub(super) after_trip: Option<(u64, usize, usize)>,
    /// Requests per second reaching the bad host, one point per second, x = s since the fault.
    pub(super) timeline: Vec<(f64, f64)>,
    /// meshbreaker: transitions to OPEN and to CLOSED while the fault lasted (the flapping check
    /// counts the closes), and from the heal to the first close.
    pub(super) opens_fault: usize,
    pub(super) closes_fault: usize,
    pub(super) closed_after_heal_ms: Option<u64>,
}

impl Metrics {
    /// Every client request sent from the fault on that got no 2xx, local rejections included.
    pub(super) fn errors(&self) -> usize {
        self.failed_fault + self.failed_after
    }
}

pub(super) fn analyse(run: &ScenarioRun, d: &SysData) -> Metrics {
    let n = run.scenario.hosts as f64;
    let (tf, th, te) = (run.t_fault, run.t_heal, run.t_end);
    let in_fault = |t: u64| t >= tf && t < th;
    let mut m = Metrics::default();
    let during: Vec<&Req> = d.client.iter().filter(|r| in_fault(r.t)).collect();
    m.offered = during.len();
    m.unprotected = m.offered as f64 / n;
    m.reached = d.bad.iter().filter(|h| in_fault(h.t)).count();
    for r in &d.client {
        let failed = r.class != class::OK;
        let shed = class::local(r.class);
        if in_fault(r.t) {
            m.failed_fault += failed as usize;
            m.shed_fault += shed as usize;
            m.retries += r.att.saturating_sub(1);
        } else if r.t >= th {
            m.failed_after += failed as usize;
            m.shed_after += shed as usize;
        }
    }
    let mut lat: Vec<u64> = during.iter().map(|r| r.lat_us).collect();
    lat.sort_unstable();
    if !lat.is_empty() {
        let rank = ((lat.len() as f64) * 0.95).ceil() as usize;
        m.p95_fault_ms = lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0;
    }
    // Kept away: with one host, the first request the proxy answered itself; with several, the
    // first 250 ms in which the bad host got less than half its share.
    let first_local = d
        .client
        .iter()
        .filter(|r| in_fault(r.t) && class::local(r.class))
        .map(|r| r.t)
        .min();
    if run.scenario.hosts == 1 {
        m.protect_ms = first_local.map(|t| t - tf);
    } else {
        // 250 ms bins, two in a row: the bad host got less than half of what each healthy
        // host got. Judged against the healthy hosts behind the same Envoy, so that a stall of
        // the proxy or the client on this shared machine (which hits every host) is not taken
        // for an ejection.
        let short = |b: u64| {
            let got = count_in(&d.bad, b, 250) as f64;
            let each_healthy = reference(run, d, b, 250);
            each_healthy > 0.0 && got < 0.5 * each_healthy
        };
        let mut b = tf;
        while b + 500 <= th {
            if short(b) && short(b + 250) {
                m.protect_ms = Some(b + 250 - tf);
                break;
            }
            b += 250;
        }
        // A cluster-wide shed keeps requests away from the bad host too (and from the healthy
        // ones, which the shed column counts).
        if let Some(t) = first_local {
            m.protect_ms = Some(m.protect_ms.map_or(t - tf, |p| p.min(t - tf)));
        }
    }
    if let Some(trip) = first_local {
        let sent: HashSet<u64> = d
            .client
            .iter()
            .filter(|r| r.t >= trip && r.t < th)
            .map(|r| r.id)
            .collect();
        let reached: HashSet<u64> = d
            .bad
            .iter()
            .filter(|h| sent.contains(&h.id))
            .map(|h| h.id)
            .collect();
        m.after_trip = Some((trip - tf, sent.len(), reached.len()));
    }
    // Recovery: the end of the last second after the heal in which the healed host got less
    // than half its share and, over that second and the next, less than three quarters (a
    // stall of a few hundred ms, which the next second makes up for, is not shedding); the
    // share is what the busiest system's bad host got behind the same Envoy, or each healthy
    // host of this system if more.
    let mut last_short = None;
    let mut b = th;
    let mut k = 0u64;
    while b + 1000 <= te {
        let got = |w: u64| {
            d.bad_received
                .iter()
                .filter(|&&t| t >= b && t < b + w)
                .count() as f64
        };
        // With several hosts a cluster-wide shed starves the healthy ones too: compare with the
        // busiest system's bad host as well.
        let share = |w: u64| reference(run, d, b, w).max(busiest(run, b, w).unwrap_or(0.0));
        let w = if b + 2000 <= te { 2000 } else { 1000 };
        if got(1000) < 0.5 * share(1000) && got(w) < 0.75 * share(w) {
            last_short = Some(k);
        }
        b += 1000;
        k += 1;
    }
    m.recover_ms = match last_short {
        None => Some(0),
        Some(j) if j + 1 >= k => None,
        Some(j) => Some((j + 1) * 1000),
    };
    let mut b = run.t_start;
    while b + 1000 <= te {
        let c = d.bad.iter().filter(|h| h.t >= b && h.t < b + 1000).count();
        m.timeline
            .push(((b as f64 + 500.0 - tf as f64) / 1000.0, c as f64));
        b += 1000;
    }
    let during = d.changes.iter().filter(|c| in_fault(c.t));
    for c in during {
        m.opens_fault += (c.to == State::Open) as usize;
        m.closes_fault += (c.to == State::Closed) as usize;
    }
    m.closed_after_heal_ms = d
        .changes
        .iter()
        .find(|c| c.t >= th && c.to == State::Closed)
        .map(|c| c.t - th);
    m
}

/// What a system did in the long-lived-stream scenario, where nothing fails.
#[derive(Clone, Debug, Default)]
pub(super) struct StreamMetrics {
    /// Long-lived requests sent: websockets and slow uploads, and of each how many completed as
    /// they should (a websocket held for its time, an upload answered 2xx).
    pub(super) websockets: usize,
    pub(super) websockets_ok: usize,
    pub(super) uploads: usize,
    pub(super) uploads_ok: usize,
    /// Over the whole run: requests of any kind rejected locally, and any that got no 2xx.
    pub(super) shed: usize,
    pub(super) errors: usize,
    /// meshbreaker: transitions to OPEN over the run (with their reasons).
    pub(super) opens: Vec<String>,
    /// Client P95 of the plain GETs while the streams ran.
    pub(super) get_p95_ms: f64,
}

impl StreamMetrics {
    /// Whether the system took any protective action: a trip, an ejection or a rejection.
    pub(super) fn acted(&self, d: &SysData) -> bool {
        let st = |k: &str| d.stats.get(k).copied().unwrap_or(0.0);
        !self.opens.is_empty()
            || self.shed > 0
            || st("mb_opens") > 0.0
            || st("ejections") > 0.0
            || st("ac_rejected") > 0.0
    }
}

pub(super) fn analyse_streams(run: &ScenarioRun, d: &SysData) -> StreamMetrics {
    let mut m = StreamMetrics::default();
    let mut lat = Vec::new();
    for r in &d.client {
        let ok = r.class == class::OK;
        match r.kind {
            kind::WEBSOCKET => {
                m.websockets += 1;
                m.websockets_ok += ok as usize;
            }
            kind::SLOW_UPLOAD => {
                m.uploads += 1;
                m.uploads_ok += ok as usize;
            }
            kind::GET if r.t >= run.t_fault && r.t < run.t_heal => lat.push(r.lat_us),
            _ => {}
        }
        m.shed += class::local(r.class) as usize;
        m.errors += !ok as usize;
    }
    lat.sort_unstable();
    if !lat.is_empty() {
        let rank = ((lat.len() as f64) * 0.95).ceil() as usize;
        m.get_p95_ms = lat[rank.clamp(1, lat.len()) - 1] as f64 / 1000.0;
    }
    m.opens = d
        .changes
        .iter()
        .filter(|c| c.to == State::Open)
        .map(|c| c.reason.clone())
        .collect();
    m
}

/// What the busiest system's bad host received in `[from, from + len)`: after the heal, what a
/// host gets that no mechanism keeps traffic from.
pub(super) fn busiest(run: &ScenarioRun, from: u64, len: u64) -> Option<f64> {
    run.data
        .iter()
        .map(|(_, o)| {
            o.bad_received
                .iter()
                .filter(|&&t| t >= from && t < from + len)
                .count()
        })
        .max()
        .map(|n| n as f64)
}

pub(super) fn count_in(hits: &[BadHit], from: u64, len: u64) -> usize {
    hits.iter()
        .filter(|h| h.t >= from && h.t < from + len)
        .count()
}

/// What the bad host would have got in `[from, from + len)` had it been healthy: what each
/// healthy host got, or, with one host, what the busiest system's host got.
pub(super) fn reference(run: &ScenarioRun, d: &SysData, from: u64, len: u64) -> f64 {
    let healthy = run.scenario.hosts.saturating_sub(1);
    if healthy > 0 {
        let got = d
            .healthy
            .iter()
            .filter(|&&t| t >= from && t < from + len)
            .count();
        got as f64 / healthy as f64
    } else {
        // One host: what the busiest system's host got behind the same Envoy (a stall of the
        // proxy or the upstream process hits every system at once), or what the client sent
        // when there is nothing to compare with.
        match busiest(run, from, len) {
            Some(b) => b,
            None => d
                .client
                .iter()
                .filter(|r| r.t >= from && r.t < from + len)
                .count() as f64,
        }
    }
}

pub(super) fn print_summary(run: &ScenarioRun) {
    if !run.scenario.fault.fails() {
        eprintln!(
            "  {:<22} {:>6} {:>10} {:>10} {:>6} {:>7} {:>8}",
            "system", "trips", "websockets", "uploads", "shed", "errors", "GET P95"
        );
        for (sys, d) in &run.data {
            let m = analyse_streams(run, d);
            eprintln!(
                "  {:<22} {:>6} {:>4}/{:<5} {:>4}/{:<5} {:>6} {:>7} {:>5.0} ms",
                sys.name(),
                m.opens.len(),
                m.websockets_ok,
                m.websockets,
                m.uploads_ok,
                m.uploads,
                m.shed,
                m.errors,
                m.get_p95_ms
            );
        }
        return;
    }
    eprintln!(
        "  {:<22} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7}",
        "system", "reached", "protect", "errors", "shed", "recover", "closes"
    );
    for (sys, d) in &run.data {
        let m = analyse(run, d);
        eprintln!(
            "  {:<22} {:>8} {:>9} {:>8} {:>8} {:>9} {:>7}",
            sys.name(),
            m.reached,
            ms(m.protect_ms),
            m.errors(),
            m.shed_fault + m.shed_after,
            ms(m.recover_ms),
            if sys.is_meshbreaker() {
                m.closes_fault.to_string()
            } else {
                "-".into()
            }
        );
    }
}

pub(super) fn ms(v: Option<u64>) -> String {
    match v {
        Some(ms) if ms < 10_000 => format!("{ms} ms"),
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "never".into(),
    }
}
