//! Ranges and cross-field rules: everything serde's types cannot say, in one place.
//!
//! Why a pass of its own: a rule such as "`sleep_window` ≤ `max_sleep_window`" holds on the
//! *merged* configuration of an override (an override may lower only `max_sleep_window`), and
//! every message quotes what was written (`got "999ms"`, `got -1`). So [`fields`] checks each
//! given raw value where it stands, with its path, and [`rules`] checks the cross-field rules on
//! the compiled result, at the top level and for every override; both collect every error
//! ([`Errors`]), and the cross-field rules run only on a document whose fields are all in range.
//! The messages are part of the contract (SPEC "Plugin configuration" ranges), pinned by the
//! unit tests.

use std::time::Duration;

use super::duration::{format_duration, Dur};
use super::error::{child, index, ConfigError};
use super::raw::{
    quoted, Field, Int, Number, RawBreaker, RawConfig, RawOverride, RawPolicy, RawPolicyMatch,
    RawResetSignals, RawRetry,
};
use super::{BreakerConfig, Config, KeyBy, OverrideMatch, RETRY_GRPC_ON_VALUES, RETRY_ON_VALUES};

type Res = Result<(), ConfigError>;

/// The errors of one document, in document order: every field is checked, so that a user (the
/// CLI) sees them all; the filter reports the first.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    fn add(&mut self, r: Res) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }
}

/// A worker merges its samples into the shared window at least this often (the flow's cadence,
/// [`crate::flow`]). It is defined here, beside the rule it bounds, so that the configuration
/// does not depend on the flow that depends on it.
pub const FLUSH_MS: u64 = 100;

/// The shortest bucket and sleep window: below it the workers' merge cadence ([`FLUSH_MS`])
/// cannot keep up, and shorter buckets would go by unmerged.
pub(crate) const MIN_BUCKET: Duration = Duration::from_millis(FLUSH_MS);
/// Most probes and successes in HALF_OPEN: what the shared-state encoding can hold
/// ([`crate::encoding::MAX_ENCODED_PROBES`]).
pub const MAX_PROBES: i64 = 1000;
/// The top of the latency histogram.
const MAX_LATENCY_THRESHOLD: Duration = Duration::from_secs(600);
/// Caps on durations that feed clock arithmetic (open periods, the poller's lease).
const MAX_SLEEP_WINDOW: Duration = Duration::from_secs(3600);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest sidecar poll interval.
pub const MIN_POLL_INTERVAL: Duration = MIN_BUCKET;

fn fail(path: &str, reason: impl Into<String>) -> Res {
    Err(ConfigError::new(path, reason))
}

/// An integer in `[lo, hi]`; `hi == None` means "at least `lo`" (up to `u32::MAX`).
fn int(v: &Field<Int>, path: &str, lo: i64, hi: Option<i64>) -> Res {
    let Some(&Int(n)) = v.get() else {
        return Ok(());
    };
    match hi {
        Some(hi) if !(lo..=hi).contains(&n) => {
            fail(path, format!("must be in [{lo}, {hi}], got {n}"))
        }
        None if !(lo..=i64::from(u32::MAX)).contains(&n) => {
            fail(path, format!("must be at least {lo}, got {n}"))
        }
        _ => Ok(()),
    }
}

/// A number for which `ok` holds, else `<reason>, got <n>`.
fn number(v: &Field<Number>, path: &str, ok: impl Fn(f64) -> bool, reason: &str) -> Res {
    match v.get() {
        Some(&Number(x)) if !ok(x) => fail(path, format!("{reason}, got {x}")),
        _ => Ok(()),
    }
}

