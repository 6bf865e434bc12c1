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

use std::fs;
use std::path::Path;

use crate::util::Result;

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

/// Rewrites the given sections of the document at `path` (see [`replace`]).
pub fn fill(path: &Path, prefix: &str, sections: &[Section]) -> Result {
    let old = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let new = replace(&old, prefix, sections).map_err(|e| format!("{}: {e}", path.display()))?;
    if new != old {
        fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
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
    fn names_lists_the_sections_in_order() {
        assert_eq!(names(DOC), ["x-table", "y-other"]);
    }
}
