//! `shedding: adaptive` on an upstream that fails half its requests for reasons other than load:
//! Envoy's retries turn most failures into successes (three attempts: 87.5%), and a breaker that
//! rejects everything once 30% of attempts fail throws that away. With adaptive shedding,
//! clients see no more errors than with no breaker at all.
//!
//! Every key gets the same request sequence: one client sending GETs (the `idempotent` policy:
//! two retries on 5xx) at a fixed pace, to its own upstream, which fails the same seeded
//! pseudo-random positions of the attempts it receives. An error is every non-2xx answer the
//! client gets, local rejections included. The keys:
//! - `disabled`: `mode: disabled`, the literal baseline (no breaker, and no retry headers);
//! - `retries_only`: the same retry policies and budget as the breakers, with a breaker that
//!   cannot trip: "no protection" with retries on;
//! - `adaptive`: the shipped recommended configuration without `consecutive_failures`;
//! - `recommended`: the shipped recommended configuration (`envoy-config/recommended.json`);
//! - `binary`: the recommended windows with `shedding: all`, the control: it must do worse, or
//!   the scenario could not tell the two apart.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

const KEYS: [&str; 5] = [
    "disabled",
    "retries_only",
    "adaptive",
    "recommended",
    "binary",
];
/// Requests per key, one every [`PACE`]: 15 s. At 10 requests a second the retry budget
/// (20% of requests plus 10 a second over the window) allows more retries than a 50% failure
/// rate asks for (0.75 a request), so it does not decide which requests fail.
const REQUESTS: usize = 150;
const PACE: Duration = Duration::from_millis(100);

fn config() -> Value {
    let path = repo_root().join("envoy-config/recommended.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut cfg: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    cfg["key_by"] = json!("cluster");
    let over = |cluster: &str, v: Value| {
        let mut o = v;
        o["match"] = json!({ "cluster": cluster });
        o
    };
    cfg["overrides"] = json!([
        over("disabled", json!({"mode": "disabled"})),
        over(
            "retries_only",
            json!({"breaker": {
                "min_requests": 1_000_000,
                "error_rate_threshold": 1.0,
                "latency_p95_threshold": null,
                "consecutive_failures": 0,
                "shedding": "all"
            }})
        ),
        over(
            "adaptive",
            json!({"breaker": {"consecutive_failures": 0, "shedding": "adaptive"}})
        ),
        over(
            "binary",
            json!({"breaker": {"consecutive_failures": 0, "shedding": "all"}})
        ),
    ]);
    cfg
}

/// Sends [`REQUESTS`] GETs to `key`, request i at `start + i × PACE` (or at once when late);
/// returns (errors, local rejections).
async fn drive(c: HttpClient, key: &'static str, start: Instant) -> (usize, usize) {
    let (mut errors, mut rejected) = (0, 0);
    for i in 0..REQUESTS {
        tokio::time::sleep_until((start + PACE * i as u32).into()).await;
        let r = c.get("/half", &[("x-route", key)]).await;
        if !(200..300).contains(&r.status) {
            errors += 1;
        }
        if is_rejection(&r) {
            rejected += 1;
        }
    }
    (errors, rejected)
}

/// What one key's client saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    errors: usize,
    rejections: usize,
    /// Attempts that reached the key's upstream.
    attempts: usize,
    /// The key's window failure ratio at the end (`meshbreaker_error_rate_ppm`), when it has one.
    error_rate_ppm: Option<f64>,
}

/// What each key's client saw, and a summary for messages.
type Outcome = (HashMap<&'static str, Seen>, String);

/// Runs the scenario once for every key, at the same time (the tests share the outcome).
async fn outcome(shell: Shell) -> &'static Outcome {
    static OUTCOMES: [OnceCell<Outcome>; 2] = [OnceCell::const_new(), OnceCell::const_new()];
    OUTCOMES[shell.index()]
        .get_or_init(|| async {
            let s = Stack::start_shell(shell, &config(), &KEYS, &[], false).await;
            for k in KEYS {
                s.up(k).set(Behavior {
                    status: Some(503),
                    fail_share: Some(FailShare {
                        share: 0.5,
                        seed: 0x5eed,
                    }),
                    ..Default::default()
                });
            }
            let start = Instant::now() + Duration::from_millis(100);
            let tasks: Vec<_> = KEYS
                .iter()
                .map(|&k| tokio::spawn(drive(s.client(), k, start)))
                .collect();
            let mut seen = HashMap::new();
            for (k, t) in KEYS.iter().zip(tasks) {
                let (errors, rejections) = t.await.unwrap_or_else(|e| panic!("{k}: {e}"));
                let attempts = s.up(k).count();
                let error_rate_ppm = s.metric_opt("meshbreaker_error_rate_ppm", k, &[]).await;
                seen.insert(
                    *k,
                    Seen {
                        errors,
                        rejections,
                        attempts,
                        error_rate_ppm,
                    },
                );
            }
            let mut summary: Vec<String> = KEYS
                .iter()
                .map(|k| {
                    let v = seen[k];
                    format!(
                        "{k}: {} errors ({} rejections), {} attempts at the upstream, \
                         window error rate {:?} ppm",
                        v.errors, v.rejections, v.attempts, v.error_rate_ppm
                    )
                })
                .collect();
            for k in KEYS {
                let t: Vec<String> = s
                    .envoy
                    .transitions(k)
                    .iter()
                    .map(|t| format!("{}→{} ({})", t.from.as_str(), t.to.as_str(), t.reason))
                    .collect();
                if !t.is_empty() {
                    summary.push(format!("{k} transitions: {}", t.join(", ")));
                }
            }
            let summary = summary.join("\n");
            eprintln!("{}:\n{summary}", shell.name());
            (seen, summary)
        })
        .await
}

per_shell! {
fn adaptive_shedding_gives_clients_no_more_errors_than_no_breaker(shell) {
    run(async {
        let (seen, summary) = outcome(shell).await;
        let e = |k: &str| seen[k].errors;
        // The key was in trip territory all along: half its attempts failed, over the 30%
        // error_rate_threshold on which the binary key tripped. It chose not to shed.
        let rate = seen["adaptive"]
            .error_rate_ppm
            .unwrap_or_else(|| panic!("no error rate for the adaptive key:\n{summary}"));
        assert!(rate >= 300_000.0, "{summary}");
        assert!(
            e("adaptive") <= e("disabled"),
            "adaptive gave clients more errors than mode disabled:\n{summary}"
        );
        assert!(
            e("adaptive") <= e("retries_only"),
            "adaptive gave clients more errors than retries without a breaker:\n{summary}"
        );
    })
}

fn the_recommended_configuration_gives_clients_no_more_errors_than_no_breaker(shell) {
    run(async {
        let (seen, summary) = outcome(shell).await;
        let e = |k: &str| seen[k].errors;
        assert!(
            e("recommended") <= e("disabled"),
            "the recommended configuration gave clients more errors than mode disabled:\n{summary}"
        );
        assert!(
            e("recommended") <= e("retries_only"),
            "the recommended configuration gave clients more errors than retries without a \
             breaker:\n{summary}"
        );
    })
}

fn control_a_binary_breaker_costs_clients_errors_here(shell) {
    run(async {
        let (seen, summary) = outcome(shell).await;
        assert!(
            seen["binary"].errors > seen["retries_only"].errors,
            "a binary breaker should cost clients more than retries alone here:\n{summary}"
        );
    })
}
}
