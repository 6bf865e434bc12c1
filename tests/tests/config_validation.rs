//! Behaviour 10: bad plugin configurations make `envoy --mode validate` fail with
//! `meshbreaker: config error at <field path>` in its output; good ones pass; the shipped
//! bootstrap (with the built wasm) validates.
//!
//! The good and bad configurations are one table ([`good_configs`], [`bad_configs`]), so that
//! the JSON Schema test here checks the same documents Envoy is given.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::{json, Value};

fn validate_plugin(plugin: &str) -> (bool, String) {
    let yaml = Bootstrap::new().with_filter(plugin).to_yaml();
    envoy_validate(&yaml)
}

/// Asserts that `plugin` is rejected and the output names one of `paths` (`""`: the document).
fn assert_rejected_at(plugin: &str, paths: &[&str]) {
    let (ok, out) = validate_plugin(plugin);
    assert!(!ok, "accepted bad config {plugin}:\n{out}");
    let found = paths.iter().any(|p| {
        if p.is_empty() {
            out.contains("meshbreaker: config error: ")
        } else {
            out.contains(&format!("meshbreaker: config error at {p}: "))
        }
    });
    assert!(
        found,
        "config {plugin}: output lacks `meshbreaker: config error at` one of {paths:?}:\n{out}"
    );
}

fn assert_accepted(plugin: &str) {
    let (ok, out) = validate_plugin(plugin);
    assert!(ok, "{out}");
}

fn breaker(field: &str, v: Value) -> Value {
    json!({ "breaker": { field: v } })
}

fn spec_example() -> Value {
    json!({
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
    })
}

/// Configurations the filter must accept: (test name, plugin configuration).
pub fn good_configs() -> Vec<(&'static str, String)> {
    vec![
        ("accepts_the_empty_config", "{}".into()),
        ("accepts_the_full_spec_example", spec_example().to_string()),
        (
            "accepts_null_latency_threshold",
            breaker("latency_p95_threshold", Value::Null).to_string(),
        ),
        (
            "accepts_spec_upper_bounds",
            json!({"breaker": {"latency_p95_threshold": "10m", "max_sleep_window": "1h",
                   "half_open_max_probes": 1000, "half_open_successes_to_close": 1000},
                   "reset_signals": {"poll_interval": "60s"}})
            .to_string(),
        ),
    ]
}

/// Whether JSON Schema can express the rule a bad configuration breaks. Duration ranges and
/// cross-field rules cannot be (durations are strings); `Config::parse` holds them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Schema {
    Rejects,
    CannotExpress,
}

