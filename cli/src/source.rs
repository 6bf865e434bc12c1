//! Where a plugin configuration lives in a file: a bare JSON document, the meshbreaker wasm
//! filter's `configuration` in an Envoy bootstrap (YAML or JSON), an Istio `WasmPlugin`'s
//! `pluginConfig` or `TrafficExtension`'s `wasm.pluginConfig`, or an Envoy Gateway
//! `EnvoyExtensionPolicy`'s `wasm[].config` and `dynamicModule[].config`.
//!
//! Why the CLI digs it out itself: in CI people check the files they deploy, not a JSON fragment
//! copied out of them, and a fragment that was valid before it was pasted into YAML proves little.
//! What the filter receives is what is found here: Envoy hands the `StringValue`'s text verbatim,
//! Istio serializes `pluginConfig` (a protobuf Struct) to JSON.

use serde::Deserialize;
use serde_json::Value;

/// One plugin configuration found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where in the file: `WasmPlugin meshbreaker: spec.pluginConfig`, or the filter's path.
    pub location: String,
    /// The JSON text the filter would be given.
    pub json: String,
}

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Every meshbreaker configuration in `text`. A document that starts with `{` (or any text when
/// `json_file`, a `.json` file) and does not look like an Envoy bootstrap or a Kubernetes object
/// is taken as the plugin configuration itself, even if it is not valid JSON: checking it
/// reports the syntax error, as the filter would.
pub fn find_configs(text: &str) -> Result<Vec<Found>, String> {
    find_configs_in(text, false)
}

/// [`find_configs`] for a file whose name says whether it is JSON.
pub fn find_configs_in(text: &str, json_file: bool) -> Result<Vec<Found>, String> {
    let trimmed = text.trim_start();
    if json_file || trimmed.starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(doc) if is_envoy_or_istio(&doc) => return Ok(from_document(&doc, "")),
            _ => {
                return Ok(vec![Found {
                    location: "document".into(),
                    json: text.to_string(),
                }])
            }
        }
    }
    let mut found = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = Value::deserialize(de).map_err(|e| format!("not YAML or JSON: {e}"))?;
        let prefix = if i == 0 {
            String::new()
        } else {
            format!("document {}: ", i + 1)
        };
        found.extend(from_document(&doc, &prefix));
    }
    if found.is_empty() {
        return Err("no meshbreaker configuration found (expected a JSON plugin configuration, an Envoy bootstrap with the meshbreaker wasm filter, an Istio WasmPlugin or TrafficExtension, or an Envoy Gateway EnvoyExtensionPolicy)".into());
    }
    Ok(found)
}

fn is_envoy_or_istio(doc: &Value) -> bool {
    doc.get("static_resources").is_some()
        || doc.get("kind").is_some()
        || doc.get("resources").is_some()
}

fn mentions_meshbreaker(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("meshbreaker"),
        _ => false,
    }
}

fn from_document(doc: &Value, prefix: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    let kind = doc["kind"].as_str().unwrap_or("");
    let mut found = |field: String, config: Option<&Value>| {
        out.push(Found {
            location: format!("{prefix}{kind} {name}: {field}"),
            json: config.map_or_else(|| "{}".into(), Value::to_string),
        });
    };
    let spec = &doc["spec"];
    match kind {
        "WasmPlugin" => {
            if mentions_meshbreaker(&doc["metadata"]["name"]) || mentions_meshbreaker(&spec["url"])
            {
                found("spec.pluginConfig".into(), spec.get("pluginConfig"));
            }
        }
        // Istio 1.30+: a WasmPlugin's successor, the module under `wasm`.
        "TrafficExtension" => {
            let wasm = &spec["wasm"];
            if mentions_meshbreaker(&doc["metadata"]["name"])
                || mentions_meshbreaker(&wasm["url"])
                || mentions_meshbreaker(&wasm["pluginName"])
            {
                found("spec.wasm.pluginConfig".into(), wasm.get("pluginConfig"));
            }
        }
        // Envoy Gateway: ordered lists of wasm extensions and dynamic-module filters.
        "EnvoyExtensionPolicy" => {
            for (i, w) in spec["wasm"].as_array().into_iter().flatten().enumerate() {
                let code = &w["code"];
                if mentions_meshbreaker(&w["name"])
                    || mentions_meshbreaker(&w["rootID"])
                    || mentions_meshbreaker(&code["image"]["url"])
                    || mentions_meshbreaker(&code["http"]["url"])
                {
                    found(format!("spec.wasm[{i}].config"), w.get("config"));
                }
            }
            for (i, m) in spec["dynamicModule"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if mentions_meshbreaker(&m["name"]) || mentions_meshbreaker(&m["filterName"]) {
                    found(format!("spec.dynamicModule[{i}].config"), m.get("config"));
                }
            }
        }
        _ => walk(doc, &mut String::new(), prefix, &mut out),
    }
    out
}

