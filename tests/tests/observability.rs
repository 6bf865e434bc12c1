//! The shipped Prometheus rules and Grafana dashboard (`observability/`), checked without a
//! cluster: `promtool check rules` and `promtool test rules` (Debian's `prometheus` package,
//! installed by `cargo xtask deps`) on synthetic series, the `PrometheusRule` manifest held to
//! the plain rules file, and the dashboard's panels held to what the operator needs.
//!
//! Why both this and the demo: promtool proves each rule's logic (thresholds, `for:`, labels,
//! annotations) on series written here; `cargo xtask demo --ci` runs every expression of the
//! rules, the dashboard and `docs/operations.md` against a real Prometheus scraping the demo's
//! Envoy, which proves the names and labels are the ones Envoy serves.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    meshbreaker_harness::repo_root()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo().join("observability/rules"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool (Debian package prometheus; `cargo xtask deps`): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rule_names(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| {
            r["record"]
                .as_str()
                .or(r["alert"].as_str())
                .expect("record or alert")
                .to_owned()
        })
        .collect()
}

#[test]
fn rules_file_passes_promtool_check() {
    let out = promtool(&["check", "rules", "meshbreaker.rules.yaml"]);
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
}

#[test]
fn rules_pass_their_promtool_unit_tests() {
    let out = promtool(&["test", "rules", "meshbreaker.rules.test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_unit_tests_fail_when_a_rule_is_wrong() {
    // The same tests against a rules file whose open alert waits 20 minutes instead of 10:
    // the alert expected at minute 16 is missing, so promtool must fail.
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let rules = std::fs::read_to_string(repo().join("observability/rules/meshbreaker.rules.yaml"))
        .expect("rules");
    let broken = rules.replacen("for: 10m", "for: 20m", 1);
    assert_ne!(broken, rules);
    std::fs::write(dir.join("meshbreaker.rules.yaml"), broken).expect("write");
    std::fs::copy(
        repo().join("observability/rules/meshbreaker.rules.test.yaml"),
        dir.join("meshbreaker.rules.test.yaml"),
    )
    .expect("copy");
    let out = Command::new("promtool")
        .args(["test", "rules", "meshbreaker.rules.test.yaml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "promtool passed a broken rule");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("MeshbreakerCircuitOpen")
            || String::from_utf8_lossy(&out.stderr).contains("MeshbreakerCircuitOpen"),
        "the failure names the alert"
    );
}

#[test]
fn rules_cover_every_rule_the_operator_needs() {
    let names = rule_names(&yaml("observability/rules/meshbreaker.rules.yaml"));
    for want in [
        "key:meshbreaker_error_rate:ratio",
        "key:meshbreaker_rejected:ratio_rate5m",
        "key:meshbreaker_not_closed:ratio_avg5m",
        "MeshbreakerCircuitOpen",
        "MeshbreakerCircuitFlapping",
        "MeshbreakerRetryBudgetExhausted",
        "MeshbreakerSidecarDown",
        "MeshbreakerWasmVmFailures",
    ] {
        assert!(names.iter().any(|n| n == want), "no rule {want}: {names:?}");
    }
}

#[test]
fn prometheus_rule_manifest_carries_exactly_the_plain_rules() {
    let plain = yaml("observability/rules/meshbreaker.rules.yaml");
    let manifest = yaml("observability/prometheusrule.yaml");
    assert_eq!(manifest["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(
        manifest["spec"]["groups"], plain["groups"],
        "observability/prometheusrule.yaml and observability/rules/meshbreaker.rules.yaml differ"
    );
}

#[test]
fn dashboard_has_the_panels_an_operator_needs() {
    let path = repo().join("observability/grafana/meshbreaker.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
        .expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let exprs = |p: &Value| -> String {
        p["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| t["expr"].as_str().expect("expr").to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let find = |what: &str, pred: &dyn Fn(&Value, &str) -> bool| {
        panels
            .iter()
            .find(|p| pred(p, &exprs(p)))
            .unwrap_or_else(|| panic!("no panel for {what}"))
            .clone()
    };
    let timeline = find("state per key", &|p, e| {
        p["type"] == "state-timeline" && e.contains("meshbreaker_state")
    });
    assert!(exprs(&timeline).contains("key"));
    // Error rate and P95 are drawn against their thresholds.
    for (what, metric) in [
        ("error rate", "meshbreaker_error_rate"),
        ("P95", "meshbreaker_latency_p95_ms"),
    ] {
        let p = find(what, &|_, e| e.contains(metric));
        let steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no thresholds"));
        assert!(
            steps.len() >= 2 && steps[1]["value"].is_number(),
            "{what}: {steps:?}"
        );
        assert_eq!(
            p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"], "line",
            "{what}"
        );
    }
    find("decisions", &|_, e| {
        e.contains("meshbreaker_requests_total") && e.contains("decision")
    });
    find("retries and budget denials", &|_, e| {
        e.contains("envoy_cluster_upstream_rq_retry")
            && e.contains("meshbreaker_retry_budget_denied_total")
    });
    find("kernel resets", &|_, e| {
        e.contains("meshbreaker_kernel_resets_total")
    });
    // Every panel queries the data source variable, so the dashboard imports anywhere.
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
}
