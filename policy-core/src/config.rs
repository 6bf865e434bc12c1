//! The plugin configuration of SPEC ("Plugin configuration"): types, defaults, parsing, validation,
//! and overrides merged onto the defaults.
//!
//! Why a hand-written walk over a JSON [`json::Value`] instead of `#[derive(Deserialize)]`: every error
//! must name the field path (`overrides[0].breaker.window`) and the reason, overrides are *partial*
//! documents merged onto the top level, and this code ships inside a wasm filter with a 200 KiB
//! budget. One generic `Value` parse plus plain functions is both the smallest code and the one that
//! knows where it is; derive + path tracking would monomorphize a visitor per struct.
//!
//! Parsing rules beyond SPEC's text, decided here:
//! - Durations are strings `<number><unit>` with unit `ms`, `s`, `m` or `h`; the number may carry a
//!   decimal fraction (`"1.5s"`, `"0.25s"`), precise to the nanosecond. JSON numbers, negative
//!   values, a missing or unknown unit, and whitespace are errors.
//! - `null` is accepted only where it means "off" (`breaker.latency_p95_threshold`,
//!   `reset_signals`, a policy's `per_try_timeout` and `match.grpc`); elsewhere it is a wrong type.
//! - Integers may be written as integral floats (`20.0`); `20.5` is an error.
//! - A policy needs a non-empty, unique `name`; its other fields default to: `match` `{}` (matches
//!   everything), `retry_on`/`retry_grpc_on` `[]`, `max_retries` 1 (Envoy's own default),
//!   no `per_try_timeout`, no `retriable_status_codes`.
//! - `retry_on`/`retry_grpc_on` values are case-insensitive, stored lower-case, duplicates dropped.
//! - If a JSON object repeats a key, the last one wins (serde_json's behaviour).

use std::time::Duration;

use self::json::{Map, Value};

/// What one breaker guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBy {
    Cluster,
    Route,
    ClusterRoute,
    Authority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    DryRun,
    ForcedOpen,
    Disabled,
}

/// One entry of `breaker.failure.http_statuses`: a class (`"5xx"`, `"4xx"`) or an exact code (`429`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStatusMatch {
    /// `"4xx"` is `Class(4)`, `"5xx"` is `Class(5)`.
    Class(u16),
    Exact(u16),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureConfig {
    pub http_statuses: Vec<HttpStatusMatch>,
    /// gRPC status codes as numbers (UNAVAILABLE = 14, ...); names are parsed case-insensitively.
    pub grpc_statuses: Vec<u32>,
    pub upstream_resets: bool,
}

impl FailureConfig {
    pub fn is_http_failure(&self, status: u16) -> bool {
        self.http_statuses.iter().any(|m| match *m {
            HttpStatusMatch::Class(c) => status / 100 == c,
            HttpStatusMatch::Exact(s) => status == s,
        })
    }
    pub fn is_grpc_failure(&self, code: u32) -> bool {
        self.grpc_statuses.contains(&code)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: Duration,
    pub buckets: u32,
    pub min_requests: u32,
    pub error_rate_threshold: f64,
    /// `None` turns the latency trip off.
    pub latency_p95_threshold: Option<Duration>,
    pub sleep_window: Duration,
    pub max_sleep_window: Duration,
    pub half_open_max_probes: u32,
    pub half_open_successes_to_close: u32,
    pub failure: FailureConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_retries_per_second: f64,
}

/// `retry.policies[].match`. Empty matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyMatch {
    pub grpc: Option<bool>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    pub path_prefix: Option<String>,
    /// (lower-case header name, exact value)
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub name: String,
    pub matcher: PolicyMatch,
    pub retry_on: Vec<String>,
    pub retry_grpc_on: Vec<String>,
    pub max_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub strip_downstream_headers: bool,
    pub budget: BudgetConfig,
    pub policies: Vec<RetryPolicy>,
}

/// `overrides[].match`: exactly one of cluster / route / authority, compared after key sanitization.
#[derive(Debug, Clone, PartialEq)]
pub enum OverrideMatch {
    Cluster(String),
    Route(String),
    Authority(String),
}

/// An override with its partial fields already merged onto the top-level configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub matcher: OverrideMatch,
    pub mode: Mode,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResetSignals {
    pub cluster: String,
    pub path: String,
    pub poll_interval: Duration,
    pub max_resets_per_second: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub key_by: KeyBy,
    pub max_keys: u32,
    pub mode: Mode,
    pub breaker: BreakerConfig,
    pub retry: RetryConfig,
    pub overrides: Vec<Override>,
    pub reset_signals: Option<ResetSignals>,
}

/// A configuration error: the field path (`breaker.error_rate_threshold`, `overrides[0].breaker.window`,
/// `retry.policies[1].max_retries`; `""` for the document itself) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    /// `config error at breaker.error_rate_threshold: must be in (0, 1], got 1.5`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "config error: {}", self.reason)
        } else {
            write!(f, "config error at {}: {}", self.path, self.reason)
        }
    }
}

/// The configuration in force for one key: the top level, or the first override that matches.
#[derive(Debug, Clone, Copy)]
pub struct Effective<'a> {
    pub mode: Mode,
    pub breaker: &'a BreakerConfig,
    pub retry: &'a RetryConfig,
}

impl std::error::Error for ConfigError {}

impl Default for FailureConfig {
    fn default() -> Self {
        FailureConfig {
            http_statuses: vec![HttpStatusMatch::Class(5)],
            grpc_statuses: vec![GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL],
            upstream_resets: true,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(60),
            buckets: 12,
            min_requests: 20,
            error_rate_threshold: 0.3,
            latency_p95_threshold: Some(Duration::from_millis(800)),
            sleep_window: Duration::from_secs(30),
            max_sleep_window: Duration::from_secs(300),
            half_open_max_probes: 3,
            half_open_successes_to_close: 3,
            failure: FailureConfig::default(),
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_retries_per_second: 10.0,
        }
    }
}

impl RetryPolicy {
    /// The three policies of SPEC's default configuration: `grpc`, `idempotent`, `unsafe`.
    pub fn defaults() -> Vec<RetryPolicy> {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        vec![
            RetryPolicy {
                name: "grpc".into(),
                matcher: PolicyMatch {
                    grpc: Some(true),
                    ..PolicyMatch::default()
                },
                retry_on: strings(&["reset", "connect-failure", "refused-stream"]),
                retry_grpc_on: strings(&["unavailable"]),
                max_retries: 3,
                per_try_timeout: None,
                retriable_status_codes: Vec::new(),
            },
            RetryPolicy {
                name: "idempotent".into(),
                matcher: PolicyMatch {
                    methods: strings(&["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]),
                    ..PolicyMatch::default()
                },
                retry_on: strings(&["5xx", "reset"]),
                retry_grpc_on: Vec::new(),
                max_retries: 2,
                per_try_timeout: None,
                retriable_status_codes: Vec::new(),
            },
            RetryPolicy {
                name: "unsafe".into(),
                matcher: PolicyMatch::default(),
                retry_on: strings(&["connect-failure", "refused-stream"]),
                retry_grpc_on: Vec::new(),
                max_retries: 1,
                per_try_timeout: None,
                retriable_status_codes: Vec::new(),
            },
        ]
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            strip_downstream_headers: true,
            budget: BudgetConfig::default(),
            policies: RetryPolicy::defaults(),
        }
    }
}

impl Default for ResetSignals {
    fn default() -> Self {
        ResetSignals {
            cluster: "meshbreaker_sidecar".into(),
            path: "/v1/resets".into(),
            poll_interval: Duration::from_secs(1),
            max_resets_per_second: 5.0,
        }
    }
}

impl Default for Config {
    /// SPEC's defaults, the same as parsing `{}`.
    fn default() -> Self {
        Config {
            key_by: KeyBy::Cluster,
            max_keys: 1024,
            mode: Mode::Enforce,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            overrides: Vec::new(),
            reset_signals: None,
        }
    }
}

impl Config {
    /// Parses and validates the plugin configuration (JSON bytes; empty or blank input means `{}`).
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let doc = self::json::parse(json, false).map_err(|e| ConfigError {
            path: String::new(),
            reason: format!("invalid JSON: {e}"),
        })?;
        parse_document(&doc)
    }

    /// The configuration for a key whose (sanitized) cluster, route and authority are given.
    pub fn effective(&self, cluster: &str, route: &str, authority: &str) -> Effective<'_> {
        for o in &self.overrides {
            let hit = match &o.matcher {
                OverrideMatch::Cluster(c) => c == cluster,
                OverrideMatch::Route(r) => r == route,
                OverrideMatch::Authority(a) => a == authority,
            };
            if hit {
                return Effective {
                    mode: o.mode,
                    breaker: &o.breaker,
                    retry: &o.retry,
                };
            }
        }
        Effective {
            mode: self.mode,
            breaker: &self.breaker,
            retry: &self.retry,
        }
    }
}

/// gRPC's canonical status names, indexed by code (OK = 0 … UNAUTHENTICATED = 16).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// Envoy's documented `x-envoy-retry-on` conditions.
pub const RETRY_ON_VALUES: [&str; 11] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];

/// Envoy's documented `x-envoy-retry-grpc-on` conditions.
pub const RETRY_GRPC_ON_VALUES: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

type Res<T> = Result<T, ConfigError>;

const MIN_BUCKET: Duration = Duration::from_millis(100);

fn error(path: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// `parent.key`, or `key` at the document root.
fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A short description of a JSON value for "got …" in error reasons.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() > 40 => {
            format!("\"{}…\"", s.chars().take(40).collect::<String>())
        }
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// `a, b, c` (a plain loop: `join` is generic code the wasm filter would carry for this alone).
fn join(items: &[&str]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    out
}

/// `"<reason>, got <the value>"` at `path`: the shape of most validation errors. One function
/// instead of a `format!` at every call site keeps the wasm filter small.
#[inline(never)]
fn got(path: &str, reason: &str, v: &Value) -> ConfigError {
    error(path, format!("{reason}, got {}", describe(v)))
}

fn wrong_type(path: &str, expected: &str, v: &Value) -> ConfigError {
    error(path, format!("expected {expected}, got {}", describe(v)))
}

/// The object at `path`, after checking that it has no field outside `allowed`.
fn object<'v>(v: &'v Value, path: &str, allowed: &[&str]) -> Res<&'v Map> {
    let map = v
        .as_object()
        .ok_or_else(|| wrong_type(path, "an object", v))?;
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(
            &child(path, unknown),
            format!("unknown field, expected one of: {}", join(allowed)),
        ));
    }
    Ok(map)
}

fn array<'v>(v: &'v Value, path: &str) -> Res<&'v [Value]> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| wrong_type(path, "an array", v))
}

fn string<'v>(v: &'v Value, path: &str) -> Res<&'v str> {
    v.as_str().ok_or_else(|| wrong_type(path, "a string", v))
}

fn non_empty_string(v: &Value, path: &str) -> Res<String> {
    let s = string(v, path)?;
    if s.is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(s.to_string())
}

fn boolean(v: &Value, path: &str) -> Res<bool> {
    v.as_bool().ok_or_else(|| wrong_type(path, "a boolean", v))
}

fn number(v: &Value, path: &str) -> Res<f64> {
    v.as_f64().ok_or_else(|| wrong_type(path, "a number", v))
}

