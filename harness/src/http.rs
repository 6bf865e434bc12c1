//! A tiny blocking HTTP/1.1 client: admin calls, health checks, control endpoints.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Result;

/// One HTTP/1.1 GET to `127.0.0.1:port` (`Host` header `host`, default `localhost`), connection
/// closed after it: status and body (chunked bodies decoded).
pub fn http_get(port: u16, path: &str, host: Option<&str>) -> Result<(u16, String)> {
    http_request(port, "GET", path, host)
}

pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    host: Option<&str>,
) -> Result<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!(":{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    write!(
        w,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        host.unwrap_or("localhost")
    )
    .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let (status, body) = read_response(&mut r)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads one HTTP/1.1 response: status and body (content-length, chunked, or to EOF).
pub fn read_response(r: &mut impl BufRead) -> Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in headers".into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if k == "content-length" {
                length = v.parse().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line).map_err(|e| e.to_string())? == 0
                        || line.trim().is_empty()
                    {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| e.to_string())?;
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
    } else {
        r.read_to_end(&mut body).map_err(|e| e.to_string())?;
    }
    Ok((status, body))
}
