//! Behaviour 8: `/stats/prometheus` carries every SPEC metric, with `key` (and `decision`, `to`)
//! as labels, and values that match what the test did. Keys are Envoy cluster names sanitized
//! (lowercase, characters outside `[a-z0-9._:|-]` become `_`).
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

const ISTIO_LIKE: &str = "outbound|8080||Reviews.default.svc";
const ODD: &str = "Odd+Name V2";

per_shell! {
fn prometheus_carries_every_spec_metric_with_labels_and_values(shell) {
    run(async {
        let s = Stack::start_shell(shell, &fast_config(), &["m_a"], &[], false).await;
        let up = s.up("m_a");
        // 4 successes, then failing POSTs until rejected.
        for _ in 0..4 {
            assert_eq!(s.send("m_a", "GET", &[]).await.status, 200);
        }
        up.set(Behavior {
            status: Some(500),
            ..Default::default()
        });
        // Failing POSTs (one sample each, not retried) until the breaker rejects; the trip shows
        // once the workers have merged their samples (at least every 100 ms).
        let (mut allowed, mut rejected) = (4.0, 0.0);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while rejected == 0.0 && std::time::Instant::now() < deadline {
            let r = s.send("m_a", "POST", &[]).await;
            if is_rejection(&r) {
                rejected += 1.0;
            } else {
                assert_eq!(r.status, 500);
                allowed += 1.0;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(rejected >= 1.0, "the circuit never opened");
        assert_eq!(
            allowed as usize,
            up.count(),
            "allowed = requests that reached upstream"
        );

        let samples = eventually(Duration::from_secs(10), "metrics settle", || async {
            let samples = s.samples().await;
            let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
                samples
                    .iter()
                    .filter(|x| {
                        x.name == name
                            && x.label("key") == Some("m_a")
                            && labels.iter().all(|(k, v)| x.label(k) == Some(*v))
                    })
                    .map(|x| x.value)
                    .sum()
            };
            let ok = get("meshbreaker_requests_total", &[("decision", "allowed")]) == allowed
                && get("meshbreaker_requests_total", &[("decision", "rejected")]) == rejected
                && get("meshbreaker_state", &[]) == 1.0
                && get("meshbreaker_transitions_total", &[("to", "open")]) == 1.0;
            ok.then_some(samples)
        })
        .await;

        let for_key = |name: &str| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|x| x.name == name && x.label("key") == Some("m_a"))
                .collect()
        };
        for name in SPEC_METRICS {
            assert!(!for_key(name).is_empty(), "{name}{{key=\"m_a\"}} missing");
        }
        // Every allowed request is one sample (GETs succeeded without retry, POSTs are not
        // retried): the merged window's failure ratio is exact, and the gauge must show it.
        let failures = allowed - 4.0;
        let expected = (failures / allowed * 1e6).round();
        let mut last = 0.0;
        let settled = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                last = s.metric("meshbreaker_error_rate_ppm", "m_a", &[]).await;
                if (last - expected).abs() <= 1.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "error_rate_ppm {last}, expected {expected} ({failures} failures of {allowed} samples)"
        );
        assert!(for_key("meshbreaker_latency_p95_ms")[0].value < 300.0);
        assert_eq!(
            for_key("meshbreaker_retry_budget_denied_total")[0].value,
            0.0
        );
        assert_eq!(for_key("meshbreaker_kernel_resets_total")[0].value, 0.0);
        let dry: Vec<f64> = for_key("meshbreaker_requests_total")
            .iter()
            .filter(|x| x.label("decision") == Some("dry_run_reject"))
            .map(|x| x.value)
            .collect();
        assert_eq!(dry, vec![0.0], "the dry_run_reject series exists and is 0");

        // Every meshbreaker sample: a SPEC name, labels only from {key, decision, to}, the
        // decision and to values from the SPEC sets (so tag extraction worked).
        for x in samples.iter().filter(|x| x.name.starts_with("meshbreaker")) {
            assert!(
                SPEC_METRICS.contains(&x.name.as_str()),
                "unexpected metric {x:?}"
            );
            let names: BTreeSet<&str> = x.labels.keys().map(String::as_str).collect();
            assert!(names.contains("key"), "{x:?}");
            assert!(
                names.is_subset(&BTreeSet::from(["key", "decision", "to"])),
                "{x:?}"
            );
            if let Some(d) = x.label("decision") {
                assert!(
                    ["allowed", "rejected", "probe", "dry_run_reject"].contains(&d),
                    "{x:?}"
                );
            }
            if let Some(t) = x.label("to") {
                assert!(["open", "half_open", "closed"].contains(&t), "{x:?}");
            }
        }
        assert!(
            !s.envoy.stats_prometheus().await.contains("=.="),
            "a raw tag segment leaked into a metric name"
        );
    })
}

fn cluster_keys_are_sanitized_cluster_names(shell) {
    run(async {
        let s = Stack::start_shell(shell, &fast_config(), &[ISTIO_LIKE, ODD], &[], false).await;
        for route in [ISTIO_LIKE, ODD] {
            let r = s.envoy.http1().get("/k", &[("x-route", route)]).await;
            assert_eq!(r.status, 200);
        }
        assert_eq!(
            sanitize_key(ISTIO_LIKE),
            "outbound|8080||reviews.default.svc"
        );
        assert_eq!(sanitize_key(ODD), "odd_name_v2");
        for route in [ISTIO_LIKE, ODD] {
            let key = sanitize_key(route);
            eventually(
                Duration::from_secs(3),
                "allowed = 1 for sanitized key",
                || async {
                    (s.metric(
                        "meshbreaker_requests_total",
                        &key,
                        &[("decision", "allowed")],
                    )
                    .await
                        == 1.0)
                        .then_some(())
                },
            )
            .await;
        }
    })
}
}
