//! `meshbreaker check` on every plugin configuration shipped in the repository: the Envoy
//! bootstraps and Istio manifests people deploy must be valid, as the filter reads them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/gen.rs"]
mod gen;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// YAML and JSON files that hold a meshbreaker configuration, outside build output and tests.
fn shipped(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p.is_dir() {
            // Not shipped: build output, tools, and test inputs (fuzz seeds and test fixtures
            // hold invalid configurations on purpose; bootstrap snapshots hold listeners served
            // by LDS). Grafana dashboards are JSON that names meshbreaker, not a plugin
            // configuration.
            if !matches!(
                name.as_str(),
                "target"
                    | ".git"
                    | ".venv"
                    | "node_modules"
                    | "fuzz"
                    | "tests"
                    | "testdata"
                    | "snapshots"
                    | "grafana"
            ) {
                shipped(&p, out);
            }
        } else if (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
            && std::fs::read_to_string(&p).is_ok_and(|t| {
                meshbreaker_cli::source::find_configs(&t).is_ok_and(|f| !f.is_empty())
                    && t.contains("meshbreaker")
            })
        {
            out.push(p);
        }
    }
}

#[test]
fn check_accepts_every_shipped_configuration() {
    let mut files = Vec::new();
    shipped(&repo(), &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap_or(p).display().to_string())
        .collect();
    for must in [
        "envoy-config/envoy.yaml",
        "istio/wasmplugin.yaml",
        "istio/waypoint-namespace.yaml",
        "gateway/extension-wasm.yaml",
        "gateway/extension-dynamic-module.yaml",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(must)),
            "{must} not found among {names:?}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_meshbreaker"))
        .arg("check")
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("run meshbreaker: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(f.as_str()) && l.ends_with(": ok")),
            "{f}: {stdout}"
        );
    }
}

#[test]
fn check_exits_1_with_the_field_path_and_2_without_a_configuration() {
    let dir = std::env::temp_dir().join(format!("meshbreaker-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: meshbreaker}\nspec:\n  pluginConfig:\n    breaker: {window: 2h}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_meshbreaker"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r#"WasmPlugin meshbreaker: spec.pluginConfig: config error at breaker.window: must be in [1s, 1h], got "2h""#),
        "{stdout}"
    );
    // Every error of a document, one line each.
    let two = dir.join("two.json");
    std::fs::write(&two, r#"{"max_keys": 0, "breaker": {"buckets": 61}}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshbreaker"))
        .arg("check")
        .arg(&two)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].ends_with("config error at max_keys: must be in [1, 100000], got 0"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("config error at breaker.buckets: must be in [1, 60], got 61"),
        "{stdout}"
    );
    let none = dir.join("none.yaml");
    std::fs::write(&none, "kind: Service\nmetadata: {name: x}\n").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_meshbreaker"))
        .arg("check")
        .arg(&none)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schema_prints_the_configuration_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshbreaker"))
        .arg("schema")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["title"], "meshbreaker plugin configuration");
    assert_eq!(v["additionalProperties"], false);
    assert!(v["properties"]["breaker"].is_object());
}

#[test]
fn replay_prints_transitions_and_writes_an_svg() {
    let dir = std::env::temp_dir().join(format!("meshbreaker-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let log = dir.join("access.log");
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}")));
    gen::write_log(&mut f, 200_000, 3).unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    let a = dir.join("a.json");
    std::fs::write(&a, r#"{"breaker": {"window": "10s", "buckets": 10}}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let b = dir.join("b.json");
    std::fs::write(
        &b,
        r#"{"breaker": {"window": "10s", "buckets": 10, "error_rate_threshold": 0.9}}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let svg = dir.join("t.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_meshbreaker"))
        .args(["replay", "--config"])
        .arg(&a)
        .arg("--compare")
        .arg(&b)
        .arg("--svg")
        .arg(&svg)
        .arg(&log)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The generated log fails half of svc-N's requests for 20 s every 200 s: A (30%) opens on
    // error_rate, B (90%) never does.
    assert!(
        stdout.contains("closed -> open      error_rate"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("svc-0 "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<u64> = row
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().unwrap_or(0))
        .collect();
    // REQUESTS FAILED | REJECTED SPARED COST OPENED [A] | same [B]
    assert!(cells[2] > 0 && cells[2] == cells[3] + cells[4], "{row}");
    assert_eq!(cells[6..10], [0, 0, 0, 0], "{row}");
    let text = std::fs::read_to_string(&svg).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.starts_with("<svg") && text.contains("svc-0"),
        "{}",
        &text[..text.len().min(200)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
