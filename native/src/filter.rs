//! What the module's hooks do, in safe Rust on top of [`crate::abi`].
//!
//! - **Configuration** ([`config_new`], main thread): `filter_name` must be `meshbreaker`; the
//!   `filter_config` bytes are the wasm filter's JSON, parsed by [`Config::parse`]. A bad one is
//!   refused (Envoy rejects the filter configuration) with one log line,
//!   `meshbreaker: config error at <path>: <reason>`, as the wasm filter logs it. The metrics are
//!   defined here, the only moment Envoy allows it.
//! - **Request path** ([`on_request_headers`], workers): no per-key state yet, so nothing that
//!   needs it. It removes the client's router retry headers when the key's configuration says so
//!   (SPEC `strip_downstream_headers`, in every mode) and counts the request as
//!   `meshbreaker_requests_total{key, decision="allowed"}`.
//!
//! [`FilterConfig`] is shared by every worker (Envoy hands the same pointer to all of them), so it
//! is `Sync` and read-only; per-request buffers are per thread ([`Scratch`]).

use std::cell::RefCell;

use policy_core::config::Config;

use crate::abi::{self, Attribute, ConfigEnvoy, CounterId, HeaderMap, LogLevel, Status, Stream};
use crate::labels::{self, Labels};
use crate::request::{Needs, RawParts, Scratch, StripLists};

/// The module's one filter, as `filter_name` names it in Envoy's configuration.
pub const FILTER_NAME: &str = "meshbreaker";

/// SPEC's request counter (one name for both shells: `policy_core::metrics`), with its labels.
pub use policy_core::metrics::REQUESTS_TOTAL;
pub const REQUESTS_LABELS: [&str; 2] = [policy_core::metrics::KEY, policy_core::metrics::DECISION];

/// The `decision` of a request the breaker let through.
pub const ALLOWED: &[u8] = b"allowed";

/// One filter configuration, shared by all workers.
#[derive(Debug)]
pub struct FilterConfig {
    cfg: Config,
    needs: Needs,
    strip: StripLists,
    requests: CounterId,
    labels: &'static Labels,
    /// Set when this configuration is the ABI probe's filter.
    #[cfg(feature = "abi-probe")]
    pub(crate) probe: Option<crate::probe::Probe>,
}

// Every worker reads the same configuration at once.
const _: () = {
    const fn shared_by_workers<T: Sync + Send>() {}
    shared_by_workers::<FilterConfig>()
};

