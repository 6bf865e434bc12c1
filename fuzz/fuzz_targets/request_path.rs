//! The filter's request path, `Exchange` and `Engine`, through the fake host: two workers sharing
//! one shared-data store (Envoy's CAS rule), fed arbitrary request header bytes, response statuses,
//! gRPC statuses in headers and trailers, attempt counts, durations, response flags and upstream
//! addresses, with the clock moving forwards and backwards and requests left unfinished.
//!
//! Every byte here is one a client, an upstream or Envoy's stream info can put in front of the
//! wasm filter, where a panic kills the worker's VM. Beyond "never panics":
//! - a rejected request was answered locally with SPEC's shape (503 + `x-meshbreaker: open`, or
//!   HTTP 200 + `grpc-status: 14` for gRPC);
//! - the router never sees a client's retry header: `x-envoy-max-retries` on an admitted request
//!   is the filter's (at most 10), and no client value survives for the others;
//! - metric labels stay bounded: at most `max_keys` keys plus `_other`.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use meshbreaker::engine::Engine;
use meshbreaker::host::{FakeHost, Map};
use meshbreaker::request::{
    Exchange, ATTEMPT_COUNT, CLUSTER_NAME, REQUEST_DURATION, RESPONSE_FLAGS, ROUTE_NAME,
    UPSTREAM_ADDRESS,
};
use policy_core::config::Config;

/// Configurations that reach different parts of the engine; `max_keys` is small so slot churn,
/// eviction and `_other` labels happen within a few requests.
const CONFIGS: [&str; 4] = [
    r#"{"max_keys":4,"breaker":{"window":"2s","buckets":4,"min_requests":2,"error_rate_threshold":0.5,
        "latency_p95_threshold":"100ms","sleep_window":"200ms","max_sleep_window":"1s",
        "half_open_max_probes":2,"half_open_successes_to_close":2}}"#,
    r#"{"key_by":"authority","max_keys":3,"mode":"dry_run","breaker":{"window":"1s","buckets":2,
        "min_requests":1,"sleep_window":"100ms","max_sleep_window":"400ms"},
        "retry":{"budget":{"ratio":0.1,"min_retries_per_second":0},"policies":[
          {"name":"t","match":{"headers":{"x-tenant":"a"},"path_prefix":"/api"},"retry_on":["5xx"],"max_retries":3,
           "per_try_timeout":"50ms","retriable_status_codes":[503]},
          {"name":"g","match":{"grpc":true},"retry_on":["reset"],"retry_grpc_on":["unavailable"],"max_retries":2},
          {"name":"any","match":{},"retry_on":["connect-failure"],"max_retries":1}]}}"#,
    r#"{"key_by":"cluster_route","max_keys":2,"breaker":{"window":"1s","buckets":1,"min_requests":1,
        "sleep_window":"100ms","max_sleep_window":"200ms","failure":{"http_statuses":["4xx",429],
        "grpc_statuses":["unavailable","internal"],"upstream_resets":true}},
        "reset_signals":{"cluster":"meshbreaker_sidecar","poll_interval":"100ms","max_resets_per_second":1},
        "overrides":[{"match":{"cluster":"c1"},"mode":"forced_open"}]}"#,
    r#"{"mode":"disabled","max_keys":1}"#,
];

const HEADER_NAMES: [&str; 12] = [
    ":method",
    ":path",
    ":authority",
    "content-type",
    "x-tenant",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-retriable-status-codes",
    "x-envoy-attempt-count",
    "grpc-status",
];

/// Marks a client's value of a retry header, so it can be told from the filter's own.
const CLIENT_MARK: &[u8] = b"client-";

#[derive(Arbitrary, Debug)]
struct Request {
    worker: bool,
    /// Clock change before the request, ms (negative: the wall clock stepped back).
    clock_step: i16,
    cluster: Vec<u8>,
    route: Vec<u8>,
    headers: Vec<(u8, Vec<u8>)>,
    /// Client retry headers (index into the retry names), value prefixed with [`CLIENT_MARK`].
    client_retry: Vec<(u8, Vec<u8>)>,
    /// `None`: the request never completes (the stream is abandoned).
    response: Option<Response>,
    tick: bool,
    /// The request has a body: its end comes after the headers (the upstream's latency starts
    /// there).
    body: bool,
}

#[derive(Arbitrary, Debug)]
struct Response {
    headers: Vec<(u8, Vec<u8>)>,
    trailers: Option<Vec<(u8, Vec<u8>)>>,
    attempt_count: Option<Vec<u8>>,
    duration: Option<Vec<u8>>,
    flags: Option<Vec<u8>>,
    upstream: Option<Vec<u8>>,
    /// Time the request takes, ms.
    took: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    requests: Vec<Request>,
}

