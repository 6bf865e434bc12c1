//! The Envoy bootstrap the tests run: the same structure as `envoy-config/envoy.yaml` (listener with
//! codec AUTO, the wasm filter before the router, `backend` / `grpc_backend` / `meshbreaker_sidecar`
//! clusters, retry policies with backoff and `previous_hosts` but no `retry_on`, attempt-count
//! headers, the `key`/`decision`/`to` stats tags), with the test's ports, wasm path and plugin
//! configuration filled in. Generated as JSON (a subset of YAML) so that the plugin configuration
//! string needs no YAML escaping.
//!
//! Each test can get its own upstream cluster: [`Bootstrap::cluster`] adds a cluster `name` and a
//! route selected by the request header `x-route: name`, so tests sharing one Envoy have distinct
//! breaker keys (with `key_by: cluster`, the key is the cluster name).

use meshbreaker_harness::bootstrap;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Which protocol the cluster speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// HTTP/1.1 upstream.
    Http,
    /// HTTP/2 (h2c) upstream, route also requires `content-type: application/grpc*`.
    Grpc,
}

/// Builder for a test bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// 0 = let Envoy pick (the harness reads the bound port back from the admin API).
    pub listener_port: u16,
    /// 0 = let Envoy pick (read back through `--admin-address-path`).
    pub admin_port: u16,
    pub backend: SocketAddr,
    pub grpc_backend: SocketAddr,
    pub sidecar: SocketAddr,
    /// `(wasm file, plugin configuration JSON)`; `None` runs Envoy without the filter.
    pub filter: Option<(PathBuf, String)>,
    /// `(libmeshbreaker.so, filter_config JSON)`: the dynamic module instead of (or besides) the
    /// wasm filter, loaded as `envoy-config/native.yaml` loads it.
    pub native: Option<(PathBuf, String)>,
    /// Treat loopback clients as internal (`internal_address_config` 127.0.0.0/8), so that
    /// Envoy itself would honour client-sent `x-envoy-*` headers.
    pub trust_loopback: bool,
    pub extra: Vec<(String, RouteKind, SocketAddr)>,
    /// `include_attempt_count_in_response` on the virtual host. The shipped configs turn it on;
    /// Istio's generated virtual hosts do not (they only set `include_request_attempt_count`).
    pub attempt_count_in_response: bool,
    /// Serve the listener through LDS from this file (`path_config_source`), as Istio's xDS
    /// does, so a test can reload the plugin configuration by replacing the file.
    pub lds_path: Option<PathBuf>,
    /// `upgrade_configs: [{upgrade_type: websocket}]` on the connection manager, as Istio's
    /// sidecars have it: Envoy forwards websocket upgrades instead of refusing them.
    pub websocket: bool,
}

fn unbound() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            listener_port: 0,
            admin_port: 0,
            backend: unbound(),
            grpc_backend: unbound(),
            sidecar: SocketAddr::from(([127, 0, 0, 1], 9911)),
            filter: None,
            native: None,
            trust_loopback: false,
            extra: Vec::new(),
            attempt_count_in_response: true,
            lds_path: None,
            websocket: false,
        }
    }
}

impl Bootstrap {
    /// No filter, upstreams unset (point them with [`Bootstrap::backend`] etc.).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the meshbreaker filter (wasm from [`crate::require_wasm`]) with this plugin JSON.
    pub fn with_filter(mut self, plugin_json: impl Into<String>) -> Self {
        self.filter = Some((crate::require_wasm(), plugin_json.into()));
        self
    }

    /// Adds the meshbreaker dynamic module (from [`crate::require_native`]) with this JSON as its
    /// `filter_config`.
    pub fn with_native_filter(mut self, filter_json: impl Into<String>) -> Self {
        self.native = Some((crate::require_native(), filter_json.into()));
        self
    }

    /// Adds meshbreaker as `shell`: the wasm filter or the dynamic module, with this JSON.
    pub fn with_shell(self, shell: crate::Shell, json: impl Into<String>) -> Self {
        match shell {
            crate::Shell::Wasm => self.with_filter(json),
            crate::Shell::Native => self.with_native_filter(json),
        }
    }

    /// Adds the meshbreaker filter from an explicit wasm path.
    pub fn with_filter_at(mut self, wasm: PathBuf, plugin_json: impl Into<String>) -> Self {
        self.filter = Some((wasm, plugin_json.into()));
        self
    }

    pub fn backend(mut self, addr: SocketAddr) -> Self {
        self.backend = addr;
        self
    }

    pub fn grpc_backend(mut self, addr: SocketAddr) -> Self {
        self.grpc_backend = addr;
        self
    }

    pub fn trust_loopback(mut self, yes: bool) -> Self {
        self.trust_loopback = yes;
        self
    }

    /// Istio's virtual-host shape: the request carries `x-envoy-attempt-count`, the response does not.
    pub fn istio_virtual_host(mut self) -> Self {
        self.attempt_count_in_response = false;
        self
    }

