//! `cargo xtask test`: everything CI runs.

use std::time::Instant;

use crate::flags::{DemoArgs, FuzzArgs, OciArgs, SoakArgs, TestArgs};
use crate::setup::{
    build, build_native, build_native_abi_probe, native_dist, node_for_wasm_tests, prepare,
    wasm_bindgen_runner, Machine, Needs, WASM_TARGET,
};
use crate::util::{cargo, run, step, Result};

pub fn test(args: &TestArgs) -> Result {
    let started = Instant::now();
    let envoy = prepare(&mut Machine, Needs::ALL, false)?
        .envoy
        .ok_or("the tests need Envoy")?;
    let runner = wasm_bindgen_runner()?;
    let node_dir = node_for_wasm_tests()?;
    step(
        "clippy: every crate of the workspace, tests included, under the workspace's lints \
         (no unwrap/expect/panic outside tests)",
    );
    run(cargo().args([
        "clippy",
        "-q",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let wasm = build()?;
    // tests/tests/oci.rs verifies the image this writes.
    crate::oci::oci(&OciArgs {
        skip_build: true,
        ..Default::default()
    })?;
    build_native()?;
    let abi_probe = build_native_abi_probe()?;
    step("native tests (unit, property, Envoy integration, eBPF sidecar)");
    run(cargo()
        .args(["test", "--workspace"])
        .args(args.cargo_test_args())
        .env("MESHBREAKER_ENVOY", &envoy)
        .env("MESHBREAKER_WASM", &wasm)
        .env("MESHBREAKER_NATIVE", native_dist())
        .env("MESHBREAKER_NATIVE_ABI_PROBE", &abi_probe))?;
    step("cargo xtask demo --ci (the whole stack through its phases, asserted)");
    // The demo finds Envoy through MESHBREAKER_ENVOY, like the tests.
    std::env::set_var("MESHBREAKER_ENVOY", &envoy);
    crate::demo::demo(&DemoArgs {
        ci: true,
        ..Default::default()
    })?;
    match std::env::var_os("MESHBREAKER_ISTIO_CRDS") {
        Some(dir) => {
            step("the manifest validator held to Istio's own CRD file and fixtures");
            run(cargo()
                .args([
                    "test",
                    "-p",
                    "meshbreaker-tests",
                    "--test",
                    "manifests_shared",
                ])
                .args(["--", "--ignored"])
                .env("MESHBREAKER_ISTIO_CRDS", dir))?;
        }
        None => eprintln!(
            "\nmanifests_shared: not run (set MESHBREAKER_ISTIO_CRDS to a directory with Istio's \
             customresourcedefinitions.gen.yaml and WasmPlugin fixtures to run it)"
        ),
    }
    step("protection, quick: hard down, 50% 5xx against no protection, no trip on long-lived streams (docs/PROTECTION.md is the full run)");
    crate::protection::quick(&envoy, &wasm)?;
    step("policy-core on wasm32-unknown-unknown (wasm-bindgen-test in node)");
    let mut wasm_tests = cargo();
    if let Some(dir) = node_dir {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(dir).chain(std::env::split_paths(&path));
        wasm_tests.env(
            "PATH",
            std::env::join_paths(paths).map_err(|e| e.to_string())?,
        );
    }
    run(wasm_tests
        // The scenarios file holds the core scenarios; the unit and property tests use proptest,
        // which is native-only.
        .args([
            "test",
            "-p",
            "policy-core",
            "--target",
            WASM_TARGET,
            "--test",
            "scenarios",
        ])
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner))?;
    step("reliability: each cargo-fuzz target for 30 s, then the one-minute soak");
    crate::fuzz::fuzz(&FuzzArgs {
        ci: true,
        ..Default::default()
    })?;
    crate::soak::soak(&SoakArgs {
        ci: true,
        ..Default::default()
    })?;
    eprintln!(
        "\ncargo xtask test: all passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
