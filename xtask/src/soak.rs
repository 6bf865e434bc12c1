//! `cargo xtask soak` (see SPEC, Commands).

use crate::util::Result;

pub fn soak(_args: &[String]) -> Result {
    Err("not implemented yet".into())
}
