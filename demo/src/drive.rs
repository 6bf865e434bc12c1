//! The demo's load driver: steady traffic through Envoy while the upstream's fault is switched
//! phase by phase, a live line per second from Envoy's `/stats/prometheus`, and at the end a
//! summary per phase (`summary.json`, a table) and `timeline.svg`.
//!
//! Why the driver switches the fault itself: the phases and the measurements share one clock, so
//! "time to open" is measured from the moment the upstream really started failing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::upstream::Mode;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// What `drive` needs; see `meshbreaker-demo drive --help`.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: String,
    pub admin: String,
    pub upstream: String,
    pub phases: Vec<Phase>,
    pub rate: u32,
    pub workers: u32,
    pub out: PathBuf,
    /// The breaker key the driver's traffic lands on (key_by cluster: the cluster name).
    pub key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub fault: &'static str,
    pub secs: f64,
}

impl Phase {
    pub fn failing(&self) -> bool {
        self.fault != Mode::Healthy.name()
    }
}

/// `healthy,errors,recovery,...`: `recovery` (and `healthy`) run the healthy upstream;
/// `errors`, `slow`, `resets` its faults. Recovery phases get `recovery_extra` seconds more, so a
/// circuit that re-opened up to `max_sleep_window` × 1.2 before the fault ended can still close.
pub fn parse_phases(list: &str, secs: f64, recovery_extra: f64) -> Result<Vec<Phase>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let (fault, secs) = match name {
                "healthy" => (Mode::Healthy, secs),
                "recovery" => (Mode::Healthy, secs + recovery_extra),
                other => match Mode::parse(other) {
                    Some(m) => (m, secs),
                    None => {
                        return Err(format!(
                            "unknown phase {other:?} (healthy, errors, slow, resets, recovery)"
                        ))
                    }
                },
            };
            Ok(Phase {
                name: name.to_owned(),
                fault: fault.name(),
                secs,
            })
        })
        .collect()
}

/// One scrape of Envoy's stats (every 250 ms), cumulative counters as Envoy reports them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t: f64,
    pub phase: usize,
    /// 0 closed, 1 open, 2 half-open (`meshbreaker_state`).
    pub state: u8,
    pub error_rate: f64,
    pub p95_ms: f64,
    pub allowed: u64,
    pub rejected: u64,
    pub probes: u64,
    pub retries: u64,
    pub budget_denied: u64,
    pub kernel_resets: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub fault: String,
    pub start_s: f64,
    pub end_s: f64,
    pub sent: u64,
    pub ok: u64,
    /// Failed responses that came from the upstream (or Envoy's connection to it).
    pub failed: u64,
    /// Answered by the breaker itself: requests the failing upstream was spared.
    pub rejected: u64,
    /// Requests the upstream received during the phase (its own count, retries included).
    pub reached_upstream: u64,
    pub time_to_open_s: Option<f64>,
    pub open_reason: Option<String>,
    pub time_to_close_s: Option<f64>,
    pub state_at_end: u8,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub key: String,
    pub phases: Vec<PhaseReport>,
    pub samples: Vec<Sample>,
}

#[derive(Default)]
struct PhaseCounters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// ms since the run started + 1 (0 = none yet).
    first_reject_ms: AtomicU64,
    last_reject_ms: AtomicU64,
    reason: Mutex<Option<String>>,
}

struct Shared {
    started: Instant,
    phase: AtomicUsize,
    stop: AtomicBool,
    counters: Vec<PhaseCounters>,
}

