//! Hostile input against the real Envoy (`--concurrency 2`) and the real filter or dynamic module
//! (each test runs once per shell; nothing a client or an upstream sends may crash or steer it):
//! clients, upstreams and a sidecar that send what nobody should, and what must still hold.
//!
//! - header bytes that are not UTF-8, numbers out of every range and oversized header blocks, from
//!   the client and from the upstream: no worker VM dies (a dead VM fails closed in the shipped
//!   config and silently disappears in Istio's FAIL_OPEN), no hook of the module panics (it would
//!   fail open), traffic keeps its verdicts;
//! - 100,000 distinct `:authority` values at `max_keys` 1,000: Envoy memory stays bounded and a key
//!   that is OPEN is never forgotten whatever the churn (SPEC: OPEN keys are never evicted), nor
//!   when long requests on other authorities fill every worker's registry; tripped junk authorities
//!   left alone release their slots and gauges, so they cannot pin the table;
//! - a client sending every retry header on a listener that trusts it (`internal_address_config`
//!   covers loopback, so Envoy's router would honour them): the upstream sees one attempt in every
//!   mode;
//! - a sidecar answering garbage, absurd numbers, a body of 32 MiB, or nothing at all: traffic is
//!   untouched, nothing trips, and once it answers properly again its signal trips the key.
//!
//! Raw TCP is used where hyper would refuse to send the bytes (obs-text header values). Each test
//! starts its own Envoy; each stays within about a minute.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// --------------------------------------------------------------------------------- raw HTTP/1.1

/// A response read off a raw connection: status and the header block as bytes.
struct RawResponse {
    status: u16,
    head: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.head))
    }
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<String> {
        String::from_utf8_lossy(&self.head).lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends `request` (raw bytes, should say `connection: close`) and reads the response head.
async fn raw_request(port: u16, request: &[u8]) -> Result<RawResponse, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no response head in {:?}", String::from_utf8_lossy(&buf)))?;
        let head = buf[..end].to_vec();
        let status = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {:?}", String::from_utf8_lossy(&head)))?;
        Ok(RawResponse { status, head })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out after 10s".to_string())?
}

/// `GET /` to cluster `route` with `host` and extra raw header lines.
fn raw_get(route: &str, host: &[u8], extra: &[&[u8]]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(b"GET / HTTP/1.1\r\nhost: ");
    r.extend_from_slice(host);
    r.extend_from_slice(b"\r\nx-route: ");
    r.extend_from_slice(route.as_bytes());
    r.extend_from_slice(b"\r\n");
    for h in extra {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"connection: close\r\n\r\n");
    r
}

// ------------------------------------------------------------------------------ hostile upstream

/// An HTTP/1.1 upstream that answers with the raw response head named by the request's
/// `x-hostile` header (an index into `responses`), then closes.
struct RawUpstream {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(responses: Vec<Vec<u8>>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let responses = Arc::new(responses);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let responses = responses.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&got).to_lowercase();
                    let i: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("x-hostile:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let head = responses.get(i).cloned().unwrap_or_default();
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.write_all(&head).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        RawUpstream { addr, served, task }
    }
}

/// A 200 (or `status`) response with extra raw header lines and an empty body.
fn response(status: &str, extra: &[&[u8]]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n").into_bytes();
    for h in extra {
        r.extend_from_slice(h);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"connection: close\r\n\r\n");
    r
}

// --------------------------------------------------------------------------------- VM health