/// A duration in `[min, max]`; the bounds are shown as written in SPEC.
fn duration(
    d: &Dur,
    path: &str,
    min: Option<(Duration, &str)>,
    max: Option<(Duration, &str)>,
) -> Res {
    if let Some((min, shown)) = min {
        if d.value < min {
            return fail(
                path,
                format!("must be at least {shown}, got {}", quoted(&d.text)),
            );
        }
    }
    if let Some((max, shown)) = max {
        if d.value > max {
            return fail(
                path,
                format!("must be at most {shown}, got {}", quoted(&d.text)),
            );
        }
    }
    Ok(())
}

fn non_empty(v: &Field<String>, path: &str) -> Res {
    match v.get() {
        Some(s) if s.is_empty() => fail(path, "must not be empty"),
        _ => Ok(()),
    }
}

fn starts_with_slash(v: &Field<String>, path: &str) -> Res {
    match v.get() {
        Some(s) if !s.starts_with('/') => {
            fail(path, format!("must start with \"/\", got {}", quoted(s)))
        }
        _ => Ok(()),
    }
}

/// RFC 9110 `token`: what a method or a header name may be made of.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Every given field of the document, where it stands.
pub(crate) fn fields(raw: &RawConfig, e: &mut Errors) {
    e.add(int(&raw.max_keys, "max_keys", 1, Some(100_000)));
    if let Some(b) = raw.breaker.get() {
        breaker(b, "breaker", e);
    }
    if let Some(r) = raw.retry.get() {
        retry(r, "retry", e);
    }
    if let Some(Some(r)) = raw.reset_signals.get() {
        reset_signals(r, "reset_signals", e);
    }
    if let Some(list) = raw.overrides.get() {
        for (i, o) in list.iter().enumerate() {
            override_fields(o, &index("overrides", i), e);
        }
    }
}

fn breaker(b: &RawBreaker, path: &str, e: &mut Errors) {
    if let Some(d) = b.window.get() {
        if d.value < Duration::from_secs(1) || d.value > Duration::from_secs(3600) {
            e.add(fail(
                &child(path, "window"),
                format!("must be in [1s, 1h], got {}", quoted(&d.text)),
            ));
        }
    }
    e.add(int(&b.buckets, &child(path, "buckets"), 1, Some(60)));
    e.add(int(&b.min_requests, &child(path, "min_requests"), 1, None));
    e.add(number(
        &b.error_rate_threshold,
        &child(path, "error_rate_threshold"),
        |x| x > 0.0 && x <= 1.0,
        "must be in (0, 1]",
    ));
    if let Some(Some(d)) = b.latency_p95_threshold.get() {
        let p = child(path, "latency_p95_threshold");
        if d.value.is_zero() {
            e.add(fail(
                &p,
                format!(
                    "must be greater than 0 (or null to turn it off), got {}",
                    quoted(&d.text)
                ),
            ));
        }
        e.add(duration(d, &p, None, Some((MAX_LATENCY_THRESHOLD, "10m"))));
    }
    if let Some(d) = b.sleep_window.get() {
        e.add(duration(
            d,
            &child(path, "sleep_window"),
            Some((MIN_BUCKET, "100ms")),
            None,
        ));
    }
    if let Some(d) = b.max_sleep_window.get() {
        e.add(duration(
            d,
            &child(path, "max_sleep_window"),
            Some((MIN_BUCKET, "100ms")),
            Some((MAX_SLEEP_WINDOW, "1h")),
        ));
    }
    e.add(int(
        &b.half_open_max_probes,
        &child(path, "half_open_max_probes"),
        1,
        Some(MAX_PROBES),
    ));
    e.add(int(
        &b.half_open_successes_to_close,
        &child(path, "half_open_successes_to_close"),
        1,
        Some(MAX_PROBES),
    ));
    e.add(int(
        &b.consecutive_failures,
        &child(path, "consecutive_failures"),
        0,
        Some(MAX_PROBES),
    ));
    e.add(number(
        &b.shedding_success_rate,
        &child(path, "shedding_success_rate"),
        |x| x > 0.0 && x <= 1.0,
        "must be in (0, 1]",
    ));
}

