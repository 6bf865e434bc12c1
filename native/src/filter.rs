//! What the module's hooks do, in safe Rust on top of [`crate::abi`].
//!
//! - **Configuration** ([`config_new`], main thread): `filter_name` must be `meshbreaker`; the
//!   `filter_config` bytes are the wasm filter's JSON, parsed by [`Config::parse`]. A bad one is
//!   refused (Envoy rejects the filter configuration) with one log line,
//!   `meshbreaker: config error at <path>: <reason>`, as the wasm filter logs it. The metrics are
//!   defined here, the only moment Envoy allows it, and the ticker starts (not in
//!   `--mode validate`).
//! - **Request** ([`on_request_headers`], workers): the key and its profile, the breaker's
//!   decision ([`Engine::decide`]); a rejection is answered locally with the filter's reply
//!   ([`local_reply`], details [`DETAILS`]); an allowed request gets the client's retry headers
//!   stripped and the plan's written ([`policy_core::retry::CompiledRetry::edit_headers`]).
//! - **Outcome** ([`on_response_headers`], [`Exchange::on_response_trailers`],
//!   [`on_stream_complete`]): the status, grpc-status (headers or trailers, gRPC requests only),
//!   response flags and attempt count (Envoy's attributes), and the upstream's latency: from the
//!   request being complete at this filter (headers with no body, else its last body byte or its
//!   trailers) to the response headers, on the monotonic clock; none for an upgrade or `CONNECT`.
//!   The module's own rejections record nothing (their stream completes too, but the exchange is
//!   not marked to record), so they are never taken for upstream failures.
//! - **Tick** ([`on_tick`], main thread, every 100 ms from the module's ticker): merges samples a
//!   quiet worker holds, so a trip does not wait for the next request.
//!
//! [`FilterConfig`] is shared by every worker (Envoy hands the same pointer to all of them), so it
//! is `Sync`; its mutable parts are per worker ([`Engine`]). Per-request buffers are per thread
//! ([`Scratch`]); per-stream state is the [`Exchange`] Envoy's stream pointer leads to.

use std::cell::RefCell;
use std::time::Instant;

use policy_core::breaker::Decision;
use policy_core::config::{Config, Mode};
use policy_core::metrics as names;
use policy_core::reply::{local_reply, DETAILS};
use policy_core::retry::{HeaderLookup, RequestView, RetryPlan};
use policy_core::window::{Outcome, UPSTREAM_RESET_BITS};

use crate::abi::{
    self, Attribute, CalloutEnd, CalloutResponse, ConfigEnvoy, CounterId, GaugeId, HeaderMap,
    LogLevel, MetricSink, Status, Stream, Ticker,
};
use crate::engine::{self, End, Engine, Metric, Pending};
use crate::labels;
use crate::request::{parse_u32, profile_index, text, Needs, RawParts, Scratch};
use crate::resets;
use crate::store;

/// The module's one filter, as `filter_name` names it in Envoy's configuration.
pub const FILTER_NAME: &str = "meshbreaker";

/// SPEC's request counter (one name for both shells: `policy_core::metrics`), with its labels.
pub use policy_core::metrics::REQUESTS_TOTAL;
pub const REQUESTS_LABELS: [&str; 2] = [names::KEY, names::DECISION];

/// The ids of the module's metrics (SPEC's, under the names of `policy_core::metrics`).
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    requests: CounterId,
    transitions: CounterId,
    budget_denied: CounterId,
    kernel_resets: CounterId,
    state: GaugeId,
    error_rate_ppm: GaugeId,
    latency_p95_ms: GaugeId,
}

