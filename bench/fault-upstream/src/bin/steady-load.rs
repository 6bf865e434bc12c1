//! `steady-load`: the protection benchmark's client. An open-loop HTTP/1.1 load generator (hyper
//! over real sockets) that sends to every target at the same fixed rate at the same time and
//! records each response: when it was sent, how long it took, who answered and how.
//!
//! Why not oha: oha's JSON holds aggregates, and the benchmark needs a timeline per request (which
//! second a request was sent, whether Envoy or meshbreaker answered it locally, whether the
//! response was cut by an RST). Open loop, because a protected proxy answers faster while an
//! upstream fails: a closed loop would then send more, and systems would not see the same load.
//!
//! Usage: `steady-load --target NAME=127.0.0.1:PORT [--target …] --rate R --duration-ms D
//! [--clients K] [--timeout-ms T] [--long-share S --long-from-ms A --long-until-ms B
//! --long-hold-ms H] --out FILE`. Each target gets R requests per second, `GET /` with a unique
//! `x-req-id`, spread over K clients with their own connection pools (so at least K connections
//! per target). The output is one JSON document: per target, arrays `t` (wall-clock ms sent),
//! `lat_us`, `class` (see `Class`), `host` (the `x-fault-host` that answered, -1 for none), `att`
//! (`x-envoy-attempt-count`, 0 when absent), `id`, `kind` (see `Kind`).
//!
//! Long-lived requests: with `--long-share S`, a share S of the requests sent between A and B ms
//! after the start (every ⌊1/S⌉-th, the same ones on every target) is long-lived instead of a
//! `GET /`, alternately a websocket upgrade held open for H ms (echoing a ping every 250 ms;
//! the upstream closes it after `x-hold-ms`) and a 4 KiB upload whose body trickles in over H ms.
//! Each is its own connection, written by hand on a raw socket: the client must control when each
//! byte leaves. A websocket counts as OK when it got `101` and stayed open for the hold, an upload
//! when it got a 2xx.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Body of a slow upload, sent in `UPLOAD_CHUNKS` equal parts spread over the hold.
const UPLOAD_BYTES: usize = 4096;
const UPLOAD_CHUNKS: usize = 16;
/// How often a held websocket sends a ping for the upstream to echo.
const WS_PING: Duration = Duration::from_millis(250);
/// Largest response head read on a raw socket.
const MAX_HEAD: usize = 64 * 1024;

/// What the client saw. Numbers are the `class` values of the output.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Class {
    /// 2xx with its whole body.
    Ok = 0,
    /// A 5xx that an upstream host produced (it carries `x-fault-host`).
    Upstream5xx = 1,
    /// meshbreaker's local rejection (`x-meshbreaker: open`).
    MeshbreakerOpen = 2,
    /// Another local 503 with no upstream behind it (Envoy's admission_control sheds this way).
    Shed = 3,
    /// Envoy's `no healthy upstream` (outlier detection ejected every host, panic mode off).
    NoHealthyUpstream = 4,
    /// Envoy's own 5xx after an upstream connect failure or reset before the response headers.
    ProxyError = 5,
    /// The response started but its body was cut (an upstream RST mid-response).
    CutMidBody = 6,
    /// No response at all (timeout or a connection error towards the proxy).
    NoResponse = 7,
    /// Anything else (e.g. a 4xx).
    Other = 8,
}

/// What was sent. Numbers are the `kind` values of the output.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// `GET /`, the steady traffic.
    Get = 0,
    /// A websocket upgrade held open.
    Websocket = 1,
    /// A POST whose body trickles in.
    SlowUpload = 2,
}

struct Record {
    t: u64,
    lat_us: u64,
    class: Class,
    host: i64,
    att: u64,
    id: u64,
    kind: Kind,
}

