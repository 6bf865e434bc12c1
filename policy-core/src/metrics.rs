//! The names of the metrics SPEC promises ("What an operator sees"), and of their labels.
//!
//! Why here: the filter defines these metrics, and the CLI's `status`, the tests and the
//! benchmarks read them back from Envoy; one definition keeps writer and readers on one name.
//! Changing a name breaks every dashboard and alert built on it.

/// 0 closed, 1 open, 2 half-open.
pub const STATE: &str = "meshbreaker_state";
/// Decisions, by `decision` ([`DECISIONS`]).
pub const REQUESTS_TOTAL: &str = "meshbreaker_requests_total";
/// Transitions, by `to` ([`TRANSITIONS_TO`]).
pub const TRANSITIONS_TOTAL: &str = "meshbreaker_transitions_total";
/// The window's failure ratio × 10⁶.
pub const ERROR_RATE_PPM: &str = "meshbreaker_error_rate_ppm";
/// The window's P95.
pub const LATENCY_P95_MS: &str = "meshbreaker_latency_p95_ms";
/// Requests sent with retries switched off by the budget.
pub const RETRY_BUDGET_DENIED_TOTAL: &str = "meshbreaker_retry_budget_denied_total";
/// Resets attributed from the sidecar.
pub const KERNEL_RESETS_TOTAL: &str = "meshbreaker_kernel_resets_total";

/// Every metric SPEC lists.
pub const ALL: [&str; 7] = [
    STATE,
    REQUESTS_TOTAL,
    TRANSITIONS_TOTAL,
    ERROR_RATE_PPM,
    LATENCY_P95_MS,
    RETRY_BUDGET_DENIED_TOTAL,
    KERNEL_RESETS_TOTAL,
];

/// The label every metric carries: the breaker's key.
pub const KEY: &str = "key";
/// The label of [`REQUESTS_TOTAL`].
pub const DECISION: &str = "decision";
/// The label of [`TRANSITIONS_TOTAL`].
pub const TO: &str = "to";

/// The values of [`DECISION`].
pub const DECISIONS: [&str; 4] = ["allowed", "rejected", "probe", "dry_run_reject"];
/// The values of [`TO`]: the state names ([`crate::breaker::State::as_str`]).
pub const TRANSITIONS_TO: [&str; 3] = ["open", "half_open", "closed"];
