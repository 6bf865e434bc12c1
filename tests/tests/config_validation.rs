//! Behaviour 10: bad plugin configurations make `envoy --mode validate` fail with
//! `meshbreaker: config error at <field path>` in its output; good ones pass; the shipped
//! bootstrap (with the built wasm) validates.

use meshbreaker_tests::*;
use serde_json::{json, Value};

fn validate_plugin(plugin: &str) -> (bool, String) {
    let yaml = Bootstrap::new().with_filter(plugin).to_yaml();
    envoy_validate(&yaml)
}

/// Asserts that `plugin` is rejected and the output names one of `paths`.
fn assert_rejected_at(plugin: Value, paths: &[&str]) {
    let (ok, out) = validate_plugin(&plugin.to_string());
    assert!(!ok, "accepted bad config {plugin}:\n{out}");
    let found = paths
        .iter()
        .any(|p| out.contains(&format!("meshbreaker: config error at {p}")));
    assert!(
        found,
        "config {plugin}: output lacks `meshbreaker: config error at` one of {paths:?}:\n{out}"
    );
}

fn breaker(field: &str, v: Value) -> Value {
    json!({ "breaker": { field: v } })
}

#[test]
fn accepts_the_empty_config() {
    let (ok, out) = validate_plugin("{}");
    assert!(ok, "{out}");
}

#[test]
fn accepts_the_full_spec_example() {
    let cfg = json!({
      "key_by": "cluster", "max_keys": 1024, "mode": "enforce",
      "breaker": {
        "window": "60s", "buckets": 12, "min_requests": 20, "error_rate_threshold": 0.3,
        "latency_p95_threshold": "800ms", "sleep_window": "30s", "max_sleep_window": "5m",
        "half_open_max_probes": 3, "half_open_successes_to_close": 3,
        "failure": { "http_statuses": ["5xx", 429], "grpc_statuses": ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"],
                     "upstream_resets": true }
      },
      "retry": {
        "strip_downstream_headers": true,
        "budget": { "ratio": 0.2, "min_retries_per_second": 10 },
        "policies": [
          { "name": "grpc", "match": { "grpc": true }, "retry_on": ["reset", "connect-failure", "refused-stream"],
            "retry_grpc_on": ["unavailable"], "max_retries": 3 },
          { "name": "idempotent", "match": { "methods": ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] },
            "retry_on": ["5xx", "reset"], "max_retries": 2 },
          { "name": "unsafe", "match": {}, "retry_on": ["connect-failure", "refused-stream"], "max_retries": 1 }
        ]
      },
      "overrides": [ { "match": { "cluster": "backend" }, "breaker": { "min_requests": 5 }, "mode": "dry_run" } ],
      "reset_signals": { "cluster": "meshbreaker_sidecar", "path": "/v1/resets", "poll_interval": "1s",
                         "max_resets_per_second": 5 }
    });
    let (ok, out) = validate_plugin(&cfg.to_string());
    assert!(ok, "{out}");
}

#[test]
fn accepts_null_latency_threshold() {
    let (ok, out) = validate_plugin(&breaker("latency_p95_threshold", Value::Null).to_string());
    assert!(ok, "{out}");
}

#[test]
fn shipped_envoy_yaml_validates_with_the_built_filter() {
    require_wasm();
    let shipped = std::fs::read_to_string(repo_root().join("envoy-config/envoy.yaml")).unwrap();
    let (ok, out) = envoy_validate(&shipped);
    assert!(ok, "{out}");
}

#[test]
fn rejects_error_rate_threshold_above_1() {
    assert_rejected_at(
        breaker("error_rate_threshold", json!(1.5)),
        &["breaker.error_rate_threshold"],
    );
}

#[test]
fn rejects_error_rate_threshold_of_0() {
    assert_rejected_at(
        breaker("error_rate_threshold", json!(0.0)),
        &["breaker.error_rate_threshold"],
    );
}

#[test]
fn rejects_buckets_above_60() {
    assert_rejected_at(breaker("buckets", json!(61)), &["breaker.buckets"]);
}

#[test]
fn rejects_zero_buckets() {
    assert_rejected_at(breaker("buckets", json!(0)), &["breaker.buckets"]);
}