pub async fn drive(opts: Options) -> Result<Report, String> {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.workers as usize * 2)
        .build_http();
    wait_ready(&client, &opts).await?;

    let shared = Arc::new(Shared {
        started: Instant::now(),
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        counters: opts
            .phases
            .iter()
            .map(|_| PhaseCounters::default())
            .collect(),
    });
    set_fault(
        &client,
        &opts.upstream,
        opts.phases.first().map_or("healthy", |p| p.fault),
    )
    .await?;
    let mut reached_before = upstream_stats(&client, &opts.upstream).await?;

    let mut workers = Vec::new();
    let per_worker =
        Duration::from_secs_f64(f64::from(opts.workers.max(1)) / f64::from(opts.rate.max(1)));
    for w in 0..opts.workers.max(1) {
        let (client, shared, target) = (client.clone(), shared.clone(), opts.target.clone());
        workers.push(tokio::spawn(async move {
            // Spread the workers' first requests over one interval.
            tokio::time::sleep(per_worker.mul_f64(f64::from(w) / f64::from(opts.workers.max(1))))
                .await;
            let mut next = tokio::time::Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                one_request(&client, &target, &shared).await;
                next += per_worker;
                let now = tokio::time::Instant::now();
                if next < now {
                    next = now; // behind (slow upstream): no burst to catch up
                }
                tokio::time::sleep_until(next).await;
            }
        }));
    }

    println!(
        "{:>6}  {:<9} {:<9} {:>6} {:>7} {:>8} {:>8} {:>6} {:>7} {:>7}",
        "t",
        "phase",
        "state",
        "errors",
        "p95",
        "allowed",
        "rejected",
        "probes",
        "retries",
        "denied"
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut reports = Vec::new();

    for (i, phase) in opts.phases.iter().enumerate() {
        if i > 0 {
            set_fault(&client, &opts.upstream, phase.fault).await?;
        }
        shared.phase.store(i, Ordering::SeqCst);
        let phase_start = if i == 0 {
            0.0
        } else {
            shared.started.elapsed().as_secs_f64()
        };
        let end = phase_start + phase.secs;
        let mut tick = 0u32;
        loop {
            let t = shared.started.elapsed().as_secs_f64();
            if t >= end {
                break;
            }
            if let Ok(s) = scrape(&client, &opts, t, i).await {
                if tick.is_multiple_of(4) {
                    live_line(&s, samples.iter().rev().nth(3), phase);
                }
                samples.push(s);
            }
            tick += 1;
            let next = end.min(t + 0.25) - shared.started.elapsed().as_secs_f64();
            if next > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(next)).await;
            }
        }
        let reached_now = upstream_stats(&client, &opts.upstream).await?;
        let reached: u64 = reached_now.values().sum::<u64>() - reached_before.values().sum::<u64>();
        reached_before = reached_now;
        reports.push((phase_start, shared.started.elapsed().as_secs_f64(), reached));
    }
    shared.stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }

    let phases = opts
        .phases
        .iter()
        .enumerate()
        .zip(reports)
        .map(|((i, p), (start, end, reached))| {
            let c = &shared.counters[i];
            let in_phase: Vec<&Sample> = samples.iter().filter(|s| s.phase == i).collect();
            let first_open = in_phase.iter().find(|s| s.state == 1).map(|s| s.t - start);
            let first_reject = match c.first_reject_ms.load(Ordering::SeqCst) {
                0 => None,
                ms => Some((ms - 1) as f64 / 1000.0 - start),
            };
            let time_to_open = if p.failing() {
                match (first_open, first_reject) {
                    (Some(a), Some(b)) => Some(a.min(b).max(0.0)),
                    (a, b) => a.or(b).map(|x| x.max(0.0)),
                }
            } else {
                None
            };
            // Closed for good: after the last sample that was not closed and the last request
            // the breaker rejected (a circuit that closed and re-opened has not recovered yet;
            // the rejections also catch openings shorter than the 250 ms between scrapes).
            let last_reject = match c.last_reject_ms.load(Ordering::SeqCst) {
                0 => None,
                ms => Some((ms - 1) as f64 / 1000.0 - start),
            };
            let time_to_close = if p.name != "recovery" {
                None
            } else {
                let by_state = match in_phase.iter().rposition(|s| s.state != 0) {
                    None => Some(0.0),
                    Some(i) => in_phase.get(i + 1).map(|s| (s.t - start).max(0.0)),
                };
                by_state.map(|t| t.max(last_reject.unwrap_or(0.0)))
            };
            PhaseReport {
                name: p.name.clone(),
                fault: p.fault.to_owned(),
                start_s: start,
                end_s: end,
                sent: c.sent.load(Ordering::SeqCst),
                ok: c.ok.load(Ordering::SeqCst),
                failed: c.failed.load(Ordering::SeqCst),
                rejected: c.rejected.load(Ordering::SeqCst),
                reached_upstream: reached,
                time_to_open_s: time_to_open,
                open_reason: c.reason.lock().ok().and_then(|r| r.clone()),
                time_to_close_s: time_to_close,
                state_at_end: in_phase.last().map_or(0, |s| s.state),
            }
        })
        .collect();
    let report = Report {
        key: opts.key.clone(),
        phases,
        samples,
    };
    set_fault(&client, &opts.upstream, "healthy").await.ok();
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    let summary = opts.out.join("summary.json");
    std::fs::write(&summary, json).map_err(|e| format!("{}: {e}", summary.display()))?;
    println!("\n{}", summary_table(&report));
    println!("wrote {}", summary.display());
    Ok(report)
}

async fn one_request(client: &HttpClient, target: &str, shared: &Shared) {
    let phase = shared.phase.load(Ordering::Relaxed);
    let Some(c) = shared.counters.get(phase) else {
        return;
    };
    c.sent.fetch_add(1, Ordering::Relaxed);
    let req = match hyper::Request::get(target).body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(_) => return,
    };
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let rejected = resp
                .headers()
                .get("x-meshbreaker")
                .is_some_and(|v| v == "open");
            let reason = resp
                .headers()
                .get("x-meshbreaker-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = resp.into_body().collect().await;
            if rejected {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                let ms = shared.started.elapsed().as_millis() as u64 + 1;
                c.last_reject_ms.fetch_max(ms, Ordering::SeqCst);
                if c.first_reject_ms
                    .compare_exchange(0, ms, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    if let Ok(mut r) = c.reason.lock() {
                        *r = reason;
                    }
                }
            } else if (200..300).contains(&status) {
                c.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            c.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    let req = hyper::Request::get(url)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("GET {url}: timed out"))?
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn set_fault(client: &HttpClient, upstream: &str, fault: &str) -> Result<(), String> {
    let url = format!("{}/_demo/mode/{fault}", upstream.trim_end_matches('/'));
    let req = hyper::Request::put(&url)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("PUT {url}: {}", resp.status()))
    }
}

