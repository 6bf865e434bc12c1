//! `cargo xtask bench`: benchmarks.

use crate::util::{cargo, run, Result};

pub fn bench(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--protection") {
        return crate::protection::protection(args);
    }
    run(cargo().args(["bench", "-p", "policy-core"]).args(args))
}