impl Metrics {
    fn define(envoy: &mut ConfigEnvoy<'_>) -> Result<Metrics, String> {
        let key = [names::KEY];
        let refused = |name: &str, e| format!("meshbreaker: Envoy refused to define {name}: {e:?}");
        let c = |envoy: &mut ConfigEnvoy<'_>, name: &str, labels: &[&str]| {
            envoy
                .define_counter(name, labels)
                .map_err(|e| refused(name, e))
        };
        let g = |envoy: &mut ConfigEnvoy<'_>, name: &str| {
            envoy.define_gauge(name, &key).map_err(|e| refused(name, e))
        };
        Ok(Metrics {
            requests: c(envoy, REQUESTS_TOTAL, &REQUESTS_LABELS)?,
            transitions: c(envoy, names::TRANSITIONS_TOTAL, &[names::KEY, names::TO])?,
            budget_denied: c(envoy, names::RETRY_BUDGET_DENIED_TOTAL, &key)?,
            kernel_resets: c(envoy, names::KERNEL_RESETS_TOTAL, &key)?,
            state: g(envoy, names::STATE)?,
            error_rate_ppm: g(envoy, names::ERROR_RATE_PPM)?,
            latency_p95_ms: g(envoy, names::LATENCY_P95_MS)?,
        })
    }

    /// Hands the pending updates to Envoy. A metric Envoy refuses is not worth failing a request
    /// over.
    fn emit(&self, pending: &mut Pending, sink: &mut dyn MetricSink) {
        for (m, label, v) in pending.ops.drain(..) {
            let l = label.as_bytes();
            let _ = match m {
                Metric::Requests(d) => sink.increment_counter(self.requests, &[l, d.as_bytes()], v),
                Metric::Transitions(to) => {
                    sink.increment_counter(self.transitions, &[l, to.as_str().as_bytes()], v)
                }
                Metric::BudgetDenied => sink.increment_counter(self.budget_denied, &[l], v),
                Metric::KernelResets => sink.increment_counter(self.kernel_resets, &[l], v),
                Metric::State => sink.set_gauge(self.state, &[l], v),
                Metric::ErrorRatePpm => sink.set_gauge(self.error_rate_ppm, &[l], v),
                Metric::LatencyP95Ms => sink.set_gauge(self.latency_p95_ms, &[l], v),
            };
        }
    }
}

/// One filter configuration, shared by all workers.
#[derive(Debug)]
pub struct FilterConfig {
    engine: Engine,
    needs: Needs,
    metrics: Metrics,
    /// Stops the module's ticker thread when the configuration goes.
    _ticker: Option<Ticker>,
    /// Set when this configuration is the ABI probe's filter.
    #[cfg(feature = "abi-probe")]
    pub(crate) probe: Option<crate::probe::Probe>,
}

// Every worker reads the same configuration at once.
const _: () = {
    const fn shared_by_workers<T: Sync + Send>() {}
    shared_by_workers::<FilterConfig>()
};