/// An integer in `[lo, hi]`; integral floats (`20.0`) are accepted.
fn integer(v: &Value, path: &str, lo: u64, hi: u64) -> Res<u64> {
    let n = v
        .as_number()
        .ok_or_else(|| wrong_type(path, "an integer", v))?;
    let value = if let Some(u) = n.as_u64() {
        Some(u)
    } else if n.as_i64().is_some() {
        None // negative
    } else {
        let f = n.as_f64();
        if f.fract() != 0.0 || !f.is_finite() {
            return Err(error(path, format!("must be an integer, got {n}")));
        }
        // Integral and finite: in range of u64 or clearly out of range.
        if f >= 0.0 && f <= u64::MAX as f64 {
            Some(f as u64)
        } else {
            None
        }
    };
    match value {
        Some(u) if (lo..=hi).contains(&u) => Ok(u),
        _ if hi == u64::MAX || hi == u64::from(u32::MAX) => {
            Err(error(path, format!("must be at least {lo}, got {n}")))
        }
        _ => Err(error(path, format!("must be in [{lo}, {hi}], got {n}"))),
    }
}

fn integer_u32(v: &Value, path: &str, lo: u32, hi: u32) -> Res<u32> {
    let n = integer(v, path, u64::from(lo), u64::from(hi))?;
    u32::try_from(n).map_err(|_| error(path, format!("must be at most {hi}, got {n}")))
}

/// Formats a duration the way a user would write it (`"250ms"`, `"30s"`, `"5m"`, `"1h"`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        let s = d.as_secs();
        if s != 0 && s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    } else {
        // Like `Duration`'s Debug (`1.5s`, `83.333333ms`, `1.5µs`, `7ns`), but whole milliseconds
        // as `1500ms`, and without the float-style formatting code Debug brings into the wasm.
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        let (int, frac, width, unit) = if nanos.is_multiple_of(1_000_000) && secs < u64::MAX / 1000
        {
            (secs * 1000 + u64::from(nanos / 1_000_000), 0, 0, "ms")
        } else if secs > 0 {
            (secs, nanos, 9, "s")
        } else if nanos >= 1_000_000 {
            (u64::from(nanos / 1_000_000), nanos % 1_000_000, 6, "ms")
        } else if nanos >= 1_000 {
            (u64::from(nanos / 1_000), nanos % 1_000, 3, "µs")
        } else {
            (u64::from(nanos), 0, 0, "ns")
        };
        let mut out = int.to_string();
        if frac != 0 {
            let digits = format!("{frac:0width$}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out.push_str(unit);
        out
    }
}

/// Parses a duration string: `<digits>[.<digits>]<unit>`, unit one of `ms`, `s`, `m`, `h`.
///
/// Public so other modules (and the filter) share one definition of what a duration is.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ms, s, m, h";
    if s.is_empty() {
        return Err("empty duration, expected e.g. \"30s\"".into());
    }
    if s.starts_with('-') {
        return Err(format!("must not be negative, got \"{s}\""));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err(format!("missing unit ({UNITS}) in \"{s}\"")),
        other => {
            return Err(format!(
                "unknown unit \"{other}\" in \"{s}\", expected one of {UNITS}"
            ))
        }
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int_part) || frac_part.is_some_and(|f| !digits_ok(f)) {
        return Err(format!(
            "invalid number in duration \"{s}\", expected e.g. \"30s\" or \"1.5s\""
        ));
    }
    let too_large = || format!("duration \"{s}\" is too large");
    let int: u128 = int_part.parse().map_err(|_| too_large())?;
    let mut nanos = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
    if let Some(frac) = frac_part {
        // 18 digits are far below a nanosecond at every unit; later digits are ignored.
        let kept = frac.get(..frac.len().min(18)).unwrap_or(frac);
        let scale = 10u128.pow(u32::try_from(kept.len()).unwrap_or(18));
        let f: u128 = kept.parse().map_err(|_| too_large())?;
        nanos = nanos
            .checked_add(f * unit_nanos / scale)
            .ok_or_else(too_large)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder of a division by 1e9 always fits in u32.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

fn duration(v: &Value, path: &str) -> Res<Duration> {
    match v {
        Value::String(s) => parse_duration(s).map_err(|reason| error(path, reason)),
        other => Err(got(
            path,
            "expected a duration string such as \"30s\" (units ms, s, m, h)",
            other,
        )),
    }
}

fn duration_at_least(v: &Value, path: &str, min: Duration) -> Res<Duration> {
    let d = duration(v, path)?;
    if d < min {
        return Err(error(
            path,
            format!(
                "must be at least {}, got {}",
                format_duration(min),
                describe(v)
            ),
        ));
    }
    Ok(d)
}

fn parse_document(doc: &Value) -> Res<Config> {
    let map = object(
        doc,
        "",
        &[
            "key_by",
            "max_keys",
            "mode",
            "breaker",
            "retry",
            "overrides",
            "reset_signals",
        ],
    )?;
    let mut cfg = Config::default();
    if let Some(v) = map.get("key_by") {
        cfg.key_by = parse_key_by(v, "key_by")?;
    }
    if let Some(v) = map.get("max_keys") {
        cfg.max_keys = integer_u32(v, "max_keys", 1, 100_000)?;
    }
    if let Some(v) = map.get("mode") {
        cfg.mode = parse_mode(v, "mode")?;
    }
    if let Some(v) = map.get("breaker") {
        apply_breaker(&mut cfg.breaker, v, "breaker")?;
    }
    check_breaker(&cfg.breaker, "breaker")?;
    if let Some(v) = map.get("retry") {
        apply_retry(&mut cfg.retry, v, "retry")?;
    }
    if let Some(v) = map.get("reset_signals") {
        cfg.reset_signals = parse_reset_signals(v, "reset_signals")?;
    }
    if let Some(v) = map.get("overrides") {
        let list = array(v, "overrides")?;
        let mut overrides = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            overrides.push(parse_override(item, &index("overrides", i), &cfg)?);
        }
        cfg.overrides = overrides;
    }
    Ok(cfg)
}

fn parse_key_by(v: &Value, path: &str) -> Res<KeyBy> {
    match string(v, path)? {
        "cluster" => Ok(KeyBy::Cluster),
        "route" => Ok(KeyBy::Route),
        "cluster_route" => Ok(KeyBy::ClusterRoute),
        "authority" => Ok(KeyBy::Authority),
        _ => Err(got(
            path,
            "must be one of cluster, route, cluster_route, authority",
            v,
        )),
    }
}

fn parse_mode(v: &Value, path: &str) -> Res<Mode> {
    match string(v, path)? {
        "enforce" => Ok(Mode::Enforce),
        "dry_run" => Ok(Mode::DryRun),
        "forced_open" => Ok(Mode::ForcedOpen),
        "disabled" => Ok(Mode::Disabled),
        _ => Err(got(
            path,
            "must be one of enforce, dry_run, forced_open, disabled",
            v,
        )),
    }
}

/// Applies the fields present in `v` onto `b` (all of them at the top level, some in an override).
/// Cross-field rules are checked afterwards by [`check_breaker`], on the merged result.
fn apply_breaker(b: &mut BreakerConfig, v: &Value, path: &str) -> Res<()> {
    let map = object(
        v,
        path,
        &[
            "window",
            "buckets",
            "min_requests",
            "error_rate_threshold",
            "latency_p95_threshold",
            "sleep_window",
            "max_sleep_window",
            "half_open_max_probes",
            "half_open_successes_to_close",
            "failure",
        ],
    )?;
    if let Some(v) = map.get("window") {
        let p = child(path, "window");
        let d = duration(v, &p)?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return Err(got(&p, "must be in [1s, 1h]", v));
        }
        b.window = d;
    }
    if let Some(v) = map.get("buckets") {
        b.buckets = integer_u32(v, &child(path, "buckets"), 1, 60)?;
    }
    if let Some(v) = map.get("min_requests") {
        b.min_requests = integer_u32(v, &child(path, "min_requests"), 1, u32::MAX)?;
    }
    if let Some(v) = map.get("error_rate_threshold") {
        let p = child(path, "error_rate_threshold");
        let x = number(v, &p)?;
        if !(x > 0.0 && x <= 1.0) {
            return Err(got(&p, "must be in (0, 1]", v));
        }
        b.error_rate_threshold = x;
    }
    if let Some(v) = map.get("latency_p95_threshold") {
        let p = child(path, "latency_p95_threshold");
        b.latency_p95_threshold = if v.is_null() {
            None
        } else {
            let d = duration(v, &p)?;
            if d.is_zero() {
                return Err(got(
                    &p,
                    "must be greater than 0 (or null to turn it off)",
                    v,
                ));
            }
            Some(d)
        };
    }
    if let Some(v) = map.get("sleep_window") {
        b.sleep_window = duration_at_least(v, &child(path, "sleep_window"), MIN_BUCKET)?;
    }
    if let Some(v) = map.get("max_sleep_window") {
        b.max_sleep_window = duration_at_least(v, &child(path, "max_sleep_window"), MIN_BUCKET)?;
    }
    if let Some(v) = map.get("half_open_max_probes") {
        b.half_open_max_probes = integer_u32(v, &child(path, "half_open_max_probes"), 1, u32::MAX)?;
    }
    if let Some(v) = map.get("half_open_successes_to_close") {
        b.half_open_successes_to_close =
            integer_u32(v, &child(path, "half_open_successes_to_close"), 1, u32::MAX)?;
    }
    if let Some(v) = map.get("failure") {
        apply_failure(&mut b.failure, v, &child(path, "failure"))?;
    }
    Ok(())
}

/// The rules that tie breaker fields together, checked on the merged configuration.
fn check_breaker(b: &BreakerConfig, path: &str) -> Res<()> {
    let buckets = b.buckets.max(1);
    if b.window / buckets < MIN_BUCKET {
        return Err(error(
            &child(path, "buckets"),
            format!(
                "window / buckets must be at least 100ms, got {} / {} = {}",
                format_duration(b.window),
                b.buckets,
                format_duration(b.window / buckets)
            ),
        ));
    }
    if b.sleep_window > b.max_sleep_window {
        return Err(error(
            &child(path, "sleep_window"),
            format!(
                "must not exceed max_sleep_window ({}), got {}",
                format_duration(b.max_sleep_window),
                format_duration(b.sleep_window)
            ),
        ));
    }
    Ok(())
}

fn apply_failure(f: &mut FailureConfig, v: &Value, path: &str) -> Res<()> {
    let map = object(
        v,
        path,
        &["http_statuses", "grpc_statuses", "upstream_resets"],
    )?;
    if let Some(v) = map.get("http_statuses") {
        let p = child(path, "http_statuses");
        let list = array(v, &p)?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            out.push(parse_http_status(item, &index(&p, i))?);
        }
        f.http_statuses = out;
    }
    if let Some(v) = map.get("grpc_statuses") {
        let p = child(path, "grpc_statuses");
        let list = array(v, &p)?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            out.push(parse_grpc_status(item, &index(&p, i))?);
        }
        f.grpc_statuses = out;
    }
    if let Some(v) = map.get("upstream_resets") {
        f.upstream_resets = boolean(v, &child(path, "upstream_resets"))?;
    }
    Ok(())
}

/// An HTTP status code 100–599, as a JSON integer or a numeric string (`"429"`).
fn status_code(v: &Value, path: &str) -> Res<u16> {
    let bad = || got(path, "must be an HTTP status code in [100, 599]", v);
    let code = match v {
        Value::String(s) => s.parse::<u16>().map_err(|_| bad())?,
        Value::Number(_) => {
            u16::try_from(integer(v, path, 0, u64::MAX).map_err(|_| bad())?).map_err(|_| bad())?
        }
        other => return Err(wrong_type(path, "an HTTP status code", other)),
    };
    if !(100..=599).contains(&code) {
        return Err(bad());
    }
    Ok(code)
}

