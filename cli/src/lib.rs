//! The `meshbreaker` command line, as a library so that its tests and benchmarks call the same
//! code the binary runs. It uses policy-core exactly as the filter does: the same
//! `Config::parse`, the same breaker, window and trip rule.
//!
//! - [`source`]: finding the plugin configuration in JSON, Envoy YAML or an Istio WasmPlugin;
//! - [`status`]: a running Envoy's metrics as a table per key;
//! - [`accesslog`] and [`replay`]: Envoy JSON access logs through policy-core;
//! - [`report`] and [`svg`]: what a replay prints and draws.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod accesslog;
pub mod replay;
pub mod report;
pub mod source;
pub mod status;
pub mod svg;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use policy_core::config::{Config, ConfigError};

/// Each configuration found in a file: where, and what the filter's parser made of it (every
/// error; the filter logs the first).
pub type Checked = Vec<(String, Result<Config, Vec<ConfigError>>)>;

/// Reads `path` and checks every meshbreaker configuration in it with the filter's own parser.
pub fn check_file(path: &Path) -> Result<Checked, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json_file = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let found = source::find_configs_in(&text, json_file)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(found
        .into_iter()
        .map(|f| (f.location, Config::parse_all(f.json.as_bytes())))
        .collect())
}

/// The one configuration in `path` (for `replay --config`); an error names the field.
pub fn load_config(path: &Path) -> Result<Config, String> {
    let checked = check_file(path)?;
    if checked.len() != 1 {
        return Err(format!(
            "{}: {} meshbreaker configurations found, expected one",
            path.display(),
            checked.len()
        ));
    }
    match checked.into_iter().next() {
        Some((_, Ok(cfg))) => Ok(cfg),
        Some((loc, Err(errors))) => {
            let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Err(format!("{} ({loc}): {}", path.display(), shown.join("; ")))
        }
        None => Err(format!("{}: no configuration", path.display())),
    }
}

/// Streams `reader` line by line into every replay (one pass for `--compare`); `progress` is
/// called with the bytes read so far, every 64 Ki lines. Memory: one line buffer.
pub fn replay_stream<R: Read>(
    reader: R,
    replays: &mut [replay::Replay],
    mut progress: impl FnMut(u64),
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let mut buf = Vec::with_capacity(1024);
    let mut read = 0u64;
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = reader.read_until(b'\n', &mut buf)?;
        if got == 0 {
            break;
        }
        read += got as u64;
        n += 1;
        if n.is_multiple_of(65_536) {
            progress(read);
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<accesslog::Line>(line) {
            Ok(l) => replays.iter_mut().for_each(|r| r.feed(&l)),
            Err(_) => replays.iter_mut().for_each(|r| r.unreadable()),
        }
    }
    progress(read);
    Ok(())
}
