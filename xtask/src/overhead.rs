//! `cargo xtask bench`: installs and builds what the overhead benchmark measures (Envoy, the
//! filter, the trivial filter, the dynamic module), then runs it (`meshbreaker_lab::overhead`,
//! which writes `docs/PERFORMANCE.md`'s generated sections); `--reanalyse` writes them again from
//! the last run's raw results, building and measuring nothing; `--protection` runs the protection
//! benchmark instead.

use std::path::PathBuf;

use crate::flags::BenchArgs;
use crate::setup;
use crate::util::{root, step, Result};
use meshbreaker_lab::overhead::{self, Built, Opts};

pub fn bench(args: &BenchArgs) -> Result {
    if args.protection {
        return crate::protection::protection(args);
    }
    if args.reanalyse {
        return overhead::reanalyse();
    }
    let opts = Opts::new(args.quick, args.rounds, args.seconds, args.no_criterion);
    let ready = setup::prepare(&mut setup::Machine, setup::Needs::stack(false), true)?;
    let (wasm, envoy) = (
        ready.wasm.ok_or("the filter was not built")?,
        ready.envoy.ok_or("the benchmark needs Envoy")?,
    );
    let noop = build_noop()?;
    let module = setup::build_native()?;
    // The run's clock, date and load probe start in `overhead::run`, after these builds.
    overhead::run(
        opts,
        &Built {
            envoy,
            wasm,
            noop,
            module,
        },
    )
}

/// Builds the trivial filter to `target/dist/noop.wasm`.
fn build_noop() -> Result<PathBuf> {
    step("build the trivial filter (bench/noop-filter)");
    let built = setup::cargo_build_wasm("meshbreaker-bench-noop", "noop.wasm")?;
    let out = root().join("target").join("dist").join("noop.wasm");
    std::fs::create_dir_all(root().join("target").join("dist")).map_err(|e| e.to_string())?;
    std::fs::copy(&built, &out).map_err(|e| format!("{}: {e}", built.display()))?;
    Ok(out)
}
