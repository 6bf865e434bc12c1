//! meshbreaker's proxy-wasm HTTP filter: thin host glue around `policy-core`.
//!
//! The root context parses the configuration (one log line naming the field and `false` on error,
//! so Envoy refuses the plugin), owns the per-VM [`engine::Engine`], flushes it on every tick and,
//! with `reset_signals`, polls the eBPF sidecar ([`resets`]). HTTP contexts read what Envoy knows of
//! a request, ask the engine, and either answer locally (SPEC "What a client sees") or let the
//! request go with the router's retry headers; `on_log` records the outcome.
//!
//! Nothing here may panic: a panic kills the VM and with it the worker's traffic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod engine;
pub mod host;
pub mod resets;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use policy_core::breaker::{Decision, Rejection};
use policy_core::config::Config;
use policy_core::retry::{HeaderFn, RequestView, ROUTER_RETRY_HEADERS};
use policy_core::window::Outcome;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use engine::{Engine, KeyParts, FLUSH_MS};
use host::ProxyWasmHost;

type SharedEngine = Rc<RefCell<Option<Engine<ProxyWasmHost>>>>;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn property_string(ctx: &dyn Context, path: Vec<&str>) -> Option<String> {
    ctx.get_property(path)
        .and_then(|b| String::from_utf8(b).ok())
}