async fn upstream_stats(
    client: &HttpClient,
    upstream: &str,
) -> Result<BTreeMap<String, u64>, String> {
    let (_, body) = get(
        client,
        &format!("{}/_demo/stats", upstream.trim_end_matches('/')),
    )
    .await?;
    serde_json::from_str(&body).map_err(|e| format!("upstream stats {body:?}: {e}"))
}

/// Envoy ready, the upstream answering, and one request through the whole path.
async fn wait_ready(client: &HttpClient, opts: &Options) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let ready = get(
            client,
            &format!("{}/ready", opts.admin.trim_end_matches('/')),
        )
        .await;
        let up = upstream_stats(client, &opts.upstream).await;
        match (ready, up) {
            (Ok((200, _)), Ok(_)) => match get(client, &opts.target).await {
                Ok((200, _)) => return Ok(()),
                Ok((s, b)) => last = format!("{} answered {s}: {b}", opts.target),
                Err(e) => last = e,
            },
            (Ok((200, _)), Err(e)) | (Err(e), _) => last = e,
            (Ok((s, _)), _) => last = format!("Envoy admin /ready: {s}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the stack did not become ready within 60 s: {last}"
    ))
}

async fn scrape(
    client: &HttpClient,
    opts: &Options,
    t: f64,
    phase: usize,
) -> Result<Sample, String> {
    let (_, text) = get(
        client,
        &format!("{}/stats/prometheus", opts.admin.trim_end_matches('/')),
    )
    .await?;
    let key = format!("key=\"{}\"", opts.key);
    let mut s = Sample {
        t,
        phase,
        ..Sample::default()
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        let name = series.split('{').next().unwrap_or("");
        let labels = series.split_once('{').map_or("", |(_, l)| l);
        if name == "envoy_cluster_upstream_rq_retry"
            && labels.contains("envoy_cluster_name=\"backend\"")
        {
            s.retries = v as u64;
            continue;
        }
        if !labels.contains(&key) {
            continue;
        }
        match name {
            "meshbreaker_state" => s.state = v as u8,
            "meshbreaker_error_rate_ppm" => s.error_rate = v / 1e6,
            "meshbreaker_latency_p95_ms" => s.p95_ms = v,
            "meshbreaker_retry_budget_denied_total" => s.budget_denied = v as u64,
            "meshbreaker_kernel_resets_total" => s.kernel_resets = v as u64,
            "meshbreaker_requests_total" => {
                if labels.contains("decision=\"allowed\"") {
                    s.allowed = v as u64;
                } else if labels.contains("decision=\"rejected\"") {
                    s.rejected = v as u64;
                } else if labels.contains("decision=\"probe\"") {
                    s.probes = v as u64;
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        0 => "CLOSED",
        1 => "OPEN",
        2 => "HALF_OPEN",
        _ => "?",
    }
}

/// One line of the live view: phase, state, window error rate and P95, and per-second deltas.
fn live_line(s: &Sample, prev: Option<&Sample>, phase: &Phase) {
    let d = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(now));
    println!(
        "{:>5.1}s  {:<9} {:<9} {:>5.1}% {:>5.0}ms {:>6}/s {:>6}/s {:>6} {:>5}/s {:>7}",
        s.t,
        phase.name,
        state_name(s.state),
        s.error_rate * 100.0,
        s.p95_ms,
        d(s.allowed, prev.map(|p| p.allowed)),
        d(s.rejected, prev.map(|p| p.rejected)),
        s.probes,
        d(s.retries, prev.map(|p| p.retries)),
        s.budget_denied,
    );
}

pub fn summary_table(r: &Report) -> String {
    let secs = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}s"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| phase | fault | secs | sent | ok | failed | rejected (spared) | reached upstream | time to open | reason | time to close | state at end |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in &r.phases {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.fault,
            p.end_s - p.start_s,
            p.sent,
            p.ok,
            p.failed,
            p.rejected,
            p.reached_upstream,
            secs(p.time_to_open_s),
            p.open_reason.as_deref().unwrap_or("-"),
            secs(p.time_to_close_s),
            state_name(p.state_at_end),
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parse_phases_gives_recovery_its_extra_time_and_rejects_unknown_phases() {
        let p = parse_phases("healthy, errors,recovery", 4.0, 5.0).unwrap();
        let got: Vec<(&str, &str, f64)> = p
            .iter()
            .map(|p| (p.name.as_str(), p.fault, p.secs))
            .collect();
        assert_eq!(
            got,
            vec![
                ("healthy", "healthy", 4.0),
                ("errors", "errors", 4.0),
                ("recovery", "healthy", 9.0)
            ]
        );
        assert!(parse_phases("healthy,flaky", 1.0, 0.0).is_err());
    }
}
