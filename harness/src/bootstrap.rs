//! Pieces of Envoy bootstraps shared by the experiments.

use std::path::Path;

/// The meshbreaker proxy-wasm HTTP filter entry of a JSON bootstrap (the benchmarks and the
/// soak): its own VM `vm_id`, V8, the module at `wasm`, the plugin configuration as Envoy's
/// `StringValue`.
pub fn wasm_filter_json(vm_id: &str, wasm: &Path, configuration: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "meshbreaker",
                "root_id": "meshbreaker",
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