/// The wasm VM counters in `/stats` (`wasm.envoy.wasm.runtime.v8.*`, `wasm.*` in general).
async fn wasm_stats(envoy: &Envoy) -> Vec<(String, u64)> {
    let (_, body) = envoy.admin_get("/stats").await;
    body.lines()
        .filter(|l| l.starts_with("wasm."))
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Fails if any VM trapped: a panic or trap shows in the log, and a failed VM moves Envoy's
/// `wasm.*` counters (`*.failed`, `*.vm_failed`, restarts) or its active count.
async fn assert_no_vm_died(envoy: &Envoy, before: &[(String, u64)]) {
    let trapped = envoy.log_lines_with(&["wasm"]);
    let trapped: Vec<&String> = trapped
        .iter()
        .filter(|l| {
            l.contains("panicked")
                || l.contains("RuntimeError")
                || l.contains("Function: proxy_on")
                || l.contains("VM failed")
        })
        .collect();
    assert!(
        trapped.is_empty(),
        "a wasm VM trapped; log lines:\n{}",
        trapped
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let after = wasm_stats(envoy).await;
    for (k, v) in &after {
        if k.contains("fail") || k.contains("restart") || k.contains("crash") {
            assert_eq!(*v, 0, "{k} = {v}; all wasm stats: {after:?}");
        }
        if k.ends_with(".active") || k.ends_with(".created") {
            let old = before.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            assert_eq!(
                old,
                Some(*v),
                "{k} moved from {old:?} to {v}: a VM was replaced; all: {after:?}"
            );
        }
    }
}

/// What shows whether a shell's request path failed: the wasm VM counters, or nothing for the
/// module (its hooks catch panics and print them to Envoy's stderr, which [`assert_no_vm_died`]
/// reads).
async fn health(shell: Shell, envoy: &Envoy) -> Vec<(String, u64)> {
    match shell {
        Shell::Wasm => {
            let before = wasm_stats(envoy).await;
            assert!(
                before.iter().any(|(k, _)| k.ends_with(".active")),
                "no wasm VM stats in /stats: {before:?}"
            );
            before
        }
        Shell::Native => Vec::new(),
    }
}

/// [`assert_no_vm_died`] for the wasm filter; for the module, no hook panicked (a caught panic
/// is printed to Envoy's stderr, `stdout.log` in its directory) and Envoy is up.
async fn assert_shell_healthy(shell: Shell, envoy: &Envoy, before: &[(String, u64)]) {
    match shell {
        Shell::Wasm => assert_no_vm_died(envoy, before).await,
        Shell::Native => {
            let out = std::fs::read_to_string(envoy.dir.join("stdout.log")).unwrap_or_default();
            let panics: Vec<&str> = out.lines().filter(|l| l.contains("panicked")).collect();
            assert!(
                panics.is_empty(),
                "a hook of the module panicked:\n{}",
                panics.join("\n")
            );
            assert!(envoy.is_running());
        }
    }
}

/// Requests on fresh connections (so both workers serve some) must each reach the upstream and be
/// counted by the filter under `key`: a dead VM would fail closed (503) or skip the filter.
async fn assert_both_workers_filter(shell: Shell, envoy: &Envoy, route: &str, key: &str) {
    let before = envoy
        .metric_value(
            &shell.metric_name("meshbreaker_requests_total"),
            &[("key", key), ("decision", "allowed")],
        )
        .await;
    for i in 0..16 {
        let r = raw_request(envoy.port, &raw_get(route, b"ok.example", &[]))
            .await
            .unwrap_or_else(|e| panic!("follow-up {i}: {e}"));
        assert_eq!(r.status, 200, "follow-up {i}: {r:?}");
    }
    eventually(
        Duration::from_secs(5),
        "the follow-ups counted by the filter",
        || async {
            let now = envoy
                .metric_value(
                    &shell.metric_name("meshbreaker_requests_total"),
                    &[("key", key), ("decision", "allowed")],
                )
                .await;
            (now - before >= 16.0).then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------- 1. header bytes

per_shell! {
fn hostile_header_bytes_never_kill_a_worker_vm(shell) {
    run(async {
        let big = vec![b'a'; 40 * 1024];
        let mut big_header = b"x-big: ".to_vec();
        big_header.extend_from_slice(&big);
        let mut many: Vec<Vec<u8>> = (0..90)
            .map(|i| format!("x-many-{i}: {}", "v".repeat(200)).into_bytes())
            .collect();
        many.push(b"grpc-status: 14".to_vec());
        let many_refs: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        // What a hostile upstream answers (index = the request's `x-hostile`).
        let answers = vec![
            response("200 OK", &[]),
            response("200 OK", &[b"grpc-status: \xff\xfe"]),
            response("200 OK", &[b"grpc-status: 99999999999999999999999"]),
            response("200 OK", &[b"grpc-status: -1"]),
            response("200 OK", &[b"content-type: application/grpc\xff"]),
            response("200 OK", &[b"x-envoy-attempt-count: 4294967295"]),
            response("200 OK", &[b"x-envoy-attempt-count: \xff"]),
            response(
                "503 Unavailable",
                &[b"x-envoy-attempt-count: 18446744073709551616"],
            ),
            response("200 OK", &many_refs),
            response("200 OK", &[&big_header]),
        ];
        let n_answers = answers.len();
        let hostile = RawUpstream::start(answers).await;
        let normal = HttpUpstream::start().await;
        let mut cfg = fast_config();
        // A policy that reads a client header, so `match.headers` runs on hostile bytes too.
        cfg["retry"] = json!({"policies": [
            {"name": "tenant", "match": {"headers": {"x-tenant": "a"}}, "retry_on": ["5xx"], "max_retries": 1},
            {"name": "grpc", "match": {"grpc": true}, "retry_on": ["reset"], "retry_grpc_on": ["unavailable"], "max_retries": 1},
            {"name": "rest", "match": {}, "retry_on": ["connect-failure"], "max_retries": 1}
        ]});
        let b = Bootstrap::new()
            .with_shell(shell, cfg.to_string())
            .backend(normal.addr)
            .cluster("hostile", RouteKind::Http, hostile.addr)
            .cluster("normal", RouteKind::Http, normal.addr);
        let envoy = Envoy::start(b.to_yaml()).await;
        // Warm both workers before taking the VM counters.
        assert_both_workers_filter(shell, &envoy, "normal", "normal").await;
        let before = health(shell, &envoy).await;

        // From the client: obs-text bytes in every header the filter reads, absurd numbers,
        // large and many headers (under Envoy's 60 KiB limit), then one over it.
        let client_cases: Vec<(&str, Vec<u8>)> = vec![
            ("authority", raw_get("normal", b"h\xffst.example", &[])),
            (
                "content-type",
                raw_get("normal", b"ok", &[b"content-type: application/grpc\xff\xfe"]),
            ),
            (
                "grpc content-type",
                raw_get("normal", b"ok", &[b"content-type: application/grpc+\xc3\x28"]),
            ),
            ("match header", raw_get("normal", b"ok", &[b"x-tenant: \xff"])),
            (
                "retry headers",
                raw_get(
                    "normal",
                    b"ok",
                    &[
                        b"x-envoy-retry-on: \xff\xfe",
                        b"x-envoy-max-retries: 99999999999999999999",
                        b"x-envoy-attempt-count: 4294967295",
                    ],
                ),
            ),
            ("many headers", raw_get("normal", b"ok", &many_refs)),
            ("big header", raw_get("normal", b"ok", &[&big_header])),
            (
                "method",
                b"G\xffT / HTTP/1.1\r\nhost: ok\r\nx-route: normal\r\nconnection: close\r\n\r\n"
                    .to_vec(),
            ),
            (
                "path",
                b"GET /\xff\xfe?\xff HTTP/1.1\r\nhost: ok\r\nx-route: normal\r\nconnection: close\r\n\r\n"
                    .to_vec(),
            ),
        ];
        for (what, req) in &client_cases {
            // Envoy may refuse some of these itself (400); what matters is what happens next.
            let r = raw_request(envoy.port, req).await;
            if let Ok(r) = &r {
                assert!(
                    r.status == 200 || r.status == 400,
                    "client {what}: unexpected {r:?}"
                );
            }
        }
        let mut too_big = b"x-huge: ".to_vec();
        too_big.extend_from_slice(&vec![b'a'; 100 * 1024]);
        let r = raw_request(envoy.port, &raw_get("normal", b"ok", &[&too_big])).await;
        if let Ok(r) = &r {
            assert_eq!(r.status, 431, "over Envoy's header limit: {r:?}");
        }

        // From the upstream: every answer, through the filter's response path, twice per worker.
        for round in 0..4 {
            for i in 0..n_answers {
                let h = format!("x-hostile: {i}");
                let r = raw_request(envoy.port, &raw_get("hostile", b"ok", &[h.as_bytes()]))
                    .await
                    .unwrap_or_else(|e| panic!("upstream answer {i} (round {round}): {e}"));
                // Envoy turns an unparseable upstream response into a 502/503 itself.
                assert!(
                    [200, 502, 503].contains(&r.status),
                    "upstream answer {i}: {r:?}"
                );
                if r.status == 503 {
                    assert_ne!(
                        r.header("x-meshbreaker").as_deref(),
                        Some("open"),
                        "answer {i}: hostile numbers tripped the breaker: {r:?}"
                    );
                }
            }
        }
        assert!(hostile.served.load(Ordering::SeqCst) >= 4 * n_answers - 4);

        assert_shell_healthy(shell, &envoy, &before).await;
        assert_both_workers_filter(shell, &envoy, "normal", "normal").await;
        // One `200` claiming 4294967295 attempts must not be 4294967295 failure samples.
        // `metric_opt`: an absent series (the key under another label, or no gauge at all) is
        // not "closed".
        let state = envoy
            .metric_opt(&shell.metric_name("meshbreaker_state"), &[("key", "hostile")])
            .await;
        assert_eq!(state, Some(0.0), "the hostile key is not open");
        assert!(envoy.is_running());
    })
}
}

// ------------------------------------------------------------------------- 2. authority flood

per_shell! {
fn hundred_thousand_authorities_keep_memory_bounded_and_the_open_key(shell) {
    run(async {
        let cfg = json!({
            "key_by": "authority",
            "max_keys": 1000,
            "breaker": {
                "window": "2s", "buckets": 4, "min_requests": 5, "error_rate_threshold": 0.5,
                "latency_p95_threshold": null,
                // Long enough to outlast the flood: the victim must stay OPEN throughout.
                "sleep_window": "3m", "max_sleep_window": "5m"
            }
        });
        let s = Stack::start_shell(shell, &cfg, &[], &[], false).await;
        let c = s.client();
        // Warm up: both workers' VMs, connections, some keys.
        s.flood_authorities("a", 0, 2_000).await;

        // Trip the victim. Right after the warm-up every slot is held by a key active within its
        // window (SPEC: only a CLOSED key idle for longer than its window may lose its slot), so
        // the victim may pass unguarded until one frees up: keep failing until it is rejected.
        let r = eventually(Duration::from_secs(20), "the victim key OPEN", || async {
            let r = c
                .get("/", &[("host", "victim.example"), ("x-test-status", "503")])
                .await;
            is_rejection(&r).then_some(r)
        })
        .await;
        assert_spec_rejection(&r, "victim.example", "error_rate");

        let alloc_before = s.envoy.memory_allocated().await;
        let rss_before = s.envoy.rss_bytes();
        let started = Instant::now();
        let total = 100_000;
        let step = 10_000;
        let mut checks = 0;
        for chunk in (2_000..2_000 + total).step_by(step) {
            s.flood_authorities("a", chunk, step).await;
            // After every 10,000 new authorities (ten times max_keys), on fresh connections so
            // that both workers answer: the victim is still rejected.
            for i in 0..4 {
                let r = raw_request(s.envoy.port, &raw_get("x", b"victim.example", &[]))
                    .await
                    .unwrap_or_else(|e| panic!("victim check: {e}"));
                assert_eq!(
                    r.status,
                    503,
                    "after {} new authorities (check {i}) the OPEN victim was let through: \
                     its slot was taken over; {r:?}",
                    chunk + step - 2_000
                );
                assert_eq!(r.header("x-meshbreaker").as_deref(), Some("open"));
                checks += 1;
            }
        }
        let flood_s = started.elapsed().as_secs_f64();
        eprintln!(
            "{total} authorities in {flood_s:.1}s ({:.0}/s), victim checked {checks} times",
            total as f64 / flood_s
        );
        assert!(s.envoy.is_running());
        let alloc_after = s.envoy.memory_allocated().await;
        let rss_after = s.envoy.rss_bytes();
        let alloc_growth = alloc_after.saturating_sub(alloc_before);
        let rss_growth = rss_after.saturating_sub(rss_before);
        eprintln!("Envoy heap +{alloc_growth} B, RSS +{rss_growth} B over {total} authorities");
        // Unbounded state would be 7 stats (~1 KiB each) and a window per authority: >= 700 MiB
        // of heap. Bounded state moves buffers and allocator noise only.
        assert!(
            alloc_growth < 16 << 20,
            "Envoy heap grew by {alloc_growth} bytes over {total} authorities"
        );
        assert!(
            rss_growth < 64 << 20,
            "Envoy RSS grew by {rss_growth} bytes over {total} authorities"
        );
        let samples = s.samples().await;
        let keys: BTreeSet<&str> = samples
            .iter()
            .filter(|x| x.name.starts_with("meshbreaker"))
            .filter_map(|x| x.label("key"))
            .collect();
        assert!(
            keys.len() <= 1001,
            "{} key labels, at most max_keys + _other",
            keys.len()
        );
        // Still the same circuit: same key, same reason (its gauge is under `_other`, since
        // the warm-up used up the 1,000 labels first).
        let r = c.get("/", &[("host", "victim.example")]).await;
        assert_spec_rejection(&r, "victim.example", "error_rate");
    })
}
}

/// An OPEN key is rejected on every worker even when the workers' registries are full of keys
/// with requests in flight: a worker that could not track the victim used to let it through
/// without reading its state (SPEC: OPEN keys are never forgotten, whatever the churn).
#[test]
fn an_open_victim_stays_rejected_on_every_worker_while_long_requests_fill_the_registries() {
    run(async {
        let cfg = json!({
            "key_by": "authority",
            "max_keys": 64,
            "breaker": {
                "window": "2s", "buckets": 4, "min_requests": 5, "error_rate_threshold": 0.5,
                "latency_p95_threshold": null, "sleep_window": "3m", "max_sleep_window": "5m"
            }
        });
        let s = Stack::start(&cfg, &[], &[], false).await;
        let c = s.client();
        let r = eventually(Duration::from_secs(20), "the victim key OPEN", || async {
            let r = c
                .get("/", &[("host", "victim.example"), ("x-test-status", "503")])
                .await;
            is_rejection(&r).then_some(r)
        })
        .await;
        assert_spec_rejection(&r, "victim.example", "error_rate");
        // 256 long requests on distinct authorities, each on its own connection: both workers'
        // registries (64 entries each) fill with keys that have a request in flight.
        let port = s.envoy.port;
        let long: Vec<_> = (0..256)
            .map(|i| {
                tokio::spawn(async move {
                    let host = format!("long{i}.example");
                    raw_request(
                        port,
                        &raw_get("x", host.as_bytes(), &[b"x-test-delay-ms: 7000"]),
                    )
                    .await
                })
            })
            .collect();
        wait_until(
            Duration::from_secs(5),
            "256 long requests upstream",
            || async { s.up("backend").in_flight() >= 256 },
        )
        .await;
        // And a flood of quick ones on top.
        s.flood_authorities("flood", 0, 300).await;
        for i in 0..24 {
            let r = raw_request(port, &raw_get("x", b"victim.example", &[]))
                .await
                .unwrap_or_else(|e| panic!("victim check {i}: {e}"));
            assert_eq!(
                (r.status, r.header("x-meshbreaker").as_deref()),
                (503, Some("open")),
                "check {i}: the OPEN victim passed while the registries were full: {r:?}"
            );
        }
        for t in long {
            let r = t
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("long request: {e}"));
            assert_eq!(r.status, 200, "{r:?}");
        }
    })
}

/// Tripping `max_keys` junk authorities once pinned every slot for good (OPEN keys were never
/// taken over), with `meshbreaker_state` 1 on each forever; later keys ran unguarded. An OPEN key
/// left alone after its open period releases its slot, and its gauge goes back to 0.
#[test]
fn tripped_junk_authorities_release_their_slots_and_gauges_and_cannot_pin_the_table() {
    run(async {
        let cfg = json!({
            "key_by": "authority",
            "max_keys": 8,
            "breaker": {
                "window": "1s", "buckets": 2, "min_requests": 5, "error_rate_threshold": 0.5,
                "latency_p95_threshold": null, "sleep_window": "1s", "max_sleep_window": "2s"
            }
        });
        let s = Stack::start(&cfg, &[], &[], false).await;
        let c = s.client();
        let trip = |host: String| {
            let c = c.clone();
            async move {
                eventually(Duration::from_secs(10), &format!("{host} OPEN"), || async {
                    let r = c
                        .get("/", &[("host", &host), ("x-test-status", "503")])
                        .await;
                    is_rejection(&r).then_some(())
                })
                .await
            }
        };
        for i in 0..8 {
            trip(format!("junk{i}.example")).await;
        }
        let state = |key: String| {
            let envoy = &s.envoy;
            async move {
                envoy
                    .metric_opt("meshbreaker_state", &[("key", key.as_str())])
                    .await
            }
        };
        assert_eq!(state("junk0.example".into()).await, Some(1.0));
        // Open for at most 1.2 s, then idle for the takeover bound (5 s): released.
        wait_until(
            Duration::from_secs(15),
            "every junk key's state gauge back to 0",
            || async {
                let mut all = true;
                for i in 0..8 {
                    all &= state(format!("junk{i}.example")).await == Some(0.0);
                }
                all
            },
        )
        .await;
        // A new key gets a slot and is guarded: it trips (its gauge is under `_other`: the junk
        // spent every label).
        trip("guarded.example".to_string()).await;
        let r = c.get("/", &[("host", "guarded.example")]).await;
        assert_spec_rejection(&r, "guarded.example", "error_rate");
    })
}

// ----------------------------------------------------------------------- 3. forced retries

/// Every retry header a client could send to make Envoy amplify its load; the values are
/// distinctive so the upstream can tell them from the filter's own.
const CLIENT_RETRY_HEADERS: [(&str, &str); 7] = [
    (
        "x-envoy-retry-on",
        "5xx,gateway-error,reset,connect-failure,retriable-status-codes",
    ),
    (
        "x-envoy-retry-grpc-on",
        "cancelled,unavailable,internal,resource-exhausted",
    ),
    ("x-envoy-max-retries", "9"),
    ("X-Envoy-Max-Retries", "8"),
    ("x-envoy-retriable-status-codes", "503,599"),
    ("x-envoy-upstream-rq-per-try-timeout-ms", "7"),
    ("x-envoy-retriable-header-names", "x-upstream-attempt"),
];

per_shell! {
fn client_cannot_force_retries_on_a_trusting_listener_in_any_mode(shell) {
    run(async {
        let mut cfg = fast_config();
        // Twelve 503s per cluster would trip it mid-test at a tick (min_requests 5), and a
        // rejected request never reaches the upstream: this test is about retry headers only.
        cfg["breaker"]["min_requests"] = 1_000.into();
        cfg["overrides"] = json!([
            {"match": {"cluster": "m_dry_run"}, "mode": "dry_run"},
            {"match": {"cluster": "m_disabled"}, "mode": "disabled"}
        ]);
        let clusters = ["m_enforce", "m_dry_run", "m_disabled"];
        let s = Stack::start_shell(shell, &cfg, &clusters, &[], true).await;
        for cluster in clusters {
            for (proto, client) in [("h1", s.envoy.http1()), ("h2c", s.envoy.h2c())] {
                for method in ["POST", "GET"] {
                    let up = s.up(cluster);
                    up.clear();
                    let mut h: Vec<(&str, &str)> =
                        vec![("x-route", cluster), ("x-test-status", "503")];
                    h.extend_from_slice(&CLIENT_RETRY_HEADERS);
                    let r = client.request(method, &format!("/{cluster}"), &h, "").await;
                    assert_eq!(r.status, 503, "{cluster} {proto} {method}: {r:?}");
                    let seen = up.requests();
                    // GET matches the idempotent default policy (5xx, 2 retries): the filter's
                    // own headers may retry it, never more than that policy allows; POST matches
                    // the unsafe policy (no 5xx retry); `disabled` sets no retry headers at all.
                    let allowed = match (cluster, method) {
                        ("m_disabled", _) | (_, "POST") => 1,
                        _ => 3,
                    };
                    assert_eq!(
                        seen.len(),
                        allowed,
                        "{cluster} {proto} {method}: {} attempts reached the upstream",
                        seen.len()
                    );
                    for req in &seen {
                        for (k, v) in &req.headers {
                            for (ck, cv) in CLIENT_RETRY_HEADERS {
                                assert!(
                                    !(k.eq_ignore_ascii_case(ck) && v == cv),
                                    "{cluster} {proto} {method}: the client's {ck}: {cv} reached the upstream"
                                );
                            }
                            assert!(
                                k != "x-envoy-retriable-header-names",
                                "{cluster} {proto} {method}: client header {k}: {v} forwarded"
                            );
                        }
                    }
                }
            }
            // The breaker opened on those 503s in enforce mode; let it recover for the next cluster.
        }
        let retries = s.envoy.stat("cluster.m_disabled.upstream_rq_retry").await;
        assert_eq!(retries.unwrap_or(0), 0, "Envoy retried in disabled mode");
    })
}
}

// -------------------------------------------------------------------------- 4. hostile sidecar

/// What the fake sidecar does with each poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SidecarMode {
    /// Bytes that are not HTTP.
    Garbage,
    /// HTTP 200 with a body that is not JSON (and not UTF-8).
    NotJson,
    /// JSON of the right shape with numbers out of every range, duplicate and nested fields.
    AbsurdJson,
    /// JSON nested 100,000 deep.
    DeepJson,
    /// A well-formed body of 32 MiB.
    Huge,
    /// Accepts, reads the request, never answers.
    Hang,
    /// A proper snapshot whose `resets` towards `peer` grow by 40 per poll.
    Rising,
}

struct FakeSidecar {
    addr: SocketAddr,
    mode: Arc<Mutex<SidecarMode>>,
    polls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSidecar {
    async fn start(peer: SocketAddr) -> FakeSidecar {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(SidecarMode::Garbage));
        let polls = Arc::new(AtomicU64::new(0));
        let (m, p) = (mode.clone(), polls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let (m, p) = (m.clone(), p.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Envoy may keep the connection: answer each request head on it.
                    loop {
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        got.drain(..end);
                        let n = p.fetch_add(1, Ordering::SeqCst) + 1;
                        let mode = *m.lock().unwrap();
                        if !answer(&mut conn, mode, n, peer).await {
                            return;
                        }
                    }
                });
            }
        });
        FakeSidecar {
            addr,
            mode,
            polls,
            task,
        }
    }

    fn set(&self, mode: SidecarMode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn polls(&self) -> u64 {
        self.polls.load(Ordering::SeqCst)
    }

    /// Waits until the filter has polled `n` more times.
    async fn wait_polls(&self, n: u64, what: &str) {
        let target = self.polls() + n;
        let deadline = Duration::from_secs(4 * n + 5);
        eventually(deadline, what, || async {
            (self.polls() >= target).then_some(())
        })
        .await;
    }
}

/// Writes the answer for `mode`; false to close the connection.
async fn answer(conn: &mut TcpStream, mode: SidecarMode, n: u64, peer: SocketAddr) -> bool {
    let http = |body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    match mode {
        SidecarMode::Garbage => {
            let _ = conn
                .write_all(b"\x00\xff\xfe garbage \r\n\r\n\x01\x02")
                .await;
            false
        }
        SidecarMode::NotJson => conn
            .write_all(&http(b"\xff\xfe{peers: [nope"))
            .await
            .is_ok(),
        SidecarMode::AbsurdJson => {
            let body = format!(
                r#"{{"started_at_ms":-1,"now_ms":1e400,"peers":[{{"addr":"127.0.0.1","port":99999,"resets":18446744073709551616,"refused":-5,"timeouts":0.5,"last_ms":"x"}},{{"addr":"{}","port":{},"resets":1,"resets":2,"refused":0,"timeouts":0,"last_ms":0}},{{"addr":"{}","port":1,"resets":0,"refused":0,"timeouts":0,"last_ms":0}}]}}"#,
                peer.ip(),
                peer.port(),
                "a".repeat(10_000)
            );
            conn.write_all(&http(body.as_bytes())).await.is_ok()
        }
        SidecarMode::DeepJson => {
            let mut body = "[".repeat(100_000);
            body.push_str(&"]".repeat(100_000));
            conn.write_all(&http(body.as_bytes())).await.is_ok()
        }
        SidecarMode::Huge => {
            // Valid JSON of 32 MiB: a giant ignored field before the real ones.
            let pad = 32 << 20;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                pad + 64
            );
            if conn.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            let mut body = br#"{"pad":""#.to_vec();
            body.resize(8 + pad, b'x');
            let tail = br#"","started_at_ms":1,"now_ms":2,"peers":[]}"#;
            body.extend_from_slice(tail);
            body.resize(pad + 64, b' ');
            conn.write_all(&body).await.is_ok()
        }
        SidecarMode::Hang => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            false
        }
        SidecarMode::Rising => {
            let body = json!({
                "started_at_ms": 1_000,
                "now_ms": 1_000 + n * 200,
                "peers": [{
                    "addr": peer.ip().to_string(), "port": peer.port(),
                    "peer": peer.to_string(),
                    "resets": n * 40, "refused": 0, "timeouts": 0, "last_ms": 1_000 + n * 200
                }]
            });
            conn.write_all(&http(body.to_string().as_bytes()))
                .await
                .is_ok()
        }
    }
}