    /// Serves the listener by LDS from `path` (written by [`Bootstrap::write_lds`]).
    pub fn lds_from(mut self, path: PathBuf) -> Self {
        self.lds_path = Some(path);
        self
    }

    /// Lets websocket upgrades through (`upgrade_configs` on the connection manager).
    pub fn websocket(mut self, yes: bool) -> Self {
        self.websocket = yes;
        self
    }

    /// Adds cluster `name` at `addr` and a route to it selected by header `x-route: name`.
    pub fn cluster(mut self, name: &str, kind: RouteKind, addr: SocketAddr) -> Self {
        self.extra.push((name.to_string(), kind, addr));
        self
    }

    /// The bootstrap as text Envoy accepts with `-c` (JSON, which is YAML).
    pub fn to_yaml(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }

    /// The listener resource (what LDS serves, or what the static bootstrap holds).
    pub fn listener(&self) -> Value {
        let v = self.to_value_with_listener();
        v["static_resources"]["listeners"][0].clone()
    }

    /// Writes the LDS file for this bootstrap's listener atomically (a temporary file renamed
    /// over the old one: Envoy watches for the move, as with a ConfigMap update).
    pub fn write_lds(&self) {
        let Some(path) = &self.lds_path else {
            panic!("write_lds needs lds_from(path)");
        };
        let mut listener = self.listener();
        listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
        let doc = json!({ "resources": [listener] });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&doc).unwrap_or_default())
            .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
    }

    pub fn to_value(&self) -> Value {
        let mut v = self.to_value_with_listener();
        if let Some(path) = &self.lds_path {
            if let Some(sr) = v["static_resources"].as_object_mut() {
                sr.remove("listeners");
            }
            v["dynamic_resources"] = json!({"lds_config": {
                "path_config_source": {"path": path.display().to_string()},
                "resource_api_version": "V3"
            }});
        }
        v
    }

    fn to_value_with_listener(&self) -> Value {
        let mut routes = Vec::new();
        for (name, kind, _) in &self.extra {
            let mut headers = vec![json!({"name": "x-route", "string_match": {"exact": name}})];
            if *kind == RouteKind::Grpc {
                headers.push(grpc_match());
            }
            routes.push(route(name, headers, name));
        }
        routes.push(route("grpc", vec![grpc_match()], "grpc_backend"));
        routes.push(route("http", vec![], "backend"));

        let mut http_filters = Vec::new();
        if let Some((wasm, plugin)) = &self.filter {
            http_filters.push(bootstrap::wasm_filter_json("meshbreaker", wasm, plugin));
        }
        if let Some((module, filter_config)) = &self.native {
            http_filters.push(bootstrap::native_module_filter(module, filter_config));
        }
        http_filters.push(bootstrap::router());

        let mut hcm = json!({
            "@type": bootstrap::HCM_TYPE,
            "stat_prefix": "ingress_http",
            "codec_type": "AUTO",
            "use_remote_address": true,
            "route_config": {
                "name": "local_route",
                "virtual_hosts": [{
                    "name": "local",
                    "domains": ["*"],
                    "include_request_attempt_count": true,
                    "include_attempt_count_in_response": self.attempt_count_in_response,
                    "routes": routes
                }]
            },
            "http_filters": http_filters
        });
        if self.websocket {
            hcm["upgrade_configs"] = json!([{"upgrade_type": "websocket"}]);
        }
        if self.trust_loopback {
            hcm["internal_address_config"] =
                json!({"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]});
        }

        let mut clusters = vec![
            cluster("backend", self.backend, false, "1s"),
            cluster("grpc_backend", self.grpc_backend, true, "1s"),
            cluster("meshbreaker_sidecar", self.sidecar, false, "0.25s"),
        ];
        for (name, kind, addr) in &self.extra {
            clusters.push(cluster(name, *addr, *kind == RouteKind::Grpc, "1s"));
        }

        json!({
            "node": {"id": "meshbreaker-test", "cluster": "meshbreaker"},
            "admin": bootstrap::admin(self.admin_port),
            "stats_config": bootstrap::stats_config(),
            "static_resources": {
                "listeners": [bootstrap::listener("ingress", self.listener_port, hcm)],
                "clusters": clusters
            }
        })
    }
}

fn grpc_match() -> Value {
    json!({"name": "content-type", "string_match": {"prefix": "application/grpc"}})
}

/// A route with the shipped shape: 30 s timeout, backoff 25–250 ms, `previous_hosts`, and no
/// `retry_on` (only the filter's headers make Envoy retry).
fn route(name: &str, headers: Vec<Value>, cluster: &str) -> Value {
    bootstrap::route(
        name,
        headers,
        cluster,
        "30s",
        bootstrap::retry_policy("0.025s", Some("0.25s")),
    )
}

fn cluster(name: &str, addr: SocketAddr, h2: bool, connect_timeout: &str) -> Value {
    let c = bootstrap::static_cluster(name, &[addr], connect_timeout);
    if h2 {
        bootstrap::with_http2(c)
    } else {
        c
    }
}
