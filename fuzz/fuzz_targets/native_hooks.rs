//! The dynamic module's hooks, with what Envoy hands them: its filter configuration (name and
//! JSON), request header maps, the stream's attributes (cluster, route, upstream address,
//! response flags, attempt count), response headers and trailers, the tick, and the sidecar's
//! answers to the module's callouts, all arbitrary, through the module's in-memory Envoy
//! (`abi::fake`, feature `fake-abi`) in place of the real one.
//!
//! In Envoy a panic in a hook is caught and the request let through, so a panic here is a
//! request that lost its breaker; the target makes any panic a crash. Beyond "never panics":
//! - a local reply is SPEC's shape: 503 with `x-meshbreaker: open`, or HTTP 200 with
//!   `grpc-status: 14` for gRPC;
//! - an admitted request carries no client value of a retry header to the router.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use meshbreaker_native::abi::fake::{self, FakeEnvoy, FakeResponse};
use meshbreaker_native::abi::{Attribute, CalloutEnd, HeaderMap, Status};
use meshbreaker_native::filter::{self, Exchange, FilterConfig};

/// Configurations that reach different parts of the module (tiny `max_keys`: eviction, `_other`;
/// kernel reset signals: callouts), or the input's own bytes.
const CONFIGS: [&str; 4] = [
    r#"{"max_keys":3,"breaker":{"window":"1s","buckets":2,"min_requests":1,"error_rate_threshold":0.5,
        "latency_p95_threshold":"1ms","sleep_window":"100ms","max_sleep_window":"400ms",
        "half_open_max_probes":2,"half_open_successes_to_close":1}}"#,
    r#"{"key_by":"authority","max_keys":2,"mode":"dry_run","retry":{"policies":[
          {"name":"t","match":{"headers":{"x-tenant":"a"}},"retry_on":["5xx"],"max_retries":3},
          {"name":"g","match":{"grpc":true},"retry_on":["reset"],"retry_grpc_on":["unavailable"],"max_retries":2}]}}"#,
    r#"{"key_by":"cluster_route","max_keys":2,"breaker":{"window":"1s","buckets":1,"min_requests":1,
        "sleep_window":"100ms","max_sleep_window":"200ms","failure":{"upstream_resets":true}},
        "reset_signals":{"cluster":"fuzz_sidecar","poll_interval":"100ms","max_resets_per_second":0.001},
        "overrides":[{"match":{"cluster":"c1"},"mode":"forced_open"}]}"#,
    r#"{"mode":"disabled","max_keys":1}"#,
];

const HEADER_NAMES: [&str; 10] = [
    ":method",
    ":path",
    ":authority",
    "content-type",
    "x-tenant",
    "upgrade",
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "grpc-status",
    ":status",
];

/// A client's retry-header value, to be told from the module's own.
const CLIENT_MARK: &[u8] = b"client-";

#[derive(Arbitrary, Debug)]
struct Request {
    worker: u8,
    headers: Vec<(u8, Vec<u8>)>,
    client_retry: Option<Vec<u8>>,
    cluster: Option<Vec<u8>>,
    route: Option<Vec<u8>>,
    upstream: Option<Vec<u8>>,
    /// `None`: the stream ends without a response.
    response: Option<Vec<(u8, Vec<u8>)>>,
    trailers: Option<Vec<(u8, Vec<u8>)>>,
    flags: Option<u64>,
    attempts: Option<u64>,
    tick: bool,
    /// A sidecar answer to the latest callout: status, body chunks, or a failure.
    sidecar: Option<(Vec<u8>, Vec<Vec<u8>>, bool)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    own_config: Option<(Vec<u8>, Vec<u8>)>,
    requests: Vec<Request>,
}

