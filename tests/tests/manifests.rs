//! The mesh manifests (`istio/*.yaml`, `docker-compose.yml`) checked without a cluster.
//!
//! Why: nothing else in CI applies these files, so a field Istio's CRD rejects, a plugin
//! configuration the filter refuses at `on_configure`, or a DaemonSet that quietly gained
//! privileges would only show up in someone's cluster. The CRD checks run
//! `validate_manifests.py` (Debian `python3-yaml` + `python3-jsonschema`) against Istio's own
//! generated CRDs in `<repo>/../shared/istio`, and the validator is held to Istio's own
//! valid/invalid WasmPlugin fixtures, so a lenient validator cannot pass these tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use policy_core::config::{Config, KeyBy, ResetSignals};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the repository root")
        .to_path_buf()
}

/// `<repo>/../shared/istio`, where CI puts Istio's CRDs and fixtures beside the clone.
fn shared_istio() -> PathBuf {
    let dir = repo().join("../shared/istio");
    let crds = dir.join("customresourcedefinitions.gen.yaml");
    assert!(
        crds.is_file(),
        "missing {}: the Istio CRDs and WasmPlugin fixtures are expected in a `shared/istio` \
         directory beside the repository clone (<repo>/../shared/istio)",
        crds.display()
    );
    dir
}

fn crds() -> PathBuf {
    shared_istio().join("customresourcedefinitions.gen.yaml")
}

/// Debian's interpreter, which is where `python3-yaml`/`python3-jsonschema` are installed.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn script(args: &[&Path]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate_manifests.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python(), script.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed ({}): {}",
        script.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("validate_manifests.py prints JSON")
}

/// One record per YAML document: kind, name, has_crd, expected_error, errors.
fn validate(files: &[PathBuf]) -> Vec<Value> {
    let crds = crds();
    let mut args: Vec<&Path> = vec![Path::new("validate"), Path::new("--crds"), &crds];
    args.extend(files.iter().map(PathBuf::as_path));
    match script(&args) {
        Value::Array(records) => records,
        other => panic!("validate printed {other}"),
    }
}

/// Every YAML document of `file`, as JSON.
fn docs(file: &Path) -> Vec<Value> {
    match script(&[Path::new("dump"), file]) {
        Value::Array(records) => records.into_iter().map(|r| r["doc"].clone()).collect(),
        other => panic!("dump printed {other}"),
    }
}

fn one_of_kind(docs: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}, got {found:?}");
    found[0].clone()
}

fn istio_yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("istio"))
        .expect("istio/ exists")
        .map(|e| e.expect("readable istio/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn wasmplugin() -> Value {
    one_of_kind(&docs(&repo().join("istio/wasmplugin.yaml")), "WasmPlugin")
}

fn errors_of(record: &Value) -> Vec<String> {
    record["errors"]
        .as_array()
        .expect("errors is a list")
        .iter()
        .map(|e| e.as_str().expect("error text").to_owned())
        .collect()
}

#[test]
fn istio_manifests_pass_their_crd_schemas_and_cel_rules() {
    let files = istio_yaml_files();
    let names: BTreeSet<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in ["wasmplugin.yaml", "sidecar-daemonset.yaml"] {
        assert!(
            names.contains(expected),
            "istio/{expected} missing: {names:?}"
        );
    }
    let records = validate(&files);
    let checked: Vec<&Value> = records.iter().filter(|r| r["has_crd"] == true).collect();
    assert!(
        checked.iter().any(|r| r["kind"] == "WasmPlugin"),
        "the WasmPlugin was not matched to its CRD: {records:?}"
    );
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
fn istio_valid_wasm_fixtures_are_accepted() {
    let records = validate(&[shared_istio().join("wasm-valid.yaml")]);
    assert!(
        records.len() >= 4,
        "expected Istio's 4 valid fixtures, got {records:?}"
    );
    for r in &records {
        assert_eq!(r["has_crd"], true, "no CRD matched {r}");
        let errors = errors_of(r);
        assert!(
            errors.is_empty(),
            "valid fixture {} rejected: {errors:#?}",
            r["name"]
        );
    }
}

#[test]
fn istio_invalid_wasm_fixtures_are_rejected_for_their_stated_reason() {
    let records = validate(&[shared_istio().join("wasm-invalid.yaml")]);
    assert!(
        records.len() >= 15,
        "expected Istio's 15 invalid fixtures, got {records:?}"
    );
    for r in &records {
        assert_eq!(r["has_crd"], true, "no CRD matched {r}");
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
fn validator_rejects_misspelled_fields_foreign_url_schemes_and_unknown_phases() {
    let mut plugin = wasmplugin();
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
fn wasmplugin_runs_last_before_the_router_on_outbound_http_and_fails_open() {
    let plugin = wasmplugin();
    let spec = &plugin["spec"];
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(plugin["metadata"]["name"], "meshbreaker");
    assert_eq!(spec["type"], "HTTP");
    // UNSPECIFIED_PHASE: Istio inserts the plugin at the end of the chain, right before the router.
    assert_eq!(spec["phase"], "UNSPECIFIED_PHASE");
    // CLIENT is Istio's SIDECAR_OUTBOUND (plus gateways): the upstreams a workload calls.
    assert_eq!(spec["match"], serde_json::json!([{ "mode": "CLIENT" }]));
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    let url = spec["url"].as_str().expect("url is a string");
    assert!(
        url.starts_with("oci://"),
        "url {url} is not an OCI reference"
    );
    let labels = spec["selector"]["matchLabels"]
        .as_object()
        .expect("a label selector");
    assert!(
        !labels.is_empty(),
        "an empty selector would select every workload"
    );
}

#[test]
fn wasmplugin_plugin_config_is_the_spec_defaults_plus_the_sidecar_accepted_by_policy_core() {
    let plugin = wasmplugin();
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

#[test]
fn reset_signals_cluster_is_the_node_local_service_of_the_sidecar_daemonset() {
    let manifest = docs(&repo().join("istio/wasmplugin.yaml"));
    let service = one_of_kind(&manifest, "Service");
    let daemonset = one_of_kind(
        &docs(&repo().join("istio/sidecar-daemonset.yaml")),
        "DaemonSet",
    );
    let plugin = one_of_kind(&manifest, "WasmPlugin");

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

fn sidecar_container() -> Value {
    let ds = one_of_kind(
        &docs(&repo().join("istio/sidecar-daemonset.yaml")),
        "DaemonSet",
    );
    let containers = ds["spec"]["template"]["spec"]["containers"]
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
    let ds = one_of_kind(
        &docs(&repo().join("istio/sidecar-daemonset.yaml")),
        "DaemonSet",
    );
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
    let ds = one_of_kind(
        &docs(&repo().join("istio/sidecar-daemonset.yaml")),
        "DaemonSet",
    );
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
