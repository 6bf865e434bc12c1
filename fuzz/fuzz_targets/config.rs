//! The plugin configuration parser, `Config::parse`.
//!
//! Envoy hands the filter whatever bytes an operator, a CI template or Istio's `pluginConfig`
//! produced, on every LDS/ECDS update. A panic here kills the VM at configure time on every worker.
//! Beyond "never panics", this target holds the parser to SPEC: an accepted configuration lies
//! inside SPEC's ranges (the engine trusts it without checking again), and a rejection is one log
//! line naming the field (an input containing a newline must not be able to forge a second line).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use policy_core::config::{BreakerConfig, Config, RetryConfig};
use policy_core::keys::{key_for, sanitize_key};

const MS_100: Duration = Duration::from_millis(100);
const HOUR: Duration = Duration::from_secs(3600);

fn check_breaker(b: &BreakerConfig, at: &str) {
    assert!(
        (Duration::from_secs(1)..=HOUR).contains(&b.window),
        "{at}: window {:?}",
        b.window
    );
    assert!((1..=60).contains(&b.buckets), "{at}: buckets {}", b.buckets);
    assert!(
        b.window / b.buckets >= MS_100,
        "{at}: window/buckets under 100ms"
    );
    assert!(b.min_requests >= 1, "{at}: min_requests 0");
    assert!(
        b.error_rate_threshold > 0.0 && b.error_rate_threshold <= 1.0,
        "{at}: error_rate_threshold {}",
        b.error_rate_threshold
    );
    if let Some(l) = b.latency_p95_threshold {
        assert!(l <= Duration::from_secs(600), "{at}: latency {l:?}");
    }
    assert!(
        b.sleep_window >= MS_100,
        "{at}: sleep_window {:?}",
        b.sleep_window
    );
    assert!(
        b.sleep_window <= b.max_sleep_window && b.max_sleep_window <= HOUR,
        "{at}: sleep {:?} max {:?}",
        b.sleep_window,
        b.max_sleep_window
    );
    assert!(
        (1..=1000).contains(&b.half_open_max_probes),
        "{at}: half_open_max_probes {}",
        b.half_open_max_probes
    );
    assert!(
        (1..=1000).contains(&b.half_open_successes_to_close),
        "{at}: half_open_successes_to_close {}",
        b.half_open_successes_to_close
    );
}

fn check_retry(r: &RetryConfig, at: &str) {
    let ratio = r.budget.ratio;
    assert!((0.0..=1.0).contains(&ratio), "{at}: budget ratio {ratio}");
    let min = r.budget.min_retries_per_second;
    assert!(
        min.is_finite() && min >= 0.0,
        "{at}: min_retries_per_second {min}"
    );
    for p in &r.policies {
        assert!(p.max_retries <= 10, "{at}: max_retries {}", p.max_retries);
    }
}

fn check(cfg: &Config) {
    assert!(
        (1..=100_000).contains(&cfg.max_keys),
        "max_keys {}",
        cfg.max_keys
    );
    check_breaker(&cfg.breaker, "breaker");
    check_retry(&cfg.retry, "retry");
    for o in &cfg.overrides {
        check_breaker(&o.breaker, "overrides[].breaker");
        check_retry(&o.retry, "overrides[].retry");
    }
    if let Some(r) = &cfg.reset_signals {
        assert!(
            (MS_100..=Duration::from_secs(60)).contains(&r.poll_interval),
            "poll_interval {:?}",
            r.poll_interval
        );
        assert!(
            r.max_resets_per_second.is_finite() && r.max_resets_per_second >= 0.0,
            "max_resets_per_second {}",
            r.max_resets_per_second
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(cfg) => {
            check(&cfg);
            // What the engine does next with a request: build its key from host-controlled
            // strings and look up the effective configuration.
            let text = String::from_utf8_lossy(data);
            let mut key = String::new();
            key_for(cfg.key_by, &text, &text, &text, &mut key);
            assert!(key.len() <= 128, "key of {} bytes", key.len());
            let s = sanitize_key(&text);
            let _ = cfg.effective(&s, &s, &s);
        }
        Err(e) => {
            let line = e.to_string();
            assert!(
                line.starts_with("config error"),
                "error without the prefix: {line:?}"
            );
            assert!(
                !line.contains(['\n', '\r']),
                "an error message spans several log lines: {line:?}"
            );
        }
    }
});
