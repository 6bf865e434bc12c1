//! `fault-upstream`: the HTTP/1.1 upstream of the protection benchmark (`cargo xtask bench
//! --protection`), with hosts that fail for real when told to, and that count every request they
//! receive.
//!
//! Why a hand-written HTTP/1.1 server and not hyper: the faults must be the real thing at the
//! socket, and a framework hides the socket. "down" drops the listener and every open
//! connection, so the port answers a SYN with RST (connection refused); "reset" writes the status
//! line, the headers and part of the body, then closes with `SO_LINGER 0`, so the kernel sends an
//! RST in the middle of the response; "error" answers real 503s for a given fraction of the
//! requests (at random, but decided by the client's request number and Envoy's attempt number,
//! `x-req-id` and `x-envoy-attempt-count`: runs of errors occur as with a real flaky host, every
//! run gets the same sequence, and every system's bad host gives the same answer to the same
//! request, so systems that treat it alike see the same errors); "delay" holds every answer back,
//! so latency rises with no error at all. "ok" heals any of them (re-binding the same port after
//! "down").
//!
//! A websocket upgrade (`Upgrade: websocket`) that the fault lets through is answered `101` and
//! the connection is kept as a tunnel that echoes what the client sends, until the client closes
//! it or the `x-hold-ms` the client asked for has passed (then the host closes it). Request bodies
//! are read to their end however slowly they come: the long-lived-stream scenario's slow uploads.
//!
//! Each host records, per request, the wall-clock millisecond it arrived, what it answered and
//! the client's `x-req-id`, so the benchmark knows which upstream got which request from the
//! upstream's own point of view, not from the proxy's.
//!
//! Usage: `fault-upstream --hosts N [--control 127.0.0.1:0]`. It prints one JSON line,
//! `{"control":PORT,"hosts":[PORT,...]}`, and serves until its standard input closes (so it never
//! outlives the process that started it). Control API (HTTP/1.1 on the control port):
//!
//! - `POST /fault?hosts=0,3&mode=ok|down|error|delay|reset&value=V` — `value`: the failing
//!   fraction for `error` (default 1), the milliseconds for `delay` (default 1000). Answers
//!   `{"at_ms":…}`, the wall-clock millisecond the fault took effect on all the named hosts.
//! - `GET /counts` — `{"hosts":[{"index":0,"port":…,"t":[ms…],"o":[outcome…],"id":[req id…]}]}`;
//!   outcome 0 = answered 200, 1 = answered 503, 2 = answered 200 after the delay, 3 = reset,
//!   4 = upgraded (101, held as a websocket).
//! - `GET /healthz` — 200.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Body bytes a "reset" answer announces; it sends only `RESET_SENT` of them, then the RST.
const RESET_ANNOUNCED: usize = 4096;
const RESET_SENT: usize = 512;
/// Largest request head accepted; a larger one closes the connection.
const MAX_HEAD: usize = 64 * 1024;
/// The longest a websocket is held when its client asks for no `x-hold-ms` and never closes.
const MAX_HOLD: Duration = Duration::from_secs(120);
/// Client request numbers are `x-req-id` modulo this (`steady-load` numbers each target's
/// requests from `(target + 1) × 10⁸`): the n-th request to every target is the same request.
const REQ_ID_SPACE: u64 = 100_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Ok,
    Down,
    /// Answer 503 for `ratio` of the requests, at random (seeded: the same on every run).
    Error {
        ratio: f64,
    },
    Delay {
        ms: u64,
    },
    Reset,
}

#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Error,
    Delayed(u64),
    Reset,
}

impl Answer {
    fn code(self, upgrade: bool) -> u8 {
        match self {
            Answer::Ok | Answer::Delayed(_) if upgrade => 4,
            Answer::Ok => 0,
            Answer::Error => 1,
            Answer::Delayed(_) => 2,
            Answer::Reset => 3,
        }
    }
}

/// A uniform number in [0, 1) from `x` (splitmix64's finaliser): the same `x`, the same number.
fn unit(x: u64) -> f64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What the host knows of a request when it decides its answer.
#[derive(Clone, Copy, Debug, Default)]
struct Incoming {
    /// `x-req-id` (0: none).
    id: u64,
    /// `x-envoy-attempt-count` (0: none).
    attempt: u64,
    upgrade: bool,
}

#[derive(Default)]
struct Log {
    t: Vec<u64>,
    outcome: Vec<u8>,
    id: Vec<u64>,
}

