//! Retry decisions for Envoy's router (SPEC "retry.policies", "strip_downstream_headers", "budget").
//!
//! Envoy retries are driven by request headers (`x-envoy-retry-on`, `x-envoy-max-retries`, …) that
//! the router reads; the shipped route has a `retry_policy` with backoff but no `retry_on`, so the
//! headers this module produces are the *only* thing that makes Envoy retry. That gives three jobs:
//!
//! 1. never let a client choose its own retries: [`ROUTER_RETRY_HEADERS`] are stripped first;
//! 2. pick the first policy whose match holds ([`CompiledRetry::select`]) and write its headers,
//!    which are rendered once at configure time so the per-request path allocates nothing;
//! 3. switch retries off (`x-envoy-max-retries: 0`) for HALF_OPEN probes — a probe must measure
//!    the upstream, not be amplified into it — and when the retry budget is spent
//!    ([`budget_allows_retry`]), so retries cannot multiply load on a struggling upstream.
//!
//! Decisions (SPEC leaves them open):
//! - No policy matches → no retry header is written. With stripping on and the shipped route that
//!   means no retries; with stripping off, whatever the client sent stays in force, as configured.
//! - `mode: disabled` → no retry header is written (SPEC), but stripping still happens.
//! - A policy with `retriable_status_codes` gets `retriable-status-codes` added to its
//!   `x-envoy-retry-on` if missing: Envoy ignores the codes otherwise, and SPEC says a policy
//!   "may set" them, meaning they take effect.
//! - `per_try_timeout` is written in whole milliseconds, rounded up.
//! - gRPC is `application/grpc` exactly, or followed by `+` (`+proto`, `+json`) or `;` parameters,
//!   case-insensitive — Envoy's own definition. `application/grpc-web` is a different protocol
//!   and is not gRPC here.

use std::fmt::Write as _;
use std::time::Duration;

use crate::breaker::Decision;
use crate::config::{BudgetConfig, Mode, RetryConfig, RetryPolicy};

pub const RETRY_ON_HEADER: &str = "x-envoy-retry-on";
pub const RETRY_GRPC_ON_HEADER: &str = "x-envoy-retry-grpc-on";
pub const MAX_RETRIES_HEADER: &str = "x-envoy-max-retries";
pub const PER_TRY_TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-per-try-timeout-ms";
pub const RETRIABLE_STATUS_CODES_HEADER: &str = "x-envoy-retriable-status-codes";

/// The router headers that decide retries; a client must not be able to send them when
/// `strip_downstream_headers` is on (SPEC: stripped in every mode).
pub const ROUTER_RETRY_HEADERS: [&str; 5] = [
    RETRY_ON_HEADER,
    RETRY_GRPC_ON_HEADER,
    MAX_RETRIES_HEADER,
    PER_TRY_TIMEOUT_HEADER,
    RETRIABLE_STATUS_CODES_HEADER,
];

/// The one header that switches retries off for a request, whatever else was sent.
pub const NO_RETRIES: (&str, &str) = (MAX_RETRIES_HEADER, "0");

/// True for a gRPC request content-type: `application/grpc`, `application/grpc+proto`,
/// `application/grpc;charset=…` (case-insensitive); not `application/grpc-web`.
pub fn is_grpc(content_type: &str) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let ct = content_type.trim_start().as_bytes();
    match ct.get(..GRPC.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(GRPC) => {
            matches!(ct.get(GRPC.len()), None | Some(b'+' | b';' | b' ' | b'\t'))
        }
        _ => false,
    }
}

/// Request header lookup for `match.headers`; names are asked in lower case.
///
/// Implemented for header lists and, through [`HeaderFn`], for a host call such as proxy-wasm's
/// `get_http_request_header`, which is only made when a policy actually matches on headers.
pub trait HeaderLookup {
    /// True when header `name` is present with exactly `value`.
    fn header_is(&self, name: &str, value: &str) -> bool;
}

impl HeaderLookup for () {
    fn header_is(&self, _: &str, _: &str) -> bool {
        false
    }
}

impl HeaderLookup for &[(&str, &str)] {
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value)
    }
}

impl<const N: usize> HeaderLookup for [(&str, &str); N] {
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.as_slice().header_is(name, value)
    }
}

impl HeaderLookup for Vec<(&str, &str)> {
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.as_slice().header_is(name, value)
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
    }
}

