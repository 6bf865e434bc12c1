//! The `meshbreaker` CLI against a real Envoy: the access log format shipped in
//! `envoy-config/envoy.yaml`, written by Envoy 1.40 and replayed through the same configuration,
//! gives the transitions the filter made live; `meshbreaker status` reads the live metrics.
//! (The full demo reproduction is checked by `cargo xtask demo --ci`.)
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshbreaker_tests::*;
use policy_core::breaker::TransitionLine;
use serde_json::{json, Value};

/// The shipped access log entry of envoy-config/envoy.yaml, written to `path` instead of stdout.
fn shipped_access_log(path: &Path) -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoy-config/envoy.yaml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let hcm =
        &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let mut entry = hcm["access_log"][0].clone();
    assert_eq!(entry["name"], "envoy.access_loggers.stdout", "{entry}");
    entry["name"] = json!("envoy.access_loggers.file");
    let format = entry["typed_config"]["log_format"].clone();
    entry["typed_config"] = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.display().to_string(),
        "log_format": format,
    });
    entry
}

fn insert_access_log(v: &mut Value, entry: &Value) -> bool {
    match v {
        Value::Object(m) => {
            if m.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("HttpConnectionManager"))
            {
                m.insert("access_log".into(), json!([entry]));
                return true;
            }
            m.values_mut().any(|c| insert_access_log(c, entry))
        }
        Value::Array(a) => a.iter_mut().any(|c| insert_access_log(c, entry)),
        _ => false,
    }
}

/// `(from, to)` of every transition line of `key` in the filter's log.
fn live_transitions(log: &str, key: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| TransitionLine::find(l)?.ok())
        .filter(|t| t.key == key && t.from != t.to)
        .map(|t| (t.from.as_str().to_string(), t.to.as_str().to_string()))
        .collect()
}

#[test]
fn replay_of_envoys_own_access_log_reproduces_the_live_transitions() {
    require_wasm();
    let cli = meshbreaker_cli();
    run(async {
        let dir = std::env::temp_dir().join(format!("meshbreaker-cli-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("access.log");
        let cfg = fast_config();
        let up = HttpUpstream::start().await;
        let backend = HttpUpstream::start().await;
        let mut boot = Bootstrap::new()
            .with_filter(cfg.to_string())
            .backend(backend.addr)
            .cluster("live_trip", RouteKind::Http, up.addr)
            .to_value();
        assert!(insert_access_log(&mut boot, &shipped_access_log(&log_path)));
        let envoy = Envoy::start(boot.to_string()).await;
        let send = |method: &'static str| {
            let c = envoy.http1();
            async move {
                c.request(method, "/live_trip", &[("x-route", "live_trip")], "")
                    .await
            }
        };
        // Failures only, so that the trip does not depend on how far the two workers' windows
        // were merged when one of them evaluated it (live, a worker trips on the merged view;
        // the replay sees every sample at once).
        up.set(Behavior {
            status: Some(500),
            ..Default::default()
        });
        // POSTs are not retried on 5xx: one sample each; min_requests 5 at >= 50% trips.
        let mut rejected = false;
        for _ in 0..200 {
            let r = send("POST").await;
            if is_rejection(&r) {
                rejected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rejected, "the key never opened");
        up.set(Behavior::default());
        // sleep_window 500 ms (x <= 1.2): then probes succeed and close it (2 successes).
        eventually(Duration::from_secs(10), "closed again", || async {
            let _ = send("GET").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let t = live_transitions(&envoy.log(), "live_trip");
            t.last().is_some_and(|(_, to)| to == "closed").then_some(())
        })
        .await;
        // Traffic for longer than the replay's own open period can differ from the live one
        // (another trip instant, another jitter draw: at most 600 ms), so it closes too.
        for _ in 0..40 {
            let _ = send("GET").await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        // status: the live metrics as a table.
        let admin = format!("http://127.0.0.1:{}", envoy.admin_port);
        let out = Command::new(&cli)
            .args(["status", "--admin", &admin])
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{table}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let row = table
            .lines()
            .find(|l| l.starts_with("live_trip "))
            .unwrap_or_else(|| panic!("{table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "closed", "{table}");
        assert!(cells[4].parse::<u64>().unwrap() >= 40, "allowed: {table}");
        assert!(cells[5].parse::<u64>().unwrap() >= 1, "rejected: {table}");
        assert!(cells[8].parse::<u64>().unwrap() >= 1, "opened: {table}");

        // replay: Envoy's own access log through the same configuration.
        let live = live_transitions(&envoy.log(), "live_trip");
        eventually(Duration::from_secs(5), "access log flushed", || async {
            let n = std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .count();
            (n >= 20).then_some(())
        })
        .await;
        let cfg_file = dir.join("config.json");
        std::fs::write(&cfg_file, cfg.to_string()).unwrap();
        let out = Command::new(&cli)
            .arg("replay")
            .arg("--config")
            .arg(&cfg_file)
            .arg(&log_path)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sample = std::fs::read_to_string(&log_path).unwrap();
        let first: Value = serde_json::from_str(sample.lines().next().unwrap()).unwrap();
        for field in [
            "start_time",
            "duration_ms",
            "request_duration_ms",
            "response_duration_ms",
            "method",
            "cluster",
            "route",
            "authority",
            "status",
            "grpc_status",
            "response_flags",
            "attempts",
            "upstream_host",
        ] {
            assert!(
                first.get(field).is_some(),
                "{field} missing from Envoy's line {first}"
            );
        }
        let replayed: Vec<(String, String)> = report
            .lines()
            .skip_while(|l| *l != "key live_trip")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| {
                let (_, rest) = l.split_once(")  ")?;
                let mut w = rest.split_whitespace();
                let from = w.next()?.to_string();
                w.next()?;
                Some((from, w.next()?.to_string()))
            })
            .collect();
        assert_eq!(
            replayed,
            live,
            "replay:\n{report}\nlive log:\n{}",
            envoy
                .log_lines_with(&["meshbreaker: transition"])
                .join("\n")
        );
        assert!(
            replayed
                .first()
                .is_some_and(|(f, t)| f == "closed" && t == "open"),
            "{report}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