impl FilterConfig {
    pub fn new(cfg: Config, requests: CounterId, labels: &'static Labels) -> FilterConfig {
        FilterConfig {
            needs: Needs::of(&cfg),
            strip: StripLists::of(&cfg),
            cfg,
            requests,
            labels,
            #[cfg(feature = "abi-probe")]
            probe: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// The configuration of filter `name` from `json`, or the one log line that says why not.
pub fn load(name: &[u8], json: &[u8]) -> Result<Config, String> {
    #[cfg(feature = "abi-probe")]
    if name == crate::probe::FILTER_NAME.as_bytes() {
        return Config::parse(json).map_err(|e| format!("meshbreaker: {e}"));
    }
    if name != FILTER_NAME.as_bytes() {
        // Debug formatting escapes what the configuration wrote: it cannot forge log lines.
        return Err(format!(
            "meshbreaker: config error at filter_name: this module has one filter, \
             {FILTER_NAME:?}, got {:?}",
            String::from_utf8_lossy(name)
        ));
    }
    Config::parse(json).map_err(|e| format!("meshbreaker: {e}"))
}

/// `on_http_filter_config_new`: the configuration, or `None` (refused; the reason is logged).
pub fn config_new(envoy: &mut ConfigEnvoy<'_>, name: &[u8], json: &[u8]) -> Option<FilterConfig> {
    let cfg = match load(name, json) {
        Ok(c) => c,
        Err(line) => {
            abi::log(LogLevel::Error, &line);
            return None;
        }
    };
    let requests = match envoy.define_counter(REQUESTS_TOTAL, &REQUESTS_LABELS) {
        Ok(id) => id,
        Err(e) => {
            abi::log(
                LogLevel::Error,
                &format!("meshbreaker: Envoy refused to define {REQUESTS_TOTAL}: {e:?}"),
            );
            return None;
        }
    };
    #[allow(unused_mut)]
    let mut fc = FilterConfig::new(cfg, requests, labels::process());
    #[cfg(feature = "abi-probe")]
    if name == crate::probe::FILTER_NAME.as_bytes() {
        fc.probe = Some(crate::probe::Probe::define(envoy)?);
    }
    Some(fc)
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `on_http_filter_request_headers`: strip, count, continue.
pub fn on_request_headers(fc: &FilterConfig, s: &mut Stream<'_>) -> Status {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => request_headers(fc, s, &mut scratch),
        // Only a re-entered hook could find it borrowed; pass the request through untouched.
        Err(_) => Status::Continue,
    })
}

fn request_headers(fc: &FilterConfig, s: &mut Stream<'_>, scratch: &mut Scratch) -> Status {
    #[cfg(feature = "abi-probe")]
    if let Some(p) = &fc.probe {
        return p.on_request_headers(s);
    }
    let strip = {
        let parts = read_parts(fc.needs, s);
        let strip = fc.strip.for_request(&fc.cfg, &parts, scratch);
        scratch.key(fc.cfg.key_by, &parts);
        strip
    };
    for h in strip {
        s.remove_header(HeaderMap::RequestHeaders, h);
    }
    let label = fc.labels.label(scratch.last_key(), fc.cfg.max_keys);
    // A metric Envoy refuses is not worth failing a request over.
    let _ = s.increment_counter(fc.requests, &[label.as_bytes(), ALLOWED], 1);
    Status::Continue
}

/// `on_http_filter_response_headers`: nothing yet (the outcome is read at stream end once the
/// breaker records it).
pub fn on_response_headers(fc: &FilterConfig, s: &mut Stream<'_>) -> Status {
    #[cfg(feature = "abi-probe")]
    if let Some(p) = &fc.probe {
        return p.on_response_headers(s);
    }
    let _ = (fc, s);
    Status::Continue
}

/// The raw parts the key needs, borrowed from Envoy for the rest of the hook.
fn read_parts<'s>(needs: Needs, s: &'s Stream<'_>) -> RawParts<'s> {
    let attr = |need: bool, id: Attribute| {
        if need {
            s.attribute_bytes(id).unwrap_or_default()
        } else {
            &[]
        }
    };
    RawParts {
        cluster: attr(needs.cluster, Attribute::XdsClusterName),
        route: attr(needs.route, Attribute::XdsRouteName),
        authority: if needs.authority {
            s.header(HeaderMap::RequestHeaders, ":authority")
                .unwrap_or_default()
        } else {
            &[]
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::fake::{self, FakeEnvoy};
    use policy_core::retry::ROUTER_RETRY_HEADERS;

    fn configured(json: &str) -> (FakeEnvoy, FilterConfig) {
        let mut envoy = FakeEnvoy::default();
        let fc = config_new(&mut envoy.config(), b"meshbreaker", json.as_bytes()).unwrap();
        (envoy, fc)
    }

    #[test]
    fn load_names_the_field_of_a_bad_config() {
        let err = load(
            b"meshbreaker",
            br#"{"breaker":{"error_rate_threshold":1.5}}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("meshbreaker: config error at breaker.error_rate_threshold: "),
            "{err}"
        );
    }

    #[test]
    fn load_refuses_another_filter_name_on_one_escaped_line() {
        let err = load(b"other\nfilter", b"{}").unwrap_err();
        assert!(
            err.starts_with("meshbreaker: config error at filter_name: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn config_new_logs_one_line_and_refuses_a_bad_config() {
        let mut envoy = FakeEnvoy::default();
        fake::take_logs();
        let got = config_new(&mut envoy.config(), b"meshbreaker", br#"{"max_keys":0}"#);
        assert!(got.is_none());
        let logs = fake::take_logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].0, LogLevel::Error as i32);
        assert!(
            logs[0]
                .1
                .starts_with("meshbreaker: config error at max_keys: "),
            "{logs:?}"
        );
        assert!(
            envoy.defined.is_empty(),
            "no metric for a refused configuration"
        );
    }

    #[test]
    fn config_new_defines_the_requests_counter() {
        let (envoy, _) = configured("{}");
        assert_eq!(
            envoy.defined,
            [(
                fake::Kind::Counter,
                REQUESTS_TOTAL.to_owned(),
                vec!["key".to_owned(), "decision".to_owned()]
            )]
        );
    }

    #[test]
    fn config_new_is_refused_when_envoy_refuses_the_metric() {
        let mut envoy = FakeEnvoy {
            frozen: true,
            ..FakeEnvoy::default()
        };
        assert!(config_new(&mut envoy.config(), b"meshbreaker", b"{}").is_none());
    }

    #[test]
    fn request_headers_strip_client_retry_headers_and_count_allowed() {
        let (mut envoy, fc) = configured("{}");
        envoy
            .attrs_str
            .push((Attribute::XdsClusterName as i32, b"Backend".to_vec()));
        for h in ROUTER_RETRY_HEADERS {
            envoy.push_request_header(h, b"5");
        }
        envoy.push_request_header("x-other", b"kept");
        let status = on_request_headers(&fc, &mut envoy.stream());
        assert_eq!(status, Status::Continue);
        for h in ROUTER_RETRY_HEADERS {
            assert!(envoy.request_header(h).is_none(), "{h} was not stripped");
        }
        assert_eq!(envoy.request_header("x-other"), Some(&b"kept"[..]));
        assert_eq!(
            envoy.counters,
            [(1, vec![b"backend".to_vec(), b"allowed".to_vec()], 1)]
        );
    }

    #[test]
    fn request_headers_keep_retry_headers_when_stripping_is_off() {
        let (mut envoy, fc) = configured(r#"{"retry":{"strip_downstream_headers":false}}"#);
        envoy.push_request_header("x-envoy-max-retries", b"5");
        on_request_headers(&fc, &mut envoy.stream());
        assert_eq!(envoy.request_header("x-envoy-max-retries"), Some(&b"5"[..]));
    }

    #[test]
    fn request_headers_count_a_missing_cluster_as_unknown() {
        let (mut envoy, fc) = configured("{}");
        on_request_headers(&fc, &mut envoy.stream());
        assert_eq!(envoy.counters[0].1[0], b"_unknown");
    }

    #[test]
    fn request_headers_key_by_authority_reads_non_utf8_bytes() {
        let (mut envoy, fc) = configured(r#"{"key_by":"authority"}"#);
        envoy.push_request_header(":authority", b"Caf\xe9:8080");
        on_request_headers(&fc, &mut envoy.stream());
        assert_eq!(envoy.counters[0].1[0], b"caf_:8080");
    }
}
