//! The checking client: a steady trickle of requests whose every answer must be explained.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::schedule::*;

/// What the checking client saw.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Seen {
    pub(super) responses: u64,
    pub(super) ok: u64,
    pub(super) rejections: BTreeMap<String, u64>,
    pub(super) upstream_answers: BTreeMap<u16, u64>,
    pub(super) upstream_failures: BTreeMap<String, u64>,
    pub(super) unexplained: u64,
    pub(super) examples: Vec<String>,
    /// Connections Envoy closed between requests (drain after a reload), reopened.
    pub(super) reconnects: u64,
    pub(super) transport_errors: u64,
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

impl Reply {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a keep-alive connection; `Ok(None)` if the server had closed it first.
pub(super) fn exchange(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Reply>> {
    conn.get_mut()
        .write_all(b"GET /soak HTTP/1.1\r\nhost: soak\r\nx-soak-client: checker\r\n\r\n")?;
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("closed in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                length = v.parse().unwrap_or(0);
            }
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            headers.push((k, v));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            conn.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        conn.read_exact(&mut body)?;
    }
    Ok(Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// SPEC's rejection shape; `Err(why)` when a response says `x-meshbreaker: open` but is not it.
pub(super) fn check_rejection(r: &Reply) -> std::result::Result<String, String> {
    let reason = r.header("x-meshbreaker-reason").unwrap_or_default();
    if r.status != 503 {
        return Err(format!("rejection with status {}", r.status));
    }
    if !["error_rate", "latency_p95", "kernel_resets", "forced_open"].contains(&reason) {
        return Err(format!("rejection reason {reason:?}"));
    }
    if r.header("content-type") != Some("application/json") {
        return Err("rejection without content-type application/json".into());
    }
    let retry_after: Option<u64> = r.header("retry-after").and_then(|v| v.parse().ok());
    let body: Value = serde_json::from_str(&r.body).map_err(|e| format!("body: {e}"))?;
    if body["error"] != "circuit_open" || body["key"] != KEY || body["reason"] != reason {
        return Err(format!("rejection body {}", r.body));
    }
    if retry_after.is_none() || body["retry_after_s"].as_u64() != retry_after {
        return Err(format!(
            "retry-after {:?} vs body {}",
            r.header("retry-after"),
            r.body
        ));
    }
    Ok(reason.to_string())
}

pub(super) fn classify(r: &Reply, seen: &mut Seen) {
    seen.responses += 1;
    if (200..300).contains(&r.status) {
        seen.ok += 1;
        return;
    }
    let verdict = if r.header("x-meshbreaker") == Some("open") {
        check_rejection(r).map(|reason| *seen.rejections.entry(reason).or_default() += 1)
    } else if r.header("x-envoy-upstream-service-time").is_some() {
        // Only responses that came from the upstream carry it.
        *seen.upstream_answers.entry(r.status).or_default() += 1;
        Ok(())
    } else if r
        .body
        .starts_with("upstream connect error or disconnect/reset before headers")
        || r.body.starts_with("upstream request timeout")
    {
        let what = r.body.split(". ").last().unwrap_or(&r.body).to_string();
        *seen.upstream_failures.entry(what).or_default() += 1;
        Ok(())
    } else {
        Err("neither a rejection nor from the upstream".to_string())
    };
    if let Err(why) = verdict {
        seen.unexplained += 1;
        if seen.examples.len() < 5 {
            seen.examples.push(format!(
                "{} ({why}): {:?} {:.200}",
                r.status, r.headers, r.body
            ));
        }
    }
}

/// Requests at `rate` per second on one keep-alive connection until `stop`.
pub(super) fn checker(port: u16, rate: f64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        if conn.is_none() {
            conn = TcpStream::connect(("127.0.0.1", port)).ok().map(|s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                BufReader::new(s)
            });
        }
        let Some(c) = conn.as_mut() else {
            if let Ok(mut s) = seen.lock() {
                s.transport_errors += 1;
            }
            continue;
        };
        let result = exchange(c);
        let mut s = match seen.lock() {
            Ok(s) => s,
            Err(_) => return,
        };
        match result {
            Ok(Some(r)) => {
                let close = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                classify(&r, &mut s);
                if close {
                    conn = None;
                }
            }
            Ok(None) => {
                s.reconnects += 1;
                conn = None;
                next = Instant::now();
            }
            Err(e) => {
                s.transport_errors += 1;
                if s.examples.len() < 5 {
                    s.examples.push(format!("transport error: {e}"));
                }
                conn = None;
            }
        }
    }
}
