//! The experiments that write `docs/`: each measures the real stack (through the harness) and
//! writes its document. `cargo xtask` parses the command line, installs and builds what a run
//! needs, and passes the paths in; the one install left here is oha's (`cargo install`), on the
//! benchmarks' first run.
//!
//! * [`overhead`]: what meshbreaker costs per request beside what a user could run instead
//!   (`docs/PERFORMANCE.md`).
//! * [`protection`]: clients' outcomes under upstream faults, meshbreaker against Envoy's own
//!   answers (`docs/PROTECTION.md`).
//! * [`soak`]: a long run under faults, reloads and sidecar deaths (`docs/RELIABILITY.md`).
//! * [`demo`]: the local stack driven through its phases; `--ci`'s checks (the summary, the
//!   picture, the replay held to the transitions the filter logged live, Prometheus on the
//!   shipped rules, Ctrl-C).
//! * [`prometheus`]: a real Prometheus beside the demo, on the shipped rules.
//! * [`docs`]: the generated sections of a document, between markers in its hand-written prose,
//!   and the machine, versions and commit a report ends with.
//! * [`fuzz`]: the cargo-fuzz targets' runs (`docs/RELIABILITY.md`).

pub mod demo;
pub mod docs;
pub mod fuzz;
pub mod overhead;
pub mod prometheus;
pub mod protection;
pub mod soak;

/// Process and path helpers the experiments share.
pub mod util {
    use std::path::PathBuf;
    use std::process::Command;

    pub use meshbreaker_harness::{output, run, step, Result};

    /// The repository root.
    pub fn root() -> PathBuf {
        meshbreaker_harness::repo_root()
    }

    /// `cargo` (the one running us) in the repository root.
    pub fn cargo() -> Command {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(root());
        c
    }
}
