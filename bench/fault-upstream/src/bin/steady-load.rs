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
//! [--clients K] [--timeout-ms T] --out FILE`. Each target gets R requests per second,
//! `GET /` with a unique `x-req-id`, spread over K clients with their own connection pools (so at
//! least K connections per target). The output is one JSON document: per target, arrays `t`
//! (wall-clock ms sent), `lat_us`, `class` (see `Class`), `host` (the `x-fault-host` that
//! answered, -1 for none), `att` (`x-envoy-attempt-count`, 0 when absent), `id`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

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

struct Record {
    t: u64,
    lat_us: u64,
    class: Class,
    host: i64,
    att: u64,
    id: u64,
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
    let text = String::from_utf8_lossy(&body);
    rec.class = if mb_open {
        Class::MeshbreakerOpen
    } else if (200..300).contains(&status) {
        Class::Ok
    } else if status >= 500 && host.is_some() {
        Class::Upstream5xx
    } else if status >= 500 && text.contains("no healthy upstream") {
        Class::NoHealthyUpstream
    } else if status >= 500
        && (text.contains("upstream connect error")
            || text.contains("reset")
            || text.contains("upstream request timeout"))
    {
        Class::ProxyError
    } else if status == 503 {
        Class::Shed
    } else {
        Class::Other
    };
    rec
}

async fn drive(
    index: u64,
    addr: String,
    rate: f64,
    duration: Duration,
    clients: usize,
    timeout: Duration,
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
        let c = pools[(i as usize) % pools.len()].clone();
        let id = (index + 1) * 100_000_000 + i;
        tasks.push(tokio::spawn(one(c, uri.clone(), id, timeout)));
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
     [--clients K] [--timeout-ms T] --out FILE"
        .into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let mut targets: Vec<(String, String)> = Vec::new();
    let (mut rate, mut duration_ms, mut clients, mut timeout_ms) =
        (200.0f64, 10_000u64, 16, 15_000);
    let mut out = None;
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
        }));
    }
    let doc =
        json!({ "started_ms": started_ms, "rate": rate, "clients": clients, "targets": docs });
    std::fs::write(&out, doc.to_string()).map_err(|e| format!("{out}: {e}"))?;
    Ok(())
}