/// Adapts a `name -> Option<bytes>` function (e.g. a proxy-wasm host call) to [`HeaderLookup`].
/// Header values are bytes, not text: HTTP allows obs-text (0x80–0xFF), so the comparison is
/// byte-wise and a value that is not UTF-8 simply does not match.
pub struct HeaderFn<F>(pub F);

impl<F: Fn(&str) -> Option<Vec<u8>>> HeaderLookup for HeaderFn<F> {
    fn header_is(&self, name: &str, value: &str) -> bool {
        (self.0)(name).is_some_and(|v| v == value.as_bytes())
    }
}

/// What a policy match looks at: the request's method, `:path`, content-type and headers.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub headers: &'a dyn HeaderLookup,
}

impl RequestView<'_> {
    pub fn is_grpc(&self) -> bool {
        self.content_type.is_some_and(is_grpc)
    }
}

/// One retry policy, ready for the hot path: its match and its rendered router headers.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPolicy {
    name: String,
    grpc: Option<bool>,
    methods: Vec<String>,
    path_prefix: Option<String>,
    match_headers: Vec<(String, String)>,
    max_retries: u32,
    router_headers: Vec<(&'static str, String)>,
}

impl CompiledPolicy {
    pub fn new(policy: &RetryPolicy) -> Self {
        let mut retry_on = policy.retry_on.clone();
        if !policy.retriable_status_codes.is_empty()
            && !retry_on.iter().any(|c| c == "retriable-status-codes")
        {
            retry_on.push("retriable-status-codes".into());
        }
        let mut router_headers = Vec::with_capacity(5);
        if !retry_on.is_empty() {
            router_headers.push((RETRY_ON_HEADER, comma_list(&retry_on)));
        }
        if !policy.retry_grpc_on.is_empty() {
            router_headers.push((RETRY_GRPC_ON_HEADER, comma_list(&policy.retry_grpc_on)));
        }
        router_headers.push((MAX_RETRIES_HEADER, policy.max_retries.to_string()));
        if let Some(timeout) = policy.per_try_timeout {
            router_headers.push((PER_TRY_TIMEOUT_HEADER, ceil_millis(timeout).to_string()));
        }
        if !policy.retriable_status_codes.is_empty() {
            router_headers.push((
                RETRIABLE_STATUS_CODES_HEADER,
                comma_list(&policy.retriable_status_codes),
            ));
        }
        CompiledPolicy {
            name: policy.name.clone(),
            grpc: policy.matcher.grpc,
            methods: policy.matcher.methods.clone(),
            path_prefix: policy.matcher.path_prefix.clone(),
            match_headers: policy.matcher.headers.clone(),
            max_retries: policy.max_retries,
            router_headers,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The exact router headers of this policy, in the order of [`ROUTER_RETRY_HEADERS`];
    /// empty `retry_on`/`retry_grpc_on`/`retriable_status_codes` and an unset `per_try_timeout`
    /// are left out, `x-envoy-max-retries` is always there.
    pub fn headers(&self) -> &[(&'static str, String)] {
        &self.router_headers
    }

    /// True when every matcher present holds (`grpc`, `methods`, `path_prefix`, `headers`).
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(grpc) = self.grpc {
            if req.is_grpc() != grpc {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        if let Some(prefix) = &self.path_prefix {
            if !req.path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        self.match_headers
            .iter()
            .all(|(n, v)| req.headers.header_is(n, v))
    }
}

/// Whole milliseconds, rounded up (saturating: u64 milliseconds are 584 million years).
fn ceil_millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_nanos().div_ceil(1_000_000)))
}

/// `a,b,c`: the list syntax of Envoy's retry headers. (One plain loop instead of `join`, whose
/// generic code the wasm filter would carry once per element type.)
fn comma_list<T: std::fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{item}");
    }
    out
}

/// The retry configuration of one key, compiled at configure time.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRetry {
    strip_downstream_headers: bool,
    policies: Vec<CompiledPolicy>,
}

type StaticHeader = (&'static str, &'static str);