fn retry(r: &RawRetry, path: &str, e: &mut Errors) {
    if let Some(b) = r.budget.get() {
        let p = child(path, "budget");
        e.add(number(
            &b.ratio,
            &child(&p, "ratio"),
            |x| (0.0..=1.0).contains(&x),
            "must be in [0, 1]",
        ));
        e.add(number(
            &b.min_retries_per_second,
            &child(&p, "min_retries_per_second"),
            |x| x >= 0.0 && x.is_finite(),
            "must be at least 0",
        ));
    }
    if let Some(list) = r.policies.get() {
        let p = child(path, "policies");
        for (i, policy) in list.iter().enumerate() {
            let pi = index(&p, i);
            policy_fields(policy, &pi, e);
            let name = policy.name.get();
            if let Some(first) = list.iter().take(i).position(|o| o.name.get() == name) {
                e.add(fail(
                    &child(&pi, "name"),
                    format!(
                        "duplicate policy name \"{}\" (also at {})",
                        name.map_or("", String::as_str),
                        index(&p, first)
                    ),
                ));
            }
        }
    }
}

fn conditions(v: &Field<Vec<String>>, path: &str, allowed: &[&str], what: &str, e: &mut Errors) {
    let Some(list) = v.get() else {
        return;
    };
    for (i, s) in list.iter().enumerate() {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(s)) {
            let mut known = String::new();
            for (j, a) in allowed.iter().enumerate() {
                if j > 0 {
                    known.push_str(", ");
                }
                known.push_str(a);
            }
            e.add(fail(
                &index(path, i),
                format!("unknown {what} {}, expected one of: {known}", quoted(s)),
            ));
        }
    }
}

fn policy_fields(p: &RawPolicy, path: &str, e: &mut Errors) {
    let name_path = child(path, "name");
    match p.name.get() {
        None => e.add(fail(&name_path, "is required")),
        Some(n) if n.is_empty() => e.add(fail(&name_path, "must not be empty")),
        Some(_) => {}
    }
    if let Some(m) = p.matcher.get() {
        policy_match(m, &child(path, "match"), e);
    }
    conditions(
        &p.retry_on,
        &child(path, "retry_on"),
        &RETRY_ON_VALUES,
        "retry_on condition",
        e,
    );
    conditions(
        &p.retry_grpc_on,
        &child(path, "retry_grpc_on"),
        &RETRY_GRPC_ON_VALUES,
        "retry_grpc_on condition",
        e,
    );
    e.add(int(
        &p.max_retries,
        &child(path, "max_retries"),
        0,
        Some(10),
    ));
    if let Some(Some(d)) = p.per_try_timeout.get() {
        if d.value.is_zero() {
            e.add(fail(
                &child(path, "per_try_timeout"),
                format!("must be greater than 0, got {}", quoted(&d.text)),
            ));
        }
    }
}

fn policy_match(m: &RawPolicyMatch, path: &str, e: &mut Errors) {
    if let Some(methods) = m.methods.get() {
        for (i, s) in methods.iter().enumerate() {
            if !is_token(s) {
                e.add(fail(
                    &index(&child(path, "methods"), i),
                    format!("must be an HTTP method token, got {}", quoted(s)),
                ));
            }
        }
    }
    e.add(starts_with_slash(
        &m.path_prefix,
        &child(path, "path_prefix"),
    ));
    if let Some(headers) = m.headers.get() {
        let p = child(path, "headers");
        for (i, (name, _)) in headers.0.iter().enumerate() {
            let pn = child(&p, name);
            if !is_token(name) {
                e.add(fail(&pn, "header name must be an HTTP token"));
            }
            let seen = headers.0.iter().take(i);
            if seen.into_iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                e.add(fail(
                    &pn,
                    format!(
                        "header \"{}\" given twice (names are case-insensitive)",
                        name.to_ascii_lowercase()
                    ),
                ));
            }
        }
    }
}

