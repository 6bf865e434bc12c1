//! Raw documents onto compiled configurations: the top level onto SPEC's defaults, each override
//! onto the merged top level (SPEC "overrides": "the fields given replace the defaults for
//! matching keys").
//!
//! Runs after [`super::validate::fields`], so every value is in range here; the conversions
//! still never panic (out-of-range integers saturate), they just have nothing left to reject.
//! Normalization happens here: `retry_on`/`retry_grpc_on` lower-case with duplicates dropped,
//! methods upper-case and unique, header names lower-case, override selectors sanitized like keys.

use super::raw::{
    Field, Int, RawBreaker, RawConfig, RawFailure, RawOverride, RawPolicy, RawPolicyMatch,
    RawResetSignals, RawRetry,
};
use super::{
    BreakerConfig, Config, Override, OverrideMatch, PolicyMatch, ResetSignals, RetryConfig,
    RetryPolicy, RETRY_GRPC_ON_VALUES, RETRY_ON_VALUES,
};

fn set<T: Clone>(target: &mut T, v: &Field<T>) {
    if let Some(v) = v.get() {
        *target = v.clone();
    }
}

fn set_u32(target: &mut u32, v: &Field<Int>) {
    if let Some(&Int(n)) = v.get() {
        *target = u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    }
}

pub(crate) fn config(raw: &RawConfig) -> Config {
    let mut c = Config::default();
    set(&mut c.key_by, &raw.key_by);
    set_u32(&mut c.max_keys, &raw.max_keys);
    set(&mut c.mode, &raw.mode);
    if let Some(b) = raw.breaker.get() {
        breaker(&mut c.breaker, b);
    }
    if let Some(r) = raw.retry.get() {
        retry(&mut c.retry, r);
    }
    if let Some(rs) = raw.reset_signals.get() {
        c.reset_signals = rs.as_ref().map(|r| reset_signals(r));
    }
    if let Some(list) = raw.overrides.get() {
        c.overrides = list.iter().filter_map(|o| override_onto(&c, o)).collect();
    }
    c
}

pub(crate) fn breaker(b: &mut BreakerConfig, raw: &RawBreaker) {
    if let Some(d) = raw.window.get() {
        b.window = d.value;
    }
    set_u32(&mut b.buckets, &raw.buckets);
    set_u32(&mut b.min_requests, &raw.min_requests);
    if let Some(x) = raw.error_rate_threshold.get() {
        b.error_rate_threshold = x.0;
    }
    if let Some(d) = raw.latency_p95_threshold.get() {
        b.latency_p95_threshold = d.as_ref().map(|d| d.value);
    }
    if let Some(d) = raw.sleep_window.get() {
        b.sleep_window = d.value;
    }
    if let Some(d) = raw.max_sleep_window.get() {
        b.max_sleep_window = d.value;
    }
    set_u32(&mut b.half_open_max_probes, &raw.half_open_max_probes);
    set_u32(
        &mut b.half_open_successes_to_close,
        &raw.half_open_successes_to_close,
    );
    set_u32(&mut b.consecutive_failures, &raw.consecutive_failures);
    set(&mut b.shedding, &raw.shedding);
    if let Some(x) = raw.shedding_success_rate.get() {
        b.shedding_success_rate = x.0;
    }
    if let Some(f) = raw.failure.get() {
        failure(&mut b.failure, f);
    }
}

fn failure(f: &mut super::FailureConfig, raw: &RawFailure) {
    set(&mut f.http_statuses, &raw.http_statuses);
    if let Some(codes) = raw.grpc_statuses.get() {
        f.grpc_statuses = codes.iter().map(|c| c.0).collect();
    }
    set(&mut f.upstream_resets, &raw.upstream_resets);
}

