//! The local answer to a rejected request (SPEC "What a client sees"), rendered once for every
//! shell: the wasm filter and the dynamic module send the same status, headers and body.

use crate::breaker::Rejection;

/// What a shell sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The response code details a shell gives its own rejections (`%RESPONSE_CODE_DETAILS%`), so
/// that they are told apart from upstream answers.
pub const DETAILS: &str = "meshbreaker_circuit_open";

/// gRPC's UNAVAILABLE, the status of a rejected gRPC call.
pub const GRPC_UNAVAILABLE: &[u8] = b"14";

/// Renders the rejection of `key`. A gRPC request gets `content-type: application/grpc`,
/// `grpc-status: 14` (UNAVAILABLE) and the message as body: Envoy turns a local reply to a gRPC
/// request into HTTP 200 with the body as grpc-message, and keeps a grpc-status the reply sets.
/// The status is set here because not every shell's local reply lets Envoy derive it from the
/// 503: a dynamic module's reply asks for grpc-status 0 (OK) unless the reply names one.
pub fn local_reply(key: &str, r: &Rejection, grpc: bool) -> LocalReply {
    let reason = r.reason.as_str();
    let mut headers = vec![
        ("retry-after", r.retry_after_s.to_string().into_bytes()),
        ("x-meshbreaker", b"open".to_vec()),
        ("x-meshbreaker-reason", reason.as_bytes().to_vec()),
    ];
    let body = if grpc {
        headers.push(("content-type", b"application/grpc".to_vec()));
        headers.push(("grpc-status", GRPC_UNAVAILABLE.to_vec()));
        format!("circuit open: {reason}")
    } else {
        headers.push(("content-type", b"application/json".to_vec()));
        // `key` is sanitized ([a-z0-9._:|-]), so it needs no JSON escaping.
        format!(
            "{{\"error\":\"circuit_open\",\"key\":\"{key}\",\"reason\":\"{reason}\",\"retry_after_s\":{}}}",
            r.retry_after_s
        )
    };
    LocalReply {
        status: 503,
        headers,
        body: body.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::TripReason;

    #[test]
    fn local_reply_has_the_spec_shape() {
        let r = Rejection {
            reason: TripReason::LatencyP95,
            retry_after_s: 7,
        };
        let http = local_reply("backend", &r, false);
        assert_eq!(http.status, 503);
        assert_eq!(
            String::from_utf8(http.body).unwrap(),
            r#"{"error":"circuit_open","key":"backend","reason":"latency_p95","retry_after_s":7}"#
        );
        assert!(http.headers.contains(&("retry-after", b"7".to_vec())));
        assert!(http
            .headers
            .contains(&("content-type", b"application/json".to_vec())));
        let grpc = local_reply("backend", &r, true);
        assert_eq!(grpc.body, b"circuit open: latency_p95");
        assert!(grpc
            .headers
            .contains(&("content-type", b"application/grpc".to_vec())));
        assert!(grpc.headers.contains(&("grpc-status", b"14".to_vec())));
    }
}