impl FilterConfig {
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Who sent a callout: this configuration's address, unique while it lives (a callout of a
    /// configuration that went away is never answered to another one; it times out).
    fn sender(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// The configuration of filter `name` from `json`, or the one log line that says why not.
pub fn load(name: &[u8], json: &[u8]) -> Result<Config, String> {
    #[cfg(feature = "abi-probe")]
    if name == crate::probe::FILTER_NAME.as_bytes() {
        return Config::parse(json).map_err(|e| format!("meshbreaker: {e}"));
    }
    if name != FILTER_NAME.as_bytes() {
        // Debug formatting escapes what the configuration wrote: it cannot forge log lines.
        return Err(format!(
            "meshbreaker: config error at filter_name: this module has one filter, \
             {FILTER_NAME:?}, got {:?}",
            String::from_utf8_lossy(name)
        ));
    }
    Config::parse(json).map_err(|e| format!("meshbreaker: {e}"))
}

/// `on_http_filter_config_new`: the configuration, or `None` (refused; the reason is logged).
pub fn config_new(envoy: &mut ConfigEnvoy<'_>, name: &[u8], json: &[u8]) -> Option<FilterConfig> {
    let cfg = match load(name, json) {
        Ok(c) => c,
        Err(line) => {
            abi::log(LogLevel::Error, &line);
            return None;
        }
    };
    let metrics = match Metrics::define(envoy) {
        Ok(m) => m,
        Err(line) => {
            abi::log(LogLevel::Error, &line);
            return None;
        }
    };
    let seed = engine::now_ms() ^ (std::ptr::from_ref(&metrics) as usize as u64);
    let ticker = if abi::is_validation_mode() {
        None
    } else {
        let t = envoy.start_ticker(engine::TICK);
        if t.is_none() {
            abi::log(
                LogLevel::Warn,
                "meshbreaker: no ticker (Envoy gave no scheduler or no thread started): samples \
                 are merged only when requests complete",
            );
        }
        t
    };
    #[allow(unused_mut)]
    let mut fc = FilterConfig {
        needs: Needs::of(&cfg),
        engine: Engine::new(cfg, store::process(), labels::process(), seed),
        metrics,
        _ticker: ticker,
        #[cfg(feature = "abi-probe")]
        probe: None,
    };
    #[cfg(feature = "abi-probe")]
    if name == crate::probe::FILTER_NAME.as_bytes() {
        fc.probe = Some(crate::probe::Probe::define(envoy)?);
    }
    Some(fc)
}

/// What the module keeps about one stream between Envoy's hooks.
#[derive(Debug, Default)]
pub struct Exchange {
    key: String,
    worker: u32,
    record: bool,
    probe: Option<u32>,
    grpc: bool,
    /// An upgrade or `CONNECT`: no latency sample.
    upgrade: bool,
    dry_run_mark: bool,
    /// When the request was complete at this filter.
    request_done: Option<Instant>,
    /// When the response headers came.
    response_at: Option<Instant>,
    status: Option<u16>,
    grpc_status: Option<u32>,
    max_attempts: u32,
}

impl Exchange {
    /// The last byte of the request body (or its trailers) went by: the upstream's time starts.
    pub fn on_request_end(&mut self) {
        if self.request_done.is_none() {
            self.request_done = Some(Instant::now());
        }
    }

    /// Response trailers: a gRPC response's final status.
    pub fn on_response_trailers(&mut self, s: &mut Stream<'_>) {
        if self.record && self.grpc {
            if let Some(g) = s
                .header(HeaderMap::ResponseTrailers, "grpc-status")
                .and_then(parse_u32)
            {
                self.grpc_status = Some(g);
            }
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<(Scratch, Pending)> = RefCell::new(Default::default());
}

/// Request headers a retry policy matches on, read from Envoy when asked.
struct RequestHeaders<'a, 's>(&'a Stream<'s>);

impl HeaderLookup for RequestHeaders<'_, '_> {
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.0.header(HeaderMap::RequestHeaders, name) == Some(value.as_bytes())
    }
}

/// `on_http_filter_request_headers`: decide, then reject or strip and write retry headers.
pub fn on_request_headers(
    fc: &FilterConfig,
    s: &mut Stream<'_>,
    x: &mut Exchange,
    end_of_stream: bool,
) -> Status {
    #[cfg(feature = "abi-probe")]
    if let Some(p) = &fc.probe {
        return p.on_request_headers(s);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            let (sc, pending) = &mut *scratch;
            request_headers(fc, s, x, end_of_stream, sc, pending)
        }
        // Only a re-entered hook could find it borrowed; pass the request through untouched.
        Err(_) => Status::Continue,
    })
}

fn request_headers(
    fc: &FilterConfig,
    s: &mut Stream<'_>,
    x: &mut Exchange,
    end_of_stream: bool,
    sc: &mut Scratch,
    pending: &mut Pending,
) -> Status {
    let now = Instant::now();
    if end_of_stream {
        x.request_done = Some(now);
    }
    let cfg = fc.config();
    let worker = s.worker_index();
    let admission = {
        let parts = read_parts(fc.needs, s);
        let profile = profile_index(cfg, &parts, sc);
        sc.key(cfg.key_by, &parts);
        let method = s.header(HeaderMap::RequestHeaders, ":method");
        let method_text = text(method.unwrap_or_default());
        let path_text = text(
            s.header(HeaderMap::RequestHeaders, ":path")
                .unwrap_or_default(),
        );
        let content_type = s
            .header(HeaderMap::RequestHeaders, "content-type")
            .map(text);
        let lookup = RequestHeaders(s);
        let view = RequestView {
            method: &method_text,
            path: &path_text,
            content_type: content_type.as_deref(),
            headers: &lookup,
        };
        x.grpc = view.is_grpc();
        x.upgrade = s.header(HeaderMap::RequestHeaders, "upgrade").is_some()
            || method.is_some_and(|m| m.eq_ignore_ascii_case(b"CONNECT"));
        x.key.clear();
        x.key.push_str(sc.last_key());
        if cfg.mode == Mode::Disabled && cfg.overrides.is_empty() {
            None
        } else {
            Some(
                fc.engine
                    .decide(worker, &x.key, profile, &view, engine::ms_at(now), pending),
            )
        }
    };
    fc.metrics.emit(pending, s);
    let Some(a) = admission else {
        // `disabled` everywhere: nothing is decided or counted; client retry headers are still
        // stripped (SPEC: in every mode).
        edit_retry_headers(fc, s, 0, RetryPlan::None);
        return Status::Continue;
    };
    match a.decision {
        Decision::Reject(r) => {
            let reply = local_reply(&x.key, &r, x.grpc);
            let headers: Vec<(&str, &[u8])> = reply
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_slice()))
                .collect();
            s.send_response(reply.status, &headers, &reply.body, DETAILS);
            return Status::StopIteration;
        }
        Decision::DryRunReject(_) => x.dry_run_mark = true,
        Decision::Probe(id) => x.probe = Some(id),
        Decision::Allow | Decision::PassThrough => {}
    }
    edit_retry_headers(fc, s, a.profile, a.retry);
    x.worker = worker;
    x.record = a.record;
    x.max_attempts = a.max_attempts.max(1);
    Status::Continue
}

