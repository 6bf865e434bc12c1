//! What a fuzz run measured, and its JSON (`target/fuzz/summary.json`, which `--reanalyse`
//! reads back).

use serde_json::{json, Value};

use crate::docs::Environment;
use crate::util::Result;

/// What one target did in this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Results {
    /// `--ci`: its sections are printed, not written into the doc.
    pub ci: bool,
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

    pub fn to_json(&self) -> Value {
        json!({
            "ci": self.ci,
            "environment": self.environment.to_json(),
            "runs": self.runs.iter().map(|r| json!({
                "name": r.name,
                "requested": r.requested,
                "seconds": r.seconds,
                "execs": r.execs,
                "exec_per_s": r.exec_per_s,
                "cov": r.cov,
                "corpus": r.corpus,
                "seeds": r.seeds,
                "known": r.known,
                "crashes_known": r.crashes_known,
                "new_findings": r.new_findings,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Result<Results> {
        let runs = v["runs"]
            .as_array()
            .ok_or("fuzz summary: no `runs`")?
            .iter()
            .map(|r| {
                let n = |k: &str| {
                    r[k].as_u64()
                        .ok_or_else(|| format!("fuzz summary: a run has no `{k}`"))
                };
                let list = |k: &str| -> Result<Vec<String>> {
                    serde_json::from_value(r[k].clone())
                        .map_err(|e| format!("fuzz summary: `{k}`: {e}"))
                };
                Ok(TargetRun {
                    name: r["name"]
                        .as_str()
                        .ok_or("fuzz summary: a run has no `name`")?
                        .to_string(),
                    requested: n("requested")?,
                    seconds: n("seconds")?,
                    execs: n("execs")?,
                    exec_per_s: n("exec_per_s")?,
                    cov: n("cov")?,
                    corpus: n("corpus")?,
                    seeds: n("seeds")? as usize,
                    known: list("known")?,
                    crashes_known: n("crashes_known")? as usize,
                    new_findings: list("new_findings")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Results {
            ci: v["ci"].as_bool().unwrap_or(false),
            runs,
            environment: Environment::from_json(&v["environment"])?,
        })
    }
}