/// Configurations the filter must refuse: (test name, plugin configuration, accepted paths).
pub fn bad_configs() -> Vec<(&'static str, String, Vec<&'static str>, Schema)> {
    use Schema::*;
    let j = |v: Value| v.to_string();
    vec![
        (
            "rejects_error_rate_threshold_above_1",
            j(breaker("error_rate_threshold", json!(1.5))),
            vec!["breaker.error_rate_threshold"],
            Rejects,
        ),
        (
            "rejects_error_rate_threshold_of_0",
            j(breaker("error_rate_threshold", json!(0.0))),
            vec!["breaker.error_rate_threshold"],
            Rejects,
        ),
        (
            "rejects_buckets_above_60",
            j(breaker("buckets", json!(61))),
            vec!["breaker.buckets"],
            Rejects,
        ),
        (
            "rejects_zero_buckets",
            j(breaker("buckets", json!(0))),
            vec!["breaker.buckets"],
            Rejects,
        ),
        (
            "rejects_buckets_shorter_than_100ms",
            j(json!({"breaker": {"window": "1s", "buckets": 20}})),
            vec!["breaker.buckets", "breaker.window"],
            CannotExpress,
        ),
        (
            "rejects_window_below_1s",
            j(json!({"breaker": {"window": "500ms", "buckets": 1}})),
            vec!["breaker.window"],
            CannotExpress,
        ),
        (
            "rejects_window_above_1h",
            j(breaker("window", json!("2h"))),
            vec!["breaker.window"],
            CannotExpress,
        ),
        (
            "rejects_unparsable_duration",
            j(breaker("window", json!("30 parsecs"))),
            vec!["breaker.window"],
            Rejects,
        ),
        (
            "rejects_duration_given_as_number",
            j(breaker("sleep_window", json!(30))),
            vec!["breaker.sleep_window"],
            Rejects,
        ),
        (
            "rejects_zero_min_requests",
            j(breaker("min_requests", json!(0))),
            vec!["breaker.min_requests"],
            Rejects,
        ),
        (
            "rejects_zero_half_open_max_probes",
            j(breaker("half_open_max_probes", json!(0))),
            vec!["breaker.half_open_max_probes"],
            Rejects,
        ),
        (
            "rejects_half_open_max_probes_above_1000",
            j(breaker("half_open_max_probes", json!(1001))),
            vec!["breaker.half_open_max_probes"],
            Rejects,
        ),
        (
            "rejects_zero_half_open_successes_to_close",
            j(breaker("half_open_successes_to_close", json!(0))),
            vec!["breaker.half_open_successes_to_close"],
            Rejects,
        ),
        (
            "rejects_latency_threshold_above_10m",
            j(breaker("latency_p95_threshold", json!("11m"))),
            vec!["breaker.latency_p95_threshold"],
            CannotExpress,
        ),
        (
            "rejects_sleep_window_below_100ms",
            j(breaker("sleep_window", json!("50ms"))),
            vec!["breaker.sleep_window"],
            CannotExpress,
        ),
        (
            "rejects_sleep_window_above_max_sleep_window",
            j(json!({"breaker": {"sleep_window": "10m", "max_sleep_window": "5m"}})),
            vec!["breaker.sleep_window", "breaker.max_sleep_window"],
            CannotExpress,
        ),
        (
            "rejects_max_sleep_window_above_1h",
            j(breaker("max_sleep_window", json!("2h"))),
            vec!["breaker.max_sleep_window"],
            CannotExpress,
        ),
        (
            "rejects_zero_max_keys",
            j(json!({"max_keys": 0})),
            vec!["max_keys"],
            Rejects,
        ),
        (
            "rejects_max_keys_above_100000",
            j(json!({"max_keys": 100001})),
            vec!["max_keys"],
            Rejects,
        ),
        (
            "rejects_max_keys_given_as_string",
            j(json!({"max_keys": "10"})),
            vec!["max_keys"],
            Rejects,
        ),
        (
            "rejects_unknown_mode",
            j(json!({"mode": "sometimes"})),
            vec!["mode"],
            Rejects,
        ),
        (
            "rejects_mode_given_as_number",
            j(json!({"mode": 1})),
            vec!["mode"],
            Rejects,
        ),
        (
            "rejects_unknown_key_by",
            j(json!({"key_by": "client_ip"})),
            vec!["key_by"],
            Rejects,
        ),
        (
            "rejects_unknown_top_level_field",
            j(json!({"colour": "blue"})),
            vec!["colour"],
            Rejects,
        ),
        (
            "rejects_unknown_nested_field",
            j(breaker("windw", json!("60s"))),
            vec!["breaker.windw"],
            Rejects,
        ),
        (
            "rejects_max_retries_above_10",
            j(
                json!({"retry": {"policies": [{"name": "p", "match": {}, "retry_on": ["5xx"], "max_retries": 11}]}}),
            ),
            vec!["retry.policies[0].max_retries"],
            Rejects,
        ),
        (
            "rejects_budget_ratio_above_1",
            j(json!({"retry": {"budget": {"ratio": 1.5, "min_retries_per_second": 10}}})),
            vec!["retry.budget.ratio"],
            Rejects,
        ),
        (
            "rejects_bad_value_inside_an_override",
            j(json!({"overrides": [{"match": {"cluster": "x"}, "breaker": {"buckets": 0}}]})),
            vec!["overrides[0].breaker.buckets"],
            Rejects,
        ),
        (
            "rejects_poll_interval_above_60s",
            j(json!({"reset_signals": {"poll_interval": "61s"}})),
            vec!["reset_signals.poll_interval"],
            CannotExpress,
        ),
        (
            "rejects_a_section_given_as_an_array",
            j(json!({"breaker": ["60s", 12]})),
            vec!["breaker"],
            Rejects,
        ),
        // Not expressible as serde_json::Value: a repeated key and a document that is not JSON.
        (
            "rejects_a_repeated_field",
            r#"{"mode": "enforce", "mode": "disabled"}"#.into(),
            vec!["mode"],
            CannotExpress,
        ),
        (
            "rejects_a_configuration_that_is_not_json",
            "key_by: cluster".into(),
            vec![""],
            Rejects,
        ),
    ]
}

