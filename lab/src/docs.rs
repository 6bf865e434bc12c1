//! The generated parts of `docs/`: an experiment writes numbers, tables and pictures, people write
//! the prose around them.
//!
//! A document such as `docs/PERFORMANCE.md` is ordinary Markdown that people edit and review. The
//! parts an experiment measures sit between a pair of markers,
//!
//! ```text
//! <!-- generated:overhead-targets -->
//! | target | measured | met? |
//! ...
//! <!-- /generated:overhead-targets -->
//! ```
//!
//! and [`fill`] replaces what is between each pair it is given, leaving every other byte of the
//! file as it was (rust-analyzer's codegen works the same way). The markers are HTML comments, so
//! they do not show when the Markdown is rendered.
//!
//! ## Why the doc and the generator must agree
//!
//! A marker the generator no longer writes would keep old figures under new prose, and a section
//! the doc lost would silently not be written. So [`fill`] fails, and writes nothing, when a
//! section it is given has no markers (or two pairs), and when the doc holds a marker with the
//! generator's prefix that it was not given. Each experiment's unit test holds its section names
//! to the checked-in document with [`names`].
//!
//! ## Where a run was measured
//! Every report ends with the machine, the versions and the commit its figures come from
//! ([`Environment`]). They are taken when the run finishes and kept with its raw results, so
//! that a report drawn again from those results (`--reanalyse`) still names the run's, not
//! today's.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::util::{output, root, Result};

const OPEN: &str = "<!-- generated:";
const CLOSE: &str = "<!-- /generated:";
const END: &str = " -->";

/// One generated part of a document: its marker name and its Markdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub body: String,
}

impl Section {
    pub fn new(name: impl Into<String>, body: impl Into<String>) -> Self {
        Section {
            name: name.into(),
            body: body.into(),
        }
    }
}

/// The names of the generated sections in `doc`, in order.
pub fn names(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(close) = after.find(END) else { break };
        out.push(after[..close].to_string());
        rest = &after[close..];
    }
    out
}

/// `doc` with the body of every section in `sections` replaced. Every section whose name starts
/// with `prefix` must be given, and every given section must have exactly one pair of markers.
pub fn replace(doc: &str, prefix: &str, sections: &[Section]) -> Result<String> {
    for name in names(doc) {
        if name.starts_with(prefix) && !sections.iter().any(|s| s.name == name) {
            return Err(format!(
                "the document has a generated section `{name}` that nothing writes any more: \
                 remove its markers, or write it"
            ));
        }
    }
    for (i, s) in sections.iter().enumerate() {
        if sections[..i].iter().any(|t| t.name == s.name) {
            return Err(format!(
                "the generator writes the section `{}` twice: the second would replace the first",
                s.name
            ));
        }
    }
    let mut out = doc.to_string();
    for s in sections {
        let open = format!("{OPEN}{}{END}", s.name);
        let close = format!("{CLOSE}{}{END}", s.name);
        let (Some(a), Some(b)) = (out.find(&open), out.find(&close)) else {
            return Err(format!(
                "the document has no `{open}` … `{close}` pair: add them where the section \
                 belongs"
            ));
        };
        if out.matches(&open).count() != 1 || out.matches(&close).count() != 1 || b < a {
            return Err(format!(
                "the document's `{}` markers are not one pair in order",
                s.name
            ));
        }
        let body = s.body.trim_matches('\n');
        let start = a + open.len();
        out.replace_range(start..b, &format!("\n{body}\n"));
    }
    Ok(out)
}

/// Whether `sections` are exactly the `prefix` sections of `doc`, in its order, so that a run
/// writes all of them and nothing else: each experiment's unit test holds its generator to the
/// checked-in document with this.
pub fn check_sections(doc: &str, prefix: &str, sections: &[Section]) -> Result {
    let in_doc: Vec<String> = names(doc)
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    let written: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    if written != in_doc {
        return Err(format!(
            "the generator writes {written:?}, the document has {in_doc:?}"
        ));
    }
    replace(doc, prefix, sections).map(|_| ())
}