/// Strips the client's retry headers (per the profile) and writes the plan's.
fn edit_retry_headers(fc: &FilterConfig, s: &mut Stream<'_>, profile: usize, plan: RetryPlan) {
    let s = RefCell::new(s);
    // Which client headers are present is not read first: removing an absent one is harmless.
    fc.engine.profile(profile).retry.edit_headers(
        plan,
        u8::MAX,
        |h| {
            s.borrow_mut().remove_header(HeaderMap::RequestHeaders, h);
        },
        |n, v| {
            s.borrow_mut()
                .set_header(HeaderMap::RequestHeaders, n, v.as_bytes());
        },
    );
}

/// `on_http_filter_response_headers`: the dry-run mark; the status, grpc-status and the time.
pub fn on_response_headers(fc: &FilterConfig, s: &mut Stream<'_>, x: &mut Exchange) -> Status {
    #[cfg(feature = "abi-probe")]
    if let Some(p) = &fc.probe {
        return p.on_response_headers(s);
    }
    let _ = fc;
    if x.dry_run_mark {
        s.add_header(
            HeaderMap::ResponseHeaders,
            "x-meshbreaker-dry-run",
            b"would-reject",
        );
    }
    if !x.record {
        return Status::Continue;
    }
    x.response_at = Some(Instant::now());
    x.status = s
        .header(HeaderMap::ResponseHeaders, ":status")
        .and_then(parse_u32)
        .and_then(|v| u16::try_from(v).ok());
    // A websocket upgraded: what follows is a tunnel, not a response.
    x.upgrade |= x.status == Some(101);
    if x.grpc {
        // Trailers-only responses carry grpc-status in the headers. Only for gRPC requests: an
        // HTTP upstream's `grpc-status` header means nothing.
        if let Some(g) = s
            .header(HeaderMap::ResponseHeaders, "grpc-status")
            .and_then(parse_u32)
        {
            x.grpc_status = Some(g);
        }
    }
    Status::Continue
}

/// `on_http_filter_stream_complete`: the outcome, recorded (and merged when due).
pub fn on_stream_complete(fc: &FilterConfig, s: &mut Stream<'_>, x: &mut Exchange) {
    if !std::mem::take(&mut x.record) {
        return;
    }
    let now = Instant::now();
    let flags = s.attribute_int(Attribute::ResponseFlags).unwrap_or(0);
    let upstream_reset = flags & UPSTREAM_RESET_BITS != 0;
    let attempts = if x.max_attempts > 1 {
        s.attribute_int(Attribute::UpstreamRequestAttemptCount)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .or_else(|| {
                s.header(HeaderMap::ResponseHeaders, "x-envoy-attempt-count")
                    .and_then(parse_u32)
            })
            .unwrap_or(1)
            .clamp(1, x.max_attempts)
    } else {
        1
    };
    // The upstream's part: request complete → response headers (or, with none, now).
    let upstream_us = x.request_done.map_or(0, |done| {
        let until = x.response_at.unwrap_or(now);
        u64::try_from(until.saturating_duration_since(done).as_micros()).unwrap_or(u64::MAX)
    });
    let outcome = Outcome {
        http_status: x.status,
        grpc_status: x.grpc_status,
        upstream_reset,
        latency_us: (!x.upgrade).then_some(upstream_us),
        attempts,
    };
    let end = if x.status.is_none() && !upstream_reset {
        // No response and no upstream failure: the client went away (or a filter before this
        // one answered). That says nothing about the upstream.
        End::Abandoned {
            ran_us: upstream_us,
        }
    } else {
        End::Outcome(&outcome)
    };
    let upstream = if fc.engine.feed().is_some() {
        s.attribute_bytes(Attribute::UpstreamAddress)
    } else {
        None
    };
    let mut pending = Pending::default();
    fc.engine.complete(
        x.worker,
        &x.key,
        x.probe,
        end,
        upstream,
        engine::ms_at(now),
        &mut pending,
    );
    fc.metrics.emit(&mut pending, s);
}