fn parse_http_status(v: &Value, path: &str) -> Res<HttpStatusMatch> {
    if let Value::String(s) = v {
        let b = s.as_bytes();
        if b.len() == 3 && b.get(1..).is_some_and(|r| r.eq_ignore_ascii_case(b"xx")) {
            return match b.first() {
                Some(d @ b'1'..=b'5') => Ok(HttpStatusMatch::Class(u16::from(d - b'0'))),
                _ => Err(got(path, "status class must be one of 1xx..5xx", v)),
            };
        }
    }
    match v {
        Value::String(_) | Value::Number(_) => status_code(v, path).map(HttpStatusMatch::Exact),
        other => Err(wrong_type(
            path,
            "a status class like \"5xx\" or a code like 429",
            other,
        )),
    }
}

fn parse_grpc_status(v: &Value, path: &str) -> Res<u32> {
    let bad = || {
        got(
            path,
            "must be a gRPC status name (OK … UNAUTHENTICATED) or code 0–16",
            v,
        )
    };
    match v {
        Value::String(s) => {
            if let Some(code) = GRPC_STATUS_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(s))
            {
                return u32::try_from(code).map_err(|_| bad());
            }
            match s.parse::<u32>() {
                Ok(code) if code <= 16 => Ok(code),
                _ => Err(bad()),
            }
        }
        Value::Number(_) => {
            let code = integer(v, path, 0, 16).map_err(|_| bad())?;
            u32::try_from(code).map_err(|_| bad())
        }
        other => Err(wrong_type(path, "a gRPC status name or code", other)),
    }
}

fn apply_retry(r: &mut RetryConfig, v: &Value, path: &str) -> Res<()> {
    let map = object(v, path, &["strip_downstream_headers", "budget", "policies"])?;
    if let Some(v) = map.get("strip_downstream_headers") {
        r.strip_downstream_headers = boolean(v, &child(path, "strip_downstream_headers"))?;
    }
    if let Some(v) = map.get("budget") {
        apply_budget(&mut r.budget, v, &child(path, "budget"))?;
    }
    if let Some(v) = map.get("policies") {
        r.policies = parse_policies(v, &child(path, "policies"))?;
    }
    Ok(())
}

fn apply_budget(b: &mut BudgetConfig, v: &Value, path: &str) -> Res<()> {
    let map = object(v, path, &["ratio", "min_retries_per_second"])?;
    if let Some(v) = map.get("ratio") {
        let p = child(path, "ratio");
        let x = number(v, &p)?;
        if !(0.0..=1.0).contains(&x) {
            return Err(got(&p, "must be in [0, 1]", v));
        }
        b.ratio = x;
    }
    if let Some(v) = map.get("min_retries_per_second") {
        let p = child(path, "min_retries_per_second");
        let x = number(v, &p)?;
        if !(x >= 0.0 && x.is_finite()) {
            return Err(got(&p, "must be at least 0", v));
        }
        b.min_retries_per_second = x;
    }
    Ok(())
}

fn parse_policies(v: &Value, path: &str) -> Res<Vec<RetryPolicy>> {
    let list = array(v, path)?;
    let mut out: Vec<RetryPolicy> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let p = index(path, i);
        let policy = parse_policy(item, &p)?;
        if let Some(first) = out.iter().position(|o| o.name == policy.name) {
            return Err(error(
                &child(&p, "name"),
                format!(
                    "duplicate policy name \"{}\" (also at {})",
                    policy.name,
                    index(path, first)
                ),
            ));
        }
        out.push(policy);
    }
    Ok(out)
}

/// A list of strings from `allowed` (case-insensitive), stored lower-case, duplicates dropped.
fn condition_list(v: &Value, path: &str, allowed: &[&str], what: &str) -> Res<Vec<String>> {
    let list = array(v, path)?;
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let p = index(path, i);
        let s = string(item, &p)?;
        let Some(known) = allowed.iter().find(|a| a.eq_ignore_ascii_case(s)) else {
            return Err(error(
                &p,
                format!(
                    "unknown {what} {}, expected one of: {}",
                    describe(item),
                    join(allowed)
                ),
            ));
        };
        if !out.iter().any(|o| o == known) {
            out.push((*known).to_string());
        }
    }
    Ok(out)
}

fn parse_policy(v: &Value, path: &str) -> Res<RetryPolicy> {
    let map = object(
        v,
        path,
        &[
            "name",
            "match",
            "retry_on",
            "retry_grpc_on",
            "max_retries",
            "per_try_timeout",
            "retriable_status_codes",
        ],
    )?;
    let name = match map.get("name") {
        Some(v) => non_empty_string(v, &child(path, "name"))?,
        None => return Err(error(&child(path, "name"), "is required")),
    };
    let mut policy = RetryPolicy {
        name,
        matcher: PolicyMatch::default(),
        retry_on: Vec::new(),
        retry_grpc_on: Vec::new(),
        max_retries: 1,
        per_try_timeout: None,
        retriable_status_codes: Vec::new(),
    };
    if let Some(v) = map.get("match") {
        policy.matcher = parse_policy_match(v, &child(path, "match"))?;
    }
    if let Some(v) = map.get("retry_on") {
        policy.retry_on = condition_list(
            v,
            &child(path, "retry_on"),
            &RETRY_ON_VALUES,
            "retry_on condition",
        )?;
    }
    if let Some(v) = map.get("retry_grpc_on") {
        policy.retry_grpc_on = condition_list(
            v,
            &child(path, "retry_grpc_on"),
            &RETRY_GRPC_ON_VALUES,
            "retry_grpc_on condition",
        )?;
    }
    if let Some(v) = map.get("max_retries") {
        policy.max_retries = integer_u32(v, &child(path, "max_retries"), 0, 10)?;
    }
    if let Some(v) = map.get("per_try_timeout") {
        let p = child(path, "per_try_timeout");
        if !v.is_null() {
            let d = duration(v, &p)?;
            if d.is_zero() {
                return Err(got(&p, "must be greater than 0", v));
            }
            policy.per_try_timeout = Some(d);
        }
    }
    if let Some(v) = map.get("retriable_status_codes") {
        let p = child(path, "retriable_status_codes");
        let list = array(v, &p)?;
        let mut codes = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let code = status_code(item, &index(&p, i))?;
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        policy.retriable_status_codes = codes;
    }
    Ok(policy)
}

/// RFC 9110 `token`: what a method or a header name may be made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_policy_match(v: &Value, path: &str) -> Res<PolicyMatch> {
    let map = object(v, path, &["grpc", "methods", "path_prefix", "headers"])?;
    let mut m = PolicyMatch::default();
    if let Some(v) = map.get("grpc") {
        if !v.is_null() {
            m.grpc = Some(boolean(v, &child(path, "grpc"))?);
        }
    }
    if let Some(v) = map.get("methods") {
        let p = child(path, "methods");
        let list = array(v, &p)?;
        for (i, item) in list.iter().enumerate() {
            let pi = index(&p, i);
            let s = string(item, &pi)?;
            if !is_token(s) {
                return Err(got(&pi, "must be an HTTP method token", item));
            }
            let upper = s.to_ascii_uppercase();
            if !m.methods.contains(&upper) {
                m.methods.push(upper);
            }
        }
    }
    if let Some(v) = map.get("path_prefix") {
        let p = child(path, "path_prefix");
        let s = string(v, &p)?;
        if !s.starts_with('/') {
            return Err(got(&p, "must start with \"/\"", v));
        }
        m.path_prefix = Some(s.to_string());
    }
    if let Some(v) = map.get("headers") {
        let p = child(path, "headers");
        let obj = v
            .as_object()
            .ok_or_else(|| wrong_type(&p, "an object of header name to value", v))?;
        for (name, value) in obj {
            let pn = child(&p, name);
            if !is_token(name) {
                return Err(error(&pn, "header name must be an HTTP token"));
            }
            let lower = name.to_ascii_lowercase();
            if m.headers.iter().any(|(n, _)| *n == lower) {
                return Err(error(
                    &pn,
                    format!("header \"{lower}\" given twice (names are case-insensitive)"),
                ));
            }
            let value = string(value, &pn)?;
            m.headers.push((lower, value.to_string()));
        }
    }
    Ok(m)
}

fn parse_reset_signals(v: &Value, path: &str) -> Res<Option<ResetSignals>> {
    if v.is_null() {
        return Ok(None);
    }
    let map = object(
        v,
        path,
        &["cluster", "path", "poll_interval", "max_resets_per_second"],
    )?;
    let mut r = ResetSignals::default();
    if let Some(v) = map.get("cluster") {
        r.cluster = non_empty_string(v, &child(path, "cluster"))?;
    }
    if let Some(v) = map.get("path") {
        let p = child(path, "path");
        let s = string(v, &p)?;
        if !s.starts_with('/') {
            return Err(got(&p, "must start with \"/\"", v));
        }
        r.path = s.to_string();
    }
    if let Some(v) = map.get("poll_interval") {
        r.poll_interval = duration_at_least(v, &child(path, "poll_interval"), MIN_BUCKET)?;
    }
    if let Some(v) = map.get("max_resets_per_second") {
        let p = child(path, "max_resets_per_second");
        let x = number(v, &p)?;
        if !(x > 0.0 && x.is_finite()) {
            return Err(got(&p, "must be greater than 0", v));
        }
        r.max_resets_per_second = x;
    }
    Ok(Some(r))
}

fn parse_override(v: &Value, path: &str, top: &Config) -> Res<Override> {
    let map = object(v, path, &["match", "breaker", "retry", "mode"])?;
    let match_path = child(path, "match");
    let Some(m) = map.get("match") else {
        return Err(error(
            &match_path,
            "is required: one of cluster, route, authority",
        ));
    };
    let m = object(m, &match_path, &["cluster", "route", "authority"])?;
    if m.len() != 1 {
        return Err(error(
            &match_path,
            format!(
                "must hold exactly one of cluster, route, authority, got {}",
                m.len()
            ),
        ));
    }
    let mut matcher = None;
    for (field, value) in m {
        let raw = non_empty_string(value, &child(&match_path, field))?;
        let key = crate::keys::sanitize_key(&raw);
        matcher = match field.as_str() {
            "cluster" => Some(OverrideMatch::Cluster(key)),
            "route" => Some(OverrideMatch::Route(key)),
            _ => Some(OverrideMatch::Authority(key)),
        };
    }
    let matcher =
        matcher.ok_or_else(|| error(&match_path, "must hold one of cluster, route, authority"))?;
    let mut breaker = top.breaker.clone();
    let breaker_path = child(path, "breaker");
    if let Some(v) = map.get("breaker") {
        apply_breaker(&mut breaker, v, &breaker_path)?;
    }
    check_breaker(&breaker, &breaker_path)?;
    let mut retry = top.retry.clone();
    if let Some(v) = map.get("retry") {
        apply_retry(&mut retry, v, &child(path, "retry"))?;
    }
    let mode = match map.get("mode") {
        Some(v) => parse_mode(v, &child(path, "mode"))?,
        None => top.mode,
    };
    Ok(Override {
        matcher,
        mode,
        breaker,
        retry,
    })
}