fn reset_signals(r: &RawResetSignals, path: &str, e: &mut Errors) {
    e.add(non_empty(&r.cluster, &child(path, "cluster")));
    e.add(starts_with_slash(&r.path, &child(path, "path")));
    if let Some(d) = r.poll_interval.get() {
        e.add(duration(
            d,
            &child(path, "poll_interval"),
            Some((MIN_POLL_INTERVAL, "100ms")),
            Some((MAX_POLL_INTERVAL, "60s")),
        ));
    }
    e.add(number(
        &r.max_resets_per_second,
        &child(path, "max_resets_per_second"),
        |x| x > 0.0 && x.is_finite(),
        "must be greater than 0",
    ));
}

fn override_fields(o: &RawOverride, path: &str, e: &mut Errors) {
    let match_path = child(path, "match");
    let Some(m) = o.matcher.get() else {
        e.add(fail(
            &match_path,
            "is required: one of cluster, route, authority",
        ));
        return;
    };
    let given = [
        ("cluster", &m.cluster),
        ("route", &m.route),
        ("authority", &m.authority),
    ];
    let count = given.iter().filter(|(_, v)| v.get().is_some()).count();
    if count != 1 {
        e.add(fail(
            &match_path,
            format!("must hold exactly one of cluster, route, authority, got {count}"),
        ));
    }
    for (name, v) in given {
        e.add(non_empty(v, &child(&match_path, name)));
    }
    if let Some(b) = o.breaker.get() {
        breaker(b, &child(path, "breaker"), e);
    }
    if let Some(r) = o.retry.get() {
        retry(r, &child(path, "retry"), e);
    }
}

/// The cross-field rules, on the merged configuration: the top level and every override.
pub(crate) fn rules(cfg: &Config, e: &mut Errors) {
    breaker_rules(&cfg.breaker, "breaker", e);
    for (i, o) in cfg.overrides.iter().enumerate() {
        breaker_rules(&o.breaker, &child(&index("overrides", i), "breaker"), e);
        override_dimension(cfg.key_by, &o.matcher, &index("overrides", i), e);
    }
}

/// An override must match on a dimension the key carries: with `key_by: cluster`, a `route`
/// override would be resolved from whichever request of the key came first and then frozen for
/// the whole key, so the filter would apply it to requests it does not match.
fn override_dimension(key_by: KeyBy, matcher: &OverrideMatch, path: &str, e: &mut Errors) {
    let (field, ok) = match matcher {
        OverrideMatch::Cluster(_) => (
            "cluster",
            matches!(key_by, KeyBy::Cluster | KeyBy::ClusterRoute),
        ),
        OverrideMatch::Route(_) => (
            "route",
            matches!(key_by, KeyBy::Route | KeyBy::ClusterRoute),
        ),
        OverrideMatch::Authority(_) => ("authority", key_by == KeyBy::Authority),
    };
    if !ok {
        e.add(fail(
            &child(&child(path, "match"), field),
            format!(
                "a key_by that does not include the {field} cannot tell its keys apart; use a key_by that does"
            ),
        ));
    }
}

/// The rules that tie breaker fields together.
pub(crate) fn breaker_rules(b: &BreakerConfig, path: &str, e: &mut Errors) {
    let buckets = b.buckets.max(1);
    if b.window / buckets < MIN_BUCKET {
        e.add(fail(
            &child(path, "buckets"),
            format!(
                "window / buckets must be at least 100ms, got {} / {} = {}",
                format_duration(b.window),
                b.buckets,
                format_duration(b.window / buckets)
            ),
        ));
    }
    if b.sleep_window > b.max_sleep_window {
        e.add(fail(
            &child(path, "sleep_window"),
            format!(
                "must not exceed max_sleep_window ({}), got {}",
                format_duration(b.max_sleep_window),
                format_duration(b.sleep_window)
            ),
        ));
    }
}
