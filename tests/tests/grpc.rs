//! Behaviour 6: gRPC. An open circuit answers a real gRPC client with UNAVAILABLE
//! (`circuit open: <reason>`, HTTP 200 + grpc-status 14 on the wire); UNAVAILABLE answers count as
//! failures and are retried by the default `grpc` policy (`retry_grpc_on: unavailable`, max 3).
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meshbreaker_tests::grpc::GrpcBehavior;
use meshbreaker_tests::*;
use std::time::Duration;
use tokio::sync::OnceCell;
use tonic::Code;

static STACKS: [OnceCell<Stack>; 2] = [OnceCell::const_new(), OnceCell::const_new()];

async fn stack(shell: Shell) -> &'static Stack {
    STACKS[shell.index()]
        .get_or_init(|| async {
            Stack::start_shell(
                shell,
                &fast_config(),
                &[],
                &["grpc_once", "grpc_max", "grpc_open", "grpc_ok"],
                false,
            )
            .await
        })
        .await
}

fn unavailable() -> GrpcBehavior {
    GrpcBehavior {
        code: Code::Unavailable,
        ..Default::default()
    }
}

per_shell! {
fn grpc_call_passes_through_a_closed_circuit(shell) {
    run(async {
        let s = stack(shell).await;
        for _ in 0..3 {
            grpc_check(s.envoy.port, &[("x-route", "grpc_ok")])
                .await
                .unwrap();
        }
        assert_eq!(s.grpc("grpc_ok").attempts(), vec![1, 1, 1]);
    })
}

fn grpc_unavailable_on_first_attempt_is_retried(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.grpc("grpc_once");
        up.set(GrpcBehavior {
            fail_first_attempt: Some(Code::Unavailable),
            ..Default::default()
        });
        grpc_check(s.envoy.port, &[("x-route", "grpc_once")])
            .await
            .unwrap();
        assert_eq!(up.attempts(), vec![1, 2]);
    })
}

fn grpc_unavailable_is_retried_at_most_three_times_and_counts_as_failures(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.grpc("grpc_max");
        up.set(unavailable());
        let err = grpc_check(s.envoy.port, &[("x-route", "grpc_max")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "programmed failure");
        assert_eq!(up.attempts(), vec![1, 2, 3, 4]);
        eventually(Duration::from_secs(10), "error_rate_ppm = 1e6", || async {
            (s.metric("meshbreaker_error_rate_ppm", "grpc_max", &[])
                .await
                == 1_000_000.0)
                .then_some(())
        })
        .await;
    })
}

fn open_circuit_answers_a_grpc_client_with_unavailable(shell) {
    run(async {
        let s = stack(shell).await;
        let up = s.grpc("grpc_open");
        up.set(unavailable());
        // 4 samples per call (1 + 3 retries): the 2nd call completes min_requests.
        let status = eventually(Duration::from_secs(5), "circuit open", || async {
            let err = grpc_check(s.envoy.port, &[("x-route", "grpc_open")])
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            err.message().starts_with("circuit open").then_some(err)
        })
        .await;
        assert_eq!(status.message(), "circuit open: error_rate");
        let md = status.metadata();
        assert_eq!(md.get("x-meshbreaker").unwrap(), "open");
        assert_eq!(md.get("x-meshbreaker-reason").unwrap(), "error_rate");
        let reached = up.count();
        for _ in 0..3 {
            let err = grpc_check(s.envoy.port, &[("x-route", "grpc_open")])
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert_eq!(err.message(), "circuit open: error_rate");
        }
        assert_eq!(
            up.count(),
            reached,
            "rejected calls never reach the upstream"
        );

        // On the wire: HTTP 200, content-type application/grpc, grpc-status 14.
        let r = HttpClient::h2c(s.envoy.port)
            .request(
                "POST",
                "/grpc.health.v1.Health/Check",
                &[
                    ("x-route", "grpc_open"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ],
                "\0\0\0\0\0",
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.header("content-type")
                .unwrap_or("")
                .starts_with("application/grpc"),
            "{r:?}"
        );
        assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}");
        assert_eq!(r.header("x-meshbreaker"), Some("open"), "{r:?}");
        // Counters are handed to Envoy on the filter's tick (every 100 ms).
        wait_until(Duration::from_secs(5), "4 rejections counted", || async {
            s.metric(
                "meshbreaker_requests_total",
                "grpc_open",
                &[("decision", "rejected")],
            )
            .await
                >= 4.0
        })
        .await;
    })
}
}
