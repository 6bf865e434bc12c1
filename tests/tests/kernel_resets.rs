//! SPEC "reset_signals" and "Sidecar", end to end: the real Envoy (`--concurrency 2`), the real
//! filter or dynamic module (each test runs once per shell) and the real `meshbreaker-sidecar`
//! counting TCP resets in the kernel.
//!
//! Why these tests exist: neither shell can see the TCP layer, so the only proof that a key trips
//! on kernel resets (and that a dying sidecar changes nothing for traffic) is the whole chain —
//! kernel tracepoint → sidecar counters → one poller (a wasm VM, or the module's tick on Envoy's
//! main thread) polling through the `meshbreaker_sidecar` cluster → per-host attribution in the
//! shared window → trip, rejection, metrics and logs.
//!
//! The sidecar binary: `MESHBREAKER_SIDECAR` when set, else the test builds it through the
//! harness (`meshbreaker_harness::cargo`: same cargo, same target directory as the test run, so
//! it is usually fresh already; the path from cargo's JSON).
//!
//! The sidecar needs root (BPF); the tests fail loudly without it or when the kernel refuses the
//! program. Only `MESHBREAKER_SKIP_BPF_TESTS=1` skips them, and says so on stderr.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_harness::sidecar::{ensure_tracefs, euid, skip_bpf_tests, SidecarOpts};
use meshbreaker_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

// ------------------------------------------------------------------------------------ sidecar

/// Fails the test unless we run as root, and mounts tracefs when it is missing (a fresh VM or CI
/// runner often has neither it nor debugfs mounted).
fn require_root_and_tracefs() {
    assert_eq!(
        euid(),
        Some(0),
        "the kernel reset tests run the eBPF sidecar and need root \
         (set MESHBREAKER_SKIP_BPF_TESTS=1 to skip them explicitly)"
    );
    ensure_tracefs();
}

/// The sidecar executable (see the module doc for why it is found this way). Built once per run.
fn sidecar_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        meshbreaker_harness::sidecar::binary(false)
            .unwrap_or_else(|e| panic!("{e}; set MESHBREAKER_SIDECAR to a built binary"))
    })
    .clone()
}

/// A loopback address nothing listens on right now (the sidecar must come back on the same one).
fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// A running `meshbreaker-sidecar` (the harness's), killed on drop.
struct Sidecar {
    running: meshbreaker_harness::sidecar::Sidecar,
    addr: SocketAddr,
}

impl Sidecar {
    /// Starts the sidecar on `addr` and waits (30 s deadline) until `/healthz` answers 200.
    async fn start(addr: SocketAddr) -> Sidecar {
        require_root_and_tracefs();
        let bin = sidecar_binary();
        let opts = SidecarOpts {
            echo: true,
            ..Default::default()
        };
        let running = tokio::task::spawn_blocking(move || {
            meshbreaker_harness::sidecar::Sidecar::start(&bin, addr, &opts)
        })
        .await
        .unwrap_or_else(|e| panic!("sidecar start: {e}"))
        .unwrap_or_else(|e| panic!("{e}"));
        Sidecar { running, addr }
    }

    /// SIGKILL: no goodbye, the way a crashed or OOM-killed sidecar disappears.
    fn kill(&mut self) {
        self.running.kill();
    }

