//! `cargo xtask fuzz` (see SPEC, Commands).

use crate::util::Result;

pub fn fuzz(_args: &[String]) -> Result {
    Err("not implemented yet".into())
}
