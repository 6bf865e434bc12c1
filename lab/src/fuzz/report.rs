//! The fuzzing figures of `docs/RELIABILITY.md`: its `fuzz-…` generated sections. What fuzzing
//! means there, and how to reproduce it, is the doc's own prose.

use crate::docs::{group, Section};

use super::results::Results;

/// The sections, in the order the doc shows them.
pub(super) fn sections(r: &Results) -> Vec<Section> {
    vec![
        Section::new("fuzz-run", run_line(r)),
        Section::new("fuzz-targets", table(r)),
        Section::new("fuzz-verdict", verdict(r)),
        Section::new("fuzz-environment", r.environment.line()),
    ]
}

fn run_line(r: &Results) -> String {
    let total: u64 = r.runs.iter().map(|t| t.execs).sum();
    // The length as it was asked for: whole minutes, else seconds.
    let asked = r.runs.first().map_or(0, |t| t.requested);
    let mut length = if asked.is_multiple_of(60) {
        format!("--minutes {}", asked / 60)
    } else {
        format!("--seconds {asked}")
    };
    for t in &r.chosen {
        length.push_str(&format!(" --target {t}"));
    }
    format!(
        "`cargo xtask fuzz {length}`: {} target{}, {} inputs executed in all.",
        r.runs.len(),
        if r.runs.len() == 1 { "" } else { "s" },
        group(total)
    )
}

fn table(r: &Results) -> String {
    let mut s = String::from(
        "| target | what it feeds | seconds | inputs executed | exec/s | coverage (edges) | corpus (seeds) | known open findings, in `fuzz/README.md` (crashes this run that match them) |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for t in &r.runs {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} ({}) | {} |\n",
            t.name,
            describe(&t.name),
            t.seconds,
            group(t.execs),
            group(t.exec_per_s),
            t.cov,
            t.corpus,
            t.seeds,
            if t.known.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} ({})",
                    t.known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join("; "),
                    t.crashes_known
                )
            }
        ));
    }
    s
}

fn verdict(r: &Results) -> String {
    let new = r.new_findings();
    if new.is_empty() {
        "**Held:** no crash, hang, out-of-memory or failed property other than the known open \
         findings in the table."
            .to_string()
    } else {
        format!(
            "**New findings in this run** (not yet in `fuzz/findings/`):\n\n- {}",
            new.iter()
                .map(|(target, f)| format!("`{target}`: {f}"))
                .collect::<Vec<_>>()
                .join("\n- ")
        )
    }
}

fn describe(target: &str) -> &'static str {
    match target {
        "config" => "plugin configuration JSON → `Config::parse`; accepted configs checked against SPEC's ranges, errors one line",
        "shared_state" => "shared-data entries → slot state, window, reset totals decoders; re-encoding round trip, scratch reuse, window arithmetic",
        "sidecar_snapshot" => "`GET /v1/resets` bodies → `parse_snapshot` and `ResetTracker`",
        "peer_address" => "socket addresses and strings → `is_peer_address`: every address std prints passes, nothing else does",
        "request_path" => "two workers' engines on the fake host (Envoy's CAS rule): arbitrary request and response header bytes, client retry headers, trailers, properties, clock steps, abandoned requests",
        _ => "",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::docs::{self, Environment};
    use crate::fuzz::TargetRun;

    const DOC: &str = include_str!("../../../docs/RELIABILITY.md");

    fn results(new_finding: bool) -> Results {
        Results {
            ci: false,
            chosen: Vec::new(),
            runs: vec![TargetRun {
                name: "config".into(),
                requested: 60,
                seconds: 61,
                execs: 1_299_991,
                exec_per_s: 21_311,
                cov: 3914,
                corpus: 1256,
                seeds: 11,
                known: vec!["overflow-1".into()],
                crashes_known: 2,
                new_findings: if new_finding {
                    vec!["attempt to add with overflow (crash-1)".into()]
                } else {
                    vec![]
                },
            }],
            environment: Environment {
                machine: "a machine".into(),
                versions: vec!["rustc".into()],
                commit: "abc1234".into(),
                finished: "2026-12-01 10:48 UTC".into(),
            },
        }
    }

    #[test]
    fn the_run_line_names_the_targets_the_command_line_chose() {
        let mut r = results(false);
        assert!(!run_line(&r).contains("--target"));
        r.chosen = vec!["config".into()];
        assert!(run_line(&r).starts_with("`cargo xtask fuzz --minutes 1 --target config`"));
    }

    #[test]
    fn the_sections_are_the_docs_fuzz_sections() {
        for failed in [false, true] {
            docs::check_sections(DOC, "fuzz-", &sections(&results(failed))).unwrap();
        }
    }

    #[test]
    fn the_figures_are_in_the_sections() {
        let s = sections(&results(true));
        assert_eq!(
            s[0].body,
            "`cargo xtask fuzz --minutes 1`: 1 target, 1,299,991 inputs executed in all."
        );
        assert!(s[1].body.contains("| `config` |") && s[1].body.contains("`overflow-1` (2)"));
        assert!(s[2].body.contains("`config`: attempt to add with overflow"));
        assert!(s[3].body.contains("Commit abc1234"));
        assert!(sections(&results(false))[2].body.starts_with("**Held:**"));
    }

    #[test]
    fn a_length_that_is_no_whole_minute_is_given_in_seconds() {
        let mut r = results(false);
        r.runs[0].requested = 10;
        r.runs.push(r.runs[0].clone());
        assert!(sections(&r)[0]
            .body
            .starts_with("`cargo xtask fuzz --seconds 10`: 2 targets,"));
    }

    #[test]
    fn results_survive_their_json() {
        let r = results(true);
        let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
