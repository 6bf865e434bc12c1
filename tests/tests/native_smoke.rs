//! The dynamic module (`libmeshbreaker.so`) in the real Envoy 1.40.0: it loads, passes
//! `--mode validate` with the shipped native bootstrap, serves traffic to a real upstream, strips
//! client-sent retry headers before Envoy's router can act on them, reports its request counter with labels, and refuses a bad
//! `filter_config` with the field path in Envoy's log.
//!
//! Why this file matters more than its size suggests: Envoy checks only the *names* of a module's
//! hooks and callbacks; a wrong argument list or enum value is silent undefined behaviour. Every
//! callback and attribute id the module declares is exercised here, against the pinned binary
//! (see `native/src/abi.rs`), and every symbol name it declares is checked to be in that binary.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::*;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The request counter in the form Envoy 1.40 gives dynamic-module metrics in Prometheus:
/// `envoy_` + the module metrics namespace (default `dynamicmodulescustom`) + `_` + the name the
/// module defines (`meshbreaker_requests_total`).
const REQUESTS: &str = "envoy_dynamicmodulescustom_meshbreaker_requests_total";

/// The module's filter configuration in these tests: keys by cluster; no retry policy (so the
/// module writes no retry header of its own); the `keep` cluster keeps client retry headers (an
/// override with stripping off), everything else strips them.
const FILTER_CONFIG: &str = r#"{
  "key_by": "cluster",
  "retry": { "policies": [] },
  "overrides": [
    { "match": { "cluster": "keep" }, "retry": { "strip_downstream_headers": false } }
  ]
}"#;

struct Fx {
    envoy: Envoy,
    backend: HttpUpstream,
    keep: HttpUpstream,
}

static FX: OnceCell<Fx> = OnceCell::const_new();

/// One Envoy with the module for the file, on a listener that trusts loopback clients as internal:
/// there Envoy itself would keep (and obey) a client's `x-envoy-*` headers, so whatever strips
/// them is the module.
async fn fx() -> &'static Fx {
    FX.get_or_init(|| async {
        let backend = HttpUpstream::start().await;
        let keep = HttpUpstream::start().await;
        let yaml = Bootstrap::new()
            .backend(backend.addr)
            .cluster("keep", RouteKind::Http, keep.addr)
            .trust_loopback(true)
            .with_native_filter(FILTER_CONFIG)
            .to_yaml();
        let envoy = Envoy::start(yaml).await;
        Fx {
            envoy,
            backend,
            keep,
        }
    })
    .await
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("envoy-config").join(name))
        .unwrap_or_else(|e| panic!("envoy-config/{name}: {e}"))
}

/// The shipped bootstrap with its filter block (`# BEGIN meshbreaker-…` to `# END …`) and its
/// comment lines cut out.
fn without_filter_and_comments(yaml: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if line.contains("# BEGIN meshbreaker-") {
            skipping = true;
        }
        if !skipping && !line.trim_start().starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
        if line.contains("# END meshbreaker-") {
            skipping = false;
        }
    }
    out
}

#[test]
fn native_bootstrap_validates_with_the_built_module() {
    let native = require_native();
    // The shipped file names the module relative to the repository root; point it at the one
    // under test (MESHBREAKER_NATIVE may be elsewhere).
    let yaml = shipped("native.yaml").replace(
        "filename: target/dist/libmeshbreaker.so",
        &format!("filename: {}", native.display()),
    );
    let (ok, out) = envoy_validate(&yaml);
    assert!(ok, "envoy --mode validate failed:\n{out}");
    assert!(
        out.contains("Dynamic module ABI version v0.2.0 matched"),
        "Envoy did not report the module's ABI version as its own:\n{out}"
    );
}

#[test]
fn native_bootstrap_is_envoy_yaml_with_the_module_instead_of_the_wasm() {
    let native = shipped("native.yaml");
    assert_eq!(
        without_filter_and_comments(&native),
        without_filter_and_comments(&shipped("envoy.yaml")),
        "native.yaml and envoy.yaml differ outside their filter blocks"
    );
    for needle in [
        "envoy.filters.http.dynamic_modules",
        "filename: target/dist/libmeshbreaker.so",
        "do_not_close: true",
        "filter_name: meshbreaker",
    ] {
        assert!(native.contains(needle), "native.yaml lacks {needle:?}");
    }
    let module = native.find("envoy.filters.http.dynamic_modules").unwrap();
    let router = native.find("envoy.filters.http.router").unwrap();
    assert!(module < router, "the module must run before the router");
}

