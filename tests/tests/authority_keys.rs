//! Behaviour 11: `key_by: authority` with client-chosen Host headers. 10,000 distinct hosts with
//! `max_keys: 100` keep Envoy up with bounded memory and at most 100 `key` labels plus `_other`;
//! a Host full of `;.;` and `=.=` cannot forge a label. Each test runs once per shell; metrics are
//! read under their SPEC names ([`Stack::samples`]).
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

fn authority_config() -> serde_json::Value {
    let mut cfg = fast_config();
    cfg["key_by"] = "authority".into();
    cfg["max_keys"] = 100.into();
    cfg
}

fn assert_labels_cannot_be_forged(samples: &[Sample]) {
    for x in samples.iter().filter(|x| x.name.starts_with("meshbreaker")) {
        assert!(
            SPEC_METRICS.contains(&x.name.as_str()),
            "unexpected metric {x:?}"
        );
        for (k, v) in &x.labels {
            assert!(
                ["key", "decision", "to"].contains(&k.as_str()),
                "label {k} in {x:?}"
            );
            assert!(
                !v.contains(';') && !v.contains('='),
                "forged value in {x:?}"
            );
        }
        if let Some(d) = x.label("decision") {
            assert!(
                ["allowed", "rejected", "probe", "dry_run_reject"].contains(&d),
                "{x:?}"
            );
        }
    }
}

per_shell! {
fn ten_thousand_hosts_keep_memory_and_key_labels_bounded(shell) {
    run(async {
        let s = Stack::start_shell(shell, &authority_config(), &[], &[], false).await;
        // Warm up: VMs, connections and the first 100 keys + `_other` exist before measuring.
        s.flood_authorities("h", 0, 300).await;
        let alloc_before = s.envoy.memory_allocated().await;
        let rss_before = s.envoy.rss_bytes();
        s.flood_authorities("h", 300, 10_000).await;
        assert!(s.envoy.is_running());
        let (status, ready) = s.envoy.admin_get("/ready").await;
        assert_eq!((status, ready.trim()), (200, "LIVE"));
        let alloc_after = s.envoy.memory_allocated().await;
        let rss_after = s.envoy.rss_bytes();
        // Bounds: with state per Host, 10,000 new keys would each add 7 stats (Envoy allocates
        // ~1 KiB per stat with its name and tags) and a window + histogram in the wasm heap
        // (a few KiB): >= 70 MiB of Envoy heap, tens of MiB of RSS. Bounded state only
        // moves allocator noise and buffers, well under these limits.
        let alloc_growth = alloc_after.saturating_sub(alloc_before);
        let rss_growth = rss_after.saturating_sub(rss_before);
        assert!(
            alloc_growth < 8 << 20,
            "Envoy heap grew by {alloc_growth} bytes over 10,000 hosts"
        );
        assert!(
            rss_growth < 48 << 20,
            "Envoy RSS grew by {rss_growth} bytes over 10,000 hosts"
        );

        let samples = s.samples().await;
        let keys: BTreeSet<&str> = samples
            .iter()
            .filter(|x| x.name.starts_with("meshbreaker"))
            .filter_map(|x| x.label("key"))
            .collect();
        assert!(keys.contains("_other"), "later keys report under _other");
        assert!(
            keys.len() <= 101,
            "{} key labels, at most 100 + _other allowed",
            keys.len()
        );
        assert_labels_cannot_be_forged(&samples);
        // Every request is counted once, under its own key or `_other`.
        let mut last = (0.0, 0.0);
        let settled = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let samples = s.samples().await;
                let allowed = |x: &&Sample| {
                    x.name == "meshbreaker_requests_total" && x.label("decision") == Some("allowed")
                };
                let total: f64 = samples.iter().filter(allowed).map(|x| x.value).sum();
                let other: f64 = samples
                    .iter()
                    .filter(allowed)
                    .filter(|x| x.label("key") == Some("_other"))
                    .map(|x| x.value)
                    .sum();
                last = (total, other);
                if total == 10_300.0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "allowed requests counted {} (of which _other {}), expected 10300",
            last.0,
            last.1
        );
    })
}

fn host_with_tag_delimiters_cannot_forge_labels(shell) {
    run(async {
        let s = Stack::start_shell(shell, &authority_config(), &[], &[], false).await;
        let evil = "Evil;.;decision=.=rejected;.;To=.=open";
        let long = format!("{}.example", "a".repeat(200));
        for host in [evil, long.as_str()] {
            let r = s.client().get("/", &[("host", host)]).await;
            assert_eq!(r.status, 200, "{host}: {r:?}");
        }
        let evil_key = sanitize_key(evil);
        assert_eq!(evil_key, "evil_._decision_._rejected_._to_._open");
        let long_key = sanitize_key(&long);
        assert_eq!(long_key.len(), 128);
        for key in [&evil_key, &long_key] {
            eventually(Duration::from_secs(10), "sanitized key counted", || async {
                (s.metric(
                    "meshbreaker_requests_total",
                    key,
                    &[("decision", "allowed")],
                )
                .await
                    == 1.0)
                    .then_some(())
            })
            .await;
        }
        let samples = s.samples().await;
        assert_labels_cannot_be_forged(&samples);
        assert_eq!(
            samples
                .iter()
                .filter(|x| x.name == "meshbreaker_requests_total"
                    && x.label("decision") == Some("rejected"))
                .map(|x| x.value)
                .sum::<f64>(),
            0.0,
            "the Host header did not create a rejected counter"
        );
    })
}
}
