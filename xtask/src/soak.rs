//! `cargo xtask soak`: installs and builds what the soak needs (root: it runs the eBPF sidecar),
//! then runs it (`meshbreaker_lab::soak`, which writes the soak's sections of
//! `docs/RELIABILITY.md`). `--reanalyse` needs none of that: it draws them again from the last
//! soak's raw results.

use std::time::Duration;

use crate::flags::SoakArgs;
use crate::util::Result;

pub fn soak(args: &SoakArgs) -> Result {
    if args.reanalyse {
        return meshbreaker_lab::soak::reanalyse();
    }
    let default = if args.ci { 1.0 } else { 10.0 };
    let opts = meshbreaker_lab::soak::Opts {
        duration: Duration::from_secs_f64(args.minutes.unwrap_or(default) * 60.0),
        ci: args.ci,
    };
    if crate::setup::euid() != Some(0) {
        return Err("the soak runs the eBPF sidecar and needs root".into());
    }
    let ready = crate::setup::prepare(
        &mut crate::setup::Machine,
        crate::setup::Needs::stack(true),
        true,
    )?;
    let wasm = ready.wasm.ok_or("the filter was not built")?;
    let envoy = ready.envoy.ok_or("the soak needs Envoy")?;
    meshbreaker_lab::soak::run(&opts, &wasm, &envoy)
}
