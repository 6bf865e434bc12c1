//! The real stack, once, for everything that runs it: the integration tests (`tests/`), the
//! sidecar's tests, and the experiments behind `cargo xtask` (demo, benchmarks, soak).
//!
//! Blocking and std-only: the experiments run no async runtime, and the tests wrap what they need.

pub mod snapshot;

use std::path::PathBuf;

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
