//! `docs/configuration.md` held to the code, both ways.
//!
//! Why: a reference that lists a field the filter rejects, or misses one it accepts, sends users
//! to a config error in production. Each table row (field path + example value) must be accepted by
//! `policy_core::config::Config::parse`, and a misspelling of it rejected at that path, so "accepted"
//! means "known"; each object's field list, as the parser itself states it when it meets an
//! unknown field, must be in the tables; and the doc's full default configuration must parse to
//! the defaults. The README and the docs must not point outside the repository.
// Tests: a failed expectation panics, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use policy_core::config::Config;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    meshbreaker_harness::repo_root()
}

fn doc() -> String {
    std::fs::read_to_string(repo().join("docs/configuration.md")).expect("docs/configuration.md")
}

/// (field path, example JSON) of every table row.
fn rows() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for line in doc().lines() {
        let line = line.replace("\\|", "\u{1}");
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `path` | type | default | range | `example` |
        if cells.len() != 7 || !cells[1].starts_with('`') {
            continue;
        }
        let path = cells[1].trim_matches('`').to_owned();
        let example = cells[5].trim_matches('`').replace('\u{1}', "|");
        let value: Value = serde_json::from_str(&example)
            .unwrap_or_else(|e| panic!("row {path}: example {example:?} is not JSON: {e}"));
        out.push((path, value));
    }
    assert!(
        out.len() >= 40,
        "expected the full field tables, found {} rows",
        out.len()
    );
    out
}

fn set(doc: &mut Value, segments: &[&str], value: Value) {
    match segments {
        [] => *doc = value,
        [first, rest @ ..] => {
            if let Some(list) = first.strip_suffix("[]") {
                // A list element needs what makes it valid on its own.
                let mut item = match list {
                    "policies" => json!({ "name": "doc" }),
                    "overrides" if rest.first() != Some(&"match") => {
                        json!({ "match": { "cluster": "doc" } })
                    }
                    _ => json!({}),
                };
                set(&mut item, rest, value);
                doc[list] = Value::Array(vec![item]);
            } else {
                if !doc[*first].is_object() {
                    doc[*first] = json!({});
                }
                set(&mut doc[*first], rest, value);
            }
        }
    }
}

fn document(path: &str, value: Value) -> Value {
    let mut doc = json!({});
    let segments: Vec<&str> = path.split('.').collect();
    set(&mut doc, &segments, value);
    // An override must match a dimension the key carries (configuration.md, `overrides[].match`).
    match path {
        "overrides[].match.route" => doc["key_by"] = json!("route"),
        "overrides[].match.authority" => doc["key_by"] = json!("authority"),
        _ => {}
    }
    doc
}

fn parse(doc: &Value) -> Result<Config, policy_core::config::ConfigError> {
    Config::parse(&serde_json::to_vec(doc).expect("serializable"))
}

#[test]
fn every_documented_field_is_accepted_with_its_example_and_a_misspelling_is_rejected() {
    for (path, example) in rows() {
        let doc = document(&path, example.clone());
        if let Err(e) = parse(&doc) {
            panic!("docs/configuration.md row {path}: the filter rejects {doc}: {e}");
        }
        let (parent, last) = path.rsplit_once('.').unwrap_or(("", &path));
        let misspelled = if parent.is_empty() {
            format!("{last}_x")
        } else {
            format!("{parent}.{last}_x")
        };
        let bad = document(&misspelled, example);
        assert!(
            parse(&bad).is_err(),
            "the filter accepts the unknown field {misspelled} ({bad}), so accepting {path} proves nothing"
        );
    }
}

/// The fields the parser knows at an object, from its own unknown-field error.
fn code_fields(level: &str) -> BTreeSet<String> {
    let probe = if level.is_empty() {
        "zz_unknown".to_owned()
    } else {
        format!("{level}.zz_unknown")
    };
    let err = parse(&document(&probe, json!(1))).expect_err("an unknown field must be rejected");
    let reason = err.reason.clone();
    // serde: "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let list = reason
        .split_once(", expected ")
        .unwrap_or_else(|| panic!("{probe}: the error does not list the known fields: {err}"))
        .1;
    let fields: BTreeSet<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!fields.is_empty(), "{probe}: no field names in {err}");
    fields
}