/// Rewrites the given sections of the document at `path` (see [`replace`]).
pub fn fill(path: &Path, prefix: &str, sections: &[Section]) -> Result {
    let old = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let new = replace(&old, prefix, sections).map_err(|e| format!("{}: {e}", path.display()))?;
    if new != old {
        fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

// ------------------------------------------------------------------- where a run was measured

/// 1234567 → "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first line a command prints, trimmed (a tool's `--version`), or `unknown`.
pub fn first_line(cmd: &mut Command) -> String {
    output(cmd)
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The commit being measured: HEAD's short hash, `+changes` when tracked files outside `docs/`
/// differ from it (the reports themselves are rewritten by every run). Take it when a run
/// starts, since the tree may change while it runs.
pub fn commit() -> String {
    let hash = first_line(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(root()),
    );
    let changed = output(
        Command::new("git")
            .args([
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!docs",
            ])
            .current_dir(root()),
    )
    .is_some_and(|s| !s.trim().is_empty());
    if changed {
        format!("{hash}+changes")
    } else {
        hash
    }
}

/// Now, to the minute, as the reports print it: `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
}

/// The machine, the versions, the commit measured and when the run finished: the line a
/// report ends with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// CPU, cores, memory, kernel.
    pub machine: String,
    /// What the figures depend on, each as it prints its version.
    pub versions: Vec<String>,
    pub commit: String,
    /// `YYYY-MM-DD HH:MM UTC`.
    pub finished: String,
}

impl Environment {
    /// This machine now, with `versions` and the `commit` taken when the run started.
    pub fn probe(commit: &str, versions: Vec<String>) -> Environment {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<u64>().ok())
            })
            .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
        Environment {
            machine: format!(
                "{cpu}, {cores} cores (shared with other jobs), {mem_gib:.0} GiB, {}",
                first_line(Command::new("uname").args(["-sr"]))
            ),
            versions,
            commit: commit.to_string(),
            finished: utc_now(),
        }
    }

    /// `Machine: … Versions: … Commit … (finished …).`
    pub fn line(&self) -> String {
        format!(
            "Machine: {}. Versions: {}. Commit {} (finished {}).",
            self.machine,
            self.versions.join(", "),
            self.commit,
            self.finished
        )
    }
}

/// Writes a run's raw results (pretty JSON) to `path`, its directory made.
pub fn save_results<T: Serialize>(path: &Path, results: &T) -> Result {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// A run's raw results, as [`save_results`] wrote them.
pub fn load_results<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (the raw results of a past run; run the experiment first)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOC: &str = "# Title\n\nProse people wrote.\n\n<!-- generated:x-table -->\nold\n\
                       <!-- /generated:x-table -->\n\nMore prose.\n<!-- generated:y-other -->\n\
                       kept\n<!-- /generated:y-other -->\n";

    #[test]
    fn only_the_bodies_between_the_markers_change() {
        let new = replace(DOC, "x-", &[Section::new("x-table", "| a |\n| - |\n")]).unwrap();
        assert_eq!(
            new,
            DOC.replace("\nold\n", "\n| a |\n| - |\n"),
            "prose and the other generator's section stay byte for byte"
        );
        assert_eq!(
            replace(&new, "x-", &[Section::new("x-table", "old")]).unwrap(),
            DOC
        );
    }

    #[test]
    fn a_section_the_document_lost_is_an_error() {
        let err = replace(
            DOC,
            "x-",
            &[Section::new("x-table", "a"), Section::new("x-gone", "b")],
        )
        .unwrap_err();
        assert!(err.contains("x-gone"), "{err}");
    }

    #[test]
    fn a_marker_nothing_writes_any_more_is_an_error() {
        let err = replace(DOC, "y-", &[]).unwrap_err();
        assert!(err.contains("y-other"), "{err}");
    }

    #[test]
    fn two_pairs_of_one_name_are_an_error() {
        let doc = format!("{DOC}<!-- generated:x-table -->\n<!-- /generated:x-table -->\n");
        assert!(replace(&doc, "x-", &[Section::new("x-table", "a")]).is_err());
    }

    #[test]
    fn a_section_written_twice_is_an_error() {
        let twice = [Section::new("x-table", "a"), Section::new("x-table", "b")];
        assert!(replace(DOC, "x-", &twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn names_lists_the_sections_in_order() {
        assert_eq!(names(DOC), ["x-table", "y-other"]);
    }

    #[test]
    fn group_puts_a_comma_every_three_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(23_772_764), "23,772,764");
    }

    #[test]
    fn an_environment_survives_its_json() {
        let e = Environment {
            machine: "AMD EPYC, 2 cores".into(),
            versions: vec!["rustc 1.95.0".into(), "oha 1.16.0".into()],
            commit: "a6a413c".into(),
            finished: "2026-12-01 12:04 UTC".into(),
        };
        let back: Environment = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            e.line(),
            "Machine: AMD EPYC, 2 cores. Versions: rustc 1.95.0, oha 1.16.0. Commit a6a413c \
             (finished 2026-12-01 12:04 UTC)."
        );
    }
}
