//! `cargo xtask bench --protection`: installs and builds what the protection benchmark needs,
//! then runs it (`meshbreaker_lab::protection`, which writes `docs/PROTECTION.md`).

use std::path::PathBuf;

use crate::flags::BenchArgs;
use crate::util::Result;

pub use meshbreaker_lab::protection::quick;

pub fn protection(args: &BenchArgs) -> Result {
    if let Some(only) = &args.faults {
        meshbreaker_lab::protection::check_faults(only)?;
    }
    if args.reanalyse {
        return meshbreaker_lab::protection::reanalyse(args.quick, args.faults.as_deref());
    }
    // The reset-storm rows with the eBPF sidecar run only as root: only then is clang needed.
    let sidecar = crate::setup::euid() == Some(0);
    // `--wasm FILE` measures that filter build (an older release, say) instead of building one.
    let given: Option<PathBuf> = args.wasm.clone();
    let ready = crate::setup::prepare(
        &mut crate::setup::Machine,
        crate::setup::Needs::stack(sidecar),
        given.is_none(),
    )?;
    let envoy = ready.envoy.ok_or("the benchmark needs Envoy")?;
    let wasm = match given {
        Some(w) if w.is_file() => w,
        Some(w) => return Err(format!("--wasm {}: no such file", w.display())),
        None => ready.wasm.ok_or("the filter was not built")?,
    };
    meshbreaker_lab::protection::run(args.quick, args.faults.as_deref(), &envoy, &wasm)
}