/// `on_http_filter_config_scheduled`: the tick. With `reset_signals`, polls the sidecar first
/// when that is due ([`crate::resets`]), through Envoy's cluster.
pub fn on_tick(fc: &FilterConfig, envoy: &mut ConfigEnvoy<'_>) {
    let now = engine::now_ms();
    if let Some(feed) = fc.engine.feed() {
        let (req, notice) = feed.due(now);
        log_notice(notice);
        if let Some(req) = req {
            let headers: [(&str, &[u8]); 3] = [
                (":method", b"GET"),
                (":path", req.path.as_bytes()),
                (":authority", b"meshbreaker-sidecar"),
            ];
            match envoy.http_callout(&req.cluster, &headers, req.timeout_ms) {
                Ok(id) => feed.dispatched(fc.sender(), id, now),
                Err(e) => log_notice(feed.dispatch_failed(&e.to_string())),
            }
        }
    }
    let mut pending = Pending::default();
    fc.engine.tick(now, &mut pending);
    fc.metrics.emit(&mut pending, envoy);
}

/// `on_http_filter_config_http_callout_done`: the sidecar's answer to a poll.
pub fn on_callout_done(fc: &FilterConfig, id: u64, r: &CalloutResponse<'_>) {
    let Some(feed) = fc.engine.feed() else {
        return;
    };
    let answer = match r.end {
        // Envoy buffered the whole answer (up to its own limit); over the module's, it is not
        // copied.
        CalloutEnd::Response if r.body_len() > resets::MAX_BODY_BYTES => format!(
            "answer of {} bytes, over the {}-byte limit",
            r.body_len(),
            resets::MAX_BODY_BYTES
        ),
        CalloutEnd::Response => {
            let body = r.body();
            let notice = feed.on_response(fc.sender(), id, Ok((r.header(":status"), &body)));
            return log_notice(notice);
        }
        CalloutEnd::Reset => "the request was reset (is the sidecar running?)".to_string(),
        CalloutEnd::TooLarge => "answer over Envoy's buffer limit".to_string(),
        CalloutEnd::Other(n) => format!("callout failed ({n})"),
    };
    log_notice(feed.on_response(fc.sender(), id, Err(answer)));
}

fn log_notice(n: Option<resets::Notice>) {
    match n {
        Some(n @ resets::Notice::Down(_)) => abi::log(LogLevel::Warn, &n.to_string()),
        Some(n @ resets::Notice::Back { .. }) => abi::log(LogLevel::Info, &n.to_string()),
        None => {}
    }
}

