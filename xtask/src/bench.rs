//! `cargo xtask bench`: benchmarks.

use crate::util::{cargo, run, Result};

pub fn bench(args: &[String]) -> Result {
    run(cargo().args(["bench", "-p", "policy-core"]).args(args))
}
