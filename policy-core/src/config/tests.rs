//! The configuration unit tests: defaults, every range message, type and syntax errors, overrides.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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
        "unknown variant `host`, expected one of `cluster`, `route`, `cluster_route`, `authority`",
    );
    rejects(
        r#"{"mode": "Enforce"}"#,
        "mode",
        "unknown variant `Enforce`, expected one of `enforce`, `dry_run`, `forced_open`, `disabled`",
    );
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
    rejects("[]", "", "invalid type: sequence, expected an object");
    rejects("null", "", "invalid type: null, expected an object");
    rejects("7", "", "invalid type: integer `7`, expected an object");
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
    assert_eq!(
        e.to_string(),
        "config error at retry.budget.rate: unknown field `rate`, expected `ratio` or `min_retries_per_second`"
    );
    let e = err(r#"{"colour": "blue"}"#);
    assert_eq!(
        e.to_string(),
        "config error at colour: unknown field `colour`, expected one of `key_by`, `max_keys`, \
         `mode`, `breaker`, `retry`, `overrides`, `reset_signals`"
    );
}

// ---- wrong types ----

#[test]
fn rejects_wrong_types_naming_the_field() {
    // serde's wording: `invalid type: <what was written>, expected <what the field takes>`.
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"max_keys": "10"}"#, "max_keys", r#"invalid type: string "10", expected an integer"#),
        (
            r#"{"mode": 1}"#,
            "mode",
            "invalid type: integer `1`, expected one of `enforce`, `dry_run`, `forced_open`, `disabled`",
        ),
        (r#"{"breaker": []}"#, "breaker", "invalid type: sequence, expected an object"),
        (r#"{"breaker": ["60s"]}"#, "breaker", "invalid type: sequence, expected an object"),
        (&breaker(r#""buckets": true"#), "breaker.buckets", "invalid type: boolean `true`, expected an integer"),
        (
            &breaker(r#""error_rate_threshold": "0.5""#),
            "breaker.error_rate_threshold",
            r#"invalid type: string "0.5", expected a number"#,
        ),
        (&breaker(r#""min_requests": null"#), "breaker.min_requests", "invalid type: null, expected an integer"),
        (
            r#"{"breaker": {"failure": {"upstream_resets": 1}}}"#,
            "breaker.failure.upstream_resets",
            "invalid type: integer `1`, expected a boolean",
        ),
        (
            r#"{"breaker": {"failure": {"http_statuses": "5xx"}}}"#,
            "breaker.failure.http_statuses",
            r#"invalid type: string "5xx", expected a sequence"#,
        ),
        (
            r#"{"retry": {"strip_downstream_headers": "yes"}}"#,
            "retry.strip_downstream_headers",
            r#"invalid type: string "yes", expected a boolean"#,
        ),
        (r#"{"retry": {"policies": {}}}"#, "retry.policies", "invalid type: map, expected a sequence"),
        (r#"{"retry": {"policies": [[]]}}"#, "retry.policies[0]", "invalid type: sequence, expected an object"),
        (&policy(r#""retry_on": "5xx""#), "retry.policies[0].retry_on", "expected a sequence"),
        (&policy(r#""match": {"grpc": "true"}"#), "retry.policies[0].match.grpc", "expected a boolean"),
        (
            &policy(r#""match": {"headers": {"x-a": 1}}"#),
            "retry.policies[0].match.headers.x-a",
            "invalid type: integer `1`, expected a string",
        ),
        (
            &policy(r#""match": {"headers": [["x-a", "1"]]}"#),
            "retry.policies[0].match.headers",
            "invalid type: sequence, expected an object of header name to value",
        ),
        (r#"{"overrides": {}}"#, "overrides", "invalid type: map, expected a sequence"),
        (r#"{"overrides": [[]]}"#, "overrides[0]", "invalid type: sequence, expected an object"),
        (r#"{"reset_signals": "on"}"#, "reset_signals", r#"invalid type: string "on", expected an object"#),
        (r#"{"reset_signals": []}"#, "reset_signals", "invalid type: sequence, expected an object"),
        (
            r#"{"reset_signals": {"cluster": 3}}"#,
            "reset_signals.cluster",
            "invalid type: integer `3`, expected a string",
        ),
    ];
    for (json, path, needle) in cases {
        rejects(json, path, needle);
    }
}

#[test]
fn type_error_reasons_carry_no_json_position() {
    let e = err(r#"{"max_keys": "10"}"#);
    assert_eq!(
        e.to_string(),
        r#"config error at max_keys: invalid type: string "10", expected an integer"#
    );
}

#[test]
fn rejects_a_repeated_field_naming_it() {
    rejects(
        r#"{"mode": "enforce", "mode": "disabled"}"#,
        "mode",
        "duplicate field `mode`",
    );
    rejects(
        &breaker(r#""window": "10s", "buckets": 10, "window": "20s""#),
        "breaker.window",
        "duplicate field `window`",
    );
    rejects(
        r#"{"overrides": [{"match": {"cluster": "a", "cluster": "b"}}]}"#,
        "overrides[0].match.cluster",
        "duplicate field `cluster`",
    );
}

#[test]
fn syntax_errors_are_document_errors_with_a_position() {
    for (json, needle) in [
        (
            "{\"mode\": ",
            "EOF while parsing a value at line 1 column 9",
        ),
        (
            "{\"mode\": \"enforce\",}",
            "trailing comma at line 1 column 20",
        ),
        (
            "{\"mode\": \"enforce\"} x",
            "trailing characters at line 1 column 21",
        ),
        ("{mode: 1}", "key must be a string at line 1 column 2"),
        ("key_by: cluster", "expected value at line 1 column 1"),
        (
            "{\"breaker\": {\"window\": \"1s\"\n  \"buckets\": 2}}",
            "expected `,` or `}` at line 2 column 3",
        ),
    ] {
        let e = err(json);
        assert_eq!(e.path, "", "{json}: {e}");
        assert_eq!(e.reason, format!("invalid JSON: {needle}"), "{json}");
    }
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
    assert_eq!(
        parse(&breaker(r#""min_requests": 1"#)).breaker.min_requests,
        1
    );
    rejects(
        &breaker(r#""min_requests": 0"#),
        "breaker.min_requests",
        "must be at least 1, got 0",
    );
    for field in ["half_open_max_probes", "half_open_successes_to_close"] {
        for n in [1, 1000] {
            let c = parse(&breaker(&format!(r#""{field}": {n}"#)));
            let got = match field {
                "half_open_max_probes" => c.breaker.half_open_max_probes,
                _ => c.breaker.half_open_successes_to_close,
            };
            assert_eq!(got, n, "{field}");
        }
        // SPEC: 1-1000, what the shared-state encoding of HALF_OPEN can hold.
        for (n, msg) in [
            (0, "must be in [1, 1000], got 0"),
            (1001, "must be in [1, 1000], got 1001"),
        ] {
            rejects(
                &breaker(&format!(r#""{field}": {n}"#)),
                &format!("breaker.{field}"),
                msg,
            );
        }
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
    let f = |s: &str| format!(r#"{{"breaker": {{"failure": {{"http_statuses": ["5xx", {s}]}}}}}}"#);
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
        "unknown variant `off`, expected one of `enforce`",
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

// ---- every range and cross-field message, exactly ----

#[test]
fn every_range_rule_has_its_exact_message() {
    let rs = |f: &str| format!(r#"{{"reset_signals": {{{f}}}}}"#);
    let budget = |f: &str| format!(r#"{{"retry": {{"budget": {{{f}}}}}}}"#);
    let cases: Vec<(String, &str)> = vec![
        (r#"{"max_keys": 0}"#.into(), "max_keys: must be in [1, 100000], got 0"),
        (r#"{"max_keys": 100001}"#.into(), "max_keys: must be in [1, 100000], got 100001"),
        (breaker(r#""window": "999ms""#), r#"breaker.window: must be in [1s, 1h], got "999ms""#),
        (breaker(r#""window": "61m""#), r#"breaker.window: must be in [1s, 1h], got "61m""#),
        (breaker(r#""buckets": 0"#), "breaker.buckets: must be in [1, 60], got 0"),
        (breaker(r#""buckets": 61"#), "breaker.buckets: must be in [1, 60], got 61"),
        (breaker(r#""min_requests": 0"#), "breaker.min_requests: must be at least 1, got 0"),
        (
            breaker(r#""min_requests": 4294967296"#),
            "breaker.min_requests: must be at least 1, got 4294967296",
        ),
        (
            breaker(r#""error_rate_threshold": 1.5"#),
            "breaker.error_rate_threshold: must be in (0, 1], got 1.5",
        ),
        (
            breaker(r#""error_rate_threshold": 0"#),
            "breaker.error_rate_threshold: must be in (0, 1], got 0",
        ),
        (
            breaker(r#""latency_p95_threshold": "0ms""#),
            r#"breaker.latency_p95_threshold: must be greater than 0 (or null to turn it off), got "0ms""#,
        ),
        (
            breaker(r#""latency_p95_threshold": "10.5m""#),
            r#"breaker.latency_p95_threshold: must be at most 10m, got "10.5m""#,
        ),
        (
            breaker(r#""sleep_window": "99ms""#),
            r#"breaker.sleep_window: must be at least 100ms, got "99ms""#,
        ),
        (
            breaker(r#""max_sleep_window": "50ms""#),
            r#"breaker.max_sleep_window: must be at least 100ms, got "50ms""#,
        ),
        (
            breaker(r#""max_sleep_window": "61m""#),
            r#"breaker.max_sleep_window: must be at most 1h, got "61m""#,
        ),
        (
            breaker(r#""half_open_max_probes": 1001"#),
            "breaker.half_open_max_probes: must be in [1, 1000], got 1001",
        ),
        (
            breaker(r#""half_open_successes_to_close": 0"#),
            "breaker.half_open_successes_to_close: must be in [1, 1000], got 0",
        ),
        (
            breaker(r#""window": "1s", "buckets": 11"#),
            "breaker.buckets: window / buckets must be at least 100ms, got 1s / 11 = 90.90909ms",
        ),
        (
            breaker(r#""sleep_window": "301s""#),
            "breaker.sleep_window: must not exceed max_sleep_window (5m), got 301s",
        ),
        (
            policy(r#""max_retries": 11"#),
            "retry.policies[0].max_retries: must be in [0, 10], got 11",
        ),
        (
            policy(r#""per_try_timeout": "0ms""#),
            r#"retry.policies[0].per_try_timeout: must be greater than 0, got "0ms""#,
        ),
        (budget(r#""ratio": 1.01"#), "retry.budget.ratio: must be in [0, 1], got 1.01"),
        (
            budget(r#""min_retries_per_second": -1"#),
            "retry.budget.min_retries_per_second: must be at least 0, got -1",
        ),
        (
            rs(r#""poll_interval": "99ms""#),
            r#"reset_signals.poll_interval: must be at least 100ms, got "99ms""#,
        ),
        (
            rs(r#""poll_interval": "61s""#),
            r#"reset_signals.poll_interval: must be at most 60s, got "61s""#,
        ),
        (
            rs(r#""max_resets_per_second": 0"#),
            "reset_signals.max_resets_per_second: must be greater than 0, got 0",
        ),
        (rs(r#""cluster": """#), "reset_signals.cluster: must not be empty"),
        (
            rs(r#""path": "v1""#),
            r#"reset_signals.path: must start with "/", got "v1""#,
        ),
        (
            r#"{"breaker": {"failure": {"http_statuses": [600]}}}"#.into(),
            "breaker.failure.http_statuses[0]: must be an HTTP status code in [100, 599], got 600",
        ),
        (
            r#"{"breaker": {"failure": {"http_statuses": ["6xx"]}}}"#.into(),
            r#"breaker.failure.http_statuses[0]: status class must be one of 1xx..5xx, got "6xx""#,
        ),
        (
            r#"{"breaker": {"failure": {"grpc_statuses": [17]}}}"#.into(),
            "breaker.failure.grpc_statuses[0]: must be a gRPC status name (OK … UNAUTHENTICATED) or code 0–16, got 17",
        ),
        (
            breaker(r#""buckets": 2.5"#),
            "breaker.buckets: must be an integer, got 2.5",
        ),
    ];
    for (json, want) in &cases {
        assert_eq!(
            err(json).to_string(),
            format!("config error at {want}"),
            "{json}"
        );
    }
}

#[test]
fn spec_upper_bounds_are_accepted_at_the_bound() {
    let c = parse(
        r#"{"breaker": {"latency_p95_threshold": "10m", "max_sleep_window": "1h",
            "half_open_max_probes": 1000, "half_open_successes_to_close": 1000},
            "reset_signals": {"poll_interval": "60s"}}"#,
    );
    assert_eq!(
        c.breaker.latency_p95_threshold,
        Some(Duration::from_secs(600))
    );
    assert_eq!(c.breaker.max_sleep_window, Duration::from_secs(3600));
    assert_eq!(c.breaker.half_open_max_probes, 1000);
    assert_eq!(
        c.reset_signals.map(|r| r.poll_interval),
        Some(Duration::from_secs(60))
    );
}

#[test]
fn config_deserializes_through_serde_with_validation() {
    let c: Config = serde_json::from_str(r#"{"max_keys": 7, "mode": "dry_run"}"#).unwrap();
    assert_eq!((c.max_keys, c.mode), (7, Mode::DryRun));
    let e = serde_json::from_str::<Config>(r#"{"breaker": {"error_rate_threshold": 1.5}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config error at breaker.error_rate_threshold: must be in (0, 1], got 1.5"),
        "{e}"
    );
    assert!(serde_json::from_str::<Config>("[]").is_err());
}

#[test]
fn config_built_in_code_equals_the_parsed_one() {
    let mut built = Config {
        max_keys: 10,
        ..Config::default()
    };
    built.breaker.min_requests = 5;
    assert_eq!(
        parse(r#"{"max_keys": 10, "breaker": {"min_requests": 5}}"#),
        built
    );
}

#[test]
fn parse_all_reports_every_range_error_in_document_order() {
    let errors = Config::parse_all(
        br#"{"max_keys": 0, "breaker": {"buckets": 61, "error_rate_threshold": 2},
            "retry": {"policies": [{"name": "a", "max_retries": 11}, {"name": "a"}]},
            "overrides": [{"match": {}, "breaker": {"window": "2h"}}]}"#,
    )
    .unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "config error at max_keys: must be in [1, 100000], got 0",
            "config error at breaker.buckets: must be in [1, 60], got 61",
            "config error at breaker.error_rate_threshold: must be in (0, 1], got 2",
            "config error at retry.policies[0].max_retries: must be in [0, 10], got 11",
            "config error at retry.policies[1].name: duplicate policy name \"a\" (also at retry.policies[0])",
            "config error at overrides[0].match: must hold exactly one of cluster, route, authority, got 0",
            "config error at overrides[0].breaker.window: must be in [1s, 1h], got \"2h\"",
        ]
    );
    // parse gives the first of them, as the filter logs it.
    assert_eq!(
        Config::parse(br#"{"max_keys": 0, "breaker": {"buckets": 61}}"#)
            .unwrap_err()
            .to_string(),
        shown[0]
    );
}

#[test]
fn parse_all_checks_cross_field_rules_once_fields_are_in_range() {
    let errors = Config::parse_all(
        br#"{"breaker": {"window": "1s", "buckets": 20, "sleep_window": "10m"}}"#,
    )
    .unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["breaker.buckets", "breaker.sleep_window"]);
}