/// A small JSON reader (RFC 8259) producing [`json::Value`], shared by the configuration and the
/// sidecar's reset snapshots ([`crate::resets::parse_snapshot`]).
///
/// Why not serde_json: the filter ships as wasm with a 200 KiB budget, and serde_json's generic
/// machinery (plus the float printing its error messages pull in) cost about a quarter of it. This
/// reader keeps serde_json's observable rules: objects keep their keys sorted and the last of a
/// repeated key wins (serde_json's default `Map`), integers that fit are `u64`/`i64` (`-0` and
/// anything larger are floats), at most 128 nested arrays/objects, strings must be valid UTF-8
/// with paired surrogate escapes. A number keeps its source text, which is what error messages
/// show (`got 1.5`).
pub mod json {
    use std::fmt;

    /// A JSON number: its value (as serde_json would classify it) and its text in the document.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Number {
        text: Box<str>,
        value: Num,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Num {
        PosInt(u64),
        NegInt(i64),
        Float(f64),
    }

    impl Number {
        pub fn as_u64(&self) -> Option<u64> {
            match self.value {
                Num::PosInt(u) => Some(u),
                _ => None,
            }
        }
        pub fn as_i64(&self) -> Option<i64> {
            match self.value {
                Num::PosInt(u) => i64::try_from(u).ok(),
                Num::NegInt(i) => Some(i),
                Num::Float(_) => None,
            }
        }
        pub fn as_f64(&self) -> f64 {
            match self.value {
                Num::PosInt(u) => u as f64,
                Num::NegInt(i) => i as f64,
                Num::Float(f) => f,
            }
        }
    }

