//! `cargo xtask demo` (see SPEC, Commands).

use crate::util::Result;

pub fn demo(_args: &[String]) -> Result {
    Err("not implemented yet".into())
}