per_shell! {
fn hostile_sidecar_changes_nothing_and_a_sane_one_is_heard_again(shell) {
    run(async {
        let up = HttpUpstream::start().await;
        let sidecar = FakeSidecar::start(up.addr).await;
        let cfg: Value = json!({
            "key_by": "cluster",
            "breaker": {
                "window": "2s", "buckets": 4, "min_requests": 100000, "error_rate_threshold": 1,
                "latency_p95_threshold": null, "sleep_window": "30s", "max_sleep_window": "5m"
            },
            "reset_signals": {
                "cluster": "meshbreaker_sidecar", "path": "/v1/resets",
                "poll_interval": "200ms", "max_resets_per_second": 5
            }
        });
        let mut b = Bootstrap::new()
            .with_shell(shell, cfg.to_string())
            .backend(up.addr)
            .cluster("guarded", RouteKind::Http, up.addr);
        b.sidecar = sidecar.addr;
        let envoy = Envoy::start(b.to_yaml()).await;
        let client = envoy.http1();

        // Steady traffic for the whole test; every answer must be the upstream's 200.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let traffic = {
            let (stop, sent, client) = (stop.clone(), sent.clone(), client.clone());
            tokio::spawn(async move {
                let mut bad = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let r = client.get("/", &[("x-route", "guarded")]).await;
                    sent.fetch_add(1, Ordering::SeqCst);
                    if r.status != 200 {
                        bad.push(r);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                bad
            })
        };
        sidecar
            .wait_polls(2, "the filter polls the fake sidecar")
            .await;
        let before = health(shell, &envoy).await;
        let rss_start = envoy.rss_bytes();
        let mut rss_peak = rss_start;
        for mode in [
            SidecarMode::Garbage,
            SidecarMode::NotJson,
            SidecarMode::AbsurdJson,
            SidecarMode::DeepJson,
            SidecarMode::Huge,
            SidecarMode::Hang,
            SidecarMode::Huge,
        ] {
            sidecar.set(mode);
            let polls = if mode == SidecarMode::Hang { 2 } else { 4 };
            sidecar
                .wait_polls(polls, &format!("polls while the sidecar is {mode:?}"))
                .await;
            rss_peak = rss_peak.max(envoy.rss_bytes());
            assert!(
                envoy.is_running(),
                "Envoy died while the sidecar was {mode:?}"
            );
            assert_eq!(
                envoy
                    .metric_opt(&shell.metric_name("meshbreaker_state"), &[("key", "guarded")])
                    .await,
                Some(0.0),
                "a {mode:?} sidecar tripped the key (or it has no gauge)"
            );
        }
        let rss_hostile = envoy.rss_bytes();
        eprintln!(
            "RSS {rss_start} B at start, peak {rss_peak} B, {rss_hostile} B after the hostile phases"
        );
        // Bodies of 32 MiB are read and dropped, not kept: RSS does not climb per poll.
        assert!(
            rss_peak < rss_start + (256 << 20),
            "RSS peaked {} MiB above start",
            (rss_peak - rss_start) >> 20
        );

        // A proper sidecar again: its rising resets are heard and trip the key.
        sidecar.set(SidecarMode::Rising);
        stop.store(true, Ordering::SeqCst);
        let bad = traffic.await.unwrap();
        assert!(
            bad.is_empty(),
            "{} of {} requests were not the upstream's 200 while the sidecar was hostile: {:?}",
            bad.len(),
            sent.load(Ordering::SeqCst),
            bad.first()
        );
        let r = eventually(
            Duration::from_secs(15),
            "the key trips on kernel_resets once the sidecar is sane",
            || async {
                let r = client.get("/", &[("x-route", "guarded")]).await;
                is_rejection(&r).then_some(r)
            },
        )
        .await;
        assert_spec_rejection(&r, "guarded", "kernel_resets");
        assert_shell_healthy(shell, &envoy, &before).await;
    })
}
}
