//! A deliberately small HTTP/1.1 server on tokio: three GET routes, one request
//! per connection (`Connection: close`). Pollers and probes need nothing more,
//! and it keeps hyper's dependency tree out of a privileged process.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::kernel::Kernel;
use crate::report;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Maps a request line to a response.
pub fn route(method: &str, path: &str, kernel: &Kernel, started_at_ms: u64) -> Response {
    match (method, path) {
        ("GET", "/healthz") => Response {
            status: 200,
            content_type: "text/plain",
            body: "ok\n".into(),
        },
        ("GET", "/v1/resets") => Response {
            status: 200,
            content_type: "application/json",
            body: report::json(&kernel.snapshot(started_at_ms)),
        },
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: report::prometheus(&kernel.snapshot(started_at_ms)),
        },
        _ => not_found(),
    }
}

fn not_found() -> Response {
    Response {
        status: 404,
        content_type: "text/plain",
        body: "not found\n".into(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// Serves until SIGTERM or SIGINT.
pub async fn serve(
    listener: TcpListener,
    kernel: Arc<Kernel>,
    started_at_ms: u64,
) -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let kernel = Arc::clone(&kernel);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(READ_TIMEOUT, handle(stream, &kernel, started_at_ms)).await;
                    });
                }
            }
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
        }
    }
}

async fn handle(mut stream: TcpStream, kernel: &Kernel, started_at_ms: u64) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let response = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            let text = String::from_utf8_lossy(&head);
            let mut parts = text.lines().next().unwrap_or_default().split_whitespace();
            break match (parts.next(), parts.next()) {
                (Some(method), Some(target)) => {
                    let path = target.split('?').next().unwrap_or_default();
                    route(method, path, kernel, started_at_ms)
                }
                _ => Response {
                    status: 400,
                    content_type: "text/plain",
                    body: "bad request\n".into(),
                },
            };
        }
        if head.len() > MAX_HEAD {
            break Response {
                status: 431,
                content_type: "text/plain",
                body: "request too large\n".into(),
            };
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.shutdown().await
}