/// What to write on one request, from [`CompiledRetry::decide`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision<'p> {
    /// Write no retry header: `mode: disabled`, or no policy matched.
    NoHeaders,
    /// Write the policy's headers.
    Policy(&'p CompiledPolicy),
    /// A HALF_OPEN probe: write `x-envoy-max-retries: 0`.
    Probe,
    /// The policy would retry but the budget is spent: write `x-envoy-max-retries: 0` and count
    /// `meshbreaker_retry_budget_denied_total`.
    BudgetDenied(&'p CompiledPolicy),
}

impl<'p> RetryDecision<'p> {
    /// The headers to set on the request (after stripping); allocation-free.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &'p str)> {
        let (policy, off): (&'p [(&'static str, String)], &'static [StaticHeader]) = match *self {
            RetryDecision::NoHeaders => (&[], &[]),
            RetryDecision::Policy(p) => (p.headers(), &[]),
            RetryDecision::Probe | RetryDecision::BudgetDenied(_) => (&[], &[NO_RETRIES]),
        };
        policy
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(off.iter().copied())
    }

    pub fn budget_denied(&self) -> bool {
        matches!(self, RetryDecision::BudgetDenied(_))
    }

    /// The most upstream attempts Envoy can make for this request under this decision:
    /// `max_retries + 1` for a policy, 1 for probes and budget-denied requests. `None` when no
    /// header is written (no policy matched, or `disabled`), so the route's own policy decides.
    pub fn max_attempts(&self) -> Option<u32> {
        match *self {
            RetryDecision::Policy(p) => Some(p.max_retries.saturating_add(1)),
            RetryDecision::Probe | RetryDecision::BudgetDenied(_) => Some(1),
            RetryDecision::NoHeaders => None,
        }
    }
}

impl CompiledRetry {
    pub fn new(cfg: &RetryConfig) -> Self {
        CompiledRetry {
            strip_downstream_headers: cfg.strip_downstream_headers,
            policies: cfg.policies.iter().map(CompiledPolicy::new).collect(),
        }
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    /// The client headers to remove before anything else: [`ROUTER_RETRY_HEADERS`] when
    /// `strip_downstream_headers` is on (in every mode), none otherwise.
    pub fn headers_to_strip(&self) -> &'static [&'static str] {
        if self.strip_downstream_headers {
            &ROUTER_RETRY_HEADERS
        } else {
            &[]
        }
    }

    /// The first policy whose match holds.
    pub fn select(&self, req: &RequestView<'_>) -> Option<&CompiledPolicy> {
        self.policies.iter().find(|p| p.matches(req))
    }

    /// The whole retry decision for an allowed request.
    ///
    /// `probe`: the request is a HALF_OPEN probe. `budget_allows`: [`budget_allows_retry`] for the
    /// key's window right now. Only a request whose policy would retry (`max_retries > 0`) can be
    /// [`RetryDecision::BudgetDenied`].
    pub fn decide(
        &self,
        req: &RequestView<'_>,
        mode: Mode,
        probe: bool,
        budget_allows: bool,
    ) -> RetryDecision<'_> {
        if mode == Mode::Disabled {
            return RetryDecision::NoHeaders;
        }
        if probe {
            return RetryDecision::Probe;
        }
        match self.select(req) {
            None => RetryDecision::NoHeaders,
            Some(p) if p.max_retries > 0 && !budget_allows => RetryDecision::BudgetDenied(p),
            Some(p) => RetryDecision::Policy(p),
        }
    }
}

/// The most upstream attempts any request can make (`max_retries` ≤ 10, plus the first).
pub const MAX_ATTEMPTS: u32 = 11;

/// Which retry headers a request gets: what a shell remembers between deciding a request and
/// writing its headers ([`CompiledRetry::plan`], [`CompiledRetry::edit_headers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPlan {
    None,
    /// The headers of policy `i` ([`CompiledRetry::policies`]).
    Policy(usize),
    /// `x-envoy-max-retries: 0`.
    Off,
}

impl CompiledRetry {
    /// The retry plan of a request the breaker decided `decision` on, and the most attempts it
    /// allows. A rejected request gets no plan (it never reaches the router) and one attempt;
    /// with no header of ours the route's own retry policy (or, without stripping, the client's)
    /// is in force, so only the global bound [`MAX_ATTEMPTS`] applies.
    pub fn plan(
        &self,
        mode: Mode,
        decision: &Decision,
        req: &RequestView<'_>,
        budget_allows: bool,
    ) -> (RetryPlan, u32) {
        let probe = match decision {
            Decision::Reject(_) => return (RetryPlan::None, 1),
            Decision::Probe(_) => true,
            _ => false,
        };
        let rd = self.decide(req, mode, probe, budget_allows);
        let plan = match rd {
            RetryDecision::NoHeaders => RetryPlan::None,
            RetryDecision::Probe | RetryDecision::BudgetDenied(_) => RetryPlan::Off,
            RetryDecision::Policy(pol) => self
                .policies
                .iter()
                .position(|x| std::ptr::eq(x, pol))
                .map_or(RetryPlan::None, RetryPlan::Policy),
        };
        (plan, rd.max_attempts().unwrap_or(MAX_ATTEMPTS))
    }

