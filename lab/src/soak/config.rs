//! The plugin configurations (the start and two reloads), the listener served by LDS and the bootstrap.

use crate::util::Result;
use meshbreaker_harness::bootstrap;
use serde_json::{json, Value};
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use super::schedule::*;

/// The plugin configuration; `variant` 0 is the start, 1 and 2 the two reloads: the first
/// changes a threshold (state kept), the second the window geometry (windows start afresh).
pub(super) fn plugin_config(variant: usize, sidecar_cluster: &str) -> Value {
    let (threshold, window) = match variant {
        0 => (0.5, "5s"),
        1 => (0.4, "5s"),
        _ => (0.4, "6s"),
    };
    json!({
        "key_by": "cluster",
        "mode": "enforce",
        "breaker": {
            "window": window,
            "buckets": 5,
            "min_requests": 20,
            "error_rate_threshold": threshold,
            "latency_p95_threshold": "250ms",
            "sleep_window": "1s",
            "max_sleep_window": "8s",
            "half_open_max_probes": 3,
            "half_open_successes_to_close": 3
        },
        "reset_signals": {
            "cluster": sidecar_cluster,
            "path": "/v1/resets",
            "poll_interval": "500ms",
            "max_resets_per_second": 5
        }
    })
}

/// Envoy's access log line: enough to explain every response.
pub(super) const ACCESS_LOG_FORMAT: &str =
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESP(X-MESHBREAKER)% %RESP(X-MESHBREAKER-REASON)% %UPSTREAM_HOST%\n";

/// The listener, as LDS serves it from a file.
pub(super) fn listener(port: u16, wasm: &Path, plugin: &Value, access_log: &Path) -> Value {
    let hcm = json!({
        "@type": bootstrap::HCM_TYPE,
        "stat_prefix": "soak",
        "codec_type": "AUTO",
        "use_remote_address": true,
        "access_log": [bootstrap::file_access_log(access_log, ACCESS_LOG_FORMAT)],
        "route_config": {
            "name": "soak",
            "virtual_hosts": [{
                "name": "soak",
                "domains": ["*"],
                "include_request_attempt_count": true,
                "include_attempt_count_in_response": true,
                "routes": [bootstrap::route(
                    "http",
                    vec![],
                    KEY,
                    "5s",
                    bootstrap::retry_policy("0.025s", Some("0.25s"))
                )]
            }]
        },
        "http_filters": [
            bootstrap::wasm_filter_json("meshbreaker", wasm, &plugin.to_string()),
            bootstrap::router()
        ]
    });
    let mut l = bootstrap::listener("soak", port, hcm);
    l["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    l
}

pub(super) fn bootstrap(lds: &Path, upstream: SocketAddr, sidecar: SocketAddr) -> Value {
    json!({
        "node": {"id": "meshbreaker-soak", "cluster": "meshbreaker"},
        "admin": bootstrap::admin(0),
        "stats_config": bootstrap::stats_config(),
        "dynamic_resources": {
            "lds_config": {"path_config_source": {"path": lds.display().to_string()}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [
            bootstrap::static_cluster(KEY, &[upstream], "1s"),
            bootstrap::static_cluster("meshbreaker_sidecar", &[sidecar], "0.25s")
        ]}
    })
}

/// Writes the LDS file the way a control plane must: a new file renamed over the old one, so
/// Envoy's inotify watch sees one complete update.
pub(super) fn write_lds(path: &Path, listener: &Value) -> Result {
    let tmp = path.with_extension("tmp");
    let doc = json!({"version_info": format!("{}", now_ms()), "resources": [listener]});
    fs::write(&tmp, doc.to_string()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

pub(super) fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

pub(super) fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
