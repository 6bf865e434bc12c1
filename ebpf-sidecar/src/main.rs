//! meshbreaker-sidecar: counts, per upstream address and port, the TCP resets,
//! refused connects and abandoned connects the kernel sees (eBPF on
//! tracepoints), and serves them over HTTP for the proxy-wasm filter, which
//! cannot see the TCP layer itself. See SPEC.md, "Sidecar".

mod abi;
mod http;
mod kernel;
mod preflight;
mod report;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: meshbreaker-sidecar [--listen ADDR:PORT] [--max-peers N]
  --listen     where to serve /v1/resets, /metrics and /healthz (default 127.0.0.1:9911)
  --max-peers  capacity of the kernel peer map, least recently updated evicted beyond it (default 16384)";

struct Args {
    listen: SocketAddr,
    max_peers: u32,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9911)),
        max_peers: abi::DEFAULT_MAX_PEERS,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = value()?;
                parsed.listen = v
                    .parse()
                    .map_err(|_| format!("--listen: not an address:port: {v}"))?;
            }
            "--max-peers" => {
                let v = value()?;
                parsed.max_peers = match v.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--max-peers: must be a positive integer, got {v}")),
                };
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(parsed))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("meshbreaker-sidecar: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    if let Err(missing) = preflight::check() {
        eprintln!("meshbreaker-sidecar: cannot run: {missing}");
        return ExitCode::from(1);
    }
    let (kernel, attach_time) = match kernel::Kernel::load(args.max_peers) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("meshbreaker-sidecar: cannot run: {e}");
            return ExitCode::from(1);
        }
    };
    let started_at_ms = kernel::wall_ms();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshbreaker-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let kernel = Arc::new(kernel);
    let outcome = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        eprintln!(
            "meshbreaker-sidecar: attached {} tracepoints in {:.1} ms (max_peers {}); serving on http://{}",
            abi::TRACEPOINTS.len(),
            attach_time.as_secs_f64() * 1000.0,
            args.max_peers,
            args.listen
        );
        http::serve(listener, Arc::clone(&kernel), started_at_ms).await.map_err(|e| format!("server failed: {e}"))
    });
    // Stop serving before detaching: in-flight requests hold the kernel handle.
    drop(runtime);
    drop(kernel);
    match outcome {
        Ok(signal) => {
            eprintln!("meshbreaker-sidecar: {signal}: programs detached, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshbreaker-sidecar: {e}");
            ExitCode::from(1)
        }
    }
}