fn pairs(raw: &[(u8, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw.iter()
        .take(12)
        .map(|(i, v)| {
            let name = HEADER_NAMES[usize::from(*i) % HEADER_NAMES.len()];
            (name.as_bytes().to_vec(), v.clone())
        })
        .collect()
}

/// `strips`: the configuration strips client retry headers (the built-in ones all do).
fn one(fc: &FilterConfig, cfg_envoy: &mut FakeEnvoy, r: &Request, strips: bool) {
    let mut envoy = FakeEnvoy {
        defined: cfg_envoy.defined.clone(),
        worker: u32::from(r.worker % 3),
        ..FakeEnvoy::default()
    };
    envoy.headers[HeaderMap::RequestHeaders as usize] = pairs(&r.headers);
    if let Some(v) = &r.client_retry {
        let mut marked = CLIENT_MARK.to_vec();
        marked.extend_from_slice(v);
        envoy.push_request_header("x-envoy-max-retries", &marked);
    }
    for (id, v) in [
        (Attribute::XdsClusterName, &r.cluster),
        (Attribute::XdsRouteName, &r.route),
        (Attribute::UpstreamAddress, &r.upstream),
    ] {
        if let Some(v) = v {
            envoy.attrs_str.push((id as i32, v.clone()));
        }
    }
    for (id, v) in [
        (Attribute::ResponseFlags, r.flags),
        (Attribute::UpstreamRequestAttemptCount, r.attempts),
    ] {
        if let Some(v) = v {
            envoy.attrs_int.push((id as i32, v));
        }
    }
    let mut x = Exchange::default();
    let status = filter::on_request_headers(fc, &mut envoy.stream(), &mut x, r.response.is_none());
    match status {
        Status::StopIteration => {
            let (code, headers, _, _) = envoy.sent.clone().unwrap_or_default();
            let has = |k: &str, v: &str| {
                headers.contains(&(k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            };
            assert!(
                (code == 503 && has("x-meshbreaker", "open"))
                    || (code == 200 && has("grpc-status", "14")),
                "a local reply not in SPEC's shape: {code} {headers:?}"
            );
        }
        Status::Continue => {
            let seen = if strips {
                &envoy.headers[HeaderMap::RequestHeaders as usize][..]
            } else {
                &[]
            };
            for (k, v) in seen {
                assert!(
                    !(k.starts_with(b"x-envoy-") && v.starts_with(CLIENT_MARK)),
                    "a client's retry header reached the router"
                );
            }
            x.on_request_end();
            if let Some(h) = &r.response {
                envoy.headers[HeaderMap::ResponseHeaders as usize] = pairs(h);
                filter::on_response_headers(fc, &mut envoy.stream(), &mut x);
            }
            if let Some(t) = &r.trailers {
                envoy.headers[HeaderMap::ResponseTrailers as usize] = pairs(t);
                x.on_response_trailers(&mut envoy.stream());
            }
        }
    }
    filter::on_stream_complete(fc, &mut envoy.stream(), &mut x);
    if r.tick {
        filter::on_tick(fc, &mut cfg_envoy.config());
    }
    if let Some((status, chunks, failed)) = &r.sidecar {
        let chunks: Vec<&[u8]> = chunks.iter().take(8).map(|c| c.as_slice()).collect();
        let resp = FakeResponse::new(&[(":status", status)], &chunks);
        let end = if *failed {
            CalloutEnd::Reset
        } else {
            CalloutEnd::Response
        };
        filter::on_callout_done(fc, cfg_envoy.callouts.len() as u64, &resp.view(end));
    }
}

fuzz_target!(|input: Input| {
    let mut cfg_envoy = FakeEnvoy::default();
    let (name, json): (&[u8], &[u8]) = match &input.own_config {
        Some((name, json)) => (name, json),
        None => (
            b"meshbreaker",
            CONFIGS[usize::from(input.config) % CONFIGS.len()].as_bytes(),
        ),
    };
    let Some(fc) = filter::config_new(&mut cfg_envoy.config(), name, json) else {
        fake::take_logs();
        return;
    };
    for r in input.requests.iter().take(64) {
        one(&fc, &mut cfg_envoy, r, input.own_config.is_none());
    }
    // The in-memory Envoy keeps what it was told; start every input afresh.
    fake::take_logs();
});
