//! The demo's upstream: a small HTTP/1.1 server whose fault is switched at run time.
//!
//! Why hand-written rather than hyper: the `resets` fault must answer a request that Envoy has
//! already sent with a TCP RST (SO_LINGER 0, then close), which a full HTTP server library does
//! not let a handler do. Everything else is plain keep-alive HTTP/1.1.
//!
//! Control: `PUT /_demo/mode/<healthy|errors|slow|resets>` switches the fault (the driver talks to
//! the upstream directly, never through Envoy); `GET /_demo/stats` returns how many requests the
//! upstream received per fault, so the driver can tell how many reached it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The faults, in the order of [`Mode::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// Every second request answers 503.
    Errors,
    /// Every request waits [`SLOW`] before answering 200.
    Slow,
    /// Every request is answered with a TCP RST.
    Resets,
}

/// The slow fault's delay: over the demo's 200 ms P95 threshold.
pub const SLOW: Duration = Duration::from_millis(300);

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Healthy, Mode::Errors, Mode::Slow, Mode::Resets];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Errors => "errors",
            Mode::Slow => "slow",
            Mode::Resets => "resets",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    fn index(self) -> usize {
        Mode::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

struct State {
    mode: AtomicU8,
    served: [AtomicU64; 4],
    seq: AtomicU64,
}

pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "meshbreaker-demo upstream: listening on {}",
        listener.local_addr()?
    );
    let state = Arc::new(State {
        mode: AtomicU8::new(0),
        served: Default::default(),
        seq: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = connection(stream, state).await;
        });
    }
}

async fn connection(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // One request head (and its body, if it announces one).
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let body_len = content_length(&head);
        while buf.len() < head_end + body_len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_end + body_len);
        let mut parts = head.split_whitespace();
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("/");
        let lower = head.to_ascii_lowercase();
        let close = parts.next() == Some("HTTP/1.0") || lower.contains("\r\nconnection: close");
        let reply = answer(&state, method, path).await;
        match reply {
            Some(r) => stream.write_all(r.as_bytes()).await?,
            None => {
                // SO_LINGER 0: close() sends RST instead of FIN, with the request unanswered.
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return Ok(());
            }
        }
        if close {
            return Ok(());
        }
    }
}

/// The response to one request, or None for "reset the connection".
async fn answer(state: &State, method: &str, path: &str) -> Option<String> {
    if let Some(name) = path.strip_prefix("/_demo/mode/") {
        return Some(match (method, Mode::parse(name)) {
            ("PUT", Some(m)) => {
                state.mode.store(m.index() as u8, Ordering::SeqCst);
                eprintln!("meshbreaker-demo upstream: fault = {}", m.name());
                response(200, "OK", m.name())
            }
            _ => response(
                400,
                "Bad Request",
                "PUT /_demo/mode/<healthy|errors|slow|resets>",
            ),
        });
    }
    if path == "/_demo/stats" {
        let counts: Vec<String> = Mode::ALL
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "\"{}\":{}",
                    m.name(),
                    state.served[i].load(Ordering::SeqCst)
                )
            })
            .collect();
        return Some(response(200, "OK", &format!("{{{}}}", counts.join(","))));
    }
    let mode = Mode::ALL[usize::from(state.mode.load(Ordering::SeqCst)).min(3)];
    state.served[mode.index()].fetch_add(1, Ordering::SeqCst);
    match mode {
        Mode::Healthy => Some(response(200, "OK", "ok")),
        Mode::Errors => {
            let n = state.seq.fetch_add(1, Ordering::SeqCst);
            Some(if n.is_multiple_of(2) {
                response(503, "Service Unavailable", "injected failure")
            } else {
                response(200, "OK", "ok")
            })
        }
        Mode::Slow => {
            tokio::time::sleep(SLOW).await;
            Some(response(200, "OK", "slow"))
        }
        Mode::Resets => None,
    }
}

fn response(code: u16, reason: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn start() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(serve(addr));
        });
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return addr;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("upstream did not start");
    }

    fn exchange(addr: SocketAddr, req: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    const GET: &str = "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    #[test]
    fn upstream_switches_faults_and_resets_with_rst() {
        let addr = start();
        assert!(exchange(addr, GET).unwrap().starts_with("HTTP/1.1 200"));

        let put = "PUT /_demo/mode/errors HTTP/1.1\r\nconnection: close\r\n\r\n";
        assert!(exchange(addr, put).unwrap().starts_with("HTTP/1.1 200"));
        let codes: Vec<String> = (0..4)
            .map(|_| exchange(addr, GET).unwrap()[9..12].to_owned())
            .collect();
        assert_eq!(codes.iter().filter(|c| *c == "503").count(), 2, "{codes:?}");

        let put = "PUT /_demo/mode/resets HTTP/1.1\r\nconnection: close\r\n\r\n";
        assert!(exchange(addr, put).unwrap().starts_with("HTTP/1.1 200"));
        let err = exchange(addr, GET).expect_err("a reset, not a response");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");

        let stats = exchange(
            addr,
            "GET /_demo/stats HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .unwrap();
        assert!(
            stats.ends_with("{\"healthy\":1,\"errors\":4,\"slow\":0,\"resets\":1}"),
            "{stats}"
        );
    }

    #[test]
    fn upstream_rejects_unknown_faults() {
        let addr = start();
        let put = "PUT /_demo/mode/flaky HTTP/1.1\r\nconnection: close\r\n\r\n";
        assert!(exchange(addr, put).unwrap().starts_with("HTTP/1.1 400"));
    }
}