fn good(name: &str) {
    let (_, json) = good_configs()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap();
    assert_accepted(&json);
}

fn bad(name: &str) {
    let (_, json, paths, _) = bad_configs()
        .into_iter()
        .find(|(n, ..)| *n == name)
        .unwrap();
    assert_rejected_at(&json, &paths);
}

macro_rules! envoy_cases {
    ($check:ident: $($name:ident)*) => {
        $(#[test] fn $name() { $check(stringify!($name)) })*
    };
}

envoy_cases!(good: accepts_the_empty_config accepts_the_full_spec_example accepts_null_latency_threshold
    accepts_spec_upper_bounds);

envoy_cases!(bad: rejects_error_rate_threshold_above_1 rejects_error_rate_threshold_of_0
    rejects_buckets_above_60 rejects_zero_buckets rejects_buckets_shorter_than_100ms
    rejects_window_below_1s rejects_window_above_1h rejects_unparsable_duration
    rejects_duration_given_as_number rejects_zero_min_requests rejects_zero_half_open_max_probes
    rejects_half_open_max_probes_above_1000 rejects_zero_half_open_successes_to_close
    rejects_latency_threshold_above_10m rejects_sleep_window_below_100ms
    rejects_sleep_window_above_max_sleep_window rejects_max_sleep_window_above_1h
    rejects_zero_max_keys rejects_max_keys_above_100000 rejects_max_keys_given_as_string
    rejects_unknown_mode rejects_mode_given_as_number rejects_unknown_key_by
    rejects_unknown_top_level_field rejects_unknown_nested_field rejects_max_retries_above_10
    rejects_budget_ratio_above_1 rejects_bad_value_inside_an_override
    rejects_poll_interval_above_60s rejects_a_section_given_as_an_array rejects_a_repeated_field
    rejects_a_configuration_that_is_not_json);

#[test]
fn every_table_case_has_an_envoy_test() {
    let src = include_str!("config_validation.rs");
    let cases = good_configs().into_iter().map(|(n, _)| n);
    for name in cases.chain(bad_configs().into_iter().map(|(n, ..)| n)) {
        let listed = src.matches(name).count();
        assert!(
            listed >= 2,
            "{name} is in the table but has no envoy_cases! entry"
        );
    }
}

#[test]
fn shipped_envoy_yaml_validates_with_the_built_filter() {
    require_wasm();
    let shipped = std::fs::read_to_string(repo_root().join("envoy-config/envoy.yaml")).unwrap();
    let (ok, out) = envoy_validate(&shipped);
    assert!(ok, "{out}");
}

// ---- the JSON Schema (policy_core::config::schema) on the same documents ----

fn schema_validator() -> jsonschema::Validator {
    let schema = serde_json::to_value(policy_core::config::schema()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("the schema is invalid: {e}"))
}

fn yaml_file(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// The shipped plugin configurations: envoy-config/envoy.yaml's wasm `configuration` and
/// istio/wasmplugin.yaml's `pluginConfig`.
fn shipped_plugin_configs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                if m.get("name").and_then(Value::as_str) == Some("meshbreaker") {
                    if let Some(text) = m["configuration"]["value"].as_str() {
                        out.push((
                            "envoy-config/envoy.yaml".into(),
                            serde_json::from_str(text).unwrap(),
                        ));
                    }
                }
                m.values().for_each(|c| walk(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    for doc in yaml_file("envoy-config/envoy.yaml") {
        walk(&doc, &mut out);
    }
    for doc in yaml_file("istio/wasmplugin.yaml") {
        if doc["kind"] == "WasmPlugin" {
            out.push((
                "istio/wasmplugin.yaml".into(),
                doc["spec"]["pluginConfig"].clone(),
            ));
        }
    }
    out
}

#[test]
fn schema_accepts_the_good_and_shipped_configs() {
    let v = schema_validator();
    let shipped = shipped_plugin_configs();
    assert_eq!(shipped.len(), 2, "{shipped:?}");
    let good = good_configs()
        .into_iter()
        .map(|(n, j)| (n.to_string(), serde_json::from_str::<Value>(&j).unwrap()));
    for (name, doc) in good.chain(shipped) {
        let errors: Vec<String> = v
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{doc}");
        policy_core::config::Config::parse(doc.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn schema_rejects_the_bad_configs_it_can_express() {
    let v = schema_validator();
    for (name, json, _, schema) in bad_configs() {
        // Not JSON, or JSON that serde_json::Value cannot hold as written (a repeated key).
        let Ok(doc) = serde_json::from_str::<Value>(&json) else {
            continue;
        };
        if json.contains(r#""mode": "enforce", "mode""#) {
            continue;
        }
        match schema {
            Schema::Rejects => assert!(!v.is_valid(&doc), "{name}: the schema accepts {doc}"),
            // Held exact: when the schema learns a rule, move its case to `Rejects`.
            Schema::CannotExpress => assert!(
                v.is_valid(&doc),
                "{name}: now rejected by the schema, mark it Rejects"
            ),
        }
    }
}

// ---- `meshbreaker check` (the CLI) agrees with Envoy on every case ----

#[test]
fn check_agrees_with_envoy_validate_on_every_case() {
    let cli = meshbreaker_cli();
    let dir = std::env::temp_dir().join(format!("meshbreaker-agree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = good_configs().into_iter().map(|(n, j)| (n, j, vec![]));
    let bad = bad_configs().into_iter().map(|(n, j, p, _)| (n, j, p));
    for (name, json, paths) in good.chain(bad) {
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, &json).unwrap();
        let out = std::process::Command::new(&cli)
            .arg("check")
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (envoy_ok, envoy_out) = validate_plugin(&json);
        assert_eq!(
            out.status.success(),
            envoy_ok,
            "{name}: meshbreaker check says {stdout} but envoy --mode validate says ok={envoy_ok}:\n{envoy_out}"
        );
        if !envoy_ok {
            assert_eq!(out.status.code(), Some(1), "{name}: {stdout}");
            // The same error line: what the CLI prints after the file and location is what the
            // filter logged after `meshbreaker: `.
            let cli_error = stdout
                .lines()
                .next()
                .and_then(|l| l.split_once(": config error"))
                .map(|(_, e)| format!("meshbreaker: config error{e}"))
                .unwrap_or_default();
            assert!(
                !cli_error.is_empty() && envoy_out.contains(&cli_error),
                "{name}: `{cli_error}` not in Envoy's output:\n{envoy_out}"
            );
            assert!(
                paths.iter().any(|p| if p.is_empty() {
                    cli_error.contains("config error: ")
                } else {
                    cli_error.contains(&format!("config error at {p}: "))
                }),
                "{name}: {cli_error}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
