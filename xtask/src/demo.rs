//! `cargo xtask demo`: installs what the demo needs (the wasm target, binaryen, clang and
//! libbpf-dev when the sidecar can run, the pinned Envoy, Prometheus), builds the filter and the
//! demo binaries, then runs the demo (`meshbreaker_lab::demo`).

use std::path::PathBuf;

use meshbreaker_lab::demo::{self as lab, Opts};

use crate::flags::DemoArgs;
use crate::setup::{prepare, Machine, Needs, Steps};
use crate::util::{root, Result};

pub fn demo(args: &DemoArgs) -> Result {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root().join("target").join("demo"));
    if args.recheck {
        return lab::recheck(&out);
    }
    let o = Opts::new(args.ci, args.phases.clone(), args.duration, args.rate, out)?;
    let (wasm, envoy) = set_up(
        &mut Machine,
        args.skip_build,
        lab::sidecar_unavailable().is_none(),
    )?;
    lab::run(&o, &wasm, &envoy)
}

fn set_up(steps: &mut dyn Steps, skip_build: bool, sidecar: bool) -> Result<(PathBuf, PathBuf)> {
    let needs = Needs {
        wasm: !skip_build,
        ebpf: sidecar && !skip_build,
        envoy: true,
        prometheus: true,
        tests: false,
    };
    let ready = prepare(steps, needs, !skip_build)?;
    let envoy = ready.envoy.ok_or("the demo needs Envoy")?;
    let wasm = match ready.wasm {
        Some(w) => w,
        None => root().join("target/dist/meshbreaker.wasm"),
    };
    if !skip_build {
        let mut packages = vec!["meshbreaker-demo"];
        if sidecar {
            packages.push("meshbreaker-sidecar");
        }
        steps.build_binaries(&packages)?;
    }
    Ok((wasm, envoy))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::setup::record::Recorder;

    #[test]
    fn the_demo_installs_everything_before_it_builds_anything() {
        let mut r = Recorder::default();
        set_up(&mut r, false, true).unwrap();
        assert_eq!(
            r.0,
            [
                "rustup wasm32-unknown-unknown",
                "apt binaryen clang libbpf-dev python3-venv prometheus",
                "envoy",
                "build meshbreaker.wasm",
                "build meshbreaker-demo meshbreaker-sidecar",
            ]
        );
    }

    #[test]
    fn a_demo_without_the_sidecar_installs_no_ebpf_toolchain() {
        let mut r = Recorder::default();
        set_up(&mut r, false, false).unwrap();
        assert_eq!(
            r.0,
            [
                "rustup wasm32-unknown-unknown",
                "apt binaryen python3-venv prometheus",
                "envoy",
                "build meshbreaker.wasm",
                "build meshbreaker-demo",
            ]
        );
    }
}