    /// The request header edits of `plan`: the client's retry headers are stripped (per
    /// `strip_downstream_headers`) and the plan's written. A header the plan writes is replaced
    /// (`set`, which removes every client value); the others are removed (`remove`) only when the
    /// client sent them (`present`: bit `i` for `ROUTER_RETRY_HEADERS[i]`; all ones when unknown).
    pub fn edit_headers(
        &self,
        plan: RetryPlan,
        present: u8,
        mut remove: impl FnMut(&'static str),
        mut set: impl FnMut(&'static str, &str),
    ) {
        let written: &[(&'static str, String)] = match plan {
            RetryPlan::Policy(i) => self.policies.get(i).map_or(&[], |x| x.headers()),
            _ => &[],
        };
        let off = matches!(plan, RetryPlan::Off);
        for (i, &h) in self.headers_to_strip().iter().enumerate() {
            let overwritten =
                written.iter().any(|(n, _)| *n == h) || (off && h == MAX_RETRIES_HEADER);
            if !overwritten && present & (1 << i) != 0 {
                remove(h);
            }
        }
        for (n, v) in written {
            set(n, v);
        }
        if off {
            set(NO_RETRIES.0, NO_RETRIES.1);
        }
    }
}

/// How many retries the budget grants over a window: `ratio × requests + min_retries_per_second ×
/// window seconds` (SPEC "budget").
///
/// Tower's retry budget deposits `ratio` per request and withdraws one per retry; here both sides
/// are counted in the breaker's merged window, so the balance is a pure function of the counts and
/// old requests and retries leave it together as their buckets expire.
pub fn retry_allowance(cfg: &BudgetConfig, window: Duration, requests: u64) -> f64 {
    cfg.ratio * requests as f64 + cfg.min_retries_per_second * window.as_secs_f64()
}

/// True while the retries made in the window stay below the allowance.
///
/// `window` is the configured `breaker.window`; `requests` the client requests (first attempts)
/// and `retries` the retried attempts (`x-envoy-attempt-count` − 1, summed) in that window. The
/// check is made when a request starts, so requests already in flight can overshoot the budget by
/// at most their `max_retries` each.
pub fn budget_allows_retry(
    cfg: &BudgetConfig,
    window: Duration,
    requests: u64,
    retries: u64,
) -> bool {
    (retries as f64) < retry_allowance(cfg, window, requests)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::{Config, PolicyMatch};

    fn compiled(json: &str) -> CompiledRetry {
        CompiledRetry::new(&Config::parse(json.as_bytes()).unwrap().retry)
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        ct: Option<&'a str>,
        headers: &'a dyn HeaderLookup,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            content_type: ct,
            headers,
        }
    }

    fn selected(r: &CompiledRetry, v: &RequestView<'_>) -> Option<String> {
        r.select(v).map(|p| p.name().to_string())
    }

    fn owned<'h>(h: &'h [(&'static str, String)]) -> Vec<(&'static str, &'h str)> {
        h.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    // ---- plans and header edits (what both shells write) ----

    fn edits(r: &CompiledRetry, plan: RetryPlan, present: u8) -> Vec<String> {
        let out = std::cell::RefCell::new(Vec::new());
        r.edit_headers(
            plan,
            present,
            |h| out.borrow_mut().push(format!("-{h}")),
            |h, v| out.borrow_mut().push(format!("{h}={v}")),
        );
        out.into_inner()
    }

    #[test]
    fn plan_follows_the_decision() {
        use crate::breaker::Rejection;
        use crate::window::TripReason;
        let r = compiled(r#"{"retry":{"policies":[{"name":"all","max_retries":2}]}}"#);
        let v = req("GET", "/", None, &());
        assert_eq!(
            r.plan(Mode::Enforce, &Decision::Allow, &v, true),
            (RetryPlan::Policy(0), 3)
        );
        assert_eq!(
            r.plan(Mode::Enforce, &Decision::Allow, &v, false),
            (RetryPlan::Off, 1),
            "budget spent"
        );
        assert_eq!(
            r.plan(Mode::Enforce, &Decision::Probe(1), &v, true),
            (RetryPlan::Off, 1)
        );
        let rejected = Decision::Reject(Rejection {
            reason: TripReason::ErrorRate,
            retry_after_s: 1,
        });
        assert_eq!(
            r.plan(Mode::Enforce, &rejected, &v, true),
            (RetryPlan::None, 1)
        );
        assert_eq!(
            r.plan(Mode::Disabled, &Decision::PassThrough, &v, true),
            (RetryPlan::None, MAX_ATTEMPTS)
        );
    }

    #[test]
    fn edits_strip_only_what_the_client_sent_and_write_the_plan() {
        let r = compiled(r#"{"retry":{"policies":[{"name":"all","max_retries":2}]}}"#);
        let got = edits(&r, RetryPlan::Policy(0), 1 << 3);
        assert_eq!(got[0], format!("-{PER_TRY_TIMEOUT_HEADER}"));
        assert!(got.contains(&format!("{MAX_RETRIES_HEADER}=2")), "{got:?}");
        assert_eq!(
            edits(&r, RetryPlan::Off, u8::MAX)
                .iter()
                .filter(|e| e.contains(MAX_RETRIES_HEADER))
                .collect::<Vec<_>>(),
            [&format!("{MAX_RETRIES_HEADER}=0")],
            "the written header is set, not also removed"
        );
        assert!(edits(&r, RetryPlan::None, 0).is_empty());
        let keep = compiled(r#"{"retry":{"strip_downstream_headers":false}}"#);
        assert!(edits(&keep, RetryPlan::None, u8::MAX).is_empty());
    }

    // ---- gRPC detection ----

    #[test]
    fn detects_grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "Application/GRPC",
            "application/grpc; charset=utf-8",
            "application/grpc;foo",
        ] {
            assert!(is_grpc(ct), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
            "",
            "text/application/grpc",
        ] {
            assert!(!is_grpc(ct), "{ct}");
        }
    }

    // ---- stripping ----

    #[test]
    fn strip_list_is_the_five_router_retry_headers() {
        assert_eq!(
            ROUTER_RETRY_HEADERS,
            [
                "x-envoy-retry-on",
                "x-envoy-retry-grpc-on",
                "x-envoy-max-retries",
                "x-envoy-upstream-rq-per-try-timeout-ms",
                "x-envoy-retriable-status-codes",
            ]
        );
    }

    #[test]
    fn strips_only_when_configured() {
        assert_eq!(compiled("{}").headers_to_strip(), ROUTER_RETRY_HEADERS);
        assert!(
            compiled(r#"{"retry": {"strip_downstream_headers": false}}"#)
                .headers_to_strip()
                .is_empty()
        );
    }

    // ---- policy selection ----

    #[test]
    fn default_policies_route_grpc_idempotent_and_unsafe_requests() {
        let r = compiled("{}");
        let none = ();
        assert_eq!(
            selected(
                &r,
                &req("POST", "/pkg.Svc/Call", Some("application/grpc"), &none)
            )
            .as_deref(),
            Some("grpc")
        );
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert_eq!(
                selected(&r, &req(m, "/", None, &none)).as_deref(),
                Some("idempotent"),
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "get"] {
            assert_eq!(
                selected(&r, &req(m, "/", Some("application/json"), &none)).as_deref(),
                Some("unsafe"),
                "{m}"
            );
        }
    }

    #[test]
    fn first_matching_policy_wins_in_list_order() {
        let r = compiled(
            r#"{"retry": {"policies": [
                {"name": "api", "match": {"path_prefix": "/api"}},
                {"name": "get", "match": {"methods": ["GET"]}},
                {"name": "all"}
            ]}}"#,
        );
        let none = ();
        assert_eq!(
            selected(&r, &req("GET", "/api/x", None, &none)).as_deref(),
            Some("api")
        );
        assert_eq!(
            selected(&r, &req("GET", "/other", None, &none)).as_deref(),
            Some("get")
        );
        assert_eq!(
            selected(&r, &req("POST", "/other", None, &none)).as_deref(),
            Some("all")
        );
    }

    #[test]
    fn no_policy_selected_when_none_matches() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "get", "match": {"methods": ["GET"]}}]}}"#,
        );
        assert!(r.select(&req("POST", "/", None, &())).is_none());
        assert!(compiled(r#"{"retry": {"policies": []}}"#)
            .select(&req("GET", "/", None, &()))
            .is_none());
    }

    #[test]
    fn grpc_false_matches_only_non_grpc() {
        let r =
            compiled(r#"{"retry": {"policies": [{"name": "plain", "match": {"grpc": false}}]}}"#);
        assert!(r
            .select(&req("POST", "/", Some("application/json"), &()))
            .is_some());
        assert!(r.select(&req("POST", "/", None, &())).is_some());
        assert!(r
            .select(&req("POST", "/", Some("application/grpc+proto"), &()))
            .is_none());
    }

    #[test]
    fn path_prefix_matches_the_start_of_the_path() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "p", "match": {"path_prefix": "/api/v1"}}]}}"#,
        );
        assert!(r.select(&req("GET", "/api/v1", None, &())).is_some());
        assert!(r
            .select(&req("GET", "/api/v1/users?x=1", None, &()))
            .is_some());
        assert!(r.select(&req("GET", "/api/v2", None, &())).is_none());
        assert!(r.select(&req("GET", "/API/v1", None, &())).is_none());
    }

    #[test]
    fn header_match_needs_every_header_with_exact_value() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "h", "match": {"headers": {"X-Class": "bulk", "x-tenant": "a"}}}]}}"#,
        );
        let both = [("x-class", "bulk"), ("X-Tenant", "a")];
        let wrong = [("x-class", "Bulk"), ("x-tenant", "a")];
        let one = [("x-class", "bulk")];
        assert!(r.select(&req("GET", "/", None, &both)).is_some());
        assert!(r.select(&req("GET", "/", None, &wrong)).is_none());
        assert!(r.select(&req("GET", "/", None, &one)).is_none());
        let owned_headers = vec![
            ("x-class".to_string(), "bulk".to_string()),
            ("x-tenant".to_string(), "a".to_string()),
        ];
        assert!(r.select(&req("GET", "/", None, &owned_headers)).is_some());
        let host = HeaderFn(|n: &str| match n {
            "x-class" => Some(b"bulk".to_vec()),
            "x-tenant" => Some(b"a".to_vec()),
            _ => None,
        });
        assert!(r.select(&req("GET", "/", None, &host)).is_some());
        let obs_text = HeaderFn(|n: &str| match n {
            "x-class" => Some(b"bulk\xff".to_vec()),
            "x-tenant" => Some(b"a".to_vec()),
            _ => None,
        });
        assert!(r.select(&req("GET", "/", None, &obs_text)).is_none());
    }

    #[test]
    fn all_matchers_must_hold_together() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "x", "match": {"grpc": true, "methods": ["POST"],
                "path_prefix": "/pkg.", "headers": {"x-a": "1"}}}]}}"#,
        );
        let h = [("x-a", "1")];
        let grpc = Some("application/grpc");
        assert!(r.select(&req("POST", "/pkg.S/M", grpc, &h)).is_some());
        assert!(r.select(&req("GET", "/pkg.S/M", grpc, &h)).is_none());
        assert!(r.select(&req("POST", "/other.S/M", grpc, &h)).is_none());
        assert!(r.select(&req("POST", "/pkg.S/M", None, &h)).is_none());
        assert!(r.select(&req("POST", "/pkg.S/M", grpc, &())).is_none());
    }

    // ---- headers ----

    #[test]
    fn default_policies_write_exact_router_headers() {
        let r = compiled("{}");
        let p = r.policies();
        assert_eq!(
            owned(p[0].headers()),
            [
                ("x-envoy-retry-on", "reset,connect-failure,refused-stream"),
                ("x-envoy-retry-grpc-on", "unavailable"),
                ("x-envoy-max-retries", "3"),
            ]
        );
        assert_eq!(
            owned(p[1].headers()),
            [
                ("x-envoy-retry-on", "5xx,reset"),
                ("x-envoy-max-retries", "2")
            ]
        );
        assert_eq!(
            owned(p[2].headers()),
            [
                ("x-envoy-retry-on", "connect-failure,refused-stream"),
                ("x-envoy-max-retries", "1")
            ]
        );
    }

    #[test]
    fn per_try_timeout_and_status_codes_are_written_when_set() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "p", "retry_on": ["retriable-status-codes", "reset"],
                "max_retries": 4, "per_try_timeout": "1.5s", "retriable_status_codes": [503, 504]}]}}"#,
        );
        assert_eq!(
            owned(r.policies()[0].headers()),
            [
                ("x-envoy-retry-on", "retriable-status-codes,reset"),
                ("x-envoy-max-retries", "4"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "1500"),
                ("x-envoy-retriable-status-codes", "503,504"),
            ]
        );
    }

    #[test]
    fn status_codes_add_the_retriable_status_codes_condition() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "p", "retry_on": ["5xx"], "retriable_status_codes": [429]}]}}"#,
        );
        assert_eq!(
            owned(r.policies()[0].headers()),
            [
                ("x-envoy-retry-on", "5xx,retriable-status-codes"),
                ("x-envoy-max-retries", "1"),
                ("x-envoy-retriable-status-codes", "429"),
            ]
        );
    }

    #[test]
    fn per_try_timeout_rounds_up_to_whole_milliseconds() {
        let r = compiled(r#"{"retry": {"policies": [{"name": "p", "per_try_timeout": "0.1ms"}]}}"#);
        assert_eq!(
            owned(r.policies()[0].headers()),
            [
                ("x-envoy-max-retries", "1"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "1")
            ]
        );
    }

    #[test]
    fn policy_without_conditions_writes_only_max_retries() {
        let p = CompiledPolicy::new(&RetryPolicy {
            name: "bare".into(),
            matcher: PolicyMatch::default(),
            retry_on: vec![],
            retry_grpc_on: vec![],
            max_retries: 0,
            per_try_timeout: None,
            retriable_status_codes: vec![],
        });
        assert_eq!(owned(p.headers()), [("x-envoy-max-retries", "0")]);
    }

    // ---- decisions ----

    fn decision_headers(d: &RetryDecision<'_>) -> Vec<(&'static str, String)> {
        d.headers().map(|(n, v)| (n, v.to_string())).collect()
    }

    #[test]
    fn allowed_request_gets_its_policy_headers() {
        let r = compiled("{}");
        let d = r.decide(&req("GET", "/", None, &()), Mode::Enforce, false, true);
        assert!(matches!(d, RetryDecision::Policy(p) if p.name() == "idempotent"));
        assert!(!d.budget_denied());
        assert_eq!(
            decision_headers(&d),
            [
                ("x-envoy-retry-on", "5xx,reset".to_string()),
                ("x-envoy-max-retries", "2".to_string())
            ]
        );
        let dry = r.decide(&req("GET", "/", None, &()), Mode::DryRun, false, true);
        assert_eq!(dry, d, "dry_run retries like enforce");
    }

    #[test]
    fn probe_gets_zero_retries_even_without_a_matching_policy() {
        let r = compiled("{}");
        let d = r.decide(&req("GET", "/", None, &()), Mode::Enforce, true, true);
        assert_eq!(d, RetryDecision::Probe);
        assert_eq!(
            decision_headers(&d),
            [("x-envoy-max-retries", "0".to_string())]
        );
        let empty = compiled(r#"{"retry": {"policies": []}}"#);
        assert_eq!(
            decision_headers(&empty.decide(&req("GET", "/", None, &()), Mode::Enforce, true, true)),
            [("x-envoy-max-retries", "0".to_string())]
        );
    }

    #[test]
    fn spent_budget_switches_retries_off_and_is_counted() {
        let r = compiled("{}");
        let d = r.decide(
            &req("POST", "/", Some("application/grpc"), &()),
            Mode::Enforce,
            false,
            false,
        );
        assert!(d.budget_denied());
        assert!(matches!(d, RetryDecision::BudgetDenied(p) if p.name() == "grpc"));
        assert_eq!(
            decision_headers(&d),
            [("x-envoy-max-retries", "0".to_string())]
        );
    }

    #[test]
    fn spent_budget_does_not_count_requests_that_would_not_retry() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "never", "retry_on": ["reset"], "max_retries": 0}]}}"#,
        );
        let d = r.decide(&req("GET", "/", None, &()), Mode::Enforce, false, false);
        assert!(!d.budget_denied());
        assert_eq!(
            decision_headers(&d),
            [
                ("x-envoy-retry-on", "reset".to_string()),
                ("x-envoy-max-retries", "0".to_string())
            ]
        );
    }

    #[test]
    fn no_matching_policy_writes_no_headers() {
        let r = compiled(
            r#"{"retry": {"policies": [{"name": "get", "match": {"methods": ["GET"]}}]}}"#,
        );
        let d = r.decide(&req("POST", "/", None, &()), Mode::Enforce, false, false);
        assert_eq!(d, RetryDecision::NoHeaders);
        assert_eq!(d.headers().count(), 0);
        assert!(!d.budget_denied());
    }

    #[test]
    fn disabled_mode_writes_no_headers_but_still_strips() {
        let r = compiled(r#"{"mode": "disabled"}"#);
        for probe in [false, true] {
            let d = r.decide(&req("GET", "/", None, &()), Mode::Disabled, probe, false);
            assert_eq!(d, RetryDecision::NoHeaders);
        }
        assert_eq!(r.headers_to_strip(), ROUTER_RETRY_HEADERS);
    }

    // ---- budget ----

    fn budget(ratio: f64, min_rps: f64) -> BudgetConfig {
        BudgetConfig {
            ratio,
            min_retries_per_second: min_rps,
        }
    }

    #[test]
    fn allowance_is_ratio_of_requests_plus_reserve_per_window_second() {
        let b = budget(0.2, 10.0);
        assert_eq!(retry_allowance(&b, Duration::from_secs(60), 1000), 800.0);
        assert_eq!(retry_allowance(&b, Duration::from_secs(60), 0), 600.0);
        assert_eq!(
            retry_allowance(&budget(0.5, 0.0), Duration::from_secs(10), 7),
            3.5
        );
    }

    #[test]
    fn budget_allows_while_retries_are_below_allowance() {
        let b = budget(0.5, 0.0);
        let w = Duration::from_secs(10);
        assert!(budget_allows_retry(&b, w, 10, 4));
        assert!(
            !budget_allows_retry(&b, w, 10, 5),
            "at the allowance: exhausted"
        );
        assert!(!budget_allows_retry(&b, w, 10, 6));
        assert!(budget_allows_retry(&b, w, 7, 3), "3 < 3.5");
        assert!(!budget_allows_retry(&b, w, 7, 4));
    }

    #[test]
    fn zero_budget_never_allows_retries() {
        assert!(!budget_allows_retry(
            &budget(0.0, 0.0),
            Duration::from_secs(60),
            1_000_000,
            0
        ));
    }

    #[test]
    fn reserve_allows_retries_without_traffic() {
        let b = budget(0.2, 0.1);
        let w = Duration::from_secs(10);
        assert!(
            budget_allows_retry(&b, w, 0, 0),
            "1 retry of reserve per 10s window"
        );
        assert!(!budget_allows_retry(&b, w, 0, 1));
    }

    /// A per-second window model: requests and retries leave the window together, so a budget
    /// spent during a burst of retries comes back once those seconds expire.
    #[test]
    fn budget_recovers_when_retries_fall_out_of_the_window() {
        let b = budget(0.2, 0.0);
        let window = Duration::from_secs(5);
        let mut seconds: Vec<(u64, u64)> = Vec::new(); // (requests, retries) per second
        let in_window = |s: &[(u64, u64)]| {
            let tail = &s[s.len().saturating_sub(5)..];
            tail.iter().fold((0, 0), |(r, t), (a, b)| (r + a, t + b))
        };
        // Second 0: an outage; 100 requests all retried once.
        seconds.push((100, 100));
        let (req, ret) = in_window(&seconds);
        assert!(
            !budget_allows_retry(&b, window, req, ret),
            "100 retries vs allowance 20"
        );
        // Seconds 1..=4: healthy traffic, no retries; the burst is still in the window.
        for s in 1..=4 {
            seconds.push((100, 0));
            let (req, ret) = in_window(&seconds);
            // Allowance 0.2 × (100 s) ≤ 100 retries still in the window until second 5.
            assert!(
                !budget_allows_retry(&b, window, req, ret),
                "second {s}: {ret} retries of {req}"
            );
        }
        // Second 5: the burst second leaves the window.
        seconds.push((100, 0));
        let (req, ret) = in_window(&seconds);
        assert_eq!((req, ret), (500, 0));
        assert!(budget_allows_retry(&b, window, req, ret), "recovered");
    }
}