    impl fmt::Display for Number {
        /// The number as written in the document.
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.text)
        }
    }

    /// A JSON object: keys sorted, unique.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct Map(Vec<(String, Value)>);

    impl Map {
        fn find(&self, key: &str) -> Result<usize, usize> {
            self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
        }
        pub fn get(&self, key: &str) -> Option<&Value> {
            self.find(key)
                .ok()
                .and_then(|i| self.0.get(i))
                .map(|(_, v)| v)
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        pub fn keys(&self) -> impl Iterator<Item = &String> {
            self.0.iter().map(|(k, _)| k)
        }
        pub fn iter(&self) -> std::slice::Iter<'_, (String, Value)> {
            self.0.iter()
        }
    }

    impl<'a> IntoIterator for &'a Map {
        type Item = &'a (String, Value);
        type IntoIter = std::slice::Iter<'a, (String, Value)>;
        fn into_iter(self) -> Self::IntoIter {
            self.0.iter()
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(Number),
        String(String),
        Array(Vec<Value>),
        Object(Map),
    }

    impl Value {
        pub fn is_null(&self) -> bool {
            matches!(self, Value::Null)
        }
        pub fn as_bool(&self) -> Option<bool> {
            match self {
                Value::Bool(b) => Some(*b),
                _ => None,
            }
        }
        pub fn as_number(&self) -> Option<&Number> {
            match self {
                Value::Number(n) => Some(n),
                _ => None,
            }
        }
        pub fn as_f64(&self) -> Option<f64> {
            self.as_number().map(Number::as_f64)
        }
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }
        pub fn as_array(&self) -> Option<&Vec<Value>> {
            match self {
                Value::Array(a) => Some(a),
                _ => None,
            }
        }
        pub fn as_object(&self) -> Option<&Map> {
            match self {
                Value::Object(m) => Some(m),
                _ => None,
            }
        }
    }

    /// Why a document is not JSON, and where (1-based line and column of the offending byte).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Error {
        pub reason: &'static str,
        pub line: usize,
        pub column: usize,
    }

    impl fmt::Display for Error {
        /// `expected value at line 1 column 2`
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "{} at line {} column {}",
                self.reason, self.line, self.column
            )
        }
    }

    impl std::error::Error for Error {}

    const MAX_DEPTH: u32 = 128;

    /// Parses a whole document. With `duplicate_keys_are_errors`, an object that repeats a key is
    /// rejected (serde's derive behaviour) instead of keeping the last value.
    pub fn parse(input: &[u8], duplicate_keys_are_errors: bool) -> Result<Value, Error> {
        let mut p = Parser {
            s: input,
            pos: 0,
            depth: 0,
            strict: duplicate_keys_are_errors,
        };
        let v = p.value()?;
        p.ws();
        if p.pos < input.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        pos: usize,
        depth: u32,
        strict: bool,
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.pos).copied()
        }

        fn next(&mut self) -> Option<u8> {
            let b = self.peek();
            if b.is_some() {
                self.pos += 1;
            }
            b
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
                self.pos += 1;
            }
        }

        fn err(&self, reason: &'static str) -> Error {
            let seen = self.s.get(..self.pos + 1).unwrap_or(self.s);
            let line = 1 + seen.iter().filter(|&&b| b == b'\n').count();
            let column = seen.len() - seen.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            Error {
                reason,
                line,
                column,
            }
        }

        fn digits(&mut self) -> usize {
            let start = self.pos;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
            self.pos - start
        }

        fn value(&mut self) -> Result<Value, Error> {
            self.ws();
            let Some(b) = self.peek() else {
                return Err(self.err("EOF while parsing a value"));
            };
            match b {
                b'n' => self.literal("null", Value::Null),
                b't' => self.literal("true", Value::Bool(true)),
                b'f' => self.literal("false", Value::Bool(false)),
                b'"' => {
                    self.pos += 1;
                    self.string().map(Value::String)
                }
                b'-' | b'0'..=b'9' => self.number(),
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(self.err("recursion limit exceeded"));
                    }
                    self.pos += 1;
                    let v = if b == b'[' {
                        self.array()
                    } else {
                        self.object()
                    };
                    self.depth -= 1;
                    v
                }
                _ => Err(self.err("expected value")),
            }
        }

        fn literal(&mut self, word: &str, v: Value) -> Result<Value, Error> {
            for &w in word.as_bytes() {
                match self.next() {
                    Some(b) if b == w => {}
                    None => return Err(self.err("EOF while parsing a value")),
                    Some(_) => {
                        self.pos -= 1;
                        return Err(self.err("expected ident"));
                    }
                }
            }
            Ok(v)
        }

        /// After `[`.
        fn array(&mut self) -> Result<Value, Error> {
            let mut items = Vec::new();
            self.ws();
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            loop {
                items.push(self.value()?);
                self.ws();
                match self.next() {
                    Some(b',') => {}
                    Some(b']') => return Ok(Value::Array(items)),
                    None => return Err(self.err("EOF while parsing a list")),
                    Some(_) => {
                        self.pos -= 1;
                        return Err(self.err("expected `,` or `]`"));
                    }
                }
            }
        }

        /// After `{`.
        fn object(&mut self) -> Result<Value, Error> {
            let mut map = Map::default();
            self.ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(Value::Object(map));
            }
            loop {
                self.ws();
                match self.next() {
                    Some(b'"') => {}
                    None => return Err(self.err("EOF while parsing an object")),
                    Some(_) => {
                        self.pos -= 1;
                        return Err(self.err("key must be a string"));
                    }
                }
                let key = self.string()?;
                self.ws();
                match self.next() {
                    Some(b':') => {}
                    None => return Err(self.err("EOF while parsing an object")),
                    Some(_) => {
                        self.pos -= 1;
                        return Err(self.err("expected `:`"));
                    }
                }
                let value = self.value()?;
                match map.find(&key) {
                    Ok(_) if self.strict => return Err(self.err("duplicate field")),
                    Ok(i) => {
                        if let Some(slot) = map.0.get_mut(i) {
                            slot.1 = value;
                        }
                    }
                    Err(i) => map.0.insert(i, (key, value)),
                }
                self.ws();
                match self.next() {
                    Some(b',') => {}
                    Some(b'}') => return Ok(Value::Object(map)),
                    None => return Err(self.err("EOF while parsing an object")),
                    Some(_) => {
                        self.pos -= 1;
                        return Err(self.err("expected `,` or `}`"));
                    }
                }
            }
        }

        /// After the opening quote.
        fn string(&mut self) -> Result<String, Error> {
            let mut out = Vec::new();
            loop {
                let Some(b) = self.next() else {
                    return Err(self.err("EOF while parsing a string"));
                };
                match b {
                    b'"' => break,
                    b'\\' => {
                        let c = match self.next() {
                            Some(b'"') => '"',
                            Some(b'\\') => '\\',
                            Some(b'/') => '/',
                            Some(b'b') => '\u{8}',
                            Some(b'f') => '\u{c}',
                            Some(b'n') => '\n',
                            Some(b'r') => '\r',
                            Some(b't') => '\t',
                            Some(b'u') => self.unicode_escape()?,
                            None => return Err(self.err("EOF while parsing a string")),
                            Some(_) => return Err(self.err("invalid escape")),
                        };
                        let mut buf = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    0..=0x1f => {
                        return Err(self.err(
                            "control character (\\u0000-\\u001F) found while parsing a string",
                        ))
                    }
                    _ => out.push(b),
                }
            }
            String::from_utf8(out).map_err(|_| self.err("invalid unicode code point"))
        }

        fn hex4(&mut self) -> Result<u32, Error> {
            let mut n = 0;
            for _ in 0..4 {
                let d = match self.next() {
                    Some(b) => char::from(b).to_digit(16),
                    None => return Err(self.err("EOF while parsing a string")),
                };
                n = n * 16 + d.ok_or_else(|| self.err("invalid escape"))?;
            }
            Ok(n)
        }

        /// After `\u`: one code point, a surrogate pair taking two escapes.
        fn unicode_escape(&mut self) -> Result<char, Error> {
            let hi = self.hex4()?;
            let code = match hi {
                0xD800..=0xDBFF => {
                    if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                        return Err(self.err("lone leading surrogate in hex escape"));
                    }
                    let lo = self.hex4()?;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return Err(self.err("lone leading surrogate in hex escape"));
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                }
                _ => hi,
            };
            char::from_u32(code).ok_or_else(|| self.err("invalid unicode code point"))
        }

        fn number(&mut self) -> Result<Value, Error> {
            let start = self.pos;
            let negative = self.peek() == Some(b'-');
            if negative {
                self.pos += 1;
            }
            let int_start = self.pos;
            match self.peek() {
                Some(b'0') => {
                    self.pos += 1;
                    if matches!(self.peek(), Some(b'0'..=b'9')) {
                        return Err(self.err("invalid number"));
                    }
                }
                Some(b'1'..=b'9') => {
                    self.digits();
                }
                _ => return Err(self.err("invalid number")),
            }
            let int_end = self.pos;
            let mut frac = (self.pos, self.pos);
            let mut exp: i64 = 0;
            let mut float = false;
            if self.peek() == Some(b'.') {
                self.pos += 1;
                float = true;
                let f0 = self.pos;
                if self.digits() == 0 {
                    return Err(self.err("invalid number"));
                }
                frac = (f0, self.pos);
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.pos += 1;
                float = true;
                let exp_negative = match self.peek() {
                    Some(b'-') => {
                        self.pos += 1;
                        true
                    }
                    Some(b'+') => {
                        self.pos += 1;
                        false
                    }
                    _ => false,
                };
                let e0 = self.pos;
                if self.digits() == 0 {
                    return Err(self.err("invalid number"));
                }
                for &d in self.s.get(e0..self.pos).unwrap_or(&[]) {
                    exp = (exp * 10 + i64::from(d - b'0')).min(1 << 20);
                }
                if exp_negative {
                    exp = -exp;
                }
            }
            let int_digits = self.s.get(int_start..int_end).unwrap_or(&[]);
            let frac_digits = self.s.get(frac.0..frac.1).unwrap_or(&[]);
            let value = if float {
                self.float(int_digits, frac_digits, exp, negative)?
            } else {
                match int_digits.iter().try_fold(0u64, |acc, &d| {
                    acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                }) {
                    Some(u) if !negative => Num::PosInt(u),
                    Some(u) => match (u as i64).wrapping_neg() {
                        n if n < 0 => Num::NegInt(n),
                        _ => Num::Float(-(u as f64)),
                    },
                    None => self.float(int_digits, &[], 0, negative)?,
                }
            };
            let text = self.s.get(start..self.pos).unwrap_or(&[]);
            Ok(Value::Number(Number {
                text: String::from_utf8_lossy(text).into(),
                value,
            }))
        }

        /// `int.frac × 10^exp`, from at most 19 significant digits (later ones are below an f64's
        /// precision); exact for up to 15 digits and |exponent| ≤ 22, which covers any
        /// configuration value.
        fn float(&self, int: &[u8], frac: &[u8], exp: i64, negative: bool) -> Result<Num, Error> {
            let mut mantissa: u64 = 0;
            let mut exp = exp;
            let mut kept = 0;
            for (i, &d) in int.iter().chain(frac).enumerate() {
                let in_frac = i >= int.len();
                if mantissa == 0 && d == b'0' {
                    if in_frac {
                        exp -= 1;
                    }
                    continue;
                }
                if kept < 19 {
                    mantissa = mantissa * 10 + u64::from(d - b'0');
                    kept += 1;
                    if in_frac {
                        exp -= 1;
                    }
                } else if !in_frac {
                    exp += 1;
                }
            }
            let mut f = mantissa as f64;
            if mantissa != 0 {
                while exp > 22 && f.is_finite() {
                    f *= 1e22;
                    exp -= 22;
                }
                while exp < -22 && f != 0.0 {
                    f /= 1e22;
                    exp += 22;
                }
                let mut pow = 1.0;
                for _ in 0..exp.unsigned_abs().min(22) {
                    pow *= 10.0;
                }
                f = if exp >= 0 { f * pow } else { f / pow };
            }
            if !f.is_finite() {
                return Err(self.err("number out of range"));
            }
            Ok(Num::Float(if negative { -f } else { f }))
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    mod tests {
        use super::*;

        fn num(s: &str) -> Number {
            match parse(s.as_bytes(), false).unwrap() {
                Value::Number(n) => n,
                other => panic!("{s} parsed as {other:?}"),
            }
        }

        #[test]
        fn classifies_numbers_like_serde_json() {
            assert_eq!(num("20").as_u64(), Some(20));
            assert_eq!(num("-3").as_i64(), Some(-3));
            assert_eq!(num("-3").as_u64(), None);
            assert_eq!(num("20.0").as_u64(), None);
            assert_eq!(num("20.0").as_f64(), 20.0);
            assert_eq!(num("18446744073709551615").as_u64(), Some(u64::MAX));
            assert_eq!(num("18446744073709551616").as_u64(), None);
            assert_eq!(num("18446744073709551616").as_f64(), 18446744073709551616.0);
            assert_eq!(num("-9223372036854775808").as_i64(), Some(i64::MIN));
            let minus_zero = num("-0");
            assert_eq!(minus_zero.as_i64(), None);
            assert!(minus_zero.as_f64().is_sign_negative());
        }

        #[test]
        fn parses_decimal_fractions_to_the_nearest_f64() {
            for (text, want) in [
                ("0.3", 0.3),
                ("1.5", 1.5),
                ("-0.01", -0.01),
                ("1.01", 1.01),
                ("2.5e-3", 2.5e-3),
                ("1E2", 100.0),
                ("0.000001", 0.000001),
                ("123456789.125", 123456789.125),
                ("1e300", 1e300),
                ("0.0000000000000000000000000000001", 1e-31),
            ] {
                let got = num(text).as_f64();
                assert!((got - want).abs() <= want.abs() * 1e-15, "{text}: {got}");
            }
            assert_eq!(num("0.3").as_f64().to_bits(), 0.3f64.to_bits());
        }

        #[test]
        fn numbers_display_as_written() {
            assert_eq!(num("1.50").to_string(), "1.50");
            assert_eq!(num("-1e5").to_string(), "-1e5");
        }

        #[test]
        fn rejects_malformed_numbers() {
            for bad in ["01", "1.", ".5", "-", "1e", "1e+", "+1", "1e400", "0x10"] {
                assert!(parse(bad.as_bytes(), false).is_err(), "{bad}");
            }
        }

        #[test]
        fn decodes_string_escapes_and_surrogate_pairs() {
            let v = parse(br#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#, false).unwrap();
            assert_eq!(v.as_str(), Some("a\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1f600}"));
            for bad in [
                &br#""\ud83d""#[..],
                br#""\ude00""#,
                br#""\x""#,
                b"\"a\nb\"",
                b"\"\xff\"",
                br#""abc"#,
            ] {
                assert!(
                    parse(bad, false).is_err(),
                    "{}",
                    String::from_utf8_lossy(bad)
                );
            }
        }

        #[test]
        fn objects_are_sorted_and_the_last_repeated_key_wins() {
            let v = parse(br#"{"b": 1, "a": 2, "b": 3}"#, false).unwrap();
            let m = v.as_object().unwrap();
            assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
            assert_eq!(
                m.get("b")
                    .and_then(Value::as_number)
                    .and_then(Number::as_u64),
                Some(3)
            );
            let e = parse(br#"{"b": 1, "b": 3}"#, true).unwrap_err();
            assert_eq!(e.reason, "duplicate field");
        }

        #[test]
        fn reports_where_the_syntax_error_is() {
            let e = parse(b"{\n  \"a\": tru }", false).unwrap_err();
            assert_eq!((e.line, e.column), (2, 11), "{e}");
            assert!(e.to_string().ends_with("at line 2 column 11"), "{e}");
            for bad in [
                "",
                "[1,",
                "[1 2]",
                "{\"a\" 1}",
                "{1: 2}",
                "{} x",
                "[1,]",
                "nul",
            ] {
                assert!(parse(bad.as_bytes(), false).is_err(), "{bad:?}");
            }
        }

        #[test]
        fn limits_nesting_to_128_levels() {
            let ok = format!("{}{}", "[".repeat(128), "]".repeat(128));
            assert!(parse(ok.as_bytes(), false).is_ok());
            let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
            assert_eq!(
                parse(deep.as_bytes(), false).unwrap_err().reason,
                "recursion limit exceeded"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Config {
        match Config::parse(json.as_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("expected {json} to parse, got {e}"),
        }
    }

    fn err(json: &str) -> ConfigError {
        match Config::parse(json.as_bytes()) {
            Ok(c) => panic!("expected {json} to be rejected, got {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts that `json` is rejected at `path` and that the reason contains `needle`.
    fn rejects(json: &str, path: &str, needle: &str) {
        let e = err(json);
        assert_eq!(e.path, path, "wrong path for {json}: {e}");
        assert!(
            e.reason.contains(needle),
            "reason of {json} lacks {needle:?}: {e}"
        );
        assert!(e.to_string().contains(path), "Display lacks path: {e}");
    }

    fn breaker(fields: &str) -> String {
        format!(r#"{{"breaker": {{{fields}}}}}"#)
    }

    fn policy(fields: &str) -> String {
        format!(r#"{{"retry": {{"policies": [{{"name": "p", {fields}}}]}}}}"#)
    }

    const SPEC_DEFAULT_JSON: &str = r#"{
      "key_by": "cluster",
      "max_keys": 1024,
      "mode": "enforce",
      "breaker": {
        "window": "60s",
        "buckets": 12,
        "min_requests": 20,
        "error_rate_threshold": 0.3,
        "latency_p95_threshold": "800ms",
        "sleep_window": "30s",
        "max_sleep_window": "5m",
        "half_open_max_probes": 3,
        "half_open_successes_to_close": 3,
        "failure": {
          "http_statuses": ["5xx"],
          "grpc_statuses": ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"],
          "upstream_resets": true
        }
      },
      "retry": {
        "strip_downstream_headers": true,
        "budget": { "ratio": 0.2, "min_retries_per_second": 10 },
        "policies": [
          { "name": "grpc", "match": { "grpc": true },
            "retry_on": ["reset", "connect-failure", "refused-stream"],
            "retry_grpc_on": ["unavailable"], "max_retries": 3 },
          { "name": "idempotent", "match": { "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] },
            "retry_on": ["5xx", "reset"], "max_retries": 2 },
          { "name": "unsafe", "match": {},
            "retry_on": ["connect-failure", "refused-stream"], "max_retries": 1 }
        ]
      },
      "overrides": [],
      "reset_signals": null
    }"#;

    // ---- defaults ----

    #[test]
    fn empty_object_gives_every_spec_default() {
        let c = parse("{}");
        assert_eq!(c.key_by, KeyBy::Cluster);
        assert_eq!(c.max_keys, 1024);
        assert_eq!(c.mode, Mode::Enforce);
        let b = &c.breaker;
        assert_eq!(b.window, Duration::from_secs(60));
        assert_eq!(b.buckets, 12);
        assert_eq!(b.min_requests, 20);
        assert_eq!(b.error_rate_threshold, 0.3);
        assert_eq!(b.latency_p95_threshold, Some(Duration::from_millis(800)));
        assert_eq!(b.sleep_window, Duration::from_secs(30));
        assert_eq!(b.max_sleep_window, Duration::from_secs(300));
        assert_eq!(b.half_open_max_probes, 3);
        assert_eq!(b.half_open_successes_to_close, 3);
        assert_eq!(b.failure.http_statuses, vec![HttpStatusMatch::Class(5)]);
        assert_eq!(b.failure.grpc_statuses, vec![14, 4, 13]);
        assert!(b.failure.upstream_resets);
        let r = &c.retry;
        assert!(r.strip_downstream_headers);
        assert_eq!(
            r.budget,
            BudgetConfig {
                ratio: 0.2,
                min_retries_per_second: 10.0
            }
        );
        assert!(c.overrides.is_empty());
        assert_eq!(c.reset_signals, None);
    }

    #[test]
    fn default_retry_policies_are_exactly_the_spec_ones() {
        let p = parse("{}").retry.policies;
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["grpc", "idempotent", "unsafe"]);
        assert_eq!(
            p[0].matcher,
            PolicyMatch {
                grpc: Some(true),
                ..PolicyMatch::default()
            }
        );
        assert_eq!(
            p[0].retry_on,
            ["reset", "connect-failure", "refused-stream"]
        );
        assert_eq!(p[0].retry_grpc_on, ["unavailable"]);
        assert_eq!(p[0].max_retries, 3);
        assert_eq!(
            p[1].matcher.methods,
            ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
        );
        assert_eq!(p[1].matcher.grpc, None);
        assert_eq!(p[1].retry_on, ["5xx", "reset"]);
        assert!(p[1].retry_grpc_on.is_empty());
        assert_eq!(p[1].max_retries, 2);
        assert_eq!(p[2].matcher, PolicyMatch::default());
        assert_eq!(p[2].retry_on, ["connect-failure", "refused-stream"]);
        assert_eq!(p[2].max_retries, 1);
        for policy in &p {
            assert_eq!(policy.per_try_timeout, None);
            assert!(policy.retriable_status_codes.is_empty());
        }
    }

    #[test]
    fn spec_example_document_equals_the_defaults() {
        assert_eq!(parse(SPEC_DEFAULT_JSON), Config::default());
        assert_eq!(parse("{}"), Config::default());
    }

    #[test]
    fn empty_and_blank_input_mean_empty_object() {
        assert_eq!(parse(""), Config::default());
        assert_eq!(parse("  \n\t "), Config::default());
    }

    #[test]
    fn reset_signals_empty_object_gives_spec_defaults() {
        let r = parse(r#"{"reset_signals": {}}"#).reset_signals;
        assert_eq!(
            r,
            Some(ResetSignals {
                cluster: "meshbreaker_sidecar".into(),
                path: "/v1/resets".into(),
                poll_interval: Duration::from_secs(1),
                max_resets_per_second: 5.0,
            })
        );
    }

    #[test]
    fn reset_signals_fields_are_read() {
        let r = parse(
            r#"{"reset_signals": {"cluster": "side", "path": "/x", "poll_interval": "250ms",
                "max_resets_per_second": 0.5}}"#,
        )
        .reset_signals;
        assert_eq!(
            r,
            Some(ResetSignals {
                cluster: "side".into(),
                path: "/x".into(),
                poll_interval: Duration::from_millis(250),
                max_resets_per_second: 0.5,
            })
        );
    }

    #[test]
    fn enums_accept_every_documented_value() {
        for (s, k) in [
            ("cluster", KeyBy::Cluster),
            ("route", KeyBy::Route),
            ("cluster_route", KeyBy::ClusterRoute),
            ("authority", KeyBy::Authority),
        ] {
            assert_eq!(parse(&format!(r#"{{"key_by": "{s}"}}"#)).key_by, k);
        }
        for (s, m) in [
            ("enforce", Mode::Enforce),
            ("dry_run", Mode::DryRun),
            ("forced_open", Mode::ForcedOpen),
            ("disabled", Mode::Disabled),
        ] {
            assert_eq!(parse(&format!(r#"{{"mode": "{s}"}}"#)).mode, m);
        }
    }

    #[test]
    fn rejects_unknown_enum_values() {
        rejects(
            r#"{"key_by": "host"}"#,
            "key_by",
            "must be one of cluster, route",
        );
        rejects(r#"{"mode": "Enforce"}"#, "mode", "must be one of enforce");
    }

    // ---- error format ----

    #[test]
    fn error_display_names_path_and_reason() {
        let e = err(&breaker(r#""error_rate_threshold": 1.5"#));
        assert_eq!(
            e.to_string(),
            "config error at breaker.error_rate_threshold: must be in (0, 1], got 1.5"
        );
    }

    #[test]
    fn invalid_json_is_a_document_error() {
        let e = err("{\"mode\": ");
        assert_eq!(e.path, "");
        assert!(e.reason.starts_with("invalid JSON"), "{e}");
        assert!(
            e.to_string().starts_with("config error: invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn rejects_a_document_that_is_not_an_object() {
        rejects("[]", "", "expected an object, got an array");
        rejects("null", "", "expected an object, got null");
    }

    // ---- unknown fields ----

    #[test]
    fn rejects_unknown_field_at_every_depth() {
        rejects(r#"{"max_key": 3}"#, "max_key", "unknown field");
        rejects(
            &breaker(r#""windows": "1s""#),
            "breaker.windows",
            "unknown field",
        );
        rejects(
            r#"{"breaker": {"failure": {"http": []}}}"#,
            "breaker.failure.http",
            "unknown field",
        );
        rejects(
            r#"{"retry": {"budget": {"ratio": 0.1, "burst": 1}}}"#,
            "retry.budget.burst",
            "unknown field",
        );
        rejects(
            r#"{"retry": {"policies": [{"name": "a"}, {"name": "b", "backoff": "1s"}]}}"#,
            "retry.policies[1].backoff",
            "unknown field",
        );
        rejects(
            &policy(r#""match": {"method": ["GET"]}"#),
            "retry.policies[0].match.method",
            "unknown field",
        );
        rejects(
            r#"{"reset_signals": {"port": 1}}"#,
            "reset_signals.port",
            "unknown field",
        );
        rejects(
            r#"{"overrides": [{"match": {"cluster": "a"}, "key_by": "route"}]}"#,
            "overrides[0].key_by",
            "unknown field",
        );
        rejects(
            r#"{"overrides": [{"match": {"cluster": "a"}, "breaker": {"failure": {"x": 1}}}]}"#,
            "overrides[0].breaker.failure.x",
            "unknown field",
        );
        rejects(
            r#"{"overrides": [{"match": {"host": "a"}}]}"#,
            "overrides[0].match.host",
            "unknown field",
        );
    }

    #[test]
    fn unknown_field_reason_lists_the_known_ones() {
        let e = err(r#"{"retry": {"budget": {"rate": 1}}}"#);
        assert!(e.reason.contains("ratio, min_retries_per_second"), "{e}");
    }

    // ---- wrong types ----

    #[test]
    fn rejects_wrong_types_naming_the_field() {
        rejects(
            r#"{"max_keys": "10"}"#,
            "max_keys",
            "expected an integer, got \"10\"",
        );
        rejects(r#"{"mode": 1}"#, "mode", "expected a string, got 1");
        rejects(
            r#"{"breaker": []}"#,
            "breaker",
            "expected an object, got an array",
        );
        rejects(
            &breaker(r#""buckets": true"#),
            "breaker.buckets",
            "expected an integer",
        );
        rejects(
            &breaker(r#""error_rate_threshold": "0.5""#),
            "breaker.error_rate_threshold",
            "expected a number",
        );
        rejects(
            &breaker(r#""min_requests": null"#),
            "breaker.min_requests",
            "got null",
        );
        rejects(
            r#"{"breaker": {"failure": {"upstream_resets": 1}}}"#,
            "breaker.failure.upstream_resets",
            "expected a boolean",
        );
        rejects(
            r#"{"breaker": {"failure": {"http_statuses": "5xx"}}}"#,
            "breaker.failure.http_statuses",
            "expected an array",
        );
        rejects(
            r#"{"retry": {"strip_downstream_headers": "yes"}}"#,
            "retry.strip_downstream_headers",
            "expected a boolean",
        );
        rejects(
            r#"{"retry": {"policies": {}}}"#,
            "retry.policies",
            "expected an array",
        );
        rejects(
            &policy(r#""retry_on": "5xx""#),
            "retry.policies[0].retry_on",
            "expected an array",
        );
        rejects(
            &policy(r#""match": {"grpc": "true"}"#),
            "retry.policies[0].match.grpc",
            "expected a boolean",
        );
        rejects(
            &policy(r#""match": {"headers": {"x-a": 1}}"#),
            "retry.policies[0].match.headers.x-a",
            "expected a string",
        );
        rejects(
            &policy(r#""match": {"headers": [["x-a", "1"]]}"#),
            "retry.policies[0].match.headers",
            "expected an object",
        );
        rejects(r#"{"overrides": {}}"#, "overrides", "expected an array");
        rejects(
            r#"{"reset_signals": "on"}"#,
            "reset_signals",
            "expected an object",
        );
        rejects(
            r#"{"reset_signals": {"cluster": 3}}"#,
            "reset_signals.cluster",
            "expected a string",
        );
    }

    #[test]
    fn rejects_fractional_integers_but_accepts_integral_floats() {
        rejects(
            &breaker(r#""buckets": 2.5"#),
            "breaker.buckets",
            "must be an integer, got 2.5",
        );
        assert_eq!(parse(&breaker(r#""buckets": 20.0"#)).breaker.buckets, 20);
    }

    // ---- durations ----

    #[test]
    fn parses_duration_units_and_fractions() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25m"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("0.5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn rejects_malformed_durations_with_a_reason() {
        let reason = |s: &str| match parse_duration(s) {
            Ok(d) => panic!("{s:?} parsed as {d:?}"),
            Err(r) => r,
        };
        assert!(reason("30").contains("missing unit"));
        assert!(reason("-1s").contains("negative"));
        assert!(reason("10x").contains("unknown unit \"x\""));
        assert!(reason("10 s").contains("unknown unit"));
        assert!(reason("1.s").contains("invalid number"));
        assert!(reason(".5s").contains("invalid number"));
        assert!(reason("1.2.3s").contains("invalid number"));
        assert!(reason("s").contains("invalid number"));
        assert!(reason("").contains("empty"));
        assert!(reason("99999999999999999999999h").contains("too large"));
        assert!(reason("30S").contains("unknown unit"));
    }

    #[test]
    fn rejects_duration_given_as_number() {
        rejects(
            &breaker(r#""window": 30"#),
            "breaker.window",
            "expected a duration string such as \"30s\"",
        );
        rejects(
            &breaker(r#""sleep_window": "30""#),
            "breaker.sleep_window",
            "missing unit",
        );
        rejects(
            &breaker(r#""sleep_window": "-30s""#),
            "breaker.sleep_window",
            "negative",
        );
    }

    #[test]
    fn format_duration_prints_fractions_like_duration_debug() {
        for nanos in [
            83_333_333,
            1_000_000_500,
            61_250_000_001,
            1_500,
            7,
            2_500_000,
            999_999,
        ] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(format_duration(d), format!("{d:?}"), "{nanos}ns");
        }
        assert_eq!(
            format_duration(Duration::from_nanos(1_250_000_000)),
            "1250ms"
        );
    }

    #[test]
    fn format_duration_round_trips_typical_values() {
        for s in ["250ms", "30s", "5m", "1h", "1500ms", "90s", "0s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    // ---- ranges ----

    #[test]
    fn window_accepts_1s_to_1h_and_rejects_outside() {
        assert_eq!(
            parse(&breaker(r#""window": "1s", "buckets": 10"#))
                .breaker
                .window,
            Duration::from_secs(1)
        );
        assert_eq!(
            parse(&breaker(r#""window": "1h""#)).breaker.window,
            Duration::from_secs(3600)
        );
        rejects(
            &breaker(r#""window": "999ms""#),
            "breaker.window",
            "must be in [1s, 1h], got \"999ms\"",
        );
        rejects(
            &breaker(r#""window": "3600.001s""#),
            "breaker.window",
            "must be in [1s, 1h]",
        );
    }

    #[test]
    fn buckets_accepts_1_to_60() {
        assert_eq!(parse(&breaker(r#""buckets": 1"#)).breaker.buckets, 1);
        assert_eq!(parse(&breaker(r#""buckets": 60"#)).breaker.buckets, 60);
        rejects(
            &breaker(r#""buckets": 0"#),
            "breaker.buckets",
            "must be in [1, 60], got 0",
        );
        rejects(
            &breaker(r#""buckets": 61"#),
            "breaker.buckets",
            "must be in [1, 60], got 61",
        );
        rejects(
            &breaker(r#""buckets": -1"#),
            "breaker.buckets",
            "must be in [1, 60], got -1",
        );
    }

    #[test]
    fn rejects_buckets_shorter_than_100ms() {
        assert_eq!(
            parse(&breaker(r#""window": "1s", "buckets": 10"#))
                .breaker
                .buckets,
            10
        );
        assert_eq!(
            parse(&breaker(r#""window": "6s", "buckets": 60"#))
                .breaker
                .buckets,
            60
        );
        rejects(
            &breaker(r#""window": "1s", "buckets": 11"#),
            "breaker.buckets",
            "at least 100ms",
        );
        rejects(
            &breaker(r#""window": "5900ms", "buckets": 60"#),
            "breaker.buckets",
            "at least 100ms",
        );
    }

    #[test]
    fn counts_must_be_at_least_one() {
        for field in [
            "min_requests",
            "half_open_max_probes",
            "half_open_successes_to_close",
        ] {
            let c = parse(&breaker(&format!(r#""{field}": 1"#)));
            let got = match field {
                "min_requests" => c.breaker.min_requests,
                "half_open_max_probes" => c.breaker.half_open_max_probes,
                _ => c.breaker.half_open_successes_to_close,
            };
            assert_eq!(got, 1, "{field}");
            rejects(
                &breaker(&format!(r#""{field}": 0"#)),
                &format!("breaker.{field}"),
                "must be at least 1, got 0",
            );
        }
        rejects(
            &breaker(r#""min_requests": 4294967296"#),
            "breaker.min_requests",
            "must be at least 1",
        );
    }

    #[test]
    fn error_rate_threshold_is_in_half_open_unit_interval() {
        assert_eq!(
            parse(&breaker(r#""error_rate_threshold": 1"#))
                .breaker
                .error_rate_threshold,
            1.0
        );
        assert_eq!(
            parse(&breaker(r#""error_rate_threshold": 0.0001"#))
                .breaker
                .error_rate_threshold,
            0.0001
        );
        rejects(
            &breaker(r#""error_rate_threshold": 0"#),
            "breaker.error_rate_threshold",
            "must be in (0, 1], got 0",
        );
        rejects(
            &breaker(r#""error_rate_threshold": 1.0001"#),
            "breaker.error_rate_threshold",
            "must be in (0, 1]",
        );
        rejects(
            &breaker(r#""error_rate_threshold": -0.5"#),
            "breaker.error_rate_threshold",
            "must be in (0, 1]",
        );
    }

    #[test]
    fn latency_threshold_null_turns_it_off_and_zero_is_rejected() {
        assert_eq!(
            parse(&breaker(r#""latency_p95_threshold": null"#))
                .breaker
                .latency_p95_threshold,
            None
        );
        assert_eq!(
            parse(&breaker(r#""latency_p95_threshold": "1ms""#))
                .breaker
                .latency_p95_threshold,
            Some(Duration::from_millis(1))
        );
        rejects(
            &breaker(r#""latency_p95_threshold": "0ms""#),
            "breaker.latency_p95_threshold",
            "greater than 0",
        );
    }

    #[test]
    fn sleep_window_is_at_least_100ms_and_at_most_max() {
        assert_eq!(
            parse(&breaker(r#""sleep_window": "100ms""#))
                .breaker
                .sleep_window,
            Duration::from_millis(100)
        );
        assert_eq!(
            parse(&breaker(r#""sleep_window": "5m""#))
                .breaker
                .sleep_window,
            Duration::from_secs(300)
        );
        rejects(
            &breaker(r#""sleep_window": "99ms""#),
            "breaker.sleep_window",
            "must be at least 100ms",
        );
        rejects(
            &breaker(r#""sleep_window": "301s""#),
            "breaker.sleep_window",
            "must not exceed max_sleep_window (5m)",
        );
        rejects(
            &breaker(r#""max_sleep_window": "10s""#),
            "breaker.sleep_window",
            "must not exceed max_sleep_window (10s), got 30s",
        );
        let c = parse(&breaker(
            r#""sleep_window": "1s", "max_sleep_window": "1s""#,
        ));
        assert_eq!(c.breaker.max_sleep_window, Duration::from_secs(1));
    }

    #[test]
    fn max_keys_accepts_1_to_100000() {
        assert_eq!(parse(r#"{"max_keys": 1}"#).max_keys, 1);
        assert_eq!(parse(r#"{"max_keys": 100000}"#).max_keys, 100_000);
        rejects(
            r#"{"max_keys": 0}"#,
            "max_keys",
            "must be in [1, 100000], got 0",
        );
        rejects(
            r#"{"max_keys": 100001}"#,
            "max_keys",
            "must be in [1, 100000], got 100001",
        );
    }

    #[test]
    fn max_retries_accepts_0_to_10() {
        assert_eq!(
            parse(&policy(r#""max_retries": 0"#)).retry.policies[0].max_retries,
            0
        );
        assert_eq!(
            parse(&policy(r#""max_retries": 10"#)).retry.policies[0].max_retries,
            10
        );
        rejects(
            &policy(r#""max_retries": 11"#),
            "retry.policies[0].max_retries",
            "must be in [0, 10], got 11",
        );
        rejects(
            &policy(r#""max_retries": -1"#),
            "retry.policies[0].max_retries",
            "must be in [0, 10], got -1",
        );
    }

    #[test]
    fn max_retries_path_names_the_policy_index() {
        rejects(
            r#"{"retry": {"policies": [{"name": "a"}, {"name": "b", "max_retries": 11}]}}"#,
            "retry.policies[1].max_retries",
            "must be in [0, 10]",
        );
    }

    #[test]
    fn budget_ratio_is_in_unit_interval_and_min_rps_non_negative() {
        let b = |s: &str| format!(r#"{{"retry": {{"budget": {{{s}}}}}}}"#);
        assert_eq!(parse(&b(r#""ratio": 0"#)).retry.budget.ratio, 0.0);
        assert_eq!(parse(&b(r#""ratio": 1"#)).retry.budget.ratio, 1.0);
        rejects(
            &b(r#""ratio": -0.01"#),
            "retry.budget.ratio",
            "must be in [0, 1], got -0.01",
        );
        rejects(
            &b(r#""ratio": 1.01"#),
            "retry.budget.ratio",
            "must be in [0, 1], got 1.01",
        );
        assert_eq!(
            parse(&b(r#""min_retries_per_second": 0"#))
                .retry
                .budget
                .min_retries_per_second,
            0.0
        );
        rejects(
            &b(r#""min_retries_per_second": -1"#),
            "retry.budget.min_retries_per_second",
            "at least 0",
        );
        // A partial budget keeps the other default.
        assert_eq!(
            parse(&b(r#""ratio": 0.5"#))
                .retry
                .budget
                .min_retries_per_second,
            10.0
        );
    }

    #[test]
    fn reset_signals_ranges() {
        rejects(
            r#"{"reset_signals": {"cluster": ""}}"#,
            "reset_signals.cluster",
            "must not be empty",
        );
        rejects(
            r#"{"reset_signals": {"path": "v1/resets"}}"#,
            "reset_signals.path",
            "must start with \"/\"",
        );
        rejects(
            r#"{"reset_signals": {"poll_interval": "99ms"}}"#,
            "reset_signals.poll_interval",
            "at least 100ms",
        );
        rejects(
            r#"{"reset_signals": {"poll_interval": 1}}"#,
            "reset_signals.poll_interval",
            "duration string",
        );
        assert_eq!(
            parse(r#"{"reset_signals": {"poll_interval": "100ms"}}"#)
                .reset_signals
                .map(|r| r.poll_interval),
            Some(Duration::from_millis(100))
        );
        rejects(
            r#"{"reset_signals": {"max_resets_per_second": 0}}"#,
            "reset_signals.max_resets_per_second",
            "greater than 0",
        );
        rejects(
            r#"{"reset_signals": {"max_resets_per_second": -1}}"#,
            "reset_signals.max_resets_per_second",
            "greater than 0",
        );
    }

    // ---- failure ----

    #[test]
    fn http_statuses_accept_classes_codes_and_numeric_strings() {
        let c = parse(
            r#"{"breaker": {"failure": {"http_statuses": ["4xx", "5XX", "1xx", 429, "503", 100, 599]}}}"#,
        );
        assert_eq!(
            c.breaker.failure.http_statuses,
            vec![
                HttpStatusMatch::Class(4),
                HttpStatusMatch::Class(5),
                HttpStatusMatch::Class(1),
                HttpStatusMatch::Exact(429),
                HttpStatusMatch::Exact(503),
                HttpStatusMatch::Exact(100),
                HttpStatusMatch::Exact(599),
            ]
        );
        assert!(c.breaker.failure.is_http_failure(404));
        assert!(c.breaker.failure.is_http_failure(429));
        assert!(!c.breaker.failure.is_http_failure(200));
    }

    #[test]
    fn rejects_bad_http_statuses() {
        let f =
            |s: &str| format!(r#"{{"breaker": {{"failure": {{"http_statuses": ["5xx", {s}]}}}}}}"#);
        rejects(
            &f(r#""6xx""#),
            "breaker.failure.http_statuses[1]",
            "1xx..5xx",
        );
        rejects(
            &f(r#""0xx""#),
            "breaker.failure.http_statuses[1]",
            "1xx..5xx",
        );
        rejects(
            &f("99"),
            "breaker.failure.http_statuses[1]",
            "[100, 599], got 99",
        );
        rejects(
            &f("600"),
            "breaker.failure.http_statuses[1]",
            "[100, 599], got 600",
        );
        rejects(
            &f(r#""abc""#),
            "breaker.failure.http_statuses[1]",
            "[100, 599]",
        );
        rejects(
            &f("true"),
            "breaker.failure.http_statuses[1]",
            "expected a status class",
        );
    }

    #[test]
    fn grpc_statuses_accept_names_case_insensitively_and_codes() {
        let c = parse(
            r#"{"breaker": {"failure": {"grpc_statuses": ["ok", "Unauthenticated", "RESOURCE_EXHAUSTED", 0, 16, "2"]}}}"#,
        );
        assert_eq!(c.breaker.failure.grpc_statuses, vec![0, 16, 8, 0, 16, 2]);
        for (code, name) in GRPC_STATUS_NAMES.iter().enumerate() {
            let c = parse(&format!(
                r#"{{"breaker": {{"failure": {{"grpc_statuses": ["{name}"]}}}}}}"#
            ));
            assert_eq!(c.breaker.failure.grpc_statuses, vec![code as u32]);
        }
    }

    #[test]
    fn rejects_unknown_grpc_statuses() {
        let f = |s: &str| format!(r#"{{"breaker": {{"failure": {{"grpc_statuses": [{s}]}}}}}}"#);
        rejects(
            &f(r#""UNAVAILABLE_""#),
            "breaker.failure.grpc_statuses[0]",
            "gRPC status name",
        );
        rejects(&f("17"), "breaker.failure.grpc_statuses[0]", "got 17");
        rejects(&f("-1"), "breaker.failure.grpc_statuses[0]", "got -1");
    }

    #[test]
    fn partial_failure_keeps_other_failure_defaults() {
        let c = parse(r#"{"breaker": {"failure": {"upstream_resets": false}}}"#);
        assert!(!c.breaker.failure.upstream_resets);
        assert_eq!(
            c.breaker.failure.http_statuses,
            vec![HttpStatusMatch::Class(5)]
        );
        assert_eq!(c.breaker.failure.grpc_statuses, vec![14, 4, 13]);
    }

    // ---- policies ----

    #[test]
    fn policy_fields_are_parsed_and_normalized() {
        let c = parse(&policy(
            r#""match": {"grpc": false, "methods": ["get", "POST", "GET"], "path_prefix": "/api",
                         "headers": {"X-Retry-Class": "bulk"}},
               "retry_on": ["5XX", "reset", "5xx", "retriable-status-codes"],
               "retry_grpc_on": ["Unavailable", "cancelled"],
               "max_retries": 4, "per_try_timeout": "1.5s", "retriable_status_codes": [503, "504", 503]"#,
        ));
        let p = &c.retry.policies[0];
        assert_eq!(c.retry.policies.len(), 1);
        assert_eq!(p.name, "p");
        assert_eq!(p.matcher.grpc, Some(false));
        assert_eq!(p.matcher.methods, ["GET", "POST"]);
        assert_eq!(p.matcher.path_prefix.as_deref(), Some("/api"));
        assert_eq!(
            p.matcher.headers,
            vec![("x-retry-class".to_string(), "bulk".to_string())]
        );
        assert_eq!(p.retry_on, ["5xx", "reset", "retriable-status-codes"]);
        assert_eq!(p.retry_grpc_on, ["unavailable", "cancelled"]);
        assert_eq!(p.max_retries, 4);
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.retriable_status_codes, [503, 504]);
    }

    #[test]
    fn policy_defaults_when_only_name_given() {
        let p = &parse(&policy(r#""match": {}"#)).retry.policies[0];
        assert_eq!(p.matcher, PolicyMatch::default());
        assert!(p.retry_on.is_empty() && p.retry_grpc_on.is_empty());
        assert_eq!(p.max_retries, 1);
        assert_eq!(p.per_try_timeout, None);
    }

    #[test]
    fn empty_policy_list_means_no_policies() {
        assert!(parse(r#"{"retry": {"policies": []}}"#)
            .retry
            .policies
            .is_empty());
    }

    #[test]
    fn accepts_every_envoy_retry_condition() {
        let all: Vec<String> = RETRY_ON_VALUES.iter().map(|v| format!("\"{v}\"")).collect();
        let c = parse(&policy(&format!(r#""retry_on": [{}]"#, all.join(","))));
        assert_eq!(c.retry.policies[0].retry_on, RETRY_ON_VALUES);
        let all: Vec<String> = RETRY_GRPC_ON_VALUES
            .iter()
            .map(|v| format!("\"{v}\""))
            .collect();
        let c = parse(&policy(&format!(r#""retry_grpc_on": [{}]"#, all.join(","))));
        assert_eq!(c.retry.policies[0].retry_grpc_on, RETRY_GRPC_ON_VALUES);
    }

    #[test]
    fn rejects_unknown_retry_conditions() {
        rejects(
            &policy(r#""retry_on": ["reset", "5xxx"]"#),
            "retry.policies[0].retry_on[1]",
            "unknown retry_on condition \"5xxx\"",
        );
        rejects(
            &policy(r#""retry_grpc_on": ["unavailable", "internal", "aborted"]"#),
            "retry.policies[0].retry_grpc_on[2]",
            "unknown retry_grpc_on condition",
        );
        rejects(
            &policy(r#""retry_on": [5]"#),
            "retry.policies[0].retry_on[0]",
            "expected a string",
        );
    }

    #[test]
    fn rejects_missing_empty_and_duplicate_policy_names() {
        rejects(
            r#"{"retry": {"policies": [{"max_retries": 1}]}}"#,
            "retry.policies[0].name",
            "is required",
        );
        rejects(
            r#"{"retry": {"policies": [{"name": ""}]}}"#,
            "retry.policies[0].name",
            "must not be empty",
        );
        rejects(
            r#"{"retry": {"policies": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}}"#,
            "retry.policies[2].name",
            "duplicate policy name \"a\" (also at retry.policies[0])",
        );
    }

    #[test]
    fn rejects_bad_per_try_timeout_and_status_codes() {
        rejects(
            &policy(r#""per_try_timeout": "0s""#),
            "retry.policies[0].per_try_timeout",
            "greater than 0",
        );
        rejects(
            &policy(r#""per_try_timeout": 100"#),
            "retry.policies[0].per_try_timeout",
            "duration string",
        );
        assert_eq!(
            parse(&policy(r#""per_try_timeout": null"#)).retry.policies[0].per_try_timeout,
            None
        );
        rejects(
            &policy(r#""retriable_status_codes": [99]"#),
            "retry.policies[0].retriable_status_codes[0]",
            "[100, 599]",
        );
        rejects(
            &policy(r#""retriable_status_codes": [503, 600]"#),
            "retry.policies[0].retriable_status_codes[1]",
            "[100, 599]",
        );
        assert_eq!(
            parse(&policy(r#""retriable_status_codes": [100, 599]"#))
                .retry
                .policies[0]
                .retriable_status_codes,
            [100, 599]
        );
    }

    #[test]
    fn rejects_bad_match_fields() {
        rejects(
            &policy(r#""match": {"methods": ["GE T"]}"#),
            "retry.policies[0].match.methods[0]",
            "method token",
        );
        rejects(
            &policy(r#""match": {"methods": [""]}"#),
            "retry.policies[0].match.methods[0]",
            "method token",
        );
        rejects(
            &policy(r#""match": {"path_prefix": "api"}"#),
            "retry.policies[0].match.path_prefix",
            "must start with \"/\"",
        );
        rejects(
            &policy(r#""match": {"headers": {"bad name": "x"}}"#),
            "retry.policies[0].match.headers.bad name",
            "HTTP token",
        );
        rejects(
            &policy(r#""match": {"headers": {"X-A": "1", "x-a": "2"}}"#),
            "retry.policies[0].match.headers.x-a",
            "given twice",
        );
    }

    // ---- overrides ----

    #[test]
    fn override_merges_partial_fields_onto_top_level() {
        let c = parse(
            r#"{"mode": "dry_run",
                "breaker": {"min_requests": 50, "failure": {"http_statuses": ["5xx", 429]}},
                "overrides": [{"match": {"cluster": "outbound|8080||Reviews.default.svc"},
                               "breaker": {"error_rate_threshold": 0.5, "failure": {"upstream_resets": false}},
                               "retry": {"budget": {"ratio": 0.1}}}]}"#,
        );
        let o = &c.overrides[0];
        assert_eq!(
            o.matcher,
            OverrideMatch::Cluster("outbound|8080||reviews.default.svc".into())
        );
        assert_eq!(o.mode, Mode::DryRun, "mode inherited from the top level");
        assert_eq!(o.breaker.error_rate_threshold, 0.5);
        assert_eq!(o.breaker.min_requests, 50, "top-level value kept");
        assert!(!o.breaker.failure.upstream_resets);
        assert_eq!(
            o.breaker.failure.http_statuses,
            c.breaker.failure.http_statuses
        );
        assert_eq!(o.breaker.failure.grpc_statuses, vec![14, 4, 13]);
        assert_eq!(
            o.retry.budget,
            BudgetConfig {
                ratio: 0.1,
                min_retries_per_second: 10.0
            }
        );
        assert_eq!(o.retry.policies, c.retry.policies);
        assert!(o.retry.strip_downstream_headers);
    }

    #[test]
    fn override_policies_replace_the_whole_list() {
        let c = parse(
            r#"{"overrides": [{"match": {"route": "r1"}, "mode": "disabled",
                               "retry": {"policies": [{"name": "only", "max_retries": 0}]}}]}"#,
        );
        let o = &c.overrides[0];
        assert_eq!(o.mode, Mode::Disabled);
        assert_eq!(o.retry.policies.len(), 1);
        assert_eq!(o.retry.policies[0].name, "only");
        assert_eq!(c.retry.policies.len(), 3, "top level untouched");
    }

    #[test]
    fn override_match_values_are_sanitized() {
        let c = parse(r#"{"overrides": [{"match": {"authority": "API.Example.com:8443/x y"}}]}"#);
        assert_eq!(
            c.overrides[0].matcher,
            OverrideMatch::Authority("api.example.com:8443_x_y".into())
        );
        let long = "a".repeat(300);
        let c = parse(&format!(
            r#"{{"overrides": [{{"match": {{"route": "{long}"}}}}]}}"#
        ));
        assert_eq!(
            c.overrides[0].matcher,
            OverrideMatch::Route("a".repeat(128))
        );
    }

    #[test]
    fn override_match_must_hold_exactly_one_selector() {
        rejects(
            r#"{"overrides": [{"match": {}}]}"#,
            "overrides[0].match",
            "exactly one of cluster, route, authority, got 0",
        );
        rejects(
            r#"{"overrides": [{"match": {"cluster": "a", "route": "b"}}]}"#,
            "overrides[0].match",
            "exactly one of cluster, route, authority, got 2",
        );
        rejects(
            r#"{"overrides": [{"breaker": {}}]}"#,
            "overrides[0].match",
            "is required",
        );
        rejects(
            r#"{"overrides": [{"match": {"cluster": ""}}]}"#,
            "overrides[0].match.cluster",
            "must not be empty",
        );
        rejects(
            r#"{"overrides": [{"match": {"cluster": 1}}]}"#,
            "overrides[0].match.cluster",
            "expected a string",
        );
    }

    #[test]
    fn override_errors_name_the_override_path() {
        let o = |s: &str| {
            format!(
                r#"{{"overrides": [{{"match": {{"cluster": "a"}}}}, {{"match": {{"cluster": "b"}}, {s}}}]}}"#
            )
        };
        rejects(
            &o(r#""breaker": {"window": "2h"}"#),
            "overrides[1].breaker.window",
            "must be in [1s, 1h]",
        );
        rejects(
            &o(r#""breaker": {"sleep_window": "10m"}"#),
            "overrides[1].breaker.sleep_window",
            "must not exceed max_sleep_window",
        );
        rejects(
            &o(r#""breaker": {"buckets": 60, "window": "5s"}"#),
            "overrides[1].breaker.buckets",
            "at least 100ms",
        );
        rejects(
            &o(r#""retry": {"policies": [{"name": "x", "max_retries": 20}]}"#),
            "overrides[1].retry.policies[0].max_retries",
            "[0, 10]",
        );
        rejects(
            &o(r#""mode": "off""#),
            "overrides[1].mode",
            "must be one of",
        );
    }

    #[test]
    fn override_merge_is_validated_against_top_level_values() {
        // The override only lowers max_sleep_window below the top-level sleep_window.
        rejects(
            r#"{"breaker": {"sleep_window": "1m"},
                "overrides": [{"match": {"cluster": "a"}, "breaker": {"max_sleep_window": "30s"}}]}"#,
            "overrides[0].breaker.sleep_window",
            "must not exceed max_sleep_window (30s), got 1m",
        );
        // The override's window makes the inherited 60 buckets too short.
        rejects(
            r#"{"breaker": {"buckets": 60},
                "overrides": [{"match": {"cluster": "a"}, "breaker": {"window": "5s"}}]}"#,
            "overrides[0].breaker.buckets",
            "at least 100ms",
        );
    }

    #[test]
    fn effective_returns_first_matching_override_or_top_level() {
        let c = parse(
            r#"{"overrides": [
                {"match": {"route": "r1"}, "mode": "dry_run", "breaker": {"min_requests": 1}},
                {"match": {"cluster": "c1"}, "mode": "forced_open", "breaker": {"min_requests": 2}},
                {"match": {"authority": "a1"}, "mode": "disabled", "breaker": {"min_requests": 3}},
                {"match": {"cluster": "c1"}, "mode": "disabled", "breaker": {"min_requests": 4}}
            ]}"#,
        );
        let e = c.effective("c1", "r1", "a1");
        assert_eq!(
            (e.mode, e.breaker.min_requests),
            (Mode::DryRun, 1),
            "first in list order wins"
        );
        let e = c.effective("c1", "other", "a1");
        assert_eq!((e.mode, e.breaker.min_requests), (Mode::ForcedOpen, 2));
        let e = c.effective("c2", "r2", "a1");
        assert_eq!((e.mode, e.breaker.min_requests), (Mode::Disabled, 3));
        let e = c.effective("c2", "r2", "a2");
        assert_eq!((e.mode, e.breaker.min_requests), (Mode::Enforce, 20));
        assert_eq!(e.retry, &c.retry);
    }
}
