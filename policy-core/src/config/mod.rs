//! The plugin configuration of SPEC ("Plugin configuration"): the compiled types the filter uses,
//! and [`Config::parse`], which reads the JSON document.
//!
//! Why wire types, then compiled ones: the JSON a user writes ([`raw`], serde with
//! `deny_unknown_fields`) is partial (an override gives only the fields it changes), while the
//! filter wants a complete configuration with no `Option`s left to check on the request path.
//! So parsing goes raw → [`validate::fields`] (ranges, with the path of each field) →
//! [`merge`] (onto SPEC's [`defaults`], overrides onto the top level) → [`validate::rules`]
//! (cross-field rules on the merged result). Every error names its field path
//! ([`ConfigError`]): serde's through `serde_path_to_error`, validation's from its own walk.
//!
//! Parsing rules beyond SPEC's text: see [`raw`] (types, `null`, integers), [`duration`] (the
//! duration syntax) and [`merge`] (normalization). A policy needs a non-empty, unique `name`;
//! its other fields default to `match` `{}` (matches everything), `retry_on`/`retry_grpc_on`
//! `[]`, `max_retries` 1 (Envoy's own default), no `per_try_timeout`, no
//! `retriable_status_codes`. A repeated field in one object is an error (`duplicate field`).
//!
//! A [`Config`] can also be built in code (its fields are public, [`Default`] is SPEC's
//! defaults) or deserialized from any serde format (`Deserialize`, with the same validation).
//! With the `schema` feature, [`schema`] gives the JSON Schema of the document.

use std::time::Duration;

mod defaults;
pub mod duration;
mod error;
mod merge;
pub mod raw;
mod schema_macros;
mod validate;

#[cfg(test)]
mod tests;

pub use self::duration::{format_duration, parse_duration};
pub use self::error::ConfigError;
pub use self::raw::RawConfig;
pub use self::validate::FLUSH_MS;
pub use self::validate::{MAX_POLL_INTERVAL, MAX_PROBES, MIN_POLL_INTERVAL};
/// Keys are the `keys` module's: configuration only names how they are formed.
pub use crate::keys::KeyBy;

/// What the breaker does with its decisions (SPEC `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename_all = "snake_case"))]
pub enum Mode {
    Enforce,
    DryRun,
    ForcedOpen,
    Disabled,
}

impl Mode {
    /// The names the configuration writes, in the order of [`Mode::ALL`].
    pub const NAMES: [&'static str; 4] = ["enforce", "dry_run", "forced_open", "disabled"];
    pub const ALL: [Mode; 4] = [
        Mode::Enforce,
        Mode::DryRun,
        Mode::ForcedOpen,
        Mode::Disabled,
    ];
}

impl<'de> serde::Deserialize<'de> for KeyBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        raw::one_of(d, &KeyBy::NAMES, &KeyBy::ALL)
    }
}

/// What an open circuit does with new requests (SPEC `shedding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename_all = "snake_case"))]
pub enum Shedding {
    /// Reject every request until the HALF_OPEN probes succeed.
    #[default]
    All,
    /// On an error-rate trip, reject a share of requests that grows as the success rate clients
    /// see falls (`crate::shedding`).
    Adaptive,
}

impl Shedding {
    pub const NAMES: [&'static str; 2] = ["all", "adaptive"];
    pub const ALL: [Shedding; 2] = [Shedding::All, Shedding::Adaptive];
}

impl<'de> serde::Deserialize<'de> for Shedding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        raw::one_of(d, &Shedding::NAMES, &Shedding::ALL)
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        raw::one_of(d, &Mode::NAMES, &Mode::ALL)
    }
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
    /// Failed attempts in a row that trip at once; 0 turns the rule off.
    pub consecutive_failures: u32,
    pub shedding: Shedding,
    /// Adaptive shedding's target: the success rate clients see (after retries) at or above
    /// which nothing is shed (`K = 1 / shedding_success_rate` in Google SRE's formula).
    pub shedding_success_rate: f64,
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

/// The configuration in force for one key: the top level, or the first override that matches.
#[derive(Debug, Clone, Copy)]
pub struct Effective<'a> {
    pub mode: Mode,
    pub breaker: &'a BreakerConfig,
    pub retry: &'a RetryConfig,
}

impl Config {
    /// Parses and validates the plugin configuration (JSON bytes; empty or blank input means `{}`).
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_all(json).map_err(first)
    }

    /// Validates a parsed document and merges it onto the defaults; the first error if any.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        Config::from_raw_all(raw).map_err(first)
    }

    /// Like [`Config::parse`], with every range and cross-field error of the document instead
    /// of the first (a type, unknown-field or syntax error stops serde at the first one).
    /// Never `Err` with an empty list.
    pub fn parse_all(json: &[u8]) -> Result<Config, Vec<ConfigError>> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(raw::ObjectsOnly(&mut de))
            .map_err(|e| vec![ConfigError::from_serde(e)])?;
        de.end().map_err(|e| vec![ConfigError::syntax(&e)])?;
        Config::from_raw_all(&raw)
    }

    fn from_raw_all(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut errors = validate::Errors::default();
        validate::fields(raw, &mut errors);
        let cfg = merge::config(raw);
        if errors.0.is_empty() {
            validate::rules(&cfg, &mut errors);
        }
        if errors.0.is_empty() {
            Ok(cfg)
        } else {
            Err(errors.0)
        }
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

/// The first of a document's errors (the list is never empty; an empty one still gives an error).
fn first(errors: Vec<ConfigError>) -> ConfigError {
    errors
        .into_iter()
        .next()
        .unwrap_or_else(|| ConfigError::new("", "invalid configuration"))
}

impl<'de> serde::Deserialize<'de> for Config {
    /// The document as [`Config::parse`] reads it, from any serde format; a validation error
    /// becomes the format's custom error, with the `config error at <path>: …` text.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawConfig::deserialize(raw::ObjectsOnly(d))?;
        Config::from_raw(&raw).map_err(serde::de::Error::custom)
    }
}

/// The JSON Schema of the plugin configuration (for editors, `meshbreaker schema`, CI). It
/// holds the types, enums, integer and number ranges, the duration syntax and the required and
/// unknown fields; duration ranges (`window` 1s–1h, …) and cross-field rules (`window` /
/// `buckets` ≥ 100ms, `sleep_window` ≤ `max_sleep_window`) are in the descriptions only, since
/// JSON Schema cannot compare durations: [`Config::parse`] is the authority.
#[cfg(feature = "schema")]
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(RawConfig)
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
pub(crate) const GRPC_DEADLINE_EXCEEDED: u32 = 4;
pub(crate) const GRPC_INTERNAL: u32 = 13;
pub(crate) const GRPC_UNAVAILABLE: u32 = 14;

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
