//! The ABI probe (feature `abi-probe`): filter `meshbreaker_abi_probe` calls each declared
//! callback that the request path does not use yet, and shows what came back where a client or
//! `/stats/prometheus` can see it. `tests/tests/native_smoke.rs` asserts on that against the real
//! Envoy. Envoy checks only callback *names*, so without this a wrong argument list would stay
//! hidden until the breaker's decisions relied on it. Never part of the shipped module.
//!
//! - request headers: `x-abi-probe: reply` gets a local reply (418, a header, a body, details);
//!   `x-abi-probe: panic` panics inside the hook, which must fail open (the request goes on);
//!   any other request gets `x-abi-probe-added: 1` added before the upstream, and sets the gauge
//!   `meshbreaker_abi_probe_gauge{key="probe"}` to 7;
//! - response headers: `x-abi-probe-attrs` carries the int and string attributes the breaker will
//!   read at the outcome (response code, flags, attempt count, upstream address) and `:status` as
//!   read back from the response map.

use crate::abi::{Attribute, ConfigEnvoy, GaugeId, HeaderMap, Status, Stream};

pub const FILTER_NAME: &str = "meshbreaker_abi_probe";
pub const GAUGE: &str = "meshbreaker_abi_probe_gauge";

#[derive(Debug)]
pub struct Probe {
    gauge: GaugeId,
}

impl Probe {
    pub fn define(envoy: &mut ConfigEnvoy<'_>) -> Option<Probe> {
        envoy
            .define_gauge(GAUGE, &["key"])
            .ok()
            .map(|gauge| Probe { gauge })
    }

    pub fn on_request_headers(&self, s: &mut Stream<'_>) -> Status {
        if s.header(HeaderMap::RequestHeaders, "x-abi-probe") == Some(b"reply") {
            s.send_response(
                418,
                &[("x-abi-probe", b"replied"), ("content-type", b"text/plain")],
                b"abi probe reply",
                "abi_probe",
            );
            return Status::StopIteration;
        }
        if s.header(HeaderMap::RequestHeaders, "x-abi-probe") == Some(b"panic") {
            // What a bug in a hook looks like to Envoy: `guard` must turn it into Continue.
            #[allow(clippy::panic)]
            {
                panic!("meshbreaker abi probe: a panic inside on_request_headers");
            }
        }
        s.add_header(HeaderMap::RequestHeaders, "x-abi-probe-added", b"1");
        let _ = s.set_gauge(self.gauge, &[b"probe"], 7);
        Status::Continue
    }

    pub fn on_response_headers(&self, s: &mut Stream<'_>) -> Status {
        let int = |id| {
            s.attribute_int(id)
                .map_or("none".to_owned(), |v| v.to_string())
        };
        let upstream = s
            .attribute_bytes(Attribute::UpstreamAddress)
            .map_or("none".to_owned(), |b| {
                String::from_utf8_lossy(b).into_owned()
            });
        let status = s
            .header(HeaderMap::ResponseHeaders, ":status")
            .map_or("none".to_owned(), |b| {
                String::from_utf8_lossy(b).into_owned()
            });
        let attrs = format!(
            "code={};flags={};attempts={};upstream={upstream};status={status}",
            int(Attribute::ResponseCode),
            int(Attribute::ResponseFlags),
            int(Attribute::UpstreamRequestAttemptCount),
        );
        s.set_header(
            HeaderMap::ResponseHeaders,
            "x-abi-probe-attrs",
            attrs.as_bytes(),
        );
        Status::Continue
    }
}