/// Finds `{"@type": …Wasm, "config": {…meshbreaker…}}` at any depth (listeners, filter chains,
/// ECDS resources, LDS files).
fn walk(v: &Value, path: &mut String, prefix: &str, out: &mut Vec<Found>) {
    match v {
        Value::Object(m) => {
            if m.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                let cfg = &v["config"];
                let ours = mentions_meshbreaker(&cfg["name"])
                    || mentions_meshbreaker(&cfg["root_id"])
                    || mentions_meshbreaker(&cfg["vm_config"]["vm_id"])
                    || mentions_meshbreaker(&cfg["vm_config"]["code"]["local"]["filename"]);
                if ours {
                    let json = match &cfg["configuration"] {
                        Value::Null => "{}".to_string(),
                        Value::Object(c) => match c.get("value") {
                            Some(Value::String(s)) => s.clone(),
                            Some(other) => other.to_string(),
                            None => "{}".to_string(),
                        },
                        other => other.to_string(),
                    };
                    out.push(Found {
                        location: format!(
                            "{prefix}{}.config.configuration",
                            path.trim_start_matches('.')
                        ),
                        json,
                    });
                    return;
                }
            }
            for (k, child) in m {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                walk(child, path, prefix, out);
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(child, path, prefix, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn find_configs_takes_a_bare_json_document_whole() {
        let f = find_configs("{\"mode\": \"dry_run\"}").unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].json, "{\"mode\": \"dry_run\"}");
        let broken = find_configs("{\"mode\": ").unwrap();
        assert_eq!(broken[0].json, "{\"mode\": ");
    }

    #[test]
    fn find_configs_reads_the_wasm_filter_string_value() {
        let yaml = r#"
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - typed_config:
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: meshbreaker
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"max_keys": 7}'
          - name: other
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config: { name: somebody-else }
"#;
        let f = find_configs(yaml).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].json, r#"{"max_keys": 7}"#);
        assert!(
            f[0].location
                .contains("http_filters[0].typed_config.config.configuration"),
            "{}",
            f[0].location
        );
    }

    #[test]
    fn find_configs_reads_a_wasmplugin_plugin_config() {
        let yaml = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: meshbreaker}\nspec:\n  url: oci://x/meshbreaker:1\n  pluginConfig:\n    breaker: {window: 30s, buckets: 6}\n---\nkind: Service\nmetadata: {name: x}\n";
        let f = find_configs(yaml).unwrap();
        assert_eq!(f.len(), 1);
        let v: Value = serde_json::from_str(&f[0].json).unwrap();
        assert_eq!(v["breaker"]["window"], "30s");
        assert_eq!(v["breaker"]["buckets"], 6);
    }

    #[test]
    fn find_configs_reads_a_traffic_extension_wasm_plugin_config() {
        let yaml = "apiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\nmetadata: {name: guard}\nspec:\n  wasm:\n    url: oci://x/meshbreaker:1\n    pluginConfig: {mode: dry_run}\n";
        let f = find_configs(yaml).unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].location,
            "TrafficExtension guard: spec.wasm.pluginConfig"
        );
        assert_eq!(f[0].json, r#"{"mode":"dry_run"}"#);
    }

    #[test]
    fn find_configs_reads_each_meshbreaker_entry_of_an_envoy_extension_policy() {
        let yaml = r#"
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: {name: p}
spec:
  wasm:
    - name: other
      code: {type: Image, image: {url: ghcr.io/x/other:1}}
      config: {a: 1}
    - code: {type: Image, image: {url: ghcr.io/x/meshbreaker:1}}
      config: {max_keys: 7}
  dynamicModule:
    - name: meshbreaker
      filterName: meshbreaker
"#;
        let f = find_configs(yaml).unwrap();
        let got: Vec<(&str, &str)> = f
            .iter()
            .map(|f| (f.location.as_str(), f.json.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "EnvoyExtensionPolicy p: spec.wasm[1].config",
                    r#"{"max_keys":7}"#
                ),
                ("EnvoyExtensionPolicy p: spec.dynamicModule[0].config", "{}"),
            ]
        );
    }

    #[test]
    fn find_configs_fails_without_a_meshbreaker_configuration() {
        assert!(find_configs("kind: Service\nmetadata: {name: x}\n").is_err());
    }
}
