//! Ranges and cross-field rules: everything serde's types cannot say, in one place.
//!
//! Why a pass of its own: a rule such as "`sleep_window` ≤ `max_sleep_window`" holds on the
//! *merged* configuration of an override (an override may lower only `max_sleep_window`), and
//! every message quotes what was written (`got "999ms"`, `got -1`). So [`fields`] checks each
//! given raw value where it stands, with its path, and [`rules`] checks the cross-field rules on
//! the compiled result, at the top level and for every override. The messages are part of the
//! contract (SPEC "Plugin configuration" ranges), pinned by the unit tests.

use std::time::Duration;

use super::duration::{format_duration, Dur};
use super::error::{child, index, ConfigError};
use super::raw::{
    quoted, Field, Int, Number, RawBreaker, RawConfig, RawOverride, RawPolicy, RawPolicyMatch,
    RawResetSignals, RawRetry,
};
use super::{BreakerConfig, Config, RETRY_GRPC_ON_VALUES, RETRY_ON_VALUES};

type Res = Result<(), ConfigError>;

/// The shortest bucket and sleep window: below it the 100 ms flush cadence cannot keep up.
pub(crate) const MIN_BUCKET: Duration = Duration::from_millis(100);
/// Most probes and successes in HALF_OPEN: what the shared-state encoding can hold.
pub(crate) const MAX_PROBES: i64 = 1000;
/// The top of the latency histogram.
const MAX_LATENCY_THRESHOLD: Duration = Duration::from_secs(600);
/// Caps on durations that feed clock arithmetic (open periods, the poller's lease).
const MAX_SLEEP_WINDOW: Duration = Duration::from_secs(3600);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);

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
pub(crate) fn fields(raw: &RawConfig) -> Res {
    int(&raw.max_keys, "max_keys", 1, Some(100_000))?;
    if let Some(b) = raw.breaker.get() {
        breaker(b, "breaker")?;
    }
    if let Some(r) = raw.retry.get() {
        retry(r, "retry")?;
    }
    if let Some(Some(r)) = raw.reset_signals.get() {
        reset_signals(r, "reset_signals")?;
    }
    if let Some(list) = raw.overrides.get() {
        for (i, o) in list.iter().enumerate() {
            override_fields(o, &index("overrides", i))?;
        }
    }
    Ok(())
}

fn breaker(b: &RawBreaker, path: &str) -> Res {
    if let Some(d) = b.window.get() {
        if d.value < Duration::from_secs(1) || d.value > Duration::from_secs(3600) {
            return fail(
                &child(path, "window"),
                format!("must be in [1s, 1h], got {}", quoted(&d.text)),
            );
        }
    }
    int(&b.buckets, &child(path, "buckets"), 1, Some(60))?;
    int(&b.min_requests, &child(path, "min_requests"), 1, None)?;
    number(
        &b.error_rate_threshold,
        &child(path, "error_rate_threshold"),
        |x| x > 0.0 && x <= 1.0,
        "must be in (0, 1]",
    )?;
    if let Some(Some(d)) = b.latency_p95_threshold.get() {
        let p = child(path, "latency_p95_threshold");
        if d.value.is_zero() {
            return fail(
                &p,
                format!(
                    "must be greater than 0 (or null to turn it off), got {}",
                    quoted(&d.text)
                ),
            );
        }
        duration(d, &p, None, Some((MAX_LATENCY_THRESHOLD, "10m")))?;
    }
    if let Some(d) = b.sleep_window.get() {
        duration(
            d,
            &child(path, "sleep_window"),
            Some((MIN_BUCKET, "100ms")),
            None,
        )?;
    }
    if let Some(d) = b.max_sleep_window.get() {
        duration(
            d,
            &child(path, "max_sleep_window"),
            Some((MIN_BUCKET, "100ms")),
            Some((MAX_SLEEP_WINDOW, "1h")),
        )?;
    }
    int(
        &b.half_open_max_probes,
        &child(path, "half_open_max_probes"),
        1,
        Some(MAX_PROBES),
    )?;
    int(
        &b.half_open_successes_to_close,
        &child(path, "half_open_successes_to_close"),
        1,
        Some(MAX_PROBES),
    )
}

fn retry(r: &RawRetry, path: &str) -> Res {
    if let Some(b) = r.budget.get() {
        let p = child(path, "budget");
        number(
            &b.ratio,
            &child(&p, "ratio"),
            |x| (0.0..=1.0).contains(&x),
            "must be in [0, 1]",
        )?;
        number(
            &b.min_retries_per_second,
            &child(&p, "min_retries_per_second"),
            |x| x >= 0.0 && x.is_finite(),
            "must be at least 0",
        )?;
    }
    if let Some(list) = r.policies.get() {
        let p = child(path, "policies");
        for (i, policy) in list.iter().enumerate() {
            let pi = index(&p, i);
            policy_fields(policy, &pi)?;
            let name = policy.name.get();
            if let Some(first) = list.iter().take(i).position(|o| o.name.get() == name) {
                return fail(
                    &child(&pi, "name"),
                    format!(
                        "duplicate policy name \"{}\" (also at {})",
                        name.map_or("", String::as_str),
                        index(&p, first)
                    ),
                );
            }
        }
    }
    Ok(())
}