    /// `GET /v1/resets`, parsed.
    async fn resets(&self) -> Value {
        let r = HttpClient::http1(self.addr.port())
            .request("GET", "/v1/resets", &[], "")
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    /// resets + refused + timeouts the sidecar counted towards `peer`.
    async fn events_towards(&self, peer: SocketAddr) -> u64 {
        let doc = self.resets().await;
        doc["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["addr"] == peer.ip().to_string().as_str() && p["port"] == u64::from(peer.port())
            })
            .map(|p| {
                ["resets", "refused", "timeouts"]
                    .iter()
                    .map(|k| p[*k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum()
    }
}

// ----------------------------------------------------------------------------- reset upstream

/// An upstream that reads each request's headers and then aborts the connection with
/// `SO_LINGER 0`, so the kernel sends an RST that Envoy's connected socket receives (a kernel
/// `resets` event). The harness upstream's reset mode is not used: hyper closes with a FIN.
struct ResetUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResetUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResetUpstream {
    async fn start() -> ResetUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("reset upstream bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("reset upstream addr: {e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                    let _ = conn.set_zero_linger();
                    drop(conn);
                });
            }
        });
        ResetUpstream {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

// ------------------------------------------------------------------------------------- envoy

/// A plugin configuration under which only the kernel signal can trip: the HTTP error-rate trip
/// needs 100000 samples, the latency trip is off and upstream resets are not HTTP failures.
fn kernel_only_config(max_resets_per_second: f64) -> Value {
    json!({
        "key_by": "cluster",
        "mode": "enforce",
        "breaker": {
            "window": "2s",
            "buckets": 4,
            "min_requests": 100000,
            "error_rate_threshold": 1,
            "latency_p95_threshold": null,
            "sleep_window": "30s",
            "max_sleep_window": "5m",
            "failure": { "upstream_resets": false }
        },
        "reset_signals": {
            "cluster": "meshbreaker_sidecar",
            "path": "/v1/resets",
            "poll_interval": "200ms",
            "max_resets_per_second": max_resets_per_second
        }
    })
}

/// Envoy with meshbreaker as `shell`, cluster `route` at `upstream`, and `meshbreaker_sidecar` at
/// `sidecar`.
async fn start_envoy(
    shell: Shell,
    plugin: &Value,
    route: &str,
    upstream: SocketAddr,
    sidecar: SocketAddr,
) -> Envoy {
    let mut b = Bootstrap::new()
        .with_shell(shell, plugin.to_string())
        .cluster(route, RouteKind::Http, upstream);
    b.sidecar = sidecar;
    Envoy::start(b.to_yaml()).await
}

/// A raw Envoy stat, 0 when Envoy has not created it yet.
async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).await.unwrap_or(0)
}

/// The SPEC metric `name` as `shell` serves it.
async fn metric(shell: Shell, envoy: &Envoy, name: &str, key: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("key", key)];
    labels.extend_from_slice(extra);
    envoy.metric_value(&shell.metric_name(name), &labels).await
}

/// Waits until the filter has polled the sidecar successfully at least `n` more times than `from`.
async fn wait_for_polls(envoy: &Envoy, from: u64, n: u64, what: &str) -> u64 {
    eventually(Duration::from_secs(15), what, || async {
        let ok = stat(envoy, "cluster.meshbreaker_sidecar.upstream_rq_200").await;
        (ok >= from + n).then_some(ok)
    })
    .await
}

fn count_lines(envoy: &Envoy, needle: &str) -> usize {
    envoy.log_lines_with(&[needle]).len()
}

// ------------------------------------------------------------------------------------- tests

