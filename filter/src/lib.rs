//! meshbreaker's proxy-wasm HTTP filter: thin host glue around `policy-core`.
//!
//! This file holds only the proxy-wasm entry points. The root context parses the configuration
//! (one log line naming the field and `false` on error, so Envoy refuses the plugin), owns the
//! per-VM [`engine::Engine`], flushes it on every tick and, with `reset_signals`, polls the eBPF
//! sidecar ([`resets`]). HTTP contexts forward each callback to a [`request::Exchange`].
//!
//! Nothing here may panic: a panic kills the VM and with it the worker's traffic. Host calls go
//! through [`abi`], which turns every status into a value, never through the SDK's panicking
//! wrappers.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod abi;
pub mod engine;
pub mod flush;
pub mod host;
pub mod metrics;
pub mod needs;
pub mod peers;
pub mod request;
pub mod resets;
pub mod shared;
pub mod slots;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use policy_core::config::Config;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use abi::ProxyWasmHost;
use engine::{Engine, FLUSH_MS};
use host::{Host, Map};
use request::Exchange;

type SharedEngine = Rc<RefCell<Option<Engine<ProxyWasmHost>>>>;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    engine: SharedEngine,
    poller: Option<resets::Poller>,
}

impl Context for Root {
    /// The plugin is going away (a reload replaced it): hand the samples this VM has not merged
    /// yet and the batched counters to shared data and Envoy, so a reload loses none of them, and
    /// the sidecar poller's lease to the new configuration's VMs.
    fn on_done(&mut self) -> bool {
        if let Some(e) = self.engine.borrow_mut().as_mut() {
            let now = e.host.now_ns() / 1_000_000;
            e.flush_all(now);
            if let Some(p) = self.poller.as_mut() {
                p.release(&e.host, e.names());
            }
        }
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let host = ProxyWasmHost;
        let now = host.now_ns() / 1_000_000;
        let status = host.header(Map::HttpCallResponseHeaders, ":status");
        let content_length = host.header(Map::HttpCallResponseHeaders, "content-length");
        // The poller caps the answer (content-length first, then the size) before it is read.
        let Some(len) = self
            .poller
            .as_mut()
            .and_then(|p| p.body_len(token, content_length.as_deref(), body_size, now))
        else {
            return;
        };
        let body = abi::buffer(abi::HTTP_CALL_RESPONSE_BODY, len).unwrap_or_default();
        let status = status.as_deref().and_then(|s| std::str::from_utf8(s).ok());
        if let (Some(p), Some(e)) = (self.poller.as_mut(), self.engine.borrow_mut().as_mut()) {
            p.on_response(&e.host, e.names(), token, status, &body, now);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let host = ProxyWasmHost;
        let raw = abi::buffer(abi::PLUGIN_CONFIGURATION, size).unwrap_or_default();
        let cfg = match Config::parse(&raw) {
            Ok(c) => c,
            Err(e) => {
                log::error!("meshbreaker: {e}");
                return false;
            }
        };
        let plugin = host
            .property(request::PLUGIN_NAME)
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| "meshbreaker".into());
        // Seed for the sleep-window jitter (and, for the first VM, the slot hash): the clock in
        // nanoseconds. Worker VMs share one address-space layout, so addresses add nothing.
        let seed = host.now_ns();
        self.poller = cfg
            .reset_signals
            .clone()
            .map(|rs| resets::Poller::new(rs, seed));
        let engine = Engine::new(host, cfg, &plugin, seed);
        *self.engine.borrow_mut() = Some(engine);
        self.set_tick_period(Duration::from_millis(FLUSH_MS));
        true
    }

    fn on_tick(&mut self) {
        let mut guard = self.engine.borrow_mut();
        let Some(e) = guard.as_mut() else { return };
        let now = e.host.now_ns() / 1_000_000;
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

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(e) = self.engine.borrow_mut().as_mut() {
            e.on_queue_ready(queue_id);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            engine: self.engine.clone(),
            x: Exchange::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    engine: SharedEngine,
    x: Exchange,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, eos: bool) -> Action {
        let mut guard = self.engine.borrow_mut();
        let Some(e) = guard.as_mut() else {
            return Action::Continue;
        };
        if self.x.on_request_headers(e, eos) {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, _size: usize, eos: bool) -> Action {
        if eos {
            if let Some(e) = self.engine.borrow().as_ref() {
                self.x.on_request_end(e);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        if let Some(e) = self.engine.borrow().as_ref() {
            self.x.on_request_end(e);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if let Some(e) = self.engine.borrow().as_ref() {
            self.x.on_response_headers(e);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        if let Some(e) = self.engine.borrow().as_ref() {
            self.x.on_response_trailers(e);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(e) = self.engine.borrow_mut().as_mut() {
            self.x.on_log(e);
        }
    }
}