fn conditions(v: &Field<Vec<String>>, path: &str, allowed: &[&str], what: &str) -> Res {
    let Some(list) = v.get() else {
        return Ok(());
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
            return fail(
                &index(path, i),
                format!("unknown {what} {}, expected one of: {known}", quoted(s)),
            );
        }
    }
    Ok(())
}

fn policy_fields(p: &RawPolicy, path: &str) -> Res {
    let name_path = child(path, "name");
    match p.name.get() {
        None => return fail(&name_path, "is required"),
        Some(n) if n.is_empty() => return fail(&name_path, "must not be empty"),
        Some(_) => {}
    }
    if let Some(m) = p.matcher.get() {
        policy_match(m, &child(path, "match"))?;
    }
    conditions(
        &p.retry_on,
        &child(path, "retry_on"),
        &RETRY_ON_VALUES,
        "retry_on condition",
    )?;
    conditions(
        &p.retry_grpc_on,
        &child(path, "retry_grpc_on"),
        &RETRY_GRPC_ON_VALUES,
        "retry_grpc_on condition",
    )?;
    int(&p.max_retries, &child(path, "max_retries"), 0, Some(10))?;
    if let Some(Some(d)) = p.per_try_timeout.get() {
        if d.value.is_zero() {
            return fail(
                &child(path, "per_try_timeout"),
                format!("must be greater than 0, got {}", quoted(&d.text)),
            );
        }
    }
    Ok(())
}

fn policy_match(m: &RawPolicyMatch, path: &str) -> Res {
    if let Some(methods) = m.methods.get() {
        for (i, s) in methods.iter().enumerate() {
            if !is_token(s) {
                return fail(
                    &index(&child(path, "methods"), i),
                    format!("must be an HTTP method token, got {}", quoted(s)),
                );
            }
        }
    }
    starts_with_slash(&m.path_prefix, &child(path, "path_prefix"))?;
    if let Some(headers) = m.headers.get() {
        let p = child(path, "headers");
        for (i, (name, _)) in headers.0.iter().enumerate() {
            let pn = child(&p, name);
            if !is_token(name) {
                return fail(&pn, "header name must be an HTTP token");
            }
            let seen = headers.0.iter().take(i);
            if seen.into_iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return fail(
                    &pn,
                    format!(
                        "header \"{}\" given twice (names are case-insensitive)",
                        name.to_ascii_lowercase()
                    ),
                );
            }
        }
    }
    Ok(())
}

fn reset_signals(r: &RawResetSignals, path: &str) -> Res {
    non_empty(&r.cluster, &child(path, "cluster"))?;
    starts_with_slash(&r.path, &child(path, "path"))?;
    if let Some(d) = r.poll_interval.get() {
        duration(
            d,
            &child(path, "poll_interval"),
            Some((MIN_BUCKET, "100ms")),
            Some((MAX_POLL_INTERVAL, "60s")),
        )?;
    }
    number(
        &r.max_resets_per_second,
        &child(path, "max_resets_per_second"),
        |x| x > 0.0 && x.is_finite(),
        "must be greater than 0",
    )
}

fn override_fields(o: &RawOverride, path: &str) -> Res {
    let match_path = child(path, "match");
    let Some(m) = o.matcher.get() else {
        return fail(&match_path, "is required: one of cluster, route, authority");
    };
    let given = [
        ("cluster", &m.cluster),
        ("route", &m.route),
        ("authority", &m.authority),
    ];
    let count = given.iter().filter(|(_, v)| v.get().is_some()).count();
    if count != 1 {
        return fail(
            &match_path,
            format!("must hold exactly one of cluster, route, authority, got {count}"),
        );
    }
    for (name, v) in given {
        non_empty(v, &child(&match_path, name))?;
    }
    if let Some(b) = o.breaker.get() {
        breaker(b, &child(path, "breaker"))?;
    }
    if let Some(r) = o.retry.get() {
        retry(r, &child(path, "retry"))?;
    }
    Ok(())
}

/// The cross-field rules, on the merged configuration: the top level and every override.
pub(crate) fn rules(cfg: &Config) -> Res {
    breaker_rules(&cfg.breaker, "breaker")?;
    for (i, o) in cfg.overrides.iter().enumerate() {
        breaker_rules(&o.breaker, &child(&index("overrides", i), "breaker"))?;
    }
    Ok(())
}

/// The rules that tie breaker fields together.
pub(crate) fn breaker_rules(b: &BreakerConfig, path: &str) -> Res {
    let buckets = b.buckets.max(1);
    if b.window / buckets < MIN_BUCKET {
        return fail(
            &child(path, "buckets"),
            format!(
                "window / buckets must be at least 100ms, got {} / {} = {}",
                format_duration(b.window),
                b.buckets,
                format_duration(b.window / buckets)
            ),
        );
    }
    if b.sleep_window > b.max_sleep_window {
        return fail(
            &child(path, "sleep_window"),
            format!(
                "must not exceed max_sleep_window ({}), got {}",
                format_duration(b.max_sleep_window),
                format_duration(b.sleep_window)
            ),
        );
    }
    Ok(())
}