struct Running {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

struct Host {
    index: usize,
    port: u16,
    /// The fault and the error mode's random state.
    state: Mutex<(Fault, u64)>,
    log: Mutex<Log>,
    running: Mutex<Option<Running>>,
}

/// A poisoned lock only means another task panicked while holding it; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Host {
    /// Decides this request's answer and records its arrival.
    fn admit(&self, req: Incoming) -> Answer {
        let answer = {
            let mut st = lock(&self.state);
            match st.0 {
                Fault::Ok | Fault::Down => Answer::Ok,
                Fault::Delay { ms } => Answer::Delayed(ms),
                Fault::Reset => Answer::Reset,
                Fault::Error { ratio } => {
                    // Random like a real flaky host (runs of errors happen, so consecutive-error
                    // detectors get a fair chance), yet a function of the request and attempt
                    // numbers: the same answers on every run and on every system's host.
                    let u = if req.id != 0 {
                        unit(((req.id % REQ_ID_SPACE) << 4) | req.attempt.min(15))
                    } else {
                        // No request number: xorshift64*, seeded per host.
                        let mut x = st.1;
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        st.1 = x;
                        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
                    };
                    if u < ratio {
                        Answer::Error
                    } else {
                        Answer::Ok
                    }
                }
            }
        };
        let mut log = lock(&self.log);
        log.t.push(now_ms());
        log.outcome.push(answer.code(req.upgrade));
        log.id.push(req.id);
        answer
    }

    async fn start_listening(self: &Arc<Self>, listener: TcpListener) {
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let host = self.clone();
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let h = host.clone();
                let task = tokio::spawn(async move { serve_conn(h, sock).await });
                let mut c = lock(&tracked);
                c.retain(|t| !t.is_finished());
                c.push(task.abort_handle());
            }
        });
        *lock(&self.running) = Some(Running { accept, conns });
    }

    /// Closes the port and every connection: the next SYN is answered with RST.
    fn go_down(&self) {
        if let Some(r) = lock(&self.running).take() {
            r.accept.abort();
            for c in lock(&r.conns).drain(..) {
                c.abort();
            }
        }
    }

    async fn go_up(self: &Arc<Self>) -> Result<(), String> {
        if lock(&self.running).is_some() {
            return Ok(());
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut last = String::new();
        // The aborted accept task drops its listener asynchronously: retry the bind briefly.
        for _ in 0..100 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    self.start_listening(l).await;
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("cannot bind {addr} again: {last}"))
    }

    async fn set(self: &Arc<Self>, fault: Fault) -> Result<(), String> {
        lock(&self.state).0 = fault;
        if fault == Fault::Down {
            self.go_down();
            Ok(())
        } else {
            self.go_up().await
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (lowercase) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one request head (and its body, discarded) from `buf` + `sock`.
/// Returns the head, or None when the connection ended or sent garbage.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let body: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < end + body {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..end + body);
    Some(head)
}

/// Holds an upgraded connection as a websocket would stay open: echoes what arrives (`early`
/// first: bytes that came with the request head) until the client closes or `hold` has passed.
async fn hold_upgraded(sock: &mut TcpStream, early: &[u8], hold: Duration) {
    if !early.is_empty() && sock.write_all(early).await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + hold;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                if sock.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
            // The client closed, an error, or the hold is over: close our side.
            _ => {
                let _ = sock.shutdown().await;
                return;
            }
        }
    }
}

async fn serve_conn(host: Arc<Host>, mut sock: TcpStream) {
    let mut buf = Vec::with_capacity(4096);
    while let Some(head) = read_request(&mut sock, &mut buf).await {
        let number = |name: &str| {
            header(&head, name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let req = Incoming {
            id: number("x-req-id"),
            attempt: number("x-envoy-attempt-count"),
            upgrade: header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        };
        let close = header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let answer = host.admit(req);
        let i = host.index;
        if req.upgrade {
            if let Answer::Ok | Answer::Delayed(_) = answer {
                if let Answer::Delayed(ms) = answer {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let reply = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nx-fault-host: {i}\r\n\r\n"
                );
                if sock.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let hold = match number("x-hold-ms") {
                    0 => MAX_HOLD,
                    ms => Duration::from_millis(ms).min(MAX_HOLD),
                };
                hold_upgraded(&mut sock, &std::mem::take(&mut buf), hold).await;
                return;
            }
        }
        let reply = match answer {
            Answer::Ok => format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-fault-host: {i}\r\n\r\nok"
            ),
            Answer::Delayed(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-fault-host: {i}\r\n\r\nok")
            }
            Answer::Error => format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\nx-fault-host: {i}\r\n\r\nfault"
            ),
            Answer::Reset => {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {RESET_ANNOUNCED}\r\nx-fault-host: {i}\r\n\r\n"
                )
                .into_bytes();
                r.resize(r.len() + RESET_SENT, b'x');
                let _ = sock.write_all(&r).await;
                // Let the proxy read the head first, so the RST lands mid-response.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let _ = sock.set_zero_linger();
                return;
            }
        };
        if sock.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

fn query<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

fn parse_fault(target: &str) -> Result<Fault, String> {
    let value = query(target, "value").map(|v| v.parse::<f64>());
    let value = match value {
        Some(Ok(v)) if v.is_finite() && v >= 0.0 => Some(v),
        Some(_) => return Err("value must be a non-negative number".into()),
        None => None,
    };
    match query(target, "mode") {
        Some("ok") => Ok(Fault::Ok),
        Some("down") => Ok(Fault::Down),
        Some("reset") => Ok(Fault::Reset),
        Some("error") => Ok(Fault::Error {
            ratio: value.unwrap_or(1.0).min(1.0),
        }),
        Some("delay") => Ok(Fault::Delay {
            ms: value.unwrap_or(1000.0) as u64,
        }),
        other => Err(format!("unknown mode {other:?}")),
    }
}

async fn control(hosts: &[Arc<Host>], method: &str, target: &str) -> (u16, Value) {
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/healthz") => (200, json!({"ok": true})),
        ("GET", "/counts") => {
            let list: Vec<Value> = hosts
                .iter()
                .map(|h| {
                    let log = lock(&h.log);
                    json!({"index": h.index, "port": h.port, "t": log.t, "o": log.outcome, "id": log.id})
                })
                .collect();
            (200, json!({ "hosts": list }))
        }
        ("POST", "/fault") => {
            let fault = match parse_fault(target) {
                Ok(f) => f,
                Err(e) => return (400, json!({ "error": e })),
            };
            let mut chosen = Vec::new();
            for s in query(target, "hosts").unwrap_or("").split(',') {
                match s.parse::<usize>().ok().and_then(|i| hosts.get(i)) {
                    Some(h) => chosen.push(h.clone()),
                    None => return (400, json!({ "error": format!("no host {s:?}") })),
                }
            }
            let at = now_ms();
            for h in &chosen {
                if let Err(e) = h.set(fault).await {
                    return (500, json!({ "error": e }));
                }
            }
            eprintln!(
                "fault-upstream: hosts {:?} -> {fault:?}",
                query(target, "hosts")
            );
            (200, json!({ "at_ms": at }))
        }
        _ => (404, json!({ "error": "not found" })),
    }
}

