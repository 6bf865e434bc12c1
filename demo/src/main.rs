//! `meshbreaker-demo`: the demo's flaky upstream and its load driver, one binary so that
//! `cargo xtask demo`, docker-compose's services and a later soak command run the same code.

mod drive;
mod plot;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meshbreaker-demo",
    about = "The meshbreaker demo's upstream and load driver"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// An HTTP/1.1 upstream whose fault is switched with PUT /_demo/mode/<healthy|errors|slow|resets>.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Traffic through Envoy, phase by phase, with a live view; writes summary.json and timeline.svg.
    Drive {
        /// The URL requests go to (Envoy's listener).
        #[arg(long, default_value = "http://127.0.0.1:10000/demo")]
        target: String,
        /// Envoy's admin API, for /stats/prometheus.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// The upstream, reached directly, to switch its fault.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        upstream: String,
        /// Comma-separated phases: healthy, errors, slow, resets, recovery.
        #[arg(
            long,
            default_value = "healthy,errors,recovery,slow,recovery,resets,recovery"
        )]
        phases: String,
        /// Seconds per phase (recovery phases get --recovery-extra more).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Extra seconds for each recovery phase: room for a circuit that re-opened up to
        /// max_sleep_window x 1.2 before the fault ended.
        #[arg(long, default_value_t = 5.0)]
        recovery_extra: f64,
        /// Requests per second, all workers together.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Concurrent clients (a slow upstream caps each at one request per delay).
        #[arg(long, default_value_t = 32)]
        workers: u32,
        /// The breaker key of the traffic (key_by cluster: the cluster name).
        #[arg(long, default_value = "backend")]
        key: String,
        /// Where summary.json and timeline.svg go.
        #[arg(long, default_value = "target/demo")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshbreaker-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Upstream { listen } => tokio::select! {
                r = upstream::serve(listen) => r.map_err(|e| format!("upstream on {listen}: {e}")),
                _ = tokio::signal::ctrl_c() => Ok(()),
            },
            Cmd::Drive {
                target,
                admin,
                upstream,
                phases,
                duration,
                recovery_extra,
                rate,
                workers,
                key,
                out,
            } => {
                let phases = drive::parse_phases(&phases, duration, recovery_extra)?;
                let opts = drive::Options {
                    target,
                    admin,
                    upstream,
                    phases,
                    rate,
                    workers,
                    out: out.clone(),
                    key,
                };
                let report = tokio::select! {
                    r = drive::drive(opts) => r,
                    _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
                }?;
                let svg = out.join("timeline.svg");
                plot::timeline(&report, &svg)?;
                println!("wrote {}", svg.display());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshbreaker-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