/// The raw parts the key needs, borrowed from Envoy for the rest of the hook.
fn read_parts<'s>(needs: Needs, s: &'s Stream<'_>) -> RawParts<'s> {
    let attr = |need: bool, id: Attribute| {
        if need {
            s.attribute_bytes(id).unwrap_or_default()
        } else {
            &[]
        }
    };
    RawParts {
        cluster: attr(needs.cluster, Attribute::XdsClusterName),
        route: attr(needs.route, Attribute::XdsRouteName),
        authority: if needs.authority {
            s.header(HeaderMap::RequestHeaders, ":authority")
                .unwrap_or_default()
        } else {
            &[]
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::fake::{self, FakeEnvoy};
    use policy_core::breaker::State;
    use policy_core::retry::ROUTER_RETRY_HEADERS;

    fn headers(fc: &FilterConfig, envoy: &mut FakeEnvoy) -> Status {
        on_request_headers(fc, &mut envoy.stream(), &mut Exchange::default(), true)
    }

    fn configured(json: &str) -> (FakeEnvoy, FilterConfig) {
        let mut envoy = FakeEnvoy::default();
        let fc = config_new(&mut envoy.config(), b"meshbreaker", json.as_bytes()).unwrap();
        (envoy, fc)
    }

    #[test]
    fn load_names_the_field_of_a_bad_config() {
        let err = load(
            b"meshbreaker",
            br#"{"breaker":{"error_rate_threshold":1.5}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("meshbreaker: config error at breaker.error_rate_threshold: "),
            "{err}"
        );
    }

    #[test]
    fn load_refuses_another_filter_name_on_one_escaped_line() {
        let err = load(b"other\nfilter", b"{}").unwrap_err();
        assert!(
            err.starts_with("meshbreaker: config error at filter_name: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn config_new_logs_one_line_and_refuses_a_bad_config() {
        let mut envoy = FakeEnvoy::default();
        fake::take_logs();
        let got = config_new(&mut envoy.config(), b"meshbreaker", br#"{"max_keys":0}"#);
        assert!(got.is_none());
        let logs = fake::take_logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].0, LogLevel::Error as i32);
        assert!(
            logs[0]
                .1
                .starts_with("meshbreaker: config error at max_keys: "),
            "{logs:?}"
        );
        assert!(
            envoy.defined.is_empty(),
            "no metric for a refused configuration"
        );
    }

    #[test]
    fn config_new_defines_the_spec_metrics_with_their_labels() {
        let (envoy, _) = configured("{}");
        let defined: Vec<(fake::Kind, &str, Vec<&str>)> = envoy
            .defined
            .iter()
            .map(|(k, n, l)| (*k, n.as_str(), l.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            defined,
            [
                (fake::Kind::Counter, REQUESTS_TOTAL, vec!["key", "decision"]),
                (
                    fake::Kind::Counter,
                    names::TRANSITIONS_TOTAL,
                    vec!["key", "to"]
                ),
                (
                    fake::Kind::Counter,
                    names::RETRY_BUDGET_DENIED_TOTAL,
                    vec!["key"]
                ),
                (fake::Kind::Counter, names::KERNEL_RESETS_TOTAL, vec!["key"]),
                (fake::Kind::Gauge, names::STATE, vec!["key"]),
                (fake::Kind::Gauge, names::ERROR_RATE_PPM, vec!["key"]),
                (fake::Kind::Gauge, names::LATENCY_P95_MS, vec!["key"]),
            ]
        );
    }

    #[test]
    fn config_new_is_refused_when_envoy_refuses_the_metric() {
        let mut envoy = FakeEnvoy {
            frozen: true,
            ..FakeEnvoy::default()
        };
        assert!(config_new(&mut envoy.config(), b"meshbreaker", b"{}").is_none());
    }

    #[test]
    fn request_headers_strip_client_retry_headers_and_count_allowed() {
        let (mut envoy, fc) = configured("{}");
        envoy
            .attrs_str
            .push((Attribute::XdsClusterName as i32, b"Backend".to_vec()));
        for h in ROUTER_RETRY_HEADERS {
            envoy.push_request_header(h, b"5");
        }
        envoy.push_request_header("x-other", b"kept");
        let status = headers(&fc, &mut envoy);
        assert_eq!(status, Status::Continue);
        for h in ROUTER_RETRY_HEADERS {
            // Stripped, or replaced by the default policy's own value.
            assert_ne!(
                envoy.request_header(h),
                Some(&b"5"[..]),
                "{h} was not stripped"
            );
        }
        assert_eq!(envoy.request_header("x-other"), Some(&b"kept"[..]));
        assert!(
            envoy
                .counters
                .contains(&(1, vec![b"backend".to_vec(), b"allowed".to_vec()], 1)),
            "{:?}",
            envoy.counters
        );
    }

    #[test]
    fn request_headers_keep_retry_headers_when_stripping_is_off() {
        let (mut envoy, fc) =
            configured(r#"{"retry":{"strip_downstream_headers":false,"policies":[]}}"#);
        envoy.push_request_header("x-envoy-max-retries", b"5");
        headers(&fc, &mut envoy);
        assert_eq!(envoy.request_header("x-envoy-max-retries"), Some(&b"5"[..]));
    }

    /// One exchange through the hooks: request headers, a response with `status`, completion.
    fn exchange(
        fc: &FilterConfig,
        defined: &FakeEnvoy,
        cluster: &[u8],
        status: &[u8],
    ) -> (FakeEnvoy, Status) {
        // The stream's metrics are its configuration's.
        let mut envoy = FakeEnvoy {
            defined: defined.defined.clone(),
            ..FakeEnvoy::default()
        };
        envoy
            .attrs_str
            .push((Attribute::XdsClusterName as i32, cluster.to_vec()));
        envoy.push_request_header(":method", b"POST");
        let mut x = Exchange::default();
        let st = on_request_headers(fc, &mut envoy.stream(), &mut x, true);
        if st == Status::Continue {
            envoy.headers[HeaderMap::ResponseHeaders as usize]
                .push((b":status".to_vec(), status.to_vec()));
            on_response_headers(fc, &mut envoy.stream(), &mut x);
        }
        on_stream_complete(fc, &mut envoy.stream(), &mut x);
        (envoy, st)
    }

    #[test]
    fn upstream_failures_trip_at_the_tick_and_the_reply_is_the_filters() {
        let (mut cfg_envoy, fc) = configured(
            r#"{"breaker":{"window":"2s","buckets":4,"min_requests":5,"error_rate_threshold":0.5}}"#,
        );
        for _ in 0..5 {
            let (_, st) = exchange(&fc, &cfg_envoy, b"hook_trip", b"500");
            assert_eq!(st, Status::Continue);
        }
        std::thread::sleep(std::time::Duration::from_millis(110));
        on_tick(&fc, &mut cfg_envoy.config());
        assert!(
            cfg_envoy
                .counters
                .iter()
                .any(|(_, l, v)| l == &[b"hook_trip".to_vec(), b"open".to_vec()] && *v == 1),
            "{:?}",
            cfg_envoy.counters
        );
        let (envoy, st) = exchange(&fc, &cfg_envoy, b"hook_trip", b"200");
        assert_eq!(st, Status::StopIteration);
        let (status, headers, body, details) = envoy.sent.unwrap();
        assert_eq!(status, 503);
        assert!(headers.contains(&(b"x-meshbreaker".to_vec(), b"open".to_vec())));
        assert!(String::from_utf8(body)
            .unwrap()
            .contains(r#""key":"hook_trip""#));
        assert_eq!(details.as_deref(), Some(DETAILS.as_bytes()));
        assert!(envoy
            .counters
            .iter()
            .any(|(_, l, _)| l == &[b"hook_trip".to_vec(), b"rejected".to_vec()]));
    }

    fn sidecar_body(started: u64, resets: u64) -> Vec<u8> {
        format!(
            r#"{{"started_at_ms":{started},"now_ms":{n},"peers":[{{"addr":"10.1.2.3","port":8080,"peer":"10.1.2.3:8080","resets":{resets},"refused":0,"timeouts":0,"last_ms":{n}}}]}}"#,
            n = started + 10
        )
        .into_bytes()
    }

    #[test]
    fn kernel_resets_polled_through_the_cluster_trip_the_key_that_used_the_host() {
        let (mut cfg_envoy, fc) = configured(
            r#"{"breaker":{"window":"2s","buckets":4,"min_requests":100000,"latency_p95_threshold":null},
                "reset_signals":{"cluster":"sidecar_unit","poll_interval":"100ms","max_resets_per_second":1}}"#,
        );
        // A request whose upstream is the host the sidecar reports about.
        let mut envoy = FakeEnvoy {
            defined: cfg_envoy.defined.clone(),
            ..FakeEnvoy::default()
        };
        envoy
            .attrs_str
            .push((Attribute::XdsClusterName as i32, b"kr_unit".to_vec()));
        envoy
            .attrs_str
            .push((Attribute::UpstreamAddress as i32, b"10.1.2.3:8080".to_vec()));
        let mut x = Exchange::default();
        assert_eq!(
            on_request_headers(&fc, &mut envoy.stream(), &mut x, true),
            Status::Continue
        );
        envoy.headers[HeaderMap::ResponseHeaders as usize]
            .push((b":status".to_vec(), b"200".to_vec()));
        on_response_headers(&fc, &mut envoy.stream(), &mut x);
        on_stream_complete(&fc, &mut envoy.stream(), &mut x);

        // The tick polls through Envoy's cluster, with the headers a callout needs.
        on_tick(&fc, &mut cfg_envoy.config());
        let (cluster, headers, timeout) = cfg_envoy.callouts.last().cloned().unwrap();
        assert_eq!((cluster.as_str(), timeout), ("sidecar_unit", 1_000));
        for (k, v) in [(":method", "GET"), (":path", "/v1/resets")] {
            assert!(
                headers.contains(&(k.as_bytes().to_vec(), v.as_bytes().to_vec())),
                "{headers:?}"
            );
        }
        assert!(headers.iter().any(|(k, _)| k == b":authority"));
        let answer = |id: u64, body: Vec<u8>| {
            let r = fake::FakeResponse::new(&[(":status", b"200")], &[&body[..3], &body[3..]]);
            on_callout_done(&fc, id, &r.view(CalloutEnd::Response));
        };
        answer(cfg_envoy.callouts.len() as u64, sidecar_body(7, 100));
        // The first answer is the baseline; ten new resets towards the host come next.
        std::thread::sleep(std::time::Duration::from_millis(110));
        on_tick(&fc, &mut cfg_envoy.config());
        answer(cfg_envoy.callouts.len() as u64, sidecar_body(7, 110));
        std::thread::sleep(std::time::Duration::from_millis(110));
        fake::take_logs();
        on_tick(&fc, &mut cfg_envoy.config());
        let kernel = |c: &Vec<(usize, Vec<Vec<u8>>, u64)>| {
            c.iter()
                .filter(|(id, l, _)| *id == 4 && l == &[b"kr_unit".to_vec()])
                .map(|(_, _, v)| v)
                .sum::<u64>()
        };
        assert_eq!(kernel(&cfg_envoy.counters), 10, "{:?}", cfg_envoy.counters);
        assert_eq!(fc.engine.state_of("kr_unit"), Some(State::Open));
        let logs = fake::take_logs();
        assert!(
            logs.iter()
                .any(|(_, l)| l.contains("key=kr_unit") && l.contains("reason=kernel_resets")),
            "{logs:?}"
        );
    }

    #[test]
    fn a_sidecar_that_cannot_be_reached_is_logged_once() {
        let (mut cfg_envoy, fc) = configured(
            r#"{"reset_signals":{"cluster":"sidecar_unit_down","poll_interval":"100ms","max_resets_per_second":1}}"#,
        );
        fake::take_logs();
        cfg_envoy.callout_refusal = 2;
        on_tick(&fc, &mut cfg_envoy.config());
        std::thread::sleep(std::time::Duration::from_millis(110));
        cfg_envoy.callout_refusal = 0;
        on_tick(&fc, &mut cfg_envoy.config());
        let r = fake::FakeResponse::new(&[], &[]);
        on_callout_done(
            &fc,
            cfg_envoy.callouts.len() as u64,
            &r.view(CalloutEnd::Reset),
        );
        let down: Vec<_> = fake::take_logs()
            .into_iter()
            .filter(|(_, l)| l.contains("reset sidecar unavailable"))
            .collect();
        assert_eq!(down.len(), 1, "{down:?}");
        assert!(down[0].1.contains("no such cluster"), "{down:?}");
    }

    #[test]
    fn request_headers_count_a_missing_cluster_as_unknown() {
        let (mut envoy, fc) = configured("{}");
        headers(&fc, &mut envoy);
        assert_eq!(envoy.counters[0].1[0], b"_unknown");
    }

    #[test]
    fn request_headers_key_by_authority_reads_non_utf8_bytes() {
        let (mut envoy, fc) = configured(r#"{"key_by":"authority"}"#);
        envoy.push_request_header(":authority", b"Caf\xe9:8080");
        headers(&fc, &mut envoy);
        assert_eq!(envoy.counters[0].1[0], b"caf_:8080");
    }
}
