//! The test client: HTTP/1.1 or HTTP/2 cleartext (prior knowledge) to the Envoy listener.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpResponse {
    /// A header value as a string ("" if absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// A pooled client towards one `host:port`.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// HTTP/1.1 client.
    pub fn http1(port: u16) -> Self {
        Self::build(port, false)
    }

    /// HTTP/2 prior-knowledge (h2c) client.
    pub fn h2c(port: u16) -> Self {
        Self::build(port, true)
    }

    fn build(port: u16, h2: bool) -> Self {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(30));
        if h2 {
            b.http2_only(true);
        }
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: b.build_http(),
        }
    }

    /// GET `path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.request("GET", path, headers, "").await
    }

    /// Sends one request; panics only on transport errors (the test then shows why).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpResponse {
        match self.try_request(method, path, headers, body).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}: transport error: {e}"),
        }
    }

    /// Sends one request; transport errors are returned.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<HttpResponse, String> {
        let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.try_request_bytes(method, path, &raw, body).await
    }

    /// Sends one request whose header values are bytes (obs-text 0x80–0xFF is legal HTTP);
    /// panics on transport errors.
    pub async fn request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> HttpResponse {
        match self.try_request_bytes(method, path, headers, "").await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}: transport error: {e}"),
        }
    }

    /// [`HttpClient::try_request`] with byte header values.
    pub async fn try_request_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &str,
    ) -> Result<HttpResponse, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_bytes(v).map_err(|e| e.to_string())?;
            if name == hyper::header::HOST {
                req.headers_mut().insert(name, value);
            } else {
                req.headers_mut().append(name, value);
            }
        }
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .map_err(|_| "timed out after 20s".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}