#[test]
fn rejects_buckets_shorter_than_100ms() {
    assert_rejected_at(
        json!({"breaker": {"window": "1s", "buckets": 20}}),
        &["breaker.buckets", "breaker.window"],
    );
}

#[test]
fn rejects_window_below_1s() {
    assert_rejected_at(
        json!({"breaker": {"window": "500ms", "buckets": 1}}),
        &["breaker.window"],
    );
}

#[test]
fn rejects_window_above_1h() {
    assert_rejected_at(breaker("window", json!("2h")), &["breaker.window"]);
}

#[test]
fn rejects_unparsable_duration() {
    assert_rejected_at(breaker("window", json!("30 parsecs")), &["breaker.window"]);
}

#[test]
fn rejects_duration_given_as_number() {
    assert_rejected_at(
        breaker("sleep_window", json!(30)),
        &["breaker.sleep_window"],
    );
}

#[test]
fn rejects_zero_min_requests() {
    assert_rejected_at(breaker("min_requests", json!(0)), &["breaker.min_requests"]);
}

#[test]
fn rejects_zero_half_open_max_probes() {
    assert_rejected_at(
        breaker("half_open_max_probes", json!(0)),
        &["breaker.half_open_max_probes"],
    );
}

#[test]
fn rejects_zero_half_open_successes_to_close() {
    assert_rejected_at(
        breaker("half_open_successes_to_close", json!(0)),
        &["breaker.half_open_successes_to_close"],
    );
}

#[test]
fn rejects_sleep_window_below_100ms() {
    assert_rejected_at(
        breaker("sleep_window", json!("50ms")),
        &["breaker.sleep_window"],
    );
}

#[test]
fn rejects_sleep_window_above_max_sleep_window() {
    assert_rejected_at(
        json!({"breaker": {"sleep_window": "10m", "max_sleep_window": "5m"}}),
        &["breaker.sleep_window", "breaker.max_sleep_window"],
    );
}

#[test]
fn rejects_zero_max_keys() {
    assert_rejected_at(json!({"max_keys": 0}), &["max_keys"]);
}

#[test]
fn rejects_max_keys_above_100000() {
    assert_rejected_at(json!({"max_keys": 100001}), &["max_keys"]);
}

#[test]
fn rejects_max_keys_given_as_string() {
    assert_rejected_at(json!({"max_keys": "10"}), &["max_keys"]);
}

#[test]
fn rejects_unknown_mode() {
    assert_rejected_at(json!({"mode": "sometimes"}), &["mode"]);
}

#[test]
fn rejects_unknown_key_by() {
    assert_rejected_at(json!({"key_by": "client_ip"}), &["key_by"]);
}

#[test]
fn rejects_unknown_top_level_field() {
    assert_rejected_at(json!({"colour": "blue"}), &["colour"]);
}

#[test]
fn rejects_unknown_nested_field() {
    assert_rejected_at(breaker("windw", json!("60s")), &["breaker.windw"]);
}

#[test]
fn rejects_max_retries_above_10() {
    assert_rejected_at(
        json!({"retry": {"policies": [{"name": "p", "match": {}, "retry_on": ["5xx"], "max_retries": 11}]}}),
        &[
            "retry.policies[0].max_retries",
            "retry.policies.0.max_retries",
        ],
    );
}

#[test]
fn rejects_budget_ratio_above_1() {
    assert_rejected_at(
        json!({"retry": {"budget": {"ratio": 1.5, "min_retries_per_second": 10}}}),
        &["retry.budget.ratio"],
    );
}

#[test]
fn rejects_bad_value_inside_an_override() {
    assert_rejected_at(
        json!({"overrides": [{"match": {"cluster": "x"}, "breaker": {"buckets": 0}}]}),
        &[
            "overrides[0].breaker.buckets",
            "overrides.0.breaker.buckets",
        ],
    );
}

#[test]
fn rejects_a_configuration_that_is_not_json() {
    let (ok, out) = validate_plugin("key_by: cluster");
    assert!(!ok, "{out}");
    assert!(out.contains("meshbreaker: config error"), "{out}");
}
