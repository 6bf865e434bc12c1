//! `cargo xtask fuzz [--minutes N | --seconds N] [--target NAME]... [--ci | --reanalyse]`: the
//! cargo-fuzz targets in `fuzz/`, each for the given time, then the fuzzing figures of
//! `docs/RELIABILITY.md` (its `fuzz-…` generated sections; the prose around them is written by
//! hand).
//!
//! Why a command and not a bare `cargo fuzz run`: the targets need nightly and cargo-fuzz (both
//! installed here when missing), a scratch corpus outside the committed seeds (libFuzzer writes new
//! inputs into its first corpus directory, and `fuzz/corpus/` must stay small and meaningful), the
//! dictionaries in `fuzz/dicts/`, and a verdict that distinguishes a new crash from a known one.
//!
//! Known open findings live in `fuzz/findings/<target>/`: an input `NAME` and `NAME.expect`, lines
//! that must all appear in its failure output (the panic message, and a backtrace frame naming
//! the function, so that another overflow elsewhere does not pass for this one). They work like a
//! strict expected failure:
//! - every finding is replayed first and must still fail with its message — once the bug is
//!   fixed the run fails too, saying to move the input into `fuzz/corpus/<target>/` (where it
//!   becomes a regression seed) and to delete the `.expect` file;
//! - the fuzzer runs with `-fork=1 -ignore_crashes=1`, so a known bug found in the first second
//!   does not end the target's run; every crash it writes is replayed, and one whose message
//!   matches no `.expect` of that target fails the run.
//!
//! `--ci` (what `cargo xtask test` runs): 30 s per target, report printed, `docs/` untouched.
//! Every run keeps its figures in `target/fuzz/summary.json`; `--reanalyse` writes the sections
//! again from there, without fuzzing.
//!
//! ## Layout, one job per file
//! This file holds the entry points. `run` builds, replays and fuzzes the targets, `results` is
//! what a run measured and its JSON, `report` the generated sections.

use std::path::PathBuf;

use crate::docs::{self, Environment};
use crate::util::{root, Result};

mod report;
mod results;
mod run;

pub use results::{Results, TargetRun};

/// What to fuzz, and for how long.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Seconds per target.
    pub seconds: u64,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Report only: `docs/RELIABILITY.md` is left as it is.
    pub ci: bool,
}

/// Where a run keeps its figures: `--ci`'s apart, so that the 30-second runs `cargo xtask test`
/// makes leave the last real run's figures (which `--reanalyse` redraws the doc from) alone.
fn summary_path(ci: bool) -> PathBuf {
    run::work_dir().join(if ci {
        "summary-ci.json"
    } else {
        "summary.json"
    })
}

fn doc_path() -> PathBuf {
    root().join("docs").join("RELIABILITY.md")
}

/// Runs the chosen targets (the nightly toolchain and cargo-fuzz installed), keeps their figures
/// in `target/fuzz/summary.json` and writes their sections of `docs/RELIABILITY.md` unless
/// `ci`.
pub fn run(a: &Opts) -> Result {
    let commit = docs::commit();
    let all = run::targets()?;
    let chosen: Vec<String> = if a.targets.is_empty() {
        all.clone()
    } else {
        for t in &a.targets {
            if !all.contains(t) {
                return Err(format!("no fuzz target {t} (have: {})", all.join(", ")));
            }
        }
        a.targets.clone()
    };
    if chosen.is_empty() {
        return Err("cargo fuzz list found no targets".into());
    }
    let mut runs = Vec::new();
    for t in &chosen {
        runs.push(run::fuzz_target(t, a.seconds)?);
    }
    let results = Results {
        ci: a.ci,
        chosen: a.targets.clone(),
        runs,
        environment: Environment::probe(&commit, run::versions()),
    };
    docs::save_results(&summary_path(a.ci), &results)?;
    write(&results)
}

/// The sections again from the last run's `target/fuzz/summary.json`, without fuzzing (into
/// `docs/RELIABILITY.md` unless that run was `--ci`).
pub fn reanalyse() -> Result {
    let results: Results = docs::load_results(&summary_path(false))?;
    write(&results)
}

/// Prints the sections and writes them into the doc (unless `--ci`); fails on a new finding.
fn write(results: &Results) -> Result {
    let sections = report::sections(results);
    for s in &sections {
        eprintln!("\n{}", s.body);
    }
    if !results.ci {
        docs::fill(&doc_path(), "fuzz-", &sections)?;
        eprintln!("wrote docs/RELIABILITY.md (its fuzz- sections)");
    }
    let new = results.new_findings();
    if new.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "new findings (add a reproducer and .expect under fuzz/findings/ once reported, or fix):\n  - {}",
            new.iter()
                .map(|(target, f)| format!("{target}: {f}"))
                .collect::<Vec<_>>()
                .join("\n  - ")
        ))
    }
}
