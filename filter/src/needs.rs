//! What the configuration makes the filter read per request, decided once at configure time (as
//! the profiles are): the request path asks the host only for the properties and headers some
//! key, override or retry policy uses.

use policy_core::config::Config;

/// What the configuration makes the filter read per request, computed at configure time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub cluster: bool,
    pub route: bool,
    pub authority: bool,
    pub method: bool,
    pub path: bool,
    /// Header names some policy matches on (lower case).
    pub match_headers: Vec<String>,
    /// `response.flags`: some breaker counts upstream resets.
    pub response_flags: bool,
    /// `upstream.address`: only with `reset_signals`.
    pub upstream_address: bool,
    /// The lowest `latency_p95_threshold` of any breaker, in µs: an upstream span this long or
    /// longer is checked against Envoy's monotonic `request.duration` (a forward step of the wall
    /// clock must not make a fast request look slow). `None`: no latency rule, no check.
    pub clamp_latency_from_us: Option<u64>,
}

impl Needs {
    pub fn of(cfg: &Config) -> Needs {
        use policy_core::config::{KeyBy, OverrideMatch};
        let mut n = Needs {
            cluster: matches!(cfg.key_by, KeyBy::Cluster | KeyBy::ClusterRoute),
            route: matches!(cfg.key_by, KeyBy::Route | KeyBy::ClusterRoute),
            authority: cfg.key_by == KeyBy::Authority,
            upstream_address: cfg.reset_signals.is_some(),
            response_flags: cfg.breaker.failure.upstream_resets,
            clamp_latency_from_us: threshold_us(&cfg.breaker),
            ..Needs::default()
        };
        let mut retries = vec![&cfg.retry];
        for o in &cfg.overrides {
            match o.matcher {
                OverrideMatch::Cluster(_) => n.cluster = true,
                OverrideMatch::Route(_) => n.route = true,
                OverrideMatch::Authority(_) => n.authority = true,
            }
            n.response_flags |= o.breaker.failure.upstream_resets;
            n.clamp_latency_from_us = match (n.clamp_latency_from_us, threshold_us(&o.breaker)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            retries.push(&o.retry);
        }
        for r in retries {
            for p in &r.policies {
                n.method |= !p.matcher.methods.is_empty();
                n.path |= p.matcher.path_prefix.is_some();
                for (h, _) in &p.matcher.headers {
                    let h = h.to_ascii_lowercase();
                    if !n.match_headers.contains(&h) {
                        n.match_headers.push(h);
                    }
                }
            }
        }
        n
    }
}

fn threshold_us(b: &policy_core::config::BreakerConfig) -> Option<u64> {
    b.latency_p95_threshold
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
