//! Self-test of the harness against Envoy WITHOUT the meshbreaker filter: proves the upstreams'
//! programmable status, delay, first-attempt failure and reset reach a client through Envoy, over
//! HTTP/1.1 and h2c, that a real tonic call works through Envoy, and that the premises the filter
//! tests rely on hold on Envoy 1.40 (attempt-count header, retry headers honoured only from
//! trusted clients). Runs without a built wasm.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::grpc::GrpcBehavior;
use meshbreaker_tests::*;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tonic::Code;

struct Fx {
    envoy: Envoy,
    http: HttpUpstream,
    grpc: GrpcUpstream,
    conc: HttpUpstream,
}

static FX: OnceCell<Fx> = OnceCell::const_new();

/// One Envoy (no filter) for the whole file; tests program the upstream per request.
async fn fx() -> &'static Fx {
    FX.get_or_init(|| async {
        let http = HttpUpstream::start().await;
        let grpc = GrpcUpstream::start().await;
        let conc = HttpUpstream::start().await;
        let yaml = Bootstrap::new()
            .backend(http.addr)
            .grpc_backend(grpc.addr)
            .cluster("concurrency", RouteKind::Http, conc.addr)
            .to_yaml();
        let envoy = Envoy::start(yaml).await;
        Fx {
            envoy,
            http,
            grpc,
            conc,
        }
    })
    .await
}

fn shipped_without_wasm() -> String {
    let shipped = std::fs::read_to_string(repo_root().join("envoy-config/envoy.yaml")).unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in shipped.lines() {
        if line.contains("BEGIN meshbreaker-wasm") {
            skipping = true;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
        if line.contains("END meshbreaker-wasm") {
            skipping = false;
        }
    }
    assert!(!out.contains("envoy.filters.http.wasm"));
    out
}

#[test]
fn shipped_bootstrap_without_wasm_filter_validates() {
    let (ok, out) = envoy_validate(&shipped_without_wasm());
    assert!(ok, "envoy --mode validate failed:\n{out}");
}

#[test]
fn shipped_bootstrap_has_the_retry_shape_the_spec_requires() {
    let shipped = std::fs::read_to_string(repo_root().join("envoy-config/envoy.yaml")).unwrap();
    for needle in [
        "include_request_attempt_count: true",
        "include_attempt_count_in_response: true",
        "envoy.retry_host_predicates.previous_hosts",
        "host_selection_retry_max_attempts: 3",
        "base_interval: 0.25s, max_interval: 2.5s",
        "base_interval: 0.1s, max_interval: 1s",
        "filename: target/dist/meshbreaker.wasm",
        "runtime: envoy.wasm.runtime.v8",
        "codec_type: AUTO",
    ] {
        assert!(shipped.contains(needle), "envoy.yaml lacks {needle:?}");
    }
    let code: Vec<&str> = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !code.iter().any(|l| l.contains("retry_on")),
        "the shipped routes must not carry retry_on"
    );
    // The wasm filter comes before the router.
    let wasm = shipped.find("envoy.filters.http.wasm").unwrap();
    let router = shipped.find("envoy.filters.http.router").unwrap();
    assert!(wasm < router);
}

#[test]
fn generated_bootstrap_without_filter_validates() {
    let yaml = Bootstrap::new()
        .cluster(
            "extra_grpc",
            RouteKind::Grpc,
            "127.0.0.1:1".parse().unwrap(),
        )
        .trust_loopback(true)
        .to_yaml();
    let (ok, out) = envoy_validate(&yaml);
    assert!(ok, "{out}");
}

#[test]
fn validate_reports_a_broken_bootstrap() {
    let (ok, out) = envoy_validate("static_resources: { clusters: [ { name: x, type: NOPE } ] }");
    assert!(!ok);
    assert!(out.contains("NOPE"), "{out}");
}

#[test]
fn upstream_status_reaches_the_client_through_envoy() {
    run(async {
        let fx = fx().await;
        let c = fx.envoy.http1();
        let r = c.get("/status", &[("x-test-status", "418")]).await;
        assert_eq!(r.status, 418);
        let r = c.get("/status", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "upstream 200\n");
    })
}

#[test]
fn upstream_delay_is_seen_by_the_client() {
    run(async {
        let fx = fx().await;
        let start = Instant::now();
        let r = fx
            .envoy
            .http1()
            .get("/delay", &[("x-test-delay-ms", "300")])
            .await;
        assert_eq!(r.status, 200);
        assert!(start.elapsed() >= Duration::from_millis(300));
    })
}

