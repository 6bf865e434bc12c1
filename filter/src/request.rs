//! One HTTP exchange as the filter sees it: what it reads from Envoy, what it asks the engine, what
//! it writes back, and the outcome it records.
//!
//! Everything a client or an upstream sends is bytes: header values may hold obs-text (0x80–0xFF),
//! so every read goes through the byte getters and is parsed byte-wise with bounds (a number too
//! long or out of range is "absent", never a panic). Only what the configuration needs is read,
//! decided once at configure time ([`crate::needs::Needs`]), and property paths are serialized once
//! ([`PropertyPath`] constants) rather than per request.
//!
//! Attempts: Envoy's router counts every upstream attempt in the stream info; `on_log` reads it
//! from the `upstream.request_attempt_count` property, which exists whether or not the virtual
//! host adds `x-envoy-attempt-count` to responses (Istio's do not). The response header is only a
//! fallback, and either value is clamped to what the request's policy allowed (SPEC "Failure"), so
//! an upstream forging `x-envoy-attempt-count` cannot trip a healthy key or spend the budget.
//!
//! ## Latency is the upstream's
//!
//! A sample's latency runs from the request being complete at this filter (its headers when it
//! has no body, else its last body byte or its trailers) to the upstream's response headers: time
//! to first byte. So a client that uploads slowly, a long download, a long-lived stream or what the
//! filters before this one spent cannot trip the latency rule; a websocket or other upgrade and a
//! `CONNECT` record no latency sample at all (their "response" is a tunnel).
//!
//! Envoy 1.40 offers no property for that span: `request.duration` is the whole exchange and
//! `response.backend_latency` runs from the first byte sent upstream to the last one received
//! (both include uploads and downloads). So the filter takes the two instants itself from the
//! host clock, which in proxy-wasm is the wall clock; the difference is clamped to
//! `request.duration`, Envoy's monotonic timer of the whole stream, so a forward clock step cannot
//! inflate it (a backward one shortens it to 0).

use policy_core::breaker::Decision;
use policy_core::reply::local_reply;
use policy_core::retry::{HeaderLookup, RequestView};
use policy_core::window::Outcome;

use crate::engine::{Engine, KeyParts};
use crate::host::{pairs, Host, Map};
use crate::needs::Needs;

/// A property path in proxy-wasm's serialization: the segments joined by NUL bytes.
pub type PropertyPath = &'static [u8];

pub const CLUSTER_NAME: PropertyPath = b"xds\0cluster_name";
pub const ROUTE_NAME: PropertyPath = b"xds\0route_name";
pub const RESPONSE_FLAGS: PropertyPath = b"response\0flags";
pub const ATTEMPT_COUNT: PropertyPath = b"upstream\0request_attempt_count";
pub const REQUEST_DURATION: PropertyPath = b"request\0duration";
pub const UPSTREAM_ADDRESS: PropertyPath = b"upstream\0address";
pub const PLUGIN_NAME: PropertyPath = b"plugin_name";

/// Envoy response flags (legacy bit values, what `response.flags` holds) that mean the upstream
/// connection failed or was reset ([`policy_core::window::UPSTREAM_RESET_FLAGS`]).
pub const RESET_FLAGS: u64 = policy_core::window::UPSTREAM_RESET_BITS;

/// The longest prefix of `b` that is UTF-8. A method, path or content-type with obs-text still
/// matches on its text part; nothing panics.
pub fn text(b: &[u8]) -> &str {
    match std::str::from_utf8(b) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(b.get(..e.valid_up_to()).unwrap_or(&[])).unwrap_or(""),
    }
}

pub use policy_core::wire::parse_u32;

/// An 8-byte little-endian integer property (Envoy serializes CEL ints, uints and durations so).
pub fn le_u64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_le_bytes)
}

/// Whether a `:method` is `CONNECT`.
fn is_connect(method: Option<&[u8]>) -> bool {
    method.is_some_and(|m| m.eq_ignore_ascii_case(b"CONNECT"))
}

/// Header lookups over the header values read up front (only the names policies match on).
struct ReadHeaders<'a>(&'a [(&'a str, Option<&'a [u8]>)]);