async fn serve_control(hosts: Arc<Vec<Arc<Host>>>, mut sock: TcpStream) {
    let mut buf = Vec::new();
    // One request per connection: callers read the answer to the end.
    if let Some(head) = read_request(&mut sock, &mut buf).await {
        let mut first = head.lines().next().unwrap_or("").split_whitespace();
        let method = first.next().unwrap_or("");
        let target = first.next().unwrap_or("");
        let (status, body) = control(&hosts, method, target).await;
        let body = body.to_string();
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(reply.as_bytes()).await;
    }
}

fn usage() -> String {
    "usage: fault-upstream --hosts N [--control ADDR]".into()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let mut n_hosts = 1usize;
    let mut control_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hosts" => n_hosts = args.next().and_then(|v| v.parse().ok()).ok_or_else(usage)?,
            "--control" => {
                control_addr = args.next().and_then(|v| v.parse().ok()).ok_or_else(usage)?
            }
            _ => return Err(usage()),
        }
    }
    let mut hosts = Vec::new();
    for index in 0..n_hosts {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let h = Arc::new(Host {
            index,
            port,
            state: Mutex::new((Fault::Ok, 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1))),
            log: Mutex::default(),
            running: Mutex::new(None),
        });
        h.start_listening(l).await;
        hosts.push(h);
    }
    let ctl = TcpListener::bind(control_addr)
        .await
        .map_err(|e| e.to_string())?;
    let ctl_port = ctl.local_addr().map_err(|e| e.to_string())?.port();
    let ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", json!({"control": ctl_port, "hosts": ports}));
        let _ = out.flush();
    }
    let hosts = Arc::new(hosts);
    tokio::spawn(async move {
        loop {
            if let Ok((sock, _)) = ctl.accept().await {
                tokio::spawn(serve_control(hosts.clone(), sock));
            }
        }
    });
    // Serve until the parent closes our stdin (or dies).
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(index: usize, fault: Fault) -> Host {
        Host {
            index,
            port: 0,
            state: Mutex::new((fault, 0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1))),
            log: Mutex::default(),
            running: Mutex::new(None),
        }
    }

    #[test]
    fn every_systems_bad_host_answers_the_same_request_and_attempt_alike() {
        let fault = Fault::Error { ratio: 0.5 };
        let (a, b) = (host(0, fault), host(7, fault));
        let mut errors = 0;
        for n in 0..2_000u64 {
            for attempt in 1..=3 {
                // The n-th request of two different targets (steady-load's numbering).
                let ra = Incoming {
                    id: 100_000_000 + n,
                    attempt,
                    upgrade: false,
                };
                let rb = Incoming {
                    id: 800_000_000 + n,
                    ..ra
                };
                let (x, y) = (a.admit(ra), b.admit(rb));
                assert_eq!(
                    x.code(false),
                    y.code(false),
                    "request {n} attempt {attempt}"
                );
                errors += matches!(x, Answer::Error) as usize;
            }
        }
        // Half of 6000 answers, give or take a few standard deviations (±39).
        assert!((2_850..=3_150).contains(&errors), "{errors} errors of 6000");
    }

    #[test]
    fn an_upgrade_that_the_fault_lets_through_is_logged_as_upgraded() {
        let h = host(0, Fault::Ok);
        let up = Incoming {
            id: 1,
            attempt: 1,
            upgrade: true,
        };
        assert!(matches!(h.admit(up), Answer::Ok));
        assert_eq!(lock(&h.log).outcome, vec![4]);
    }
}
