//! Snapshots of generated Envoy bootstraps, held to committed files under
//! `snapshots/bootstraps/`.
//!
//! Why: the bootstraps are built by code (the tests' builder, the benchmarks', the soak's, the
//! demo's), and what Envoy reads must not change when that code moves or is merged. The comparison
//! is of the parsed document, not of its text: JSON is YAML, so a builder that writes JSON where it
//! wrote YAML, or orders keys differently, still matches as long as Envoy sees the same bootstrap.
//!
//! `MESHBREAKER_UPDATE_SNAPSHOTS=1` writes the files instead of comparing (review the diff).

use std::path::PathBuf;

/// The committed snapshot of bootstrap `name`.
pub fn bootstrap_path(name: &str) -> PathBuf {
    crate::repo_root()
        .join("snapshots")
        .join("bootstraps")
        .join(format!("{name}.json"))
}

/// Parses a bootstrap as Envoy's `-c` does (YAML, of which JSON is a subset).
pub fn parse(text: &str) -> Result<serde_json::Value, String> {
    serde_yaml_ng::from_str::<serde_json::Value>(text).map_err(|e| format!("not YAML: {e}"))
}

/// Compares bootstrap `text` with the snapshot `name`; `Err` says where they differ and how to
/// update the file. With `MESHBREAKER_UPDATE_SNAPSHOTS` set it writes the snapshot instead.
pub fn check_bootstrap(name: &str, text: &str) -> Result<(), String> {
    let got = parse(text).map_err(|e| format!("bootstrap {name}: {e}"))?;
    let path = bootstrap_path(name);
    let pretty = serde_json::to_string_pretty(&got).map_err(|e| e.to_string())? + "\n";
    if std::env::var_os("MESHBREAKER_UPDATE_SNAPSHOTS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        return std::fs::write(&path, pretty).map_err(|e| format!("{}: {e}", path.display()));
    }
    let want_text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (MESHBREAKER_UPDATE_SNAPSHOTS=1 writes it)",
            path.display()
        )
    })?;
    let want: serde_json::Value =
        serde_json::from_str(&want_text).map_err(|e| format!("{}: {e}", path.display()))?;
    if want == got {
        return Ok(());
    }
    Err(format!(
        "bootstrap {name} differs from {} at {}\n(if the change is intended, rerun with \
         MESHBREAKER_UPDATE_SNAPSHOTS=1 and review the diff)",
        path.display(),
        first_difference(&want, &got, String::new())
    ))
}

/// The JSON path of the first place `want` and `got` differ, with both values there.
fn first_difference(want: &serde_json::Value, got: &serde_json::Value, at: String) -> String {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) if gv == wv => {}
                    Some(gv) => return first_difference(wv, gv, format!("{at}.{k}")),
                    None => return format!("{at}.{k}: missing (want {wv})"),
                }
            }
            match g.keys().find(|k| !w.contains_key(*k)) {
                Some(k) => format!("{at}.{k}: unexpected {}", g[k]),
                None => format!("{at}: differs"),
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            match w.iter().zip(g).position(|(a, b)| a != b) {
                Some(i) => first_difference(&w[i], &g[i], format!("{at}[{i}]")),
                None => format!("{at}: differs"),
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            let i = w
                .iter()
                .zip(g)
                .position(|(a, b)| a != b)
                .unwrap_or(w.len().min(g.len()));
            format!(
                "{at}: {} items wanted, {} got; the first that differs is [{i}]",
                w.len(),
                g.len()
            )
        }
        _ => format!("{at}: want {want}, got {got}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn yaml_and_json_of_one_document_parse_alike() {
        let y = "a:\n  b: [1, 2.5, \"x\\n\"]\n  c: { d: true }\n";
        let j = r#"{"a": {"c": {"d": true}, "b": [1, 2.5, "x\n"]}}"#;
        assert_eq!(parse(y).unwrap(), parse(j).unwrap());
    }

    #[test]
    fn a_difference_is_named_by_its_path() {
        let w = parse(r#"{"a": [{"b": 1}, {"c": 2}]}"#).unwrap();
        let g = parse(r#"{"a": [{"b": 1}, {"c": 3}]}"#).unwrap();
        assert_eq!(
            first_difference(&w, &g, String::new()),
            ".a[1].c: want 2, got 3"
        );
    }
}