#[test]
fn upstream_reset_becomes_an_envoy_503_with_reset_flag() {
    run(async {
        let fx = fx().await;
        for c in [fx.envoy.http1(), fx.envoy.h2c()] {
            let r = c.get("/reset", &[("x-test-reset", "1")]).await;
            assert_eq!(r.status, 503, "{r:?}");
            assert!(
                r.body.contains("reset") || r.body.contains("disconnect"),
                "{}",
                r.body
            );
        }
    })
}

#[test]
fn h2c_client_goes_through_envoy_to_the_http1_upstream() {
    run(async {
        let fx = fx().await;
        let r = fx.envoy.h2c().get("/h2c-probe", &[]).await;
        assert_eq!(r.status, 200);
        let seen = fx.http.requests();
        let req = seen.iter().find(|r| r.path == "/h2c-probe").unwrap();
        assert_eq!(req.version, "HTTP/1.1");
    })
}

#[test]
fn upstream_sees_attempt_count_one_on_a_plain_request() {
    run(async {
        let fx = fx().await;
        let r = fx.envoy.http1().get("/attempt", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-envoy-attempt-count"), Some("1"));
        let seen = fx.http.requests();
        let req = seen.iter().find(|r| r.path == "/attempt").unwrap();
        assert_eq!(req.attempt(), Some(1));
    })
}

#[test]
fn without_filter_a_first_attempt_503_is_not_retried() {
    run(async {
        let fx = fx().await;
        let r = fx
            .envoy
            .http1()
            .get("/no-retry", &[("x-test-fail-first", "503")])
            .await;
        assert_eq!(r.status, 503, "the route has no retry_on of its own");
        let n = fx
            .http
            .requests()
            .iter()
            .filter(|r| r.path == "/no-retry")
            .count();
        assert_eq!(n, 1);
    })
}

#[test]
fn untrusted_client_retry_headers_are_ignored_by_envoy() {
    run(async {
        let fx = fx().await;
        let r = fx
            .envoy
            .http1()
            .get(
                "/untrusted-retry",
                &[
                    ("x-test-fail-first", "503"),
                    ("x-envoy-retry-on", "5xx"),
                    ("x-envoy-max-retries", "3"),
                ],
            )
            .await;
        assert_eq!(r.status, 503);
        let seen: Vec<_> = fx
            .http
            .requests()
            .into_iter()
            .filter(|r| r.path == "/untrusted-retry")
            .collect();
        assert_eq!(seen.len(), 1);
    })
}

/// The premise of the filter's header-stripping test: on a listener that trusts loopback, Envoy
/// itself honours client retry headers, and the router removes them before forwarding.
#[test]
fn trusted_client_retry_headers_make_envoy_retry() {
    run(async {
        let up = HttpUpstream::start().await;
        let envoy = Envoy::start(
            Bootstrap::new()
                .backend(up.addr)
                .trust_loopback(true)
                .to_yaml(),
        )
        .await;
        let r = envoy
            .http1()
            .get(
                "/trusted-retry",
                &[
                    ("x-test-fail-first", "503"),
                    ("x-envoy-retry-on", "5xx"),
                    ("x-envoy-max-retries", "3"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-envoy-attempt-count"), Some("2"));
        let seen = up.requests();
        let attempts: Vec<_> = seen.iter().map(|r| r.attempt()).collect();
        assert_eq!(attempts, vec![Some(1), Some(2)]);
        // What an upstream can observe of the retry headers: the router consumes them.
        assert_eq!(seen[0].header("x-envoy-retry-on"), None);
        assert_eq!(seen[0].header("x-envoy-max-retries"), None);
    })
}

#[test]
fn upstream_records_max_concurrency() {
    run(async {
        let fx = fx().await;
        fx.conc.clear();
        let c = fx.envoy.h2c();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.get(
                    "/conc",
                    &[("x-route", "concurrency"), ("x-test-delay-ms", "400")],
                )
                .await
                .status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(fx.conc.count(), 6);
        assert_eq!(fx.conc.in_flight(), 0);
        assert!(
            fx.conc.max_in_flight() >= 2,
            "6 concurrent 400ms requests should overlap, max {}",
            fx.conc.max_in_flight()
        );
    })
}

#[test]
fn tonic_call_through_envoy_sees_ok_and_programmed_unavailable() {
    run(async {
        let fx = fx().await;
        fx.grpc.set(GrpcBehavior::default());
        grpc_check(fx.envoy.port, &[]).await.unwrap();
        fx.grpc.set(GrpcBehavior {
            code: Code::Unavailable,
            ..Default::default()
        });
        let err = grpc_check(fx.envoy.port, &[]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "programmed failure");
        assert!(fx.grpc.attempts().iter().all(|a| *a == 1));
        fx.grpc.set(GrpcBehavior::default());
    })
}

#[test]
fn prometheus_parser_reads_envoy_cluster_stats() {
    run(async {
        let fx = fx().await;
        let r = fx.envoy.http1().get("/prom", &[]).await;
        assert_eq!(r.status, 200);
        let total = fx
            .envoy
            .metric_value(
                "envoy_cluster_upstream_rq_total",
                &[("envoy_cluster_name", "backend")],
            )
            .await;
        assert!(total >= 1.0, "{total}");
        let raw = fx.envoy.stat("cluster.backend.upstream_rq_total").await;
        assert!(raw.unwrap_or(0) >= 1);
        assert!(fx.envoy.memory_allocated().await > 1_000_000);
        fx.envoy
            .wait_for_log("starting main dispatch loop", Duration::from_secs(5))
            .await;
        assert!(fx.envoy.rss_bytes() > 1_000_000);
    })
}

#[test]
fn envoy_is_killed_when_dropped() {
    run(async {
        let envoy = Envoy::start(Bootstrap::new().to_yaml()).await;
        let admin = envoy.admin_port;
        assert!(envoy.is_running());
        drop(envoy);
        let c = HttpClient::http1(admin);
        wait_until(Duration::from_secs(5), "admin port closed", || {
            let c = c.clone();
            async move { c.try_request("GET", "/ready", &[], "").await.is_err() }
        })
        .await;
    })
}

/// The authority-key forging test needs Envoy to accept such Host headers (sub-delims are valid
/// in an authority).
#[test]
fn envoy_accepts_hosts_with_tag_delimiters() {
    run(async {
        let fx = fx().await;
        let host = "Evil;.;decision=.=rejected;.;To=.=open";
        let r = fx.envoy.http1().get("/forge", &[("host", host)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = fx.http.requests();
        let req = seen.iter().find(|r| r.path == "/forge").unwrap();
        assert_eq!(req.header("host"), Some(host));
    })
}

/// metrics.rs keys clusters named like Istio's and with characters the key sanitizer replaces.
#[test]
fn odd_cluster_names_route_through_envoy() {
    run(async {
        let up = HttpUpstream::start().await;
        let names = ["outbound|8080||Reviews.default.svc", "Odd+Name V2"];
        let mut b = Bootstrap::new();
        for n in names {
            b = b.cluster(n, RouteKind::Http, up.addr);
        }
        let envoy = Envoy::start(b.to_yaml()).await;
        for n in names {
            let r = envoy.http1().get("/odd", &[("x-route", n)]).await;
            assert_eq!(r.status, 200, "{n}: {r:?}");
        }
        assert_eq!(up.count(), 2);
    })
}

/// The generated bootstraps, as Envoy reads them, held to `snapshots/bootstraps/`: the plain one,
/// one with every option (wasm filter, extra HTTP and gRPC clusters, trusted loopback, websockets,
/// Istio's virtual host), the dynamic module's, and the LDS-served one with its listener.
#[test]
fn generated_bootstraps_match_their_snapshots() {
    use meshbreaker_harness::snapshot::check_bootstrap;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let base = Bootstrap::new().backend(at(8080)).grpc_backend(at(8081));
    check_bootstrap("tests-plain", &base.to_yaml()).unwrap();
    let mut full = base
        .clone()
        .cluster("a_http", RouteKind::Http, at(8082))
        .cluster("a_grpc", RouteKind::Grpc, at(8083))
        .trust_loopback(true)
        .websocket(true)
        .istio_virtual_host();
    full.filter = Some((
        PathBuf::from("/snapshot/meshbreaker.wasm"),
        r#"{"key_by":"cluster","breaker":{"min_requests":5}}"#.into(),
    ));
    check_bootstrap("tests-wasm-full", &full.to_yaml()).unwrap();
    let mut native = base.clone();
    native.native = Some((PathBuf::from("/snapshot/libmeshbreaker.so"), "{}".into()));
    check_bootstrap("tests-native", &native.to_yaml()).unwrap();
    let mut lds = base.lds_from(PathBuf::from("/snapshot/lds.json"));
    lds.filter = Some((PathBuf::from("/snapshot/meshbreaker.wasm"), "{}".into()));
    check_bootstrap("tests-lds", &lds.to_yaml()).unwrap();
    check_bootstrap("tests-lds-listener", &lds.listener().to_string()).unwrap();
}
