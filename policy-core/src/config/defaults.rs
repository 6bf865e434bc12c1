//! SPEC's defaults ("Plugin configuration"): what `{}` means, field by field.
//!
//! Kept apart from the types so that the one place a default changes is obvious; the unit test
//! `spec_example_document_equals_the_defaults` holds them equal to SPEC's example document.

use std::time::Duration;

use super::{
    BreakerConfig, BudgetConfig, Config, FailureConfig, HttpStatusMatch, KeyBy, Mode, PolicyMatch,
    ResetSignals, RetryConfig, RetryPolicy, Shedding, GRPC_DEADLINE_EXCEEDED, GRPC_INTERNAL,
    GRPC_UNAVAILABLE,
};

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
            consecutive_failures: 0,
            shedding: Shedding::All,
            shedding_success_rate: 0.5,
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