impl HeaderLookup for ReadHeaders<'_> {
    fn header_is(&self, name: &str, value: &str) -> bool {
        self.0
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == Some(value.as_bytes()))
    }
}

/// The request headers one decision reads, by name, however they were fetched: with one
/// `header_pairs` call when that saves host calls, else with single header calls.
struct RequestHeaders<'a> {
    authority: Option<&'a [u8]>,
    method: Option<&'a [u8]>,
    path: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    /// The headers policies match on, in [`Needs::match_headers`] order.
    matched: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Bit `i`: the client sent `ROUTER_RETRY_HEADERS[i]` (all ones when not known: single
    /// reads do not look).
    retry_headers_present: u8,
    /// The request asks for an upgrade (websocket) or is a `CONNECT`: no latency sample.
    upgrade: bool,
}

impl<'a> RequestHeaders<'a> {
    /// Whether one `header_pairs` call costs fewer host calls than single reads: the headers
    /// the key and the policies need, `content-type`, and the client's retry headers to strip.
    fn pairs_pay_off(n: &Needs, strips: bool) -> bool {
        let singles = usize::from(n.authority)
            + usize::from(n.method)
            + usize::from(n.path)
            + 1
            + n.match_headers.len();
        singles + if strips { 3 } else { 0 } >= 2
    }

    /// From the serialized `header_pairs` map, in one pass and without allocating (but for the
    /// policies' own header names, when they have any). The first value of a name counts.
    fn from_pairs(n: &'a Needs, buf: &'a [u8]) -> RequestHeaders<'a> {
        let mut h = RequestHeaders {
            authority: None,
            method: None,
            path: None,
            content_type: None,
            matched: n.match_headers.iter().map(|m| (m.as_str(), None)).collect(),
            retry_headers_present: 0,
            upgrade: false,
        };
        let mut raw_method = None;
        for (k, v) in pairs(buf) {
            let first = |slot: &mut Option<&'a [u8]>| {
                if slot.is_none() {
                    *slot = Some(v);
                }
            };
            match k {
                b":authority" => first(&mut h.authority),
                b":method" => first(&mut raw_method),
                b":path" => first(&mut h.path),
                b"content-type" => first(&mut h.content_type),
                b"upgrade" => h.upgrade = true,
                _ => {
                    if let Some(i) = policy_core::retry::ROUTER_RETRY_HEADERS
                        .iter()
                        .position(|r| r.as_bytes() == k)
                    {
                        h.retry_headers_present |= 1 << i;
                    }
                    for m in h.matched.iter_mut() {
                        if m.1.is_none() && m.0.as_bytes() == k {
                            m.1 = Some(v);
                        }
                    }
                }
            }
        }
        h.upgrade |= is_connect(raw_method);
        h.authority = h.authority.filter(|_| n.authority);
        h.path = h.path.filter(|_| n.path);
        h.method = raw_method.filter(|_| n.method);
        h
    }

    /// From single reads.
    fn from_singles(n: &'a Needs, s: &'a Singles) -> RequestHeaders<'a> {
        RequestHeaders {
            authority: s.authority.as_deref(),
            method: s.method.as_deref(),
            path: s.path.as_deref(),
            content_type: s.content_type.as_deref(),
            matched: n
                .match_headers
                .iter()
                .zip(&s.matched)
                .map(|(h, v)| (h.as_str(), v.as_deref()))
                .collect(),
            retry_headers_present: u8::MAX,
            // Without the header map only a `CONNECT` read for the policies is seen here; a
            // websocket is still recognised by its `101` response.
            upgrade: is_connect(s.method.as_deref()),
        }
    }
}

/// The request headers read one host call each (what [`RequestHeaders::from_singles`] borrows).
#[derive(Default)]
struct Singles {
    authority: Option<Vec<u8>>,
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    matched: Vec<Option<Vec<u8>>>,
}

impl Singles {
    fn read<H: Host>(host: &H, n: &Needs) -> Singles {
        let header = |need: bool, name: &str| {
            if need {
                host.header(Map::RequestHeaders, name)
            } else {
                None
            }
        };
        Singles {
            authority: header(n.authority, ":authority"),
            method: header(n.method, ":method"),
            path: header(n.path, ":path"),
            content_type: header(true, "content-type"),
            matched: n
                .match_headers
                .iter()
                .map(|h| host.header(Map::RequestHeaders, h))
                .collect(),
        }
    }
}

