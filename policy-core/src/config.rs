//! The plugin configuration of SPEC ("Plugin configuration"): types, defaults, parsing, validation,
//! and overrides merged onto the defaults.
//!
//! OWNER NOTE (remove when implemented): the type and field names below are a fixed interface used
//! by `window`, `breaker`, `retry` and the filter. Parsing/validation code and tests go here.

use std::time::Duration;

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

impl Default for Config {
    fn default() -> Self {
        todo_defaults()
    }
}

// Placeholder until the owner implements parsing; replaced by the real defaults of SPEC.
fn todo_defaults() -> Config {
    Config {
        key_by: KeyBy::Cluster,
        max_keys: 1024,
        mode: Mode::Enforce,
        breaker: BreakerConfig {
            window: Duration::from_secs(60),
            buckets: 12,
            min_requests: 20,
            error_rate_threshold: 0.3,
            latency_p95_threshold: Some(Duration::from_millis(800)),
            sleep_window: Duration::from_secs(30),
            max_sleep_window: Duration::from_secs(300),
            half_open_max_probes: 3,
            half_open_successes_to_close: 3,
            failure: FailureConfig {
                http_statuses: vec![HttpStatusMatch::Class(5)],
                grpc_statuses: vec![14, 4, 13],
                upstream_resets: true,
            },
        },
        retry: RetryConfig {
            strip_downstream_headers: true,
            budget: BudgetConfig { ratio: 0.2, min_retries_per_second: 10.0 },
            policies: Vec::new(),
        },
        overrides: Vec::new(),
        reset_signals: None,
    }
}

impl Config {
    /// Parses and validates the plugin configuration (JSON bytes; empty input means `{}`).
    pub fn parse(_json: &[u8]) -> Result<Config, ConfigError> {
        Ok(Config::default())
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
                return Effective { mode: o.mode, breaker: &o.breaker, retry: &o.retry };
            }
        }
        Effective { mode: self.mode, breaker: &self.breaker, retry: &self.retry }
    }
}
