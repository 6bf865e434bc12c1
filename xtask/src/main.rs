//! `cargo xtask <command>`: the project's own build, install, test, demo and benchmark commands.
//!
//! Everything the tests need is installed here, so a fresh clone on a fresh machine passes with
//! `cargo xtask test` alone (CI's `.ci/run` calls exactly that):
//! rustup targets, Debian packages, the pinned Envoy in `.venv/`, and the wasm-bindgen test runner
//! matching Cargo.lock. Installs are skipped when already present, so a second run is quick.
//!
//! `flags` parses every command's arguments (one `clap` derive). One module per command: `setup`
//! (deps, envoy, build), `test`, `bench`, `demo`, `oci`,
//! `soak`, `fuzz`; `util` holds the process helpers they share; the Envoy, oha and `/proc` pieces
//! are the harness's (`harness/`).

mod demo;
mod flags;
mod fuzz;
mod oci;
mod overhead;
mod protection;
mod setup;
mod soak;
mod test;
mod util;

use std::process::ExitCode;

use clap::Parser;

use flags::{Cmd, Xtask};

fn main() -> ExitCode {
    let Xtask { cmd } = Xtask::parse();
    let name = cmd.name();
    let r = match &cmd {
        Cmd::Build => setup::build()
            .and_then(|_| setup::build_native())
            .map(|_| ()),
        Cmd::Envoy => setup::prepare(
            &mut setup::Machine,
            setup::Needs {
                envoy: true,
                ..setup::Needs::default()
            },
            false,
        )
        .map(|_| ()),
        Cmd::Deps => setup::deps(),
        Cmd::Test(a) => test::test(a),
        Cmd::Bench(a) => overhead::bench(a),
        Cmd::Demo(a) => demo::demo(a),
        Cmd::Soak(a) => soak::soak(a),
        Cmd::Fuzz(a) => fuzz::fuzz(a),
        Cmd::Oci(a) => oci::oci(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}