pub(crate) fn retry(r: &mut RetryConfig, raw: &RawRetry) {
    set(
        &mut r.strip_downstream_headers,
        &raw.strip_downstream_headers,
    );
    if let Some(b) = raw.budget.get() {
        if let Some(x) = b.ratio.get() {
            r.budget.ratio = x.0;
        }
        if let Some(x) = b.min_retries_per_second.get() {
            r.budget.min_retries_per_second = x.0;
        }
    }
    if let Some(list) = raw.policies.get() {
        r.policies = list.iter().map(|p| policy(p)).collect();
    }
}

/// The known spelling of each condition in `list` (case-insensitive), duplicates dropped.
fn conditions(list: &Field<Vec<String>>, allowed: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in list.get().into_iter().flatten() {
        if let Some(known) = allowed.iter().find(|a| a.eq_ignore_ascii_case(s)) {
            if !out.iter().any(|o| o == known) {
                out.push((*known).to_string());
            }
        }
    }
    out
}

fn policy(raw: &RawPolicy) -> RetryPolicy {
    let mut codes: Vec<u16> = Vec::new();
    for c in raw.retriable_status_codes.get().into_iter().flatten() {
        if !codes.contains(&c.0) {
            codes.push(c.0);
        }
    }
    let mut max_retries = 1; // Envoy's own default
    set_u32(&mut max_retries, &raw.max_retries);
    RetryPolicy {
        name: raw.name.get().cloned().unwrap_or_default(),
        matcher: raw.matcher.get().map(policy_match).unwrap_or_default(),
        retry_on: conditions(&raw.retry_on, &RETRY_ON_VALUES),
        retry_grpc_on: conditions(&raw.retry_grpc_on, &RETRY_GRPC_ON_VALUES),
        max_retries,
        per_try_timeout: raw
            .per_try_timeout
            .get()
            .cloned()
            .flatten()
            .map(|d| d.value),
        retriable_status_codes: codes,
    }
}

fn policy_match(raw: &RawPolicyMatch) -> PolicyMatch {
    let mut m = PolicyMatch {
        grpc: raw.grpc.get().copied().flatten(),
        path_prefix: raw.path_prefix.get().cloned(),
        ..PolicyMatch::default()
    };
    for s in raw.methods.get().into_iter().flatten() {
        let upper = s.to_ascii_uppercase();
        if !m.methods.contains(&upper) {
            m.methods.push(upper);
        }
    }
    for (name, value) in raw.headers.get().map(|h| h.0.as_slice()).unwrap_or(&[]) {
        m.headers.push((name.to_ascii_lowercase(), value.clone()));
    }
    m
}

fn reset_signals(raw: &RawResetSignals) -> ResetSignals {
    let mut r = ResetSignals::default();
    set(&mut r.cluster, &raw.cluster);
    set(&mut r.path, &raw.path);
    if let Some(d) = raw.poll_interval.get() {
        r.poll_interval = d.value;
    }
    if let Some(x) = raw.max_resets_per_second.get() {
        r.max_resets_per_second = x.0;
    }
    r
}

/// An override with its partial fields merged onto the top level; `None` without a selector
/// (which validation has already rejected).
fn override_onto(top: &Config, raw: &RawOverride) -> Option<Override> {
    let m = raw.matcher.get()?;
    let key = |s: &String| crate::keys::sanitize_key(s);
    let matcher = if let Some(c) = m.cluster.get() {
        OverrideMatch::Cluster(key(c))
    } else if let Some(r) = m.route.get() {
        OverrideMatch::Route(key(r))
    } else {
        OverrideMatch::Authority(key(m.authority.get()?))
    };
    let mut breaker_cfg = top.breaker.clone();
    if let Some(b) = raw.breaker.get() {
        breaker(&mut breaker_cfg, b);
    }
    let mut retry_cfg = top.retry.clone();
    if let Some(r) = raw.retry.get() {
        retry(&mut retry_cfg, r);
    }
    Some(Override {
        matcher,
        mode: raw.mode.get().copied().unwrap_or(top.mode),
        breaker: breaker_cfg,
        retry: retry_cfg,
    })
}