/// Per-request state between Envoy's callbacks.
#[derive(Debug, Default)]
pub struct Exchange {
    local: Option<usize>,
    probe: Option<u32>,
    record: bool,
    dry_run_mark: bool,
    grpc: bool,
    started_ms: u64,
    /// When the request was complete at this filter (wall clock, ms); `None` until it is.
    request_done_ms: Option<u64>,
    /// When the response headers came (wall clock, ms).
    response_ms: Option<u64>,
    /// An upgrade or `CONNECT`: no latency sample.
    upgrade: bool,
    status: Option<u16>,
    grpc_status: Option<u32>,
    max_attempts: u32,
}

impl Exchange {
    /// Decides the request. Returns false when it was answered locally (pause the stream).
    /// `end_of_stream`: the request has no body.
    pub fn on_request_headers<H: Host>(&mut self, e: &mut Engine<H>, end_of_stream: bool) -> bool {
        let now_ms = e.host.now_ns() / 1_000_000;
        self.started_ms = now_ms;
        if end_of_stream {
            self.request_done_ms = Some(now_ms);
        }
        let prop = |need: bool, path: PropertyPath| {
            if need {
                e.host.property(path)
            } else {
                None
            }
        };
        // A refcount, not a copy: the names policies match on stay borrowed across the decision.
        let n = e.needs.clone();
        let cluster = prop(n.cluster, CLUSTER_NAME);
        let route = prop(n.route, ROUTE_NAME);
        // One call for every request header when that saves calls: what the key and the policies
        // need, and which client retry headers are present (only those are removed).
        let strips = e.strips_any();
        let pairs_buf = if RequestHeaders::pairs_pay_off(&n, strips) {
            e.host.header_pairs(Map::RequestHeaders)
        } else {
            None
        };
        let singles = match pairs_buf {
            Some(_) => Singles::default(),
            None => Singles::read(&e.host, &n),
        };
        let headers = match pairs_buf.as_deref() {
            Some(p) => RequestHeaders::from_pairs(&n, p),
            None => RequestHeaders::from_singles(&n, &singles),
        };
        let lookup = ReadHeaders(&headers.matched);
        let view = RequestView {
            method: text(headers.method.unwrap_or_default()),
            path: text(headers.path.unwrap_or_default()),
            content_type: headers.content_type.map(text),
            headers: &lookup,
        };
        self.grpc = view.is_grpc();
        self.upgrade = headers.upgrade;
        let parts = KeyParts {
            cluster: text(cluster.as_deref().unwrap_or_default()),
            route: text(route.as_deref().unwrap_or_default()),
            authority: text(headers.authority.unwrap_or_default()),
        };
        let a = e.on_request(&parts, &view, now_ms);
        match a.decision {
            Decision::Reject(r) => {
                let reply = local_reply(e.last_key(), &r, self.grpc);
                let headers: Vec<(&str, &[u8])> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_slice()))
                    .collect();
                e.host
                    .send_local_response(reply.status, &headers, &reply.body);
                return false;
            }
            Decision::DryRunReject(_) => self.dry_run_mark = true,
            Decision::Probe(id) => self.probe = Some(id),
            Decision::Allow | Decision::PassThrough => {}
        }
        e.apply_retry_headers(&a, headers.retry_headers_present);
        self.record = a.record;
        self.max_attempts = a.max_attempts.max(1);
        self.local = a.local;
        true
    }

    /// The last byte of the request body (or its trailers) went by: the request is complete, and
    /// the upstream's time starts.
    pub fn on_request_end<H: Host>(&mut self, e: &Engine<H>) {
        if self.record && self.request_done_ms.is_none() {
            self.request_done_ms = Some(e.host.now_ns() / 1_000_000);
        }
    }

    pub fn on_response_headers<H: Host>(&mut self, e: &Engine<H>) {
        if self.dry_run_mark {
            e.host.add_header(
                Map::ResponseHeaders,
                "x-meshbreaker-dry-run",
                b"would-reject",
            );
        }
        if !self.record {
            return;
        }
        if !self.upgrade {
            self.response_ms = Some(e.host.now_ns() / 1_000_000);
        }
        self.status = e
            .host
            .header(Map::ResponseHeaders, ":status")
            .and_then(|v| parse_u32(&v))
            .and_then(|s| u16::try_from(s).ok());
        // A websocket upgraded: what follows is a tunnel, not a response.
        self.upgrade |= self.status == Some(101);
        if self.grpc {
            // Trailers-only responses carry grpc-status in the headers. Only for gRPC requests:
            // an HTTP upstream's `grpc-status` header means nothing.
            if let Some(g) = e
                .host
                .header(Map::ResponseHeaders, "grpc-status")
                .and_then(|v| parse_u32(&v))
            {
                self.grpc_status = Some(g);
            }
        }
    }

    pub fn on_response_trailers<H: Host>(&mut self, e: &Engine<H>) {
        if self.record && self.grpc {
            if let Some(g) = e
                .host
                .header(Map::ResponseTrailers, "grpc-status")
                .and_then(|v| parse_u32(&v))
            {
                self.grpc_status = Some(g);
            }
        }
    }

    /// Records the outcome (from Envoy's stream info where it has one).
    pub fn on_log<H: Host>(&mut self, e: &mut Engine<H>) {
        if !self.record {
            return;
        }
        let Some(at) = self.local.take() else { return };
        let flags = if e.needs.response_flags {
            e.host
                .property(RESPONSE_FLAGS)
                .and_then(|b| le_u64(&b))
                .unwrap_or(0)
        } else {
            0
        };
        let upstream_reset = flags & RESET_FLAGS != 0;
        let attempts = if self.max_attempts > 1 {
            e.host
                .property(ATTEMPT_COUNT)
                .and_then(|b| le_u64(&b))
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .or_else(|| {
                    e.host
                        .header(Map::ResponseHeaders, "x-envoy-attempt-count")
                        .and_then(|v| parse_u32(&v))
                })
                .unwrap_or(1)
                .clamp(1, self.max_attempts)
        } else {
            1
        };
        // The end on the host clock (a cheap call). Envoy's monotonic `request.duration`, a
        // property read several times the clock's price, is read only when the upstream's span
        // is long enough for a latency rule to care: a forward step of the wall clock must not
        // make a fast request look slow, and only there can it change a decision.
        let mut now_ms = e.host.now_ns() / 1_000_000;
        // The upstream's part: request complete → response headers (or, with none, the end).
        let mut upstream_us = self.request_done_ms.map_or(0, |done| {
            let until = self.response_ms.unwrap_or(now_ms);
            until.saturating_sub(done).saturating_mul(1_000)
        });
        if e.needs
            .clamp_latency_from_us
            .is_some_and(|from| upstream_us >= from)
        {
            let whole_us = e
                .host
                .property(REQUEST_DURATION)
                .and_then(|b| le_u64(&b))
                .filter(|ns| (*ns as i64) >= 0)
                .map(|ns| ns / 1_000);
            if let Some(whole_us) = whole_us {
                // Never more than the whole exchange on Envoy's monotonic timer.
                upstream_us = upstream_us.min(whole_us);
                now_ms = self.started_ms.saturating_add(whole_us / 1_000);
            }
        }
        let latency_us = (!self.upgrade).then_some(upstream_us);
        if self.status.is_none() && !upstream_reset {
            // No response and no upstream failure: the client went away (or a filter before us
            // answered). That says nothing about the upstream, so it is not a sample; a probe
            // frees its slot at once (and fails if it had already been slow).
            e.on_abandoned(at, self.probe, upstream_us, now_ms);
            return;
        }
        let host = if e.needs.upstream_address {
            e.host.property(UPSTREAM_ADDRESS)
        } else {
            None
        };
        let outcome = Outcome {
            http_status: self.status,
            grpc_status: self.grpc_status,
            upstream_reset,
            latency_us,
            attempts,
        };
        e.on_complete_at(at, &outcome, self.probe, host.as_deref().map(text), now_ms);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn text_keeps_the_utf8_prefix_of_obs_text() {
        assert_eq!(text(b"application/grpc\xff"), "application/grpc");
        assert_eq!(text(b"\xff\xfe"), "");
        assert_eq!(text("é/x".as_bytes()), "é/x");
    }
}
