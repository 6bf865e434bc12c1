//! The Istio Wasm OCI image that `cargo xtask oci` writes (`target/oci/meshbreaker/` and
//! `target/oci/meshbreaker.tar`), checked the way a registry and Istio's fetcher would read it.
//!
//! Why: a digest that does not verify is refused by every registry, and Istio's fetcher only
//! accepts the oci variant with exactly two layers, one of them the raw module
//! (`application/vnd.module.wasm.content.layer.v1+wasm`). Digests are recomputed here with
//! coreutils' `sha256sum`, independently of the `sha2` code that wrote them.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use meshbreaker_tests::{repo_root, require_wasm};
use serde_json::Value;

fn layout() -> PathBuf {
    let dir = repo_root().join("target/oci/meshbreaker");
    assert!(
        dir.join("index.json").is_file(),
        "{} missing: run `cargo xtask oci` (cargo xtask test does)",
        dir.display()
    );
    dir
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("sha256sum: {e}"));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// The blob a descriptor names, after checking its digest and size.
fn blob(descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let path = layout().join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        sha256sum(&path),
        hex,
        "{} does not match its digest",
        path.display()
    );
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(bytes.len() as u64),
        "size of {digest}"
    );
    bytes
}

fn manifest() -> (Value, Value) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout().join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let desc = manifests[0].clone();
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(
        desc["annotations"]["org.opencontainers.image.ref.name"].is_string(),
        "the manifest has no tag: {desc}"
    );
    let manifest: Value = serde_json::from_slice(&blob(&desc)).expect("manifest is JSON");
    (desc, manifest)
}

#[test]
fn oci_layout_declares_version_1_0_0() {
    let text = std::fs::read_to_string(layout().join("oci-layout")).expect("oci-layout");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["imageLayoutVersion"], "1.0.0");
}

#[test]
fn oci_index_manifest_and_layer_digests_verify_and_the_layer_is_the_built_filter() {
    let (_, manifest) = manifest();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = &manifest["config"];
    assert_eq!(
        config["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    let runtime: Value = serde_json::from_slice(&blob(config)).expect("config is JSON");
    assert_eq!(runtime["type"], "envoy_proxy");

    // Istio's oci variant: exactly two layers, one of them the raw module.
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(
        layers.len(),
        2,
        "Istio requires exactly two layers: {manifest}"
    );
    let wasm_layers: Vec<&Value> = layers
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm")
        .collect();
    assert_eq!(wasm_layers.len(), 1, "{manifest}");
    let module = blob(wasm_layers[0]);
    let built = std::fs::read(require_wasm()).expect("the built filter");
    assert!(
        module == built,
        "the wasm layer ({} bytes) is not byte-identical to target/dist/meshbreaker.wasm ({} bytes): \
         run `cargo xtask oci` after `cargo xtask build`",
        module.len(),
        built.len()
    );
    for l in layers {
        blob(l);
    }
}

#[test]
fn oci_tarball_holds_the_same_layout() {
    let tarball = repo_root().join("target/oci/meshbreaker.tar");
    let out = Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .unwrap_or_else(|e| panic!("tar: {e}"));
    assert!(
        out.status.success(),
        "{} is not a tar archive",
        tarball.display()
    );
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let mut expected = vec!["index.json".to_owned(), "oci-layout".to_owned()];
    for e in std::fs::read_dir(layout().join("blobs/sha256")).expect("blobs") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        expected.push(format!("blobs/sha256/{name}"));
    }
    expected.sort();
    assert_eq!(listed, expected);

    let index = Command::new("tar")
        .arg("-xOf")
        .arg(&tarball)
        .arg("index.json")
        .output()
        .expect("tar -xO");
    assert_eq!(
        index.stdout,
        std::fs::read(layout().join("index.json")).expect("index.json")
    );
}
