//! The pieces every generated Envoy bootstrap is made of, once: the shipped route shape (retry
//! backoff and the `previous_hosts` predicate, no `retry_on`), meshbreaker's two shells as HTTP
//! filters, the router, a file access log, static clusters, the connection manager and the stats
//! tags that turn meshbreaker's metric names into labels.
//!
//! Why pieces and not one builder: the tests, the soak, the protection benchmark and the demo
//! each need a different whole (one cluster per test, one listener per system, LDS from a file),
//! but what a route, a filter or a cluster looks like must be the same everywhere, and the same as
//! `envoy-config/envoy.yaml`. Each piece is a `serde_json::Value`; a whole bootstrap is written as
//! JSON, which is YAML, so Envoy's `-c` reads it as it is. The bootstraps built from these
//! pieces are held to `snapshots/bootstraps/` ([`crate::snapshot`]).

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};

/// The `previous_hosts` retry host predicate (a retry goes to another host when there is one).
pub fn previous_hosts() -> Value {
    json!([{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        }
    }])
}

/// The shipped route's retry policy: backoff from `base` (up to `max`, Envoy's default of 10×
/// `base` when `None`), `previous_hosts` with 3 host selection attempts, and no `retry_on` (the
/// filter's headers decide).
pub fn retry_policy(base: &str, max: Option<&str>) -> Value {
    let mut backoff = json!({ "base_interval": base });
    if let Some(max) = max {
        backoff["max_interval"] = json!(max);
    }
    json!({
        "retry_back_off": backoff,
        "retry_host_predicate": previous_hosts(),
        "host_selection_retry_max_attempts": 3
    })
}

/// A route named `name` on prefix `/` (with header matchers when given) to `cluster`, with
/// `timeout` and `retry_policy`.
pub fn route(name: &str, headers: Vec<Value>, cluster: &str, timeout: &str, retry: Value) -> Value {
    let mut m = json!({ "prefix": "/" });
    if !headers.is_empty() {
        m["headers"] = Value::Array(headers);
    }
    json!({
        "name": name,
        "match": m,
        "route": { "cluster": cluster, "timeout": timeout, "retry_policy": retry }
    })
}

/// The meshbreaker proxy-wasm HTTP filter: its own VM `vm_id`, V8, the module at `wasm`, the
/// plugin configuration as Envoy's `StringValue`.
pub fn wasm_filter_json(vm_id: &str, wasm: &Path, configuration: &str) -> Value {
    wasm_filter_with_root(vm_id, "meshbreaker", wasm, configuration)
}

/// A proxy-wasm HTTP filter whose root context is `root_id` (also its name): meshbreaker's is
/// `meshbreaker`, the benchmark's trivial filter's `noop`.
pub fn wasm_filter_with_root(
    vm_id: &str,
    root_id: &str,
    wasm: &Path,
    configuration: &str,
) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": root_id,
                "root_id": root_id,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm.display().to_string() } }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration
                }
            }
        }
    })
}

/// The meshbreaker dynamic module's HTTP filter, loaded from `module` and never unloaded, as
/// `envoy-config/native.yaml` loads it, with `filter_config` as its `StringValue`.
pub fn native_module_filter(module: &Path, filter_config: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {
                "module": { "local": { "filename": module.display().to_string() } },
                "do_not_close": true
            },
            "filter_name": "meshbreaker",
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": filter_config
            }
        }
    })
}

/// The router, last in every filter chain.
pub fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    })
}

/// A file access log entry (for `access_log` or the router's `upstream_log`) writing `format`
/// lines to `path`.
pub fn file_access_log(path: &Path, format: &str) -> Value {
    json!({
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": { "text_format_source": { "inline_string": format } }
        }
    })
}

/// A static cluster `name` over `hosts`, with `connect_timeout`.
pub fn static_cluster(name: &str, hosts: &[SocketAddr], connect_timeout: &str) -> Value {
    let endpoints: Vec<Value> = hosts
        .iter()
        .map(|a| {
            json!({ "endpoint": { "address": { "socket_address": {
                "address": a.ip().to_string(), "port_value": a.port() } } } })
        })
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": endpoints }] }
    })
}

/// Makes `cluster` speak HTTP/2 (h2c) upstream.
pub fn with_http2(mut cluster: Value) -> Value {
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    cluster
}

/// The stats tags that turn meshbreaker's `key`, `decision` and `to` name segments into labels
/// (as `envoy-config/envoy.yaml` has them).
pub fn stats_config() -> Value {
    json!({ "stats_tags": [
        { "tag_name": "key", "regex": "(key=\\.=(.*?);\\.;)" },
        { "tag_name": "decision", "regex": "(decision=\\.=(.*?);\\.;)" },
        { "tag_name": "to", "regex": "(to=\\.=(.*?);\\.;)" }
    ]})
}

/// An admin listener on loopback (`port` 0: Envoy picks, read back through
/// `--admin-address-path`).
pub fn admin(port: u16) -> Value {
    json!({ "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } })
}

/// The HTTP connection manager's `typed_config` type.
pub const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// A loopback listener `name` on `port` (0: Envoy picks) with one connection manager `hcm`
/// (its `typed_config`, `@type` included).
pub fn listener(name: &str, port: u16, hcm: Value) -> Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm
        }]}]
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_retry_policy_has_no_retry_on() {
        let r = retry_policy("0.025s", Some("0.25s"));
        assert!(r.get("retry_on").is_none());
        assert_eq!(r["retry_back_off"]["max_interval"], "0.25s");
        assert_eq!(r["host_selection_retry_max_attempts"], 3);
        assert!(retry_policy("0.25s", None)["retry_back_off"]
            .get("max_interval")
            .is_none());
    }
}
