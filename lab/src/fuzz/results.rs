//! What a fuzz run measured, and its JSON (`target/fuzz/summary.json`, which `--reanalyse`
//! reads back).

use serde::{Deserialize, Serialize};

use crate::docs::Environment;

/// What one target did in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRun {
    pub name: String,
    /// The time asked for, and the time it took.
    pub requested: u64,
    pub seconds: u64,
    pub execs: u64,
    pub exec_per_s: u64,
    /// Coverage (libFuzzer `cov:` edges) and corpus size at the end.
    pub cov: u64,
    pub corpus: u64,
    pub seeds: usize,
    /// Known findings replayed (all still failing as expected), by file name.
    pub known: Vec<String>,
    /// Crashes this run wrote that match a known finding.
    pub crashes_known: usize,
    /// Crashes that match none: message and input.
    pub new_findings: Vec<String>,
}

/// One run of the chosen targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Results {
    /// `--ci`: its sections are printed, not written into the doc.
    pub ci: bool,
    /// The targets the command line named (`--target`), none when it ran them all.
    #[serde(default)]
    pub chosen: Vec<String>,
    pub runs: Vec<TargetRun>,
    pub environment: Environment,
}

impl Results {
    /// The findings no `.expect` file knows, as `target: message (input)`.
    pub fn new_findings(&self) -> Vec<(String, String)> {
        self.runs
            .iter()
            .flat_map(|r| r.new_findings.iter().map(|f| (r.name.clone(), f.clone())))
            .collect()
    }
}
