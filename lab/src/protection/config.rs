//! The proxy's bootstrap: one listener and one cluster per system.

use meshbreaker_harness::bootstrap;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

use super::model::*;

/// A small YAML emitter for the bootstraps (readable in the report's appendix; strings are
/// JSON-quoted, which YAML reads as double-quoted scalars; multi-line strings become `|` blocks).
pub(super) fn to_yaml(v: &Value) -> String {
    fn scalar(v: &Value) -> Option<String> {
        match v {
            Value::Object(m) if m.is_empty() => Some("{}".into()),
            Value::Array(a) if a.is_empty() => Some("[]".into()),
            Value::Object(_) | Value::Array(_) => None,
            Value::String(s) if s.contains('\n') => None,
            other => Some(other.to_string()),
        }
    }
    fn key(k: &str) -> String {
        if !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            k.to_string()
        } else {
            Value::String(k.to_string()).to_string()
        }
    }
    fn block(s: &str, pad: usize, out: &mut String) {
        for l in s.lines() {
            let _ = writeln!(out, "{:pad$}{l}", "");
        }
    }
    fn emit(v: &Value, pad: usize, out: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, val) in m {
                    match (scalar(val), val) {
                        (Some(s), _) => {
                            let _ = writeln!(out, "{:pad$}{}: {s}", "", key(k));
                        }
                        (None, Value::String(s)) => {
                            // `|` keeps one final newline, `|-` none: the string exactly.
                            let chomp = if s.ends_with('\n') { "|" } else { "|-" };
                            let _ = writeln!(out, "{:pad$}{}: {chomp}", "", key(k));
                            block(s, pad + 2, out);
                        }
                        (None, _) => {
                            let _ = writeln!(out, "{:pad$}{}:", "", key(k));
                            emit(val, pad + 2, out);
                        }
                    }
                }
            }
            Value::Array(a) => {
                for item in a {
                    if let Some(s) = scalar(item) {
                        let _ = writeln!(out, "{:pad$}- {s}", "");
                    } else {
                        let mut inner = String::new();
                        emit(item, pad + 2, &mut inner);
                        let dash = format!("{:pad$}- ", "");
                        out.push_str(&dash);
                        out.push_str(inner.get(pad + 2..).unwrap_or(""));
                    }
                }
            }
            other => {
                let _ = writeln!(out, "{:pad$}{}", "", scalar(other).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

pub(super) fn listener(sys: System, wasm: &Path, log_dir: &Path) -> Value {
    let name = sys.name();
    // The shipped route shape: backoff base 250 ms and the previous_hosts predicate. meshbreaker's
    // routes carry no retry_on (the filter's headers decide); the others get the retry policy
    // meshbreaker's default "idempotent" policy writes for a GET, so retries are the same for all.
    let mut retry = bootstrap::retry_policy("0.25s", None);
    if !sys.is_meshbreaker() {
        retry["retry_on"] = json!("5xx,reset");
        retry["num_retries"] = json!(2);
    }
    let mut filters = Vec::new();
    if sys.is_meshbreaker() {
        let cfg = serde_json::to_string_pretty(&sys.plugin_config()).unwrap_or_default();
        filters.push(bootstrap::wasm_filter_json(
            &format!("meshbreaker-{name}"),
            wasm,
            &cfg,
        ));
    }
    if sys == System::AdmissionControl {
        // meshbreaker's 30% error threshold = a 70% success-rate threshold, over meshbreaker
        // tuned's 10 s window; aggression 5 sheds steeply once under it (at 50% success it
        // rejects 78%), and up to every request, as an open breaker would.
        filters.push(json!({
            "name": "envoy.filters.http.admission_control",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
                "enabled": { "default_value": true, "runtime_key": "ac.enabled" },
                "success_criteria": {
                    "http_criteria": { "http_success_status": [{ "start": 100, "end": 500 }] }
                },
                "sampling_window": "10s",
                "aggression": { "default_value": 5.0, "runtime_key": "ac.aggression" },
                "sr_threshold": { "default_value": { "value": 70.0 }, "runtime_key": "ac.sr" },
                "rps_threshold": { "default_value": 0, "runtime_key": "ac.rps" },
                "max_rejection_probability": { "default_value": { "value": 100.0 }, "runtime_key": "ac.maxp" }
            }
        }));
    }
    let log = log_dir.join(format!("{name}.upstream.log"));
    let mut router = bootstrap::router();
    // One line per upstream attempt, including connect failures: who was tried, when.
    router["typed_config"]["upstream_log"] = json!([bootstrap::file_access_log(
        &log,
        "%START_TIME(%s%3f)% %UPSTREAM_HOST% %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(X-REQ-ID)%\n"
    )]);
    filters.push(router);
    let hcm = json!({
        "@type": bootstrap::HCM_TYPE,
        "stat_prefix": name,
        "codec_type": "HTTP1",
        // The long-lived-stream scenario's websockets (without this Envoy answers 403).
        "upgrade_configs": [{ "upgrade_type": "websocket" }],
        "route_config": {
            "name": name,
            "virtual_hosts": [{
                "name": name,
                "domains": ["*"],
                "include_request_attempt_count": true,
                "include_attempt_count_in_response": true,
                "routes": [bootstrap::route("http", vec![], name, "30s", retry)]
            }]
        },
        "http_filters": filters
    });
    bootstrap::listener(name, 0, hcm)
}

pub(super) fn cluster(sys: System, hosts: &[u16]) -> Value {
    let hosts: Vec<std::net::SocketAddr> =
        hosts.iter().map(|&p| ([127, 0, 0, 1], p).into()).collect();
    let mut c = bootstrap::static_cluster(sys.name(), &hosts, "1s");
    // Envoy's default allows 3 retries in flight per cluster, which at this rate turns
    // almost every retry into an overflow. A retry budget of 20% of the active requests
    // (meshbreaker's own budget ratio), at least 10, lets the shared retry policy work.
    c["circuit_breakers"] = json!({ "thresholds": [{
        "retry_budget": { "budget_percent": { "value": 20.0 }, "min_retry_concurrency": 10 }
    }] });
    match sys {
        // Every field at Envoy's default: consecutive_5xx 5, interval 10 s, base ejection 30 s,
        // max_ejection_percent 10 (Envoy still ejects one host), success-rate detection needing
        // 5 hosts, failure-percentage detection not enforced, panic threshold 50%.
        System::OdDefault => c["outlier_detection"] = json!({}),
        // Tuned to the same lengths as meshbreaker tuned: a 1 s interval (its bucket), 5 s base
        // ejection (its sleep window), 30% failure percentage over at least 20 requests, from a
        // single host, any share of hosts ejectable, and no panic routing to ejected hosts.
        System::OdTuned => {
            c["outlier_detection"] = json!({
                "consecutive_5xx": 5,
                "interval": "1s",
                "base_ejection_time": "5s",
                "max_ejection_percent": 100,
                "enforcing_consecutive_5xx": 100,
                "failure_percentage_threshold": 30,
                "enforcing_failure_percentage": 100,
                "failure_percentage_minimum_hosts": 1,
                "failure_percentage_request_volume": 20
            });
            c["common_lb_config"] = json!({ "healthy_panic_threshold": { "value": 0 } });
        }
        _ => {}
    }
    c
}

pub(super) fn bootstrap(
    sc: &Scenario,
    host_ports: &[u16],
    wasm: &Path,
    log_dir: &Path,
    sidecar: Option<u16>,
) -> Value {
    let listeners: Vec<Value> = sc
        .systems
        .iter()
        .map(|&s| listener(s, wasm, log_dir))
        .collect();
    let mut clusters: Vec<Value> = sc
        .systems
        .iter()
        .enumerate()
        .map(|(i, &s)| cluster(s, &host_ports[i * sc.hosts..(i + 1) * sc.hosts]))
        .collect();
    if let Some(port) = sidecar {
        clusters.push(bootstrap::static_cluster(
            "meshbreaker_sidecar",
            &[([127, 0, 0, 1], port).into()],
            "0.25s",
        ));
    }
    json!({
        "node": { "id": "protection-bench", "cluster": "protection-bench" },
        "admin": bootstrap::admin(0),
        "static_resources": { "listeners": listeners, "clusters": clusters }
    })
}
