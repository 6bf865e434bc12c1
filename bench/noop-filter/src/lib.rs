//! The trivial proxy-wasm HTTP filter that `cargo xtask bench` measures meshbreaker against.
//!
//! With an empty plugin configuration its HTTP context does nothing: what Envoy then spends per
//! request is the proxy-wasm ABI itself (context create/delete, the callbacks, V8 entry and exit),
//! the floor under any wasm filter. The configuration can add N host calls of one or more kinds
//! that meshbreaker makes on its hot path, so that the benchmark prices one call of each kind by
//! difference (`(cpu(variant) - cpu(trivial)) / N`) with a single wasm module:
//!
//! ```text
//! ""                   nothing (the trivial filter)
//! "cluster=20"         20 × get_property(xds.cluster_name)        in on_http_request_headers
//! "header=20"          20 × get request header bytes (:authority) in on_http_request_headers
//! "headers=20"         20 × get all request headers, bytes (one map) in on_http_request_headers
//! "status=20"          20 × get response header bytes (:status)   in on_http_response_headers
//! "shared=20"          20 × get_shared_data (a 48-byte entry)     in on_http_request_headers
//! "metric=20"          20 × increment_metric (one counter)        in on_http_request_headers
//! "time=20"            20 × get_current_time                      in on_http_request_headers
//! "replace=20"         20 × replace request header x-bench        in on_http_request_headers
//! "remove=20"          20 × remove request header (absent)        in on_http_request_headers
//! "mesh=1"             the host calls meshbreaker's default configuration makes on a CLOSED
//!                      request, in the same callbacks and with no logic: the clock,
//!                      xds.cluster_name, the request header map, x-envoy-retry-on and
//!                      x-envoy-max-retries written; the clock and :status at the response
//!                      headers; response.flags, upstream.request_attempt_count and the clock
//!                      in on_log (the floor under meshbreaker's own code)
//! "cluster=1,time=2"   kinds combine, separated by commas
//! ```
//!
//! Every host call goes through `proxy_wasm::hostcalls` and ignores its status, so nothing here
//! can panic, and results are passed through `black_box` so the calls are not optimised away.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::hint::black_box;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

/// How many host calls of each kind one request makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub cluster: u32,
    pub header: u32,
    pub headers: u32,
    pub status: u32,
    pub shared: u32,
    pub metric: u32,
    pub time: u32,
    pub replace: u32,
    pub remove: u32,
    pub mesh: u32,
}

/// The shared-data key `shared=N` reads; set once in `on_configure`.
const SHARED_KEY: &str = "meshbreaker_bench_noop_state";

impl Calls {
    /// Parses `kind=N[,kind=N...]`; unknown kinds and bad counts are errors.
    pub fn parse(s: &str) -> Result<Calls, String> {
        let mut c = Calls::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, n) = part
                .split_once('=')
                .ok_or_else(|| format!("expected kind=N, got {part:?}"))?;
            let n: u32 = n
                .trim()
                .parse()
                .map_err(|_| format!("bad count in {part:?}"))?;
            let slot = match kind.trim() {
                "cluster" => &mut c.cluster,
                "header" => &mut c.header,
                "headers" => &mut c.headers,
                "status" => &mut c.status,
                "shared" => &mut c.shared,
                "metric" => &mut c.metric,
                "time" => &mut c.time,
                "replace" => &mut c.replace,
                "remove" => &mut c.remove,
                "mesh" => &mut c.mesh,
                other => return Err(format!("unknown kind {other:?}")),
            };
            *slot = n;
        }
        Ok(c)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    calls: Rc<Calls>,
    metric: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        match Calls::parse(&text) {
            Ok(c) => self.calls = Rc::new(c),
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("noop: bad configuration: {e}"));
                return false;
            }
        }
        if self.calls.metric > 0 {
            self.metric = hostcalls::define_metric(MetricType::Counter, "meshbreaker_bench_noop")
                .unwrap_or(0);
        }
        if self.calls.shared > 0 {
            // About the size of meshbreaker's per-key state entry.
            let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&[7u8; 48]), None);
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            calls: Rc::clone(&self.calls),
            metric: self.metric,
        }))
    }
}

struct Http {
    calls: Rc<Calls>,
    metric: u32,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let c = *self.calls;
        for _ in 0..c.cluster {
            black_box(hostcalls::get_property(vec!["xds", "cluster_name"]).ok());
        }
        for _ in 0..c.header {
            black_box(
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":authority").ok(),
            );
        }
        for _ in 0..c.headers {
            black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
        }
        for _ in 0..c.shared {
            black_box(hostcalls::get_shared_data(SHARED_KEY).ok());
        }
        for _ in 0..c.metric {
            black_box(hostcalls::increment_metric(self.metric, 1).ok());
        }
        for _ in 0..c.time {
            black_box(hostcalls::get_current_time().ok());
        }
        for _ in 0..c.replace {
            black_box(
                hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-bench", Some("1")).ok(),
            );
        }
        for _ in 0..c.mesh {
            black_box(hostcalls::get_current_time().ok());
            black_box(hostcalls::get_property(vec!["xds", "cluster_name"]).ok());
            black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
            black_box(
                hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-envoy-retry-on",
                    Some("5xx,reset"),
                )
                .ok(),
            );
            black_box(
                hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-envoy-max-retries",
                    Some("2"),
                )
                .ok(),
            );
        }
        for _ in 0..c.remove {
            black_box(
                hostcalls::remove_map_value(MapType::HttpRequestHeaders, "x-envoy-retry-on").ok(),
            );
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for _ in 0..self.calls.mesh {
            black_box(hostcalls::get_current_time().ok());
            black_box(hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok());
        }
        for _ in 0..self.calls.status {
            black_box(hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        for _ in 0..self.calls.mesh {
            black_box(hostcalls::get_property(vec!["response", "flags"]).ok());
            black_box(hostcalls::get_property(vec!["upstream", "request_attempt_count"]).ok());
            black_box(hostcalls::get_current_time().ok());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_empty_and_combined_kinds() {
        assert_eq!(Calls::parse("").unwrap(), Calls::default());
        let c = Calls::parse("cluster=3, time=2").unwrap();
        assert_eq!((c.cluster, c.time, c.header), (3, 2, 0));
    }

    #[test]
    fn parse_rejects_unknown_kind_and_bad_count() {
        assert!(Calls::parse("nope=1").is_err());
        assert!(Calls::parse("time=x").is_err());
        assert!(Calls::parse("time").is_err());
    }
}
