//! Long exchanges a client holds open on a healthy upstream, written on a raw TCP connection so
//! the test controls every byte and its timing: a websocket upgrade held for a while, and a
//! request whose body is uploaded slowly. Neither says anything about the upstream's speed; they
//! are what must not look like a slow upstream to the breaker.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a long exchange ended, as the client saw it.
#[derive(Debug, Clone)]
pub struct Held {
    /// The response status (101 for an accepted upgrade).
    pub status: u16,
    /// The response headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// From the first byte sent to the end of the exchange.
    pub took: Duration,
}

impl Held {
    /// First value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

fn request_head(method: &str, path: &str, headers: &[(&str, &str)], extra: &[&str]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: meshbreaker.test\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Reads a response head (status line and headers) within `deadline`; returns it and the bytes
/// read after it.
async fn read_head(
    s: &mut TcpStream,
    deadline: Duration,
) -> Result<(u16, Vec<(String, String)>, Vec<u8>), String> {
    let mut buf = Vec::new();
    let end = Instant::now() + deadline;
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            let rest = buf[i + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("no status line in {head:?}"))?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok((status, headers, rest));
        }
        let left = end.saturating_duration_since(Instant::now());
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .map_err(|_| format!("no response head within {deadline:?}"))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a response head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the rest of a response body framed by `content-length` (none: nothing to read).
async fn read_body(
    s: &mut TcpStream,
    headers: &[(String, String)],
    mut have: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while have.len() < len {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| "body not complete within 10s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed inside the body".into());
        }
        have.extend_from_slice(&chunk[..n]);
    }
    Ok(have)
}

/// Opens a websocket through Envoy (`GET path` with `upgrade: websocket`), and once upgraded
/// keeps the tunnel busy for `hold`: a message every 250 ms, each echoed back by the upstream.
/// Then the client closes its side and waits for the tunnel to close. A refused upgrade returns
/// its status without holding anything.
pub async fn websocket_hold(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    hold: Duration,
) -> Result<Held, String> {
    let t0 = Instant::now();
    let mut s = connect(port).await?;
    let head = request_head(
        "GET",
        path,
        headers,
        &[
            "connection: upgrade",
            "upgrade: websocket",
            "sec-websocket-version: 13",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let (status, hdrs, mut echoed) = read_head(&mut s, Duration::from_secs(10)).await?;
    if status != 101 {
        let _ = read_body(&mut s, &hdrs, echoed).await;
        return Ok(Held {
            status,
            headers: hdrs,
            took: t0.elapsed(),
        });
    }
    // The tunnel carries bytes, which Envoy does not parse as websocket frames: the test's
    // messages need not be framed.
    let mut sent = 0usize;
    let mut n = 0u32;
    while t0.elapsed() < hold {
        let msg = format!("ping {n}\n");
        n += 1;
        s.write_all(msg.as_bytes())
            .await
            .map_err(|e| format!("tunnel write: {e}"))?;
        sent += msg.len();
        // Wait for the echo, so the tunnel is seen to work end to end.
        while echoed.len() < sent {
            let mut chunk = [0u8; 1024];
            let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .map_err(|_| "no echo within 5s".to_string())?
                .map_err(|e| format!("tunnel read: {e}"))?;
            if got == 0 {
                return Err(format!(
                    "tunnel closed after {:?}, {} of {} bytes echoed",
                    t0.elapsed(),
                    echoed.len(),
                    sent
                ));
            }
            echoed.extend_from_slice(&chunk[..got]);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    // The upstream closes its side when it sees ours closed; Envoy then ends the stream.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    Ok(Held {
        status,
        headers: hdrs,
        took: t0.elapsed(),
    })
}

/// `POST path` whose body (`chunks` chunks of 100 bytes, chunked transfer encoding) is sent one
/// chunk every `every`: an upload that lasts about `chunks × every`. Returns once the response
/// has been read.
pub async fn slow_upload(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    chunks: u32,
    every: Duration,
) -> Result<Held, String> {
    let t0 = Instant::now();
    let mut s = connect(port).await?;
    let head = request_head(
        "POST",
        path,
        headers,
        &["transfer-encoding: chunked", "content-type: text/plain"],
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let data = [b'x'; 100];
    for _ in 0..chunks {
        tokio::time::sleep(every).await;
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        s.write_all(&chunk)
            .await
            .map_err(|e| format!("body write after {:?}: {e}", t0.elapsed()))?;
    }
    s.write_all(b"0\r\n\r\n")
        .await
        .map_err(|e| format!("body end: {e}"))?;
    let (status, hdrs, rest) = read_head(&mut s, Duration::from_secs(10)).await?;
    read_body(&mut s, &hdrs, rest).await?;
    Ok(Held {
        status,
        headers: hdrs,
        took: t0.elapsed(),
    })
}