#[test]
fn module_serves_a_request_to_the_upstream() {
    run(async {
        let f = fx().await;
        let r = f.envoy.http1().get("/hello", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "upstream 200\n");
        assert!(f.backend.requests().iter().any(|q| q.path == "/hello"));
    });
}

/// The client's retry headers on a request whose first attempt fails.
const CLIENT_RETRIES: [(&str, &str); 3] = [
    ("x-test-fail-first", "503"),
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-max-retries", "3"),
];

/// What reached the upstream for `path`: attempt numbers, in arrival order.
fn attempts(up: &HttpUpstream, path: &str) -> Vec<Option<u32>> {
    up.requests()
        .iter()
        .filter(|q| q.path == path)
        .map(|q| q.attempt())
        .collect()
}

// The router consumes `x-envoy-retry-on` and `x-envoy-max-retries` (an upstream never sees them),
// so whether they were stripped shows in what Envoy does with them: on this trusted listener it
// would retry the failed first attempt (as `harness::trusted_client_retry_headers_make_envoy_retry`
// shows without the module), and the routes have no `retry_on` of their own.

#[test]
fn module_strips_client_retry_headers_before_the_router() {
    run(async {
        let f = fx().await;
        let mut headers = CLIENT_RETRIES.to_vec();
        headers.push(("x-keep-me", "yes"));
        let r = f.envoy.http1().get("/strip", &headers).await;
        assert_eq!(
            r.status, 503,
            "Envoy retried on the client's headers: {r:?}"
        );
        assert_eq!(attempts(&f.backend, "/strip"), [Some(1)]);
        let seen = f
            .backend
            .requests()
            .into_iter()
            .find(|q| q.path == "/strip")
            .expect("the upstream saw the request");
        assert_eq!(seen.header("x-keep-me"), Some("yes"), "{seen:?}");
    });
}

#[test]
fn module_keeps_client_retry_headers_where_stripping_is_off() {
    run(async {
        let f = fx().await;
        let mut headers = CLIENT_RETRIES.to_vec();
        headers.push(("x-route", "keep"));
        let r = f.envoy.http1().get("/keep", &headers).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(attempts(&f.keep, "/keep"), [Some(1), Some(2)]);
    });
}

#[test]
fn module_counts_allowed_requests_per_cluster_key() {
    run(async {
        let f = fx().await;
        let client = f.envoy.http1();
        for _ in 0..3 {
            assert_eq!(
                client.get("/count", &[("x-route", "keep")]).await.status,
                200
            );
        }
        // The series must exist with both labels; an absent series is never read as 0.
        let n = eventually(
            Duration::from_secs(10),
            "the keep cluster's allowed counter reaches 3",
            || async {
                f.envoy
                    .metric_opt(REQUESTS, &[("key", "keep"), ("decision", "allowed")])
                    .await
                    .filter(|n| *n >= 3.0)
            },
        )
        .await;
        assert!(n >= 3.0);
        let samples = f
            .envoy
            .metric(REQUESTS, &[("key", "keep"), ("decision", "allowed")])
            .await;
        assert_eq!(
            samples.len(),
            1,
            "one series per key and decision: {samples:?}"
        );
        assert_eq!(samples[0].labels.len(), 2, "{samples:?}");
    });
}