per_shell! {
fn upstream_resets_seen_by_the_kernel_trip_the_key_with_reason_kernel_resets(shell) {
    let test = &format!(
        "upstream_resets_seen_by_the_kernel_trip_the_key_with_reason_kernel_resets::{}",
        shell.name()
    );
    if skip_bpf_tests(test) {
        return;
    }
    run(async {
        let started = Instant::now();
        let key = "kr_trip";
        let sidecar = Sidecar::start(free_loopback_addr()).await;
        let up = ResetUpstream::start().await;
        // Window 2 s, more than 2 events/s: about 5 resets inside the window trip the key.
        let envoy =
            start_envoy(shell, &kernel_only_config(2.0), key, up.addr, sidecar.addr).await;
        wait_for_polls(&envoy, 0, 1, "a first successful poll of the sidecar").await;

        let client = envoy.http1();
        let end = Instant::now() + Duration::from_secs(20);
        let mut reached = 0usize;
        let rejection = loop {
            // POST: the default retry policies do not retry it on a reset, one RST per request.
            let r = client.request("POST", "/", &[("x-route", key)], "").await;
            if is_rejection(&r) {
                break r;
            }
            reached += 1;
            assert_eq!(
                r.status, 503,
                "request {reached} reached the aborting upstream and must fail with Envoy's 503: {r:?}"
            );
            assert!(
                Instant::now() < end,
                "no kernel_resets trip within 20 s after {reached} reset requests; sidecar saw {} \
                 events towards {}; kernel_resets_total={}; log tail:\n{}",
                sidecar.events_towards(up.addr).await,
                up.addr,
                metric(shell, &envoy, "meshbreaker_kernel_resets_total", key, &[]).await,
                envoy.log_tail(30)
            );
            // Pacing only (the exit condition is the rejection above, under a deadline).
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let tripped_after = started.elapsed();

        // The client sees the SPEC rejection with reason kernel_resets.
        assert_spec_rejection(&rejection, key, "kernel_resets");
        let accepted = up.accepted();
        for _ in 0..5 {
            let r = client.request("GET", "/", &[("x-route", key)], "").await;
            assert_spec_rejection(&r, key, "kernel_resets");
        }
        assert_eq!(
            up.accepted(),
            accepted,
            "rejected requests never reach the upstream"
        );

        // The operator sees the open state, one transition and the attributed kernel events.
        eventually(Duration::from_secs(5), "state gauge = 1 (open)", || async {
            (metric(shell, &envoy, "meshbreaker_state", key, &[]).await == 1.0).then_some(())
        })
        .await;
        // Counters reach Envoy on the filter's tick.
        eventually(
            Duration::from_secs(10),
            "one transition to open",
            || async {
                (metric(
                    shell,
                    &envoy,
                    "meshbreaker_transitions_total",
                    key,
                    &[("to", "open")],
                )
                .await
                    == 1.0)
                    .then_some(())
            },
        )
        .await;
        let attributed = metric(shell, &envoy, "meshbreaker_kernel_resets_total", key, &[]).await;
        let seen_by_kernel = sidecar.events_towards(up.addr).await;
        eprintln!(
            "{test}: tripped after {reached} reset requests in {tripped_after:?}; upstream \
             accepted {accepted} connections; sidecar counted {seen_by_kernel} events; \
             meshbreaker_kernel_resets_total{{key={key}}}={attributed}"
        );
        assert!(
            attributed > 0.0,
            "kernel_resets_total must count attributed events"
        );
        assert!(
            attributed <= seen_by_kernel as f64,
            "more events attributed ({attributed}) than the sidecar counted ({seen_by_kernel})"
        );
        assert!(
            seen_by_kernel <= accepted as u64,
            "the sidecar counted {seen_by_kernel} events for {accepted} aborted connections"
        );
        // Envoy writes its log file every 50 ms.
        envoy
            .wait_for_log("reason=kernel_resets", Duration::from_secs(10))
            .await;
        let lines = envoy.log_lines_with(&["transition", key, "to=open", "reason=kernel_resets"]);
        assert_eq!(lines.len(), 1, "one transition log line: {lines:?}");
        assert_eq!(
            count_lines(&envoy, "reset sidecar unavailable"),
            0,
            "{}",
            envoy.log_tail(30)
        );
        eprintln!("{test}: total {:?}", started.elapsed());
    })
}

fn sidecar_killed_under_load_changes_nothing_for_traffic_and_its_restart_trips_nothing(shell) {
    let test = &format!(
        "sidecar_killed_under_load_changes_nothing_for_traffic_and_its_restart_trips_nothing::{}",
        shell.name()
    );
    if skip_bpf_tests(test) {
        return;
    }
    run(async {
        let started = Instant::now();
        let key = "kr_healthy";
        let addr = free_loopback_addr();
        let mut sidecar = Sidecar::start(addr).await;
        let first_started_at = sidecar.resets().await["started_at_ms"].as_u64();
        let up = HttpUpstream::start().await;
        // A low threshold, so that counters taken as new events after the restart would trip.
        let envoy = start_envoy(shell, &kernel_only_config(0.5), key, up.addr, addr).await;
        let polls = wait_for_polls(&envoy, 0, 2, "two successful polls of the sidecar").await;

        // Load: two clients sending requests back to back until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<Mutex<Vec<Result<u16, String>>>> = Arc::default();
        let mut load = Vec::new();
        for _ in 0..2 {
            let (client, stop, outcomes) = (envoy.http1(), stop.clone(), outcomes.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let r = client
                        .try_request("GET", "/", &[("x-route", key)], "")
                        .await;
                    let o = r.map(|r| if is_rejection(&r) { 999 } else { r.status });
                    outcomes.lock().unwrap().push(o);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        let sent = |n: usize| {
            let outcomes = outcomes.clone();
            move || {
                let outcomes = outcomes.clone();
                async move { outcomes.lock().unwrap().len() >= n }
            }
        };
        wait_until(Duration::from_secs(10), "20 requests under load", sent(20)).await;
        let resets_before = metric(shell, &envoy, "meshbreaker_kernel_resets_total", key, &[]).await;

        assert_eq!(
            count_lines(&envoy, "reset sidecar unavailable"),
            0,
            "the sidecar is up and answering, yet the filter calls it unavailable; sidecar log \
             lines:\n{}",
            envoy.log_lines_with(&["sidecar"]).join("\n")
        );

        // Kill the sidecar: exactly one "unavailable" line for the whole episode, however many
        // polls fail during it.
        let killed_at = Instant::now();
        sidecar.kill();
        envoy
            .wait_for_log("reset sidecar unavailable", Duration::from_secs(10))
            .await;
        let noticed = killed_at.elapsed();
        let fails_at_kill = stat(
            &envoy,
            "cluster.meshbreaker_sidecar.upstream_cx_connect_fail",
        )
        .await;
        eventually(
            Duration::from_secs(10),
            "5 more failed polls while the sidecar is down",
            || async {
                (stat(
                    &envoy,
                    "cluster.meshbreaker_sidecar.upstream_cx_connect_fail",
                )
                .await
                    >= fails_at_kill + 5)
                    .then_some(())
            },
        )
        .await;
        let during = outcomes.lock().unwrap().len();
        assert_eq!(
            count_lines(&envoy, "reset sidecar unavailable"),
            1,
            "one log line per episode; log tail:\n{}",
            envoy.log_tail(30)
        );
        assert_eq!(count_lines(&envoy, "reset sidecar is back"), 0);

        // Restart on the same address: new started_at_ms, fresh counters.
        drop(sidecar);
        let sidecar = Sidecar::start(addr).await;
        let second_started_at = sidecar.resets().await["started_at_ms"].as_u64();
        assert_ne!(
            first_started_at, second_started_at,
            "a restart has a new started_at_ms"
        );
        envoy
            .wait_for_log("reset sidecar is back", Duration::from_secs(10))
            .await;
        let back = envoy.log_lines_with(&["reset sidecar is back"]);
        assert_eq!(back.len(), 1, "{back:?}");
        if let Some(s) = second_started_at {
            assert!(
                back[0].contains(&format!("started_at_ms={s}")),
                "the filter reports the new sidecar's start: {back:?}"
            );
        }
        // Let several polls of the new sidecar be taken in and the key flushed with them.
        let polls_back = stat(&envoy, "cluster.meshbreaker_sidecar.upstream_rq_200").await;
        wait_for_polls(&envoy, polls_back, 5, "5 polls of the restarted sidecar").await;
        let n = outcomes.lock().unwrap().len();
        wait_until(
            Duration::from_secs(10),
            "20 more requests after the restart",
            sent(n + 20),
        )
        .await;

        stop.store(true, Ordering::SeqCst);
        for t in load {
            t.await.unwrap();
        }
        let outcomes = outcomes.lock().unwrap().clone();
        let failed: Vec<_> = outcomes.iter().filter(|o| **o != Ok(200)).collect();
        assert!(
            failed.is_empty(),
            "every request must succeed while the sidecar is down or restarting; {} of {} did \
             not (999 = breaker rejection): {:?}",
            failed.len(),
            outcomes.len(),
            &failed[..failed.len().min(10)]
        );
        assert_eq!(
            up.count(),
            outcomes.len(),
            "every request reached the upstream"
        );
        // `metric_opt`: an absent series is not "closed" nor "no transition".
        let name = |n: &str| shell.metric_name(n);
        assert_eq!(
            envoy
                .metric_opt(&name("meshbreaker_state"), &[("key", key)])
                .await,
            Some(0.0)
        );
        assert_eq!(
            envoy
                .metric_opt(
                    &name("meshbreaker_transitions_total"),
                    &[("key", key), ("to", "open")]
                )
                .await,
            Some(0.0),
            "no false trip; log tail:\n{}",
            envoy.log_tail(30)
        );
        assert_eq!(
            metric(shell, &envoy, "meshbreaker_kernel_resets_total", key, &[]).await,
            resets_before,
            "the restart must not make the kernel_resets counter jump"
        );
        assert_eq!(count_lines(&envoy, "reset sidecar unavailable"), 1);
        assert_eq!(count_lines(&envoy, "reset sidecar is back"), 1);
        eprintln!(
            "{test}: {} requests, all 200 ({during} by the end of the outage); outage noticed \
             after {noticed:?}; {polls} polls before the kill; total {:?}",
            outcomes.len(),
            started.elapsed()
        );
    })
}
}