#[test]
fn every_field_the_code_knows_is_documented() {
    let documented: BTreeSet<String> = rows().into_iter().map(|(p, _)| p).collect();
    for level in [
        "",
        "breaker",
        "breaker.failure",
        "retry",
        "retry.budget",
        "retry.policies[]",
        "retry.policies[].match",
        "overrides[]",
        "overrides[].match",
        "reset_signals",
    ] {
        let fields = code_fields(level);
        assert!(!fields.is_empty(), "{level}: no fields listed");
        for f in fields {
            let path = if level.is_empty() {
                f
            } else {
                format!("{level}.{f}")
            };
            assert!(
                documented.contains(&path),
                "the filter accepts {path}, but docs/configuration.md has no row for it"
            );
        }
    }
}

fn leaf_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                leaf_paths(v, &p, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                leaf_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_documented_full_configuration_is_the_defaults_and_every_field_of_it_has_a_row() {
    let text = doc();
    let start = text
        .find("## The full default configuration")
        .expect("the full default configuration section");
    let block = text[start..]
        .split("```json")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json block");
    let full: Value = serde_json::from_str(block).expect("the full configuration is JSON");
    let mut config =
        parse(&full).unwrap_or_else(|e| panic!("the full configuration is rejected: {e}"));
    assert!(config.reset_signals.take().is_some());
    assert_eq!(
        config,
        Config::default(),
        "the documented defaults are not the code's"
    );

    let documented: BTreeSet<String> = rows().into_iter().map(|(p, _)| p).collect();
    let mut paths = BTreeSet::new();
    leaf_paths(&full, "", &mut paths);
    for p in paths {
        assert!(
            documented.contains(&p),
            "{p} is in the full configuration but has no row"
        );
    }
}

#[test]
fn the_doc_says_what_the_parser_does_with_a_repeated_key() {
    let err = Config::parse(br#"{"mode": "enforce", "mode": "disabled"}"#)
        .expect_err("a repeated key is rejected");
    assert!(err.to_string().contains("duplicate field `mode`"), "{err}");
    let text = doc().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains(
            "An object that repeats a key is a config error (``duplicate field `mode` ``)"
        ),
        "docs/configuration.md must say that a repeated key is an error"
    );
    assert!(!text.contains("the last one wins"), "{text}");
}

#[test]
fn docs_examples_are_accepted() {
    let text = doc();
    let blocks: Vec<&str> = text
        .split("```json")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert!(
        blocks.len() >= 3,
        "expected the full configuration and two examples"
    );
    for b in blocks {
        let v: Value = serde_json::from_str(b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}"));
        if let Err(e) = parse(&v) {
            panic!("docs/configuration.md example rejected: {e}\n{b}");
        }
    }
}

#[test]
fn the_recommended_configuration_is_one_document() {
    // docs/configuration.md shows it, envoy-config/recommended.json ships it, and the protection
    // benchmark measures it (it reads the same file): they must be the same configuration.
    let text = doc();
    let section = text
        .split("## The recommended configuration")
        .nth(1)
        .expect("docs/configuration.md has a recommended configuration section");
    let block = section
        .split("```json")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section shows the configuration");
    let shown: Value = serde_json::from_str(block).unwrap();
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("envoy-config/recommended.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shown, shipped);
    parse(&shipped).unwrap();
    let bench = std::fs::read_to_string(repo().join("lab/src/protection/mod.rs")).unwrap();
    assert!(
        bench.contains("envoy-config/recommended.json"),
        "the protection benchmark's recommended system reads envoy-config/recommended.json"
    );
}

#[test]
fn readme_and_docs_point_nowhere_outside_the_repository() {
    let mut files = vec![repo().join("README.md")];
    for dir in ["docs", "istio", "envoy-config"] {
        for e in std::fs::read_dir(repo().join(dir)).expect("a directory") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        assert!(
            !text.contains("../shared"),
            "{} points at ../shared",
            f.display()
        );
        // Relative links must resolve inside the repository.
        for link in text.split("](").skip(1).filter_map(|l| l.split(')').next()) {
            if link.contains("://") || link.starts_with('#') || link.starts_with("mailto:") {
                continue;
            }
            let target = link.split('#').next().unwrap_or(link);
            let resolved = f.parent().expect("a parent").join(target);
            assert!(
                resolved.exists(),
                "{}: link {link} does not resolve",
                f.display()
            );
            let canon = resolved.canonicalize().expect("canonical");
            assert!(
                canon.starts_with(repo().canonicalize().expect("canonical root")),
                "{}: link {link} leaves the repository",
                f.display()
            );
        }
    }
}