#[derive(Default)]
struct Root {
    engine: SharedEngine,
    poller: Option<resets::Poller>,
    strip: bool,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let now = millis(self.get_current_time());
        let status = self.get_http_call_response_header(":status");
        let content_length = self.get_http_call_response_header_bytes("content-length");
        let Some(len) = self
            .poller
            .as_mut()
            .and_then(|p| p.body_len(token, content_length.as_deref(), body_size, now))
        else {
            return;
        };
        let body = self.get_http_call_response_body(0, len).unwrap_or_default();
        if let (Some(p), Some(e)) = (self.poller.as_mut(), self.engine.borrow_mut().as_mut()) {
            p.on_response(&e.host, e.names(), token, status.as_deref(), &body, now);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let cfg = match Config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                log::error!("meshbreaker: {e}");
                return false;
            }
        };
        let plugin =
            property_string(self, vec!["plugin_name"]).unwrap_or_else(|| "meshbreaker".into());
        let now = self.get_current_time();
        // Seed for the sleep-window jitter: the clock and this VM's address space differ per worker.
        let seed = micros(now) ^ (Rc::as_ptr(&self.engine) as u64).rotate_left(32);
        self.strip = cfg.retry.strip_downstream_headers;
        self.poller = cfg
            .reset_signals
            .clone()
            .map(|rs| resets::Poller::new(rs, seed));
        let engine = Engine::new(ProxyWasmHost, cfg, &plugin, seed);
        *self.engine.borrow_mut() = Some(engine);
        self.set_tick_period(Duration::from_millis(FLUSH_MS));
        true
    }

    fn on_tick(&mut self) {
        let now = millis(self.get_current_time());
        let mut guard = self.engine.borrow_mut();
        let Some(e) = guard.as_mut() else { return };
        let req = match self.poller.as_mut() {
            Some(p) => p.due(&e.host, e.names(), now),
            None => None,
        };
        if let Some(req) = req {
            let headers = vec![
                (":method", "GET"),
                (":path", req.path.as_str()),
                (":authority", "meshbreaker-sidecar"),
            ];
            let sent = self.dispatch_http_call(&req.cluster, headers, None, vec![], req.timeout);
            if let Some(p) = self.poller.as_mut() {
                match sent {
                    Ok(token) => p.dispatched(token, now),
                    Err(_) => p.dispatch_failed(
                        "the host refused the call (is the cluster defined?)",
                        now,
                    ),
                }
            }
        }
        e.on_tick(now);
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            engine: self.engine.clone(),
            strip: self.strip,
            ..Default::default()
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct Http {
    engine: SharedEngine,
    strip: bool,
    key: Option<String>,
    probe: Option<u32>,
    record: bool,
    dry_run_mark: bool,
    started_us: u64,
    status: Option<u16>,
    grpc_status: Option<u32>,
    attempts: u32,
}

/// Envoy response flags that mean the upstream connection failed or was reset
/// (`UF` upstream connection failure, `UR` upstream remote reset, `UC` upstream connection termination).
const RESET_FLAGS: u64 = 0x10 | 0x20 | 0x40;

impl Http {
    fn reject(&self, key: &str, r: &Rejection, grpc: bool) {
        let reason = r.reason.as_str();
        let retry_after = r.retry_after_s.to_string();
        let mut headers = vec![
            ("retry-after", retry_after.as_str()),
            ("x-meshbreaker", "open"),
            ("x-meshbreaker-reason", reason),
        ];
        if grpc {
            // Envoy turns a local reply to a gRPC request into HTTP 200, grpc-status 14, with the
            // body as grpc-message.
            headers.push(("content-type", "application/grpc"));
            let msg = format!("circuit open: {reason}");
            self.send_http_response(503, headers, Some(msg.as_bytes()));
        } else {
            headers.push(("content-type", "application/json"));
            let body = format!(
                "{{\"error\":\"circuit_open\",\"key\":\"{key}\",\"reason\":\"{reason}\",\"retry_after_s\":{}}}",
                r.retry_after_s
            );
            self.send_http_response(503, headers, Some(body.as_bytes()));
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.started_us = micros(self.get_current_time());
        let now_ms = self.started_us / 1000;
        if self.strip {
            for h in ROUTER_RETRY_HEADERS {
                self.set_http_request_header(h, None);
            }
        }
        let cluster = property_string(self, vec!["xds", "cluster_name"]).unwrap_or_default();
        let route = property_string(self, vec!["xds", "route_name"]).unwrap_or_default();
        let authority = self
            .get_http_request_header(":authority")
            .unwrap_or_default();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let content_type = self.get_http_request_header("content-type");
        let lookup = HeaderFn(|name: &str| self.get_http_request_header(name));
        let req = RequestView {
            method: &method,
            path: &path,
            content_type: content_type.as_deref(),
            headers: &lookup,
        };
        let grpc = req.is_grpc();
        let parts = KeyParts {
            cluster: &cluster,
            route: &route,
            authority: &authority,
        };
        let plan = {
            let mut guard = self.engine.borrow_mut();
            match guard.as_mut() {
                Some(e) => e.on_request(&parts, &req, now_ms),
                None => return Action::Continue,
            }
        };
        match plan.decision {
            Decision::Reject(r) => {
                self.reject(&plan.key, &r, grpc);
                return Action::Pause;
            }
            Decision::DryRunReject(_) => self.dry_run_mark = true,
            Decision::Probe(id) => self.probe = Some(id),
            Decision::Allow | Decision::PassThrough => {}
        }
        for (name, value) in &plan.retry_headers {
            self.set_http_request_header(name, Some(value));
        }
        self.record = plan.record;
        self.key = Some(plan.key);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse().ok());
        if let Some(g) = self
            .get_http_response_header("grpc-status")
            .and_then(|s| s.parse().ok())
        {
            self.grpc_status = Some(g);
        }
        self.attempts = self
            .get_http_response_header("x-envoy-attempt-count")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        if self.dry_run_mark {
            self.add_http_response_header("x-meshbreaker-dry-run", "would-reject");
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        if let Some(g) = self
            .get_http_response_trailer("grpc-status")
            .and_then(|s| s.parse().ok())
        {
            self.grpc_status = Some(g);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if !self.record {
            return;
        }
        let Some(key) = self.key.take() else { return };
        let now_us = micros(self.get_current_time());
        let flags = self
            .get_property(vec!["response", "flags"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        let details = property_string(self, vec!["response", "code_details"]).unwrap_or_default();
        let upstream_reset = flags & RESET_FLAGS != 0 || details.starts_with("upstream_reset");
        let host = property_string(self, vec!["upstream", "address"]);
        let outcome = Outcome {
            http_status: self.status,
            grpc_status: self.grpc_status,
            upstream_reset,
            latency_us: now_us.saturating_sub(self.started_us),
            attempts: self.attempts.max(1),
        };
        if let Some(e) = self.engine.borrow_mut().as_mut() {
            e.on_complete(&key, &outcome, self.probe, host.as_deref(), now_us / 1000);
        }
    }
}