/// Which response a request got, from its status, whether an upstream host answered
/// (`x-fault-host`), meshbreaker's marker and the body.
fn classify(status: u16, host: Option<i64>, mb_open: bool, body: &str) -> Class {
    if mb_open {
        Class::MeshbreakerOpen
    } else if (200..300).contains(&status) {
        Class::Ok
    } else if status >= 500 && host.is_some() {
        Class::Upstream5xx
    } else if status >= 500 && body.contains("no healthy upstream") {
        Class::NoHealthyUpstream
    } else if status >= 500
        && (body.contains("upstream connect error")
            || body.contains("reset")
            || body.contains("upstream request timeout"))
    {
        Class::ProxyError
    } else if status == 503 {
        Class::Shed
    } else {
        Class::Other
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn one(client: HttpClient, uri: hyper::Uri, id: u64, timeout: Duration) -> Record {
    let t = now_ms();
    let started = Instant::now();
    let mut rec = Record {
        t,
        lat_us: 0,
        class: Class::NoResponse,
        host: -1,
        att: 0,
        id,
        kind: Kind::Get,
    };
    let req = hyper::Request::get(uri)
        .header("x-req-id", id.to_string())
        .body(Empty::<Bytes>::new());
    let Ok(req) = req else {
        return rec;
    };
    let outcome = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let h = resp.headers();
        let host = h
            .get("x-fault-host")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let mb_open = h.get("x-meshbreaker").is_some_and(|v| v == "open");
        let att = h
            .get("x-envoy-attempt-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        Some((status, host, mb_open, att, body))
    })
    .await;
    rec.lat_us = started.elapsed().as_micros() as u64;
    let Ok(Some((status, host, mb_open, att, body))) = outcome else {
        return rec;
    };
    rec.host = host.unwrap_or(-1);
    rec.att = att;
    let Ok(body) = body else {
        rec.class = Class::CutMidBody;
        return rec;
    };
    rec.class = classify(status, host, mb_open, &String::from_utf8_lossy(&body));
    rec
}

/// A response read by hand from a raw socket.
struct RawResponse {
    status: u16,
    host: Option<i64>,
    mb_open: bool,
    att: u64,
    /// The body; `None` when the connection ended before all of it came.
    body: Option<Vec<u8>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (head and, unless it is a `101`, its body) from `r`.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Option<RawResponse> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = r.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut resp = RawResponse {
        status,
        host: header("x-fault-host").and_then(|v| v.parse().ok()),
        mb_open: header("x-meshbreaker").is_some_and(|v| v == "open"),
        att: header("x-envoy-attempt-count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        body: None,
    };
    let mut body = buf.split_off(end);
    if status == 101 {
        resp.body = Some(Vec::new());
        return Some(resp);
    }
    let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
    loop {
        if length.is_some_and(|n| body.len() >= n) {
            break;
        }
        match r.read(&mut chunk).await {
            Ok(0) if length.is_none() => break,
            Ok(0) | Err(_) => return Some(resp),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    resp.body = Some(body);
    Some(resp)
}

/// A websocket upgrade held open for `hold`: `Ok` when it got `101` and the tunnel stayed up
/// until the upstream closed it at the end of the hold.
async fn websocket(mut sock: TcpStream, id: u64, hold: Duration) -> Option<(Class, RawResponse)> {
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: bench\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         x-req-id: {id}\r\nx-hold-ms: {}\r\n\r\n",
        hold.as_millis()
    );
    sock.write_all(req.as_bytes()).await.ok()?;
    let resp = read_response(&mut sock).await?;
    if resp.status != 101 {
        let body = resp.body.clone();
        let class = match body {
            Some(b) => classify(
                resp.status,
                resp.host,
                resp.mb_open,
                &String::from_utf8_lossy(&b),
            ),
            None => Class::CutMidBody,
        };
        return Some((class, resp));
    }
    let upgraded = Instant::now();
    let mut ping = tokio::time::interval(WS_PING);
    let mut chunk = [0u8; 1024];
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if sock.write_all(b"ping").await.is_err() {
                    break;
                }
            }
            n = sock.read(&mut chunk) => {
                if !matches!(n, Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
    // The upstream closes the tunnel when the hold is over; earlier is a cut connection.
    let held = upgraded.elapsed() + Duration::from_millis(250) >= hold;
    Some((if held { Class::Ok } else { Class::CutMidBody }, resp))
}

/// A POST whose `UPLOAD_BYTES` body trickles in over `hold`; the response is read while it is
/// sent, so an early answer (a rejection) ends it.
async fn slow_upload(sock: TcpStream, id: u64, hold: Duration) -> Option<(Class, RawResponse)> {
    let (mut rd, mut wr) = sock.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: bench\r\ncontent-type: application/octet-stream\r\n\
         content-length: {UPLOAD_BYTES}\r\nx-req-id: {id}\r\nconnection: close\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.ok()?;
    let step = hold / UPLOAD_CHUNKS as u32;
    let writer = async move {
        let part = [b'u'; UPLOAD_BYTES / UPLOAD_CHUNKS];
        for _ in 0..UPLOAD_CHUNKS {
            tokio::time::sleep(step).await;
            if wr.write_all(&part).await.is_err() {
                break;
            }
        }
        // Keep the write side open until the answer has come (dropping it would half-close).
        wr
    };
    let (resp, _wr) = tokio::join!(read_response(&mut rd), writer);
    let resp = resp?;
    let class = match &resp.body {
        Some(b) => classify(
            resp.status,
            resp.host,
            resp.mb_open,
            &String::from_utf8_lossy(b),
        ),
        None => Class::CutMidBody,
    };
    Some((class, resp))
}

/// One long-lived request of `kind` on its own connection to `addr`.
async fn long_lived(
    addr: String,
    id: u64,
    kind: Kind,
    hold: Duration,
    timeout: Duration,
) -> Record {
    let started = Instant::now();
    let mut rec = Record {
        t: now_ms(),
        lat_us: 0,
        class: Class::NoResponse,
        host: -1,
        att: 0,
        id,
        kind,
    };
    let outcome = tokio::time::timeout(timeout, async {
        let sock = TcpStream::connect(&addr).await.ok()?;
        let _ = sock.set_nodelay(true);
        match kind {
            Kind::Websocket => websocket(sock, id, hold).await,
            _ => slow_upload(sock, id, hold).await,
        }
    })
    .await;
    rec.lat_us = started.elapsed().as_micros() as u64;
    if let Ok(Some((class, resp))) = outcome {
        rec.class = class;
        rec.host = resp.host.unwrap_or(-1);
        rec.att = resp.att;
    }
    rec
}

/// Which requests are long-lived (`--long-*`).
#[derive(Clone, Copy)]
struct LongLived {
    share: f64,
    from: Duration,
    until: Duration,
    hold: Duration,
}

impl LongLived {
    /// The kind of the `i`-th request, sent `at` after the start.
    fn kind(&self, i: u64, at: Duration) -> Kind {
        if self.share <= 0.0 || at < self.from || at >= self.until {
            return Kind::Get;
        }
        let period = (1.0 / self.share).round().max(1.0) as u64;
        match (i % period == period / 2, (i / period) % 2) {
            (false, _) => Kind::Get,
            (true, 0) => Kind::Websocket,
            (true, _) => Kind::SlowUpload,
        }
    }
}

async fn drive(
    index: u64,
    addr: String,
    rate: f64,
    duration: Duration,
    clients: usize,
    timeout: Duration,
    long: LongLived,
) -> Vec<Record> {
    let pools: Vec<HttpClient> = (0..clients.max(1))
        .map(|_| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http()
        })
        .collect();
    let Ok(uri) = format!("http://{addr}/").parse::<hyper::Uri>() else {
        return Vec::new();
    };
    let n = (rate * duration.as_secs_f64()).round() as u64;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // Burst: after a stall (a busy machine), catch up, so every target gets exactly n requests
    // at the rate on average.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        ticker.tick().await;
        let id = (index + 1) * 100_000_000 + i;
        let at = Duration::from_secs_f64(i as f64 / rate);
        match long.kind(i, at) {
            Kind::Get => {
                let c = pools[(i as usize) % pools.len()].clone();
                tasks.push(tokio::spawn(one(c, uri.clone(), id, timeout)));
            }
            kind => tasks.push(tokio::spawn(long_lived(
                addr.clone(),
                id,
                kind,
                long.hold,
                timeout + long.hold,
            ))),
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

fn usage() -> String {
    "usage: steady-load --target NAME=ADDR [--target ...] --rate R --duration-ms D \
     [--clients K] [--timeout-ms T] [--long-share S --long-from-ms A --long-until-ms B \
     --long-hold-ms H] --out FILE"
        .into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let mut targets: Vec<(String, String)> = Vec::new();
    let (mut rate, mut duration_ms, mut clients, mut timeout_ms) =
        (200.0f64, 10_000u64, 16, 15_000);
    let mut out = None;
    let mut long = LongLived {
        share: 0.0,
        from: Duration::ZERO,
        until: Duration::MAX,
        hold: Duration::from_secs(3),
    };
    let ms = |v: &str| v.parse().map(Duration::from_millis).map_err(|_| usage());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(usage)?;
        match a.as_str() {
            "--target" => {
                let (n, addr) = v.split_once('=').ok_or_else(usage)?;
                targets.push((n.to_string(), addr.to_string()));
            }
            "--rate" => rate = v.parse().map_err(|_| usage())?,
            "--duration-ms" => duration_ms = v.parse().map_err(|_| usage())?,
            "--clients" => clients = v.parse().map_err(|_| usage())?,
            "--timeout-ms" => timeout_ms = v.parse().map_err(|_| usage())?,
            "--out" => out = Some(v),
            "--long-share" => long.share = v.parse().map_err(|_| usage())?,
            "--long-from-ms" => long.from = ms(&v)?,
            "--long-until-ms" => long.until = ms(&v)?,
            "--long-hold-ms" => long.hold = ms(&v)?,
            _ => return Err(usage()),
        }
    }
    let out = out.ok_or_else(usage)?;
    if targets.is_empty() || !rate.is_finite() || rate <= 0.0 {
        return Err(usage());
    }
    let started_ms = now_ms();
    let mut handles = Vec::new();
    for (i, (_, addr)) in targets.iter().enumerate() {
        handles.push(tokio::spawn(drive(
            i as u64,
            addr.clone(),
            rate,
            Duration::from_millis(duration_ms),
            clients,
            Duration::from_millis(timeout_ms),
            long,
        )));
    }
    let mut docs = Vec::new();
    for ((name, addr), h) in targets.iter().zip(handles) {
        let recs = h.await.map_err(|e| e.to_string())?;
        docs.push(json!({
            "name": name,
            "addr": addr,
            "t": recs.iter().map(|r| r.t).collect::<Vec<_>>(),
            "lat_us": recs.iter().map(|r| r.lat_us).collect::<Vec<_>>(),
            "class": recs.iter().map(|r| r.class as u8).collect::<Vec<_>>(),
            "host": recs.iter().map(|r| r.host).collect::<Vec<_>>(),
            "att": recs.iter().map(|r| r.att).collect::<Vec<_>>(),
            "id": recs.iter().map(|r| r.id).collect::<Vec<_>>(),
            "kind": recs.iter().map(|r| r.kind as u8).collect::<Vec<_>>(),
        }));
    }
    let doc =
        json!({ "started_ms": started_ms, "rate": rate, "clients": clients, "targets": docs });
    std::fs::write(&out, doc.to_string()).map_err(|e| format!("{out}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lived_requests_are_the_given_share_of_their_span_alternating_kinds() {
        let long = LongLived {
            share: 0.1,
            from: Duration::from_secs(1),
            until: Duration::from_secs(3),
            hold: Duration::from_secs(3),
        };
        let rate = 200.0;
        let kinds: Vec<Kind> = (0..1_000u64)
            .map(|i| long.kind(i, Duration::from_secs_f64(i as f64 / rate)))
            .collect();
        let count = |k: Kind, range: std::ops::Range<usize>| {
            kinds[range].iter().filter(|&&x| x == k).count()
        };
        // Nothing long before 1 s (request 200) nor from 3 s (request 600) on.
        assert_eq!(count(Kind::Get, 0..200), 200);
        assert_eq!(count(Kind::Get, 600..1_000), 400);
        // 10% of the 400 requests between, half websockets, half uploads.
        assert_eq!(count(Kind::Websocket, 200..600), 20);
        assert_eq!(count(Kind::SlowUpload, 200..600), 20);
    }
}