const RETRY_HEADERS: [&str; 5] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-retriable-status-codes",
];

fn pairs(raw: &[(u8, Vec<u8>)]) -> Vec<(&'static str, Vec<u8>)> {
    raw.iter()
        .take(16)
        .map(|(i, v)| {
            (
                HEADER_NAMES[usize::from(*i) % HEADER_NAMES.len()],
                v.clone(),
            )
        })
        .collect()
}

fn as_refs<'a>(v: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    v.iter().map(|(k, v)| (*k, v.as_slice())).collect()
}

fuzz_target!(|input: Input| {
    let json = CONFIGS[usize::from(input.config) % CONFIGS.len()];
    let Ok(cfg) = Config::parse(json.as_bytes()) else {
        return;
    };
    let max_keys = cfg.max_keys as usize;
    let host = FakeHost::default();
    let mut now_ms: u64 = 1_764_570_000_000;
    host.set_now_ms(now_ms);
    let mut workers = [
        Engine::new(host.clone(), cfg.clone(), "fuzz", 1),
        Engine::new(host.clone(), cfg, "fuzz", 2),
    ];
    for req in input.requests.iter().take(64) {
        now_ms = now_ms.saturating_add_signed(i64::from(req.clock_step));
        host.set_now_ms(now_ms);
        let e = &mut workers[usize::from(req.worker)];
        if req.tick {
            e.on_tick(now_ms);
        }
        let mut headers = pairs(&req.headers);
        for (i, v) in req.client_retry.iter().take(5) {
            let mut value = CLIENT_MARK.to_vec();
            value.extend_from_slice(v);
            headers.push((RETRY_HEADERS[usize::from(*i) % RETRY_HEADERS.len()], value));
        }
        host.new_stream(
            &as_refs(&headers),
            &[(CLUSTER_NAME, &req.cluster), (ROUTE_NAME, &req.route)],
        );
        let mut x = Exchange::default();
        let admitted = x.on_request_headers(e, !req.body);
        let stream = host.stream();
        if admitted {
            assert!(stream.local_response.is_none(), "admitted and answered");
            for name in RETRY_HEADERS {
                let v = host.stream_header(Map::RequestHeaders, name);
                assert!(
                    !v.as_deref().is_some_and(|v| v.starts_with(CLIENT_MARK)),
                    "the client's {name} reached the router"
                );
            }
            if let Some(v) = host.stream_header(Map::RequestHeaders, "x-envoy-max-retries") {
                let n: u32 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u32::MAX);
                assert!(n <= 10, "x-envoy-max-retries {v:?}");
            }
        } else {
            let (status, headers, _) = stream
                .local_response
                .clone()
                .expect("a rejection answers locally");
            let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            assert_eq!(h("x-meshbreaker").as_deref(), Some(&b"open"[..]));
            match status {
                503 => {}
                200 => assert_eq!(h("grpc-status").as_deref(), Some(&b"14"[..])),
                other => panic!("rejection with status {other}"),
            }
            continue;
        }
        if req.body {
            x.on_request_end(e);
        }
        let Some(resp) = &req.response else {
            continue;
        };
        now_ms = now_ms.saturating_add(u64::from(resp.took));
        host.set_now_ms(now_ms);
        host.new_stream(&[], &[]);
        host.set_map(Map::ResponseHeaders, &as_refs(&pairs(&resp.headers)));
        x.on_response_headers(e);
        if let Some(t) = &resp.trailers {
            host.set_map(Map::ResponseTrailers, &as_refs(&pairs(t)));
            x.on_response_trailers(e);
        }
        for (path, v) in [
            (ATTEMPT_COUNT, &resp.attempt_count),
            (REQUEST_DURATION, &resp.duration),
            (RESPONSE_FLAGS, &resp.flags),
            (UPSTREAM_ADDRESS, &resp.upstream),
        ] {
            if let Some(v) = v {
                host.set_property(path, v);
            }
        }
        x.on_log(e);
    }
    for e in &mut workers {
        e.on_tick(now_ms.saturating_add(1_000));
    }
    let labels: BTreeSet<String> = host
        .inner
        .borrow()
        .metric_names
        .iter()
        .filter_map(|(_, n)| {
            let rest = n.strip_prefix("key=.=")?;
            Some(rest.split(";.;").next()?.to_string())
        })
        .collect();
    assert!(
        labels.len() <= max_keys + 1,
        "{} key labels with max_keys {max_keys}: {labels:?}",
        labels.len()
    );
});
