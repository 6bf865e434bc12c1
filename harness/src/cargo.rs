//! Workspace binaries built on demand (the sidecar, the CLI, the benchmark's upstream and load
//! driver, the demo): a test or an experiment cannot depend on another package's binary, so it
//! builds it here. Cargo makes this a no-op when the binary is current.
//!
//! The path comes from cargo's own JSON messages (`--message-format=json`, the `executable` of
//! each `compiler-artifact`), not from a guessed `target/<profile>/<name>`, which breaks with a
//! custom target directory or profile. The cargo is the one running us (`$CARGO`), from the
//! repository root, so it shares the caller's target directory and lock file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{repo_root, Result};

/// `cargo build -q -p <package>` (`--release` when asked) and the executables it produced among
/// `names`, by name; `Err` if the build fails or one of them is missing.
pub fn build_bins(
    package: &str,
    names: &[&str],
    release: bool,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root())
        .args(["build", "-q", "-p", package, "--message-format=json"]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo build -p {package}: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo build -p {package} failed ({})", out.status));
    }
    let found = executables(&String::from_utf8_lossy(&out.stdout), names);
    match names.iter().find(|n| !found.contains_key(**n)) {
        Some(n) => Err(format!("cargo reported no executable {n} for -p {package}")),
        None => Ok(found),
    }
}

/// [`build_bins`] for one executable.
pub fn build_bin(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    build_bins(package, &[bin], release)?
        .remove(bin)
        .ok_or_else(|| format!("cargo reported no executable {bin} for -p {package}"))
}

/// The executables among `names` in cargo's JSON messages, by target name.
fn executables(messages: &str, names: &[&str]) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for line in messages.lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if m["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (m["target"]["name"].as_str(), m["executable"].as_str()) {
            if names.contains(&name) {
                found.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn executables_come_from_compiler_artifacts_only() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"a"},"executable":"/t/release/a"}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"lib"},"executable":null}"#,
            r#"{"reason":"compiler-message","target":{"name":"b"},"executable":"/x/b"}"#,
            "not json",
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let found = executables(&messages, &["a", "b", "lib"]);
        assert_eq!(found.len(), 1);
        assert_eq!(found["a"], PathBuf::from("/t/release/a"));
    }
}