/// `key_by: route` reads `xds.route_name` (attribute 61) in the request path; the test bootstrap
/// names its catch-all route `http`.
#[test]
fn module_keys_by_route_name() {
    run(async {
        let up = HttpUpstream::start().await;
        let envoy = Envoy::start(
            Bootstrap::new()
                .backend(up.addr)
                .with_native_filter(r#"{"key_by":"route"}"#)
                .to_yaml(),
        )
        .await;
        assert_eq!(envoy.http1().get("/route", &[]).await.status, 200);
        eventually(
            Duration::from_secs(10),
            "the http route's allowed counter",
            || async {
                envoy
                    .metric_opt(REQUESTS, &[("key", "http"), ("decision", "allowed")])
                    .await
                    .filter(|n| *n >= 1.0)
            },
        )
        .await;
    });
}

/// `key_by: authority` reads the `:authority` header (`http_get_header`) in the request path, as
/// bytes, and sanitizes it.
#[test]
fn module_keys_by_sanitized_authority() {
    run(async {
        let up = HttpUpstream::start().await;
        let envoy = Envoy::start(
            Bootstrap::new()
                .backend(up.addr)
                .with_native_filter(r#"{"key_by":"authority"}"#)
                .to_yaml(),
        )
        .await;
        let r = envoy
            .http1()
            .get("/authority", &[("host", "Shop.Example:8080")])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        eventually(
            Duration::from_secs(10),
            "the authority's allowed counter",
            || async {
                envoy
                    .metric_opt(
                        REQUESTS,
                        &[("key", "shop.example:8080"), ("decision", "allowed")],
                    )
                    .await
                    .filter(|n| *n >= 1.0)
            },
        )
        .await;
    });
}

#[test]
fn bad_filter_config_is_refused_with_its_field_path() {
    let yaml = Bootstrap::new()
        .with_native_filter(r#"{"breaker":{"error_rate_threshold":1.5}}"#)
        .to_yaml();
    let (ok, out) = envoy_validate(&yaml);
    assert!(!ok, "Envoy accepted a bad filter_config:\n{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("meshbreaker: config error at breaker.error_rate_threshold: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one config error line:\n{out}");
    assert!(lines[0].contains("1.5"), "{}", lines[0]);
}

#[test]
fn unknown_filter_name_is_refused() {
    let yaml = Bootstrap::new().with_native_filter("{}").to_yaml().replace(
        r#""filter_name": "meshbreaker""#,
        r#""filter_name": "other""#,
    );
    let (ok, out) = envoy_validate(&yaml);
    assert!(!ok, "Envoy accepted filter_name other:\n{out}");
    assert!(
        out.contains("meshbreaker: config error at filter_name: "),
        "{out}"
    );
}

/// The module built with its `abi-probe` feature: `MESHBREAKER_NATIVE_ABI_PROBE`, else
/// `target/dist/abi-probe/libmeshbreaker.so` (both written by `cargo xtask test`).
fn require_abi_probe() -> PathBuf {
    let p = std::env::var_os("MESHBREAKER_NATIVE_ABI_PROBE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/dist/abi-probe/libmeshbreaker.so"));
    assert!(
        p.is_file(),
        "the module's ABI probe is not at {} — run `cargo xtask test`, or build it with \
         `cargo build -p meshbreaker-native --features abi-probe` and set \
         MESHBREAKER_NATIVE_ABI_PROBE to target/debug/libmeshbreaker_native.so",
        p.display()
    );
    p
}

struct Probe {
    envoy: Envoy,
    up: HttpUpstream,
}

static PROBE: OnceCell<Probe> = OnceCell::const_new();

/// One Envoy with the probe filter (`native/src/probe.rs`) in front of a real upstream.
async fn probe() -> &'static Probe {
    PROBE
        .get_or_init(|| async {
            let up = HttpUpstream::start().await;
            let mut b = Bootstrap::new().backend(up.addr);
            b.native = Some((require_abi_probe(), "{}".to_owned()));
            let yaml = b.to_yaml().replace(
                r#""filter_name": "meshbreaker""#,
                r#""filter_name": "meshbreaker_abi_probe""#,
            );
            let envoy = Envoy::start(yaml).await;
            Probe { envoy, up }
        })
        .await
}

/// `http_send_response`: status, headers and body of a local reply reach the client, and the
/// upstream is never contacted.
#[test]
fn abi_probe_local_reply_reaches_the_client() {
    run(async {
        let p = probe().await;
        let r = p
            .envoy
            .http1()
            .get("/reply", &[("x-abi-probe", "reply")])
            .await;
        assert_eq!(r.status, 418, "{r:?}");
        assert_eq!(r.header("x-abi-probe"), Some("replied"));
        assert_eq!(r.body, "abi probe reply");
        assert!(!p.up.requests().iter().any(|q| q.path == "/reply"));
    });
}

/// A panic inside a hook is caught in the module (`catch_unwind`, `panic = "unwind"`): the
/// request fails open and Envoy keeps serving.
#[test]
fn abi_probe_panic_in_a_hook_fails_open() {
    run(async {
        let p = probe().await;
        let r = p
            .envoy
            .http1()
            .get("/panic", &[("x-abi-probe", "panic")])
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(p.up.requests().iter().any(|q| q.path == "/panic"));
        assert!(p.envoy.is_running());
        assert_eq!(p.envoy.http1().get("/after-panic", &[]).await.status, 200);
    });
}

/// `http_add_header` on the request, `http_filter_config_define_gauge` and
/// `http_filter_set_gauge`, then `http_filter_get_attribute_int` (response code, flags, attempt
/// count), `get_attribute_string` (upstream address) and `http_get_header` on the response map.
#[test]
fn abi_probe_callbacks_round_trip_through_envoy() {
    run(async {
        let p = probe().await;
        let r = p.envoy.http1().get("/attrs", &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen =
            p.up.requests()
                .into_iter()
                .find(|q| q.path == "/attrs")
                .expect("the upstream saw the request");
        assert_eq!(seen.header("x-abi-probe-added"), Some("1"), "{seen:?}");
        let want = format!(
            "code=200;flags=0;attempts=1;upstream=127.0.0.1:{};status=200",
            p.up.port()
        );
        assert_eq!(r.header("x-abi-probe-attrs"), Some(want.as_str()), "{r:?}");
        let failed = p
            .envoy
            .http1()
            .get("/attrs-503", &[("x-test-status", "503")])
            .await;
        assert_eq!(failed.status, 503);
        assert!(
            failed
                .header("x-abi-probe-attrs")
                .is_some_and(|a| a.starts_with("code=503;") && a.ends_with(";status=503")),
            "{failed:?}"
        );
        let gauge = eventually(Duration::from_secs(10), "the probe gauge", || async {
            p.envoy
                .metric_opt(
                    "envoy_dynamicmodulescustom_meshbreaker_abi_probe_gauge",
                    &[("key", "probe")],
                )
                .await
        })
        .await;
        assert_eq!(gauge, 7.0);
    });
}

/// The Envoy binary itself (`.venv/bin/envoy` is a Python launcher that execs it).
fn envoy_elf() -> PathBuf {
    let bin = envoy_binary();
    let small = std::fs::metadata(&bin)
        .map(|m| m.len() < 1_000_000)
        .unwrap_or(false);
    if !small {
        return bin;
    }
    let venv_lib = bin
        .parent()
        .and_then(|b| b.parent())
        .map(|v| v.join("lib"))
        .expect("a venv layout");
    std::fs::read_dir(&venv_lib)
        .expect("the venv's lib directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no envoy binary under {}", venv_lib.display()))
}

/// Every hook and callback name the module's FFI declares (`native/src/abi.rs`, the callbacks, and
/// `native/src/abi/hooks.rs`, the hooks) is one the pinned binary knows:
/// callbacks are in its dynamic symbol table, hooks are the names it looks up with `dlsym`. Both
/// are NUL-terminated strings in the binary.
#[test]
fn every_abi_name_the_module_declares_is_in_the_pinned_envoy() {
    let abi = ["native/src/abi.rs", "native/src/abi/hooks.rs"]
        .map(|f| std::fs::read_to_string(repo_root().join(f)).unwrap())
        .join("\n");
    let mut names: Vec<&str> = abi
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.starts_with("envoy_dynamic_module_callback_")
                || w.starts_with("envoy_dynamic_module_on_")
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(
        names.len() >= 30,
        "expected the 21 hooks and the callbacks, found {names:?}"
    );
    // One pass over the binary: every NUL-terminated string that holds the ABI prefix.
    let elf = std::fs::read(envoy_elf()).unwrap();
    let prefix = b"envoy_dynamic_module_";
    let known: std::collections::HashSet<&[u8]> = elf
        .split(|b| *b == 0)
        .filter_map(|s| {
            let at = s.windows(prefix.len()).position(|w| w == prefix)?;
            Some(&s[at..])
        })
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !known.contains(n.as_bytes()))
        .collect();
    assert!(missing.is_empty(), "not in the pinned Envoy: {missing:?}");
}
