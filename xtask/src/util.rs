//! Small process and path helpers shared by every command (the process ones are the harness's).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use meshbreaker_harness::{output, run, step, Result};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}
