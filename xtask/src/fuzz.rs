//! `cargo xtask fuzz`: installs the nightly toolchain and cargo-fuzz, then runs the targets
//! (`meshbreaker_lab::fuzz`, which writes the fuzzing sections of `docs/RELIABILITY.md`).
//! `--reanalyse` needs neither: it writes them again from the last run's raw results.

use std::process::Command;

use crate::flags::FuzzArgs;
use crate::util::{output, run, step, Result};

pub fn fuzz(args: &FuzzArgs) -> Result {
    if args.reanalyse {
        return meshbreaker_lab::fuzz::reanalyse();
    }
    let seconds = match (args.minutes, args.seconds) {
        (Some(m), _) => (m * 60.0).round().max(1.0) as u64,
        (None, Some(s)) => s,
        (None, None) if args.ci => 30,
        (None, None) => 120,
    };
    ensure_tools()?;
    meshbreaker_lab::fuzz::run(&meshbreaker_lab::fuzz::Opts {
        seconds,
        targets: args.targets.clone(),
        ci: args.ci,
    })
}

/// The nightly toolchain and cargo-fuzz (cached in ~/.cargo/bin), installed when missing.
pub fn ensure_tools() -> Result {
    let have_nightly = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !have_nightly {
        step("install the nightly toolchain (cargo-fuzz needs -Zsanitizer)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if output(Command::new("cargo-fuzz").arg("--version")).is_none() {
        step("install cargo-fuzz (once; cached in ~/.cargo/bin)");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}
