//! Every access log line explained: a 2xx, a rejection, an upstream failure or answer.

use crate::util::Result;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Explained {
    pub(super) lines: u64,
    pub(super) ok: u64,
    pub(super) rejections: BTreeMap<String, u64>,
    pub(super) upstream_answers: BTreeMap<u16, u64>,
    pub(super) upstream_failures: BTreeMap<String, u64>,
    /// `DC`: the client went away (oha stopping at the end with requests in flight).
    pub(super) client_gone: u64,
    pub(super) unexplained: BTreeMap<String, u64>,
}

/// Response flags that mean "the upstream failed" (Envoy's own words for it).
pub(super) const UPSTREAM_FLAGS: [&str; 9] =
    ["UF", "URX", "UC", "UR", "UT", "UH", "UO", "UMSDR", "UPE"];

pub(super) fn explain_access_log(path: &Path) -> Result<Explained> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut e = Explained::default();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut p = line.split(' ');
        let (Some(code), Some(flags), Some(mb), Some(reason), Some(host)) =
            (p.next(), p.next(), p.next(), p.next(), p.next())
        else {
            *e.unexplained
                .entry(format!("malformed: {line}"))
                .or_default() += 1;
            continue;
        };
        e.lines += 1;
        let code: u16 = code.parse().unwrap_or(0);
        if (200..300).contains(&code) {
            e.ok += 1;
        } else if mb == "open" && code == 503 {
            *e.rejections.entry(reason.to_string()).or_default() += 1;
        } else if flags.split(',').any(|f| UPSTREAM_FLAGS.contains(&f)) {
            *e.upstream_failures.entry(flags.to_string()).or_default() += 1;
        } else if flags == "-" && host != "-" {
            *e.upstream_answers.entry(code).or_default() += 1;
        } else if flags.split(',').any(|f| f == "DC") {
            e.client_gone += 1;
        } else {
            *e.unexplained
                .entry(format!("{code} {flags} {mb} {reason} {host}"))
                .or_default() += 1;
        }
    }
    Ok(e)
}
